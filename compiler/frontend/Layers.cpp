// Layers.cpp — the layer table (see Layers.h): one entry per layer of the model language,
// with the function that builds its graph. Shapes are checked by the ops' shape rules; what
// is left to check here is what the ops cannot see (option ranges, what a module records).
#include "Layers.h"

#include <fmt/format.h>

namespace gradc {

void LayerBuilder::record(const std::string& module, std::string what, ValueId in, ValueId out,
                          const SourceLoc& loc) {
    Graph& g = graph();
    g.layers.push_back({module, std::move(what), g[in].shape, g[out].shape, loc, out});
}

Init LayerBuilder::initOf(const Stmt& s) {
    Init init;
    if (!s.init) return init;
    const InitSpec& spec = *s.init;
    struct Scheme {
        const char* name;
        size_t args;
    };
    static const Scheme schemes[] = {{"pytorch", 0}, {"xavier", 0},  {"kaiming", 0},
                                     {"normal", 1},  {"constant", 1}};
    for (const Scheme& sc : schemes) {
        if (spec.scheme != sc.name) continue;
        if (spec.args.size() != sc.args)
            throw UserError(spec.loc, sc.args ? fmt::format("init scheme '{}' takes one "
                                                            "argument: {}(VALUE)", sc.name, sc.name)
                                              : fmt::format("init scheme '{}' takes no "
                                                            "arguments", sc.name));
        if (spec.scheme == "normal" && !(spec.args[0] > 0))
            throw UserError(spec.loc, "normal(STD) needs a positive standard deviation");
        init.scheme = spec.scheme, init.args = spec.args;
        return init;
    }
    throw UserError(spec.loc, fmt::format("unknown init scheme '{}' (known: pytorch, xavier, "
                                          "kaiming, normal(STD), constant(V))", spec.scheme));
}

double optionValue(const Stmt& s, const char* name) {
    for (auto& [n, v] : s.options)
        if (n == name) return v;
    for (const LayerOptionDef& o : s.layer->options)
        if (std::string(o.name) == name) return o.initial;
    internal_assert(false, fmt::format("layer {} has no option {}", s.layer->keyword, name));
}

namespace {

ValueId node(Graph& g, Op op, const SourceLoc& loc, std::vector<ValueId> in) {
    return g.add(makeNode(op, loc, std::move(in)));
}

/// `dense N [ACT] [init=SCHEME] [bias=BOOL]`: nn.Linear(in, N), then the activation as a
/// module of its own.
ValueId buildDense(LayerBuilder& b, const Stmt& s, ValueId x) {
    Graph& g = b.graph();
    if (s.size < 1 || s.size > kMaxTensorElements)
        throw UserError(s.sizeLoc, fmt::format("layer width {} is out of range (1 to 2^31)", s.size));
    const int64_t in = g[x].shape.back();
    const bool bias = optionValue(s, "bias") != 0;
    std::string mod = b.moduleName(s);
    Init init = LayerBuilder::initOf(s);
    ValueId w = b.param(mod + ".weight", {s.size, in}, init, in, s.size, s.loc);
    ValueId y = node(g, Op::MatMulNT, s.loc, {x, w});
    if (bias) {
        Init binit = init;
        if (binit.scheme == "xavier" || binit.scheme == "kaiming" || binit.scheme == "normal")
            binit = {"constant", {0.0}}; // the tutorials zero the bias with these schemes
        ValueId bv = b.param(mod + ".bias", {s.size}, binit, in, s.size, s.loc);
        y = addBiasAdd(g, y, bv, s.loc);
    }
    b.record(mod, fmt::format("linear {} -> {}{}", in, s.size, bias ? "" : " (no bias)"), x, y, s.loc);
    if (s.act) y = b.applyActivation(*s.act, y, b.extraModuleName(s, mod));
    return y;
}

/// A bare activation statement: `relu`, `leaky_relu(0.1)`.
ValueId buildActivation(LayerBuilder& b, const Stmt& s, ValueId x) {
    return b.applyActivation(*s.act, x, b.moduleName(s));
}

/// `KEYWORD A B`, or `KEYWORD A` (A with the current value): an element-wise function of two
/// values of one shape, built by `op`.
ValueId buildBinary(LayerBuilder& b, const Stmt& s, ValueId cur, ValueId (*op)(Graph&, ValueId, ValueId, SourceLoc)) {
    ValueId l = s.operands.size() == 2 ? b.lookup(s.operands[0].first, s.operands[0].second) : cur;
    ValueId r = b.lookup(s.operands.back().first, s.operands.back().second);
    ValueId v = op(b.graph(), l, r, s.loc);
    std::string what = s.layer->keyword;
    for (auto& [name, _] : s.operands) what += " " + name;
    b.record(b.moduleName(s), what, l, v, s.loc);
    return v;
}

/// `add A B`: the sum (a residual connection).
ValueId buildAdd(LayerBuilder& b, const Stmt& s, ValueId cur) { return buildBinary(b, s, cur, addAdd); }

/// `mul A B`: the product (a gate).
ValueId buildMul(LayerBuilder& b, const Stmt& s, ValueId cur) { return buildBinary(b, s, cur, addMul); }

/// `batchnorm [eps=E] [momentum=M]`: nn.BatchNorm1d over the features, with running
/// statistics (training mode normalises with the batch's, evaluation mode with them).
ValueId buildBatchNorm(LayerBuilder& b, const Stmt& s, ValueId x) {
    Graph& g = b.graph();
    const double eps = optionValue(s, "eps"), momentum = optionValue(s, "momentum");
    if (!(eps > 0)) throw UserError(s.loc, "batchnorm eps must be positive");
    if (!(momentum >= 0 && momentum <= 1))
        throw UserError(s.loc, "batchnorm momentum must be between 0 and 1");
    if (g[x].shape.size() != 2) throw UserError(s.loc, "batchnorm needs a [batch, features] input");
    const int64_t n = g[x].shape[1];
    std::string mod = b.moduleName(s);
    ValueId w = b.param(mod + ".weight", {n}, {"constant", {1.0}}, n, n, s.loc);
    ValueId bias = b.param(mod + ".bias", {n}, {"constant", {0.0}}, n, n, s.loc);
    auto mean = b.buffer(mod, "running_mean", n, 0.0, momentum, s.loc);
    auto var = b.buffer(mod, "running_var", n, 1.0, momentum, s.loc);
    ValueId v;
    if (b.evalMode()) {
        v = addBatchNormEval(g, {x, w, bias, *mean, *var}, eps, s.loc);
    } else {
        Node bn = makeNode(Op::BatchNorm, s.loc, {x, w, bias});
        bn.eps = eps;
        v = g.add(std::move(bn));
        b.keepNormInput(mod, x);
    }
    b.record(mod, fmt::format("batchnorm {}", n), x, v, s.loc);
    return v;
}

/// `layernorm [eps=E]`: nn.LayerNorm over the last dimension (the features): each row
/// normalised on its own (no running statistics), then scaled and shifted element-wise.
ValueId buildLayerNorm(LayerBuilder& b, const Stmt& s, ValueId x) {
    Graph& g = b.graph();
    const double eps = optionValue(s, "eps");
    if (!(eps > 0)) throw UserError(s.loc, "layernorm eps must be positive");
    const int64_t n = g[x].shape.back();
    std::string mod = b.moduleName(s);
    ValueId w = b.param(mod + ".weight", {n}, {"constant", {1.0}}, n, n, s.loc);
    ValueId bias = b.param(mod + ".bias", {n}, {"constant", {0.0}}, n, n, s.loc);
    Node xhat = makeNode(Op::LayerNormNormalise, s.loc, {x});
    xhat.eps = eps;
    using scalar::Kind;
    scalar::Expr affine = scalar::make(Kind::Add, {scalar::make(Kind::Mul, {scalar::arg(0), scalar::arg(1)}), scalar::arg(2)});
    ValueId v = addMap(g, affine, {g.add(std::move(xhat)), w, bias}, s.loc);
    b.record(mod, fmt::format("layernorm {}", n), x, v, s.loc);
    return v;
}

/// `flatten`: nn.Flatten, [B, d1, d2, ...] -> [B, d1 d2 ...] (a reshape; a no-op on [B, N]).
ValueId buildFlatten(LayerBuilder& b, const Stmt& s, ValueId x) {
    Graph& g = b.graph();
    const Shape& in = g[x].shape;
    if (in.size() < 2) throw UserError(s.loc, fmt::format("flatten needs a [batch, ...] value, got {}", shapeString(in)));
    Node n = makeNode(Op::Reshape, s.loc, {x});
    n.shape = {in[0], elementCount(in) / in[0]};
    ValueId v = in.size() == 2 ? x : g.add(std::move(n));
    b.record(b.moduleName(s), "flatten", x, v, s.loc);
    return v;
}

using Kind = LayerOptionDef::Kind;
using Operands = LayerDef::Operands;

const std::vector<LayerDef> kLayers = {
    {"dense", Operands::Width, "the layer width", 0, 0, true,
     {{"init", Kind::Init}, {"bias", Kind::Bool, 1}}, buildDense},
    {"add", Operands::Names,
     "'add' takes one or two value names ('add A B', or 'add A' to add A to the current value)",
     1, 2, false, {}, buildAdd},
    {"mul", Operands::Names,
     "'mul' takes one or two value names ('mul A B', or 'mul A' to multiply the current value by A)",
     1, 2, false, {}, buildMul},
    {"flatten", Operands::None, "", 0, 0, false, {}, buildFlatten},
    {"batchnorm", Operands::None, "", 0, 0, false,
     {{"eps", Kind::Number, 1e-5}, {"momentum", Kind::Number, 0.1}}, buildBatchNorm},
    {"layernorm", Operands::None, "", 0, 0, false, {{"eps", Kind::Number, 1e-5}}, buildLayerNorm},
};

const LayerDef kActivation = {"activation", Operands::None, "", 0, 0, true, {}, buildActivation};

} // namespace

const LayerDef* findLayer(const std::string& keyword) {
    for (const LayerDef& d : kLayers)
        if (keyword == d.keyword) return &d;
    return nullptr;
}

const LayerDef& activationLayer() { return kActivation; }

const std::vector<LayerDef>& layerTable() { return kLayers; }

} // namespace gradc
