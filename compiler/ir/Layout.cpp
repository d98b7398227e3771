// Layout.cpp — the buffers of a compiled model, placed once.
#include "Layout.h"

#include <fmt/format.h>

namespace gradc {

Role roleOf(OutputRole r) {
    switch (r) {
    case OutputRole::Logits: return Role::Logits;
    case OutputRole::Loss: return Role::Loss;
    case OutputRole::Preact: return Role::Preact;
    case OutputRole::NormInput: return Role::NormInput;
    case OutputRole::LayerOutput: return Role::LayerOutput;
    case OutputRole::Grad: return Role::Gradient;
    case OutputRole::ThroughTime: return Role::ThroughTime;
    case OutputRole::GradNormSq: return Role::GradNormSq;
    }
    internal_assert(false, "unknown output role");
}

const char* roleName(Role r) {
    static const char* names[] = {"parameter", "running_stat", "gradient", "moment1", "moment2", "preact",
                                  "norm_input", "norm_mean", "norm_var", "layer_output", "input", "target", "logits", "loss", "through_time", "grad_norm_sq"};
    return names[size_t(r)];
}

const char* arrayName(Array a) {
    static const char* names[] = {"state", "grads", "moment1", "moment2", "acts", "x", "target", "logits", "loss"};
    return names[size_t(a)];
}

void Layout::add(LayoutEntry e) {
    e.offset = sizes_[size_t(e.array)];
    sizes_[size_t(e.array)] += e.elements();
    index_.emplace(key(e.role, e.name), entries.size()); // the first of a name stays
    entries.push_back(std::move(e));
    added_ = entries.size();
}

const LayoutEntry* Layout::find(Role role, const std::string& name) const& {
    auto it = index_.find(key(role, name));
    if (it != index_.end() && it->second < entries.size() && entries[it->second].role == role &&
        entries[it->second].name == name)
        return &entries[it->second];
    if (entries.size() == added_) return nullptr;
    for (auto& e : entries) // entries appended without add(), if ever
        if (e.role == role && e.name == name) return &e;
    return nullptr;
}

const LayoutEntry& Layout::at(Role role, const std::string& name) const& {
    const LayoutEntry* e = find(role, name);
    internal_assert(e, fmt::format("no {} '{}' in the layout", roleName(role), name));
    return *e;
}

const LayoutEntry& Layout::state(const std::string& name) const& {
    const LayoutEntry* e = find(Role::Parameter, name);
    return e ? *e : at(Role::RunningStat, name);
}

std::vector<const LayoutEntry*> Layout::all(Role role) const& {
    std::vector<const LayoutEntry*> out;
    for (auto& e : entries)
        if (e.role == role) out.push_back(&e);
    return out;
}

std::vector<Output> backwardOutputs(const Graph& grad) {
    std::vector<Output> out;
    for (auto& o : grad.outputs)
        if (o.role == OutputRole::Loss || o.role == OutputRole::Grad) out.push_back(o);
    for (auto& o : grad.outputs)
        if (o.role == OutputRole::ThroughTime) out.push_back(o);
    for (auto& o : grad.outputs)
        if (o.role == OutputRole::GradNormSq) out.push_back(o);
    for (auto& o : grad.outputs)
        if (isKeptActivation(o.role)) out.push_back(o);
    return out;
}

Layout computeLayout(const Graph& g) {
    Layout l;
    // A parameter's module: its name without the last component (PyTorch's naming).
    auto moduleOf = [](const std::string& name) {
        size_t dot = name.rfind('.');
        return dot == std::string::npos ? std::string() : name.substr(0, dot);
    };
    for (auto& p : g.params)
        l.add({Role::Parameter, Array::State, p.name, moduleOf(p.name), g[p.node].shape, DType::Real, 0, p.node});
    for (auto& b : g.buffers) {
        LayoutEntry e{Role::RunningStat, Array::State, b.name, b.layer, {b.size}};
        e.initial = b.initial;
        for (ValueId v = 0; v < g.nodes.size(); ++v) // evaluation mode reads it as a node
            if (g[v].op == Op::Param && g[v].name == b.name) e.value = v;
        l.add(std::move(e));
    }
    for (auto [role, array] : {std::pair{Role::Gradient, Array::Grads}, std::pair{Role::Moment1, Array::Moment1},
                               std::pair{Role::Moment2, Array::Moment2}})
        for (auto& p : g.params)
            l.add({role, array, p.name, moduleOf(p.name), g[p.node].shape, DType::Real, 0, p.node});
    for (auto& o : g.outputs)
        if (isKeptActivation(o.role))
            l.add({roleOf(o.role), Array::Acts, o.name, o.name, g[o.value].shape, DType::Real, 0, o.value});
    for (auto& o : g.outputs)
        if (o.role == OutputRole::NormInput)
            for (Role r : {Role::NormMean, Role::NormVar})
                l.add({r, Array::Acts, o.name, o.name, {g[o.value].shape[1]}, DType::Real, 0, o.value}); // per channel
    for (auto& layer : g.layers) // a recurrent layer's norms of dL/dh_t, one per step
        if (g[layer.value].op == Op::Scan)
            l.add({Role::ThroughTime, Array::Acts, layer.name, layer.name, {g[layer.value].shape[1]}, DType::Real, 0,
                   layer.value});
    if (g.gradNorm && !g.eval) // gradient-norm clipping: Σ g² of the backward pass
        l.add({Role::GradNormSq, Array::Acts, "", "", {1}, DType::Real, 0, g.output(OutputRole::Loss)});
    for (ValueId v = 0; v < g.nodes.size(); ++v) {
        const Node& n = g[v];
        if (n.op != Op::Input) continue;
        const bool x = n.name == "x";
        l.add({x ? Role::Input : Role::Target, x ? Array::X : Array::Target, n.name, "", n.shape, n.type, 0, v});
    }
    for (auto& o : g.outputs)
        if (o.role == OutputRole::Logits || o.role == OutputRole::Loss) {
            const bool logits = o.role == OutputRole::Logits;
            l.add({roleOf(o.role), logits ? Array::Logits : Array::Loss, "", "",
                   logits ? g[o.value].shape : Shape{1}, DType::Real, 0, o.value});
        }
    return l;
}

std::string printLayout(const Layout& l) {
    std::string out = "arrays:";
    for (size_t a = 0; a < kArrayCount; ++a) out += fmt::format(" {} {}", arrayName(Array(a)), l.size(Array(a)));
    out += "\n";
    for (auto& e : l.entries)
        out += fmt::format("  {:<7} {:>9}  {:<13} {}{} : {}{}\n", arrayName(e.array), e.offset, roleName(e.role),
                           e.name.empty() ? "-" : e.name, e.layer.empty() || e.layer == e.name ? "" : " (" + e.layer + ")",
                           e.type == DType::Index ? "i32" : "real", shapeString(e.shape));
    return out;
}

} // namespace gradc
