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

#include <random>

using namespace gradc;

TEST_CASE("the seed network's compiled gradients on FashionMNIST agree with central differences",
          "[e2e]") {
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
