// bench.cpp — `gradc bench MODEL`: times the compiled forward + backward step. The options and
// the printing; the job is runtime/Jobs.h's.
#include "Commands.h"

#include "Jobs.h"

#include <fmt/format.h>

namespace gradc::cli {

void benchOptions(po::options_description& d) {
    addModelOptions(d);
    d.add_options()("steps", po::value<int>()->default_value(50), "timed steps")(
        "profile", "count the cycles of each kernel and print their shares")(
        "explain", "print each matrix product's shape, register tile, cache blocking, packing and threads, "
                   "and where the tile came from")(
        "statistics", "time the step of gradc grads, which also stores each hidden activation's input "
                      "for its statistics (default: the step of gradc train, which does not)");
    addCodegenOptions(d);
}

/// `gradc bench MODEL`: times the compiled forward + backward step on random data.
int runBench(const po::variables_map& vm) {
    BenchOptions o;
    o.batch = semaOptions(vm).batch;
    o.steps = vm["steps"].as<int>();
    checkJobOptions(o);
    const CodegenOptions codegen = codegenOptions(vm);
    o.f64 = codegen.f64, o.cache = codegen.cache, o.threads = codegen.threads, o.isa = codegen.isa;
    o.profile = vm.count("profile") != 0;
    o.statistics = vm.count("statistics") != 0;
    o.explain = vm.count("explain") != 0;
    o.model = vm["model"].as<std::string>();
    const BenchResult r = gradc::runBench(o);
    const double gflops = r.gflopPerStep * 1e3 / r.msPerStep;
    fmt::print("{}: batch {}, {} steps, {} code {} in {:.1f} ms\n", r.model, r.batch, r.steps, r.f64 ? "f64" : "f32",
               r.cacheHit ? "loaded from the cache" : "compiled", r.compileMs);
    fmt::print("ISA: {} ({}, {}-bit vectors)\n", r.isa, r.cpu, r.vectorBits);
    fmt::print("FMA peak (measured): {:.1f} GFLOP/s per thread; {} thread{}\n", r.fmaPeak, r.threads,
               r.threads == 1 ? "" : "s");
    fmt::print("forward + backward: {:.3f} ms per step, {:.2f} GFLOP/s ({:.3f} GFLOP per step), {:.1f}% of peak\n",
               r.msPerStep, gflops, r.gflopPerStep, 100 * gflops / (r.fmaPeak * r.threads));
    fmt::print("(median of {} rounds, {:.3f} to {:.3f} ms; {})\n", r.roundMs.size(), r.roundMs.front(), r.roundMs.back(),
               o.statistics ? "with activation statistics, as gradc grads"
                            : "without activation statistics, as gradc train");
    fmt::print("\ncompilation by phase (ms wall clock, ms CPU):\n");
    for (const auto& p : r.compilePhases) fmt::print("  {:<22} {:9.1f} {:9.1f}\n", p.name, p.ms, p.cpuMs);
    if (vm.count("explain")) {
        fmt::print("\nmatrix products (M x N x K; tile: rows x columns):\n");
        for (const std::string& line : r.products) fmt::print("  {}\n", line);
    }
    if (o.profile) {
        fmt::print("\nbackward entry point, share of cycles per kernel:\n");
        for (auto& [kernel, share] : r.kernelShares) fmt::print("  {:5.1f}%  {}\n", 100.0 * share, kernel);
    }
    return 0;
}

} // namespace gradc::cli
