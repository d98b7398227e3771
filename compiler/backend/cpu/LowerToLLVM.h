// LowerToLLVM.h — stage 6: kernel programs to one LLVM IR module with three entry points:
//
//   void gradc_forward (const T* params, const T* x, const void* target, T* logits, T* loss, T* acts, void* ws)
//   void gradc_backward(const T* params, const T* x, const void* target, T* loss,   T* grads, T* acts, void* ws)
//   void gradc_update  (T* params, const T* grads, T* m, T* v, const double* hyper, int64_t begin, int64_t end)
//
// T is float or double (the element type is a code generation parameter). `params` and
// `grads` are flat arrays in parameter order with PyTorch's [out, in] layout; `target` holds
// int32 class labels for cross_entropy and T values otherwise; `acts` receives the input of
// every hidden activation layer and the graph's other kept values, where the Layout
// (Layout.h) places them; `ws` is the workspace. gradc_update is the
// optimiser's step (SGD, momentum, Adam; see Lowering::update).
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
