// EntryAbi.h — the calling convention of compiled code, written once: the symbols of the
// entry points, the order of their arguments, the slots of the optimiser's hyper-parameter
// array. The lowering (LowerEntry.cpp, LowerUpdate.cpp) builds functions with exactly these
// arguments; whoever calls them (the JIT's caller, a C program through the AOT header)
// passes them in this order. Changing anything here changes the ABI: bump kAbiVersion
// (Aot.h). No LLVM types appear here.
//
//   void gradc_forward (const T* params, const T* x, const void* target, T* logits, T* loss,  T* acts, void* ws)
//   void gradc_backward(const T* params, const T* x, const void* target, T* loss,   T* grads, T* acts, void* ws)
//   void gradc_update  (T* params, const T* grads, T* m, T* v, const double* hyper, int64_t begin, int64_t end)
//
// T is float or double (a code generation parameter).
#pragma once

namespace gradc {

/// The two entry points that run kernel programs.
enum class EntryPoint { Forward, Backward };

/// The arguments of gradc_forward and gradc_backward, in order: seven pointers, the same
/// in both, no two of which alias. Two of them (Out0, Out1) mean different things in each.
enum class EntryArg : unsigned {
    Params,    ///< const T*: the Layout's State array: every parameter in PyTorch's order and
               ///< layout ([out, in]), then the running statistics (read in evaluation mode)
    Input,     ///< const T*: the input batch x
    Target,    ///< const void*: int32 class labels for cross_entropy, T values otherwise
    Out0,      ///< T*: forward: the logits; backward: the loss (one T)
    Out1,      ///< T*: forward: the loss (one T); backward: the gradients, at the parameters' offsets
    Acts,      ///< T*: the Layout's Acts array, the values the runtime reads back: each hidden
               ///< activation's input, each batchnorm's input, in evaluation mode every module's
               ///< output, then each training-mode batchnorm's batch mean and unbiased variance
    Workspace, ///< void*: temporaries and the matrix-product scratch (workspaceBytes, 64-byte aligned)
};
constexpr unsigned kEntryArgCount = 7;

/// Where an entry point writes the loss: after the logits in forward, first in backward.
constexpr EntryArg lossArg(EntryPoint e) { return e == EntryPoint::Backward ? EntryArg::Out0 : EntryArg::Out1; }
constexpr EntryArg kLogitsArg = EntryArg::Out0; ///< forward only
constexpr EntryArg kGradsArg = EntryArg::Out1;  ///< backward only

/// The arguments of gradc_update, the optimiser's step over params[begin, end).
enum class UpdateArg : unsigned {
    Params, ///< T*: updated in place
    Grads,  ///< const T*: as gradc_backward wrote them
    M,      ///< T*: momentum buffer (SGD) or first moment (Adam); zero before the first step
    V,      ///< T*: second moment (Adam); zero before the first step
    Hyper,  ///< const double*: HyperSlot::Count values
    Begin,  ///< int64_t: the first element to update
    End,    ///< int64_t: one past the last
};
constexpr unsigned kUpdateArgCount = 7;

/// The slots of gradc_update's `hyper` array (torch.optim's names and formulas).
enum class HyperSlot : unsigned {
    Method,      ///< an OptimizerMethod, as a double
    Lr,
    WeightDecay,
    Momentum,
    Dampening,   ///< 0 on the first momentum step, where PyTorch starts the buffer at the gradient
    Nesterov,    ///< 0 or 1
    Beta1,
    Beta2,
    Eps,
    BiasCorrection1,     ///< 1 - beta1^t
    BiasCorrection2Sqrt, ///< sqrt(1 - beta2^t)
    GradScale,   ///< the gradient's factor before the step (g scale + wd p): torch.nn.utils.clip_grad_norm_'s
                 ///< clip coefficient, min(1, max_norm / (norm + 1e-6)); 1 without clipping
    Count
};

/// HyperSlot::Method's values.
enum class OptimizerMethod { Sgd = 0, SgdMomentum = 1, Adam = 2 };

/// The symbols of the entry points (an AOT object renames gradc_ to its prefix).
inline const char* entrySymbol(EntryPoint e) { return e == EntryPoint::Backward ? "gradc_backward" : "gradc_forward"; }
constexpr const char* kUpdateSymbol = "gradc_update";
/// With profiling: one uint64 cycle counter per kernel of the entry point.
inline const char* profileSymbol(EntryPoint e) {
    return e == EntryPoint::Backward ? "gradc_profile_backward" : "gradc_profile_forward";
}

} // namespace gradc
