// Layers.cpp — the layer table (see Layers.h): one entry per layer of the model language,
// with the function that builds its graph. Shapes are checked by the ops' shape rules; what
// is left to check here is what the ops cannot see (option ranges, what a module records).
#include "Layers.h"

#include "Activations.h"
#include "Cells.h"

#include <fmt/format.h>

#include <climits>

namespace gradc {

void LayerBuilder::record(const std::string& module, std::string what, ValueId in, ValueId out,
                          const SourceLoc& loc) {
    Graph& g = graph();
    g.layers.push_back({module, std::move(what), g[in].shape, g[out].shape, loc, out});
}

Init LayerBuilder::initOf(const Stmt& s, bool recurrent) {
    Init init;
    if (!s.init) return init;
    const InitSpec& spec = *s.init;
    if (spec.scheme == "identity" || spec.scheme == "orthogonal") {
        if (!recurrent)
            throw UserError(
                spec.loc,
                fmt::format("init scheme '{}' is for the recurrent weights of rnn, lstm and gru, "
                            "not {}",
                            spec.scheme, s.layer->keyword));
        if (spec.args.size() > 1)
            throw UserError(spec.loc,
                            fmt::format("init scheme '{}' takes at most one argument: {}(GAIN)",
                                        spec.scheme, spec.scheme));
        init.scheme = spec.scheme, init.args = {spec.args.empty() ? 1.0 : spec.args[0]};
        return init;
    }
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
                                          "kaiming, normal(STD), constant(V){})",
                                          spec.scheme,
                                          recurrent ? ", identity(GAIN), orthogonal(GAIN)" : ""));
}

double optionValue(const Stmt& s, const char* name) {
    for (auto& [n, v] : s.options)
        if (n == name) return v;
    for (const LayerOptionDef& o : s.layer->options)
        if (std::string(o.name) == name) return o.initial;
    internal_assert(false, fmt::format("layer {} has no option {}", s.layer->keyword, name));
}

Size2 sizeOption(const Stmt& s, const char* name) {
    for (auto& [n, v] : s.sizes)
        if (n == name) return v;
    return {};
}

namespace {

ValueId node(Graph& g, Op op, const SourceLoc& loc, std::vector<ValueId> in) {
    return g.add(makeNode(op, loc, std::move(in)));
}

/// x read as `to` (a reshape node).
ValueId reshape(Graph& g, ValueId x, Shape to, const SourceLoc& loc) {
    Node n = makeNode(Op::Reshape, loc, {x});
    n.shape = std::move(to);
    return g.add(std::move(n));
}

/// A bias's init for the weight's: the tutorials zero the bias under the xavier, kaiming and
/// normal schemes; the others (PyTorch's default, constant) apply to both.
Init biasInit(const Init& weight) {
    if (weight.scheme == "xavier" || weight.scheme == "kaiming" || weight.scheme == "normal") return {"constant", {0.0}};
    return weight;
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
        ValueId bv = b.param(mod + ".bias", {s.size}, biasInit(init), in, s.size, s.loc);
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

/// `batchnorm [eps=E] [momentum=M]`: nn.BatchNorm1d over the features of [B,N], or
/// nn.BatchNorm2d over the channels of [B,C,H,W], with running statistics (training mode
/// normalises with the batch's, evaluation mode with them).
ValueId buildBatchNorm(LayerBuilder& b, const Stmt& s, ValueId x) {
    Graph& g = b.graph();
    const double eps = optionValue(s, "eps"), momentum = optionValue(s, "momentum");
    if (!(eps > 0)) throw UserError(s.loc, "batchnorm eps must be positive");
    if (!(momentum >= 0 && momentum <= 1))
        throw UserError(s.loc, "batchnorm momentum must be between 0 and 1");
    const size_t rank = g[x].shape.size();
    if (rank != 2 && rank != 4)
        throw UserError(s.loc, fmt::format("batchnorm needs a [batch, features] or [batch, channels, height, "
                                           "width] input, got {}", shapeString(g[x].shape)));
    const int64_t n = g[x].shape[1];
    std::string mod = b.moduleName(s);
    ValueId w = b.param(mod + ".weight", {n}, {"constant", {1.0}}, n, n, s.loc);
    ValueId bias = b.param(mod + ".bias", {n}, {"constant", {0.0}}, n, n, s.loc);
    auto mean = b.buffer(mod, "running_mean", n, 0.0, momentum, s.loc);
    auto var = b.buffer(mod, "running_var", n, 1.0, momentum, s.loc);
    ValueId v;
    if (b.evalMode()) {
        std::vector<ValueId> ins = {x, w, bias, *mean, *var};
        if (rank == 4) // per channel: each [C] read as [C,1,1]
            for (size_t i = 1; i < ins.size(); ++i) ins[i] = reshape(g, ins[i], {n, 1, 1}, s.loc);
        v = addBatchNormEval(g, ins, eps, s.loc);
    } else {
        Node bn = makeNode(Op::BatchNorm, s.loc, {x, w, bias});
        bn.eps = eps;
        v = g.add(std::move(bn));
        b.keepNormInput(mod, x);
    }
    b.record(mod, fmt::format("batchnorm{} {}", rank == 4 ? "2d" : "", n), x, v, s.loc);
    return v;
}

// ---- Images: [B,C,H,W] values, NCHW as PyTorch's.

/// The side of a square of n values (28 for 784), or 0 when n is not a square.
int64_t squareSide(int64_t n) {
    int64_t side = 1;
    while ((side + 1) * (side + 1) <= n) ++side;
    return side * side == n ? side : 0;
}

/// The shape of the images a window layer reads; anything else is diagnosed with the input
/// statement that would make one (`input 1x28x28` for [B,784]).
const Shape& needImage(LayerBuilder& b, const Stmt& s, ValueId x) {
    const Shape& in = b.graph()[x].shape;
    if (in.size() == 4) return in;
    std::string hint = "declare the input as CHANNELSxHEIGHTxWIDTH";
    if (b.graph()[x].op != Op::Input) {
        hint = "images stay 4-D until flatten or global_avgpool";
    } else if (in.size() == 2) {
        if (const int64_t side = squareSide(in[1]))
            hint =
                fmt::format("for {} values per example write 'input 1x{}x{}'", in[1], side, side);
    } else if (in.size() == 3) {
        hint = fmt::format("for one channel write 'input 1x{}x{}'", in[1], in[2]);
    }
    throw UserError(s.loc, fmt::format("{} needs images [batch, channels, height, width], but its input is {}; {}",
                                       s.layer->keyword, shapeString(in), hint));
}

/// The window of a conv or pooling statement: its size (the window operand), stride= (default
/// `stride`) and padding= (default 0), with the ranges checked against the input [B,C,H,W]
/// where the user wrote them.
Window windowOf(const Stmt& s, const Shape& in, Size2 stride) {
    const char* what = s.layer->keyword;
    const Size2 k = s.window, p = sizeOption(s, "padding");
    if (sizeOption(s, "stride").given) stride = sizeOption(s, "stride");
    const int64_t ph = p.given ? p.h : 0, pw = p.given ? p.w : 0;
    if (k.h > in[2] + 2 * ph || k.w > in[3] + 2 * pw)
        throw UserError(k.loc, fmt::format("{}: the {}x{} window is larger than the {}x{} image{}, so the output "
                                           "would be empty (the input is {})", what, k.h, k.w, in[2], in[3],
                                           ph || pw ? fmt::format(" padded to {}x{}", in[2] + 2 * ph, in[3] + 2 * pw) : "",
                                           shapeString(in)));
    constexpr int64_t kLimit = 1 << 20; // sizes beyond any image's, which int32 holds
    if (stride.h > kLimit || stride.w > kLimit)
        throw UserError(stride.loc, fmt::format("{}: stride {}x{} is out of range (1 to {})", what, stride.h, stride.w, kLimit));
    if (ph > kLimit || pw > kLimit)
        throw UserError(p.loc, fmt::format("{}: padding {}x{} is out of range (0 to {})", what, ph, pw, kLimit));
    Window w;
    w.kh = int32_t(k.h), w.kw = int32_t(k.w), w.sh = int32_t(stride.h), w.sw = int32_t(stride.w);
    w.ph = int32_t(ph), w.pw = int32_t(pw);
    return w;
}

/// "3x3" or "3" for a square size.
std::string sizeText(int64_t h, int64_t w) { return h == w ? std::to_string(h) : fmt::format("{}x{}", h, w); }

std::string windowText(const Window& w) {
    std::string out = fmt::format("{}x{}", w.kh, w.kw);
    if (w.sh != 1 || w.sw != 1) out += ", stride " + sizeText(w.sh, w.sw);
    if (w.ph || w.pw) out += ", padding " + sizeText(w.ph, w.pw);
    return out;
}

/// `conv OUT KxK [stride=S] [padding=P] [ACT] [init=SCHEME] [bias=BOOL]`: nn.Conv2d(in, OUT,
/// (KH, KW), stride, padding), weight [OUT, in, KH, KW]; the bias [OUT] is added as [OUT,1,1];
/// then the activation as a module of its own.
ValueId buildConv(LayerBuilder& b, const Stmt& s, ValueId x) {
    Graph& g = b.graph();
    const Shape in = needImage(b, s, x);
    if (s.size < 1 || s.size > kMaxTensorElements)
        throw UserError(s.sizeLoc, fmt::format("conv output channels {} is out of range (1 to 2^31)", s.size));
    Size2 one;
    one.h = one.w = 1;
    const Window win = windowOf(s, in, one);
    const bool bias = optionValue(s, "bias") != 0;
    const int64_t c = in[1], area = int64_t(win.kh) * win.kw;
    std::string mod = b.moduleName(s);
    Init init = LayerBuilder::initOf(s);
    // PyTorch's fans of a convolution's weight: in (out) channels times the kernel's area.
    ValueId w = b.param(mod + ".weight", {s.size, c, win.kh, win.kw}, init, c * area, s.size * area, s.loc);
    Node conv = makeNode(Op::Conv2d, s.loc, {x, w});
    conv.window = win;
    ValueId y = g.add(std::move(conv));
    if (bias) {
        ValueId bv = b.param(mod + ".bias", {s.size}, biasInit(init), c * area, s.size * area, s.loc);
        y = addBiasAdd(g, y, reshape(g, bv, {s.size, 1, 1}, s.loc), s.loc);
    }
    b.record(mod, fmt::format("conv {} -> {}, {}{}", c, s.size, windowText(win), bias ? "" : " (no bias)"), x, y, s.loc);
    if (s.act) y = b.applyActivation(*s.act, y, b.extraModuleName(s, mod));
    return y;
}

/// `maxpool K [stride=S] [padding=P]` and `avgpool ...`: nn.MaxPool2d, nn.AvgPool2d (stride
/// defaults to the window; padding at most half of it, as PyTorch's).
ValueId buildPool(LayerBuilder& b, const Stmt& s, ValueId x) {
    Graph& g = b.graph();
    const Shape in = needImage(b, s, x);
    const Window win = windowOf(s, in, s.window);
    if (2 * win.ph > win.kh || 2 * win.pw > win.kw)
        throw UserError(sizeOption(s, "padding").loc,
                        fmt::format("{}: padding {} is more than half the {}x{} window", s.layer->keyword,
                                    sizeText(win.ph, win.pw), win.kh, win.kw));
    const bool max = std::string(s.layer->keyword) == "maxpool";
    Node n = makeNode(max ? Op::MaxPool2d : Op::AvgPool2d, s.loc, {x});
    n.window = win;
    ValueId y = g.add(std::move(n));
    b.record(b.moduleName(s), fmt::format("{} {}", s.layer->keyword, windowText(win)), x, y, s.loc);
    return y;
}

/// `global_avgpool`: nn.AdaptiveAvgPool2d(1) ([B,C,H,W] -> [B,C,1,1], an average over the
/// whole image), then nn.Flatten ([B,C]): two modules, as in PyTorch's nn.Sequential.
ValueId buildGlobalAvgPool(LayerBuilder& b, const Stmt& s, ValueId x) {
    Graph& g = b.graph();
    const Shape in = needImage(b, s, x);
    if (in[2] > INT32_MAX || in[3] > INT32_MAX)
        throw UserError(s.loc, fmt::format("global_avgpool: the image {} is too large", shapeString(in)));
    Node n = makeNode(Op::AvgPool2d, s.loc, {x});
    n.window.kh = n.window.sh = int32_t(in[2]), n.window.kw = n.window.sw = int32_t(in[3]);
    ValueId pooled = g.add(std::move(n));
    std::string mod = b.moduleName(s);
    b.record(mod, fmt::format("global_avgpool {}x{}", in[2], in[3]), x, pooled, s.loc);
    ValueId y = reshape(g, pooled, {in[0], in[1]}, s.loc);
    b.record(b.extraModuleName(s, mod), "flatten", pooled, y, s.loc);
    return y;
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
    ValueId v = in.size() == 2 ? x : reshape(g, x, {in[0], elementCount(in) / in[0]}, s.loc);
    b.record(b.moduleName(s), "flatten", x, v, s.loc);
    return v;
}

// ---- Sequences: [B,T,N] values, batch first as PyTorch's batch_first=True.

/// The shape of the sequence a recurrent layer (or `last`) reads; anything else is diagnosed
/// with the input statement that would make one. The model's input is a sequence only when
/// written `input T steps N`: `input 28x28` is an image (gradc check, the loss's hint and the
/// AOT header say so), so a recurrent layer on it is refused with the statement to write.
Shape needSequence(LayerBuilder& b, const Stmt& s, ValueId x) {
    const Graph& g = b.graph();
    const Shape& in = g[x].shape;
    const bool input = g[x].op == Op::Input;
    if (in.size() == 3 && !(input && !g.sequence)) return in;
    std::string hint =
        "recurrent layers read 'input STEPS steps FEATURES' or another recurrent layer's output";
    if (input && in.size() == 2) {
        const int64_t side = squareSide(in[1]);
        hint =
            side > 1
                ? fmt::format("write 'input {} steps {}' or 'input {} steps 1'", side, side, in[1])
                : fmt::format("write 'input {} steps 1' or 'input STEPS steps FEATURES'", in[1]);
    } else if (input &&
               (in.size() == 3 || (in.size() == 4 && in[1] == 1))) { // an image of one channel
        hint = fmt::format(
            "an image is not a sequence; write 'input {} steps {}' for its rows as steps",
            in[in.size() - 2], in.back());
    } else if (in.size() == 2 && g[x].op == Op::LastStep) {
        hint = "'last' has already taken the final step";
    }
    throw UserError(s.loc,
                    fmt::format("{} needs a sequence [batch, steps, features]; its input is {}; {}",
                                s.layer->keyword, shapeString(in), hint));
}

/// `rnn H [tanh|relu]`, `lstm H`, `gru H`, each `[init=SCHEME] [bias=BOOL]`: PyTorch's
/// nn.RNN, nn.LSTM and nn.GRU (one layer, batch first, zero initial state) as one module that
/// outputs the whole sequence of hidden states [B,T,H]. Parameters as PyTorch names and lays
/// them out: weight_ih_l0 [G H, N], weight_hh_l0 [G H, H], bias_ih_l0, bias_hh_l0, gates in
/// PyTorch's order (lstm i, f, g, o; gru r, z, n). The input projection x W_ihᵀ + b_ih of all
/// steps is one product outside the loop; the scan op is the loop (Ops.def, Cells.cpp).
ValueId buildRecurrent(LayerBuilder& b, const Stmt& s, ValueId x) {
    Graph& g = b.graph();
    const Shape in = needSequence(b, s, x);
    if (s.size < 1 || s.size > kMaxTensorElements)
        throw UserError(s.sizeLoc,
                        fmt::format("hidden size {} is out of range (1 to 2^31)", s.size));
    const std::string keyword = s.layer->keyword;
    const Cell cell = cellNamed(keyword);
    internal_assert(cell != Cell::None, "a recurrent layer that is not a cell of kCells");
    scalar::Expr activation;
    std::string actName;
    if (cell != Cell::Rnn && s.act)
        throw UserError(s.act->loc,
                        fmt::format("{} takes no activation: its gates' non-linearities are fixed "
                                    "(nn.{}); only rnn takes tanh or relu",
                                    keyword, cell == Cell::Lstm ? "LSTM" : "GRU"));
    if (cell == Cell::Rnn) { // nn.RNN's nonlinearity: tanh (its default) or relu
        actName = s.act ? s.act->name : "tanh";
        if (s.act && (!s.act->args.empty() || (actName != "tanh" && actName != "relu")))
            throw UserError(s.act->loc,
                            fmt::format("rnn takes tanh or relu (nn.RNN's nonlinearity), not '{}'",
                                        actName + (s.act->args.empty() ? "" : "(...)")));
        // The activation table's built-in (relu'(0) = 0 as PyTorch's), in the cell's Arg(0).
        static const ActivationTable builtins;
        const Activation f = builtins.instantiate({actName, {}, s.act ? s.act->loc : s.loc});
        activation = scalar::substitute(f.formula, scalar::arg(0));
    }
    const int64_t H = s.size, N = in[2], G = cellGates(cell);
    if (G * H > kMaxTensorElements)
        throw UserError(
            s.sizeLoc,
            fmt::format("hidden size {} is out of range ({} gates of it exceed 2^31)", H, G));
    // The largest tensor of the layer: the input projection of every step [B,T,G H], or the
    // states the forward loop saves for the backward one [B,T,S H]; nowhere else written.
    const int64_t S = cellStates(cell), perStep = std::max(G, S) * H;
    if (double(in[0]) * double(in[1]) * double(perStep) > double(kMaxTensorElements))
        throw UserError(
            s.sizeLoc,
            fmt::format("hidden size {} is too large for {} steps at batch {}: the {} saves {} "
                        "values per step and example for the backward pass ([{},{},{}], more "
                        "than 2^31 elements); use a smaller hidden size, batch or sequence",
                        H, in[1], in[0], keyword, perStep, in[0], in[1], perStep));
    const bool bias = optionValue(s, "bias") != 0;
    std::string mod = b.moduleName(s);
    // PyTorch's default for all four tensors: U(-1/sqrt(H), 1/sqrt(H)), the pytorch scheme with
    // fan-in H. Other schemes take each weight's own fans, as for dense: weight_ih's fan-in is N.
    const Init init = LayerBuilder::initOf(s, true);
    const bool recurrentOnly = init.scheme == "identity" || init.scheme == "orthogonal";
    const Init ihInit = recurrentOnly ? Init{} : init;
    const Init biasInitial = init.scheme == "identity" ? Init{"constant", {0.0}}
                             : recurrentOnly           ? Init{}
                                                       : biasInit(init);
    const int64_t ihFanIn = ihInit.scheme == "pytorch" ? H : N;
    ValueId wih = b.param(mod + ".weight_ih_l0", {G * H, N}, ihInit, ihFanIn, G * H, s.loc);
    ValueId whh = b.param(mod + ".weight_hh_l0", {G * H, H}, init, H, G * H, s.loc);
    std::optional<ValueId> bih, bhh;
    if (bias) {
        bih = b.param(mod + ".bias_ih_l0", {G * H}, biasInitial, H, G * H, s.loc);
        bhh = b.param(mod + ".bias_hh_l0", {G * H}, biasInitial, H, G * H, s.loc);
    }
    ValueId xp = node(g, Op::MatMulNT, s.loc, {x, wih});
    if (bih) xp = addBiasAdd(g, xp, *bih, s.loc);
    if (!bhh) { // nn.LSTM(bias=False): the loop adds zeros
        Node z = makeNode(Op::Zeros, s.loc);
        z.shape = {G * H};
        bhh = g.add(std::move(z));
    }
    Node scan = makeNode(Op::Scan, s.loc, {xp, whh, *bhh});
    scan.cell = cell, scan.expr = activation;
    ValueId h = g.add(std::move(scan));
    b.record(mod,
             fmt::format("{} {} -> {}, {} steps{}{}", keyword, N, H, in[1],
                         actName == "relu" ? ", relu" : "", bias ? "" : " (no bias)"),
             x, h, s.loc);
    return h;
}

/// `last`: the final step of a sequence, [B,T,K] -> [B,K] (PyTorch's out[:, -1]), a module of
/// its own.
ValueId buildLast(LayerBuilder& b, const Stmt& s, ValueId x) {
    needSequence(b, s, x);
    ValueId y = node(b.graph(), Op::LastStep, s.loc, {x});
    b.record(b.moduleName(s), "last step", x, y, s.loc);
    return y;
}

using Kind = LayerOptionDef::Kind;
using Operands = LayerDef::Operands;

/// `KEYWORD H [ACT] [init=SCHEME] [bias=BOOL]` for a cell of kCells (Cells.h).
LayerDef recurrentLayer(const char* keyword) {
    return {keyword,
            Operands::Width,
            "the hidden size",
            0,
            0,
            true,
            {{"init", Kind::Init}, {"bias", Kind::Bool, 1}},
            buildRecurrent};
}

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
    {"conv", Operands::Width, "the number of output channels", 0, 0, true,
     {{"stride", Kind::Size}, {"padding", Kind::Size}, {"init", Kind::Init}, {"bias", Kind::Bool, 1}},
     buildConv, "the kernel size"},
    {"maxpool", Operands::None, "", 0, 0, false, {{"stride", Kind::Size}, {"padding", Kind::Size}},
     buildPool, "the window size"},
    {"avgpool", Operands::None, "", 0, 0, false, {{"stride", Kind::Size}, {"padding", Kind::Size}},
     buildPool, "the window size"},
    {"global_avgpool", Operands::None, "", 0, 0, false, {}, buildGlobalAvgPool},
    recurrentLayer("rnn"),
    recurrentLayer("lstm"),
    recurrentLayer("gru"),
    {"last", Operands::None, "", 0, 0, false, {}, buildLast},
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
