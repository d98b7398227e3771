// Autodiff.cpp — stage 4: reverse-mode differentiation; one gradient rule per op.
#include "Autodiff.h"

#include <fmt/format.h>

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
    ValueId add(Op op, std::vector<ValueId> operands) {
        Node n = makeNode(op, g[v].loc, std::move(operands));
        n.eps = g[v].eps;
        n.fn = g[v].fn;
        return g.add(std::move(n));
    }
};
using Grads = std::vector<std::optional<ValueId>>;
using Rule = Grads (*)(RuleContext&);

Grads gradOfLeaf(RuleContext&) { return {}; }

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

// y = x + b (broadcast):  dx = dy,  db = Σ_rows dy
Grads gradOfBiasAdd(RuleContext& c) {
    Grads out(2);
    if (c.need[0]) out[0] = *c.dy;
    if (c.need[1]) out[1] = c.add(Op::SumRows, {*c.dy});
    return out;
}

// y = f(x):  dx = dy * f'(x) as f's vjp applies it (relu: select(x <= 0, 0, dy)), through y
// when it can be written in y.
Grads gradOfAct(RuleContext& c) {
    Activation& a = c.g.activations[size_t(c.node().fn)];
    if (!a.vjp) {
        a.derivative = scalar::derivative(a.formula);
        a.derivativeByOutput = scalar::derivativeByOutput(a.formula, a.derivative);
        a.vjp = scalar::vjp(a.formula);
        a.vjpByOutput = scalar::derivativeByOutput(a.formula, a.vjp);
    }
    bool byOut = a.vjpByOutput != nullptr;
    Node n = makeNode(Op::ActGrad, c.node().loc, {byOut ? c.v : c.in(0), *c.dy});
    n.fn = c.node().fn, n.byOutput = byOut;
    return {c.g.add(std::move(n))};
}

Grads gradOfAdd(RuleContext& c) { return {*c.dy, *c.dy}; }

// Training-mode batch normalisation; the rule recomputes the batch statistics from x.
Grads gradOfBatchNorm(RuleContext& c) {
    Grads out(3);
    if (c.need[0]) out[0] = c.add(Op::BatchNormGradX, {c.in(0), c.in(1), *c.dy});
    if (c.need[1]) out[1] = c.add(Op::BatchNormGradGamma, {c.in(0), *c.dy});
    if (c.need[2]) out[2] = c.add(Op::SumRows, {*c.dy});
    return out;
}

// The loss ops are the root: their rules give the gradient for d(loss) = 1 directly,
// fused (softmax - onehot)/B, (sigmoid(z) - t)/B, 2(p - t)/n.
Grads gradOfCrossEntropy(RuleContext& c) { return {c.add(Op::CrossEntropyGrad, {c.in(0), c.in(1)}), {}}; }
Grads gradOfBCEWithLogits(RuleContext& c) { return {c.add(Op::BCEWithLogitsGrad, {c.in(0), c.in(1)}), {}}; }
Grads gradOfMSE(RuleContext& c) { return {c.add(Op::MSEGrad, {c.in(0), c.in(1)}), {}}; }

const Rule kRules[] = {
#define GRADC_OP(name, spelling, arity, shape, grad) gradOf##grad,
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
        Node sum = makeNode(Op::Add, g[target].loc, {*adjoint[target], grad});
        adjoint[target] = g.add(std::move(sum)); // fan-out: gradients add up
    };

    for (size_t i = loss + 1; i-- > 0;) {
        const ValueId v = ValueId(i);
        if (v != loss && !adjoint[v]) continue; // does not reach the loss
        if (!varies[v]) continue;
        std::vector<bool> need;
        for (ValueId in : g[v].in) need.push_back(varies[in]);
        RuleContext ctx{g, v, v == loss ? std::nullopt : adjoint[v], need};
        Grads grads = kRules[size_t(g[v].op)](ctx);
        const std::vector<ValueId> ins = g[v].in; // g grows while rules run
        for (size_t k = 0; k < grads.size(); ++k)
            if (grads[k] && need[k]) accumulate(ins[k], *grads[k]);
    }

    for (const ParamInfo& p : forward.params) {
        ValueId grad;
        if (adjoint[p.node]) {
            grad = *adjoint[p.node];
        } else { // the loss does not depend on this parameter
            Node z = makeNode(Op::Zeros, g[p.node].loc);
            z.shape = g[p.node].shape;
            grad = g.add(std::move(z));
        }
        g.outputs.push_back({OutputRole::Grad, p.name, grad});
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
