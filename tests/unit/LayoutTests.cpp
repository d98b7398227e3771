// LayoutTests.cpp — typed graph outputs, the Layout of the entry points' buffers, and the
// Backend interface: both backends on one execution path, in float and double.
#include "Autodiff.h"
#include "Backend.h"
#include "Execute.h"
#include "Kernels.h"
#include "Layout.h"
#include "Optimizer.h"
#include "Pipeline.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <random>

using namespace gradc;

namespace {

const char* kModel = "model lay\ninput 5\ndense 7\nbatchnorm\ntanh\nh = identity\ndense 6 relu\ndense 7 sigmoid\nadd h\n"
                     "dense 3\nloss cross_entropy\n";

BackendOptions options(const std::string& backend, bool f64) {
    BackendOptions o;
    o.backend = backend, o.f64 = f64, o.cache = false;
    return o;
}

double worstRelative(const Tensor& got, const Tensor& want) {
    REQUIRE(got.shape == want.shape);
    // A floor on the scale: the bias before a batchnorm has a gradient of zero, up to rounding.
    double worst = 0, scale = 1e-3;
    for (size_t i = 0; i < want.data.size(); ++i) {
        worst = std::max(worst, std::fabs(got.data[i] - want.data[i]));
        scale = std::max(scale, std::fabs(want.data[i]));
    }
    return worst / scale;
}

} // namespace

TEST_CASE("graph outputs are typed, their printed form is the old label", "[layout]") {
    Graph g = compileSource("t.nn", kModel, {4}).graph;
    REQUIRE(g.outputs.size() >= 2);
    CHECK(g.outputs[0].role == OutputRole::Logits);
    CHECK(g.outputs[1].role == OutputRole::Loss);
    std::vector<std::string> labels;
    for (auto& o : g.outputs) labels.push_back(outputLabel(o));
    // The activation layers with a statistic (tanh, relu, sigmoid; identity has none), one batchnorm.
    CHECK(labels == std::vector<std::string>{"logits", "loss", "preact:layers.2", "preact:layers.4",
                                             "preact:layers.6", "bnin:layers.1"});
    CHECK(g.output(OutputRole::NormInput, "layers.1") == g.outputs[5].value);
    CHECK(printGraph(g).find("output bnin:layers.1 = %") != std::string::npos);
}

TEST_CASE("the layout places every buffer the entry points read or write", "[layout]") {
    const int64_t B = 4;
    Graph g = compileSource("t.nn", kModel, {B}).graph;
    Layout l = computeLayout(g);
    // State: the parameters in order, contiguous, then the running statistics.
    int64_t offset = 0;
    for (auto& p : g.params) {
        const LayoutEntry& e = l.at(Role::Parameter, p.name);
        CHECK(e.array == Array::State);
        CHECK(e.offset == offset);
        CHECK(e.shape == g[p.node].shape);
        CHECK(l.at(Role::Gradient, p.name).offset == offset); // gradients mirror the parameters
        CHECK(l.at(Role::Moment1, p.name).offset == offset);
        offset += e.elements();
    }
    CHECK(l.parameterCount() == g.parameterCount());
    CHECK(l.at(Role::Parameter, "layers.0.weight").layer == "layers.0");
    const LayoutEntry& mean = l.at(Role::RunningStat, "layers.1.running_mean");
    const LayoutEntry& var = l.at(Role::RunningStat, "layers.1.running_var");
    CHECK(mean.offset == g.parameterCount());
    CHECK(var.offset == mean.offset + 7);
    CHECK(mean.initial == 0);
    CHECK(var.initial == 1);
    CHECK(mean.layer == "layers.1");
    CHECK(l.size(Array::State) == g.parameterCount() + g.bufferCount());
    // Acts: the kept activations one after another, in output order.
    int64_t acts = 0;
    for (auto& o : g.outputs) {
        if (!isKeptActivation(o.role)) continue;
        const LayoutEntry& e = l.at(roleOf(o.role), o.name);
        CHECK(e.array == Array::Acts);
        CHECK(e.offset == acts);
        CHECK(e.shape == g[o.value].shape);
        acts += e.elements();
    }
    CHECK(acts == B * (7 + 6 + 7 + 7));
    // Then the batchnorm's batch statistics.
    CHECK(l.at(Role::NormMean, "layers.1").offset == acts);
    CHECK(l.at(Role::NormVar, "layers.1").offset == acts + 7);
    CHECK(l.at(Role::NormVar, "layers.1").shape == Shape{7});
    CHECK(l.size(Array::Acts) == acts + 14);
    CHECK(l.at(Role::NormInput, "layers.1").shape == Shape{B, 7});
    CHECK(l.at(Role::Input, "x").shape == Shape{B, 5});
    CHECK(l.at(Role::Target, "target").type == DType::Index);
    CHECK(l.at(Role::Logits).shape == Shape{B, 3});
    CHECK(l.size(Array::Loss) == 1);
    CHECK(l.find(Role::Parameter, "no.such") == nullptr);
}

TEST_CASE("the kernels place parameters, gradients and kept activations where the layout says", "[layout]") {
    Graph g = compileSource("t.nn", kModel, {4}).graph;
    Layout l = computeLayout(g);
    Graph grad = differentiate(g);
    const std::vector<Output> outputs = backwardOutputs(grad); // as code generation builds them
    KernelProgram p = buildKernels(grad, "backward", outputs, l, 4, GemmBlocking{});
    int checked = 0, outputBuffers = 0;
    for (auto& b : p.buffers) {
        const LayoutEntry* e = nullptr;
        if (b.kind == Buffer::Kind::Param) e = &l.state(b.name);
        for (auto& o : outputs)
            if (outputLabel(o) == b.name && (b.kind == Buffer::Kind::Grad || b.kind == Buffer::Kind::Activation))
                e = &l.at(roleOf(o.role), o.name), ++outputBuffers;
        if (!e) continue;
        CHECK(b.offset == e->offset);
        CHECK(b.elements() == e->elements());
        ++checked;
    }
    CHECK(checked >= int(g.params.size() + 4)); // every gradient, every kept activation, some parameters
    CHECK(outputBuffers == int(outputs.size()) - 1); // one buffer for each output but the loss
}

TEST_CASE("both backends run on one path, in float and double, and agree", "[layout][backend]") {
    Graph g = compileSource("t.nn", kModel, {6}).graph;
    std::mt19937 rng(3);
    Bindings b = randomBindings(g, rng);
    auto interp = compile(g, options("interp", true));
    CHECK(interp->describe() == "interp");
    for (bool backward : {false, true}) {
        auto want = run(*interp, b, backward);
        CHECK(want.count(backward ? "grad:layers.0.weight" : "logits") == 1);
        CHECK(want.count("preact:layers.2") == 1);
        CHECK(want.count("bnin:layers.1") == 1);
        for (auto [backend, f64, tolerance] : {std::tuple{"jit", true, 1e-10}, std::tuple{"jit", false, 1e-4},
                                               std::tuple{"interp", false, 1e-5}}) {
            INFO(backend << (f64 ? " f64" : " f32") << (backward ? " backward" : " forward"));
            auto exe = compile(g, options(backend, f64));
            CHECK(exe->f64() == f64);
            CHECK(exe->layout().size(Array::Acts) == interp->layout().size(Array::Acts));
            auto got = run(*exe, b, backward);
            CHECK(got.size() == want.size());
            for (auto& [name, t] : want) {
                INFO(name);
                REQUIRE(got.count(name));
                CHECK(worstRelative(got.at(name), t) < tolerance);
            }
        }
    }
}

TEST_CASE("the training kernel leaves each batchnorm's batch mean and unbiased variance in acts", "[layout][backend]") {
    const int64_t B = 6, N = 7;
    Graph g = compileSource("t.nn", kModel, {B}).graph;
    std::mt19937 rng(5);
    Bindings b = randomBindings(g, rng);
    for (const char* backend : {"jit", "interp"}) {
        INFO(backend);
        auto exe = compile(g, options(backend, false));
        const Layout& l = exe->layout();
        std::vector<float> state(size_t(l.size(Array::State))), grads(size_t(l.size(Array::Grads))),
            acts(size_t(l.size(Array::Acts)), -1.0f), x;
        std::vector<int32_t> labels;
        for (const LayoutEntry* e : l.all(Role::Parameter)) writeBuffer(state.data(), *e, b.at(e->name).data);
        for (double v : b.at("x").data) x.push_back(float(v));
        for (double v : b.at("target").data) labels.push_back(int32_t(v));
        float loss = 0;
        EntryArgs<float> a;
        a.state = state.data(), a.x = x.data(), a.target = labels.data(), a.loss = &loss, a.grads = grads.data(),
        a.acts = acts.data();
        exe->backward(a);
        const float* in = acts.data() + l.at(Role::NormInput, "layers.1").offset;
        const float* mean = acts.data() + l.at(Role::NormMean, "layers.1").offset;
        const float* var = acts.data() + l.at(Role::NormVar, "layers.1").offset;
        for (int64_t j = 0; j < N; ++j) {
            double m = 0, sq = 0;
            for (int64_t r = 0; r < B; ++r) m += in[r * N + j];
            m /= double(B);
            for (int64_t r = 0; r < B; ++r) sq += (in[r * N + j] - m) * (in[r * N + j] - m);
            CHECK(mean[j] == Approx(m).epsilon(1e-5).margin(1e-6));
            CHECK(var[j] == Approx(sq / double(B - 1)).epsilon(1e-5));
        }
    }
}

TEST_CASE("Executable::update is the reference optimiser step on both backends", "[layout][backend]") {
    Graph g = compileSource("t.nn", "input 3\ndense 4 relu\ndense 2\nloss mse\n", {4}).graph;
    OptimizerOptions o;
    o.method = "adam";
    const Hyper h = hyperParameters(o, 3);
    for (const char* backend : {"jit", "interp"}) {
        for (bool f64 : {false, true}) {
            INFO(backend << (f64 ? " f64" : " f32"));
            auto exe = compile(g, options(backend, f64));
            const int64_t n = exe->layout().parameterCount();
            auto check = [&](auto zero) {
                using T = decltype(zero);
                const size_t count = static_cast<size_t>(n);
                std::vector<T> p(count), gr(count), m(count), v(count);
                for (int64_t i = 0; i < n; ++i)
                    p[size_t(i)] = T(0.1 * double(i % 7) - 0.3), gr[size_t(i)] = T(0.05 * double(i % 5) - 0.1),
                    m[size_t(i)] = T(0.01 * double(i % 3)), v[size_t(i)] = T(0.002 * double(i % 4));
                std::vector<T> q = p, mq = m, vq = v;
                referenceUpdate(h, q.data(), gr.data(), mq.data(), vq.data(), 0, n);
                exe->update(UpdateArgs<T>{p.data(), gr.data(), m.data(), v.data()}, h.data(), 0, n / 2);
                exe->update(UpdateArgs<T>{p.data(), gr.data(), m.data(), v.data()}, h.data(), n / 2, n);
                for (int64_t i = 0; i < n; ++i) {
                    CHECK(double(p[size_t(i)]) == Approx(double(q[size_t(i)])).epsilon(1e-6).margin(1e-7));
                    CHECK(double(v[size_t(i)]) == Approx(double(vq[size_t(i)])).epsilon(1e-6).margin(1e-9));
                }
            };
            if (f64) check(0.0);
            else check(0.0f);
        }
    }
}

TEST_CASE("an unknown backend is a user error naming the known ones", "[layout][backend]") {
    Graph g = compileSource("t.nn", "input 3\ndense 2\nloss mse\n", {2}).graph;
    CHECK_THROWS_WITH(compile(g, options("gpu", false)), Catch::Contains("backend 'gpu' is not one of jit, interp"));
}
