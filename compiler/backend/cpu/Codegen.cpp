// Codegen.cpp — from a forward graph to callable native code, through the object cache.
#include "Codegen.h"

#include "Autodiff.h"
#include "Jit.h"
#include "Kernels.h"
#include "LowerToLLVM.h"
#include "ObjectCache.h"
#include "Pipeline.h"
#include "ThreadPool.h"
#include "CodegenInternal.h"

#include <fmt/format.h>
#include <llvm/Analysis/TargetLibraryInfo.h>
#include <llvm/IR/IRBuilder.h>
#include <llvm/IR/Intrinsics.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/LegacyPassManager.h>
#include <llvm/IR/Module.h>
#include <llvm/IR/Verifier.h>
#include <llvm/Passes/PassBuilder.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/raw_ostream.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>

namespace gradc {

[[noreturn]] void failLLVM(const std::string& what, llvm::Error err) {
    throw UserError({}, fmt::format("{}: {}", what, llvm::toString(std::move(err))));
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

static GemmBlocking hostBlocking(bool f64) {
    GemmBlocking b = blockingFor(Jit::hostFeatures(), f64);
    b.threads = threadCount();
    return b;
}

Programs buildPrograms(const Graph& fwd, bool f64, const GemmBlocking& blocking) {
    Layout layout = computeLayout(fwd);
    const int bytes = f64 ? 8 : 4;
    Programs out{buildKernels(fwd, "forward", fwd.outputs, layout, bytes, blocking), {}, layout};
    if (fwd.eval) { // evaluation mode has no backward pass: its entry point does nothing
        out.backward.name = "backward";
        out.backward.blocking = blocking;
        return out;
    }
    Graph grad = differentiate(fwd);
    std::vector<Output> gradOutputs;
    for (auto& o : grad.outputs)
        if (o.role == OutputRole::Loss || o.role == OutputRole::Grad) gradOutputs.push_back(o);
    for (auto& o : grad.outputs)
        if (isKeptActivation(o.role)) gradOutputs.push_back(o);
    out.backward = buildKernels(grad, "backward", gradOutputs, layout, bytes, blocking);
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
    // O3 without loop unrolling and interleaving: on the seed network they tripled the
    // compile time (106 -> 275 ms) and made the step slower (31 -> 40 ms); the vectoriser
    // does the work that matters.
    llvm::PipelineTuningOptions tuning;
    tuning.LoopUnrolling = false;
    tuning.LoopInterleaving = false;
    llvm::PassBuilder pb(&tm, tuning);
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
    pb.buildPerModuleDefaultPipeline(llvm::OptimizationLevel::O3).run(m, mam);
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

/// GRADC_DEBUG=1 prints how long each stage of code generation took.
class StageTimer {
public:
    StageTimer() : on_(std::getenv("GRADC_DEBUG") != nullptr), last_(std::chrono::steady_clock::now()) {}
    void operator()(const char* stage) {
        if (!on_) return;
        auto now = std::chrono::steady_clock::now();
        fmt::print(stderr, "gradc: {:8.2f} ms  {}\n", std::chrono::duration<double, std::milli>(now - last_).count(), stage);
        last_ = now;
    }

private:
    bool on_;
    std::chrono::steady_clock::time_point last_;
};

} // namespace

CompiledModel compileModel(const Graph& fwd, const CodegenOptions& opts) {
    auto start = std::chrono::steady_clock::now();
    StageTimer timer;
    Programs programs = buildPrograms(fwd, opts.f64, hostBlocking(opts.f64));
    timer("differentiate, fuse, plan memory");
    auto tm = checkLLVM("cannot set up code generation for this CPU", Jit::targetMachine());
    timer("target machine");
    llvm::LLVMContext ctx;
    auto m = lower(ctx, programs, opts.f64, *tm, opts.profile);
    std::string ir;
    llvm::raw_string_ostream(ir) << *m;
    timer("lower to LLVM IR, verify, print");

    CompiledModel out;
    const std::string key = cacheKey(ir, opts.f64);
    std::optional<ObjectCache> cache;
    if (opts.cache) cache.emplace(opts.cacheDir);
    std::optional<std::string> object;
    if (cache) {
        object = cache->load(key);
        out.cacheProblem = cache->problem();
    }
    out.cacheHit = object.has_value();
    timer(out.cacheHit ? "cache hit" : "cache miss");
    if (!object) {
        optimise(*m, *tm);
        timer("optimise (O3)");
        object = emit(*m, *tm, llvm::CodeGenFileType::ObjectFile);
        timer("emit object code");
        if (cache) cache->store(key, *object);
    }
    std::shared_ptr<Jit> jit = checkLLVM("cannot start the JIT", Jit::create());
    if (auto err = jit->addObject(llvm::MemoryBuffer::getMemBufferCopy(*object, "gradc-model")))
        failLLVM("cannot load the compiled model", std::move(err));
    out.forward = reinterpret_cast<CompiledModel::Entry>(checkLLVM("cannot find the forward function", jit->lookup("gradc_forward")));
    out.backward = reinterpret_cast<CompiledModel::Entry>(checkLLVM("cannot find the backward function", jit->lookup("gradc_backward")));
    out.update = reinterpret_cast<CompiledModel::Update>(checkLLVM("cannot find the update function", jit->lookup("gradc_update")));
    out.owner = jit;
    if (opts.profile) {
        out.profileForward = static_cast<const uint64_t*>(checkLLVM("profile", jit->lookup("gradc_profile_forward")));
        out.profileBackward = static_cast<const uint64_t*>(checkLLVM("profile", jit->lookup("gradc_profile_backward")));
        auto firstLines = [](const KernelProgram& p) {
            std::vector<std::string> lines;
            std::string text = printKernels(p);
            size_t pos = text.find('\n') + 1; // skip the "program" line
            while (pos < text.size()) {
                size_t end = text.find('\n', pos);
                std::string line = text.substr(pos, end - pos);
                if (line.rfind("  k", 0) == 0) lines.push_back(line.substr(2));
                pos = end + 1;
            }
            return lines;
        };
        out.kernelsForward = firstLines(programs.forward);
        out.kernelsBackward = firstLines(programs.backward);
    }
    timer("JIT: load and link");
    out.workspaceBytes = std::max(programs.forward.workspaceBytes, programs.backward.workspaceBytes);
    out.layout = programs.layout;
    out.parameterCount = programs.layout.parameterCount();
    out.activationCount = programs.layout.size(Array::Acts);
    out.f64 = opts.f64;
    out.compileMs = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    return out;
}

double measureFmaPeak(bool f64) {
    auto tm = checkLLVM("cannot set up code generation for this CPU", Jit::targetMachine());
    const GemmBlocking bl = hostBlocking(f64);
    llvm::LLVMContext ctx;
    auto m = std::make_unique<llvm::Module>("probe", ctx);
    m->setDataLayout(tm->createDataLayout());
    m->setTargetTriple(tm->getTargetTriple().str());
    llvm::IRBuilder<> b(ctx);
    llvm::Type* T = f64 ? b.getDoubleTy() : b.getFloatTy();
    auto* vec = llvm::FixedVectorType::get(T, unsigned(bl.vl));
    // void probe(T* out, i64 n): 24 independent accumulators, n rounds of FMAs.
    auto* fn = llvm::Function::Create(llvm::FunctionType::get(b.getVoidTy(), {b.getPtrTy(), b.getInt64Ty()}, false),
                                      llvm::Function::ExternalLinkage, "gradc_probe", *m);
    auto* entry = llvm::BasicBlock::Create(ctx, "entry", fn);
    auto* body = llvm::BasicBlock::Create(ctx, "body", fn);
    auto* done = llvm::BasicBlock::Create(ctx, "done", fn);
    b.SetInsertPoint(entry);
    const int chains = bl.mr * bl.nv;
    llvm::Value* x = b.CreateVectorSplat(unsigned(bl.vl), llvm::ConstantFP::get(T, 0.999));
    llvm::Value* y = b.CreateVectorSplat(unsigned(bl.vl), llvm::ConstantFP::get(T, 1e-3));
    b.CreateBr(body);
    b.SetInsertPoint(body);
    llvm::PHINode* i = b.CreatePHI(b.getInt64Ty(), 2);
    i->addIncoming(b.getInt64(0), entry);
    std::vector<llvm::PHINode*> acc;
    llvm::Function* fma = llvm::Intrinsic::getDeclaration(m.get(), llvm::Intrinsic::fma, {vec});
    std::vector<llvm::Value*> next;
    for (int c = 0; c < chains; ++c) {
        acc.push_back(b.CreatePHI(vec, 2));
        acc.back()->addIncoming(llvm::ConstantVector::getSplat(llvm::ElementCount::getFixed(unsigned(bl.vl)),
                                                               llvm::ConstantFP::get(T, c)), entry);
    }
    for (int c = 0; c < chains; ++c) next.push_back(b.CreateCall(fma, {acc[size_t(c)], x, y}));
    for (int c = 0; c < chains; ++c) acc[size_t(c)]->addIncoming(next[size_t(c)], body);
    llvm::Value* inext = b.CreateAdd(i, b.getInt64(1));
    i->addIncoming(inext, body);
    b.CreateCondBr(b.CreateICmpULT(inext, fn->getArg(1)), body, done);
    b.SetInsertPoint(done);
    llvm::Value* sum = next[0];
    for (int c = 1; c < chains; ++c) sum = b.CreateFAdd(sum, next[size_t(c)]);
    b.CreateAlignedStore(sum, fn->getArg(0), llvm::Align(8));
    b.CreateRetVoid();
    internal_assert(!llvm::verifyModule(*m, &llvm::errs()), "invalid probe IR");
    std::string object = emit(*m, *tm, llvm::CodeGenFileType::ObjectFile);
    std::shared_ptr<Jit> jit = checkLLVM("cannot start the JIT", Jit::create());
    if (auto err = jit->addObject(llvm::MemoryBuffer::getMemBufferCopy(object, "probe"))) failLLVM("probe", std::move(err));
    auto probe = reinterpret_cast<void (*)(void*, int64_t)>(checkLLVM("probe", jit->lookup("gradc_probe")));
    std::vector<double> out(size_t(bl.vl));
    const int64_t rounds = 20'000'000;
    probe(out.data(), rounds / 10); // warm up (and let the clock rise)
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        auto t0 = std::chrono::steady_clock::now();
        probe(out.data(), rounds);
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, double(rounds) * chains * bl.vl * 2 / s / 1e9);
    }
    return best;
}

std::string emitModule(const Graph& fwd, const CodegenOptions& opts, const std::string& what) {
    Programs programs = buildPrograms(fwd, opts.f64, hostBlocking(opts.f64));
    if (what == "kernels") return printKernels(programs.forward) + printKernels(programs.backward);
    if (what == "memplan") return printMemoryPlan(programs.forward) + printMemoryPlan(programs.backward);
    auto tm = checkLLVM("cannot set up code generation for this CPU", Jit::targetMachine());
    llvm::LLVMContext ctx;
    auto m = lower(ctx, programs, opts.f64, *tm);
    if (what == "llvm-unoptimised") {
        std::string ir;
        llvm::raw_string_ostream(ir) << *m;
        return ir;
    }
    optimise(*m, *tm);
    if (what == "asm") return emit(*m, *tm, llvm::CodeGenFileType::AssemblyFile);
    std::string ir;
    llvm::raw_string_ostream(ir) << *m;
    return ir;
}

} // namespace gradc
