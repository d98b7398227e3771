// Graph.cpp — the op table, attributes, shape rules, printer and verifier of the Graph IR.
#include "Graph.h"

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

size_t attrHash(const std::string& s) { return std::hash<std::string>()(s); }
size_t attrHash(int32_t v) { return std::hash<int32_t>()(v); }
size_t attrHash(double v) { return std::hash<double>()(v); }
size_t attrHash(const scalar::Expr& e) { return e ? size_t(e->hash) : 0; }

const Attrs kDefaultAttrs;

} // namespace

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

/// True if `s` is a suffix of `of` ([N] of [B,N]; equal shapes too).
bool isSuffix(const Shape& s, const Shape& of) {
    return s.size() <= of.size() && std::equal(s.begin(), s.end(), of.end() - std::ptrdiff_t(s.size()));
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
    size_t widest = 0;
    for (size_t i = 0; i < n.in.size(); ++i) {
        if (operand(g, n, i).type != DType::Real) mismatch(n, fmt::format("operand {} must be real", i));
        if (operand(g, n, i).shape.size() > operand(g, n, widest).shape.size()) widest = i;
    }
    const Shape& result = operand(g, n, widest).shape;
    for (size_t i = 0; i < n.in.size(); ++i)
        if (!isSuffix(operand(g, n, i).shape, result))
            mismatch(n, fmt::format("operand {} has shape {}, which is neither {} nor a suffix of it", i,
                                    shapeString(operand(g, n, i).shape), shapeString(result)));
    return result;
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
