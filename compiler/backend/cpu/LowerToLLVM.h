// LowerToLLVM.h — stage 6: kernel programs to one LLVM IR module with three entry points,
// gradc_forward, gradc_backward and gradc_update, whose arguments EntryAbi.h defines. The
// lowering itself is split by what it lowers; Lowering.h lists the files.
#pragma once

#include "Kernels.h"

#include <memory>

namespace llvm {
class LLVMContext;
class Module;
} // namespace llvm

namespace gradc {

/// With `profile`, each entry point also adds the cycles each kernel took to the arrays
/// gradc_profile_forward / gradc_profile_backward (one uint64 per kernel).
std::unique_ptr<llvm::Module> lowerToLLVM(llvm::LLVMContext& ctx, const KernelProgram& forward,
                                          const KernelProgram& backward, bool f64, bool profile = false);

} // namespace gradc
