// Sema.cpp — stage 3: AST to Graph.
//
// Naming follows PyTorch's nn.Sequential: every unnamed module takes the next index of
// `layers`, and `dense N ACT` is two modules (Linear, then the activation), so the seed
// network's tensors are layers.0.weight, layers.0.bias, layers.2.weight, ... A named
// module `h = dense ...` owns h.weight and h.bias; inside `repeat`, a named module's
// tensors carry the iteration index (h.0.weight, h.1.weight, ...).
#include "Sema.h"

#include "Layers.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <map>
#include <set>

namespace gradc {
namespace {

struct NamedValue {
    ValueId value;
    SourceLoc loc;
};

/// Names visible in one repeat iteration (or the file); lookups walk outwards.
struct Scope {
    const Scope* parent = nullptr;
    std::map<std::string, NamedValue> names;
    std::string suffix; // ".0.2" inside repeat iterations

    const NamedValue* find(const std::string& n) const {
        auto it = names.find(n);
        if (it != names.end()) return &it->second;
        return parent ? parent->find(n) : nullptr;
    }
};

class Sema final : public LayerBuilder {
public:
    Sema(const ModuleAST& m, const SemaOptions& opts) : m_(m) {
        g_.batch = opts.batch;
        g_.eval = eval_ = opts.eval;
        layerOutputs_ = opts.layerOutputs;
        statistics_ = opts.statistics;
        g_.model = "model";
        if (m.file) {
            std::string base = m.file->name.substr(m.file->name.find_last_of('/') + 1);
            g_.model = base.substr(0, base.rfind(".nn") == std::string::npos ? base.size() : base.rfind(".nn"));
        }
        if (opts.batch < 1 || opts.batch > kMaxBatch)
            throw UserError({m.file, 0, 0}, fmt::format("batch size {} is out of range (1 to {})",
                                                         opts.batch, kMaxBatch));
    }

    Graph run() {
        countLayers(m_.stmts, 1);
        Scope top;
        bool seenModel = false;
        for (auto& s : m_.stmts) {
            if (s->kind == Stmt::Kind::Model) {
                if (seenModel) throw UserError(s->loc, "'model' given twice");
                seenModel = true;
                g_.model = s->name;
            } else if (s->kind == Stmt::Kind::ActivationDef) {
                table_.define(*s);
            } else {
                stmt(*s, top);
            }
        }
        if (!input_) throw UserError(endLoc(), "the model has no 'input N' statement");
        if (g_.lossKind.empty())
            throw UserError(endLoc(), "the model has no 'loss' statement (cross_entropy, bce or mse)");
        return std::move(g_);
    }

private:
    const ModuleAST& m_;
    Graph g_;
    ActivationTable table_;
    std::optional<ValueId> input_, current_;
    std::map<std::string, int32_t> fnIndex_;
    int64_t nextIndex_ = 0;
    bool eval_ = false, layerOutputs_ = false, statistics_ = true;
    std::vector<std::pair<std::string, ValueId>> bnInputs_; // training mode: layer, input
    int64_t paramTotal_ = 0;
    std::set<std::string> paramNames_;
    const Scope* scope_ = nullptr; // the scope of the statement being built

    SourceLoc endLoc() const {
        uint32_t lines = 1;
        if (m_.file)
            for (char c : m_.file->text) lines += c == '\n';
        if (m_.file && !m_.file->text.empty() && m_.file->text.back() == '\n') --lines;
        return {m_.file, lines, 1};
    }

    /// Bounds the unrolled size before anything is unrolled.
    int64_t countLayers(const std::vector<std::unique_ptr<Stmt>>& body, int64_t times) {
        int64_t n = 0;
        for (auto& s : body) {
            if (s->kind == Stmt::Kind::Repeat) {
                if (s->size < 1) throw UserError(s->sizeLoc, "a repeat count must be at least 1");
                if (s->size > kMaxLayers)
                    throw UserError(s->sizeLoc, fmt::format("repeat count {} is larger than the "
                                                            "limit of {}", s->size, kMaxLayers));
                // Every iteration costs at least one step, even of an empty block: otherwise
                // `repeat 10000 { repeat 20000 { } }` passes the limit and takes minutes.
                n += s->size * std::max<int64_t>(1, countLayers(s->body, std::min(times * s->size, kMaxLayers + 1)));
            } else {
                n += 1;
            }
            if (n * times > kMaxLayers)
                throw UserError(s->loc, fmt::format("the model has more than {} layers (or repeat "
                                                    "iterations) once 'repeat' is unrolled", kMaxLayers));
        }
        return n;
    }

    ValueId need(const Stmt& s) {
        if (!input_) throw UserError(s.loc, "a layer before the 'input' statement; a model starts with 'input N'");
        if (!g_.lossKind.empty()) throw UserError(s.loc, "a layer after the 'loss' statement; the loss comes last");
        return *current_;
    }

    /// The value a layer consumes: `from NAME`'s, or the previous statement's.
    ValueId operand(const Stmt& s, std::optional<ValueId> from) {
        ValueId current = need(s);
        return from ? *from : current;
    }

    ValueId lookup(const Scope& sc, const std::string& name, const SourceLoc& loc) {
        const NamedValue* nv = sc.find(name);
        if (!nv) throw UserError(loc, fmt::format("unknown value '{}'", name));
        return nv->value;
    }

    /// Binds the statement's name (stmt() has checked that the scope does not hold it yet).
    void bindName(Scope& sc, const Stmt& s, ValueId v) {
        if (!s.name.empty()) sc.names[s.name] = {v, s.nameLoc};
    }

    // ---- LayerBuilder: what the layer table's build functions use.
    Graph& graph() override { return g_; }
    bool evalMode() const override { return eval_; }

    std::string moduleName(const Stmt& s) override {
        if (!s.name.empty()) return s.name + scope_->suffix;
        return fmt::format("layers.{}", nextIndex_++);
    }

    std::string extraModuleName(const Stmt& s, const std::string& module) override {
        return s.name.empty() ? fmt::format("layers.{}", nextIndex_++) : module;
    }

    ValueId lookup(const std::string& name, const SourceLoc& loc) override {
        return lookup(*scope_, name, loc);
    }

    std::optional<ValueId> buffer(const std::string& module, const char* field, int64_t size,
                                  double initial, double momentum, const SourceLoc& loc) override {
        std::string name = module + "." + field;
        if (!paramNames_.insert(name).second)
            throw UserError(loc, fmt::format("tensor name '{}' is used twice", name));
        g_.buffers.push_back({name, module, size, initial, momentum});
        if (!eval_) return std::nullopt;
        Node r = makeNode(Op::Param, loc);
        r.shape = {size}, r.name = name;
        return g_.add(std::move(r));
    }

    void keepNormInput(const std::string& module, ValueId x) override {
        bnInputs_.emplace_back(module, x);
    }

    ValueId applyActivation(const ActRef& ref, ValueId x, const std::string& module) override {
        ValueId v = addActivation(g_, activation(ref), x, ref.loc);
        record(module, g_.activations[size_t(g_[v].fn)].name, x, v, ref.loc);
        return v;
    }

    ValueId param(const std::string& name, Shape shape, Init init, int64_t fanIn, int64_t fanOut,
                  const SourceLoc& loc) override {
        // A named layer can clash with PyTorch's numbering (`layers = dense` inside repeat).
        if (!paramNames_.insert(name).second)
            throw UserError(loc, fmt::format("parameter name '{}' is used twice", name));
        Node n = makeNode(Op::Param, loc);
        n.shape = std::move(shape), n.name = name;
        ValueId v = g_.add(std::move(n));
        paramTotal_ += elementCount(g_[v].shape);
        if (paramTotal_ > kMaxParameters)
            throw UserError(loc, "the model has more than 2^31 parameters in all");
        g_.params.push_back({v, name, std::move(init), fanIn, fanOut});
        return v;
    }

    int32_t activation(const ActRef& ref) {
        Activation a = table_.instantiate(ref);
        auto it = fnIndex_.find(a.name);
        if (it != fnIndex_.end()) return it->second;
        g_.activations.push_back(std::move(a));
        int32_t idx = int32_t(g_.activations.size() - 1);
        fnIndex_[g_.activations.back().name] = idx;
        return idx;
    }

    void stmt(const Stmt& s, Scope& sc) {
        if (auto it = sc.names.find(s.name); !s.name.empty() && it != sc.names.end())
            throw UserError(s.nameLoc, fmt::format("value '{}' is already defined at line {}",
                                                   s.name, it->second.loc.line));
        std::optional<ValueId> from;
        if (!s.from.empty()) from = lookup(sc, s.from, s.fromLoc);
        switch (s.kind) {
        case Stmt::Kind::Model:
            throw UserError(s.loc, "'model' belongs at the top level of the file");
        case Stmt::Kind::ActivationDef:
            throw UserError(s.loc, "activation definitions belong at the top level of the file");
        case Stmt::Kind::Input: {
            if (input_) throw UserError(s.loc, "a second 'input' statement; a model has one input");
            Node n = makeNode(Op::Input, s.loc);
            n.shape = {g_.batch};
            if (s.steps) {
                if (s.dims[0] < 1 || s.dims[0] > kMaxTensorElements)
                    throw UserError(
                        s.sizeLoc, fmt::format("a sequence of {} steps is out of range (1 to 2^31)",
                                               s.dims[0]));
                if (s.dims[1] < 1 || s.dims[1] > kMaxTensorElements)
                    throw UserError(
                        s.featuresLoc,
                        fmt::format("{} features per step is out of range (1 to 2^31)", s.dims[1]));
                g_.sequence = true;
            }
            int64_t perExample = 1;
            for (int64_t d : s.dims.empty() ? std::vector<int64_t>{s.size} : s.dims) {
                perExample *= std::min<int64_t>(d, kMaxTensorElements + 1);
                if (d < 1 || d > kMaxTensorElements || perExample > kMaxTensorElements)
                    throw UserError(s.sizeLoc, s.dims.size() <= 1
                        ? fmt::format("input width {} is out of range (1 to 2^31)", d)
                        : d < 1 || d > kMaxTensorElements
                            ? fmt::format("input size {} is out of range (1 to 2^31 per dimension)", d)
                            : fmt::format("input {} is out of range (at most 2^31 values per example)",
                                          fmt::join(s.dims, "x")));
                n.shape.push_back(d);
            }
            n.name = "x", n.loc = s.loc;
            input_ = current_ = g_.add(std::move(n));
            bindName(sc, s, *current_);
            return;
        }
        case Stmt::Kind::From:
            need(s);
            current_ = *from;
            return;
        case Stmt::Kind::Layer: {
            ValueId x = operand(s, from);
            scope_ = &sc;
            current_ = s.layer->build(*this, s, x);
            bindName(sc, s, *current_);
            return;
        }
        case Stmt::Kind::Repeat: {
            current_ = operand(s, from);
            for (int64_t i = 0; i < s.size; ++i) {
                Scope inner;
                inner.parent = &sc;
                inner.suffix = fmt::format("{}.{}", sc.suffix, i);
                for (auto& b : s.body) stmt(*b, inner);
            }
            bindName(sc, s, *current_);
            return;
        }
        case Stmt::Kind::Loss: {
            if (sc.parent) throw UserError(s.loc, "'loss' belongs at the top level of the file");
            ValueId z = need(s);
            const Shape& sh = g_[z].shape;
            Node t = makeNode(Op::Input, s.loc);
            t.name = "target", t.loc = s.loc;
            Node l;
            l.loc = s.loc;
            if (sh.size() != 2)
                throw UserError(
                    s.loc,
                    sh.size() < 2 ? std::string("the loss needs a [batch, outputs] value")
                    : sh.size() == 3 && g_.sequence
                        ? fmt::format(
                              "the loss needs a [batch, outputs] value, got the sequence {}; "
                              "use 'last' to take its final step (or flatten to make it {})",
                              shapeString(sh), shapeString({sh[0], elementCount(sh) / sh[0]}))
                        : fmt::format("the loss needs a [batch, outputs] value, got {}; "
                                      "use flatten to make it {}",
                                      shapeString(sh),
                                      shapeString({sh[0], elementCount(sh) / sh[0]})));
            if (s.loss == "cross_entropy") {
                if (sh[1] < 2)
                    throw UserError(s.sizeLoc, fmt::format("cross_entropy needs at least 2 "
                                                           "classes, but the output is {} wide "
                                                           "(use bce for one logit)", sh[1]));
                t.type = DType::Index, t.shape = {sh[0]}, l.op = Op::CrossEntropy;
            } else if (s.loss == "bce") {
                if (sh[1] != 1)
                    throw UserError(s.sizeLoc, fmt::format("bce needs one logit per example, but "
                                                           "the output is {} wide", sh[1]));
                t.shape = sh, l.op = Op::BCEWithLogits;
            } else if (s.loss == "mse") {
                t.shape = sh, l.op = Op::MSE;
            } else {
                throw UserError(s.sizeLoc, fmt::format("unknown loss '{}' (known: cross_entropy, "
                                                       "bce, mse)", s.loss));
            }
            ValueId tv = g_.add(std::move(t));
            l.in = {z, tv};
            ValueId lv = g_.add(std::move(l));
            g_.lossKind = s.loss;
            g_.outputs = {{OutputRole::Logits, "", z}, {OutputRole::Loss, "", lv}};
            // The input of every hidden activation (identity excepted): activation statistics.
            for (auto& layer : g_.layers) {
                if (!statistics_) break;
                const Node& act = g_[layer.value];
                if (isActivation(act) && g_.activations[size_t(act.fn)].formula->op != scalar::Kind::Var)
                    g_.outputs.push_back({OutputRole::Preact, layer.name, act.in[0]});
            }
            for (auto& [layer, x] : bnInputs_) g_.outputs.push_back({OutputRole::NormInput, layer, x});
            if (layerOutputs_)
                for (size_t i = 0; i + 1 < g_.layers.size(); ++i)
                    g_.outputs.push_back({OutputRole::LayerOutput, g_.layers[i].name, g_.layers[i].value});
            return;
        }
        }
    }
};

} // namespace

Graph buildGraph(const ModuleAST& m, const SemaOptions& opts) {
    Graph g = Sema(m, opts).run();
    std::string err = verify(g);
    internal_assert(err.empty(), err);
    return g;
}

} // namespace gradc
