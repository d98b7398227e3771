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
namespace {

/// f(T{}) with T the element type: double when `f64`, float otherwise.
template <typename F> decltype(auto) typed(bool f64, F&& f) {
    if (f64) return f(double{});
    return f(float{});
}

} // namespace

Engine::Engine(Graph forward, Graph evalGraph, const SessionOptions& options, bool f64)
    : graph_(std::move(forward)), options_(options), evalGraph_(std::move(evalGraph)), f64_(f64) {
    prepare(train_, graph_);
    state_ = Values(f64_, size_t(layout().size(Array::State)));
    grads_ = Values(f64_, size_t(layout().size(Array::Grads)));
    setOptimizer({});
    initialise(0);
}

void Engine::prepare(Compiled& c, const Graph& g) {
    BackendOptions o;
    o.backend = options_.backend, o.f64 = f64_, o.cache = options_.cache, o.threads = options_.threads;
    c.exe = compile(g, o);
    c.acts = Values(f64_, size_t(c.exe->layout().size(Array::Acts)));
    c.logits = Values(f64_, size_t(c.exe->layout().size(Array::Logits)));
    c.x = c.target = Values(f64_, 0);
}

void Engine::initialise(uint64_t seed) {
    Bindings b = initialiseParameters(graph_, seed);
    typed(f64_, [&](auto zero) {
        using T = decltype(zero);
        for (auto& e : layout().entries)
            if (e.array == Array::State) writeBuffer(state_.data<T>(), e, b.at(e.name).data);
    });
    batchesTracked_ = 0;
}

void Engine::load(const std::string& path) {
    Bindings b = loadParameters(graph_, path);
    Values state = state_;
    int64_t tracked = 0;
    typed(f64_, [&](auto zero) {
        using T = decltype(zero);
        for (auto& e : layout().entries) {
            if (e.array != Array::State) continue;
            auto it = b.find(e.name); // a running statistic the file lacks starts as initialised
            writeBuffer(state.data<T>(), e,
                        it != b.end() ? it->second.data : std::vector<double>(size_t(e.elements()), e.initial));
            auto n = b.find(e.layer + ".num_batches_tracked");
            if (e.role == Role::RunningStat && n != b.end()) tracked = std::max(tracked, int64_t(n->second.data[0]));
        }
    });
    state_ = state; // the same size: in place, parameters() stays valid
    batchesTracked_ = tracked;
}

void Engine::save(const std::string& path) const {
    Bindings b;
    for (auto& e : layout().entries) {
        if (e.array != Array::State) continue;
        b[e.name] = typed(f64_, [&](auto zero) { return readBuffer(state_.data<decltype(zero)>(), e); });
        if (e.role == Role::RunningStat) b[e.layer + ".num_batches_tracked"] = Tensor{{}, {double(batchesTracked_)}};
    }
    std::set<std::string> integers;
    auto tensors = stateDict(graph_, b, &integers); // PyTorch's state_dict order
    writeSafetensors(path, tensors, false, integers);
}

template <typename T, typename U>
double Engine::runAs(Compiled& c, const U* x, const void* target, U* logits, bool backward) {
    const Layout& l = c.exe->layout();
    T loss = 0;
    EntryArgs<T> a;
    a.state = state_.data<T>(), a.target = target, a.loss = &loss, a.acts = c.acts.data<T>();
    if constexpr (std::is_same_v<T, U>) {
        a.x = x;
    } else { // the caller's values converted to the element type
        c.x.assign(size_t(l.size(Array::X)));
        std::copy(x, x + c.x.size(), c.x.data<T>());
        a.x = c.x.data<T>();
        const std::vector<const LayoutEntry*> t = l.all(Role::Target);
        if (!t.empty() && t[0]->type != DType::Index) {
            c.target.assign(size_t(l.size(Array::Target)));
            const U* values = static_cast<const U*>(target);
            std::copy(values, values + c.target.size(), c.target.data<T>());
            a.target = c.target.data<T>();
        }
    }
    if (backward) {
        a.grads = grads_.data<T>();
        c.exe->backward(a);
    } else {
        if constexpr (std::is_same_v<T, U>) a.logits = logits ? logits : c.logits.data<T>();
        else a.logits = c.logits.data<T>();
        c.exe->forward(a);
        if constexpr (!std::is_same_v<T, U>)
            if (logits) std::copy(c.logits.data<T>(), c.logits.data<T>() + c.logits.size(), logits);
    }
    if (&c == &train_) {
        lastOutputs_.clear(); // read back from `acts` when asked for
        haveOutputs_ = true;
    }
    return double(loss);
}

template <typename U> double Engine::run(Compiled& c, const U* x, const void* target, U* logits, bool backward) {
    return f64_ ? runAs<double>(c, x, target, logits, backward) : runAs<float>(c, x, target, logits, backward);
}

const std::map<std::string, Tensor>& Engine::lastOutputs() const {
    if (lastOutputs_.empty())
        for (const LayoutEntry* e : layout().all(Role::Preact))
            lastOutputs_[outputLabel({OutputRole::Preact, e->name, 0})] =
                typed(f64_, [&](auto zero) { return readBuffer(train_.acts.data<decltype(zero)>(), *e); });
    return lastOutputs_;
}

std::vector<TensorStats> Engine::gradientStatistics() const {
    return typed(f64_, [&](auto zero) { return gradc::gradientStatistics(layout(), grads_.data<decltype(zero)>()); });
}

template <typename U> double Engine::forward(const U* x, const void* target, U* logits) {
    return run(train_, x, target, logits, false);
}

template <typename U> double Engine::backward(const U* x, const void* target) {
    double loss = run(train_, x, target, static_cast<U*>(nullptr), true);
    haveGradients_ = true;
    return loss;
}

void Engine::setOptimizer(const OptimizerOptions& o) {
    hyperParameters(o, 1); // checks the options
    optimizer_ = o;
    step_ = 0;
    m_ = Values(f64_, o.method == "adam" || o.momentum > 0 ? size_t(layout().size(Array::Moment1)) : 0);
    v_ = Values(f64_, o.method == "adam" ? size_t(layout().size(Array::Moment2)) : 0);
}

template <typename T> void Engine::updateRunningStatistics() {
    // The batch mean and unbiased variance are the training kernel's, kept in acts.
    for (size_t i = 0; i + 1 < graph_.buffers.size(); i += 2) { // a batchnorm's mean, then its variance
        const BufferInfo& info = graph_.buffers[i];
        T* rm = state_.data<T>() + layout().at(Role::RunningStat, info.name).offset;
        T* rv = state_.data<T>() + layout().at(Role::RunningStat, graph_.buffers[i + 1].name).offset;
        const T* mean = train_.acts.data<T>() + layout().at(Role::NormMean, info.layer).offset;
        const T* var = train_.acts.data<T>() + layout().at(Role::NormVar, info.layer).offset;
        const double k = info.momentum;
        for (int64_t j = 0; j < info.size; ++j) {
            rm[j] = T((1 - k) * rm[j] + k * mean[j]);
            rv[j] = T((1 - k) * rv[j] + k * var[j]);
        }
    }
}

template <typename U> double Engine::trainStep(const U* x, const void* target) {
    double loss = backward(x, target);
    if (f64_) updateRunningStatistics<double>(), update<double>();
    else updateRunningStatistics<float>(), update<float>();
    return loss;
}

template <typename T> void Engine::update() {
    ++batchesTracked_;
    ++step_;
    const Hyper h = hyperParameters(optimizer_, step_);
    UpdateArgs<T> args{state_.data<T>(), grads_.data<T>(), m_.empty() ? nullptr : m_.data<T>(),
                       v_.empty() ? nullptr : v_.data<T>()};
    struct Context {
        Executable* exe;
        const UpdateArgs<T>* args;
        const Hyper* h;
    } ctx{train_.exe.get(), &args, &h};
    // Memory-bound: every thread takes a contiguous part of the parameters.
    gradc_parallel_for(
        [](void* c, int64_t begin, int64_t end, int64_t) {
            auto* k = static_cast<Context*>(c);
            k->exe->update(*k->args, k->h->data(), begin, end);
        },
        &ctx, parameterCount(), resolveThreads(options_.threads));
}

template <typename U> double Engine::evaluate(const U* x, const void* target, U* logits) {
    if (!eval_) {
        auto c = std::make_unique<Compiled>();
        prepare(*c, evalGraph_);
        eval_ = std::move(c);
    }
    double loss = run(*eval_, x, target, logits, false);
    evaluated_ = true;
    return loss;
}

template <typename T> const T* Engine::layerOutput(size_t i) const {
    internal_assert(evaluated_ && i < layerCount(), "layerOutput before evaluate");
    return eval_->acts.data<T>() + eval_->exe->layout().at(Role::LayerOutput, graph_.layers[i].name).offset;
}

// Callers pass float or double.
template double Engine::forward(const float*, const void*, float*);
template double Engine::forward(const double*, const void*, double*);
template double Engine::backward(const float*, const void*);
template double Engine::backward(const double*, const void*);
template double Engine::trainStep(const float*, const void*);
template double Engine::trainStep(const double*, const void*);
template double Engine::evaluate(const float*, const void*, float*);
template double Engine::evaluate(const double*, const void*, double*);
template const float* Engine::layerOutput(size_t) const;
template const double* Engine::layerOutput(size_t) const;

} // namespace gradc
