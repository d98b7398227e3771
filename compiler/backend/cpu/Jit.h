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
    /// A JIT for this machine's CPU and features; math functions (libm, and libmvec where
    /// present) resolve from the running process.
    static llvm::Expected<std::unique_ptr<Jit>> create();

    /// A TargetMachine for the same CPU, to optimise and emit code with.
    static llvm::Expected<std::unique_ptr<llvm::TargetMachine>> targetMachine();
    static void initialiseLLVM(); ///< the native target, once per process
    /// The host's LLVM CPU name and features ("+avx2,+avx512f,-amx-tile,..."), computed once.
    static const std::string& hostCpu();
    static const std::string& hostFeatures();
    /// True when glibc's vector math library could be loaded (the vectoriser may call it).
    static bool haveLibmvec();

    llvm::Error addObject(std::unique_ptr<llvm::MemoryBuffer> object);
    llvm::Expected<void*> lookup(llvm::StringRef symbol);

private:
    explicit Jit(std::unique_ptr<llvm::orc::LLJIT> jit) : jit_(std::move(jit)) {}
    std::unique_ptr<llvm::orc::LLJIT> jit_;
};

} // namespace gradc
