// CodegenInternal.h — the steps of code generation that the JIT path (Codegen.cpp) and the
// ahead-of-time path (Aot.cpp) share.
#pragma once

#include "Codegen.h"
#include "Kernels.h"

#include <llvm/Support/Error.h>
#include <llvm/Target/TargetMachine.h>

#include <memory>
#include <string>
#include <vector>

namespace llvm {
class LLVMContext;
class Module;
} // namespace llvm

namespace gradc {

/// Everything between the graph and the LLVM module.
struct Programs {
    KernelProgram forward, backward;
    Layout layout; ///< where the entry points' buffers are
};

/// The host CPU's target machine for `isa` (resolveIsa's); a UserError if LLVM cannot
/// generate code for it.
std::unique_ptr<llvm::TargetMachine> hostTargetMachine(const std::string& isa);
/// LLVM makes some of its globals on first use (the pass timers' group and its lock, among
/// others), which is not safe to race: the pipelines run once, on an empty module, before
/// the first target machine is handed out (hostTargetMachine, the AOT's), on whichever
/// thread asks first; the others wait for it.
void warmUpPipelines();

/// The widest vector registers that code for LLVM features `features` ("+avx2,-avx512f,...")
/// uses, in bits: 512 (AVX-512), 256 (AVX2) or 128.
int vectorBits(const std::string& features);
/// The module in LLVM's text form.
std::string printModule(const llvm::Module& m);

/// Data cache sizes in bytes (L2 per core); the defaults when the host does not say.
struct CacheSizes {
    int64_t l2 = 1 << 20;
};
/// The host's, from sysfs (or sysconf), read once.
CacheSizes hostCaches();

/// The register tile and cache blocking for a CPU with `features` ("+avx512f,..." as LLVM
/// spells them) and `caches` (the defaults when not given).
GemmBlocking blockingFor(const std::string& features, bool f64);
GemmBlocking blockingFor(const std::string& features, bool f64, const CacheSizes& caches);
/// Sets b's KC, MC and page stride for its tile and `caches`.
void cacheBlocking(GemmBlocking& b, bool f64, const CacheSizes& caches);
Programs buildPrograms(const Graph& fwd, bool f64, const GemmBlocking& blocking, PhaseTimer* timer = nullptr);
/// Gives `m` the data layout and triple of `tm`.
void setTarget(llvm::Module& m, llvm::TargetMachine& tm);
/// An internal error with LLVM's findings unless `m` (named by `what`) is valid IR.
void verify(llvm::Module& m, const std::string& what);
/// An empty module for the target machine `tm` (its data layout and triple).
std::unique_ptr<llvm::Module> moduleFor(const char* name, llvm::LLVMContext& ctx, llvm::TargetMachine& tm);
/// Lowers, sets the target's data layout and triple, and verifies.
std::unique_ptr<llvm::Module> lower(llvm::LLVMContext& ctx, const Programs& p, bool f64, llvm::TargetMachine& tm,
                                    bool profile = false);
/// The kernels' pass pipeline for the target (Codegen.cpp says which and why); `libmvec` lets the vectoriser
/// call glibc's vector math functions (not for objects that may run elsewhere).
void optimise(llvm::Module& m, llvm::TargetMachine& tm, bool libmvec = true);
std::string emit(llvm::Module& m, llvm::TargetMachine& tm, llvm::CodeGenFileType type);

[[noreturn]] void failLLVM(const std::string& what, llvm::Error err);
template <typename T> T checkLLVM(const std::string& what, llvm::Expected<T> v) {
    if (!v) failLLVM(what, v.takeError());
    return std::move(*v);
}

} // namespace gradc
