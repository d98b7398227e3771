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
// domain [d0, d1 ... dn]; sum_to sums over the outer and column dimensions of a domain whose
// rows are the kept ones (row sums: [B,O,OH,OW] -> [O,1,1] on [B, O, OH OW]), or over the
// leading ones (column sums). A reshape (flatten) is a copy kernel of the elements in order: the
// memory plan has no aliases, and the copy is small next to the products around it.
//
// A loop kernel may also have an outer extent: its domain is then [outer, rows, cols] (a
// tensor [B,C,H,W] as [B, C, H W]), so that an operand broadcast along the outer and column
// dimensions (a per-channel [C,1,1] against [B,C,H,W]) is read per row. Fusion chooses the
// split of the result's shape from the broadcast operands (outer = 1 is the 2-D kernel);
// element-wise kernels over images [B,C,H,W] run on [B, C, H W]. Loop kernels without a
// matrix product run on one thread, except large ones with an outer extent, which the
// threads share in whole rows (never column sums).
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

/// How operand `Arg(i)` of a kernel's expressions is read at element [o, r, c] (o = 0 when
/// the kernel has no outer extent).
struct Access {
    enum class Mode { Acc, Elem, Col, Row }; // the accumulator, buf[o,r,c], buf[c], buf[r]
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
    /// Loop: the outer extent of the domain [outer, rows, cols] (1: the 2-D domain; a matrix
    /// product has none). Op: a batchnorm over [B,C,...] per channel is [B, C, the rest].
    int64_t outer = 1;

    // Loop: acc[r,c] = Σ_k A(r,k) B(k,c) when `a` >= 0 (A = a or aᵀ, B = b or bᵀ).
    int32_t a = -1, b = -1;
    bool transA = false, transB = false;
    int64_t depth = 0;
    std::vector<Access> args;
    std::vector<Store> stores;          ///< buf[o,r,c] = expr
    std::vector<Store> columnSums;      ///< buf[c] = Σ_o,r expr
    std::vector<Store> rowSums;         ///< buf[r] = Σ_o,c expr (no matrix product)

    // The other kinds: their operands and results, in the order the kind documents:
    //   SoftmaxCrossEntropy in {logits, labels} out {loss, grad or -1}
    //   BCEWithLogits / MSE in {prediction, target} out {loss, grad or -1}
    //   Op: `op` (a GRADC_KERNEL row of Ops.def) in its operands, out {its result}; a
    //   batchnorm whose statistics are kept: out {y, batch mean, unbiased batch variance}
    std::vector<int32_t> in, out;
    gradc::Op op = gradc::Op::Map; ///< Op: the graph op it computes
    Attrs attrs;                   ///< Op: the node's attributes

    /// A conv2d kernel may carry an epilogue: the loop kernel over its result [B, O, OH OW]
    /// that first reads it, element-wise, folded in (Fusion's fuseEpilogues). Its `args`
    /// (the result itself as the accumulator, Acc) and `stores` are then the conv's, applied
    /// to each tile as it is stored; out[0] (which still gives the shape) is written only by
    /// a store of the epilogue, when later kernels or the entry point's caller read it. The
    /// bias and activation after a convolution cost no pass over memory of their own.
    bool hasEpilogue() const { return kind == Kind::Op && !stores.empty(); }
    /// A maxpool over `pool` (kh == 0: none) folded into a convolution kernel:
    /// - conv2d_grad_w and conv2d_grad_x may compute their g themselves (Fusion's
    ///   fusePoolGradients): when g is a maxpool's gradient that only they read, g's operand
    ///   becomes the pool's two, {the pool's input, the pool's g} (grad_w: {x, those two};
    ///   grad_x: {those two, W}; gradientAt() says where); each thread expands g into its
    ///   scratch, image by image, just before the product reads it, so the pool's gradient
    ///   (the size of the convolution's output) never makes a pass over memory of its own.
    /// - a conv2d with an epilogue may pool what its epilogue computes (Fusion's
    ///   fusePoolEpilogues), when the maxpool is the one reader of it: the kernel writes out
    ///   {y (never written), the pooled y[, the maxima's positions]}. Direct, the epilogue's
    ///   one store (buffer -1) stays in the thread's buffer of a whole image; through the
    ///   register tile it is stored, and each image pooled as soon as it is complete.
    Window pool;
    bool poolsGradient() const {
        return kind == Kind::Op && (op == Op::Conv2dGradW || op == Op::Conv2dGradX) && pool.kh > 0;
    }
    /// Where a convolution gradient's g is in `in` (with poolsGradient: the first of the pool's two).
    size_t gradientAt() const { return op == Op::Conv2dGradX ? 0 : 1; }
    bool poolsOutput() const { return kind == Kind::Op && op == Op::Conv2d && pool.kh > 0; }
    /// A maxpool's gradient may read, instead of the pool's input x, the positions of the
    /// windows' maxima that the forward maxpool2d stored (Fusion's storePoolPositions): the
    /// maxpool2d kernel then has out {y, positions} (a pooled conv2d: {y, pooled, positions}),
    /// and the gradient in {positions, g} (a grad_w that expands it: {x, positions, g}; a
    /// grad_x: {positions, g, W}). A
    /// position is a byte per element of y, the maximum's place p KW + q in its window (row
    /// p, column q), in the first bytes of a buffer of y's shape (windows of at most 256).
    bool maxPositions = false;
    /// Whether the kernel writes out[i] itself (not a conv's result that its epilogue stores).
    bool writesOut(size_t i) const { return out[i] >= 0 && !(i == 0 && hasEpilogue()); }

    /// Every buffer the kernel reads, and every one it writes.
    std::vector<int32_t> reads() const;
    std::vector<int32_t> writes() const;
};

/// Whether a loop kernel reads an operand of shape `operand` broadcast against `result`
/// (numpy's rule) in one pass: the dimensions it varies along (other than the result's 1s)
/// are one run, read whole, per row or per column of some split [outer, rows, cols] of the
/// result. The same rule says whether sum_to sums `result` to `operand` in one pass.
bool readsInOnePass(const Shape& operand, const Shape& result);

/// Whether `op` is computed by a kernel of its own (a GRADC_KERNEL row of Ops.def), and the
/// scratch elements per column that kernel needs.
bool hasOwnKernel(Op op);
int64_t ownKernelScratch(Op op);
/// Whether the kernel of its own of `op` on an input of shape `x` works per channel: of a
/// tensor [B, C, the rest], every op but layer normalisation (per row). Its domain is then
/// [outer B, rows C, cols the rest], and its scratch is per channel (rows), else per column.
bool perChannel(Op op, const Shape& x);

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
    /// Bytes: a product that is not K-blocked, whose B has at most smallB bytes (it stays in
    /// L2) and whose output at least largeOutput (it does not), runs its row blocks outermost,
    /// writing whole rows (matrixProduct). A quarter of L2 and L2 (cacheBlocking).
    int64_t smallB = 256 * 1024, largeOutput = 1024 * 1024;
    std::string source = "default"; ///< where the tile came from: "model", "measured", "cached", "forced"
    /// The candidate tiles' speeds measured on this CPU (GFLOP/s of the tile alone), when the
    /// tile was chosen from them; empty otherwise. A convolution's forward and input-gradient
    /// products pick their own tile from them (convTile).
    struct Speed {
        int mr = 0, nv = 0;
        double gflops = 0;
    };
    /// The share of an M x N product's tiles of MR x NR that is the product's own work.
    static double usefulShare(int64_t M, int64_t N, int64_t mr, int64_t nr) {
        return double(M) * double(N) / (double((M + mr - 1) / mr * mr) * double((N + nr - 1) / nr * nr));
    }
    std::vector<Speed> speeds;
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
    int syncWorld = 1; ///< Graph::syncWorld: batchnorm's sums are summed over this many processes
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

/// How a convolution kernel (conv2d, conv2d_grad_x, conv2d_grad_w; LowerConv.cpp) runs: as
/// an implicit GEMM through the matrix-product register tile, never materialising the
/// batch's im2col matrix.
///   conv2d   y[O, B OH OW] = W[O, C KH KW] · col(x)[C KH KW, B OH OW]: B's panels (K x NR,
///            positions of consecutive images) are packed from x one at a time into the
///            thread's panel, then every MR-row tile of W (read in place) runs over it.
///   grad_x   dx[C, B H W] = W'[C, O KH KW] · colT(g)[O KH KW, B H W]: the transposed
///            convolution; W' (W with O and C swapped) is copied once into the scratch,
///            colT(g) holds g[o, (h + PH - kh) / SH, (w + PW - kw) / SW] where the division
///            is exact and in range, else 0.
///   grad_w   dWᵀ[C KH KW, O] = Σ_b col(x_b)[C KH KW, OH OW] · g_bᵀ: per image, col(x_b)
///            packed as A and g_b transposed into panels (gradc_pack_b), summed into the
///            block of sums of its slice of the batch (one slice per planned thread, fixed
///            images each: the sums do not depend on which thread ran what); the slices'
///            blocks are added into dW at the end, in order.
/// Threads share the panels (conv2d, grad_x) or the slices of the batch (grad_w).
/// A conv2d or grad_w whose taps C KH KW number at most kDirectTaps (a first layer on
/// images of one channel) is instead direct: the taps of VL positions of a row of y's grid
/// are loaded into vector registers once and multiplied by every output channel's weights
/// (conv2d: into a row of y, through the thread's row buffer when there is an epilogue),
/// or by every channel's gradient into vector sums [O][C KH KW][VL] per slice of the batch
/// (grad_w). The register tile would waste most of its work on so shallow a product. Rows of
/// y must be at least VL long. With an epilogue, a conv2d unit (a band of rows of one image)
/// keeps its results in the thread's buffer, then applies the epilogue along each channel's
/// band, VL positions at a time. grad_w's sums run per lane: its bits depend on VL (the ISA),
/// not on the threads.
struct ConvPlan {
    int64_t B = 0, C = 0, H = 0, W = 0, O = 0, OH = 0, OW = 0;
    Window win;
    /// The register tile of the product, MR x NV vectors: the program's, or for conv2d and
    /// grad_x through the tile the measured candidate (GemmBlocking::speeds) that does the
    /// most useful work on M x N, by more than 2% (convTile).
    int64_t mr = 0, nv = 0;
    bool direct = false;         ///< taps in registers (above); the threads share bands of rows of y (conv2d)
    int64_t band = 0;            ///< direct conv2d: rows of y per unit (O x band x OW results: 32768 elements or one row)
    static constexpr int64_t kDirectTaps = 16;
    int64_t M = 0, N = 0, K = 0; ///< the product (grad_w: per image)
    int64_t rowTiles = 0, colPanels = 0;
    int64_t units = 0;           ///< what the threads share: panels of N, or slices of the batch (grad_w)
    // Scratch, in elements, each part on a 64-byte boundary:
    int64_t weightsAt = 0;       ///< grad_x: W' [C][O KH KW]
    int64_t threadAt = 0, perThread = 0; ///< the threads' parts, one after another
    /// In a thread's part: conv2d and grad_x: the packed panel at 0 (K x NR), the tile at
    /// tileAt (MR x NR); grad_w: col(x_b) at 0 (C KH KW rows of OH OW, aStride apart: a whole
    /// number of vectors), g_b's panels at packedAt.
    int64_t tileAt = 0, packedAt = 0, aStride = 0;
    /// grad_w: the slices' blocks of sums (rowTiles MR x colPanels NR each), from sumsAt.
    int64_t sumsAt = 0, sumsBlock = 0;
    /// A gradient that expands a maxpool's (Kernel::poolsGradient): at expandAt in a thread's
    /// part, images' g [O][OH OW], `expanded` elements each: grad_w one; grad_x a ring of
    /// `ring`, as many as one panel's positions span (image b in slot b % ring).
    int64_t expandAt = 0, expanded = 0, ring = 0;
    /// A conv2d through the tile that pools its result (Kernel::poolsOutput) on several
    /// threads: a byte per image, set once a thread has pooled it, from pooledAt.
    int64_t pooledAt = 0;
    int64_t elements = 0;
};
inline bool isConvolution(Op op) { return op == Op::Conv2d || op == Op::Conv2dGradX || op == Op::Conv2dGradW; }
ConvPlan planConv(const Kernel& k, const std::vector<Buffer>& buffers, const GemmBlocking& b);
/// The register tile (MR, NV) of a convolution's M x N product (ConvPlan::mr, nv).
std::pair<int64_t, int64_t> convTile(const GemmBlocking& b, int64_t M, int64_t N);

/// How a recurrent kernel runs (LowerScan.cpp): one loop over the steps around the cell
/// body, the threads sharing MR-row tiles of the batch inside each step. Its scratch does not
/// depend on T (elements, each part on a 64-byte boundary):
///   forward (Scan: in {xp, w_hh, b_hh}, out {h, state or -1}): W_hhᵀ packed once into
///     [gatePanels][H][NR] at packedAt; per thread, an MR x gatePanels NR block of the
///     recurrent product's sums at sumsAt (sumsBlock apart), which the cell epilogue reads;
///     the LSTM's cell state c_t [B][H] at cAt (the state slots are not written by a
///     forward-only program).
///   reverse (ScanGrad: in {h, state, dy, w_hh}, out {dxp, dW_hh, db_hh, norms}, each -1
///     when dead): W_hh packed once into [hiddenPanels][GH][NR] at packedAt; the carry
///     dL/dh_{t-1} [B][H] at carryAt, the LSTM's dL/dc_{t-1} [B][H] at dcAt, dzhh_t [B][GH]
///     at dzhhAt, h_{t-1} packed into [hiddenPanels][B][NR] at hPackedAt, dW_hh's sums
///     [gateTiles MR][hiddenPanels NR] at dwAt, db_hh's [gateTiles MR] at dbAt, one double per row
///     tile of the batch (the partial sums of ‖dh_t‖², added in order: the same bits on any
///     thread count) at normAt, and the per-thread sums blocks of the carry product,
///     MR x hiddenPanels NR, at sumsAt.
struct ScanPlan {
    bool reverse = false;
    int64_t B = 0, T = 0, H = 0, G = 1, S = 1, GH = 0;
    int64_t rowTiles = 0;     ///< MR-row tiles of the batch: what the threads share in a step
    int64_t gateTiles = 0;    ///< MR-row tiles of GH (the dW product's rows)
    int64_t gatePanels = 0;   ///< NR panels of GH (the forward product's columns)
    int64_t hiddenPanels = 0; ///< NR panels of H (the carry and dW products' columns)
    int64_t packedAt = 0, sumsAt = 0, sumsBlock = 0, cAt = 0;
    int64_t carryAt = 0, dcAt = 0, dzhhAt = 0, hPackedAt = 0, dwAt = 0, dbAt = 0, normAt = 0;
    int64_t elements = 0;
};
inline bool isScanFamily(Op op) {
    return op == Op::Scan || op == Op::ScanState || op == Op::ScanGrad || op == Op::ScanGradW || op == Op::ScanGradB ||
           op == Op::ScanGradNorm;
}
ScanPlan planScan(const Kernel& k, const std::vector<Buffer>& buffers, const GemmBlocking& b, int elementBytes);

/// Places every Temp buffer in one workspace, reusing bytes whose values are dead.
void planMemory(KernelProgram& p, int elementBytes);

/// What kernel `index` of `p` is, in one line ("k3: loop [256,10] acc = t2 · w (depth 128)"):
/// the first line of its printKernels text, and its name in `gradc bench --profile`.
std::string kernelLabel(const KernelProgram& p, size_t index);
std::string printKernels(const KernelProgram& p);
std::string printMemoryPlan(const KernelProgram& p);

} // namespace gradc
