// bench.cpp — `gradc bench MODEL`: times the compiled forward + backward step.
#include "Commands.h"

#include "Autodiff.h"
#include "Codegen.h"
#include "Execute.h"
#include "Init.h"
#include "Pipeline.h"
#include "ThreadPool.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <vector>

namespace gradc::cli {

void benchOptions(po::options_description& d) {
    addModelOptions(d);
    d.add_options()("steps", po::value<int>()->default_value(50), "timed steps")(
        "profile", "count the cycles of each kernel and print their shares")(
        "statistics", "time the step of gradc grads, which also stores each hidden activation's input "
                      "for its statistics (default: the step of gradc train, which does not)");
    addCodegenOptions(d);
}

namespace {

/// Multiply-adds of the matrix products in a graph, counted as 2 flops each.
double matmulFlops(const Graph& g) {
    double flops = 0;
    for (auto& n : g.nodes) {
        if (n.op == Op::MatMulNT) flops += 2.0 * double(elementCount(n.shape)) * double(g[n.in[0]].shape[1]);
        if (n.op == Op::MatMulNN) flops += 2.0 * double(elementCount(n.shape)) * double(g[n.in[0]].shape[1]);
        if (n.op == Op::MatMulTN) flops += 2.0 * double(elementCount(n.shape)) * double(g[n.in[0]].shape[0]);
    }
    return flops;
}

} // namespace

/// `gradc bench MODEL`: times the compiled forward + backward step on random data.
int runBench(const po::variables_map& vm) {
    const int64_t batch = semaOptions(vm).batch;
    const int steps = vm["steps"].as<int>();
    if (steps < 1 || steps > 1000000) throw UsageError(fmt::format("--steps {} is out of range (1 to 1000000)", steps));
    CodegenOptions codegen = codegenOptions(vm);
    codegen.profile = vm.count("profile") != 0;
    if (codegen.profile) codegen.cache = false; // profiled code is not the code users run
    const std::string path = vm["model"].as<std::string>();
    // The step `gradc train` runs; with --statistics, the one `gradc grads` runs.
    Graph g = compileFile(path, {batch, false, false, vm.count("statistics") != 0}).graph;
    CompiledModel cm = compileModel(g, codegen);
    Graph grad = differentiate(g);
    std::mt19937_64 rng(1);
    Bindings b = initialiseParameters(g, 1);
    for (auto& n : g.nodes) {
        if (n.op != Op::Input) continue;
        Tensor t{n.shape, std::vector<double>(size_t(elementCount(n.shape)))};
        const int64_t classes = g[g.output(OutputRole::Logits)].shape[1];
        for (double& v : t.data) v = n.type == DType::Index ? double(rng() % uint64_t(classes)) : double(rng() % 1000) / 1000.0;
        b[n.name] = std::move(t);
    }
    PreparedCall call(cm, g, b);
    call.step(true); // warm up
    // Five rounds (fewer with fewer steps); the median round's time per step, which a shared
    // machine's pauses disturb less than the mean.
    const int rounds = std::min(steps, 5);
    std::vector<double> perStep;
    for (int r = 0; r < rounds; ++r) {
        const int n = steps / rounds + (r < steps % rounds);
        auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < n; ++i) call.step(true);
        perStep.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / n);
    }
    std::sort(perStep.begin(), perStep.end());
    const double ms = perStep[perStep.size() / 2];
    double gflops = matmulFlops(grad) / (ms * 1e6);
    const double peak = measureFmaPeak(codegen.f64);
    fmt::print("{}: batch {}, {} steps, {} code {} in {:.1f} ms\n", g.model, batch, steps,
               codegen.f64 ? "f64" : "f32", cm.cacheHit ? "loaded from the cache" : "compiled", cm.compileMs);
    fmt::print("FMA peak (measured): {:.1f} GFLOP/s per thread; {} thread{}\n", peak, threadCount(),
               threadCount() == 1 ? "" : "s");
    fmt::print("forward + backward: {:.3f} ms per step, {:.2f} GFLOP/s ({:.3f} GFLOP per step), {:.1f}% of peak\n", ms,
               gflops, matmulFlops(grad) / 1e9, 100 * gflops / (peak * threadCount()));
    fmt::print("(median of {} rounds, {:.3f} to {:.3f} ms; {})\n", rounds, perStep.front(), perStep.back(),
               vm.count("statistics") ? "with activation statistics, as gradc grads"
                                      : "without activation statistics, as gradc train");
    if (codegen.profile) {
        uint64_t total = 0;
        for (size_t i = 0; i < cm.kernelsBackward.size(); ++i) total += cm.profileBackward[i];
        fmt::print("\nbackward entry point, share of cycles per kernel:\n");
        for (size_t i = 0; i < cm.kernelsBackward.size(); ++i)
            fmt::print("  {:5.1f}%  {}\n", 100.0 * double(cm.profileBackward[i]) / double(total), cm.kernelsBackward[i]);
    }
    return 0;
}

} // namespace gradc::cli
