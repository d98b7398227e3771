// Lowering.h — internal to LowerToLLVM: the state of lowering kernel programs to one LLVM
// module, and the building blocks every part of it uses (loops, variables, loads and
// stores, math calls, helper functions). Its methods are defined by what they lower:
//   LowerToLLVM.cpp  lowerToLLVM, the building blocks
//   LowerEntry.cpp   the entry ABI: entry points, their arguments, the calls to the kernel
//                    functions (one per distinct kernel structure) and profile counters, the
//                    context of outlined parallel loops
//   LowerScalar.cpp  scalar expressions (with the inline expf) and element-wise loop kernels
//   LowerGemm.cpp    matrix products: the packing of B, the register-tile micro-kernel, threads
//   LowerLoss.cpp    softmax cross-entropy, BCE with logits, MSE
//   LowerNorm.cpp    normalisations (batchnorm, layernorm, their gradients) by the op they compute
//   LowerPool.cpp    max and average pooling and their gradients, plane by plane
//   LowerConv.cpp    conv2d and its gradients: implicit GEMMs through the register tile
//   LowerScan.cpp    the recurrent loops (scan and its gradients), last_step and its gradient
//   LowerUpdate.cpp  the optimiser step (gradc_update)
// Loops are emitted plainly with static bounds; the optimiser (Codegen.cpp's pipeline, the
// host's vector width) vectorises them. Floating-point operations carry only `reassoc contract` (and `afn` on
// math calls): never nnan/ninf, so NaN and Inf survive to be counted.
#pragma once

#include "EntryAbi.h"
#include "Kernels.h"

#include <llvm/IR/IRBuilder.h>
#include <llvm/IR/Intrinsics.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/Module.h>

#include <array>
#include <functional>
#include <map>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace gradc {

class Lowering {
public:
    Lowering(llvm::LLVMContext& ctx, llvm::Module& m, bool f64, bool profile);

    /// Emits gradc_forward or gradc_backward: program `p`'s kernels in order (LowerEntry.cpp).
    void entry(const KernelProgram& p, EntryPoint which);
    /// Emits gradc_update, the optimiser step (LowerUpdate.cpp).
    void update();
    /// Emits `void name(a, b, out, K, reps)`: `reps` calls of the register tile of
    /// p.blocking over K, A's MR rows K apart, B packed [K][NR] (LowerGemm.cpp; FmaProbe
    /// times the candidate tiles with it).
    void gemmProbe(const KernelProgram& p, const std::string& name);

private:
    llvm::LLVMContext& ctx_;
    llvm::Module& m_;
    llvm::IRBuilder<> b_;
    llvm::Type* T_;
    bool f64_;
    bool profile_;
    llvm::FastMathFlags fmf_;
    llvm::Function* fn_ = nullptr;
    llvm::BasicBlock* entryBlock_ = nullptr;
    std::array<llvm::Value*, kEntryArgCount> args_{}; ///< the entry point's arguments, as seen in fn_
    const KernelProgram* p_ = nullptr;
    bool backward_ = false;

    // The kernel being lowered, inside its kernel function (LowerEntry.cpp): where its
    // buffers are among the function's arguments, their base addresses and the scratch area
    // as seen in fn_ (the kernel function or a loop outlined from it), and the bases in an
    // array for outlined loops.
    std::unordered_map<int32_t, unsigned> slots_;
    std::vector<llvm::Value*> bases_;
    llvm::Value* scratch_ = nullptr;
    llvm::Value* context_ = nullptr;
    /// The kernel functions lowered so far, by their structural key (kernelShape).
    std::unordered_map<std::string, llvm::Function*> kernelFns_;

    // ---- Building blocks (LowerToLLVM.cpp).

    /// Every function: no exceptions, and loops vectorised at the register tile's width (the
    /// optimiser's default on AVX-512 machines is 256 bits, which halves the epilogues' speed).
    void vectorWidth(llvm::Function* f);

    llvm::Value* i64(int64_t v) { return b_.getInt64(uint64_t(v)); }
    llvm::Value* fp(double v) { return llvm::ConstantFP::get(T_, v); }
    llvm::Value* at(llvm::Value* basePtr, llvm::Value* index) { return b_.CreateGEP(T_, basePtr, index); }
    llvm::Value* load(llvm::Value* basePtr, llvm::Value* index) { return b_.CreateLoad(T_, at(basePtr, index)); }
    void store(llvm::Value* v, llvm::Value* basePtr, llvm::Value* index) { b_.CreateStore(v, at(basePtr, index)); }

    /// for (i = 0; i < n; ++i) body(i) with a bound n >= 1 known now, emitted as a do-while
    /// (the test after the body); `vectorise` false keeps the optimiser from vectorising it
    /// (strided copies would become gathers and scatters).
    void loop(int64_t n, const char* name, const std::function<void(llvm::Value*)>& body, bool vectorise = true);
    /// `loop` for a body whose iterations touch disjoint elements (iteration i reads and
    /// writes element i of each array; two arrays at different rows of one buffer are fine):
    /// its memory accesses are marked parallel (llvm.loop.parallel_accesses), so the vectoriser
    /// needs no run-time alias checks. For loops over pointers the optimiser cannot tell apart
    /// (a recurrent cell's, which reads and writes a dozen arrays through its step's context).
    /// In a kernel whose buffers may overlap (kernelFunction without noalias, a safeguard the
    /// memory plan never needs) it is a plain `loop`.
    void independentLoop(int64_t n, const char* name, const std::function<void(llvm::Value*)>& body);
    /// for (i = 0; i < n; ++i) body(i), with a bound known only at run time (it may be 0: the
    /// test comes first). Not written with `loop`, nor `loop` with it: either way the emitted
    /// code would change.
    void loopTo(llvm::Value* n, const char* name, const std::function<void(llvm::Value*)>& body);
    /// if (cond) then() else otherwise(), in blocks named `names` (then, else, after).
    void ifElse(llvm::Value* cond, const std::function<void()>& then, const std::function<void()>& otherwise,
                std::array<const char*, 3> names = {"then", "else", "endif"});
    /// A scalar variable in the entry block (promoted to a register by the optimiser).
    llvm::Value* variable(llvm::Type* ty, llvm::Value* init);

    llvm::Value* intrinsic(llvm::Intrinsic::ID id, std::vector<llvm::Value*> args);
    llvm::Value* libm(const char* name, llvm::Value* x);
    llvm::Value* call(llvm::FunctionCallee f, std::vector<llvm::Value*> args);

    /// Emits a helper function; `body` runs with the builder inside it.
    llvm::Function* helper(const char* name, std::vector<llvm::Type*> params, const std::function<void()>& body);

    // ---- The entry ABI and the kernel functions (LowerEntry.cpp).

    /// The entry point's argument `a`, as seen in the entry point.
    llvm::Value* arg(EntryArg a) { return args_[size_t(a)]; }
    /// In the entry point: the address of a buffer in the entry point's arguments.
    llvm::Value* entryBase(int32_t id);
    /// The kernel function that computes `k` given its buffers' addresses (lowered once per
    /// structure: kernels that differ only in their buffers share it).
    llvm::Function* kernelFunction(const Kernel& k, const std::vector<int32_t>& buffers, bool noalias);
    bool noalias_ = true; ///< the kernel being lowered has buffers that never overlap
    /// In a kernel function: the base address of a buffer of the kernel; null for none (id
    /// -1: an output nobody asked for).
    llvm::Value* base(int32_t id);
    /// In a kernel function: the scratch area in the workspace (KernelProgram::scratchOffset):
    /// packed panels and register tiles of matrix products, a normalisation's statistics.
    llvm::Value* scratchArea() { return scratch_; }
    void kernel(const Kernel& k);
    /// The kernel function's buffer bases and scratch area in an array in its frame, for
    /// outlined loops; loadContext rebinds them from that array inside an outlined loop.
    /// `extraSlots` more slots follow the scratch area's (a fresh array, not the shared one).
    llvm::Value* contextArray(size_t extraSlots = 0);
    void loadContext(llvm::Value* context);
    /// gradc_parallel_for(body, context, n, threads), the runtime's parallel loop.
    llvm::FunctionCallee parallelFor();
    /// The body of a loop over [0, n) outlined into the helper `name`, run on the thread pool
    /// through gradc_parallel_for: `body` emits it given (context, begin, end, thread).
    void parallel(const char* name, llvm::Value* context, int64_t n,
                  const std::function<void(llvm::Value*, llvm::Value*, llvm::Value*, llvm::Value*)>& body);
    /// The helper `name`(context, begin, end, thread) whose body `body` emits.
    llvm::Function* outline(const char* name,
                            const std::function<void(llvm::Value*, llvm::Value*, llvm::Value*, llvm::Value*)>& body);

    // ---- Scalar expressions and element-wise loop kernels (LowerScalar.cpp).

    llvm::Value* exp(llvm::Value* x);
    llvm::Value* sigmoid(llvm::Value* x);

    /// What the nodes lowered so far became: their values, and comparisons also as i1.
    struct Memo {
        std::unordered_map<const scalar::ExprNode*, llvm::Value*> value, cond;
    };
    llvm::Value* expr(const scalar::Expr& e, const std::vector<llvm::Value*>& args, Memo& memo);
    llvm::Value* node(const scalar::ExprNode& n, const std::vector<llvm::Value*>& args, Memo& memo);

    /// The base addresses a loop kernel reads and writes.
    struct LoopBases {
        std::vector<llvm::Value*> args, stores, sums, rowSums;
    };
    LoopBases loopBases(const Kernel& k);
    /// `rowAcc`, when given, holds one variable per row sum that the element's terms are
    /// added to instead of the row sums in memory.
    void element(const Kernel& k, const LoopBases& lb, llvm::Value* r, llvm::Value* c, llvm::Value* acc,
                 llvm::Value* o = nullptr, const std::vector<llvm::Value*>* rowAcc = nullptr);
    void loopKernel(const Kernel& k);

    // ---- Matrix products (LowerGemm.cpp).

    llvm::Function* packB_ = nullptr;
    llvm::Function* packA_ = nullptr;
    llvm::Function* tile_ = nullptr;
    void declareGemmHelpers();
    /// A tile of MR x NV vectors that computes its first `rows` rows (makeTile).
    llvm::Function* makeTile(const char* name, int64_t rows, int64_t mr, int64_t nv);
    /// The register tile for `rows` rows of A (tile_ for MR, else an edge tile of its own).
    llvm::Function* tileRows(int64_t rows);
    /// The tile of MR x NV vectors (a convolution's own, ConvPlan) computing its first `rows` rows.
    llvm::Function* tileOf(int64_t mr, int64_t nv, int64_t rows);
    std::map<std::tuple<int64_t, int64_t, int64_t>, llvm::Function*> edgeTiles_;
    void transpose(std::vector<llvm::Value*>& r);
    void matrixProduct(const Kernel& k);
    void pack(llvm::Function* packer, llvm::Value* dst, llvm::Value* src, int64_t dim, int64_t K, bool trans,
              int64_t first, int64_t tiles);

    // ---- Losses (LowerLoss.cpp) and normalisation (LowerNorm.cpp).

    void softmaxCrossEntropy(const Kernel& k);
    void pairwiseLoss(const Kernel& k);
    /// The kernel of every op with trait::Normalisation (batchnorm, layernorm, their
    /// gradients); formOf in LowerNorm.cpp says what each computes.
    void normalisation(const Kernel& k);
    /// The kernel of maxpool2d, avgpool2d and their gradients (LowerPool.cpp).
    void pooling(const Kernel& k);
    /// What a pooling plane function computes: `op` over `window` on planes of x [B,C,H,W]
    /// pooled to y [B,C,OH,OW]; with `positions`, maxpool2d also stores the positions of its
    /// maxima and maxpool2d_grad reads them instead of x (Kernel::maxPositions).
    struct PoolPlane {
        Op op;
        Window window;
        Shape x, y;
        bool positions = false;
    };
    PoolPlane poolPlaneOf(const Kernel& k) const;
    /// The function that computes one plane (image, channel) of a pooling: (each operand's
    /// plane, the result's plane[, the positions' plane]), all `noalias`.
    llvm::Function* poolPlane(const PoolPlane& pp);

    // ---- Convolutions (LowerConv.cpp): implicit GEMMs through gradc_tile (ConvPlan).

    void convolution(const Kernel& k);

    // ---- Recurrent layers (LowerScan.cpp): one loop over the steps around the cell body.

    /// The kernel of every op with trait::Recurrent: the forward and reverse scan families,
    /// last_step and its gradient.
    void recurrent(const Kernel& k);
    void scanForward(const Kernel& k);
    void scanReverse(const Kernel& k);
    /// gradc_tile over the MR-row tile at row r0 of an M-row A and `panels` NR-column panels of
    /// packed B ([panel][K][NR]): out + jt NR (rows `outStride` apart) = (or += when `add`)
    /// rows · panel jt; `rowAt(row)` is the address of A's row (clamped to M - 1 here), `aStride`
    /// its step along K. The last tile of a ragged M runs the edge tile of its M % MR rows.
    void tileProduct(llvm::Value* out, int64_t outStride,
                     const std::function<llvm::Value*(llvm::Value*)>& rowAt, int64_t M, llvm::Value* r0,
                     int64_t aStride, llvm::Value* packedB, int64_t panels, int64_t K, bool add);
    /// The outlined step `name` over [0, n): on the thread pool when there are threads, else
    /// called directly with (context, 0, n, thread 0), so one thread runs the same function
    /// (the same bits) as many.
    void steps(const char* name, llvm::Value* context, int64_t n,
               const std::function<void(llvm::Value*, llvm::Value*, llvm::Value*, llvm::Value*)>& body);
    /// The step t from its slot in a contextArray(1) (written before each step's dispatch).
    llvm::Value* stepOf(llvm::Value* context);
};

} // namespace gradc
