// Codegen.cpp — from a forward graph to callable native code: build the kernel programs,
// lower, optimise, emit an object (or take it from ObjectCache) and load it into the JIT.
#include "Codegen.h"

#include "Autodiff.h"
#include "EntryAbi.h"
#include "Jit.h"
#include "Kernels.h"
#include "LowerToLLVM.h"
#include "ObjectCache.h"
#include "Pipeline.h"
#include "ThreadPool.h"
#include "CodegenInternal.h"

#include <fmt/format.h>
#include <llvm/Analysis/TargetLibraryInfo.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/LegacyPassManager.h>
#include <llvm/IR/Module.h>
#include <llvm/IR/Verifier.h>
#include <llvm/Passes/PassBuilder.h>
#include <llvm/Passes/StandardInstrumentations.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/raw_ostream.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

namespace gradc {

[[noreturn]] void failLLVM(const std::string& what, llvm::Error err) {
    throw UserError({}, fmt::format("{}: {}", what, llvm::toString(std::move(err))));
}

std::unique_ptr<llvm::TargetMachine> hostTargetMachine() {
    return checkLLVM("cannot set up code generation for this CPU", Jit::targetMachine());
}

std::string printModule(const llvm::Module& m) {
    std::string text;
    llvm::raw_string_ostream(text) << m;
    return text;
}

GemmBlocking blockingFor(const std::string& features, bool f64) {
    // The micro-kernel's register tile: with AVX-512's 32 vector registers, 6 rows by 4
    // vectors (24 accumulators); with AVX2's 16 (or SSE), 6 by 2. Measured on the seed
    // network (AVX-512, f32): 6x4 ran 10.6 ms a step; 8x3 10.9, 12x2 11.3, 14x2 11.9, 4x6
    // 12.1. Software prefetching of B did not help.
    const int bits = features.find("+avx512f") != std::string::npos ? 512
                     : features.find("+avx2") != std::string::npos  ? 256
                                                                    : 128;
    GemmBlocking b;
    b.vl = bits / (f64 ? 64 : 32);
    b.nv = bits == 512 ? 4 : 2;
    b.mr = 6;
    return b;
}

static GemmBlocking hostBlocking(bool f64, int threads = 1) {
    GemmBlocking b = blockingFor(Jit::hostFeatures(), f64);
    b.threads = resolveThreads(threads);
    return b;
}

PhaseTimer::PhaseTimer(std::vector<CompilePhase>* out) : out_(out), print_(std::getenv("GRADC_DEBUG") != nullptr) {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    wall_ = double(t.tv_sec) * 1e3 + double(t.tv_nsec) / 1e6;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    cpu_ = double(t.tv_sec) * 1e3 + double(t.tv_nsec) / 1e6;
}

void PhaseTimer::operator()(const char* phase) {
    PhaseTimer now(nullptr);
    const double ms = now.wall_ - wall_, cpuMs = now.cpu_ - cpu_;
    wall_ = now.wall_, cpu_ = now.cpu_;
    if (print_) fmt::print(stderr, "gradc: {:8.2f} ms ({:8.2f} ms CPU)  {}\n", ms, cpuMs, phase);
    if (!out_) return;
    auto it = std::find_if(out_->begin(), out_->end(), [&](const CompilePhase& p) { return p.name == phase; });
    if (it == out_->end()) it = out_->insert(out_->end(), CompilePhase{phase, 0, 0});
    it->ms += ms, it->cpuMs += cpuMs;
}

Programs buildPrograms(const Graph& fwd, bool f64, const GemmBlocking& blocking, PhaseTimer* timer) {
    auto phase = [&](const char* name) {
        if (timer) (*timer)(name);
    };
    Layout layout = computeLayout(fwd);
    const int bytes = f64 ? 8 : 4;
    Programs out{buildKernels(fwd, "forward", fwd.outputs, layout, bytes, blocking), {}, layout};
    phase("fusion + memory plan");
    if (fwd.eval) { // evaluation mode has no backward pass: its entry point does nothing
        out.backward.name = "backward";
        out.backward.blocking = blocking;
        return out;
    }
    Graph grad = differentiate(fwd);
    phase("autodiff");
    out.backward = buildKernels(grad, "backward", backwardOutputs(grad), layout, bytes, blocking);
    phase("fusion + memory plan");
    return out;
}

std::unique_ptr<llvm::Module> lower(llvm::LLVMContext& ctx, const Programs& p, bool f64,
                                    llvm::TargetMachine& tm, bool profile) {
    auto m = lowerToLLVM(ctx, p.forward, p.backward, f64, profile);
    m->setDataLayout(tm.createDataLayout());
    m->setTargetTriple(tm.getTargetTriple().str());
    std::string errors;
    llvm::raw_string_ostream os(errors);
    internal_assert(!llvm::verifyModule(*m, &os), "invalid LLVM IR: " + errors);
    return m;
}

void optimise(llvm::Module& m, llvm::TargetMachine& tm, bool libmvec) {
    llvm::LoopAnalysisManager lam;
    llvm::FunctionAnalysisManager fam;
    llvm::CGSCCAnalysisManager cgam;
    llvm::ModuleAnalysisManager mam;
    llvm::PipelineTuningOptions tuning;
    tuning.LoopUnrolling = false;
    tuning.LoopInterleaving = false;
    // The standard instrumentations make the passes skip `optnone` functions (the entry points).
    llvm::PassInstrumentationCallbacks pic;
    llvm::StandardInstrumentations si(m.getContext(), /*DebugLogging=*/false);
    si.registerCallbacks(pic, &mam);
    llvm::PassBuilder pb(&tm, tuning, std::nullopt, &pic);
    llvm::TargetLibraryInfoImpl tlii(llvm::Triple(m.getTargetTriple()));
    if (libmvec && Jit::haveLibmvec()) { // vector exp, log, tanh, ... from glibc
        tlii.addVectorizableFunctionsFromVecLib(llvm::TargetLibraryInfoImpl::LIBMVEC_X86,
                                                llvm::Triple(m.getTargetTriple()));
        // LLVM's table stops at AVX2's 256 bits; glibc also has the AVX-512 variants
        // (_ZGVe...), and without them every loop that calls exp runs at half width.
        if (tm.getTargetFeatureString().contains("+avx512f")) {
            static const std::vector<llvm::VecDesc> avx512 = [] {
                std::vector<llvm::VecDesc> v;
                auto both = [&](llvm::StringRef scalar, llvm::StringRef vector, unsigned lanes) {
                    v.emplace_back(scalar, vector, llvm::ElementCount::getFixed(lanes), false,
                                   lanes == 16 ? "_ZGV_LLVM_N16v" : "_ZGV_LLVM_N8v");
                };
                both("expf", "_ZGVeN16v_expf", 16), both("llvm.exp.f32", "_ZGVeN16v_expf", 16);
                both("logf", "_ZGVeN16v_logf", 16), both("llvm.log.f32", "_ZGVeN16v_logf", 16);
                both("tanhf", "_ZGVeN16v_tanhf", 16), both("log1pf", "_ZGVeN16v_log1pf", 16);
                both("erff", "_ZGVeN16v_erff", 16);
                both("exp", "_ZGVeN8v_exp", 8), both("llvm.exp.f64", "_ZGVeN8v_exp", 8);
                both("log", "_ZGVeN8v_log", 8), both("llvm.log.f64", "_ZGVeN8v_log", 8);
                both("tanh", "_ZGVeN8v_tanh", 8), both("log1p", "_ZGVeN8v_log1p", 8);
                both("erf", "_ZGVeN8v_erf", 8);
                return v;
            }();
            tlii.addVectorizableFunctions(avx512);
        }
    }
    fam.registerPass([&] { return llvm::TargetLibraryAnalysis(tlii); });
    pb.registerModuleAnalyses(mam);
    pb.registerCGSCCAnalyses(cgam);
    pb.registerFunctionAnalyses(fam);
    pb.registerLoopAnalyses(lam);
    pb.crossRegisterProxies(lam, fam, cgam, mam);
    // A function pipeline of what the kernels need, not O3: registers for the scalars
    // (sroa), clean-up, loop-invariant addresses out of the loops, then the vectoriser (at
    // the register width, with glibc's vector math; no interleaving, no unrolling: O3's
    // unrolling and interleaving had tripled the compile time and slowed the step). Kernels
    // are functions of their own (noinline), so there is nothing to inline or to do across
    // functions. Measured against O3 (without unrolling and interleaving) on the loaded
    // 2-core EPYC (Zen 4), `gradc bench MODEL --no-cache --threads 1 --steps 200`, 3
    // alternating rounds, median: LLVM optimisation CPU time 90 -> 47 ms (seed_sigmoid),
    // 100 -> 50 (deep_relu), 150 -> 85 (seed_sigmoid_bn), 85 -> 47 (seed_layernorm);
    // step 12.0 vs 12.0 ms (seed_sigmoid), 14.7 vs 13.1 (deep_relu), 22.8 vs 23.2
    // (seed_sigmoid_bn), 6.8 vs 6.7 (seed_layernorm), 22.6 vs 16.7 (seed_tanh: O3 did not
    // call glibc's 16-lane tanhf). O2 cost as much as O3; SLP and GVN added 25% for nothing
    // measurable. The code generator's level (Aggressive, Default, Less) made no difference
    // to its time (~80 ms CPU on the seed network).
    llvm::ModulePassManager mpm;
    auto err = pb.parsePassPipeline(mpm, "function(sroa,early-cse,instcombine<no-verify-fixpoint>,simplifycfg,"
                                         "loop(loop-rotate),"
                                         "loop-mssa(licm),loop(indvars),inject-tli-mappings,"
                                         "loop-vectorize<interleave-forced-only>,instcombine<no-verify-fixpoint>,simplifycfg)");
    internal_assert(!err, "the pass pipeline does not parse: " + llvm::toString(std::move(err)));
    mpm.run(m, mam);
}

std::string emit(llvm::Module& m, llvm::TargetMachine& tm, llvm::CodeGenFileType type) {
    llvm::SmallVector<char, 0> buffer;
    llvm::raw_svector_ostream os(buffer);
    llvm::legacy::PassManager pm;
    internal_assert(!tm.addPassesToEmitFile(pm, os, nullptr, type), "the target cannot emit this file type");
    pm.run(m);
    return std::string(buffer.begin(), buffer.end());
}

namespace {

/// The full key of a compiled object: everything its code depends on, in words. The cache
/// stores it in the entry and loads code only when it matches byte for byte.
std::string cacheKey(const std::string& ir, bool f64) {
    return fmt::format("{}\ncpu {}\nfeatures {}\nelement type {}\nvector math {}\n\n{}", versionString(),
                       Jit::hostCpu(), Jit::hostFeatures(), f64 ? "f64" : "f32",
                       Jit::haveLibmvec() ? "libmvec" : "scalar", ir);
}

} // namespace

CompiledModel compileModel(const Graph& fwd, const CodegenOptions& opts) {
    auto start = std::chrono::steady_clock::now();
    CompiledModel out;
    PhaseTimer timer(&out.phases);
    Programs programs = buildPrograms(fwd, opts.f64, hostBlocking(opts.f64, opts.threads), &timer);
    auto tm = hostTargetMachine();
    llvm::LLVMContext ctx;
    auto m = lower(ctx, programs, opts.f64, *tm, opts.profile);
    const std::string ir = printModule(*m);
    timer("lowering");

    const std::string key = cacheKey(ir, opts.f64);
    std::optional<ObjectCache> cache;
    if (opts.cache) cache.emplace(opts.cacheDir);
    std::optional<std::string> object;
    if (cache) {
        object = cache->load(key);
        out.cacheProblem = cache->problem();
    }
    out.cacheHit = object.has_value();
    timer("object cache");
    if (!object) {
        optimise(*m, *tm);
        timer("LLVM optimisation");
        object = emit(*m, *tm, llvm::CodeGenFileType::ObjectFile);
        timer("machine code");
        if (cache) cache->store(key, *object);
        timer("object cache");
    }
    std::shared_ptr<Jit> jit = checkLLVM("cannot start the JIT", Jit::create());
    if (auto err = jit->addObject(llvm::MemoryBuffer::getMemBufferCopy(*object, "gradc-model")))
        failLLVM("cannot load the compiled model", std::move(err));
    out.forward = reinterpret_cast<CompiledModel::Entry>(
        checkLLVM("cannot find the forward function", jit->lookup(entrySymbol(EntryPoint::Forward))));
    out.backward = reinterpret_cast<CompiledModel::Entry>(
        checkLLVM("cannot find the backward function", jit->lookup(entrySymbol(EntryPoint::Backward))));
    out.update = reinterpret_cast<CompiledModel::Update>(checkLLVM("cannot find the update function", jit->lookup(kUpdateSymbol)));
    out.owner = jit;
    if (opts.profile) {
        out.profileForward = static_cast<const uint64_t*>(checkLLVM("profile", jit->lookup(profileSymbol(EntryPoint::Forward))));
        out.profileBackward = static_cast<const uint64_t*>(checkLLVM("profile", jit->lookup(profileSymbol(EntryPoint::Backward))));
        auto labels = [](const KernelProgram& p) {
            std::vector<std::string> v;
            for (size_t i = 0; i < p.kernels.size(); ++i) v.push_back(kernelLabel(p, i));
            return v;
        };
        out.kernelsForward = labels(programs.forward);
        out.kernelsBackward = labels(programs.backward);
    }
    timer("JIT load");
    out.workspaceBytes = std::max(programs.forward.workspaceBytes, programs.backward.workspaceBytes);
    out.layout = programs.layout;
    out.f64 = opts.f64;
    out.compileMs = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    return out;
}

std::string emitModule(const Graph& fwd, const CodegenOptions& opts, const std::string& what) {
    Programs programs = buildPrograms(fwd, opts.f64, hostBlocking(opts.f64, opts.threads));
    if (what == "kernels") return printKernels(programs.forward) + printKernels(programs.backward);
    if (what == "memplan") return printMemoryPlan(programs.forward) + printMemoryPlan(programs.backward);
    auto tm = hostTargetMachine();
    llvm::LLVMContext ctx;
    auto m = lower(ctx, programs, opts.f64, *tm);
    if (what != "llvm-unoptimised") optimise(*m, *tm);
    if (what == "asm") return emit(*m, *tm, llvm::CodeGenFileType::AssemblyFile);
    return printModule(*m);
}

} // namespace gradc
