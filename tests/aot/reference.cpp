// reference.cpp — the JIT's gradients and loss for the batch tests/aot/example.c uses, compared
// with the gradients and loss the ahead-of-time object wrote (within 1e-4 relative).
//   reference MODEL.nn BATCH PARAMS.safetensors GRADS.out
#include "Codegen.h"
#include "Execute.h"
#include "Layout.h"
#include "Pipeline.h"
#include "SafeTensors.h"

#include <cmath>
#include <cstdio>
#include <fstream>

using namespace gradc;

int main(int argc, char** argv) {
    if (argc != 5) return 2;
    const int64_t batch = std::atoll(argv[2]);
    Graph g = compileFile(argv[1], {batch}).graph;
    Bindings b = loadParameters(g, argv[3]);
    const int64_t inputs = perExample(g[0].shape), outputs = g[g.output(OutputRole::Logits)].shape[1];
    Tensor x{g[0].shape, {}}, labels{{batch}, {}}; // x of any rank: [batch, inputs] values in order
    for (int64_t i = 0; i < batch * inputs; ++i) x.data.push_back(double(float(double((i * 37) % 255) / 127.5 - 1.0)));
    for (int64_t r = 0; r < batch; ++r) labels.data.push_back(double(r % outputs));
    b["x"] = x, b["target"] = labels;
    CodegenOptions opts;
    opts.cache = false;
    auto jit = runCompiled(compileModel(g, opts), g, b, true);
    std::ifstream in(argv[4], std::ios::binary);
    std::vector<float> aot(size_t(g.parameterCount()) + 1); // the gradients, then the loss (then acts)
    if (!in.read(reinterpret_cast<char*>(aot.data()), std::streamsize(aot.size() * sizeof(float)))) {
        std::fprintf(stderr, "%s: short\n", argv[4]);
        return 1;
    }
    // A tensor that is zero in exact arithmetic (the bias of a layer that batchnorm follows)
    // holds rounding noise only: it is measured against the model's largest gradient.
    double modelScale = 0;
    for (auto& p : g.params)
        for (double v : jit.at("grad:" + p.name).data) modelScale = std::max(modelScale, std::fabs(v));
    size_t offset = 0, nans = 0, nanMismatches = 0;
    double worst = 0;
    for (auto& p : g.params) {
        const Tensor& want = jit.at("grad:" + p.name);
        double scale = 0, err = 0;
        for (size_t i = 0; i < want.data.size(); ++i) {
            if (std::isnan(want.data[i]) || std::isnan(aot[offset + i])) { // NaN exactly where the JIT has it
                nanMismatches += std::isnan(want.data[i]) != std::isnan(aot[offset + i]);
                nans += std::isnan(want.data[i]);
                continue;
            }
            scale = std::max(scale, std::fabs(want.data[i]));
            err = std::max(err, std::fabs(double(aot[offset + i]) - want.data[i]));
        }
        if (scale < 1e-5 * modelScale) scale = modelScale;
        offset += want.data.size();
        double rel = scale > 0 ? err / scale : err;
        worst = std::max(worst, rel);
        std::printf("  %-16s largest difference %.2e of the tensor's largest gradient\n", p.name.c_str(), rel);
    }
    const double jitLoss = jit.at("loss").data.at(0), aotLoss = aot.back();
    const double lossDiff = std::isnan(jitLoss) || std::isnan(aotLoss)
                                ? (std::isnan(jitLoss) == std::isnan(aotLoss) ? 0.0 : INFINITY)
                                : std::fabs(aotLoss - jitLoss) / std::max(std::fabs(jitLoss), 1e-30);
    std::printf("  loss: JIT %.9g, object %.9g, relative difference %.2e\n", jitLoss, aotLoss, lossDiff);
    worst = std::max(worst, lossDiff);
    // Each recurrent layer's norms of dL/dh_t, in acts after the loss: element by element.
    const Layout layout = computeLayout(g);
    std::vector<float> acts(size_t(layout.size(Array::Acts)));
    if (!in.read(reinterpret_cast<char*>(acts.data()), std::streamsize(acts.size() * sizeof(float)))) {
        std::fprintf(stderr, "%s: no acts after the loss\n", argv[4]);
        return 1;
    }
    for (const LayoutEntry* e : layout.all(Role::ThroughTime)) {
        const Tensor& want = jit.at("through:" + e->name);
        double rel = 0;
        for (size_t i = 0; i < want.data.size(); ++i)
            rel = std::max(rel, std::fabs(double(acts[size_t(e->offset) + i]) - want.data[i]) / std::max(want.data[i], 1e-30));
        std::printf("  through:%-8s largest difference %.2e of each step's norm\n", e->name.c_str(), rel);
        worst = std::max(worst, rel);
    }
    std::printf("ahead-of-time object vs JIT: largest relative difference %.2e; %zu NaN, %zu where only one "
                "has NaN\n", worst, nans, nanMismatches);
    return worst <= 1e-4 && nanMismatches == 0 ? 0 : 1;
}
