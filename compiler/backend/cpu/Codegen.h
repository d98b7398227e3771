// Codegen.h — the back half of the pipeline: differentiate, fuse, plan memory, lower to LLVM,
// optimise, emit native code (or take it from the on-disk cache) and load it into the JIT.
// No LLVM types appear here.
#pragma once

#include "Graph.h"
#include "Kernels.h"
#include "Layout.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace gradc {

struct CodegenOptions {
    bool f64 = false;      ///< element type: float (default) or double
    bool cache = true;     ///< use the on-disk cache of compiled objects
    std::string cacheDir;  ///< default: defaultCacheDir() (ObjectCache.h), a folder per user
    bool profile = false;  ///< count each kernel's cycles (gradc bench --profile)
    int threads = 0;       ///< threads the code is planned for and runs on; 0: all cores
    /// The instruction set of the code (resolveIsa): "native", "avx2" or "avx512"; "": GRADC_ISA's
    /// value, else native. Part of the cache keys of compiled objects and measured tiles.
    std::string isa;
    /// Threads that optimise and emit the code, one part of the functions each (no more than
    /// the functions); 0: `threads`, no more than the cores. The code is the same either way.
    int compileThreads = 0;
    /// The matrix products' register tile and cache blocking (its threads are replaced by
    /// `threads`); default: chosen for the host (blockingFor, or GRADC_GEMM's override).
    std::optional<GemmBlocking> blocking;
};

/// The instruction sets gradc generates JIT code for on this CPU (CodegenOptions::isa,
/// SessionOptions::isa, the commands' --isa): "native" (every feature of the host), "avx2"
/// (AVX2 and FMA without AVX-512: what an AVX2-only CPU runs, on an AVX-512 one) and "avx512"
/// (native, on a CPU with AVX-512). Returns `isa` checked, or for "" the default: GRADC_ISA's
/// value, native when it is unset or empty. Throws UserError when the name is none of these or
/// the CPU lacks the instruction set, naming `option` ("--isa"; default "isa") or GRADC_ISA.
std::string resolveIsa(const std::string& isa, const std::string& option = "isa");

/// What code for `isa` (resolved) runs on: the host's LLVM CPU name and the widest vector
/// registers the code uses, in bits (512, 256 or 128).
struct IsaTarget {
    std::string cpu;
    int vectorBits = 0;
};
IsaTarget isaTarget(const std::string& isa);

/// How long one phase of a compilation took: wall-clock time, and the CPU time of the
/// compiling threads (which a machine shared with other work disturbs less; a phase
/// compiled in parts on threads counts all of them).
struct CompilePhase {
    std::string name; ///< "autodiff", "fusion + memory plan", "lowering", "LLVM optimisation", ...
    double ms = 0, cpuMs = 0;
};

/// Times the phases of a compilation: each call ends the phase named, which began where
/// the previous call left off, and adds its time to that phase's entry in `out` (a phase
/// may run in parts). GRADC_DEBUG=1 also prints each part on stderr as it ends.
class PhaseTimer {
public:
    explicit PhaseTimer(std::vector<CompilePhase>* out);
    void operator()(const char* phase);
    /// Adds CPU time spent on phase `phase` by other threads (its wall-clock time is the
    /// calling thread's).
    void addCpu(const char* phase, double cpuMs);
    /// The CPU time of the calling thread, in ms.
    static double threadCpuMs();

private:
    std::vector<CompilePhase>* out_;
    bool print_;
    void add(const char* phase, double ms, double cpuMs); ///< to the phase's entry in out_
    double wall_, cpu_; ///< when the current phase began, in ms
};

/// A model compiled to native code. The entry points (arguments: EntryAbi.h) are
///   forward (params, x, target, logits, loss, acts, workspace)
///   backward(params, x, target, loss, grads, acts, workspace)
struct CompiledModel {
    using Entry = void (*)(const void*, const void*, const void*, void*, void*, void*, void*);
    Entry forward = nullptr, backward = nullptr;
    /// The optimiser step: (params, grads, m, v, hyper, begin, end); see EntryAbi.h.
    using Update = void (*)(void*, const void*, void*, void*, const double*, int64_t, int64_t);
    Update update = nullptr;
    int64_t workspaceBytes = 0; ///< enough for either entry point
    Layout layout;              ///< where the entry points' buffers are, and their sizes
    bool f64 = false;
    std::string isa;            ///< the instruction set of the code (resolveIsa's)
    bool cacheHit = false;
    int objects = 1;            ///< the objects the code came in (parts compiled on threads)
    std::string cacheProblem;   ///< why the cache folder or entry was ignored; empty if it was not
    /// The compilation by phase, in the order they ran: autodiff, fusion + memory plan,
    /// lowering (to LLVM IR, verified, printed for the cache key), object cache, LLVM
    /// optimisation and machine code (not on a cache hit; compiled in parts on threads, their
    /// wall time is the slowest part's and their CPU time all the parts'), JIT load.
    std::vector<CompilePhase> phases;
    /// Wall time from graph to callable code: the phases' sum.
    double compileMs() const {
        double ms = 0;
        for (const CompilePhase& p : phases) ms += p.ms;
        return ms;
    }
    std::shared_ptr<void> owner; ///< keeps the JIT and its code alive
    /// With CodegenOptions::profile: cycles per kernel, summed over calls, and what each
    /// kernel is (kernelLabel, Kernels.h).
    const uint64_t* profileForward = nullptr;
    const uint64_t* profileBackward = nullptr;
    std::vector<std::string> kernelsForward, kernelsBackward;
};

/// Compiles `forward` (a model's forward graph) into forward and backward entry points.
/// Throws UserError with an actionable message if code generation or the JIT fails.
CompiledModel compileModel(const Graph& forward, const CodegenOptions& opts = {});

/// One line per matrix product of the forward and backward programs compiled with `opts`:
/// M x N x K, the transposes, the register tile and where it came from, the cache blocking,
/// what is packed and the threads (`gradc bench --explain`).
std::vector<std::string> explainProducts(const Graph& forward, const CodegenOptions& opts);

/// The plan (planScan) of each recurrent kernel of the forward and backward programs
/// compiled with `opts`, in program order: its row tiles, panels and scratch.
std::vector<ScanPlan> scanPlans(const Graph& forward, const CodegenOptions& opts);

/// A stage of compileModel as text: the kernel programs ("kernels"), their memory plans
/// ("memplan"), the optimised LLVM IR ("llvm") or the assembly ("asm").
std::string emitModule(const Graph& forward, const CodegenOptions& opts, const std::string& what);

} // namespace gradc
