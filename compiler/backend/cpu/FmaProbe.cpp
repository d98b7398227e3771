// FmaProbe.cpp — measures the CPU's fused multiply-add peak: a JIT'd loop of independent
// vector FMA chains (one per accumulator of the GEMM register tile, so the probe runs what
// the micro-kernel could at best), timed best of three after a warm-up.
#include "FmaProbe.h"

#include "CodegenInternal.h"
#include "Jit.h"
#include "Lowering.h"

#include <fmt/format.h>
#include <llvm/IR/IRBuilder.h>
#include <llvm/IR/Intrinsics.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/Module.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/raw_ostream.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <chrono>
#include <vector>

namespace gradc {

namespace {

/// Emits `m` (verified) as an object and loads it into a JIT of its own.
std::shared_ptr<Jit> jitObject(llvm::Module& m, llvm::TargetMachine& tm, const std::string& isa, const char* what) {
    std::string object = emit(m, tm, llvm::CodeGenFileType::ObjectFile);
    std::shared_ptr<Jit> jit = checkLLVM("cannot start the JIT", Jit::create(isa));
    if (auto err = jit->addObject(llvm::MemoryBuffer::getMemBufferCopy(object, what))) failLLVM(what, std::move(err));
    return jit;
}

/// The best of three runs of `run` (after a warm-up), in GFLOP/s, `flops` a run.
template <typename Run> double bestOf3(double flops, const Run& run) {
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        auto t0 = std::chrono::steady_clock::now();
        run();
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, flops / seconds / 1e9);
    }
    return best;
}

} // namespace

double measureFmaPeak(bool f64, const std::string& isa) {
    auto tm = hostTargetMachine(isa);
    const GemmBlocking bl = blockingFor(Jit::hostFeatures(isa), f64); // the threads do not matter here
    llvm::LLVMContext ctx;
    auto m = moduleFor("probe", ctx, *tm);
    llvm::IRBuilder<> b(ctx);
    llvm::Type* T = f64 ? b.getDoubleTy() : b.getFloatTy();
    auto* vec = llvm::FixedVectorType::get(T, unsigned(bl.vl));
    // void probe(T* out, i64 n): MR x NV independent accumulators (24 with AVX-512), n rounds of FMAs.
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
    verify(*m, "probe");
    std::shared_ptr<Jit> jit = jitObject(*m, *tm, isa, "probe");
    auto probe = reinterpret_cast<void (*)(void*, int64_t)>(checkLLVM("probe", jit->lookup("gradc_probe")));
    std::vector<double> out(size_t(bl.vl));
    const int64_t rounds = 20'000'000;
    probe(out.data(), rounds / 10); // warm up (and let the clock rise)
    return bestOf3(double(rounds) * chains * bl.vl * 2, [&] { probe(out.data(), rounds); });
}

std::vector<TileSpeed> measureTiles(bool f64, const std::vector<TileSpeed>& candidates, const std::string& isa) {
    auto tm = hostTargetMachine(isa);
    const GemmBlocking host = blockingFor(Jit::hostFeatures(isa), f64);
    llvm::LLVMContext ctx;
    auto m = moduleFor("tiles", ctx, *tm);
    std::vector<KernelProgram> programs(candidates.size());
    for (size_t i = 0; i < candidates.size(); ++i) {
        programs[i].blocking = host;
        programs[i].blocking.mr = candidates[i].mr, programs[i].blocking.nv = candidates[i].nv;
        Lowering lowering(ctx, *m, f64, false);
        lowering.gemmProbe(programs[i], "gradc_tile_probe_" + std::to_string(i));
    }
    verify(*m, "tile probe");
    optimise(*m, *tm, false);
    std::shared_ptr<Jit> jit = jitObject(*m, *tm, isa, "tile probe");
    const int64_t K = 256;
    int maxRows = 1, maxCols = 1;
    for (auto& c : candidates) maxRows = std::max(maxRows, c.mr), maxCols = std::max(maxCols, c.nv * host.vl);
    const size_t bytes = f64 ? 8 : 4;
    auto buffer = [&](size_t elements) { // 64-byte aligned, small values (no overflow, no denormals)
        std::vector<double> v((elements * bytes + 127) / 8, 0.0);
        return v;
    };
    std::vector<double> a = buffer(size_t(maxRows) * K), b = buffer(size_t(K) * maxCols + 16),
                        out = buffer(size_t(maxRows) * maxCols + 16);
    auto aligned = [](std::vector<double>& v) {
        return reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(v.data()) + 63) / 64 * 64);
    };
    // Rounds that time every candidate once, each keeping its best: a busy spell of a
    // shared machine then slows one round of all of them, not every run of one.
    using Probe = void (*)(void*, void*, void*, int64_t, int64_t);
    std::vector<TileSpeed> speeds = candidates;
    for (TileSpeed& s : speeds) s.gflops = 0;
    std::vector<Probe> probes;
    for (size_t i = 0; i < candidates.size(); ++i)
        probes.push_back(reinterpret_cast<Probe>(checkLLVM("tile probe", jit->lookup("gradc_tile_probe_" + std::to_string(i)))));
    for (int round = 0; round < 7; ++round)
        for (size_t i = 0; i < candidates.size(); ++i) {
            TileSpeed& s = speeds[i];
            const double flopsPerTile = 2.0 * s.mr * s.nv * host.vl * K;
            const int64_t reps = std::max<int64_t>(1, int64_t(2e8 / flopsPerTile)); // 2 ms at 100 GFLOP/s
            if (round == 0) probes[i](a.data(), aligned(b), aligned(out), K, reps / 4); // warm up
            auto t0 = std::chrono::steady_clock::now();
            probes[i](a.data(), aligned(b), aligned(out), K, reps);
            const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            s.gflops = std::max(s.gflops, flopsPerTile * double(reps) / seconds / 1e9);
        }
    return speeds;
}

} // namespace gradc
