// SplitCodegen.cpp — the last two phases of a JIT compilation (LLVM optimisation, machine code)
// spread over threads: the module's functions are dealt out to parts, each part compiled in
// its own LLVMContext (a context is not thread safe) to its own object.
#include "SplitCodegen.h"

#include "CodegenInternal.h"

#include <fmt/format.h>
#include <llvm/Bitcode/BitcodeReader.h>
#include <llvm/Bitcode/BitcodeWriter.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/Module.h>
#include <llvm/IR/PassManager.h>
#include <llvm/Passes/PassBuilder.h>
#include <llvm/Transforms/IPO/GlobalDCE.h>
#include <llvm/Support/MemoryBuffer.h>
#include <llvm/Support/raw_ostream.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <set>
#include <system_error>
#include <thread>

namespace gradc {

namespace {

/// What a part does on its thread, given its index; the first error is rethrown on the
/// caller's. Threads of their own, not the runtime's pool: gradc_parallel_for runs its work
/// serially on the calling thread when the pool is busy (a model compiled while another
/// runs would compile on one thread), and it is extern "C", so no exception may cross it,
/// while LLVM's failures here are UserErrors.
void onThreads(size_t parts, const std::function<void(size_t)>& work) {
    std::vector<std::exception_ptr> errors(parts);
    std::vector<std::thread> threads;
    auto guarded = [&](size_t i) {
        try {
            work(i);
        } catch (...) {
            errors[i] = std::current_exception();
        }
    };
    for (size_t i = 1; i < parts; ++i) try {
            threads.emplace_back(guarded, i);
        } catch (const std::system_error&) { // no thread to be had (a limit on threads): the caller does it
            guarded(i);
        }
    guarded(0); // the calling thread does its share
    for (std::thread& t : threads) t.join();
    for (const std::exception_ptr& e : errors)
        if (e) std::rethrow_exception(e);
}

/// Keeps, in `m`, the definitions of part `part`: the functions named in `mine` and, in part
/// 0, the global variables that are not local constants (those are in every part).
void keepPart(llvm::Module& m, const std::set<std::string>& mine, size_t part) {
    for (llvm::Function& f : m)
        if (!f.isDeclaration() && !mine.count(f.getName().str())) f.deleteBody();
    std::vector<llvm::GlobalVariable*> unused;
    for (llvm::GlobalVariable& v : m.globals()) {
        if (v.isDeclaration()) continue;
        if (!v.hasLocalLinkage() && part != 0) {
            v.setInitializer(nullptr);
            v.setLinkage(llvm::GlobalValue::ExternalLinkage);
            v.setComdat(nullptr);
        } else if (v.hasLocalLinkage()) {
            v.removeDeadConstantUsers();
            if (v.use_empty()) unused.push_back(&v);
        }
    }
    for (llvm::GlobalVariable* v : unused) v->eraseFromParent();
}

} // namespace

std::vector<std::string> compileObjects(llvm::Module& m, int parts, const std::string& isa, PhaseTimer* timer) {
    auto phase = [&](const char* name) {
        if (timer) (*timer)(name);
    };
    // keepPart knows functions and global variables only; lowering makes no aliases, ifuncs,
    // comdats or appending globals (llvm.used, global constructors).
    internal_assert(m.alias_empty() && m.ifunc_empty() && m.getComdatSymbolTable().empty(),
                    "a module to compile in parts has aliases, ifuncs or comdats");
    for (const llvm::GlobalVariable& v : m.globals())
        internal_assert(!v.hasAppendingLinkage(), "a module to compile in parts has an appending global");
    // The helpers no kernel calls (gradc_pack_a, in most models) go first, while they are
    // internal (split, they become external and each part's globaldce keeps them) and
    // before their instructions count as work. In one part, optimise's globaldce does it.
    if (parts > 1) {
        llvm::ModuleAnalysisManager mam;
        llvm::PassBuilder().registerModuleAnalyses(mam);
        llvm::ModulePassManager mpm;
        mpm.addPass(llvm::GlobalDCEPass());
        mpm.run(m, mam);
    }
    // Each function in the part with the least work so far, the largest first; the work of a
    // function is its instruction count (an `optnone` entry point, a list of calls compiled
    // by fast instruction selection, counts a quarter).
    std::vector<std::pair<size_t, llvm::Function*>> work;
    for (llvm::Function& f : m)
        if (!f.isDeclaration())
            work.emplace_back(f.hasOptNone() ? f.getInstructionCount() / 4 + 1 : f.getInstructionCount() + 1, &f);
    parts = std::max(1, std::min<int>(parts, int(work.size())));
    auto tm = hostTargetMachine(isa);
    if (parts == 1) {
        optimise(m, *tm);
        phase("LLVM optimisation");
        std::vector<std::string> out{emit(m, *tm, llvm::CodeGenFileType::ObjectFile)};
        phase("machine code");
        return out;
    }

    // Functions and mutable globals become external (hidden: they stay within the JIT's
    // library), so that a part may call or use what another part defines. Constants that are
    // local stay local, copied into every part that uses them.
    for (llvm::GlobalValue& g : m.global_values()) {
        if (g.isDeclaration() || !g.hasLocalLinkage()) continue;
        if (auto* v = llvm::dyn_cast<llvm::GlobalVariable>(&g); v && v->isConstant()) continue;
        if (!g.hasName()) g.setName("gradc.local");
        g.setLinkage(llvm::GlobalValue::ExternalLinkage);
        g.setVisibility(llvm::GlobalValue::HiddenVisibility);
    }
    std::stable_sort(work.begin(), work.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    std::vector<std::set<std::string>> mine(static_cast<size_t>(parts));
    std::vector<size_t> load(static_cast<size_t>(parts), 0);
    for (const auto& [size, f] : work) {
        const size_t lightest = size_t(std::min_element(load.begin(), load.end()) - load.begin());
        load[lightest] += size;
        mine[lightest].insert(f->getName().str());
    }
    llvm::SmallVector<char, 0> bitcode;
    {
        llvm::raw_svector_ostream os(bitcode);
        llvm::WriteBitcodeToFile(m, os);
    }

    // Part 0 is `m` itself, on this thread, with this target machine; the others are read
    // back from the bitcode on threads of their own.
    struct Part {
        std::unique_ptr<llvm::LLVMContext> ctx;
        std::unique_ptr<llvm::Module> module;
        std::unique_ptr<llvm::TargetMachine> tm;
        llvm::Module* m = nullptr;
        std::string object;
        double optimiseMs = 0, emitMs = 0; ///< CPU time of the part's thread
    };
    std::vector<Part> all(static_cast<size_t>(parts));
    onThreads(all.size(), [&](size_t i) {
        Part& p = all[i];
        if (i == 0) {
            p.m = &m;
        } else {
            p.ctx = std::make_unique<llvm::LLVMContext>();
            const llvm::MemoryBufferRef buffer(llvm::StringRef(bitcode.data(), bitcode.size()), "gradc-part");
            p.module = checkLLVM("cannot read back a part of the module", llvm::parseBitcodeFile(buffer, *p.ctx));
            p.tm = hostTargetMachine(isa);
            p.m = p.module.get();
        }
        const double start = PhaseTimer::threadCpuMs();
        keepPart(*p.m, mine[i], i);
        optimise(*p.m, i == 0 ? *tm : *p.tm);
        p.optimiseMs = PhaseTimer::threadCpuMs() - start;
    });
    phase("LLVM optimisation");
    for (size_t i = 1; i < all.size(); ++i)
        if (timer) timer->addCpu("LLVM optimisation", all[i].optimiseMs);
    onThreads(all.size(), [&](size_t i) {
        Part& p = all[i];
        const double start = PhaseTimer::threadCpuMs();
        p.object = emit(*p.m, i == 0 ? *tm : *p.tm, llvm::CodeGenFileType::ObjectFile);
        p.emitMs = PhaseTimer::threadCpuMs() - start;
        p.module.reset(); // in this thread: the context's memory is freed alongside
        p.ctx.reset();
    });
    phase("machine code");
    for (size_t i = 1; i < all.size(); ++i)
        if (timer) timer->addCpu("machine code", all[i].emitMs);
    std::vector<std::string> out;
    for (size_t i = 0; i < all.size(); ++i) {
        if (std::getenv("GRADC_DEBUG"))
            fmt::print(stderr, "gradc: part {}: {} functions ({} instructions), {:.2f} ms CPU optimisation, {:.2f} ms CPU machine code\n",
                       i, mine[i].size(), load[i], all[i].optimiseMs, all[i].emitMs);
        out.push_back(std::move(all[i].object));
    }
    return out;
}

static const char kPackMagic[] = "gradc objects ";

std::string packObjects(const std::vector<std::string>& objects) {
    if (objects.size() == 1) return objects[0];
    std::string out = kPackMagic + std::to_string(objects.size());
    for (const std::string& o : objects) out += " " + std::to_string(o.size());
    out += "\n";
    for (const std::string& o : objects) out += o;
    return out;
}

std::optional<std::vector<std::string>> unpackObjects(const std::string& packed) {
    if (packed.rfind(kPackMagic, 0) != 0) return std::vector<std::string>{packed};
    const size_t end = packed.find('\n');
    if (end == std::string::npos) return std::nullopt;
    const std::string header = packed.substr(sizeof kPackMagic - 1, end - (sizeof kPackMagic - 1));
    std::vector<unsigned long long> numbers;
    for (size_t at = 0; at < header.size();) {
        if (header[at] < '0' || header[at] > '9') return std::nullopt;
        char* next = nullptr;
        numbers.push_back(std::strtoull(header.c_str() + at, &next, 10));
        at = size_t(next - header.c_str());
        if (at < header.size() && header[at++] != ' ') return std::nullopt;
    }
    if (numbers.empty() || numbers[0] < 2 || numbers[0] + 1 != numbers.size()) return std::nullopt;
    std::vector<std::string> out;
    size_t at = end + 1;
    for (size_t i = 1; i < numbers.size(); ++i) {
        if (numbers[i] == 0 || numbers[i] > packed.size() - at) return std::nullopt;
        out.push_back(packed.substr(at, numbers[i]));
        at += numbers[i];
    }
    if (at != packed.size()) return std::nullopt;
    return out;
}

} // namespace gradc
