// EndToEndTests.cpp — the seed's job on the first FashionMNIST batch: the compiled gradients
// against central differences (of the loss in double precision) on sampled coordinates, and
// against the reference interpreter on every coordinate.
#include "Autodiff.h"
#include "Codegen.h"
#include "Data.h"
#include "Execute.h"
#include "Init.h"
#include "Pipeline.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <random>

using namespace gradc;

TEST_CASE("the seed network's compiled gradients on FashionMNIST agree with central differences",
          "[e2e][heavy]") {
    const int64_t batch = 64;
    Graph g = compileFile(GRADC_SOURCE_DIR "/models/seed_sigmoid.nn", {batch}).graph;
    Examples ex = readExamples(kDefaultDataDir, true, batch);
    Bindings b = initialiseParameters(g, 42);
    b["x"] = Tensor{{batch, ex.features}, normalise(ex, 0.5, 0.5)};
    b["target"] = Tensor{{batch}, std::vector<double>(ex.labels.begin(), ex.labels.end())};
    CodegenOptions opts;
    opts.cache = false;
    auto jit = runCompiled(compileModel(g, opts), g, b, true);
    auto ref = interpretOutputs(differentiate(g), b);
    std::mt19937 rng(3);
    for (auto& p : g.params) {
        const Tensor& got = jit.at("grad:" + p.name);
        const Tensor& want = ref.at("grad:" + p.name);
        double scale = 0, err = 0;
        for (size_t i = 0; i < want.data.size(); ++i) {
            scale = std::max(scale, std::fabs(want.data[i]));
            err = std::max(err, std::fabs(got.data[i] - want.data[i]));
        }
        INFO(p.name);
        CHECK(err <= 1e-4 * scale);
        Tensor& w = b.at(p.name);
        for (int s = 0; s < 6; ++s) {
            size_t i = rng() % w.data.size();
            const double eps = 1e-6, saved = w.data[i];
            w.data[i] = saved + eps;
            double up = interpret(g, b)[g.output(OutputRole::Loss)].data[0];
            w.data[i] = saved - eps;
            double down = interpret(g, b)[g.output(OutputRole::Loss)].data[0];
            w.data[i] = saved;
            double numeric = (up - down) / (2 * eps);
            INFO(p.name << "[" << i << "]: compiled " << got.data[i] << ", central difference " << numeric);
            // float code: within 1e-4 of the tensor's scale; the difference quotient itself is
            // good to about 1e-9 here.
            CHECK(std::fabs(got.data[i] - numeric) <= 1e-4 * scale + 1e-9);
        }
    }
}

TEST_CASE("a conv's parameters start as nn.Conv2d's: bounds and scales from fan_in = C KH KW", "[init][conv]") {
    Graph g = compileSource("t.nn", "input 3x12x12\nconv 64 5x3\nconv 32 3x3 init=xavier\nconv 16 1x1 init=kaiming\n"
                                    "flatten\ndense 2\nloss mse\n", {2}).graph;
    Bindings b = initialiseParameters(g, 7);
    auto stats = [&](const std::string& name) {
        double largest = 0, sq = 0;
        for (double v : b.at(name).data) largest = std::max(largest, std::fabs(v)), sq += v * v;
        return std::pair{largest, std::sqrt(sq / double(b.at(name).data.size()))};
    };
    // Default: U(±1/sqrt(fan_in)) for weight and bias (kaiming_uniform with a = sqrt(5)).
    const double bound = 1 / std::sqrt(3.0 * 5 * 3);
    for (const char* name : {"layers.0.weight", "layers.0.bias"}) {
        INFO(name);
        CHECK(stats(name).first <= bound);
        CHECK(stats(name).first > 0.8 * bound);
    }
    CHECK(stats("layers.0.weight").second == Approx(bound / std::sqrt(3.0)).epsilon(0.1));
    // xavier: std sqrt(2 / (fan_in + fan_out)) with fan_in = 64 * 9 and fan_out = 32 * 9.
    CHECK(stats("layers.1.weight").second == Approx(std::sqrt(2.0 / (64 * 9 + 32 * 9))).epsilon(0.05));
    CHECK(stats("layers.1.bias").first == 0);
    // kaiming (not the first weight): std sqrt(2 / fan_in), fan_in = 32 * 1 * 1.
    CHECK(stats("layers.2.weight").second == Approx(std::sqrt(2.0 / 32)).epsilon(0.1));
}
