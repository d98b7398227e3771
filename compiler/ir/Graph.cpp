// Graph.cpp — the op table, attributes, shape rules, printer and verifier of the Graph IR.
#include "Graph.h"

#include "Text.h"

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <set>

namespace gradc {

static const OpDesc kOps[] = {
#define GRADC_OP(name, spelling, arity, traits, attrs, shape, grad) {spelling, arity, traits, attrs},
#include "Ops.def"
};

const OpDesc& describe(Op op) { return kOps[size_t(op)]; }

const char* attrName(AttrKind k) {
    static const char* const kNames[] = {
#define GRADC_ATTR(kind, field, type, init) #field,
#include "Ops.def"
    };
    return kNames[size_t(k)];
}

// ---- Attributes: each function below handles every attribute kind through Ops.def, by
// ---- the type of its value.
namespace {

std::string attrValue(const std::string& s) { return fmt::format("\"{}\"", s); }
std::string attrValue(int32_t v) { return fmt::format("{}", v); }
std::string attrValue(double v) { return fmt::format("{}", v); }
std::string attrValue(const scalar::Expr& e) { return e ? scalar::print(e) : "null"; }
std::string attrValue(const Window& w) { return printWindow(w); }
std::string attrValue(Cell c) {
    return cellName(c);
}

size_t attrHash(const std::string& s) { return std::hash<std::string>()(s); }
size_t attrHash(int32_t v) { return std::hash<int32_t>()(v); }
size_t attrHash(double v) { return std::hash<double>()(v); }
size_t attrHash(const scalar::Expr& e) { return e ? size_t(e->hash) : 0; }
size_t attrHash(const Window& w) {
    size_t h = 0;
    for (int32_t v : {w.kh, w.kw, w.sh, w.sw, w.ph, w.pw}) h = h * 1000003u + std::hash<int32_t>()(v);
    return h;
}

size_t attrHash(Cell c) {
    return std::hash<int>()(int(c));
}

const Attrs kDefaultAttrs;

} // namespace

std::string printWindow(const Window& w) {
    return fmt::format("{}x{}/s{}x{}/p{}x{}", w.kh, w.kw, w.sh, w.sw, w.ph, w.pw);
}

std::string printAttrs(const Node& n) { return printAttrs(n.op, n); }

std::string printAttrs(Op op, const Attrs& n) {
    std::string out;
    forEachAttr(op, n, [&](AttrKind k, const auto& value) {
        if (k == AttrKind::Name) return; // printed as a quoted string after the brackets
        bool isDefault = false;
#define GRADC_ATTR(kind, field, type, init) \
        if (k == AttrKind::kind) isDefault = n.field == kDefaultAttrs.field;
#include "Ops.def"
        if (isDefault) return; // an optional attribute left unset
        out += fmt::format("{}{}={}", out.empty() ? "" : ", ", attrName(k), attrValue(value));
    });
    return out;
}

bool sameAttrs(const Node& a, const Node& b) {
    if (a.op != b.op) return false;
    [[maybe_unused]] const uint32_t declared = describe(a.op).attrs;
#define GRADC_ATTR(kind, field, type, init) \
    if ((declared & attr::kind) && !(a.field == b.field)) return false;
#include "Ops.def"
    return true;
}

size_t hashAttrs(const Node& n) {
    size_t h = size_t(n.op);
    forEachAttr(n.op, n, [&](AttrKind, const auto& value) {
        h ^= attrHash(value) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    });
    return h;
}

void copyAttrs(const Node& from, Node& to) {
    [[maybe_unused]] const uint32_t both = describe(from.op).attrs & describe(to.op).attrs;
#define GRADC_ATTR(kind, field, type, init) \
    if (both & attr::kind) to.field = from.field;
#include "Ops.def"
}

std::string shapeString(const Shape& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += fmt::format("{}{}", i ? "," : "", s[i]);
    return out + "]";
}

int64_t elementCount(const Shape& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
}

bool isSuffix(const Shape& s, const Shape& of) {
    return s.size() <= of.size() && std::equal(s.begin(), s.end(), of.end() - std::ptrdiff_t(s.size()));
}

// ---- Shape rules: one per row of Ops.def. Each checks the operands and returns the
// ---- result's shape, or throws UserError at the node's location.
namespace {

using Nodes = std::vector<Node>;

const Node& operand(const Nodes& g, const Node& n, size_t i) { return g[n.in[i]]; }

[[noreturn]] void mismatch(const Node& n, const std::string& msg) {
    throw UserError(n.loc, fmt::format("{}: {}", describe(n.op).spelling, msg));
}

void needRank(const Node& n, const Node& v, size_t rank, const char* what) {
    if (v.shape.size() != rank || v.type != DType::Real)
        mismatch(n, fmt::format("{} must be a {}-d real tensor, got {}", what, rank,
                                shapeString(v.shape)));
}

Shape shapeOfInput(const Nodes&, const Node& n) { return n.shape; }
Shape shapeOfCrossEntropy(const Nodes& g, const Node& n);
Shape shapeOfPairwiseLoss(const Nodes& g, const Node& n);

/// A real tensor of rank 2 or more: [..., last] (a matrix product's row operand).
void needRows(const Node& n, const Node& v, const char* what) {
    if (v.shape.size() < 2 || v.type != DType::Real)
        mismatch(n, fmt::format("{} must be a real tensor of rank 2 or more, got {}", what,
                                shapeString(v.shape)));
}

/// `s` with its last dimension replaced by `last`.
Shape withLast(Shape s, int64_t last) {
    s.back() = last;
    return s;
}

Shape shapeOfMatMulNT(const Nodes& g, const Node& n) {
    const Node &x = operand(g, n, 0), &w = operand(g, n, 1);
    needRows(n, x, "input"), needRank(n, w, 2, "weight");
    if (x.shape.back() != w.shape[1])
        mismatch(n, fmt::format("input {} and weight {} do not fit (x · wᵀ needs equal inner "
                                "sizes)", shapeString(x.shape), shapeString(w.shape)));
    return withLast(x.shape, w.shape[0]);
}

Shape shapeOfMatMulNN(const Nodes& g, const Node& n) {
    const Node &a = operand(g, n, 0), &w = operand(g, n, 1);
    needRows(n, a, "gradient"), needRank(n, w, 2, "weight");
    if (a.shape.back() != w.shape[0]) mismatch(n, "gradient and weight do not fit");
    return withLast(a.shape, w.shape[1]);
}

Shape shapeOfMatMulTN(const Nodes& g, const Node& n) {
    const Node &a = operand(g, n, 0), &x = operand(g, n, 1);
    needRows(n, a, "gradient"), needRows(n, x, "input");
    if (!std::equal(a.shape.begin(), a.shape.end() - 1, x.shape.begin(), x.shape.end() - 1))
        mismatch(n, fmt::format("gradient {} and input {} have different leading dimensions",
                                shapeString(a.shape), shapeString(x.shape)));
    return {a.shape.back(), x.shape.back()};
}

/// The result's shape is the node's own; it holds the operand's elements.
Shape shapeOfReshape(const Nodes& g, const Node& n) {
    const Node& x = operand(g, n, 0);
    if (x.type != DType::Real) mismatch(n, "operand must be real");
    if (n.shape.empty() || elementCount(n.shape) != elementCount(x.shape))
        mismatch(n, fmt::format("cannot reshape {} to {}", shapeString(x.shape), shapeString(n.shape)));
    return n.shape;
}

Shape shapeOfSumRows(const Nodes& g, const Node& n) {
    const Node& a = operand(g, n, 0);
    if (a.shape.empty() || a.type != DType::Real)
        mismatch(n, fmt::format("operand must be a real tensor of rank 1 or more, got {}", shapeString(a.shape)));
    return Shape(a.shape.begin() + 1, a.shape.end());
}

/// Whether `from` broadcasts to `to` as numpy's: right-aligned, each dimension of `from`
/// equal to `to`'s or 1, and no more dimensions than `to`.
bool broadcastsTo(const Shape& from, const Shape& to) {
    if (from.size() > to.size()) return false;
    const size_t lead = to.size() - from.size();
    for (size_t i = 0; i < from.size(); ++i)
        if (from[i] != 1 && from[i] != to[lead + i]) return false;
    return true;
}

/// The node's shape is the target's: the operand summed where the target broadcasts.
Shape shapeOfSumTo(const Nodes& g, const Node& n) {
    const Node& a = operand(g, n, 0);
    if (a.type != DType::Real) mismatch(n, "operand must be real");
    if (n.shape.empty() || !broadcastsTo(n.shape, a.shape))
        mismatch(n, fmt::format("cannot sum {} to {} (the target must broadcast to the operand)",
                                shapeString(a.shape), shapeString(n.shape)));
    return n.shape;
}

/// x[B,C,...]: a real tensor of rank 2 or more whose channels are dimension 1.
void needChannels(const Node& n, const Node& x) {
    if (x.shape.size() < 2 || x.type != DType::Real)
        mismatch(n, fmt::format("input must be a real [batch, channels, ...] tensor, got {}", shapeString(x.shape)));
}

Shape shapeOfBatchNormGradX(const Nodes& g, const Node& n) {
    const Node &x = operand(g, n, 0), &w = operand(g, n, 1), &d = operand(g, n, 2);
    needChannels(n, x), needRank(n, w, 1, "weight");
    if (d.shape != x.shape || w.shape[0] != x.shape[1])
        mismatch(n, fmt::format("input {}, weight {} and gradient {} do not fit", shapeString(x.shape),
                                shapeString(w.shape), shapeString(d.shape)));
    return x.shape;
}

Shape shapeOfBatchNormGradGamma(const Nodes& g, const Node& n) {
    const Node &x = operand(g, n, 0), &d = operand(g, n, 1);
    needChannels(n, x);
    if (d.shape != x.shape)
        mismatch(n, fmt::format("input {} and gradient {} do not fit", shapeString(x.shape), shapeString(d.shape)));
    return {x.shape[1]};
}

// ---- Windows over [B,C,H,W]: convolution and pooling.

/// The window's sizes are positive and its padding is not negative (the front end says so in
/// the user's words; this is the IR's own check).
void needWindow(const Node& n) {
    const Window& w = n.window;
    if (w.kh < 1 || w.kw < 1 || w.sh < 1 || w.sw < 1 || w.ph < 0 || w.pw < 0)
        mismatch(n, fmt::format("window {} must have a positive size and stride and no negative padding",
                                printWindow(w)));
}

void needImage(const Node& n, const Node& x, const char* what) {
    if (x.shape.size() != 4 || x.type != DType::Real)
        mismatch(n, fmt::format("{} must be a real [batch, channels, height, width] tensor, got {}", what,
                                shapeString(x.shape)));
}

/// [B,C,OH,OW] for x[B,C,H,W] under the node's window, with `channels` for C; a window that
/// does not fit in the padded input is the user's mistake.
Shape windowOutput(const Node& n, const Shape& x, int64_t channels) {
    const Window& w = n.window;
    if (x[2] + 2 * int64_t(w.ph) < w.kh || x[3] + 2 * int64_t(w.pw) < w.kw)
        mismatch(n, fmt::format("the {}x{} window is larger than the input {} padded to {}x{}", w.kh, w.kw,
                                shapeString(x), x[2] + 2 * int64_t(w.ph), x[3] + 2 * int64_t(w.pw)));
    return {x[0], channels, Window::outSize(x[2], w.kh, w.sh, w.ph), Window::outSize(x[3], w.kw, w.sw, w.pw)};
}

/// Checks the weight [O,C,KH,KW] against the input's channels and the window's size.
void needConvWeight(const Node& n, const Node& w, int64_t channels) {
    needRank(n, w, 4, "weight");
    if (w.shape[1] != channels || w.shape[2] != n.window.kh || w.shape[3] != n.window.kw)
        mismatch(n, fmt::format("weight {} does not fit {} input channels and a {}x{} kernel", shapeString(w.shape),
                                channels, n.window.kh, n.window.kw));
}

Shape shapeOfConv2d(const Nodes& g, const Node& n) {
    const Node &x = operand(g, n, 0), &w = operand(g, n, 1);
    needWindow(n), needImage(n, x, "input");
    needConvWeight(n, w, x.shape[1]);
    return windowOutput(n, x.shape, w.shape[0]);
}

/// The node's shape is x's; the gradient g must be what conv2d makes of it.
Shape shapeOfConv2dGradX(const Nodes& g, const Node& n) {
    const Node &d = operand(g, n, 0), &w = operand(g, n, 1);
    needWindow(n), needImage(n, d, "gradient");
    if (n.shape.size() != 4) mismatch(n, fmt::format("result {} must be [batch, channels, height, width]", shapeString(n.shape)));
    needConvWeight(n, w, n.shape[1]);
    if (windowOutput(n, n.shape, w.shape[0]) != d.shape)
        mismatch(n, fmt::format("gradient {} is not the convolution's output for input {}", shapeString(d.shape),
                                shapeString(n.shape)));
    return n.shape;
}

Shape shapeOfConv2dGradW(const Nodes& g, const Node& n) {
    const Node &x = operand(g, n, 0), &d = operand(g, n, 1);
    needWindow(n), needImage(n, x, "input"), needImage(n, d, "gradient");
    if (windowOutput(n, x.shape, d.shape[1]) != d.shape)
        mismatch(n, fmt::format("gradient {} is not the convolution's output for input {}", shapeString(d.shape),
                                shapeString(x.shape)));
    return {d.shape[1], x.shape[1], n.window.kh, n.window.kw};
}

/// Pooling pads with at most half the window on each side (PyTorch's rule): every window
/// then holds at least one value of the input.
void needPoolPadding(const Node& n) {
    if (2 * n.window.ph > n.window.kh || 2 * n.window.pw > n.window.kw)
        mismatch(n, fmt::format("padding {}x{} is more than half the {}x{} window", n.window.ph, n.window.pw,
                                n.window.kh, n.window.kw));
}

Shape shapeOfPool2d(const Nodes& g, const Node& n) {
    const Node& x = operand(g, n, 0);
    needWindow(n), needPoolPadding(n), needImage(n, x, "input");
    return windowOutput(n, x.shape, x.shape[1]);
}

/// x, the pooling's input [B,C,H,W], when the gradient d is the pooling's output for it.
Shape poolGradShape(const Node& n, const Shape& x, const Node& d) {
    needWindow(n), needPoolPadding(n), needImage(n, d, "gradient");
    if (x.size() != 4) mismatch(n, fmt::format("input {} must be [batch, channels, height, width]", shapeString(x)));
    if (windowOutput(n, x, x[1]) != d.shape)
        mismatch(n, fmt::format("gradient {} is not the pooling's output for input {}", shapeString(d.shape),
                                shapeString(x)));
    return x;
}

Shape shapeOfMaxPool2dGrad(const Nodes& g, const Node& n) {
    const Node& x = operand(g, n, 0);
    needImage(n, x, "input");
    return poolGradShape(n, x.shape, operand(g, n, 1));
}

/// The node's shape is x's.
Shape shapeOfAvgPool2dGrad(const Nodes& g, const Node& n) { return poolGradShape(n, n.shape, operand(g, n, 0)); }

Shape shapeOfLayerNormNormalise(const Nodes& g, const Node& n) {
    const Node& x = operand(g, n, 0);
    if (x.shape.empty() || x.type != DType::Real)
        mismatch(n, fmt::format("operand must be a real tensor of rank 1 or more, got {}", shapeString(x.shape)));
    return x.shape;
}

Shape shapeOfLayerNormNormaliseGrad(const Nodes& g, const Node& n) {
    const Node& d = operand(g, n, 1);
    if (d.shape != shapeOfLayerNormNormalise(g, n) || d.type != DType::Real) mismatch(n, "operands do not fit");
    return d.shape;
}

Shape shapeOfCrossEntropyGrad(const Nodes& g, const Node& n) {
    shapeOfCrossEntropy(g, n);
    return operand(g, n, 0).shape;
}

Shape shapeOfPairwiseGrad(const Nodes& g, const Node& n) {
    shapeOfPairwiseLoss(g, n);
    return operand(g, n, 0).shape;
}


Shape shapeOfMap(const Nodes& g, const Node& n) {
    if (n.in.empty()) mismatch(n, "needs at least one operand");
    if (!n.expr) mismatch(n, "has no expression");
    if (n.expr->leaves & ~scalar::leafBit(scalar::Kind::Arg))
        mismatch(n, fmt::format("expression {} must be in operands a0, a1, ... only", scalar::print(n.expr)));
    scalar::postOrder(n.expr, [&](const scalar::ExprNode& e) {
        if (e.op == scalar::Kind::Arg && !(e.value >= 0 && size_t(e.value) < n.in.size()))
            mismatch(n, fmt::format("expression uses a{} but has {} operands", e.value, n.in.size()));
    });
    // numpy's broadcasting: right-aligned, each dimension the one size other than 1 (or 1).
    Shape result;
    for (size_t i = 0; i < n.in.size(); ++i) {
        const Node& a = operand(g, n, i);
        if (a.type != DType::Real) mismatch(n, fmt::format("operand {} must be real", i));
        if (a.shape.size() > result.size()) result.insert(result.begin(), a.shape.size() - result.size(), 1);
        const size_t lead = result.size() - a.shape.size();
        for (size_t d = 0; d < a.shape.size(); ++d) {
            int64_t& r = result[lead + d];
            if (a.shape[d] == r || a.shape[d] == 1) continue;
            if (r != 1) // result: the shape the operands before this one make
                mismatch(n, fmt::format("operand {} has shape {}, which does not broadcast with {}", i,
                                        shapeString(a.shape), shapeString(result)));
            r = a.shape[d];
        }
    }
    return result;
}

Shape shapeOfBatchNorm(const Nodes& g, const Node& n) {
    const Node &x = operand(g, n, 0), &w = operand(g, n, 1), &b = operand(g, n, 2);
    needChannels(n, x), needRank(n, w, 1, "weight"), needRank(n, b, 1, "bias");
    if (w.shape[0] != x.shape[1] || b.shape[0] != x.shape[1])
        mismatch(n, fmt::format("input {} with weight {} and bias {}", shapeString(x.shape),
                                shapeString(w.shape), shapeString(b.shape)));
    if (x.shape.size() == 2 && x.shape[0] < 2)
        mismatch(n, "training-mode batch normalisation needs a batch of at least 2");
    if (elementCount(x.shape) / x.shape[1] < 2) // PyTorch: more than one value per channel
        mismatch(n, fmt::format("training-mode batch normalisation needs at least 2 values per channel; "
                                "input {} has 1", shapeString(x.shape)));
    return x.shape;
}

Shape shapeOfCrossEntropy(const Nodes& g, const Node& n) {
    const Node &z = operand(g, n, 0), &t = operand(g, n, 1);
    if (z.shape.size() != 2)
        mismatch(n, fmt::format("logits must be [batch, classes], got {} (use flatten)", shapeString(z.shape)));
    if (t.type != DType::Index || t.shape != Shape{z.shape[0]})
        mismatch(n, fmt::format("labels must be {} class indices, got {}",
                                shapeString({z.shape[0]}), shapeString(t.shape)));
    return {};
}

Shape shapeOfPairwiseLoss(const Nodes& g, const Node& n) {
    const Node &z = operand(g, n, 0), &t = operand(g, n, 1);
    needRank(n, z, 2, "prediction");
    if (t.shape != z.shape || t.type != DType::Real)
        mismatch(n, fmt::format("targets {} must have the prediction's shape {}",
                                shapeString(t.shape), shapeString(z.shape)));
    return {};
}

// ---- Sequences [B,T,...]: the recurrent loop and the last step.

/// The cell attribute is set, and `expr` is the rnn's activation in a0 (null for the others).
void needCell(const Node& n) {
    if (n.cell == Cell::None) mismatch(n, "has no cell");
    if ((n.cell == Cell::Rnn) != (n.expr != nullptr))
        mismatch(n, n.cell == Cell::Rnn ? "an rnn cell needs its activation in expr"
                                        : "only an rnn cell has an activation");
    if (n.expr && (n.expr->leaves & ~scalar::leafBit(scalar::Kind::Arg)))
        mismatch(n, fmt::format("activation {} must be in a0 only", scalar::print(n.expr)));
    if (n.expr)
        scalar::postOrder(n.expr, [&](const scalar::ExprNode& e) {
            if (e.op == scalar::Kind::Arg && e.value != 0)
                mismatch(n, "the activation may use a0 only");
        });
}

/// xp[B,T,G H], w_hh[G H,H], b_hh[G H]: returns H.
int64_t needScanOperands(const Node& n, const Node& xp, const Node& w, const Node& b) {
    needCell(n);
    needRank(n, xp, 3, "input projection"), needRank(n, w, 2, "recurrent weight"),
        needRank(n, b, 1, "recurrent bias");
    const int64_t G = cellGates(n.cell), H = w.shape[1];
    if (w.shape[0] != G * H || xp.shape[2] != G * H || b.shape[0] != G * H)
        mismatch(n, fmt::format("input projection {}, recurrent weight {} and bias {} do not fit a "
                                "{} cell of {} gates "
                                "({} rows each)",
                                shapeString(xp.shape), shapeString(w.shape), shapeString(b.shape),
                                cellName(n.cell), G, H));
    return H;
}

Shape shapeOfScan(const Nodes& g, const Node& n) {
    const Node& xp = operand(g, n, 0);
    const int64_t H = needScanOperands(n, xp, operand(g, n, 1), operand(g, n, 2));
    return {xp.shape[0], xp.shape[1], H};
}

Shape shapeOfScanState(const Nodes& g, const Node& n) {
    const Node& xp = operand(g, n, 0);
    const int64_t H = needScanOperands(n, xp, operand(g, n, 1), operand(g, n, 2));
    return {xp.shape[0], xp.shape[1], cellStates(n.cell) * H};
}

/// h[B,T,H], state[B,T,S H], dy[B,T,H], w_hh[G H,H]: dxp, dW_hh, db_hh or the norms by the op.
Shape shapeOfScanGrad(const Nodes& g, const Node& n) {
    needCell(n);
    const Node &h = operand(g, n, 0), &st = operand(g, n, 1), &dy = operand(g, n, 2),
               &w = operand(g, n, 3);
    needRank(n, h, 3, "hidden sequence"), needRank(n, st, 3, "state"),
        needRank(n, dy, 3, "gradient");
    needRank(n, w, 2, "recurrent weight");
    const int64_t B = h.shape[0], T = h.shape[1], H = h.shape[2], G = cellGates(n.cell);
    if (dy.shape != h.shape || st.shape != Shape{B, T, cellStates(n.cell) * H} ||
        w.shape != Shape{G * H, H})
        mismatch(
            n,
            fmt::format(
                "hidden sequence {}, state {}, gradient {} and recurrent weight {} do not fit a {} "
                "cell",
                shapeString(h.shape), shapeString(st.shape), shapeString(dy.shape),
                shapeString(w.shape), cellName(n.cell)));
    switch (n.op) {
    case Op::ScanGrad: return {B, T, G * H};
    case Op::ScanGradW: return {G * H, H};
    case Op::ScanGradB: return {G * H};
    default: return {T};
    }
}

Shape shapeOfLastStep(const Nodes& g, const Node& n) {
    const Node& x = operand(g, n, 0);
    needRank(n, x, 3, "sequence");
    return {x.shape[0], x.shape[2]};
}

/// The node's shape is the sequence's [B,T,K]; g is [B,K].
Shape shapeOfLastStepGrad(const Nodes& g, const Node& n) {
    const Node& d = operand(g, n, 0);
    needRank(n, d, 2, "gradient");
    if (n.shape.size() != 3 || n.shape[0] != d.shape[0] || n.shape[2] != d.shape[1])
        mismatch(n, fmt::format("gradient {} is not the last step of {}", shapeString(d.shape),
                                shapeString(n.shape)));
    return n.shape;
}

using ShapeRule = Shape (*)(const Nodes&, const Node&);
const ShapeRule kShapeRules[] = {
#define GRADC_OP(name, spelling, arity, traits, attrs, shape, grad) shapeOf##shape,
#include "Ops.def"
};

} // namespace

ValueId Graph::add(Node n) {
    const OpDesc& d = describe(n.op);
    internal_assert(d.arity < 0 || int(n.in.size()) == d.arity, d.spelling);
    for (ValueId v : n.in) internal_assert(v < nodes.size(), "operand defined after its use");
    internal_assert(n.fn < 0 || size_t(n.fn) < activations.size(), "map refers to a missing activation");
    n.shape = kShapeRules[size_t(n.op)](nodes, n);
    for (int64_t dim : n.shape)
        if (dim <= 0 || dim > kMaxTensorElements)
            throw UserError(n.loc, fmt::format("size {} is out of range (1 to 2^31)", dim));
    // Each dimension is at most 2^31, so a running product of at most 2^31 and one dimension
    // cannot overflow before the check.
    int64_t count = 1;
    for (int64_t dim : n.shape)
        if ((count *= dim) > kMaxTensorElements)
            throw UserError(n.loc, fmt::format("tensor {} has {}elements; the limit is 2^31", shapeString(n.shape),
                                               n.shape.size() <= 2 ? fmt::format("{} ", elementCount(n.shape)) : "more than 2^31 "));
    nodes.push_back(std::move(n));
    return ValueId(nodes.size() - 1);
}

ValueId Graph::output(OutputRole role, const std::string& name) const {
    for (auto& o : outputs)
        if (o.role == role && o.name == name) return o.value;
    internal_assert(false, "no output " + outputLabel({role, name, 0}));
}

std::string outputLabel(const Output& o) {
    switch (o.role) {
    case OutputRole::Logits: return "logits";
    case OutputRole::Loss: return "loss";
    case OutputRole::Preact: return "preact:" + o.name;
    case OutputRole::NormInput: return "bnin:" + o.name;
    case OutputRole::LayerOutput: return "layer:" + o.name;
    case OutputRole::Grad: return "grad:" + o.name;
    case OutputRole::ThroughTime: return "through:" + o.name;
    case OutputRole::GradNormSq: return "grad_norm_sq";
    }
    return "?";
}

int64_t Graph::parameterCount() const {
    int64_t total = 0;
    for (auto& p : params) total += elementCount(nodes[p.node].shape);
    return total;
}

int64_t Graph::bufferCount() const {
    int64_t total = 0;
    for (auto& b : buffers) total += b.size;
    return total;
}

static std::string printInit(const Init& init) {
    std::string s = init.scheme;
    if (!init.args.empty()) {
        s += "(";
        for (size_t i = 0; i < init.args.size(); ++i) s += fmt::format("{}{}", i ? "," : "", init.args[i]);
        s += ")";
    }
    return s;
}

std::string printGraph(const Graph& g) {
    std::string out = fmt::format("graph {} batch={} loss={}\n", g.model, g.batch, g.lossKind);
    for (size_t i = 0; i < g.activations.size(); ++i) {
        const Activation& a = g.activations[i];
        out += fmt::format("  fn{} {} = {}\n", i, a.name, scalar::print(a.formula));
        if (a.derivative) out += fmt::format("      d/dx = {}\n", scalar::print(a.derivative));
        if (a.derivativeByOutput)
            out += fmt::format("      d/dx = {}  (y = fn{}(x))\n", scalar::print(a.derivativeByOutput), i);
    }
    std::vector<const ParamInfo*> paramOf(g.nodes.size(), nullptr);
    for (auto& p : g.params) paramOf[p.node] = &p;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
        const Node& n = g.nodes[i];
        std::string line = fmt::format("  %{} = {}", i, describe(n.op).spelling);
        std::string attrs = printAttrs(n);
        if (!attrs.empty()) line += "[" + attrs + "]";
        if (!n.name.empty()) line += " " + attrValue(n.name);
        for (size_t k = 0; k < n.in.size(); ++k) line += fmt::format("{} %{}", k ? "," : "", n.in[k]);
        line += fmt::format(" : {}{}", n.type == DType::Index ? "i32" : "real", shapeString(n.shape));
        if (paramOf[i]) line += " init=" + printInit(paramOf[i]->init);
        out += line + "\n";
    }
    for (auto& o : g.outputs) out += fmt::format("  output {} = %{}\n", outputLabel(o), o.value);
    return out;
}

std::string dotGraph(const Graph& g) {
    // A DOT string holds any text: quotes and backslashes escaped, newlines as \n, and bytes
    // that are not UTF-8 replaced (a model is named after its file).
    auto quoted = [](const std::string& s) {
        std::string out = "\"";
        for (char c : validUtf8(s)) {
            if (c == '"' || c == '\\') out += '\\';
            if (c == '\n') out += "\\n";
            else if (c != '\r') out += c;
        }
        return out + "\"";
    };
    std::vector<const ParamInfo*> paramOf(g.nodes.size(), nullptr);
    for (auto& p : g.params) paramOf[p.node] = &p;
    std::vector<std::string> outputOf(g.nodes.size());
    for (auto& o : g.outputs) outputOf[o.value] += (outputOf[o.value].empty() ? "" : ", ") + outputLabel(o);
    std::string out = fmt::format("digraph {} {{\n  graph [rankdir=TB, label={}, labelloc=t];\n"
                                  "  node [shape=box, style=\"rounded,filled\", fillcolor=white, fontname=\"sans-serif\", "
                                  "fontsize=10];\n",
                                  quoted(g.model), quoted(fmt::format("{} (batch {})", g.model, g.batch)));
    for (size_t i = 0; i < g.nodes.size(); ++i) {
        const Node& n = g.nodes[i];
        std::string label = n.op == Op::Input || n.op == Op::Param ? n.name : std::string(describe(n.op).spelling);
        const std::string attrs = printAttrs(n);
        if (!attrs.empty() && n.op != Op::Input && n.op != Op::Param) label += "\n" + attrs;
        label += "\n" + shapeString(n.shape);
        const char* fill = paramOf[i] ? "lightblue" : n.op == Op::Input ? "lightgrey" : "white";
        if (!outputOf[i].empty()) label += "\n-> " + outputOf[i], fill = "darkolivegreen1";
        out += fmt::format("  n{} [label={}, fillcolor={}];\n", i, quoted(label), fill);
        for (ValueId v : n.in) out += fmt::format("  n{} -> n{};\n", v, i);
    }
    return out + "}\n";
}

std::string verify(const Graph& g) {
    std::set<std::string> names;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
        const Node& n = g.nodes[i];
        const OpDesc& d = describe(n.op);
        if (d.arity >= 0 ? int(n.in.size()) != d.arity : n.in.empty())
            return fmt::format("%{}: {} has {} operands, expected {}", i, d.spelling, n.in.size(), d.arity);
        for (ValueId v : n.in)
            if (v >= i) return fmt::format("%{}: operand %{} is not defined before it", i, v);
        if ((n.op == Op::Input || n.op == Op::Param) && !names.insert(n.name).second)
            return fmt::format("%{}: tensor name '{}' is used twice", i, n.name);
        std::string undeclared;
#define GRADC_ATTR(kind, field, type, init) \
        if (!(d.attrs & attr::kind) && !(n.field == kDefaultAttrs.field)) undeclared = #field;
#include "Ops.def"
        if (!undeclared.empty())
            return fmt::format("%{}: {} has attribute {}, which it does not declare", i, d.spelling, undeclared);
        if ((d.attrs & attr::Name) && n.name.empty()) return fmt::format("%{}: {} has no name", i, d.spelling);
        if (n.fn >= 0 && size_t(n.fn) >= g.activations.size())
            return fmt::format("%{}: {} refers to missing activation {}", i, d.spelling, n.fn);
        if (!d.has(trait::Leaf)) {
            try {
                if (kShapeRules[size_t(n.op)](g.nodes, n) != n.shape)
                    return fmt::format("%{}: recorded shape {} differs from the shape rule's", i,
                                       shapeString(n.shape));
            } catch (const UserError& e) {
                return fmt::format("%{}: {}", i, e.what());
            }
        }
    }
    for (size_t i = 0; i < g.nodes.size(); ++i) { // a reverse loop reads its own forward loop
        const Node& n = g.nodes[i];
        if (n.op != Op::ScanGrad && n.op != Op::ScanGradW && n.op != Op::ScanGradB &&
            n.op != Op::ScanGradNorm)
            continue;
        const Node &h = g.nodes[n.in[0]], &st = g.nodes[n.in[1]];
        if (h.op != Op::Scan || st.op != Op::ScanState || h.in != st.in || h.cell != n.cell ||
            st.cell != n.cell || h.expr != n.expr || st.expr != n.expr || n.in[3] != h.in[1])
            return fmt::format(
                "%{}: {} does not read a scan, its scan_state and its recurrent weight", i,
                describe(n.op).spelling);
    }
    for (auto& p : g.params)
        if (p.node >= g.nodes.size() || g.nodes[p.node].op != Op::Param || g.nodes[p.node].name != p.name)
            return fmt::format("parameter '{}' does not name a param node", p.name);
    for (auto& o : g.outputs)
        if (o.value >= g.nodes.size()) return fmt::format("output '{}' refers to a missing node", outputLabel(o));
    return "";
}

// ---- Builders of map nodes.

ValueId addMap(Graph& g, scalar::Expr expr, std::vector<ValueId> ins, SourceLoc loc, int32_t fn) {
    internal_assert(expr != nullptr, "map without an expression");
    // Keep the operands the expression uses, in order, and number them from a0 up.
    std::vector<bool> used(ins.size(), false);
    scalar::postOrder(expr, [&](const scalar::ExprNode& e) {
        if (e.op == scalar::Kind::Arg && e.value >= 0 && size_t(e.value) < ins.size()) used[size_t(e.value)] = true;
    });
    std::vector<ValueId> kept;
    std::vector<scalar::Expr> renumber;
    for (size_t i = 0; i < ins.size(); ++i) {
        renumber.push_back(used[i] ? scalar::arg(int(kept.size())) : scalar::arg(int(i)));
        if (used[i]) kept.push_back(ins[i]);
    }
    if (kept.size() != ins.size()) expr = scalar::substituteArgs(expr, renumber);
    if (kept.empty()) { // a constant: the widest operand still gives the result's shape
        ValueId widest = ins.at(0);
        for (ValueId v : ins)
            if (g[v].shape.size() > g[widest].shape.size()) widest = v;
        kept.push_back(widest);
    }
    Node n = makeNode(Op::Map, std::move(loc), std::move(kept));
    n.expr = std::move(expr);
    n.fn = fn;
    return g.add(std::move(n));
}

ValueId addActivation(Graph& g, int32_t fn, ValueId x, SourceLoc loc) {
    internal_assert(fn >= 0 && size_t(fn) < g.activations.size(), "no activation " + std::to_string(fn));
    return addMap(g, scalar::substitute(g.activations[size_t(fn)].formula, scalar::arg(0)), {x}, std::move(loc), fn);
}

ValueId addBiasAdd(Graph& g, ValueId a, ValueId b, SourceLoc loc) {
    return addMap(g, scalar::make(scalar::Kind::Add, {scalar::arg(0), scalar::arg(1)}), {a, b}, std::move(loc));
}

static ValueId addSameShape(Graph& g, const char* what, scalar::Kind op, ValueId a, ValueId b, SourceLoc loc) {
    if (g[a].shape != g[b].shape || g[a].type != g[b].type)
        throw UserError(loc, fmt::format("{}: operands have different shapes {} and {}", what,
                                         shapeString(g[a].shape), shapeString(g[b].shape)));
    return addMap(g, scalar::make(op, {scalar::arg(0), scalar::arg(1)}), {a, b}, std::move(loc));
}

ValueId addBatchNormEval(Graph& g, const std::vector<ValueId>& ins, double eps, SourceLoc loc) {
    internal_assert(ins.size() == 5, "batchnorm_eval takes x, weight, bias, mean and variance");
    using scalar::Kind;
    auto a = [](int i) { return scalar::arg(i); };
    // ((x - μ) γ) / sqrt(v + eps) + β
    scalar::Expr sd = scalar::make(Kind::Sqrt, {scalar::make(Kind::Add, {a(4), scalar::constant(eps)})});
    scalar::Expr e = scalar::make(Kind::Add, {scalar::make(Kind::Div, {scalar::make(Kind::Mul, {scalar::make(Kind::Sub, {a(0), a(3)}), a(1)}), sd}), a(2)});
    return addMap(g, e, ins, std::move(loc));
}

ValueId addAdd(Graph& g, ValueId a, ValueId b, SourceLoc loc) {
    return addSameShape(g, "add", scalar::Kind::Add, a, b, std::move(loc));
}

ValueId addMul(Graph& g, ValueId a, ValueId b, SourceLoc loc) {
    return addSameShape(g, "mul", scalar::Kind::Mul, a, b, std::move(loc));
}

} // namespace gradc
