// Autodiff.cpp — stage 4: reverse-mode differentiation; one gradient rule per op.
#include "Autodiff.h"

#include <fmt/format.h>

#include <algorithm>
#include <optional>

namespace gradc {
namespace {

/// What a rule gets: the graph being extended, the node, the gradient flowing into it
/// (unset for the loss, whose gradient is 1), and which operands need a gradient.
struct RuleContext {
    Graph& g;
    ValueId v;
    std::optional<ValueId> dy;
    const std::vector<bool>& need;

    const Node& node() const { return g[v]; }
    ValueId in(size_t i) const { return g[v].in[i]; }
    /// A node of the gradient: it carries the attributes of this node its op declares too
    /// (batchnorm's eps), as Ops.def lists them.
    ValueId add(Op op, std::vector<ValueId> operands) { return addShaped(op, std::move(operands), {}); }
    /// The same for an op whose result's shape is the node's own (a reshape, sum_to, the
    /// gradient of a strided window with respect to its input): `shape`.
    ValueId addShaped(Op op, std::vector<ValueId> operands, Shape shape) {
        Node n = makeNode(op, g[v].loc, std::move(operands));
        copyAttrs(g[v], n);
        n.shape = std::move(shape);
        return g.add(std::move(n));
    }
};
using Grads = std::vector<std::optional<ValueId>>;

/// Zeros of `shape`: the gradient of a value the loss does not depend on.
ValueId addZeros(Graph& g, Shape shape, SourceLoc loc) {
    Node z = makeNode(Op::Zeros, std::move(loc));
    z.shape = std::move(shape);
    return g.add(std::move(z));
}
using Rule = Grads (*)(RuleContext&);

Grads gradOfLeaf(RuleContext&) { return {}; }

/// Σ grad² as a [1] value: a weight's [N,K] gradient by columns first (sum_rows of the squares,
/// which fusion folds into the epilogue of the product that makes the gradient), then whole.
ValueId sumOfSquares(Graph& g, ValueId grad) {
    const SourceLoc loc = g[grad].loc;
    const Shape shape = g[grad].shape;
    ValueId v = addMap(g, scalar::make(scalar::Kind::Mul, {scalar::arg(0), scalar::arg(0)}), {grad}, loc);
    if (shape.size() == 2) v = g.add(makeNode(Op::SumRows, loc, {v}));
    Node total = makeNode(Op::SumTo, loc, {v});
    total.shape = {1};
    return g.add(std::move(total));
}

Grads gradOfMissing(RuleContext& c) {
    internal_assert(false, fmt::format("op '{}' has no gradient rule", describe(c.node().op).spelling));
    return {};
}

// y = x · wᵀ:  dx = dy · w,  dw = dyᵀ · x
Grads gradOfMatMulNT(RuleContext& c) {
    Grads out(2);
    if (c.need[0]) out[0] = c.add(Op::MatMulNN, {*c.dy, c.in(1)});
    if (c.need[1]) out[1] = c.add(Op::MatMulTN, {*c.dy, c.in(0)});
    return out;
}

// y = reshape(x):  dx = reshape(dy) back to x's shape
Grads gradOfReshape(RuleContext& c) { return {c.addShaped(Op::Reshape, {*c.dy}, c.g[c.in(0)].shape)}; }

/// Sums `d` (the result's shape) down to the operand's shape `to`, over each dimension the
/// operand was broadcast along: sum_rows over leading dimensions while `to` is a suffix of
/// d's shape (a dense layer's bias: the code of every model without images is unchanged),
/// else one sum_to (a conv bias [O,1,1] against [B,O,H,W]). The shape is taken by value:
/// every node added moves the graph's nodes, and a reference into them would dangle.
ValueId reduceTo(RuleContext& c, ValueId d, const Shape to) {
    // A maximum's gradient puts each window's g at one place of its window: summed over
    // every place of the image, it is g summed over the windows, a quarter of the reads for
    // 2x2 pools (a conv bias under a relu and a maxpool).
    const size_t n = c.g[d].shape.size();
    if (c.g[d].op == Op::MaxPool2dGrad && to.size() >= 2 && to.size() <= n && to[to.size() - 1] == 1 &&
        to[to.size() - 2] == 1)
        d = c.g[d].in[1];
    if (!isSuffix(to, c.g[d].shape)) return c.addShaped(Op::SumTo, {d}, to);
    while (c.g[d].shape.size() > to.size()) d = c.add(Op::SumRows, {d});
    return d;
}

/// The gradient map g * f'(a_i) for operand i of y = map[f](a...) and incoming gradient dy:
/// the partial derivative's vector-Jacobian product as scalar::vjp gives it (a select passes
/// g only to its taken arm, as PyTorch's backward does), then summed over the dimensions
/// the operand was broadcast along. dy itself when the product is g (add, bias add).
std::optional<ValueId> partial(RuleContext& c, size_t i) {
    const Node& n = c.node();
    const size_t count = n.in.size();
    // In the algebra, d/dx treats every leaf but x as a constant: a_i becomes x, the other
    // operands parameter slots, and back.
    std::vector<scalar::Expr> toVar, fromVar;
    for (size_t k = 0; k < count; ++k) {
        toVar.push_back(k == i ? scalar::var() : scalar::param(int(k)));
        fromVar.push_back(scalar::arg(int(k)));
    }
    scalar::Expr d = scalar::vjp(scalar::substituteArgs(n.expr, toVar));
    d = scalar::substituteGrad(scalar::substituteParams(scalar::substitute(d, scalar::arg(int(i))), fromVar),
                               scalar::arg(int(count)));
    d = scalar::simplify(d);
    if (!(d->leaves & scalar::leafBit(scalar::Kind::Arg))) // a constant (0: a comparison's operand)
        return addZeros(c.g, c.g[c.in(i)].shape, n.loc);
    ValueId dx;
    if (d == scalar::arg(int(count))) {
        dx = *c.dy;
    } else {
        std::vector<ValueId> ins = n.in;
        ins.push_back(*c.dy);
        dx = addMap(c.g, d, std::move(ins), n.loc);
    }
    return reduceTo(c, dx, c.g[c.in(i)].shape);
}

// y = map[f](a0, a1, ...):  da_i = Σ_broadcast dy * ∂f/∂a_i. An activation (one operand, `fn`
// set) uses its vjp from the table, written through y = f(x) when the algebra allows: the
// backward pass then reads the activation's output, which the forward pass keeps anyway.
Grads gradOfMap(RuleContext& c) {
    const Node& n = c.node();
    if (n.fn < 0) {
        Grads out(n.in.size()); // partial adds nodes: `n` is not read after the first
        for (size_t i = 0; i < out.size(); ++i)
            if (c.need[i]) out[i] = partial(c, i);
        return out;
    }
    Activation& a = c.g.activations[size_t(n.fn)];
    if (!a.vjp) {
        a.derivative = scalar::derivative(a.formula);
        a.derivativeByOutput = scalar::derivativeByOutput(a.formula, a.derivative);
        a.vjp = scalar::vjp(a.formula);
        a.vjpByOutput = scalar::derivativeByOutput(a.formula, a.vjp);
    }
    bool byOut = a.vjpByOutput != nullptr;
    // vjp in x (or y) and g: the value becomes a0, the incoming gradient a1.
    scalar::Expr d = byOut ? scalar::substituteOut(a.vjpByOutput, scalar::arg(0)) : scalar::substitute(a.vjp, scalar::arg(0));
    d = scalar::substituteGrad(d, scalar::arg(1));
    if (d == scalar::arg(1)) return {*c.dy}; // identity
    // y = f(x) pooled by its maximum only: dy = maxpool2d_grad(y, g) is g at each window's
    // maximum m, where y is m, so the vjp, linear in g, can scale g by f' at m before it is
    // routed: on the pooled image, a quarter of the size for 2x2 windows, and no pass over
    // the full image but the routing's.
    if (byOut && c.g[*c.dy].op == Op::MaxPool2dGrad && c.g[*c.dy].in[0] == c.v) {
        const ValueId route = *c.dy, g = c.g[route].in[1];
        const SourceLoc loc = n.loc; // the nodes move as they grow
        Node pool = makeNode(Op::MaxPool2d, loc, {c.v});
        copyAttrs(c.g[route], pool);
        const ValueId m = c.g.add(std::move(pool));
        Node back = makeNode(Op::MaxPool2dGrad, loc, {c.v, addMap(c.g, d, {m, g}, loc)});
        copyAttrs(c.g[route], back);
        return {c.g.add(std::move(back))};
    }
    return {addMap(c.g, d, {byOut ? c.v : c.in(0), *c.dy}, n.loc)};
}

// Training-mode batch normalisation; the rule recomputes the batch statistics from x. β's
// gradient is dy summed over everything but the channels (dimension 1).
Grads gradOfBatchNorm(RuleContext& c) {
    Grads out(3);
    const Shape xs = c.g[c.in(0)].shape;
    if (c.need[0]) out[0] = c.add(Op::BatchNormGradX, {c.in(0), c.in(1), *c.dy});
    if (c.need[1]) out[1] = c.add(Op::BatchNormGradGamma, {c.in(0), *c.dy});
    if (c.need[2]) {
        if (xs.size() == 2) {
            out[2] = c.add(Op::SumRows, {*c.dy});
        } else { // [B,C,...] -> [C,1,...] -> [C]
            Shape perChannel(xs.size() - 1, 1);
            perChannel[0] = xs[1];
            out[2] = c.addShaped(Op::Reshape, {c.addShaped(Op::SumTo, {*c.dy}, perChannel)}, {xs[1]});
        }
    }
    return out;
}

// y = conv2d(x, w):  dx = conv2d_grad_x(dy, w) (x's shape),  dw = conv2d_grad_w(x, dy)
Grads gradOfConv2d(RuleContext& c) {
    Grads out(2);
    const Shape xs = c.g[c.in(0)].shape;
    if (c.need[0]) out[0] = c.addShaped(Op::Conv2dGradX, {*c.dy, c.in(1)}, xs);
    if (c.need[1]) out[1] = c.add(Op::Conv2dGradW, {c.in(0), *c.dy});
    return out;
}

// y = maxpool2d(x):  dx = dy routed to each window's first maximum
Grads gradOfMaxPool2d(RuleContext& c) { return {c.add(Op::MaxPool2dGrad, {c.in(0), *c.dy})}; }

// y = avgpool2d(x):  dx = dy / (KH KW) spread over each window
Grads gradOfAvgPool2d(RuleContext& c) {
    const Shape xs = c.g[c.in(0)].shape;
    return {c.addShaped(Op::AvgPool2dGrad, {*c.dy}, xs)};
}

// Layer normalisation's x̂; the rule recomputes each row's statistics from x.
Grads gradOfLayerNormNormalise(RuleContext& c) {
    Grads out(1);
    if (c.need[0]) out[0] = c.add(Op::LayerNormNormaliseGrad, {c.in(0), *c.dy});
    return out;
}

// h = scan(xp, w_hh, b_hh): the reverse loop (Ops.def) reads h, the states the forward loop
// saves (scan_state, a sibling of the scan), the adjoint of the whole sequence and w_hh. Its
// results are four siblings: dxp, dW_hh, db_hh and the norms of dL/dh_t, which the
// through-time report reads (always made: differentiate makes every scan's norms an output,
// through:LAYER).
Grads gradOfScan(RuleContext& c) {
    Grads out(3);
    const ValueId state = c.add(Op::ScanState, {c.in(0), c.in(1), c.in(2)});
    const std::vector<ValueId> ins = {c.v, state, *c.dy, c.in(1)};
    if (c.need[0]) out[0] = c.add(Op::ScanGrad, ins);
    if (c.need[1]) out[1] = c.add(Op::ScanGradW, ins);
    if (c.need[2]) out[2] = c.add(Op::ScanGradB, ins);
    c.add(Op::ScanGradNorm, ins);
    return out;
}

// y = x[:, T-1]:  dx = dy at step T-1, zeros elsewhere
Grads gradOfLastStep(RuleContext& c) {
    const Shape xs = c.g[c.in(0)].shape;
    return {c.addShaped(Op::LastStepGrad, {*c.dy}, xs)};
}

// The loss ops are the root: their rules give the gradient for d(loss) = 1 directly,
// fused (softmax - onehot)/B, (sigmoid(z) - t)/B, 2(p - t)/n.
Grads gradOfCrossEntropy(RuleContext& c) { return {c.add(Op::CrossEntropyGrad, {c.in(0), c.in(1)}), {}}; }
Grads gradOfBCEWithLogits(RuleContext& c) { return {c.add(Op::BCEWithLogitsGrad, {c.in(0), c.in(1)}), {}}; }
Grads gradOfMSE(RuleContext& c) { return {c.add(Op::MSEGrad, {c.in(0), c.in(1)}), {}}; }

const Rule kRules[] = {
#define GRADC_OP(name, spelling, arity, traits, attrs, shape, grad) gradOf##grad,
#include "Ops.def"
};

} // namespace

Graph differentiate(const Graph& forward, const AutodiffOptions& opts) {
    Graph g = forward;
    const ValueId loss = g.output(OutputRole::Loss);
    const size_t n = g.nodes.size();

    // Which values depend on something we differentiate with respect to.
    std::vector<bool> varies(n, false);
    for (size_t i = 0; i < n; ++i) {
        const Node& node = g.nodes[i];
        varies[i] = node.op == Op::Param || (opts.inputGradient && node.op == Op::Input && node.name == "x");
        for (ValueId in : node.in) varies[i] = varies[i] || varies[in];
    }

    std::vector<std::optional<ValueId>> adjoint(n);
    auto accumulate = [&](ValueId target, ValueId grad) {
        if (!adjoint[target]) {
            adjoint[target] = grad;
            return;
        }
        adjoint[target] = addAdd(g, *adjoint[target], grad, g[target].loc); // fan-out: gradients add up
    };

    // Gradient-norm clipping: Σ g² of each parameter's gradient, made as soon as the gradient
    // is complete (the walk has passed every node that reads the parameter), so that its nodes
    // follow the ones that produce the gradient and fusion folds the sum into their kernel.
    std::vector<int> readers(opts.gradNorm ? n : 0, 0);
    for (size_t i = 0; i < readers.size() && i <= loss; ++i)
        for (ValueId in : g.nodes[i].in)
            if (g[in].op == Op::Param) ++readers[in];
    std::vector<ValueId> squares;

    for (size_t i = loss + 1; i-- > 0;) {
        const ValueId v = ValueId(i);
        const std::vector<ValueId> ins = g[v].in; // g grows while rules run
        if ((v == loss || adjoint[v]) && varies[v]) { // reaches the loss, and depends on a parameter
            std::vector<bool> need;
            for (ValueId in : ins) need.push_back(varies[in]);
            RuleContext ctx{g, v, v == loss ? std::nullopt : adjoint[v], need};
            Grads grads = kRules[size_t(g[v].op)](ctx);
            for (size_t k = 0; k < grads.size(); ++k)
                if (grads[k] && need[k]) accumulate(ins[k], *grads[k]);
        }
        if (opts.gradNorm)
            for (ValueId in : ins)
                if (g[in].op == Op::Param && --readers[in] == 0 && adjoint[in])
                    squares.push_back(sumOfSquares(g, *adjoint[in]));
    }

    for (const ParamInfo& p : forward.params) {
        ValueId grad = adjoint[p.node] ? *adjoint[p.node] : addZeros(g, g[p.node].shape, g[p.node].loc);
        g.outputs.push_back({OutputRole::Grad, p.name, grad});
    }
    // Each recurrent layer's ‖dL/dh_t‖: its reverse loop's scan_grad_norm, or zeros when the
    // loss does not reach the layer, so that every layout entry is written.
    for (const LayerInfo& layer : forward.layers) {
        if (forward[layer.value].op != Op::Scan) continue;
        std::optional<ValueId> norms;
        for (size_t i = n; i < g.nodes.size(); ++i)
            if (g.nodes[i].op == Op::ScanGradNorm && g.nodes[i].in[0] == layer.value)
                norms = ValueId(i);
        if (!norms) norms = addZeros(g, {forward[layer.value].shape[1]}, forward[layer.value].loc);
        g.outputs.push_back({OutputRole::ThroughTime, layer.name, *norms});
    }
    if (opts.gradNorm) { // Σ over the parameters, in the order their gradients were completed
        scalar::Expr total;
        for (size_t k = 0; k < squares.size(); ++k)
            total = k == 0 ? scalar::arg(0) : scalar::make(scalar::Kind::Add, {total, scalar::arg(int(k))});
        const ValueId sum = squares.empty() ? addZeros(g, {1}, g[loss].loc) : addMap(g, total, squares, g[loss].loc);
        g.outputs.push_back({OutputRole::GradNormSq, "", sum});
    }
    if (opts.inputGradient) {
        for (size_t i = 0; i < n; ++i)
            if (g[ValueId(i)].op == Op::Input && g[ValueId(i)].name == "x") {
                internal_assert(adjoint[i].has_value(), "the loss does not depend on the input");
                g.outputs.push_back({OutputRole::Grad, "x", *adjoint[i]});
            }
    }
    std::string err = verify(g);
    internal_assert(err.empty(), err);
    return g;
}

} // namespace gradc
