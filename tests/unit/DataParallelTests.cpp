// DataParallelTests.cpp — what the compiled code of a data-parallel run (Graph::syncWorld > 1)
// does apart from MPI, which tests/mpi runs for real: its batchnorm sums its statistics through
// gradc_allreduce_sum, and its backward pass reports each gradient once, when it is final.
#include "Codegen.h"
#include "Data.h"
#include "Execute.h"
#include "Init.h"
#include "Layout.h"
#include "Pipeline.h"
#include "ThreadPool.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <set>

using namespace gradc;

namespace {

/// The first `batch` training images (repeated `copies` times) and their labels.
Bindings firstImages(const Graph& g, int64_t batch, int copies) {
    Examples ex = readExamples(kDefaultDataDir, true, batch);
    std::vector<double> x, labels;
    for (int c = 0; c < copies; ++c) {
        const std::vector<double> images = normalise(ex, 0.5, 0.5);
        x.insert(x.end(), images.begin(), images.end());
        labels.insert(labels.end(), ex.labels.begin(), ex.labels.end());
    }
    Bindings b = initialiseParameters(g, 42);
    b["x"] = Tensor{g[0].shape, x};
    b["target"] = Tensor{{batch * copies}, labels};
    return b;
}

} // namespace

TEST_CASE("a synchronised batchnorm's statistics are the processes' together: two processes with the same "
          "rows give one process's gradients on both copies",
          "[data-parallel]") {
    // Another process with the same rows as this one adds the same sums: the allreduce doubles them.
    setAllreduce([](void* data, int64_t n, bool f64) {
        for (int64_t i = 0; i < n; ++i)
            f64 ? static_cast<double*>(data)[i] *= 2 : static_cast<float*>(data)[i] *= 2;
    });
    const std::string path = GRADC_SOURCE_DIR "/models/seed_sigmoid_bn.nn";
    for (bool f64 : {false, true}) {
        CodegenOptions opts;
        opts.cache = false, opts.f64 = f64;
        Graph whole = compileFile(path, {32}).graph, half = compileFile(path, {16}).graph;
        half.syncWorld = 2;
        auto one = runCompiled(compileModel(whole, opts), whole, firstImages(whole, 16, 2), true);
        auto shared = runCompiled(compileModel(half, opts), half, firstImages(half, 16, 1), true);
        CHECK(shared.at("loss").data[0] == Approx(one.at("loss").data[0]).epsilon(f64 ? 1e-12 : 1e-6));
        // Each gradient within 1e-5 (f32) or 1e-12 (f64) of the largest of any: a bias before
        // batchnorm has a gradient of zero up to rounding.
        double scale = 0;
        for (auto& p : whole.params)
            for (double v : one.at("grad:" + p.name).data) scale = std::max(scale, std::fabs(v));
        for (auto& p : whole.params) {
            const Tensor &want = one.at("grad:" + p.name), &got = shared.at("grad:" + p.name);
            double err = 0;
            for (size_t i = 0; i < want.data.size(); ++i) err = std::max(err, std::fabs(got.data[i] - want.data[i]));
            INFO(p.name << (f64 ? " f64" : " f32"));
            CHECK(err <= (f64 ? 1e-12 : 1e-5) * scale);
        }
        // Without the sums of the other process, the statistics are this one's alone: different.
        setAllreduce(nullptr);
        auto alone = runCompiled(compileModel(half, opts), half, firstImages(half, 16, 1), true);
        CHECK(alone.at("loss").data[0] != Approx(one.at("loss").data[0]).epsilon(1e-3));
        setAllreduce([](void* data, int64_t n, bool f64) {
            for (int64_t i = 0; i < n; ++i)
                f64 ? static_cast<double*>(data)[i] *= 2 : static_cast<float*>(data)[i] *= 2;
        });
    }
    setAllreduce(nullptr);
}

TEST_CASE("a data-parallel backward pass reports every gradient once, the last layers' first", "[data-parallel]") {
    using Calls = std::vector<std::pair<int64_t, int64_t>>;
    for (const char* model : {"/models/seed_sigmoid_bn.nn", "/models/cnn_relu.nn", "/models/seq_lstm.nn"}) {
        Graph g = compileFile(std::string(GRADC_SOURCE_DIR) + model, {4}).graph;
        g.syncWorld = 2;
        CodegenOptions opts;
        opts.cache = false;
        const CompiledModel compiled = compileModel(g, opts);
        Calls calls;
        setGradientsReady([](void* c, int64_t offset, int64_t n) { static_cast<Calls*>(c)->emplace_back(offset, n); },
                          &calls);
        Bindings b = initialiseParameters(g, 1);
        b["x"] = Tensor{g[0].shape, std::vector<double>(size_t(elementCount(g[0].shape)), 0.5)};
        b["target"] = Tensor{{4}, {1, 2, 3, 4}};
        runCompiled(compiled, g, b, true);
        setGradientsReady(nullptr, nullptr);
        std::set<std::pair<int64_t, int64_t>> want;
        const Layout layout = computeLayout(g);
        for (const LayoutEntry* e : layout.all(Role::Gradient)) want.insert({e->offset, elementCount(e->shape)});
        INFO(model);
        CHECK(calls.size() == want.size());
        CHECK(std::set<std::pair<int64_t, int64_t>>(calls.begin(), calls.end()) == want);
        REQUIRE(!calls.empty());
        CHECK(calls.front().first > calls.back().first); // the output layer's before the first layer's
        // A run of one process has no such calls.
        g.syncWorld = 1;
        Calls none;
        setGradientsReady([](void* c, int64_t offset, int64_t n) { static_cast<Calls*>(c)->emplace_back(offset, n); },
                          &none);
        runCompiled(compileModel(g, opts), g, b, true);
        setGradientsReady(nullptr, nullptr);
        CHECK(none.empty());
    }
}
