// Codegen.cpp — from a forward graph to callable native code: build the kernel programs,
// lower, optimise, emit an object (or take it from ObjectCache) and load it into the JIT.
#include "Codegen.h"

#include "FmaProbe.h"

#include "Autodiff.h"
#include "EntryAbi.h"
#include "Jit.h"
#include "Kernels.h"
#include "LowerToLLVM.h"
#include "ObjectCache.h"
#include "Pipeline.h"
#include "SplitCodegen.h"
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
#include <llvm/TargetParser/SubtargetFeature.h>

#include <algorithm>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <set>
#include <optional>

#include <unistd.h>

namespace gradc {

[[noreturn]] void failLLVM(const std::string& what, llvm::Error err) {
    throw UserError({}, fmt::format("{}: {}", what, llvm::toString(std::move(err))));
}

void warmUpPipelines() {
    static std::once_flag once;
    std::call_once(once, [] {
        auto tm = checkLLVM("cannot set up code generation for this CPU", Jit::targetMachine("native"));
        llvm::LLVMContext ctx;
        auto m = moduleFor("gradc-first-use", ctx, *tm);
        optimise(*m, *tm);
        emit(*m, *tm, llvm::CodeGenFileType::ObjectFile);
    });
}

std::unique_ptr<llvm::TargetMachine> hostTargetMachine(const std::string& isa) {
    warmUpPipelines();
    return checkLLVM("cannot set up code generation for this CPU", Jit::targetMachine(isa));
}

std::string resolveIsa(const std::string& isa, const std::string& option) {
    std::string name = isa, spelled = fmt::format("{} {}", option, isa);
    if (isa.empty()) {
        const char* env = std::getenv("GRADC_ISA");
        name = env && *env ? env : "native";
        spelled = fmt::format("GRADC_ISA={}", name);
    }
    if (name != "native" && name != "avx2" && name != "avx512")
        throw UserError({}, fmt::format("{} is not an instruction set gradc generates code for "
                                        "(native, avx2 or avx512)", spelled));
    if (name == "avx512" && !Jit::hasFeature("avx512f"))
        throw UserError({}, fmt::format("{}: this CPU ({}) has no AVX-512", spelled, Jit::hostCpu()));
    if (name == "avx2" && !(Jit::hasFeature("avx2") && Jit::hasFeature("fma")))
        throw UserError({}, fmt::format("{}: this CPU ({}) has no AVX2 and FMA", spelled, Jit::hostCpu()));
    return name;
}

int vectorBits(const std::string& features) {
    const std::vector<std::string> list = llvm::SubtargetFeatures(features).getFeatures();
    auto on = [&](const char* name) { return llvm::is_contained(list, std::string("+") + name); };
    return on("avx512f") ? 512 : on("avx2") ? 256 : 128;
}

IsaTarget isaTarget(const std::string& isa) { return {Jit::hostCpu(), vectorBits(Jit::hostFeatures(isa))}; }

std::string printModule(const llvm::Module& m) {
    std::string text;
    llvm::raw_string_ostream(text) << m;
    return text;
}

CacheSizes hostCaches() {
    static const CacheSizes sizes = [] {
        CacheSizes c;
        bool known = false;
        // sysfs first (a virtual machine's sysconf may report the host's whole L3), then
        // sysconf, then the defaults.
        for (int index = 0; index < 8; ++index) {
            const std::string dir = fmt::format("/sys/devices/system/cpu/cpu0/cache/index{}/", index);
            auto read = [&](const char* name) {
                std::string text;
                if (FILE* f = std::fopen((dir + name).c_str(), "r")) {
                    char line[64] = {};
                    if (std::fgets(line, sizeof line, f)) text = line;
                    std::fclose(f);
                }
                while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
                return text;
            };
            const std::string level = read("level"), type = read("type"), size = read("size");
            if (level.empty() || size.empty() || type == "Instruction") continue;
            char* unit = nullptr;
            long long bytes = std::strtoll(size.c_str(), &unit, 10);
            if (bytes <= 0) continue;
            if (unit && (*unit == 'K' || *unit == 'k')) bytes <<= 10;
            else if (unit && *unit == 'M') bytes <<= 20;
            if (level == "2") c.l2 = bytes, known = true;
        }
#ifdef _SC_LEVEL2_CACHE_SIZE
        if (!known) {
            if (long v = sysconf(_SC_LEVEL2_CACHE_SIZE); v > 0) c.l2 = v;
        }
#endif
        return c;
    }();
    return sizes;
}

GemmBlocking blockingFor(const std::string& features, bool f64) { return blockingFor(features, f64, CacheSizes{}); }

GemmBlocking blockingFor(const std::string& features, bool f64, const CacheSizes& caches) {
    // The micro-kernel's register tile: with AVX-512's 32 vector registers, 6 rows by 4
    // vectors (24 accumulators); with AVX2's 16 (or SSE), 6 by 2. Measured on the seed
    // network (AVX-512, f32): 6x4 ran 10.6 ms a step; 8x3 10.9, 12x2 11.3, 14x2 11.9, 4x6
    // 12.1. Software prefetching of B did not help. The model: the tile must leave room for
    // NV vectors of B and a broadcast (MR NV + NV + 1 <= registers), hide the FMA latency
    // (at least 8 independent accumulators for two FMA units of 4 cycles) and load the
    // least per FMA ((MR + NV) / (MR NV)): 6x4 (0.42 loads per FMA) with 32 registers, 6x2
    // (0.67) with 16.
    const int bits = vectorBits(features);
    GemmBlocking b;
    b.vl = bits / (f64 ? 64 : 32);
    b.nv = bits == 512 ? 4 : 2;
    b.mr = 6;
    b.source = "model";
    // Cache blocking: a K block's B micro-panel (KC x NR) takes a quarter of L2, so it stays
    // there beside the rows of A and the block of sums; a product no deeper runs unblocked,
    // as the seed network's (K <= 784) do. The block of sums (MC x NR) takes another quarter.
    cacheBlocking(b, f64, caches);
    return b;
}

void cacheBlocking(GemmBlocking& b, bool f64, const CacheSizes& caches) {
    const int64_t bytes = f64 ? 8 : 4, panelRow = int64_t(b.nr()) * bytes;
    b.kc = std::max<int64_t>(64, caches.l2 / 4 / panelRow);
    b.mc = std::max<int64_t>(b.mr, caches.l2 / 4 / panelRow / b.mr * b.mr);
    // Operands read in place whose steps along K are a page apart are packed. With panels
    // of one cache line (AVX2: NR = 16 floats), each tile streams a line per step of K from
    // hundreds of strided places, which the prefetchers follow badly: packing every operand
    // wider than 64 elements made the seed network's step 15% faster with AVX2 on Zen 4
    // (16.5 against 19.5 ms, four alternating rounds), and made no difference with AVX-512.
    b.pageStride = b.nr() * bytes <= 64 ? 64 : 4096 / bytes;
    b.smallB = caches.l2 / 4, b.largeOutput = caches.l2;
    // N blocks (planProduct: a B whose packed copy is larger than l3Panel is packed a strip
    // at a time into each thread's panel) stay off: with l3Panel at half a core's share of L3
    // (8 MB on the 2-core Zen 4, 32 MB L3) the wide network (784-4096-4096-10, batch 256, one
    // thread) used 12% less memory (max RSS 464 -> 406 MB) but its step was 3% slower (450.6
    // -> 463.5 ms, median of 5 alternating rounds, round ratios' median 1.055). GRADC_GEMM's
    // panel=N turns them on for measuring.
}

namespace {

/// The register tiles worth timing at a vector width: those that leave NV vectors of B
/// and a broadcast in the registers (32 with AVX-512, 16 below).
std::vector<TileSpeed> tileCandidates(int bits) {
    if (bits == 512) return {{6, 4}, {8, 3}, {12, 2}, {14, 2}, {4, 6}};
    return {{6, 2}, {4, 3}, {8, 1}};
}

/// The share of the work of tiles MR x NR that is useful on the step's products: each
/// forward product x·Wᵀ (M x N x K) and its gradients (M x K x N, N x K x M), and each
/// convolution's three products (ConvPlan), by flops.
double usefulShare(const Graph& fwd, int64_t mr, int64_t nr) {
    double useful = 0, done = 0;
    auto add = [&](int64_t m, int64_t n, int64_t k) {
        useful += double(m) * double(n) * double(k);
        done += double((m + mr - 1) / mr * mr) * double((n + nr - 1) / nr * nr) * double(k);
    };
    for (const Node& n : fwd.nodes) {
        if (n.op != Op::MatMulNT || n.shape.empty()) continue;
        const int64_t N = n.shape.back(), M = elementCount(n.shape) / std::max<int64_t>(1, N);
        const int64_t K = fwd[n.in[0]].shape.back();
        add(M, N, K), add(M, K, N), add(N, K, M);
    }
    for (const Node& n : fwd.nodes) { // a convolution's products (ConvPlan): y, dx, dWᵀ per image
        if (n.op != Op::Conv2d || n.shape.size() != 4) continue;
        const Shape& x = fwd[n.in[0]].shape;
        const int64_t taps = int64_t(n.window.kh) * n.window.kw, O = n.shape[1], P = n.shape[2] * n.shape[3];
        add(O, x[0] * P, x[1] * taps), add(x[1], x[0] * x[2] * x[3], O * taps);
        add(x[1] * taps, O, x[0] * P); // K runs over the batch's positions, image by image
    }
    return done > 0 ? useful / done : 1;
}

/// The measured tile speeds, one line per tile: "CPU FEATURES-HASH TYPE RxV GFLOPS", in
/// gemm-tiles.txt beside the cached objects, read and written as they are (ObjectCache's
/// checked folder, no symbolic links, a private temporary file renamed into place).
class TileCache {
public:
    TileCache(const std::string& dir, std::string key) : key_(std::move(key)), folder_(dir) {}
    /// This CPU's speeds, all of `want`; nothing if the file lacks one or cannot be read.
    std::optional<std::vector<TileSpeed>> load(const std::vector<TileSpeed>& want) {
        std::vector<TileSpeed> got;
        for (const std::string& line : lines()) {
            if (line.rfind(key_ + " ", 0) != 0) continue;
            TileSpeed t;
            char tail = 0;
            if (std::sscanf(line.c_str() + key_.size() + 1, "%dx%d %lf%c", &t.mr, &t.nv, &t.gflops, &tail) != 3 || t.gflops <= 0) {
                warn(fmt::format("cannot read '{}'", line));
                return std::nullopt;
            }
            got.push_back(t);
        }
        for (const TileSpeed& w : want)
            if (std::none_of(got.begin(), got.end(), [&](const TileSpeed& t) { return t.mr == w.mr && t.nv == w.nv; }))
                return std::nullopt;
        return got;
    }
    /// Replaces this CPU's lines with `speeds`.
    void store(const std::vector<TileSpeed>& speeds) {
        std::string text;
        for (const std::string& line : lines())
            if (line.rfind(key_ + " ", 0) != 0 && !line.empty()) text += line + "\n";
        for (const TileSpeed& t : speeds) text += fmt::format("{} {}x{} {:.2f}\n", key_, t.mr, t.nv, t.gflops);
        folder_.writeFile(kFile, {text});
    }

private:
    static constexpr const char* kFile = "gemm-tiles.txt";
    std::vector<std::string> lines() {
        std::vector<std::string> out;
        const std::optional<std::string> text = folder_.readFile(kFile, "the register tile speeds file", 1 << 20);
        if (!text) return out;
        for (size_t at = 0; at < text->size();) {
            size_t end = text->find('\n', at);
            if (end == std::string::npos) end = text->size();
            out.push_back(text->substr(at, end - at));
            at = end + 1;
        }
        return out;
    }
    void warn(const std::string& what) {
        fmt::print(stderr, "gradc: warning: {}/{}: {}; the register tiles are measured again\n", folder_.dir(), kFile, what);
    }
    std::string key_;
    ObjectCache folder_; ///< creates the folder and checks that it is private
};

/// The register tile: the model's (blockingFor), unless a candidate measured on this CPU
/// does more useful work per second on the model's products by more than 5% (the noise of
/// a shared machine should not flip the choice). The speeds are measured once per CPU,
/// features and element type, and kept in the cache folder; without the cache, the model
/// decides.
void chooseTile(const Graph& fwd, const CodegenOptions& opts, const std::string& isa, GemmBlocking& b) {
    const char* tune = std::getenv("GRADC_TUNE");
    if (!opts.cache || (tune && std::string(tune) == "0")) return;
    const std::vector<TileSpeed> candidates = tileCandidates(b.vl * (opts.f64 ? 64 : 32));
    const std::string features = Jit::hostFeatures(isa);
    const std::string key = fmt::format("{} {:016x} {}", Jit::hostCpu(), std::hash<std::string>{}(features),
                                        opts.f64 ? "f64" : "f32");
    TileCache cache(opts.cacheDir, key);
    std::vector<TileSpeed> speeds;
    static std::mutex mutex;
    static std::set<std::string> measuredHere; // what this process measured says so
    std::lock_guard<std::mutex> lock(mutex);
    if (auto cached = cache.load(candidates)) {
        speeds = *cached;
        b.source = measuredHere.count(key) ? "measured" : "cached";
    } else {
        measuredHere.insert(key);
        speeds = measureTiles(opts.f64, candidates, isa);
        cache.store(speeds);
        b.source = "measured";
    }
    std::vector<TileSpeed> known; // the candidates' speeds
    for (const TileSpeed& t : speeds)
        if (std::any_of(candidates.begin(), candidates.end(), [&](const TileSpeed& c) { return c.mr == t.mr && c.nv == t.nv; }))
            known.push_back(t);
    auto score = [&](const TileSpeed& t) { return t.gflops * usefulShare(fwd, t.mr, int64_t(t.nv) * b.vl); };
    const TileSpeed* model = nullptr;
    for (const TileSpeed& t : known)
        if (t.mr == b.mr && t.nv == b.nv) model = &t;
    const TileSpeed* best = model;
    for (const TileSpeed& t : known)
        if (!best || score(t) > score(*best)) best = &t;
    if (best && model && score(*best) <= 1.05 * score(*model)) best = model;
    if (!best) return;
    b.mr = best->mr, b.nv = best->nv;
    b.speeds = known; // the convolutions' products choose among them too (convTile)
    cacheBlocking(b, opts.f64, hostCaches());
}

} // namespace

/// GRADC_GEMM="tile=8x3,kc=512,mc=96,pack=0,stride=256,panel=1048576" overrides the blocking
/// (for measuring candidates by hand; panel: the elements of packed B past which it is packed
/// in N blocks, 0 never); an item it cannot read is an error naming it.
static void forcedBlocking(GemmBlocking& b, const char* spec) {
    std::string text = spec;
    size_t at = 0;
    while (at < text.size()) {
        size_t end = text.find(',', at);
        if (end == std::string::npos) end = text.size();
        const std::string item = text.substr(at, end - at);
        at = end + 1;
        if (item.empty()) continue;
        const size_t eq = item.find('=');
        const std::string key = item.substr(0, eq), value = eq == std::string::npos ? "" : item.substr(eq + 1);
        int x = 0, y = 0;
        char tail = 0;
        bool ok = false;
        if (key == "tile") ok = std::sscanf(value.c_str(), "%dx%d%c", &x, &y, &tail) == 2 && x >= 1 && x <= 16 && y >= 1 && y <= 8;
        else ok = std::sscanf(value.c_str(), "%d%c", &x, &tail) == 1 && x >= 0;
        if (!ok || (key != "tile" && key != "kc" && key != "mc" && key != "pack" && key != "stride" && key != "panel"))
            throw UserError({}, fmt::format("GRADC_GEMM: cannot read '{}' (want tile=RxV, kc=N, mc=N, pack=0|1, stride=N "
                                            "or panel=N)", item));
        if (key == "tile") b.mr = x, b.nv = y;
        else if (key == "kc") b.kc = x == 0 ? int64_t(1) << 30 : x;
        else if (key == "mc") b.mc = std::max(x, 1);
        else if (key == "stride") b.pageStride = std::max(x, 1);
        else if (key == "panel") b.l3Panel = x == 0 ? GemmBlocking::kNoNBlocks : x;
        else b.packB = x != 0;
        b.source = "forced";
    }
    b.mc = std::max<int64_t>(b.mr, b.mc / b.mr * b.mr);
}

/// The blocking for code in `isa` (resolved once by the caller: resolveIsa reads GRADC_ISA).
static GemmBlocking hostBlocking(const Graph& fwd, const CodegenOptions& opts, const std::string& isa) {
    GemmBlocking b = opts.blocking ? *opts.blocking : blockingFor(Jit::hostFeatures(isa), opts.f64, hostCaches());
    if (!opts.blocking) {
        const char* spec = std::getenv("GRADC_GEMM");
        if (spec && *spec) forcedBlocking(b, spec);
        else chooseTile(fwd, opts, isa, b);
    }
    b.threads = resolveThreads(opts.threads);
    return b;
}

PhaseTimer::PhaseTimer(std::vector<CompilePhase>* out) : out_(out), print_(std::getenv("GRADC_DEBUG") != nullptr) {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    wall_ = double(t.tv_sec) * 1e3 + double(t.tv_nsec) / 1e6;
    cpu_ = threadCpuMs();
}

double PhaseTimer::threadCpuMs() {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return double(t.tv_sec) * 1e3 + double(t.tv_nsec) / 1e6;
}

void PhaseTimer::add(const char* phase, double ms, double cpuMs) {
    if (!out_) return;
    auto it = std::find_if(out_->begin(), out_->end(), [&](const CompilePhase& p) { return p.name == phase; });
    if (it == out_->end()) it = out_->insert(out_->end(), CompilePhase{phase, 0, 0});
    it->ms += ms, it->cpuMs += cpuMs;
}

void PhaseTimer::addCpu(const char* phase, double cpuMs) {
    if (print_) fmt::print(stderr, "gradc: {:8s}    ({:8.2f} ms CPU)  {}, on other threads\n", "", cpuMs, phase);
    add(phase, 0, cpuMs);
}

void PhaseTimer::operator()(const char* phase) {
    PhaseTimer now(nullptr);
    const double ms = now.wall_ - wall_, cpuMs = now.cpu_ - cpu_;
    wall_ = now.wall_, cpu_ = now.cpu_;
    if (print_) fmt::print(stderr, "gradc: {:8.2f} ms ({:8.2f} ms CPU)  {}\n", ms, cpuMs, phase);
    add(phase, ms, cpuMs);
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
    Graph grad = differentiate(fwd, {.gradNorm = fwd.gradNorm});
    phase("autodiff");
    out.backward = buildKernels(grad, "backward", backwardOutputs(grad), layout, bytes, blocking);
    phase("fusion + memory plan");
    return out;
}

void setTarget(llvm::Module& m, llvm::TargetMachine& tm) {
    m.setDataLayout(tm.createDataLayout());
    m.setTargetTriple(tm.getTargetTriple().str());
}

void verify(llvm::Module& m, const std::string& what) {
    std::string errors;
    llvm::raw_string_ostream os(errors);
    internal_assert(!llvm::verifyModule(m, &os), fmt::format("invalid LLVM IR in {}: {}", what, errors));
}

std::unique_ptr<llvm::Module> moduleFor(const char* name, llvm::LLVMContext& ctx, llvm::TargetMachine& tm) {
    auto m = std::make_unique<llvm::Module>(name, ctx);
    setTarget(*m, tm);
    return m;
}

std::unique_ptr<llvm::Module> lower(llvm::LLVMContext& ctx, const Programs& p, bool f64,
                                    llvm::TargetMachine& tm, bool profile) {
    auto m = lowerToLLVM(ctx, p.forward, p.backward, f64, profile);
    setTarget(*m, tm);
    verify(*m, "the model's module");
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
    // to its time (~80 ms CPU on the seed network). First globaldce drops the helpers no
    // kernel calls (gradc_pack_a, in most models) and unused declarations, so that they are
    // neither optimised nor emitted; the entry points are external and stay. Seed network, 5
    // alternating rounds, median CPU ms: machine code 88.4 -> 86.2, optimisation 46.8 -> 45.9
    // (within the noise of the shared machine).
    llvm::ModulePassManager mpm;
    auto err = pb.parsePassPipeline(mpm, "globaldce,"
                                         "function(sroa,early-cse,instcombine<no-verify-fixpoint>,simplifycfg,"
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
std::string cacheKey(const std::string& ir, bool f64, const std::string& isa) {
    return fmt::format("{}\ncpu {}\nfeatures {}\nelement type {}\nvector math {}\n\n{}", versionString(),
                       Jit::hostCpu(), Jit::hostFeatures(isa), f64 ? "f64" : "f32",
                       Jit::haveLibmvec() ? "libmvec" : "scalar", ir);
}

} // namespace

CompiledModel compileModel(const Graph& fwd, const CodegenOptions& opts) {
    CompiledModel out;
    PhaseTimer timer(&out.phases);
    const std::string isa = resolveIsa(opts.isa);
    Programs programs = buildPrograms(fwd, opts.f64, hostBlocking(fwd, opts, isa), &timer);
    auto tm = hostTargetMachine(isa);
    llvm::LLVMContext ctx;
    auto m = lower(ctx, programs, opts.f64, *tm, opts.profile);
    const std::string ir = printModule(*m);
    timer("lowering");

    const std::string key = cacheKey(ir, opts.f64, isa);
    std::optional<ObjectCache> cache;
    if (opts.cache) cache.emplace(opts.cacheDir);
    std::optional<std::vector<std::string>> objects;
    if (cache) {
        std::optional<std::string> entry = cache->load(key);
        if (entry) objects = unpackObjects(*entry);
        out.cacheProblem = cache->problem();
        if (entry && !objects) // the checksum held, so gradc wrote it: a bug, or another version's
            out.cacheProblem = fmt::format("{}/{}: the cache entry's object container does not add up; compiled again",
                                           cache->dir(), ObjectCache::entryName(key));
    }
    out.cacheHit = objects.has_value();
    timer("object cache");
    if (!objects) {
        // Independent functions compile on threads: as many as the model runs on (--threads,
        // deliberately: `--threads 1` asks for one core's work, compiling included), no more
        // than the cores (compileObjects caps them by the functions).
        const int parts = opts.compileThreads > 0 ? opts.compileThreads
                                                  : std::min(resolveThreads(opts.threads), hardwareThreads());
        objects = compileObjects(*m, parts, isa, &timer);
        if (cache) cache->store(key, packObjects(*objects));
        timer("object cache");
    }
    out.objects = int(objects->size());
    std::shared_ptr<Jit> jit = checkLLVM("cannot start the JIT", Jit::create(isa));
    for (size_t i = 0; i < objects->size(); ++i)
        if (auto err = jit->addObject(llvm::MemoryBuffer::getMemBufferCopy((*objects)[i], fmt::format("gradc-model-{}", i))))
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
    out.isa = isa;
    return out;
}

std::string emitModule(const Graph& fwd, const CodegenOptions& opts, const std::string& what) {
    const std::string isa = resolveIsa(opts.isa);
    Programs programs = buildPrograms(fwd, opts.f64, hostBlocking(fwd, opts, isa));
    if (what == "kernels") return printKernels(programs.forward) + printKernels(programs.backward);
    if (what == "memplan") return printMemoryPlan(programs.forward) + printMemoryPlan(programs.backward);
    auto tm = hostTargetMachine(isa);
    llvm::LLVMContext ctx;
    auto m = lower(ctx, programs, opts.f64, *tm);
    if (what != "llvm-unoptimised") optimise(*m, *tm);
    if (what == "asm") return emit(*m, *tm, llvm::CodeGenFileType::AssemblyFile);
    return printModule(*m);
}

std::vector<std::string> explainProducts(const Graph& fwd, const CodegenOptions& opts) {
    const GemmBlocking bl = hostBlocking(fwd, opts, resolveIsa(opts.isa));
    Programs programs = buildPrograms(fwd, opts.f64, bl);
    const std::string tile =
        fmt::format("tile {}x{} ({}x{} {}-bit; {})", bl.mr, bl.nr(), bl.mr, bl.nv, bl.vl * (opts.f64 ? 64 : 32), bl.source);
    const std::string threads = fmt::format("{} thread{}", bl.threads, bl.threads == 1 ? "" : "s");
    std::vector<std::string> lines;
    for (const KernelProgram* p : {&programs.forward, &programs.backward})
        for (size_t i = 0; i < p->kernels.size(); ++i) {
            const Kernel& k = p->kernels[i];
            if (k.kind == Kernel::Kind::Op && isConvolution(k.op)) { // an implicit GEMM (ConvPlan)
                const ConvPlan c = planConv(k, p->buffers, bl);
                const char* spelling = describe(k.op).spelling;
                if (c.direct)
                    lines.push_back(fmt::format("{} k{}: {} {} x {} x {}: direct, the {} taps of {} positions in vector registers "
                                                "times each of the {} channels' {}, {}, {}",
                                                p->name, i, spelling, c.M, c.N, c.K, c.C * k.attrs.window.kh * k.attrs.window.kw,
                                                bl.vl, c.O, k.op == Op::Conv2d ? "weights" : "gradients",
                                                k.op == Op::Conv2d ? fmt::format("{} bands of {} rows of y ({} images)", c.units, c.band, c.B)
                                                                   : fmt::format("{} slice{} of the batch", c.units, c.units == 1 ? "" : "s"),
                                                threads));
                else if (k.op == Op::Conv2dGradW)
                    lines.push_back(fmt::format("{} k{}: {} {} x {} x {} per image, {} images (col(x_b) · g_bᵀ): {}, col(x_b) "
                                                "packed as A and g_b as B per image, {} slice{} of the batch, {}",
                                                p->name, i, spelling, c.M, c.N, c.K, c.B, tile, c.units,
                                                c.units == 1 ? "" : "s", threads));
                else // its own tile (convTile)
                    lines.push_back(fmt::format("{} k{}: {} {} x {} x {} ({} · {}): {}, {} panels of {} packed one at a time "
                                                "by each thread, {}, {}",
                                                p->name, i, spelling, c.M, c.N, c.K, k.op == Op::Conv2d ? "W" : "W'",
                                                k.op == Op::Conv2d ? "col(x)" : "colT(g)",
                                                c.mr == bl.mr && c.nv == bl.nv
                                                    ? tile
                                                    : fmt::format("tile {}x{} ({}x{}; chosen for this product from the measured speeds)",
                                                                  c.mr, c.nv * bl.vl, c.mr, c.nv),
                                                c.colPanels,
                                                k.op == Op::Conv2d ? "col(x)" : "colT(g)",
                                                k.op == Op::Conv2d ? "W in place" : "W' copied", threads));
                if (k.poolsGradient()) lines.back() += "; g expanded from the maxpool's gradient into the thread's scratch";
                continue;
            }
            if (k.kind != Kernel::Kind::Loop || k.a < 0) continue;
            const ProductPlan plan = planProduct(k, bl);
            const std::string blocking =
                plan.blocked ? fmt::format("K blocks of {} ({}), M blocks of {} rows", plan.kc, plan.kBlocks, plan.mc)
                             : fmt::format("not blocked (K {} <= KC {})", k.depth, bl.kc);
            const bool packsB = plan.packsAllB(), packsA = plan.packA;
            const std::string packedB = plan.packByStrip ? fmt::format("packed in N blocks of {} (a panel per thread)", bl.nr())
                                                         : "packed";
            const bool lastPanel = plan.packFrom < plan.colPanels && !packsB;
            lines.push_back(fmt::format("{} k{}: {} x {} x {} (A{} · B{}): {}, {}, B {}, A {}, {}", p->name, i, k.rows, k.cols,
                                        k.depth, k.transA ? "ᵀ" : "", k.transB ? "ᵀ" : "", tile, blocking,
                                        packsB ? packedB : lastPanel ? "in place (last panel packed)" : "in place",
                                        packsA ? "packed" : "in place", threads));
        }
    return lines;
}

std::vector<ScanPlan> scanPlans(const Graph& fwd, const CodegenOptions& opts) {
    Programs programs = buildPrograms(fwd, opts.f64, hostBlocking(fwd, opts, resolveIsa(opts.isa)));
    std::vector<ScanPlan> plans;
    for (const KernelProgram* p : {&programs.forward, &programs.backward})
        for (const Kernel& k : p->kernels)
            if (k.kind == Kernel::Kind::Op && (k.op == Op::Scan || k.op == Op::ScanGrad))
                plans.push_back(planScan(k, p->buffers, p->blocking, p->elementBytes));
    return plans;
}

} // namespace gradc
