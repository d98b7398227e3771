// Jit.h — the small boundary to LLVM's ORC LLJIT, for the host CPU. Nothing here throws;
// every failure is an llvm::Error or llvm::Expected that the caller turns into a message.
#pragma once

#include <llvm/ExecutionEngine/Orc/LLJIT.h>
#include <llvm/Support/Error.h>
#include <llvm/Target/TargetMachine.h>

#include <memory>
#include <string>

namespace gradc {

class Jit {
public:
    /// `isa` names the instruction set of the code, as resolveIsa (Codegen.h) gives it:
    /// "native" (and "avx512") is every feature of the host; "avx2" is the host's without
    /// AVX-512, AVX10 and AMX (AVX2 and FMA code on an AVX-512 CPU).

    /// A JIT for this machine's CPU and `isa`'s features; math functions (libm, and libmvec
    /// where present) resolve from the running process.
    static llvm::Expected<std::unique_ptr<Jit>> create(const std::string& isa);

    /// A TargetMachine for the same CPU and features, to optimise and emit code with.
    static llvm::Expected<std::unique_ptr<llvm::TargetMachine>> targetMachine(const std::string& isa);
    static void initialiseLLVM(); ///< the native target, once per process
    /// The host's LLVM CPU name, and its features for `isa` ("+avx2,+avx512f,-amx-tile,..."),
    /// computed once per process.
    static const std::string& hostCpu();
    static const std::string& hostFeatures(const std::string& isa);
    /// True when the host has `feature` ("avx512f", "fma", ...).
    static bool hasFeature(llvm::StringRef feature);
    /// True when glibc's vector math library could be loaded (the vectoriser may call it).
    static bool haveLibmvec();

    llvm::Error addObject(std::unique_ptr<llvm::MemoryBuffer> object);
    llvm::Expected<void*> lookup(llvm::StringRef symbol);

private:
    explicit Jit(std::unique_ptr<llvm::orc::LLJIT> jit) : jit_(std::move(jit)) {}
    std::unique_ptr<llvm::orc::LLJIT> jit_;
};

} // namespace gradc
