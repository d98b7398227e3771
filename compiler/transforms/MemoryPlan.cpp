// MemoryPlan.cpp — one workspace for every temporary buffer, reused by liveness; and the
// printers of the kernel program.
#include "Kernels.h"

#include "Cells.h"

#include <fmt/format.h>

#include <algorithm>

namespace gradc {

static int64_t alignUp(int64_t v) { return (v + 63) / 64 * 64; }

void planMemory(KernelProgram& p, int elementBytes) {
    const size_t n = p.buffers.size();
    std::vector<int64_t> first(n, -1), last(n, -1);
    for (size_t k = 0; k < p.kernels.size(); ++k) {
        for (int32_t b : p.kernels[k].writes()) {
            if (first[size_t(b)] < 0) first[size_t(b)] = int64_t(k);
            last[size_t(b)] = std::max(last[size_t(b)], int64_t(k));
        }
        for (int32_t b : p.kernels[k].reads()) last[size_t(b)] = std::max(last[size_t(b)], int64_t(k));
    }
    p.elementBytes = elementBytes;
    std::vector<size_t> temps;
    for (size_t b = 0; b < n; ++b) {
        if (p.buffers[b].kind != Buffer::Kind::Temp) continue;
        p.buffers[b].offset = -1;
        if (first[b] >= 0) temps.push_back(b);
    }
    std::sort(temps.begin(), temps.end(), [&](size_t x, size_t y) { return first[x] < first[y]; });

    // First fit over the blocks still live: a block is free once its last reader has run
    // before the new buffer's first writer (never within one kernel).
    struct Block {
        int64_t offset, size, end;
    };
    std::vector<Block> live;
    int64_t top = 0;
    for (size_t b : temps) {
        live.erase(std::remove_if(live.begin(), live.end(), [&](const Block& k) { return k.end < first[b]; }),
                   live.end());
        std::sort(live.begin(), live.end(), [](const Block& x, const Block& y) { return x.offset < y.offset; });
        int64_t size = alignUp(p.buffers[b].elements() * elementBytes), at = 0;
        for (const Block& k : live) {
            if (k.offset - at >= size) break;
            at = std::max(at, k.offset + k.size);
        }
        p.buffers[b].offset = at;
        live.push_back({at, size, last[b]});
        top = std::max(top, at + size);
    }
    int64_t scratch = 0;
    for (auto& k : p.kernels)
        if (k.kind == Kernel::Kind::Loop && k.a >= 0) scratch = std::max(scratch, planProduct(k, p.blocking).elements);
        else if (k.kind == Kernel::Kind::Op && isConvolution(k.op)) scratch = std::max(scratch, planConv(k, p.buffers, p.blocking).elements);
        else if (k.kind == Kernel::Kind::Op && isScanFamily(k.op))
            scratch = std::max(scratch, planScan(k, p.buffers, p.blocking, elementBytes).elements);
        else if (k.kind == Kernel::Kind::Op) // per column, or per channel (rows) of [B, C, the rest]
            scratch = std::max(scratch, ownKernelScratch(k.op) * (perChannel(k.op, p.buffers[size_t(k.in[0])].shape) ? k.rows : k.cols));
    p.scratchOffset = top;
    p.workspaceBytes = top + alignUp(scratch * elementBytes);
}

ProductPlan planProduct(const Kernel& k, const GemmBlocking& b) {
    auto up16 = [](int64_t v) { return (v + 15) / 16 * 16; }; // 64 bytes: 16 floats, 8 doubles
    ProductPlan p;
    p.blocked = b.blocked(k.depth);
    p.kc = b.kBlock(k.depth);
    p.kBlocks = (k.depth + p.kc - 1) / p.kc;
    p.mc = p.blocked ? b.mBlock(k.rows) : b.mr;
    p.rowTiles = (k.rows + b.mr - 1) / b.mr;
    p.colPanels = (k.cols + b.nr() - 1) / b.nr();
    // Panels of B to pack: all of a transposed B, of a blocked product's B, or of a B whose
    // rows are a page apart, else only a last partial one. A is packed when it is
    // transposed with rows a page apart (GemmBlocking::packsA).
    p.packFrom = b.packsB(k.transB, k.cols, k.depth) ? 0 : k.cols / b.nr();
    p.packA = b.packsA(k.transA, k.rows, k.cols);
    // N blocks (off unless GRADC_GEMM=panel=N sets l3Panel): a B whose packed copy has more
    // elements than l3Panel is packed strip by strip, each thread into its own K x NR panel,
    // which stays in L2 while the strip's tiles read it (784-4096-4096-10: 64 MB of packed
    // weights otherwise).
    const int64_t packedB = p.colPanels * b.nr() * k.depth;
    p.packByStrip = p.packFrom == 0 && packedB > b.l3Panel && p.colPanels > 1;
    p.stripAt = up16(b.nr() * k.depth);
    // Packed panels of B (all of them, or one strip per thread), packed panels of A (when
    // it is), then one register tile (a blocked product: one block of sums) per thread.
    p.aAt = p.packByStrip ? p.stripAt * b.threads : up16(packedB);
    p.sumsAt = p.aAt + (p.packA ? up16(p.rowTiles * b.mr * k.depth) : 0);
    p.elements = p.sumsAt + p.mc * b.nr() * b.threads;
    return p;
}

std::pair<int64_t, int64_t> convTile(const GemmBlocking& bl, int64_t M, int64_t N) {
    auto score = [&](const GemmBlocking::Speed& t) { return t.gflops * GemmBlocking::usefulShare(M, N, t.mr, int64_t(t.nv) * bl.vl); };
    const GemmBlocking::Speed* own = nullptr;
    for (const GemmBlocking::Speed& t : bl.speeds)
        if (t.mr == bl.mr && t.nv == bl.nv) own = &t;
    if (!own) return {bl.mr, bl.nv};
    const GemmBlocking::Speed* best = own;
    for (const GemmBlocking::Speed& t : bl.speeds)
        if (score(t) > 1.02 * score(*own) && score(t) > score(*best)) best = &t;
    return {best->mr, best->nv};
}

ConvPlan planConv(const Kernel& k, const std::vector<Buffer>& buffers, const GemmBlocking& bl) {
    auto up16 = [](int64_t v) { return (v + 15) / 16 * 16; }; // 64 bytes: 16 floats, 8 doubles
    auto shape = [&](int32_t id) -> const Shape& { return buffers.at(size_t(id)).shape; };
    ConvPlan p;
    p.win = k.attrs.window;
    const Shape& x = k.op == Op::Conv2dGradX ? shape(k.out[0]) : shape(k.in[0]);
    // y, or for the gradients W or dW [O,C,KH,KW], y's grid following from the window (their
    // g may be a pool's operands).
    const Shape& y = k.op == Op::Conv2dGradX ? shape(k.in.back()) : shape(k.out[0]);
    internal_assert(x.size() == 4 && y.size() == 4, "a convolution kernel on tensors that are not images");
    p.B = x[0], p.C = x[1], p.H = x[2], p.W = x[3];
    if (k.op != Op::Conv2d)
        p.O = y[0], p.OH = Window::outSize(p.H, p.win.kh, p.win.sh, p.win.ph), p.OW = Window::outSize(p.W, p.win.kw, p.win.sw, p.win.pw);
    else
        p.O = y[1], p.OH = y[2], p.OW = y[3];
    const int64_t taps = int64_t(p.win.kh) * p.win.kw;
    switch (k.op) {
    case Op::Conv2d: p.M = p.O, p.N = p.B * p.OH * p.OW, p.K = p.C * taps; break;
    case Op::Conv2dGradX: p.M = p.C, p.N = p.B * p.H * p.W, p.K = p.O * taps; break;
    default: p.M = p.C * taps, p.N = p.O, p.K = p.OH * p.OW; break;
    }
    // grad_w packs g_b with the program's helper (its panels are the program tile's).
    std::tie(p.mr, p.nv) = k.op == Op::Conv2dGradW ? std::pair<int64_t, int64_t>(bl.mr, bl.nv) : convTile(bl, p.M, p.N);
    const int64_t MR = p.mr, NR = p.nv * bl.vl;
    p.rowTiles = (p.M + MR - 1) / MR;
    p.colPanels = (p.N + NR - 1) / NR;
    const int64_t threads = std::max(1, bl.threads);
    // Direct where the rows fill the vectors (a row of fewer than VL positions would leave
    // most lanes idle; the panels of the register tile run across rows and images).
    p.direct = k.op != Op::Conv2dGradX && p.C * taps <= ConvPlan::kDirectTaps && p.OW >= bl.vl;
    if (p.direct && k.op == Op::Conv2d) { // a band of rows of y per unit; with an epilogue, its results [O][band OW]
        // A pooled conv (Kernel::poolsOutput) keeps a whole image: its pool's windows span rows.
        p.band = k.poolsOutput() ? p.OH : std::clamp<int64_t>(32768 / std::max<int64_t>(1, p.O * p.OW), 1, p.OH);
        p.units = p.B * ((p.OH + p.band - 1) / p.band);
        p.perThread = k.hasEpilogue() ? up16(p.O * p.band * p.OW) : 0;
        p.elements = p.perThread * threads;
        return p;
    }
    // A gradient expanding a maxpool's: images' g per thread (grad_w one, grad_x a ring).
    p.expanded = k.poolsGradient() ? up16(p.O * p.OH * p.OW) : 0;
    if (p.direct) { // grad_w: a slice of the batch per unit, its vector sums (then the threads' parts)
        p.units = std::min(p.B, threads);
        p.sumsBlock = up16(p.O * p.C * taps * bl.vl);
        p.threadAt = p.sumsBlock * p.units;
        p.perThread = p.expanded;
        p.elements = p.threadAt + p.perThread * threads;
        return p;
    }
    p.weightsAt = 0;
    p.threadAt = k.op == Op::Conv2dGradX ? p.weightsAt + up16(p.M * p.K) : 0;
    if (k.op == Op::Conv2dGradW) {
        p.units = std::min(p.B, threads);
        p.aStride = up16(p.K);
        p.packedAt = p.M * p.aStride;
        p.expandAt = p.packedAt + up16(p.colPanels * NR * p.K);
        p.perThread = p.expandAt + p.expanded;
        p.sumsAt = p.threadAt + p.perThread * threads;
        p.sumsBlock = up16(p.rowTiles * MR * p.colPanels * NR);
        p.elements = p.sumsAt + p.sumsBlock * p.units;
        return p;
    }
    p.units = p.colPanels;
    p.tileAt = up16(p.K * NR);
    p.expandAt = p.tileAt + up16(MR * NR);
    if (p.expanded) { // the images one panel of NR of dx's positions spans
        const int64_t perImage = p.H * p.W;
        p.ring = (NR - 2) / perImage + 2;
    }
    p.perThread = p.expandAt + p.ring * p.expanded;
    p.pooledAt = p.threadAt + p.perThread * threads;
    p.elements = p.pooledAt + (k.poolsOutput() && threads > 1 ? up16(p.B) : 0); // B bytes (in B elements)
    return p;
}

ScanPlan planScan(const Kernel& k, const std::vector<Buffer>& buffers, const GemmBlocking& bl, int elementBytes) {
    auto up16 = [](int64_t v) { return (v + 15) / 16 * 16; }; // 64 bytes: 16 floats, 8 doubles
    auto shape = [&](int32_t id) -> const Shape& { return buffers.at(size_t(id)).shape; };
    ScanPlan p;
    p.reverse = k.op != Op::Scan;
    internal_assert(k.op == Op::Scan || k.op == Op::ScanGrad, "a scan kernel is named after its family's first op");
    const Shape& w = shape(k.in[p.reverse ? 3 : 1]);
    const Shape& seq = shape(k.in[0]); // xp [B,T,GH] or h [B,T,H]
    p.B = seq[0], p.T = seq[1], p.GH = w[0], p.H = w[1];
    p.G = cellGates(k.attrs.cell), p.S = cellStates(k.attrs.cell);
    const int64_t MR = bl.mr, NR = bl.nr(), threads = std::max(1, bl.threads);
    p.rowTiles = (p.B + MR - 1) / MR;
    p.gateTiles = (p.GH + MR - 1) / MR;
    p.gatePanels = (p.GH + NR - 1) / NR;
    p.hiddenPanels = (p.H + NR - 1) / NR;
    if (!p.reverse) {
        p.packedAt = 0;
        p.sumsAt = up16(p.gatePanels * p.H * NR);
        p.sumsBlock = up16(MR * p.gatePanels * NR);
        p.cAt = p.sumsAt + p.sumsBlock * threads;
        p.elements = p.cAt + (cellDef(k.attrs.cell, k.attrs.expr).cSlot >= 0 ? up16(p.B * p.H) : 0);
        return p;
    }
    const int64_t perDouble = 8 / elementBytes;
    p.packedAt = 0;
    p.carryAt = up16(p.hiddenPanels * p.GH * NR);
    p.dcAt = p.carryAt + up16(p.B * p.H);
    p.dzhhAt = p.dcAt + up16(p.B * p.H);
    // dzhh_t [B][GH] and MR zeros after it: db_hh's sums read MR rows of GH from every row of
    // the batch, past GH into the next row (into db's padding) and, on the last, into the zeros.
    p.hPackedAt = p.dzhhAt + up16(p.B * p.GH + MR);
    p.dwAt = p.hPackedAt + up16(p.hiddenPanels * p.B * NR);
    p.dbAt = p.dwAt + up16(p.gateTiles * MR * p.hiddenPanels * NR);
    p.normAt = p.dbAt + up16(p.gateTiles * MR); // GH sums, padded to whole row tiles
    p.sumsAt = p.normAt + up16(p.rowTiles * perDouble);
    p.sumsBlock = up16(MR * p.hiddenPanels * NR);
    p.elements = p.sumsAt + p.sumsBlock * threads;
    return p;
}

static const char* kindName(Buffer::Kind k) {
    switch (k) {
    case Buffer::Kind::Param: return "param";
    case Buffer::Kind::Input: return "input";
    case Buffer::Kind::Target: return "target";
    case Buffer::Kind::Logits: return "logits";
    case Buffer::Kind::Loss: return "loss";
    case Buffer::Kind::Grad: return "grad";
    case Buffer::Kind::Activation: return "activation";
    case Buffer::Kind::Temp: return "temp";
    }
    return "?";
}

bool hasOwnKernel(Op op) {
    switch (op) {
#define GRADC_KERNEL(name, scratch) case Op::name: return true;
#include "Ops.def"
    default: return false;
    }
}

int64_t ownKernelScratch(Op op) {
    switch (op) {
#define GRADC_KERNEL(name, scratch) case Op::name: return scratch;
#include "Ops.def"
    default: return 0;
    }
}

bool perChannel(Op op, const Shape& x) {
    return x.size() > 2 && op != Op::LayerNormNormalise && op != Op::LayerNormNormaliseGrad;
}

std::string kernelLabel(const KernelProgram& p, size_t i) {
    auto name = [&](int32_t b) { return b < 0 ? std::string("-") : p.buffers[size_t(b)].name; };
    const Kernel& k = p.kernels.at(i);
    if (k.kind == Kernel::Kind::Loop) {
        std::string out = k.outer == 1 ? fmt::format("k{}: loop [{},{}]", i, k.rows, k.cols)
                                       : fmt::format("k{}: loop [{},{},{}]", i, k.outer, k.rows, k.cols);
        if (k.a >= 0)
            out += fmt::format(" acc = {}{} · {}{} (depth {})", name(k.a), k.transA ? "ᵀ" : "", name(k.b),
                               k.transB ? "ᵀ" : "", k.depth);
        return out;
    }
    static const char* names[] = {"loop", "softmax_cross_entropy", "bce_with_logits", "mse"};
    const char* kind = k.kind == Kernel::Kind::Op ? describe(k.op).spelling : names[size_t(k.kind)];
    std::string out = k.outer == 1 ? fmt::format("k{}: {} [{},{}]", i, kind, k.rows, k.cols)
                                   : fmt::format("k{}: {} [{},{},{}]", i, kind, k.outer, k.rows, k.cols);
    std::string ins, outs;
    for (int32_t b : k.in) ins += (ins.empty() ? "" : ", ") + name(b);
    if (k.poolsGradient()) { // g expanded from the pool's operands
        const size_t g = k.gradientAt();
        const std::string expanded = fmt::format("maxpool2d_grad({}, {}) window={}", name(k.in[g]), name(k.in[g + 1]), printWindow(k.pool));
        ins = g == 0 ? fmt::format("{}, {}", expanded, name(k.in[2])) : fmt::format("{}, {}", name(k.in[0]), expanded);
    }
    for (int32_t b : k.out) outs += (outs.empty() ? "" : ", ") + name(b);
    out += fmt::format(" ({}) -> ({})", ins, outs);
    if (std::string a = k.kind == Kernel::Kind::Op ? printAttrs(k.op, k.attrs) : ""; !a.empty()) out += " " + a;
    if (k.hasEpilogue()) out += " + epilogue";
    if (k.poolsOutput()) out += " + maxpool " + printWindow(k.pool);
    return out;
}

std::string printKernels(const KernelProgram& p) {
    auto name = [&](int32_t b) { return b < 0 ? std::string("-") : p.buffers[size_t(b)].name; };
    std::string out = fmt::format("program {}: {} kernels\n", p.name, p.kernels.size());
    for (size_t i = 0; i < p.kernels.size(); ++i) {
        const Kernel& k = p.kernels[i];
        out += "  " + kernelLabel(p, i) + "\n";
        if (k.kind == Kernel::Kind::Loop || k.hasEpilogue()) { // a conv's epilogue: over its result [o, r, c]
            for (size_t j = 0; j < k.args.size(); ++j) {
                const Access& a = k.args[j];
                std::string what = a.mode == Access::Mode::Acc    ? "acc"
                                   : a.mode == Access::Mode::Elem ? name(a.buffer) + (k.outer == 1 ? "[r,c]" : "[o,r,c]")
                                   : a.mode == Access::Mode::Col  ? name(a.buffer) + "[c]"
                                                                  : name(a.buffer) + "[r]";
                out += fmt::format("      a{} = {}\n", j, what);
            }
            const char* elem = k.outer == 1 ? "[r,c]" : "[o,r,c]";
            for (auto& s : k.stores) out += fmt::format("      {}{} = {}\n", name(s.buffer), elem, scalar::print(s.expr));
            for (auto& s : k.columnSums)
                out += fmt::format("      {}[c] = sum over {} of {}\n", name(s.buffer), k.outer == 1 ? "r" : "o, r",
                                   scalar::print(s.expr));
            for (auto& s : k.rowSums)
                out += fmt::format("      {}[r] = sum over {} of {}\n", name(s.buffer), k.outer == 1 ? "c" : "o, c",
                                   scalar::print(s.expr));
        }
    }
    return out;
}

std::string printMemoryPlan(const KernelProgram& p) {
    std::string out = fmt::format("program {}: workspace {} bytes; matrix-product scratch at {} ({}x{} tiles)\n",
                                  p.name, p.workspaceBytes, p.scratchOffset, p.blocking.mr, p.blocking.nr());
    for (auto& b : p.buffers) {
        if (b.kind == Buffer::Kind::Temp)
            out += b.offset < 0 ? fmt::format("  {:<24} {:<10} temp (fused away)\n", b.name, shapeString(b.shape))
                                : fmt::format("  {:<24} {:<10} temp bytes {}..{}\n", b.name, shapeString(b.shape),
                                              b.offset, b.offset + b.elements() * p.elementBytes);
        else
            out += fmt::format("  {:<24} {:<10} {}{}\n", b.name, shapeString(b.shape), kindName(b.kind),
                               b.kind == Buffer::Kind::Param || b.kind == Buffer::Kind::Grad ||
                                       b.kind == Buffer::Kind::Activation
                                   ? fmt::format(" +{}", b.offset)
                                   : "");
    }
    return out;
}

} // namespace gradc
