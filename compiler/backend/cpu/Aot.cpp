// Aot.cpp — ahead-of-time compilation: object file (or assembly, or IR) and C header.
//
// The default object (`--target-cpu portable`) runs on any x86-64 and at full speed on a
// recent one: it holds the model's code once per ISA level (Variant: the x86-64 baseline,
// x86-64-v3, x86-64-v4), each lowered with its level's register tile and optimised for it,
// and the public PREFIX_forward, PREFIX_backward and PREFIX_update pass each call to the
// variant chosen at the first call: the highest level whose features cpuid reports and the
// operating system saves (xgetbv). The choice is made by a few instructions emitted here, so
// the object still needs nothing but libc and libm. A named CPU (`generic`, `native`,
// `znver4`, ...) gives an object with that one variant, as before.
//
// Symbols: the public ones are PREFIX_ followed by forward, backward, update, abi_version,
// isa, isa_name and select_isa. Everything else the object defines is local and named
// PREFIX_NAME_vL (the variant's level L; no suffix in a one-variant object), so two objects,
// or three variants in one, never clash.
#include "Aot.h"

#include "CodegenInternal.h"
#include "EntryAbi.h"
#include "Jit.h"
#include "Pipeline.h"
#include "Text.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <llvm/IR/IRBuilder.h>
#include <llvm/IR/InlineAsm.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/Module.h>
#include <llvm/Linker/Linker.h>
#include <llvm/MC/MCSubtargetInfo.h>
#include <llvm/MC/TargetRegistry.h>
#include <llvm/Support/raw_ostream.h>
#include <llvm/TargetParser/Host.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <optional>
#include <string_view>

namespace gradc {
namespace {

const llvm::Target& hostTarget() {
    Jit::initialiseLLVM();
    const std::string triple = llvm::sys::getProcessTriple();
    std::string err;
    const llvm::Target* target = llvm::TargetRegistry::lookupTarget(triple, err);
    if (!target) throw UserError({}, fmt::format("no code generator for {}: {}", triple, err));
    return *target;
}

/// The host target's table of CPUs, made once. Asked with no CPU, so LLVM has nothing to
/// complain about (given an unknown CPU it prints a warning to stderr and carries on).
const llvm::MCSubtargetInfo& cpuTable() {
    static const std::unique_ptr<llvm::MCSubtargetInfo> table(
        hostTarget().createMCSubtargetInfo(llvm::sys::getProcessTriple(), "", ""));
    return *table;
}

/// What the --target-cpu names of gradc's own compile: one row per variant, a name's rows
/// together, the lowest level first (it compiles the code that chooses). Any other name is
/// one of LLVM's CPUs, compiled for as itself.
struct TargetRow {
    std::string_view name, cpu;
};
constexpr TargetRow kTargets[] = {
    {kPortableCpu, "x86-64"}, {kPortableCpu, "x86-64-v3"}, {kPortableCpu, "x86-64-v4"},
    {"generic", "x86-64"}, // the x86-64 baseline (SSE2), which every x86-64 machine runs
    {"native", ""}, // this machine's CPU and features (Jit::hostCpu, Jit::hostFeatures)
};

/// gradc's own names, in the table's order: portable, generic, native.
std::vector<std::string> ownNames() {
    std::vector<std::string> names;
    for (const TargetRow& row : kTargets)
        if (names.empty() || names.back() != row.name) names.emplace_back(row.name);
    return names;
}

/// A target machine for one of LLVM's CPUs and the features to add to it.
std::unique_ptr<llvm::TargetMachine> targetMachine(const std::string& cpu, const std::string& features) {
    // Callers resolve gradc's own names and refuse unknown ones before: creating a target
    // machine for an unknown CPU prints to stderr.
    internal_assert(cpuTable().isCPUStringValid(cpu), "not a CPU LLVM knows: '" + cpu + "'");
    warmUpPipelines();
    std::unique_ptr<llvm::TargetMachine> tm(hostTarget().createTargetMachine(
        llvm::sys::getProcessTriple(), cpu, features, llvm::TargetOptions(), llvm::Reloc::PIC_, std::nullopt,
        llvm::CodeGenOptLevel::Aggressive));
    if (!tm) throw UserError({}, fmt::format("cannot generate code for CPU '{}'", cpu));
    return tm;
}

std::string featuresOf(llvm::TargetMachine& tm) {
    std::string f;
    for (const char* feature : {"+avx512f", "+avx2"})
        if (tm.getMCSubtargetInfo()->checkFeatures(feature)) f += std::string(feature) + ",";
    return f;
}

/// The features each x86-64 psABI level adds to the one below (as LLVM spells them; level 1
/// is the baseline, SSE2). The cpuid bits that cpuLevel checks are the same features.
constexpr const char* kLevelFeatures[5] = {
    "", "", "+cx16,+sahf,+popcnt,+sse3,+sse4.1,+sse4.2,+ssse3",
    "+avx,+avx2,+bmi,+bmi2,+f16c,+fma,+lzcnt,+movbe,+xsave",
    "+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl"};

/// The highest x86-64 level whose features a target machine's code may use.
int levelOf(llvm::TargetMachine& tm) {
    int level = 1;
    while (level < 4 && tm.getMCSubtargetInfo()->checkFeatures(kLevelFeatures[level + 1])) ++level;
    return level;
}

/// One copy of the model's code: the target machine it is compiled for, the x86-64 level
/// that machine's CPU implies, and the suffix of its symbols.
struct Variant {
    std::unique_ptr<llvm::TargetMachine> tm;
    int level = 1;
    std::string suffix; ///< "_v3"; "" in a one-variant object

    /// The CPU, as LLVM names it (x86-64 for generic).
    std::string cpu() const { return tm->getTargetCPU().str(); }
    /// This variant's symbol for NAME: PREFIX_NAME and the suffix.
    std::string symbol(const std::string& prefix, std::string_view name) const {
        return fmt::format("{}_{}{}", prefix, name, suffix);
    }
};

/// The variants of an object for --target-cpu `requested` (a known CPU): its rows of
/// kTargets, else the one CPU it names. Several variants' symbols carry their level.
std::vector<Variant> variantsFor(const std::string& requested) {
    std::vector<TargetRow> rows;
    for (const TargetRow& row : kTargets)
        if (row.name == requested) rows.push_back(row);
    if (rows.empty()) rows.push_back({requested, requested});
    std::vector<Variant> out;
    for (const TargetRow& row : rows) {
        Variant v;
        v.tm = row.cpu.empty() ? targetMachine(Jit::hostCpu(), Jit::hostFeatures("native")) : targetMachine(std::string(row.cpu), "");
        v.level = levelOf(*v.tm);
        if (rows.size() > 1) v.suffix = fmt::format("_v{}", v.level);
        internal_assert(out.empty() || out.back().level < v.level, "no x86-64 level of its own: " + v.cpu());
        out.push_back(std::move(v));
    }
    return out;
}

/// An entry point: its symbol as lowered (EntryAbi.h) and its name in the object, after the prefix.
struct EntryName {
    const char* lowered;
    const char* name;
};
const std::array<EntryName, 3>& entryNames() {
    static const std::array<EntryName, 3> names = {
        {{entrySymbol(EntryPoint::Forward), "forward"}, {entrySymbol(EntryPoint::Backward), "backward"}, {kUpdateSymbol, "update"}}};
    return names;
}

/// Names every function and global a variant's module defines PREFIX_NAME + suffix (NAME
/// without lowering's "gradc_"), makes all but the entry points local, and marks every
/// function with the variant's CPU, so that code generation (and the optimiser's cost
/// model) take each function's instruction set from it even inside a module of variants.
void nameVariant(llvm::Module& m, const std::string& prefix, const Variant& v) {
    for (const EntryName& e : entryNames())
        internal_assert(m.getFunction(e.lowered), std::string("the lowered module has no ") + e.lowered);
    auto rename = [&](llvm::GlobalValue& g) {
        std::string name = g.getName().str();
        bool entry = false;
        for (const EntryName& e : entryNames())
            if (name == e.lowered) entry = true, name = e.name;
        if (name.rfind("gradc_", 0) == 0) name = name.substr(6);
        g.setName(v.symbol(prefix, name));
        if (!entry) g.setLinkage(llvm::GlobalValue::InternalLinkage);
    };
    const std::string features = v.tm->getTargetFeatureString().str();
    for (llvm::Function& f : m) {
        if (f.isDeclaration()) continue;
        rename(f);
        f.addFnAttr("target-cpu", v.cpu());
        if (!features.empty()) f.addFnAttr("target-features", features);
    }
    for (llvm::GlobalVariable& g : m.globals())
        if (!g.isDeclaration() && !g.hasPrivateLinkage()) rename(g);
}

/// `int PREFIX_cpu_level(void)`: the highest x86-64 level this CPU runs: its features by
/// cpuid, and for AVX and AVX-512 the operating system's saving of their registers (XCR0:
/// SSE and AVX state, bits 1 and 2; AVX-512's opmask and upper registers, bits 5 to 7).
llvm::Function* emitCpuLevel(llvm::Module& m, const std::string& name) {
    llvm::LLVMContext& ctx = m.getContext();
    llvm::IRBuilder<> b(ctx);
    llvm::Type* i32 = b.getInt32Ty();
    auto* f = llvm::Function::Create(llvm::FunctionType::get(i32, false), llvm::Function::InternalLinkage, name, m);
    f->addFnAttr(llvm::Attribute::NoUnwind);
    // Run once or twice: kept out of line, so the entry points' path to their variant stays short.
    f->addFnAttr(llvm::Attribute::NoInline);
    f->addFnAttr(llvm::Attribute::Cold);
    auto* entry = llvm::BasicBlock::Create(ctx, "entry", f);
    auto* xsave = llvm::BasicBlock::Create(ctx, "xgetbv", f);
    auto* done = llvm::BasicBlock::Create(ctx, "done", f);
    b.SetInsertPoint(entry);
    const char* clobbers = "~{dirflag},~{fpsr},~{flags}";
    auto* cpuidTy = llvm::FunctionType::get(llvm::StructType::get(ctx, {i32, i32, i32, i32}), {i32, i32}, false);
    auto* cpuid = llvm::InlineAsm::get(cpuidTy, "cpuid", fmt::format("={{ax}},={{bx}},={{cx}},={{dx}},{{ax}},{{cx}},{}", clobbers),
                                       /*hasSideEffects=*/true);
    enum { Eax, Ebx, Ecx, Edx };
    auto query = [&](uint32_t leaf, unsigned reg) {
        return b.CreateExtractValue(b.CreateCall(cpuid, {b.getInt32(leaf), b.getInt32(0)}), reg);
    };
    // A leaf past the highest one the CPU has returns other data: such a leaf counts as zero.
    auto queryIfAny = [&](uint32_t leaf, unsigned reg, uint32_t first) {
        llvm::Value* highest = query(first, Eax);
        return b.CreateSelect(b.CreateICmpUGE(highest, b.getInt32(leaf)), query(leaf, reg), b.getInt32(0));
    };
    llvm::Value* ecx1 = query(1, Ecx);
    llvm::Value* ebx7 = queryIfAny(7, Ebx, 0);
    llvm::Value* ecx81 = queryIfAny(0x80000001u, Ecx, 0x80000000u);
    auto all = [&](llvm::Value* v, uint32_t bits) { return b.CreateICmpEQ(b.CreateAnd(v, bits), b.getInt32(bits)); };
    constexpr uint32_t osxsave = 1u << 27;
    b.CreateCondBr(all(ecx1, osxsave), xsave, done);
    // xgetbv (by its bytes: the assembler would want the xsave feature for the mnemonic).
    b.SetInsertPoint(xsave);
    auto* xgetbvTy = llvm::FunctionType::get(llvm::StructType::get(ctx, {i32, i32}), {i32}, false);
    auto* xgetbv = llvm::InlineAsm::get(xgetbvTy, ".byte 0x0f, 0x01, 0xd0",
                                        fmt::format("={{ax}},={{dx}},{{cx}},{}", clobbers), /*hasSideEffects=*/true);
    llvm::Value* xcr0Read = b.CreateExtractValue(b.CreateCall(xgetbv, {b.getInt32(0)}), 0);
    b.CreateBr(done);
    b.SetInsertPoint(done);
    llvm::PHINode* xcr0 = b.CreatePHI(i32, 2, "xcr0");
    xcr0->addIncoming(b.getInt32(0), entry);
    xcr0->addIncoming(xcr0Read, xsave);
    // Level 2: SSE3 (ecx1 bit 0), SSSE3 (9), CMPXCHG16B (13), SSE4.1 (19), SSE4.2 (20),
    // POPCNT (23); LAHF in 64-bit mode (ecx81 bit 0).
    llvm::Value* v2 = b.CreateAnd(all(ecx1, 1u << 0 | 1u << 9 | 1u << 13 | 1u << 19 | 1u << 20 | 1u << 23), all(ecx81, 1u << 0));
    // Level 3: FMA (ecx1 bit 12), MOVBE (22), XSAVE (26), OSXSAVE (27), AVX (28), F16C (29);
    // BMI1 (ebx7 bit 3), AVX2 (5), BMI2 (8); LZCNT (ecx81 bit 5); SSE and AVX state saved.
    llvm::Value* v3 = b.CreateAnd(
        {v2, all(ecx1, 1u << 12 | 1u << 22 | 1u << 26 | osxsave | 1u << 28 | 1u << 29), all(ebx7, 1u << 3 | 1u << 5 | 1u << 8),
         all(ecx81, 1u << 5), all(xcr0, 0x6)});
    // Level 4: AVX512F (ebx7 bit 16), DQ (17), CD (28), BW (30), VL (31); opmask and the
    // upper ZMM registers saved too.
    llvm::Value* v4 = b.CreateAnd({v3, all(ebx7, 1u << 16 | 1u << 17 | 1u << 28 | 1u << 30 | 1u << 31), all(xcr0, 0xE6)});
    b.CreateRet(b.CreateSelect(v4, b.getInt32(4), b.CreateSelect(v3, b.getInt32(3), b.CreateSelect(v2, b.getInt32(2), b.getInt32(1)))));
    return f;
}

/// The object's public functions besides the entry points' code: PREFIX_abi_version,
/// PREFIX_isa, PREFIX_isa_name, PREFIX_select_isa, and with several variants the entry
/// points themselves, each a jump to the chosen variant's. `object` holds the variants'
/// code; the module made here is for the same target, to be linked into it.
std::unique_ptr<llvm::Module> apiModule(const llvm::Module& object, const std::string& prefix,
                                        const std::vector<Variant>& variants) {
    llvm::LLVMContext& ctx = object.getContext();
    auto m = std::make_unique<llvm::Module>(prefix + "_api", ctx);
    m->setDataLayout(object.getDataLayout());
    m->setTargetTriple(object.getTargetTriple());
    llvm::IRBuilder<> b(ctx);
    llvm::Type* i32 = b.getInt32Ty();
    auto define = [&](const std::string& name, llvm::FunctionType* ty) {
        auto* f = llvm::Function::Create(ty, llvm::Function::ExternalLinkage, prefix + "_" + name, *m);
        f->addFnAttr(llvm::Attribute::NoUnwind);
        b.SetInsertPoint(llvm::BasicBlock::Create(ctx, "entry", f));
        return f;
    };
    define("abi_version", llvm::FunctionType::get(i32, false));
    b.CreateRet(b.getInt32(kAbiVersion));

    llvm::Function* cpuLevel = emitCpuLevel(*m, prefix + "_cpu_level");
    // The level chosen, 0 until the first call chooses. Every thread that finds 0 computes the
    // same answer, so relaxed loads and stores suffice.
    auto* chosen = new llvm::GlobalVariable(*m, i32, false, llvm::GlobalValue::InternalLinkage, b.getInt32(0),
                                            prefix + "_isa_chosen");
    auto loadChosen = [&] {
        llvm::LoadInst* l = b.CreateLoad(i32, chosen);
        l->setAtomic(llvm::AtomicOrdering::Monotonic);
        l->setAlignment(llvm::Align(4));
        return l;
    };
    auto storeChosen = [&](llvm::Value* v) {
        llvm::StoreInst* s = b.CreateStore(v, chosen);
        s->setAtomic(llvm::AtomicOrdering::Monotonic);
        s->setAlignment(llvm::Align(4));
    };

    // int PREFIX_isa(void): the chosen level, choosing it at the first call: the highest
    // variant's level the CPU runs (the lowest variant if it runs none: a one-variant object
    // for another CPU runs as it would have before).
    llvm::Function* isa = define("isa", llvm::FunctionType::get(i32, false));
    {
        llvm::BasicBlock* entry = b.GetInsertBlock();
        auto* choose = llvm::BasicBlock::Create(ctx, "choose", isa);
        auto* done = llvm::BasicBlock::Create(ctx, "done", isa);
        llvm::Value* current = loadChosen();
        b.CreateCondBr(b.CreateICmpEQ(current, b.getInt32(0)), choose, done);
        b.SetInsertPoint(choose);
        llvm::Value* cpu = b.CreateCall(cpuLevel);
        llvm::Value* pick = b.getInt32(variants.front().level);
        for (const Variant& v : variants)
            pick = b.CreateSelect(b.CreateICmpSGE(cpu, b.getInt32(v.level)), b.getInt32(v.level), pick);
        storeChosen(pick);
        b.CreateBr(done);
        b.SetInsertPoint(done);
        llvm::PHINode* level = b.CreatePHI(i32, 2);
        level->addIncoming(current, entry);
        level->addIncoming(pick, choose);
        b.CreateRet(level);
    }

    // int PREFIX_select_isa(int level): 0 returns to the automatic choice; a variant's level
    // that this CPU runs is chosen; anything else is refused (-1) and changes nothing.
    {
        llvm::Function* select = define("select_isa", llvm::FunctionType::get(i32, {i32}, false));
        llvm::Value* level = select->getArg(0);
        auto* check = llvm::BasicBlock::Create(ctx, "check", select);
        auto* accept = llvm::BasicBlock::Create(ctx, "accept", select);
        auto* refuse = llvm::BasicBlock::Create(ctx, "refuse", select);
        llvm::Value* known = b.CreateICmpEQ(level, b.getInt32(0));
        for (const Variant& v : variants) known = b.CreateOr(known, b.CreateICmpEQ(level, b.getInt32(v.level)));
        b.CreateCondBr(known, check, refuse);
        b.SetInsertPoint(check);
        b.CreateCondBr(b.CreateICmpSLE(level, b.CreateCall(cpuLevel)), accept, refuse);
        b.SetInsertPoint(accept);
        storeChosen(level);
        b.CreateRet(b.getInt32(0));
        b.SetInsertPoint(refuse);
        b.CreateRet(b.getInt32(-1));
    }

    // const char* PREFIX_isa_name(void): the CPU the chosen variant was compiled for.
    {
        define("isa_name", llvm::FunctionType::get(b.getPtrTy(), false));
        llvm::Value* level = b.CreateCall(isa);
        llvm::Value* result = nullptr;
        for (const Variant& v : variants) {
            llvm::Value* name = b.CreateGlobalString(v.cpu(), v.symbol(prefix, "isa_name"), 0, m.get());
            result = result ? b.CreateSelect(b.CreateICmpEQ(level, b.getInt32(v.level)), name, result) : name;
        }
        b.CreateRet(result);
    }

    // The entry points of several variants: a jump to the chosen one's (the first variant's
    // for any other level, which isa never returns).
    if (variants.size() > 1)
        for (const EntryName& e : entryNames()) {
            llvm::FunctionType* type = object.getFunction(variants.front().symbol(prefix, e.name))->getFunctionType();
            llvm::Function* f = define(e.name, type);
            std::vector<llvm::Value*> args;
            for (llvm::Argument& a : f->args()) args.push_back(&a);
            llvm::Value* level = b.CreateCall(isa);
            std::vector<llvm::BasicBlock*> blocks;
            for (const Variant& v : variants) blocks.push_back(llvm::BasicBlock::Create(ctx, "v" + std::to_string(v.level), f));
            llvm::SwitchInst* sw = b.CreateSwitch(level, blocks.front(), unsigned(variants.size()));
            for (size_t i = 0; i < variants.size(); ++i) {
                if (i > 0) sw->addCase(b.getInt32(variants[i].level), blocks[i]);
                b.SetInsertPoint(blocks[i]);
                b.CreateCall(m->getOrInsertFunction(variants[i].symbol(prefix, e.name), type), args)->setTailCall(true);
                b.CreateRetVoid();
            }
        }
    return m;
}

std::string cName(const std::string& s) {
    std::string out;
    for (char c : s) out += std::isalnum((unsigned char)c) ? c : '_';
    if (out.empty() || std::isdigit((unsigned char)out[0])) out = "m_" + out;
    return out;
}

std::string header(const Graph& g, const Programs& p, const AotOptions& opts, const std::string& prefix,
                   const std::vector<Variant>& variants, int64_t workspace) {
    // The model file by its name alone (where it lay on the compiling machine is no business of
    // the header), and names only as a comment may hold them.
    const std::string source = cCommentText(opts.source.substr(opts.source.find_last_of('/') + 1));
    std::string up;
    for (char c : prefix) up += char(std::toupper((unsigned char)c));
    const char* real = opts.f64 ? "double" : "float";
    const bool labels = g.lossKind == "cross_entropy";
    std::string cpu = variants.front().cpu(), levels, names;
    for (const Variant& v : variants) {
        levels += fmt::format("{}{}", levels.empty() ? "" : ", ", v.level);
        names += fmt::format("{}{} ({})", names.empty() ? "" : ", ", v.level, v.cpu());
    }
    if (variants.size() > 1) cpu = fmt::format("{} ({})", kPortableCpu, names);
    const std::vector<const LayoutEntry*> params = p.layout.all(Role::Parameter);
    std::vector<const LayoutEntry*> kept; // the kept activations, in acts
    for (auto& e : p.layout.entries)
        if (e.array == Array::Acts) kept.push_back(&e);
    size_t maxRank = 1;
    for (auto& e : p.layout.entries) maxRank = std::max(maxRank, e.shape.size());
    // x as the model file declares it: [batch][784], [batch][28][28], or images NCHW,
    // [batch][channels][height][width] (PyTorch's layout; `input 1x28x28`).
    const Shape& x = g[0].shape;
    std::string inputShape;
    for (int64_t d : x) inputShape += fmt::format("[{}]", d);
    const bool sequence = g.sequence && x.size() == 3;
    const std::string images = x.size() == 4 ? "; images: batch, channels, height, width"
                               : sequence   ? "; a sequence: batch, steps, features"
                                            : "";
    std::string h = fmt::format(
        "/* {prefix}.h - generated by {version} from {source} (model {model}) for CPU {cpu}.\n"
        " * Do not edit: run `gradc compile` again.\n"
        " *\n"
        " * Link:  cc app.c OBJECT.o -lm      (the object written with this header; no LLVM, no C++ runtime)\n"
        " *\n"
        " * Arrays are row-major. params and grads hold every parameter in the order and layout of\n"
        " * PyTorch's named_parameters() (a linear weight [out, in], a conv weight [out, in, kh, kw]);\n"
        " * see {prefix}_parameters.\n"
        " * x holds {inputShape} values ({up}_INPUT_SHAPE{images}).\n"
        " * target holds int32 class labels [batch] for cross_entropy, else {real} values\n"
        " * [batch][outputs]. acts receives the input of every hidden activation layer and of every\n"
        " * batchnorm, each batchnorm's batch statistics, and each recurrent layer's norms of\n"
        " * dL/dh_t, one per step, from backward ({up}_ACTIVATIONS values; see\n"
        " * {prefix}_activations). Every tensor has a rank and a shape of up to {up}_MAX_RANK\n"
        " * dimensions.\n"
        " * workspace is {up}_WORKSPACE_BYTES bytes, 64-byte aligned. The functions keep no state. */\n"
        "#ifndef GRADC_{prefix}_H\n#define GRADC_{prefix}_H\n\n#include <stdint.h>\n\n#ifdef __cplusplus\nextern \"C\" {{\n#endif\n\n"
        "#define {up}_ABI_VERSION {abi}u /* compare with {prefix}_abi_version() */\n"
        "#define {up}_BATCH {batch}\n#define {up}_INPUTS {inputs} /* values of one example */\n"
        "#define {up}_INPUT_RANK {inputRank} /* x's dimensions, the batch's included */\n"
        "#define {up}_INPUT_SHAPE {{{inputDims}}} /* x's shape: int64_t shape[] = {up}_INPUT_SHAPE; */\n{steps}"
        "#define {up}_OUTPUTS {outputs}\n"
        "#define {up}_PARAMETERS {params}\n#define {up}_ACTIVATIONS {acts}\n"
        "#define {up}_WORKSPACE_BYTES {ws}\n#define {up}_LABELS {labels} /* 1: int32 class labels; 0: {real} targets */\n\n"
        "typedef {real} {prefix}_real;\n\n"
        "#define {up}_MAX_RANK {maxRank} /* the most dimensions a tensor below has */\n\n"
        "typedef struct {{\n    const char* name; /* the tensor, or the layer of a kept activation */\n"
        "    const char* role; /* parameter, preact, norm_input, norm_mean, norm_var, through_time */\n    int rank;\n    int64_t shape[{up}_MAX_RANK]; /* rank entries used, the rest 0 */\n"
        "    int64_t offset; /* elements into its array */\n    int64_t count;\n}} {prefix}_tensor;\n"
        "typedef {prefix}_tensor {prefix}_parameter;\n\n"
        "/* The parameters in params and grads (the same offsets in both). */\n"
        "#define {up}_PARAMETER_TENSORS {nparams}\n"
        "static const {prefix}_tensor {prefix}_parameters[{nparams}] = {{\n",
        fmt::arg("prefix", prefix), fmt::arg("version", versionString()), fmt::arg("source", source),
        fmt::arg("model", cCommentText(g.model)), fmt::arg("cpu", cpu), fmt::arg("real", real), fmt::arg("up", up),
        fmt::arg("abi", kAbiVersion), fmt::arg("batch", g.batch), fmt::arg("inputs", perExample(g[0].shape)),
        fmt::arg("outputs", g[g.output(OutputRole::Logits)].shape[1]), fmt::arg("params", p.layout.parameterCount()),
        fmt::arg("acts", p.layout.size(Array::Acts)), fmt::arg("ws", workspace), fmt::arg("labels", labels ? 1 : 0),
        fmt::arg("nparams", params.size()), fmt::arg("maxRank", maxRank), fmt::arg("inputShape", inputShape),
        fmt::arg("images", images), fmt::arg("inputRank", x.size()), fmt::arg("inputDims", fmt::join(x, ", ")),
        fmt::arg("steps", sequence ? fmt::format("#define {0}_INPUT_STEPS {1} /* x: {1} steps of {0}_INPUT_FEATURES */\n"
                                                 "#define {0}_INPUT_FEATURES {2}\n", up, x[1], x[2])
                                   : std::string()));
    // One row per tensor: its name, rank, shape (padded with zeros to the largest rank) and place.
    auto row = [&](const LayoutEntry& e) {
        std::string shape;
        for (size_t d = 0; d < maxRank; ++d) shape += fmt::format("{}{}", d ? ", " : "", d < e.shape.size() ? e.shape[d] : 0);
        return fmt::format("    {{\"{}\", \"{}\", {}, {{{}}}, {}, {}}},\n", cStringText(e.name), roleName(e.role), e.shape.size(), shape, e.offset,
                           e.elements());
    };
    for (const LayoutEntry* e : params) h += row(*e);
    h += "};\n\n";
    // C has no empty arrays: with no kept activation the table holds one unused row.
    h += fmt::format("/* The values acts receives, by layer: each hidden activation layer's input, each\n"
                     "   batchnorm's input, then each batchnorm's batch mean and unbiased variance, then each\n"
                     "   recurrent layer's norms of dL/dh_t (backward only). */\n"
                     "#define {up}_ACTIVATION_TENSORS {n}\n"
                     "static const {prefix}_tensor {prefix}_activations[{size}] = {{\n",
                     fmt::arg("up", up), fmt::arg("prefix", prefix), fmt::arg("n", kept.size()),
                     fmt::arg("size", std::max<size_t>(kept.size(), 1)));
    for (const LayoutEntry* e : kept) h += row(*e);
    if (kept.empty()) h += "    {\"\", \"\", 0, {0}, 0, 0},\n";
    h += "};\n\n";
    // The recurrent layers: cell, steps, input features, hidden units and where backward
    // writes the norms of dL/dh_t (the layer's through_time row of the activations).
    std::string recurrent;
    int64_t layers = 0;
    for (const LayerInfo& layer : g.layers) {
        const Node& scan = g[layer.value];
        if (scan.op != Op::Scan) continue;
        const LayoutEntry* norms = p.layout.find(Role::ThroughTime, layer.name);
        internal_assert(norms, "no through-time norms in the layout for " + layer.name);
        const Shape& xp = g[scan.in[0]].shape; // the input projection [B,T,GH] of x [B,T,N]
        internal_assert(layer.in.size() == 3, "a recurrent layer whose input is not a sequence: " + layer.name);
        // The rnn's non-linearity is its cell expression's root (Layers.cpp: tanh, else relu).
        const std::string cell = scan.cell != Cell::Rnn ? cellName(scan.cell)
                                 : scan.expr->op == scalar::Kind::Tanh ? "rnn_tanh" : "rnn_relu";
        recurrent += fmt::format("    {{\"{}\", \"{}\", {}, {}, {}, {}}},\n", cStringText(layer.name), cell, xp[1],
                                 layer.in[2], scan.shape[2], norms->offset);
        ++layers;
    }
    if (layers > 0)
        h += fmt::format("/* The recurrent layers: cell (rnn_tanh, rnn_relu, lstm, gru), steps, input features per step, hidden\n"
                         "   units, and the offset in acts of the layer's norms of dL/dh_t (steps values, t = 0 first:\n"
                         "   the Frobenius norm over the batch of the total derivative of the loss with respect to\n"
                         "   h_t; written by backward). */\n"
                         "typedef struct {{\n    const char* layer;\n    const char* cell;\n"
                         "    int64_t steps, inputs, hidden;\n    int64_t norms; /* offset in acts */\n}} {prefix}_recurrent_layer;\n"
                         "#define {up}_RECURRENT_LAYERS {n}\n"
                         "static const {prefix}_recurrent_layer {prefix}_recurrent[{n}] = {{\n{rows}}};\n\n",
                         fmt::arg("prefix", prefix), fmt::arg("up", up), fmt::arg("n", layers), fmt::arg("rows", recurrent));
    // The entry points' other arguments, with their shapes (x of any rank: `input 28x28`).
    h += fmt::format("/* The entry points' other arrays: x, target, logits and loss, each with its shape. */\n"
                     "static const {prefix}_tensor {prefix}_arguments[4] = {{\n",
                     fmt::arg("prefix", prefix));
    for (Role r : {Role::Input, Role::Target, Role::Logits, Role::Loss}) {
        const std::vector<const LayoutEntry*> e = p.layout.all(r);
        internal_assert(e.size() == 1, std::string("the layout has no single ") + roleName(r));
        h += row(*e[0]);
    }
    h += "};\n\n";
    // Instruction set levels as the x86-64 psABI numbers them.
    const std::string about =
        variants.size() > 1
            ? fmt::format("/* The code that runs. The object holds the model's code for {} instruction set levels, as\n"
                          "   the x86-64 psABI numbers them: {}\n"
                          "   (1: the x86-64 baseline, SSE2; 3: AVX2 and FMA; 4: AVX-512). The first call of\n"
                          "   forward, backward, update or isa chooses the highest level this CPU runs (cpuid, and\n"
                          "   the operating system's support), once for all threads. */\n",
                          variants.size(), names)
            : fmt::format("/* The code that runs: the object holds code for one CPU, {}, which needs x86-64\n"
                          "   level {} (as the x86-64 psABI numbers them; 1: the baseline, SSE2; 3: AVX2 and FMA;\n"
                          "   4: AVX-512) or more. */\n",
                          cpu, variants.front().level);
    h += fmt::format("uint32_t {p}_abi_version(void);\n"
                     "void {p}_forward(const {r}* params, const {r}* x, const void* target, {r}* logits, {r}* loss,\n"
                     "                 {r}* acts, void* workspace);\n"
                     "void {p}_backward(const {r}* params, const {r}* x, const void* target, {r}* loss, {r}* grads,\n"
                     "                  {r}* acts, void* workspace);\n"
                     "/* One optimiser step over params[begin, end): hyper = {{method (0 SGD, 1 SGD with momentum,\n"
                     "   2 Adam), lr, weight decay, momentum, dampening, nesterov, beta1, beta2, eps,\n"
                     "   1 - beta1^t, sqrt(1 - beta2^t), gradient scale}}; m and v are the optimiser's state, zero\n"
                     "   at first. hyper[11], the gradient scale, multiplies every gradient before the weight decay\n"
                     "   is added: 1 without clipping; min(1, max_norm / (norm + 1e-6)) for gradient-norm\n"
                     "   clipping (torch.nn.utils.clip_grad_norm_), norm the 2-norm of all the gradients. */\n"
                     "void {p}_update({r}* params, const {r}* grads, {r}* m, {r}* v, const double* hyper,\n"
                     "                int64_t begin, int64_t end);\n\n"
                     "{about}"
                     "#define {up}_ISA_VARIANTS {n}\n"
                     "static const int {p}_isa_levels[{n}] = {{{levels}}};\n"
                     "/* The level that runs (choosing it if nothing has yet). */\n"
                     "int {p}_isa(void);\n"
                     "/* The CPU that level's code was compiled for, as LLVM names it: x86-64, x86-64-v3, ... */\n"
                     "const char* {p}_isa_name(void);\n"
                     "/* Runs the code of `level` from now on: 0 if the object has it and this CPU runs it,\n"
                     "   else -1 (and nothing changes). Level 0 returns to the automatic choice. Call it\n"
                     "   while no other thread is inside forward, backward or update. */\n"
                     "int {p}_select_isa(int level);\n\n"
                     "#ifdef __cplusplus\n}}\n#endif\n\n#endif\n",
                     fmt::arg("p", prefix), fmt::arg("r", real), fmt::arg("up", up), fmt::arg("n", variants.size()),
                     fmt::arg("levels", levels), fmt::arg("about", about));
    return h;
}

} // namespace

bool isKnownCpu(const std::string& name) {
    return std::any_of(std::begin(kTargets), std::end(kTargets), [&](const TargetRow& row) { return row.name == name; }) ||
           cpuTable().isCPUStringValid(name);
}

std::vector<std::string> knownCpus() {
    std::vector<std::string> names = ownNames();
    for (auto& kv : cpuTable().getAllProcessorDescriptions()) // generic: gradc's meaning
        if (std::find(names.begin(), names.end(), std::string(kv.Key)) == names.end()) names.push_back(std::string(kv.Key));
    return names;
}

std::string aotOptionsError(const AotOptions& opts) {
    if (!isKnownCpu(opts.targetCpu))
        return fmt::format("--target-cpu {} is not a CPU LLVM knows ({}, or a name that 'gradc compile MODEL "
                           "--target-cpu help' lists)",
                           opts.targetCpu, fmt::join(ownNames(), ", "));
    if (opts.prefix && !isCIdentifier(*opts.prefix))
        return fmt::format("--prefix '{}' is not a C identifier (letters, digits and _, not first a digit)", *opts.prefix);
    if (opts.emit != "obj" && opts.emit != "asm" && opts.emit != "llvm")
        return fmt::format("--emit={} is not obj, asm or llvm", opts.emit);
    return "";
}

AotResult compileAhead(const Graph& fwd, const AotOptions& opts) {
    if (const std::string error = aotOptionsError(opts); !error.empty()) throw UserError({}, error);
    const std::string prefix = opts.prefix.value_or(cName(fwd.model));
    std::vector<Variant> variants = variantsFor(opts.targetCpu);
    // Each variant: its own register tile and scratch, lowered, named, optimised for its
    // CPU, then linked into one module. The buffers the caller passes are the same for all.
    llvm::LLVMContext ctx;
    std::unique_ptr<llvm::Module> object;
    std::optional<Programs> first;
    int64_t workspace = 0;
    for (const Variant& v : variants) {
        Programs programs = buildPrograms(fwd, opts.f64, blockingFor(featuresOf(*v.tm), opts.f64));
        internal_assert(!first || printLayout(programs.layout) == printLayout(first->layout),
                        "the ISA variants of an object disagree on the layout of its arrays");
        workspace = std::max({workspace, programs.forward.workspaceBytes, programs.backward.workspaceBytes});
        auto m = lower(ctx, programs, opts.f64, *v.tm);
        nameVariant(*m, prefix, v);
        // The object may run on another machine: scalar libm only, no libmvec.
        optimise(*m, *v.tm, /*libmvec=*/false);
        if (!first) first = std::move(programs);
        if (!object) object = std::move(m);
        else internal_assert(!llvm::Linker::linkModules(*object, std::move(m)), "cannot link the ISA variants");
    }
    auto api = apiModule(*object, prefix, variants);
    optimise(*api, *variants.front().tm, /*libmvec=*/false);
    internal_assert(!llvm::Linker::linkModules(*object, std::move(api)), "cannot link the entry points");
    if (variants.size() > 1) // the variants' entry points are reached through the public ones only
        for (const Variant& v : variants)
            for (const EntryName& e : entryNames())
                object->getFunction(v.symbol(prefix, e.name))->setLinkage(llvm::GlobalValue::InternalLinkage);
    verify(*object, "the object");
    // The first variant's machine (the baseline's, in a portable object) compiles the code
    // that chooses; every other function carries its variant's CPU.
    llvm::TargetMachine& tm = *variants.front().tm;
    AotResult r;
    if (opts.emit == "llvm") r.output = printModule(*object);
    else r.output = emit(*object, tm, opts.emit == "asm" ? llvm::CodeGenFileType::AssemblyFile : llvm::CodeGenFileType::ObjectFile);
    r.header = header(fwd, *first, opts, prefix, variants, workspace);
    return r;
}

} // namespace gradc
