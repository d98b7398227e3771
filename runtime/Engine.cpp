// Engine.cpp — a compiled model with its state; training and evaluation steps.
#include "Engine.h"

#include "Autodiff.h"
#include "Init.h"
#include "SafeTensors.h"
#include "ThreadPool.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>

namespace gradc {

Engine::Engine(Graph forward, Graph evalGraph, const SessionOptions& options)
    : graph_(std::move(forward)), options_(options), evalGraph_(std::move(evalGraph)) {
    if (options.backend != "jit" && options.backend != "interp")
        throw UserError({}, fmt::format("backend '{}' is not one of jit, interp", options.backend));
    paramCount_ = graph_.parameterCount();
    state_.assign(size_t(paramCount_ + graph_.bufferCount()), 0.0f);
    grads_.assign(size_t(paramCount_), 0.0f);
    train_.graph = graph_;
    prepare(train_, true);
    setOptimizer({});
    initialise(0);
}

void Engine::prepare(Compiled& c, bool training) {
    if (options_.backend == "jit") {
        CodegenOptions co;
        co.cache = options_.cache;
        co.threads = options_.threads;
        c.code = compileModel(c.graph, co);
        c.acts.assign(size_t(c.code.activationCount), 0.0f);
        c.workspace.reset(std::aligned_alloc(64, size_t((c.code.workspaceBytes + 63) / 64 * 64 + 64)));
        if (!c.workspace) throw std::bad_alloc();
    } else if (training) {
        c.gradGraph = differentiate(c.graph);
    }
    size_t offset = 0;
    for (auto& [name, v] : c.graph.outputs) {
        if (!isActivationOutput(name)) continue;
        size_t n = size_t(elementCount(c.graph[v].shape));
        c.slices[name] = {offset, n};
        offset += n;
    }
    if (options_.backend != "jit") c.acts.assign(offset, 0.0f);
}

void Engine::initialise(uint64_t seed) {
    Bindings b = initialiseParameters(graph_, seed);
    size_t offset = 0;
    for (auto& p : graph_.params)
        for (double v : b.at(p.name).data) state_[offset++] = float(v);
    for (auto& buf : graph_.buffers)
        for (double v : b.at(buf.name).data) state_[offset++] = float(v);
    batchesTracked_ = 0;
}

void Engine::load(const std::string& path) {
    Bindings b = loadParameters(graph_, path);
    std::vector<float> state = state_;
    size_t offset = 0;
    for (auto& p : graph_.params)
        for (double v : b.at(p.name).data) state[offset++] = float(v);
    int64_t tracked = 0;
    for (auto& buf : graph_.buffers) {
        auto it = b.find(buf.name);
        for (int64_t i = 0; i < buf.size; ++i)
            state[offset++] = float(it == b.end() ? buf.initial : it->second.data[size_t(i)]);
        auto n = b.find(buf.layer + ".num_batches_tracked");
        if (n != b.end()) tracked = std::max(tracked, int64_t(n->second.data[0]));
    }
    std::copy(state.begin(), state.end(), state_.begin()); // in place: parameters() stays valid
    batchesTracked_ = tracked;
}

void Engine::save(const std::string& path) const {
    Bindings b;
    size_t offset = 0;
    auto take = [&](const std::string& name, int64_t count, const Shape& s) {
        b[name] = Tensor{s, std::vector<double>(state_.begin() + long(offset), state_.begin() + long(offset + size_t(count)))};
        offset += size_t(count);
    };
    for (auto& p : graph_.params) take(p.name, elementCount(graph_[p.node].shape), graph_[p.node].shape);
    for (auto& buf : graph_.buffers) {
        take(buf.name, buf.size, {buf.size});
        b[buf.layer + ".num_batches_tracked"] = Tensor{{}, {double(batchesTracked_)}};
    }
    std::set<std::string> integers;
    auto tensors = stateDict(graph_, b, &integers); // PyTorch's state_dict order
    writeSafetensors(path, tensors, false, integers);
}

Bindings Engine::bindings(const Graph& g, const float* x, const void* target) const {
    Bindings b;
    size_t offset = 0;
    auto take = [&](const std::string& name, const Shape& s) {
        size_t n = size_t(elementCount(s));
        b[name] = Tensor{s, std::vector<double>(state_.begin() + long(offset), state_.begin() + long(offset + n))};
        offset += n;
    };
    for (auto& p : graph_.params) take(p.name, graph_[p.node].shape);
    for (auto& buf : graph_.buffers) take(buf.name, {buf.size});
    for (auto& n : g.nodes) {
        if (n.op != Op::Input) continue;
        size_t count = size_t(elementCount(n.shape));
        Tensor t{n.shape, std::vector<double>(count)};
        for (size_t i = 0; i < count; ++i)
            t.data[i] = n.name == "x"                ? double(x[i])
                        : n.type == DType::Index ? double(static_cast<const int32_t*>(target)[i])
                                                 : double(static_cast<const float*>(target)[i]);
        b[n.name] = std::move(t);
    }
    return b;
}

float Engine::run(Compiled& c, const float* x, const void* target, float* logits, bool backward) {
    float loss = 0;
    if (options_.backend == "jit") {
        std::vector<float> scratch(logits ? 0 : size_t(elementCount(c.graph[c.graph.output("logits")].shape)));
        float* out = logits ? logits : scratch.data();
        if (backward)
            c.code.backward(state_.data(), x, target, &loss, grads_.data(), c.acts.data(), c.workspace.get());
        else
            c.code.forward(state_.data(), x, target, out, &loss, c.acts.data(), c.workspace.get());
        if (&c == &train_) {
            lastOutputs_.clear(); // read back from `acts` when asked for
            haveOutputs_ = true;
        }
        return loss;
    }
    std::map<std::string, Tensor> outputs = interpretOutputs(backward ? c.gradGraph : c.graph, bindings(c.graph, x, target));
    loss = float(outputs.at("loss").data[0]);
    if (logits && !backward)
        for (size_t i = 0; i < outputs.at("logits").data.size(); ++i) logits[i] = float(outputs.at("logits").data[i]);
    if (backward) {
        size_t offset = 0;
        for (auto& p : graph_.params)
            for (double v : outputs.at("grad:" + p.name).data) grads_[offset++] = float(v);
    }
    // The activation outputs, as the compiled code leaves them in `acts`.
    for (auto& [name, slice] : c.slices) {
        const Tensor& t = outputs.at(name);
        for (size_t i = 0; i < slice.second; ++i) c.acts[slice.first + i] = float(t.data[i]);
    }
    if (&c == &train_) {
        lastOutputs_ = std::move(outputs);
        haveOutputs_ = true;
    }
    return loss;
}

const std::map<std::string, Tensor>& Engine::lastOutputs() const {
    if (options_.backend == "jit" && lastOutputs_.empty())
        for (auto& [name, v] : train_.graph.outputs) {
            if (name.rfind("preact:", 0) != 0) continue;
            auto [offset, n] = train_.slices.at(name);
            lastOutputs_[name] = Tensor{train_.graph[v].shape, std::vector<double>(train_.acts.begin() + long(offset),
                                                                                  train_.acts.begin() + long(offset + n))};
        }
    return lastOutputs_;
}

float Engine::forward(const float* x, const void* target, float* logits) { return run(train_, x, target, logits, false); }

float Engine::backward(const float* x, const void* target) {
    float loss = run(train_, x, target, nullptr, true);
    haveGradients_ = true;
    return loss;
}

void Engine::setOptimizer(const OptimizerOptions& o) {
    hyperParameters(o, 1); // checks the options
    optimizer_ = o;
    step_ = 0;
    m_.assign(o.method == "adam" || o.momentum > 0 ? size_t(paramCount_) : 0, 0.0f);
    v_.assign(o.method == "adam" ? size_t(paramCount_) : 0, 0.0f);
}

void Engine::updateRunningStatistics() {
    const int64_t B = graph_.batch;
    size_t offset = size_t(paramCount_);
    for (size_t i = 0; i + 1 < graph_.buffers.size(); i += 2) {
        const BufferInfo &mean = graph_.buffers[i], &var = graph_.buffers[i + 1];
        const float* x = train_.acts.data() + train_.slices.at("bnin:" + mean.layer).first;
        const int64_t N = mean.size;
        std::vector<double> mu(size_t(N), 0.0), sq(size_t(N), 0.0);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < N; ++j) mu[size_t(j)] += x[b * N + j];
        for (double& m : mu) m /= double(B);
        for (int64_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < N; ++j) {
                double d = x[b * N + j] - mu[size_t(j)];
                sq[size_t(j)] += d * d;
            }
        float* rm = state_.data() + offset;
        float* rv = rm + N;
        const double k = mean.momentum;
        for (int64_t j = 0; j < N; ++j) { // the running variance is unbiased, as PyTorch keeps it
            rm[j] = float((1 - k) * rm[j] + k * mu[size_t(j)]);
            rv[j] = float((1 - k) * rv[j] + k * sq[size_t(j)] / double(B - 1));
        }
        offset += size_t(mean.size + var.size);
    }
}

float Engine::trainStep(const float* x, const void* target) {
    float loss = backward(x, target);
    updateRunningStatistics();
    ++batchesTracked_;
    ++step_;
    const Hyper h = hyperParameters(optimizer_, step_);
    float* p = state_.data();
    const float* g = grads_.data();
    float* m = m_.empty() ? nullptr : m_.data();
    float* v = v_.empty() ? nullptr : v_.data();
    if (options_.backend != "jit") {
        referenceUpdate(h, p, g, m, v, 0, paramCount_);
        return loss;
    }
    struct Context {
        CompiledModel::Update update;
        const Hyper* h;
        float *p, *m, *v;
        const float* g;
    } ctx{train_.code.update, &h, p, m, v, g};
    // Memory-bound: every thread takes a contiguous part of the parameters.
    gradc_parallel_for(
        [](void* c, int64_t begin, int64_t end, int64_t) {
            auto* k = static_cast<Context*>(c);
            k->update(k->p, k->g, k->m, k->v, k->h->data(), begin, end);
        },
        &ctx, paramCount_, resolveThreads(options_.threads));
    return loss;
}

float Engine::evaluate(const float* x, const void* target, float* logits) {
    if (!eval_) {
        auto c = std::make_unique<Compiled>();
        c->graph = evalGraph_;
        prepare(*c, false);
        eval_ = std::move(c);
    }
    float loss = run(*eval_, x, target, logits, false);
    evaluated_ = true;
    return loss;
}

const float* Engine::layerOutput(size_t i) const {
    internal_assert(evaluated_ && i < layerCount(), "layerOutput before evaluate");
    return eval_->acts.data() + eval_->slices.at("layer:" + graph_.layers[i].name).first;
}

} // namespace gradc
