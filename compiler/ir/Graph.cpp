// Graph.cpp — the op table, shape rules, printer and verifier of the Graph IR.
#include "Graph.h"

#include <fmt/format.h>

#include <set>

namespace gradc {

static const OpDesc kOps[] = {
#define GRADC_OP(name, spelling, arity, shape, grad) {spelling, arity},
#include "Ops.def"
};

const OpDesc& describe(Op op) { return kOps[size_t(op)]; }

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

Shape shapeOfMatMulNT(const Nodes& g, const Node& n) {
    const Node &x = operand(g, n, 0), &w = operand(g, n, 1);
    needRank(n, x, 2, "input"), needRank(n, w, 2, "weight");
    if (x.shape[1] != w.shape[1])
        mismatch(n, fmt::format("input {} and weight {} do not fit (x · wᵀ needs equal inner "
                                "sizes)", shapeString(x.shape), shapeString(w.shape)));
    return {x.shape[0], w.shape[0]};
}

Shape shapeOfMatMulNN(const Nodes& g, const Node& n) {
    const Node &a = operand(g, n, 0), &w = operand(g, n, 1);
    needRank(n, a, 2, "gradient"), needRank(n, w, 2, "weight");
    if (a.shape[1] != w.shape[0]) mismatch(n, "gradient and weight do not fit");
    return {a.shape[0], w.shape[1]};
}

Shape shapeOfMatMulTN(const Nodes& g, const Node& n) {
    const Node &a = operand(g, n, 0), &x = operand(g, n, 1);
    needRank(n, a, 2, "gradient"), needRank(n, x, 2, "input");
    if (a.shape[0] != x.shape[0]) mismatch(n, "gradient and input have different batch sizes");
    return {a.shape[1], x.shape[1]};
}

Shape shapeOfSumRows(const Nodes& g, const Node& n) {
    needRank(n, operand(g, n, 0), 2, "operand");
    return {operand(g, n, 0).shape[1]};
}

Shape shapeOfBatchNormGradX(const Nodes& g, const Node& n) {
    const Node &x = operand(g, n, 0), &w = operand(g, n, 1), &d = operand(g, n, 2);
    needRank(n, x, 2, "input"), needRank(n, w, 1, "weight");
    if (d.shape != x.shape || w.shape[0] != x.shape[1]) mismatch(n, "operands do not fit");
    return x.shape;
}

Shape shapeOfBatchNormGradGamma(const Nodes& g, const Node& n) {
    const Node &x = operand(g, n, 0), &d = operand(g, n, 1);
    needRank(n, x, 2, "input");
    if (d.shape != x.shape) mismatch(n, "operands do not fit");
    return {x.shape[1]};
}

Shape shapeOfCrossEntropyGrad(const Nodes& g, const Node& n) {
    shapeOfCrossEntropy(g, n);
    return operand(g, n, 0).shape;
}

Shape shapeOfPairwiseGrad(const Nodes& g, const Node& n) {
    shapeOfPairwiseLoss(g, n);
    return operand(g, n, 0).shape;
}

Shape shapeOfBiasAdd(const Nodes& g, const Node& n) {
    const Node &y = operand(g, n, 0), &b = operand(g, n, 1);
    needRank(n, y, 2, "input"), needRank(n, b, 1, "bias");
    if (y.shape[1] != b.shape[0])
        mismatch(n, fmt::format("input {} and bias {} do not fit", shapeString(y.shape),
                                shapeString(b.shape)));
    return y.shape;
}

Shape shapeOfSameAsFirst(const Nodes& g, const Node& n) {
    if (operand(g, n, 0).type != DType::Real) mismatch(n, "operand must be real");
    return operand(g, n, 0).shape;
}

Shape shapeOfSameShapes(const Nodes& g, const Node& n) {
    const Node &a = operand(g, n, 0), &b = operand(g, n, 1);
    if (a.shape != b.shape || a.type != b.type)
        mismatch(n, fmt::format("operands have different shapes {} and {}", shapeString(a.shape),
                                shapeString(b.shape)));
    return a.shape;
}

Shape shapeOfBatchNormEval(const Nodes& g, const Node& n) {
    const Node &x = operand(g, n, 0), &m = operand(g, n, 3), &v = operand(g, n, 4);
    needRank(n, x, 2, "input"), needRank(n, m, 1, "running mean"), needRank(n, v, 1, "running variance");
    for (int i = 1; i <= 4; ++i)
        if (operand(g, n, i).shape != Shape{x.shape[1]})
            mismatch(n, fmt::format("input {} with per-feature operand {}", shapeString(x.shape),
                                    shapeString(operand(g, n, i).shape)));
    return x.shape;
}

Shape shapeOfBatchNorm(const Nodes& g, const Node& n) {
    const Node &x = operand(g, n, 0), &w = operand(g, n, 1), &b = operand(g, n, 2);
    needRank(n, x, 2, "input"), needRank(n, w, 1, "weight"), needRank(n, b, 1, "bias");
    if (w.shape[0] != x.shape[1] || b.shape[0] != x.shape[1])
        mismatch(n, fmt::format("input {} with weight {} and bias {}", shapeString(x.shape),
                                shapeString(w.shape), shapeString(b.shape)));
    if (x.shape[0] < 2)
        mismatch(n, "training-mode batch normalisation needs a batch of at least 2");
    return x.shape;
}

Shape shapeOfCrossEntropy(const Nodes& g, const Node& n) {
    const Node &z = operand(g, n, 0), &t = operand(g, n, 1);
    needRank(n, z, 2, "logits");
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

using ShapeRule = Shape (*)(const Nodes&, const Node&);
const ShapeRule kShapeRules[] = {
#define GRADC_OP(name, spelling, arity, shape, grad) shapeOf##shape,
#include "Ops.def"
};

} // namespace

ValueId Graph::add(Node n) {
    const OpDesc& d = describe(n.op);
    internal_assert(d.arity < 0 || int(n.in.size()) == d.arity, d.spelling);
    for (ValueId v : n.in) internal_assert(v < nodes.size(), "operand defined after its use");
    if (n.op == Op::Act || n.op == Op::ActGrad) internal_assert(n.fn >= 0 && size_t(n.fn) < activations.size(), "act fn");
    n.shape = kShapeRules[size_t(n.op)](nodes, n);
    for (int64_t dim : n.shape)
        if (dim <= 0 || dim > kMaxTensorElements)
            throw UserError(n.loc, fmt::format("size {} is out of range (1 to 2^31)", dim));
    // Each dimension is at most 2^31, so the product of two cannot overflow before this check.
    if (n.shape.size() <= 2 && elementCount(n.shape) > kMaxTensorElements)
        throw UserError(n.loc, fmt::format("tensor {} has {} elements; the limit is 2^31",
                                           shapeString(n.shape), elementCount(n.shape)));
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
        if (n.op == Op::Act) line += fmt::format("[fn{}]", n.fn);
        if (n.op == Op::ActGrad) line += fmt::format("[fn{},{}]", n.fn, n.byOutput ? "y" : "x");
        if (n.op == Op::BatchNormGradX || n.op == Op::BatchNormGradGamma)
            line += fmt::format("[eps={}]", n.eps);
        if (n.op == Op::BatchNorm || n.op == Op::BatchNormEval) line += fmt::format("[eps={}]", n.eps);
        if (!n.name.empty()) line += fmt::format(" \"{}\"", n.name);
        for (size_t k = 0; k < n.in.size(); ++k) line += fmt::format("{} %{}", k ? "," : "", n.in[k]);
        line += fmt::format(" : {}{}", n.type == DType::Index ? "i32" : "real", shapeString(n.shape));
        if (paramOf[i]) line += " init=" + printInit(paramOf[i]->init);
        out += line + "\n";
    }
    for (auto& o : g.outputs) out += fmt::format("  output {} = %{}\n", outputLabel(o), o.value);
    return out;
}

std::string verify(const Graph& g) {
    std::set<std::string> names;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
        const Node& n = g.nodes[i];
        const OpDesc& d = describe(n.op);
        if (d.arity >= 0 && int(n.in.size()) != d.arity)
            return fmt::format("%{}: {} has {} operands, expected {}", i, d.spelling, n.in.size(), d.arity);
        for (ValueId v : n.in)
            if (v >= i) return fmt::format("%{}: operand %{} is not defined before it", i, v);
        if ((n.op == Op::Input || n.op == Op::Param) && !names.insert(n.name).second)
            return fmt::format("%{}: tensor name '{}' is used twice", i, n.name);
        if ((n.op == Op::Act || n.op == Op::ActGrad) && (n.fn < 0 || size_t(n.fn) >= g.activations.size()))
            return fmt::format("%{}: act refers to missing function {}", i, n.fn);
        if (n.op != Op::Input && n.op != Op::Param && n.op != Op::Zeros) {
            try {
                if (kShapeRules[size_t(n.op)](g.nodes, n) != n.shape)
                    return fmt::format("%{}: recorded shape {} differs from the shape rule's", i,
                                       shapeString(n.shape));
            } catch (const UserError& e) {
                return fmt::format("%{}: {}", i, e.what());
            }
        }
    }
    for (auto& p : g.params)
        if (p.node >= g.nodes.size() || g.nodes[p.node].op != Op::Param || g.nodes[p.node].name != p.name)
            return fmt::format("parameter '{}' does not name a param node", p.name);
    for (auto& o : g.outputs)
        if (o.value >= g.nodes.size()) return fmt::format("output '{}' refers to a missing node", outputLabel(o));
    return "";
}

} // namespace gradc
