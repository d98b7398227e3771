// Session.cpp — the public gradc::Session: a compiled model with its buffers.
#include "Autodiff.h"
#include "Codegen.h"
#include "Execute.h"
#include "Init.h"
#include "ModelImpl.h"
#include "SafeTensors.h"
#include "Stats.h"

#include <gradc/Session.h>

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>

namespace gradc {

struct Session::Impl {
    Graph graph;
    SessionOptions options;
    CompiledModel compiled; // jit
    Graph gradGraph;        // interp
    std::vector<float> params, grads, acts;
    std::unique_ptr<void, decltype(&std::free)> workspace{nullptr, &std::free};
    std::map<std::string, Tensor> lastOutputs; // interp: everything; jit: preactivations
    bool haveGradients = false;

    template <typename Target> float run(const float* x, const Target* target, float* logits, bool backward);
    Bindings bindings(const float* x, const void* target, bool labels) const;
};

Session::Session(const Model& model, int64_t batch, const SessionOptions& options) : impl_(std::make_unique<Impl>()) {
    publicCall([&] {
        if (options.backend != "jit" && options.backend != "interp")
            throw UserError({}, fmt::format("backend '{}' is not one of jit, interp", options.backend));
        impl_->options = options;
        impl_->graph = buildGraph(*model.impl().ast, {batch});
        if (options.backend == "jit") {
            CodegenOptions co;
            co.cache = options.cache;
            impl_->compiled = compileModel(impl_->graph, co);
            impl_->acts.resize(size_t(impl_->compiled.activationCount));
            impl_->workspace.reset(std::aligned_alloc(64, size_t((impl_->compiled.workspaceBytes + 63) / 64 * 64 + 64)));
            if (!impl_->workspace) throw std::bad_alloc();
        } else {
            impl_->gradGraph = differentiate(impl_->graph);
        }
        impl_->params.assign(size_t(impl_->graph.parameterCount()), 0.0f);
        impl_->grads.assign(impl_->params.size(), 0.0f);
        initialiseParameters(0);
        return 0;
    });
}

Session::~Session() = default;
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;

int64_t Session::batch() const { return impl_->graph.batch; }
float* Session::parameters() { return impl_->params.data(); }
const float* Session::gradients() const { return impl_->grads.data(); }

static void storeParameters(const Graph& g, const Bindings& b, std::vector<float>& flat) {
    size_t offset = 0;
    for (auto& p : g.params)
        for (double v : b.at(p.name).data) flat[offset++] = float(v);
}

void Session::initialiseParameters(uint64_t seed) {
    storeParameters(impl_->graph, gradc::initialiseParameters(impl_->graph, seed), impl_->params);
}

void Session::loadParameters(const std::string& path) {
    publicCall([&] {
        storeParameters(impl_->graph, gradc::loadParameters(impl_->graph, path), impl_->params);
        return 0;
    });
}

void Session::saveParameters(const std::string& path) const {
    publicCall([&] {
        std::vector<std::pair<std::string, Tensor>> tensors;
        size_t offset = 0;
        for (auto& p : impl_->graph.params) {
            const Shape& s = impl_->graph[p.node].shape;
            size_t n = size_t(elementCount(s));
            tensors.emplace_back(p.name, Tensor{s, std::vector<double>(impl_->params.begin() + long(offset),
                                                                       impl_->params.begin() + long(offset + n))});
            offset += n;
        }
        writeSafetensors(path, tensors);
        return 0;
    });
}

Bindings Session::Impl::bindings(const float* x, const void* target, bool labels) const {
    Bindings b;
    size_t offset = 0;
    for (auto& p : graph.params) {
        const Shape& s = graph[p.node].shape;
        size_t n = size_t(elementCount(s));
        b[p.name] = Tensor{s, std::vector<double>(params.begin() + long(offset), params.begin() + long(offset + n))};
        offset += n;
    }
    for (auto& n : graph.nodes) {
        if (n.op != Op::Input) continue;
        size_t count = size_t(elementCount(n.shape));
        Tensor t{n.shape, std::vector<double>(count)};
        for (size_t i = 0; i < count; ++i)
            t.data[i] = n.name == "x" ? double(x[i])
                        : labels      ? double(static_cast<const int32_t*>(target)[i])
                                      : double(static_cast<const float*>(target)[i]);
        b[n.name] = std::move(t);
    }
    return b;
}

template <typename Target>
float Session::Impl::run(const float* x, const Target* target, float* logits, bool backward) {
    constexpr bool labels = std::is_same_v<Target, int32_t>;
    if (labels != (graph.lossKind == "cross_entropy"))
        throw UserError({}, fmt::format("model {} has loss {}: pass {}", graph.model, graph.lossKind,
                                        labels ? "float targets" : "int32 class labels"));
    float loss = 0;
    if (options.backend == "jit") {
        const Shape& ls = graph[graph.output("logits")].shape;
        std::vector<float> scratch(logits ? 0 : size_t(elementCount(ls)));
        float* out = logits ? logits : scratch.data();
        if (backward)
            compiled.backward(params.data(), x, target, &loss, grads.data(), acts.data(), workspace.get());
        else
            compiled.forward(params.data(), x, target, out, &loss, acts.data(), workspace.get());
        lastOutputs.clear();
        size_t offset = 0;
        for (auto& [name, v] : graph.outputs) {
            if (name.rfind("preact:", 0) != 0) continue;
            size_t n = size_t(elementCount(graph[v].shape));
            lastOutputs[name] = Tensor{graph[v].shape, std::vector<double>(acts.begin() + long(offset), acts.begin() + long(offset + n))};
            offset += n;
        }
    } else {
        lastOutputs = interpretOutputs(backward ? gradGraph : graph, bindings(x, target, labels));
        loss = float(lastOutputs.at("loss").data[0]);
        if (logits && !backward)
            for (size_t i = 0; i < lastOutputs.at("logits").data.size(); ++i) logits[i] = float(lastOutputs.at("logits").data[i]);
        if (backward) {
            size_t offset = 0;
            for (auto& p : graph.params)
                for (double v : lastOutputs.at("grad:" + p.name).data) grads[offset++] = float(v);
        }
    }
    if (backward) haveGradients = true;
    return loss;
}

float Session::forward(const float* x, const int32_t* labels, float* logits) {
    return publicCall([&] { return impl_->run(x, labels, logits, false); });
}
float Session::forward(const float* x, const float* targets, float* logits) {
    return publicCall([&] { return impl_->run(x, targets, logits, false); });
}
float Session::backward(const float* x, const int32_t* labels) {
    return publicCall([&] { return impl_->run(x, labels, nullptr, true); });
}
float Session::backward(const float* x, const float* targets) {
    return publicCall([&] { return impl_->run(x, targets, nullptr, true); });
}

std::vector<GradientStatistics> Session::gradientStatistics() const {
    if (!impl_->haveGradients) throw Error("gradientStatistics: call backward first");
    std::vector<GradientStatistics> out;
    size_t offset = 0;
    for (auto& p : impl_->graph.params) {
        const Shape& s = impl_->graph[p.node].shape;
        size_t n = size_t(elementCount(s));
        TensorStats t = statistics(p.name, s, impl_->grads.data() + offset);
        offset += n;
        out.push_back({t.name, t.shape, t.count, t.mean, t.std, t.absMean, t.min, t.max, t.l2, t.zeroFraction,
                       t.nan, t.inf, t.edges, t.counts});
    }
    return out;
}

std::vector<ActivationStatistics> Session::activationStatistics() const {
    std::vector<ActivationStatistics> out;
    for (auto& a : gradc::activationStatistics(impl_->graph, impl_->lastOutputs))
        out.push_back({a.name, a.function, a.mean, a.std, a.lowGradientFraction});
    return out;
}

double Session::vanishingFactor() const {
    std::vector<double> weights; // abs_mean of each weight gradient, in layer order
    for (auto& t : gradientStatistics())
        if (t.shape.size() == 2) weights.push_back(t.absMean);
    return weights.size() < 2 ? std::nan("") : weights.front() / weights.back();
}

} // namespace gradc
