// ClipTests.cpp — gradient-norm clipping (torch.nn.utils.clip_grad_norm_): the clip
// coefficient, the update step's gradient scale (HyperSlot::GradScale) in compiled code and in
// the reference, autodiff's Σ g² output (fused into the products that make the gradients), and
// the Engine's clipped training step against the same step computed by hand.
#include "Autodiff.h"
#include "Backend.h"
#include "Codegen.h"
#include "Engine.h"
#include "Execute.h"
#include "Interpreter.h"
#include "Kernels.h"
#include "Optimizer.h"
#include "Pipeline.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>

using namespace gradc;

namespace {

const char* kModel = "input 6\ndense 9 relu\nlayernorm\ndense 7 tanh\nbatchnorm\ndense 3\nloss cross_entropy\n";

double sumOfSquaredGradients(const std::map<std::string, Tensor>& out) {
    double s = 0;
    for (auto& [label, t] : out)
        if (label.rfind("grad:", 0) == 0)
            for (double v : t.data) s += v * v;
    return s;
}

std::unique_ptr<Engine> engineFor(const std::string& backend, bool f64 = false) {
    SessionOptions o;
    o.backend = backend, o.cache = false;
    return std::make_unique<Engine>(compileSource("t.nn", kModel, {8}).graph,
                                    compileSource("t.nn", kModel, {8, true, true}).graph, o, f64);
}

} // namespace

TEST_CASE("the clip coefficient is clip_grad_norm_'s: max / (norm + 1e-6), at most 1, NaN kept", "[clip]") {
    CHECK(clipCoefficient(10, 1) == 1 / (10 + 1e-6));
    CHECK(clipCoefficient(0.5, 1) == 1);
    CHECK(clipCoefficient(1, 1) < 1); // the 1e-6 makes a norm equal to the limit clip, barely
    CHECK(clipCoefficient(0, 1) == 1);
    CHECK(std::isnan(clipCoefficient(std::nan(""), 1)));
    CHECK(clipCoefficient(std::numeric_limits<double>::infinity(), 1) == 0);
    OptimizerOptions o;
    for (double bad : {-1.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
        o.clipGradNorm = bad;
        CAPTURE(bad);
        CHECK(errorOf([&] { hyperParameters(o, 1); }).find("gradient norm's limit") != std::string::npos);
    }
    o.clipGradNorm = 0; // the library's "no clipping"
    CHECK(hyperParameters(o, 1)[size_t(HyperSlot::GradScale)] == 1);
}

TEST_CASE("gradc_update multiplies the gradient by hyper[GradScale] before the weight decay, as the reference does",
          "[clip][abi]") {
    STATIC_REQUIRE(size_t(HyperSlot::GradScale) == 11);
    const CompiledModel cm = compiledUpdateStep();
    REQUIRE(cm.update);
    OptimizerOptions sgd, momentum, adam;
    sgd.weightDecay = 0.1;
    momentum.momentum = 0.9, momentum.weightDecay = 0.01;
    adam.method = "adam", adam.lr = 1e-2, adam.weightDecay = 0.05;
    for (const OptimizerOptions* o : {&sgd, &momentum, &adam}) {
        for (double scale : {0.3, 1.0}) {
            CAPTURE(o->method, o->momentum, scale);
            std::mt19937 rng(5);
            std::normal_distribution<float> normal(0, 1);
            const int64_t n = 300;
            std::vector<float> p(n), g(n), m(n), v(n), scaled(n);
            for (float& x : p) x = normal(rng);
            std::vector<float> q = p, mq = m, vq = v, r = p, mr = m, vr = v;
            for (int64_t t = 1; t <= 3; ++t) {
                for (float& x : g) x = normal(rng);
                Hyper h = hyperParameters(*o, t);
                h[size_t(HyperSlot::GradScale)] = scale;
                cm.update(p.data(), g.data(), m.data(), v.data(), h.data(), 0, n);
                referenceUpdate(h, q.data(), g.data(), mq.data(), vq.data(), 0, n);
                // The same step on gradients scaled beforehand, with scale 1: clip_grad_norm_'s
                // in-place multiplication, then the optimiser.
                for (int64_t i = 0; i < n; ++i) scaled[size_t(i)] = g[size_t(i)] * float(scale);
                h[size_t(HyperSlot::GradScale)] = 1;
                referenceUpdate(h, r.data(), scaled.data(), mr.data(), vr.data(), 0, n);
            }
            for (int64_t i = 0; i < n; ++i) {
                CAPTURE(i);
                CHECK(p[size_t(i)] == Approx(q[size_t(i)]).epsilon(1e-6).margin(1e-7));
                CHECK(q[size_t(i)] == Approx(r[size_t(i)]).epsilon(1e-6).margin(1e-7));
            }
        }
    }
    // The scale changes the step: half the gradient, half the SGD step.
    std::vector<float> p = {1}, g = {2}, m = {0}, v = {0};
    Hyper h = hyperParameters(sgd, 1);
    h[size_t(HyperSlot::WeightDecay)] = 0;
    h[size_t(HyperSlot::GradScale)] = 0.5;
    cm.update(p.data(), g.data(), m.data(), v.data(), h.data(), 0, 1);
    CHECK(p[0] == Approx(1 - 0.01 * 0.5 * 2).epsilon(1e-7));
}

TEST_CASE("autodiff's gradNorm output is the sum of the squares of every gradient", "[clip][autodiff]") {
    for (const char* text : {kModel, "input 1x6x6\nconv 3 3x3 relu\nmaxpool 2\nflatten\ndense 4\nloss cross_entropy\n",
                             "input 5\ndense 1 bias=false\nloss mse\n"}) {
        CAPTURE(text);
        Graph fwd = compileSource("t.nn", text, {4}).graph;
        std::mt19937 rng(3);
        const Bindings b = randomBindings(fwd, rng);
        const Graph plain = differentiate(fwd), withNorm = differentiate(fwd, {.gradNorm = true});
        for (auto& o : plain.outputs) CHECK(o.role != OutputRole::GradNormSq); // nothing without the option
        auto out = interpretOutputs(withNorm, b);
        REQUIRE(out.count("grad_norm_sq"));
        const double want = sumOfSquaredGradients(out);
        CHECK(want > 0);
        CHECK(out.at("grad_norm_sq").data.at(0) == Approx(want).epsilon(1e-12));
        // The gradients themselves are the same with and without it.
        auto base = interpretOutputs(plain, b);
        for (auto& [label, t] : base)
            if (label.rfind("grad:", 0) == 0) CHECK(out.at(label).data == t.data);
    }
}

TEST_CASE("compiled code sums each weight gradient's squares in the epilogue of the product that makes it",
          "[clip][jit]") {
    Graph fwd = compileSource("t.nn", "input 20\ndense 16 relu\ndense 12 tanh\ndense 5\nloss cross_entropy\n", {8}).graph;
    fwd.gradNorm = true;
    const Layout layout = computeLayout(fwd);
    REQUIRE(layout.find(Role::GradNormSq));
    const Graph grad = differentiate(fwd, {.gradNorm = true});
    const KernelProgram p = buildKernels(grad, "backward", backwardOutputs(grad), layout, 4, GemmBlocking{});
    int weightProducts = 0, withSquares = 0;
    for (const Kernel& k : p.kernels) {
        if (k.kind != Kernel::Kind::Loop || k.a < 0 || !k.transA) continue; // dW = gᵀ x
        ++weightProducts;
        withSquares += !k.columnSums.empty();
    }
    CHECK(weightProducts == 3);
    CHECK(withSquares == 3);
    // And the value: the compiled backward pass's Σ g² against the gradients it wrote.
    for (const char* backend : {"jit", "interp"}) {
        CAPTURE(backend);
        BackendOptions bo;
        bo.backend = backend, bo.cache = false;
        auto exe = compile(fwd, bo);
        std::mt19937 rng(9);
        auto out = run(*exe, randomBindings(fwd, rng), /*backward=*/true);
        REQUIRE(out.count("grad_norm_sq"));
        CHECK(out.at("grad_norm_sq").data.at(0) == Approx(sumOfSquaredGradients(out)).epsilon(1e-5));
    }
}

TEST_CASE("a clipped training step is clip_grad_norm_ then the optimiser's step on the unclipped gradients",
          "[clip][train]") {
    for (const char* backend : {"jit", "interp"}) {
        for (const char* method : {"sgd", "adam"}) {
            for (double limit : {0.05, 1e6}) { // clipped on every step, and never
                CAPTURE(backend, method, limit);
                auto clipped = engineFor(backend), plain = engineFor(backend);
                OptimizerOptions o;
                o.method = method, o.lr = 0.1, o.momentum = std::string(method) == "sgd" ? 0.9 : 0;
                o.weightDecay = 0.01;
                OptimizerOptions c = o;
                c.clipGradNorm = limit;
                clipped->setOptimizer(c), plain->setOptimizer(o); // compiled again with the norm
                clipped->initialise(2), plain->initialise(2);
                CHECK(clipped->clipping());
                CHECK_FALSE(plain->clipping());
                std::vector<float> state(plain->state().data<float>(), plain->state().data<float>() + plain->state().size());
                std::vector<float> m(size_t(plain->parameterCount())), v(m.size());
                std::mt19937 rng(4);
                std::normal_distribution<float> normal(0, 1);
                std::vector<float> x(8 * 6);
                std::vector<int32_t> labels(8);
                for (int64_t t = 1; t <= 3; ++t) {
                    for (float& e : x) e = normal(rng);
                    for (int32_t& l : labels) l = int32_t(rng() % 3);
                    clipped->trainStep(x.data(), labels.data());
                    // By hand: the gradients at the same parameters, their norm, the step.
                    std::copy(state.begin(), state.end(), plain->state().data<float>());
                    plain->backward(x.data(), labels.data());
                    const float* g = plain->gradients().data<float>();
                    double sumSq = 0;
                    for (int64_t i = 0; i < plain->parameterCount(); ++i) sumSq += double(g[i]) * g[i];
                    const double norm = std::sqrt(sumSq), scale = clipCoefficient(norm, limit);
                    CHECK(clipped->lastClip().norm == Approx(norm).epsilon(1e-5));
                    CHECK(clipped->lastClip().clipped == (limit < 1));
                    CHECK(clipped->lastClip().scale == Approx(scale).epsilon(1e-5));
                    Hyper h = hyperParameters(o, t);
                    h[size_t(HyperSlot::GradScale)] = scale;
                    referenceUpdate(h, state.data(), g, m.data(), v.data(), 0, plain->parameterCount());
                }
                const float* got = clipped->state().data<float>();
                double worst = 0, largest = 0;
                for (int64_t i = 0; i < plain->parameterCount(); ++i) {
                    worst = std::max(worst, std::fabs(double(got[i]) - state[size_t(i)]));
                    largest = std::max(largest, std::fabs(double(state[size_t(i)])));
                }
                CHECK(worst <= 2e-6 * largest);
            }
        }
    }
}
