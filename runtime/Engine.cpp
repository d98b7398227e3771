// Engine.cpp — a compiled model with its state; training and evaluation steps.
#include "Engine.h"

#include "Execute.h"
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
    prepare(train_, graph_);
    state_.assign(size_t(layout().size(Array::State)), 0.0f);
    grads_.assign(size_t(layout().size(Array::Grads)), 0.0f);
    setOptimizer({});
    initialise(0);
}

void Engine::prepare(Compiled& c, const Graph& g) {
    BackendOptions o;
    o.backend = options_.backend, o.cache = options_.cache, o.threads = options_.threads;
    c.exe = compile(g, o);
    c.acts.assign(size_t(c.exe->layout().size(Array::Acts)), 0.0f);
    c.logits.assign(size_t(c.exe->layout().size(Array::Logits)), 0.0f);
}

void Engine::initialise(uint64_t seed) {
    Bindings b = initialiseParameters(graph_, seed);
    for (auto& e : layout().entries)
        if (e.array == Array::State) writeBuffer(state_.data(), e, b.at(e.name).data);
    batchesTracked_ = 0;
}

void Engine::load(const std::string& path) {
    Bindings b = loadParameters(graph_, path);
    std::vector<float> state = state_;
    int64_t tracked = 0;
    for (auto& e : layout().entries) {
        if (e.array != Array::State) continue;
        auto it = b.find(e.name); // a running statistic the file lacks starts as initialised
        writeBuffer(state.data(), e, it != b.end() ? it->second.data : std::vector<double>(size_t(e.elements()), e.initial));
        auto n = b.find(e.layer + ".num_batches_tracked");
        if (e.role == Role::RunningStat && n != b.end()) tracked = std::max(tracked, int64_t(n->second.data[0]));
    }
    std::copy(state.begin(), state.end(), state_.begin()); // in place: parameters() stays valid
    batchesTracked_ = tracked;
}

void Engine::save(const std::string& path) const {
    Bindings b;
    for (auto& e : layout().entries) {
        if (e.array != Array::State) continue;
        b[e.name] = readBuffer(state_.data(), e);
        if (e.role == Role::RunningStat) b[e.layer + ".num_batches_tracked"] = Tensor{{}, {double(batchesTracked_)}};
    }
    std::set<std::string> integers;
    auto tensors = stateDict(graph_, b, &integers); // PyTorch's state_dict order
    writeSafetensors(path, tensors, false, integers);
}

float Engine::run(Compiled& c, const float* x, const void* target, float* logits, bool backward) {
    float loss = 0;
    EntryArgs<float> a;
    a.state = state_.data(), a.x = x, a.target = target, a.loss = &loss, a.acts = c.acts.data();
    if (backward) {
        a.grads = grads_.data();
        c.exe->backward(a);
    } else {
        a.logits = logits ? logits : c.logits.data();
        c.exe->forward(a);
    }
    if (&c == &train_) {
        lastOutputs_.clear(); // read back from `acts` when asked for
        haveOutputs_ = true;
    }
    return loss;
}

const std::map<std::string, Tensor>& Engine::lastOutputs() const {
    if (lastOutputs_.empty())
        for (const LayoutEntry* e : layout().all(Role::Preact))
            lastOutputs_[outputLabel({OutputRole::Preact, e->name, 0})] = readBuffer(train_.acts.data(), *e);
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
    m_.assign(o.method == "adam" || o.momentum > 0 ? size_t(layout().size(Array::Moment1)) : 0, 0.0f);
    v_.assign(o.method == "adam" ? size_t(layout().size(Array::Moment2)) : 0, 0.0f);
}

void Engine::updateRunningStatistics() {
    // The batch mean and unbiased variance are the training kernel's, kept in acts.
    for (size_t i = 0; i + 1 < graph_.buffers.size(); i += 2) { // a batchnorm's mean, then its variance
        const BufferInfo& info = graph_.buffers[i];
        float* rm = state_.data() + layout().at(Role::RunningStat, info.name).offset;
        float* rv = state_.data() + layout().at(Role::RunningStat, graph_.buffers[i + 1].name).offset;
        const float* mean = train_.acts.data() + layout().at(Role::NormMean, info.layer).offset;
        const float* var = train_.acts.data() + layout().at(Role::NormVar, info.layer).offset;
        const double k = info.momentum;
        for (int64_t j = 0; j < info.size; ++j) {
            rm[j] = float((1 - k) * rm[j] + k * mean[j]);
            rv[j] = float((1 - k) * rv[j] + k * var[j]);
        }
    }
}

float Engine::trainStep(const float* x, const void* target) {
    float loss = backward(x, target);
    updateRunningStatistics();
    ++batchesTracked_;
    ++step_;
    const Hyper h = hyperParameters(optimizer_, step_);
    UpdateArgs<float> args{state_.data(), grads_.data(), m_.empty() ? nullptr : m_.data(),
                           v_.empty() ? nullptr : v_.data()};
    struct Context {
        Executable* exe;
        const UpdateArgs<float>* args;
        const Hyper* h;
    } ctx{train_.exe.get(), &args, &h};
    // Memory-bound: every thread takes a contiguous part of the parameters.
    gradc_parallel_for(
        [](void* c, int64_t begin, int64_t end, int64_t) {
            auto* k = static_cast<Context*>(c);
            k->exe->update(*k->args, k->h->data(), begin, end);
        },
        &ctx, parameterCount(), resolveThreads(options_.threads));
    return loss;
}

float Engine::evaluate(const float* x, const void* target, float* logits) {
    if (!eval_) {
        auto c = std::make_unique<Compiled>();
        prepare(*c, evalGraph_);
        eval_ = std::move(c);
    }
    float loss = run(*eval_, x, target, logits, false);
    evaluated_ = true;
    return loss;
}

const float* Engine::layerOutput(size_t i) const {
    internal_assert(evaluated_ && i < layerCount(), "layerOutput before evaluate");
    return eval_->acts.data() + eval_->exe->layout().at(Role::LayerOutput, graph_.layers[i].name).offset;
}

} // namespace gradc
