// Kernels.h — the kernel program: what the code generator lowers.
//
// Fusion turns a Graph into a list of kernels over named buffers. Most kernels are one loop
// nest over an [rows, cols] domain that may contract a matrix product into an accumulator,
// then evaluates scalar expressions per element (the fused element-wise chain: bias,
// activation, activation derivative, residual sums) and stores them, and may reduce
// expressions over rows (bias gradients). Losses and normalisations have kernels of their
// own. Buffers are the entry point's arguments or slices of one workspace, placed by
// the memory plan.
//
// Tensors of any rank: a row-major tensor [d0, ..., dn-1, last] is the matrix
// [d0 ... dn-1, last] here, so the 2-D domain covers every rank: a matrix product on x[B,T,K]
// is one product of [B T, K] (its weight gradient contracts over all B T rows), a per-column
// operand (a bias) is read at the last index. sum_rows (over dimension 0 only) runs over the
// domain [d0, d1 ... dn]. A reshape (flatten) is a copy kernel of the elements in order: the
// memory plan has no aliases, and the copy is small next to the products around it.
#pragma once

#include "Graph.h"
#include "Layout.h"
#include "Scalar.h"

#include <algorithm>
#include <string>
#include <vector>

namespace gradc {

struct Buffer {
    enum class Kind { Param, Input, Target, Logits, Loss, Grad, Activation, Temp };
    Kind kind;
    std::string name;
    Shape shape;
    bool index = false;  ///< int32 class labels
    int64_t offset = 0;  ///< Param/Grad/Activation: elements into the flat array; Temp: bytes into the workspace (-1: unused)
    int64_t elements() const { return elementCount(shape); }
};

/// How operand `Arg(i)` of a kernel's expressions is read at element [r, c].
struct Access {
    enum class Mode { Acc, Elem, Col, Row }; // the accumulator, buf[r,c], buf[c], buf[r]
    Mode mode;
    int32_t buffer = -1;
};

struct Store {
    int32_t buffer;
    scalar::Expr expr; ///< in Arg leaves
};

struct Kernel {
    enum class Kind { Loop, SoftmaxCrossEntropy, BCEWithLogits, MSE, Op };
    Kind kind = Kind::Loop;
    int64_t rows = 0, cols = 0;

    // Loop: acc[r,c] = Σ_k A(r,k) B(k,c) when `a` >= 0 (A = a or aᵀ, B = b or bᵀ).
    int32_t a = -1, b = -1;
    bool transA = false, transB = false;
    int64_t depth = 0;
    std::vector<Access> args;
    std::vector<Store> stores;          ///< buf[r,c] = expr
    std::vector<Store> columnSums;      ///< buf[c] = Σ_r expr

    // The other kinds: their operands and results, in the order the kind documents:
    //   SoftmaxCrossEntropy in {logits, labels} out {loss, grad or -1}
    //   BCEWithLogits / MSE in {prediction, target} out {loss, grad or -1}
    //   Op: `op` (a GRADC_KERNEL row of Ops.def) in its operands, out {its result}; a
    //   batchnorm whose statistics are kept: out {y, batch mean, unbiased batch variance}
    std::vector<int32_t> in, out;
    gradc::Op op = gradc::Op::Map; ///< Op: the graph op it computes
    Attrs attrs;                   ///< Op: the node's attributes

    /// Every buffer the kernel reads, and every one it writes.
    std::vector<int32_t> reads() const;
    std::vector<int32_t> writes() const;
};

/// Whether `op` is computed by a kernel of its own (a GRADC_KERNEL row of Ops.def), and the
/// scratch elements per column that kernel needs.
bool hasOwnKernel(Op op);
int64_t ownKernelScratch(Op op);

/// The register tile of the matrix-product micro-kernel, chosen for the target: MR rows of
/// A by NR = NV vectors of VL lanes of B, held in MR x NV vector registers; and the cache
/// blocking around it. A product deeper than `kc` runs in K blocks of at most kc (the B
/// micro-panel of a block, kc x NR, stays in L2 while up to `mc` rows of A pass over it);
/// each thread keeps an mc x NR block of sums in its scratch between K blocks, and the
/// fused epilogue runs after the last. Products no deeper than kc run each tile over all of
/// K in registers, as before blocking existed.
struct GemmBlocking {
    int mr = 6, nv = 4, vl = 16;
    int threads = 1;      ///< tiles are spread over this many threads, each with its own tile buffer
    int64_t kc = 1 << 30; ///< the deepest K run in one pass (default: never blocked)
    int64_t mc = 192;     ///< rows of the sums block of a blocked product (a multiple of mr)
    /// A knob for measuring, not sized from the cache: a product whose packed B has more
    /// elements than this is blocked along N, NC = NR: each thread packs one strip of NR
    /// columns (K x NR) into a panel of its own right before that strip's tiles, instead of
    /// packing all of B first. Default never (measured slower on the wide network, see
    /// cacheBlocking in Codegen.cpp); GRADC_GEMM=panel=N sets it.
    static constexpr int64_t kNoNBlocks = int64_t(1) << 40;
    int64_t l3Panel = kNoNBlocks;
    bool packB = true;    ///< a blocked product packs all of B, transposed or not, into [K][NR] panels
    bool packA = true;    ///< a transposed A with a page stride is packed into [K][MR] panels
    /// Elements: an operand read in place whose step along K is this far or farther (a
    /// page) is packed, so the tiles do not touch a page per step of K.
    int64_t pageStride = 1024;
    std::string source = "default"; ///< where the tile came from: "model", "measured", "cached", "forced"
    int nr() const { return nv * vl; }
    bool blocked(int64_t depth) const { return depth > kc; }
    /// The K block of a product `depth` deep: kc or less, the blocks as equal as can be.
    int64_t kBlock(int64_t depth) const {
        if (!blocked(depth)) return depth;
        const int64_t blocks = (depth + kc - 1) / kc;
        return (depth + blocks - 1) / blocks;
    }
    /// Whether a product packs all of B ([K][NR] panels), and all of A ([K][MR] panels).
    bool packsB(bool transB, int64_t cols, int64_t depth) const {
        return transB || (packB && (blocked(depth) || cols >= pageStride));
    }
    bool packsA(bool transA, int64_t rows, int64_t cols) const {
        return packA && transA && rows >= pageStride && cols > nr();
    }
    /// The rows of the sums block of a blocked product with `rows` rows (a multiple of mr).
    int64_t mBlock(int64_t rows) const {
        const int64_t whole = (rows + mr - 1) / mr * mr;
        return std::min(whole, std::max<int64_t>(mr, mc / mr * mr));
    }
};

/// One entry point's program.
struct KernelProgram {
    std::string name; ///< "forward" or "backward"
    std::vector<Buffer> buffers;
    std::vector<Kernel> kernels;
    int64_t workspaceBytes = 0; ///< set by the memory plan
    GemmBlocking blocking;
    int64_t scratchOffset = 0;  ///< bytes: packed panels of B and the register tiles
    int elementBytes = 4;
};

/// Graph -> kernels: dead-code elimination, common subexpressions, fusion. `outputs` are
/// the graph outputs the entry point returns, placed where `layout` says.
KernelProgram buildKernels(const Graph& g, const std::string& name,
                           const std::vector<Output>& outputs, const Layout& layout, int elementBytes,
                           const GemmBlocking& blocking);

/// How one matrix product runs with a blocking: its K and M blocks, what it packs and where
/// in the scratch area (elements, each part on a 64-byte boundary). The code generator, the
/// memory plan and `gradc bench --explain` all read it from here.
struct ProductPlan {
    bool blocked = false;    ///< deeper than KC: K blocks, sums kept in the thread's block
    int64_t kc = 0;          ///< the K block (all of K when not blocked)
    int64_t kBlocks = 1;
    int64_t mc = 0;          ///< rows of a unit: the block of sums (MR when not blocked)
    int64_t rowTiles = 0;    ///< MR-row tiles of the product
    int64_t colPanels = 0;   ///< NR-column panels of B
    int64_t packFrom = 0;    ///< B's panels from this one on are packed (colPanels: none)
    bool packA = false;      ///< a transposed A packed into [K][MR] panels
    /// N blocked: B (packed whole it would have more than GemmBlocking::l3Panel elements)
    /// packed strip by strip (NC = NR columns) into each thread's panel; units are whole strips.
    bool packByStrip = false;
    int64_t aAt = 0, sumsAt = 0; ///< scratch offsets of packed A and of the threads' sums blocks (packed B: 0)
    int64_t stripAt = 0;     ///< packByStrip: elements between the threads' strip panels
    int64_t elements = 0;    ///< scratch the product needs
    bool packsAllB() const { return packFrom == 0; }
};
ProductPlan planProduct(const Kernel& k, const GemmBlocking& b);

/// Places every Temp buffer in one workspace, reusing bytes whose values are dead.
void planMemory(KernelProgram& p, int elementBytes);

/// What kernel `index` of `p` is, in one line ("k3: loop [256,10] acc = t2 · w (depth 128)"):
/// the first line of its printKernels text, and its name in `gradc bench --profile`.
std::string kernelLabel(const KernelProgram& p, size_t index);
std::string printKernels(const KernelProgram& p);
std::string printMemoryPlan(const KernelProgram& p);

} // namespace gradc
