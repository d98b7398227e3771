// Engine.cpp — a compiled model with its state; training and evaluation steps.
#include "Engine.h"

#include "Cluster.h"

#include "Execute.h"
#include "Init.h"
#include "SafeTensors.h"
#include "ThreadPool.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>

namespace gradc {

Engine::Engine(Graph forward, Graph evalGraph, const SessionOptions& options, bool f64)
    : graph_(std::move(forward)), options_(options), f64_(f64), train_(std::in_place, compileGraph(graph_)),
      evalGraph_(std::move(evalGraph)) {
    state_ = Values(f64_, size_t(layout().size(Array::State)));
    grads_ = Values(f64_, size_t(layout().size(Array::Grads)));
    setOptimizer({});
    initialise(0);
}

std::unique_ptr<Executable> Engine::compileGraph(const Graph& g) const {
    BackendOptions o;
    o.backend = options_.backend, o.f64 = f64_, o.cache = options_.cache, o.threads = options_.threads;
    o.isa = options_.isa, o.cacheDir = options_.cacheDir;
    return compile(g, o);
}

void Engine::initialise(uint64_t seed) {
    writeState(state_, layout(), initialiseParameters(graph_, seed));
    batchesTracked_ = 0;
}

void Engine::load(const std::string& path) {
    Bindings b = loadParameters(graph_, path);
    Values state = state_;
    writeState(state, layout(), b); // a running statistic the file lacks starts as initialised
    int64_t tracked = 0;
    for (const LayoutEntry* e : layout().all(Role::RunningStat)) {
        auto n = b.find(e->layer + ".num_batches_tracked");
        if (n != b.end()) tracked = std::max(tracked, int64_t(n->second.data[0]));
    }
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

const std::map<std::string, Tensor>& Engine::lastOutputs() const {
    if (lastOutputs_.empty())
        for (const LayoutEntry* e : layout().all(Role::Preact))
            lastOutputs_[outputLabel({OutputRole::Preact, e->name, 0})] =
                typed(f64_, [&](auto zero) { return readBuffer(train_->program.acts().data<decltype(zero)>(), *e); });
    return lastOutputs_;
}

std::vector<TensorStats> Engine::gradientStatistics() const {
    return typed(f64_, [&](auto zero) { return gradc::gradientStatistics(layout(), grads_.data<decltype(zero)>()); });
}

std::vector<ThroughTime> Engine::throughTime() const {
    if (!haveGradients_) return {};      // the backward pass writes the norms
    std::map<std::string, Tensor> norms; // by outputLabel, as the backward entry names them
    for (const LayoutEntry* e : layout().all(Role::ThroughTime))
        norms[outputLabel({OutputRole::ThroughTime, e->name, 0})] = typed(f64_, [&](auto zero) {
            return readBuffer(train_->program.acts().data<decltype(zero)>(), *e);
        });
    if (graph_.syncWorld > 1) // each process's are of its rows, and of its rows' mean loss
        for (auto& [label, t] : norms) {
            cluster::normSum(t.data.data(), t.data.size());
            for (double& v : t.data) v /= graph_.syncWorld;
        }
    return throughTimeStatistics(graph_, norms);
}

template <typename U> double Engine::forward(const U* x, const void* target, U* logits) {
    double loss = train_->program.run(state_, nullptr, x, target, logits);
    lastOutputs_.clear(); // read back from `acts` when asked for
    haveOutputs_ = true;
    return loss;
}

template <typename U> double Engine::backward(const U* x, const void* target) {
    double loss = train_->program.run(state_, &grads_, x, target, static_cast<U*>(nullptr));
    lastOutputs_.clear();
    haveOutputs_ = haveGradients_ = true;
    return loss;
}

void Engine::setOptimizer(const OptimizerOptions& o) {
    hyperParameters(o, 1); // checks the options
    // The backward pass must also give Σ g², unless the processes of a data-parallel run
    // compute it from their averaged gradients.
    if (o.clipGradNorm > 0 && !graph_.gradNorm && graph_.syncWorld == 1) {
        Graph g = graph_;
        g.gradNorm = true;
        std::unique_ptr<Executable> exe = compileGraph(g); // may throw: nothing has changed yet
        graph_.gradNorm = true;
        train_.emplace(std::move(exe)); // the same State and Grads; new Acts
        lastOutputs_.clear();
        haveOutputs_ = false;
    }
    optimizer_ = o;
    clip_ = {};
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
        const T* mean = train_->program.acts().data<T>() + layout().at(Role::NormMean, info.layer).offset;
        const T* var = train_->program.acts().data<T>() + layout().at(Role::NormVar, info.layer).offset;
        const double k = info.momentum;
        for (int64_t j = 0; j < info.size; ++j) {
            rm[j] = T((1 - k) * rm[j] + k * mean[j]);
            rv[j] = T((1 - k) * rv[j] + k * var[j]);
        }
    }
}

namespace {

/// The gradients' allreduce of a data-parallel step, in buckets of whole parameters of about
/// kBucketBytes, the last layers' first (the backward pass finishes them first): a bucket's
/// non-blocking sum starts as soon as the backward pass has made all its gradients final
/// (gradc_gradients_ready), and every call polls the started ones so that MPI moves them on.
class GradientBuckets {
public:
    static constexpr size_t kBucketBytes = size_t(1) << 20;

    GradientBuckets(char* grads, const Layout& layout, bool f64) : grads_(grads), f64_(f64) {
        std::vector<std::pair<int64_t, int64_t>> params; // offset, elements
        for (const LayoutEntry* e : layout.all(Role::Gradient)) params.emplace_back(e->offset, elementCount(e->shape));
        std::sort(params.begin(), params.end());
        const int64_t bytes = f64 ? 8 : 4;
        int64_t end = params.empty() ? 0 : params.back().first + params.back().second;
        for (size_t i = params.size(); i-- > 0;) {
            const bool full = (end - params[i].first) * bytes >= int64_t(kBucketBytes);
            if (full || i == 0) {
                const int64_t begin = i == 0 ? 0 : params[i].first;
                buckets_.push_back({begin, end, 0, {}, false});
                end = begin;
            }
        }
        std::reverse(buckets_.begin(), buckets_.end()); // by offset
        for (auto& [offset, n] : params) bucketOf(offset).remaining += n;
    }

    static void ready(void* self, int64_t offset, int64_t n) {
        auto& b = *static_cast<GradientBuckets*>(self);
        Bucket& bucket = b.bucketOf(offset);
        if ((bucket.remaining -= n) == 0) b.start(bucket);
        for (Bucket& other : b.buckets_)
            if (other.started) other.sum.test();
    }

    /// Starts the buckets not started yet (a gradient no kernel wrote), then waits for all.
    void finish() {
        for (Bucket& bucket : buckets_)
            if (!bucket.started) start(bucket);
        for (Bucket& bucket : buckets_) bucket.sum.wait();
    }

private:
    struct Bucket {
        int64_t begin, end, remaining;
        cluster::PendingSum sum;
        bool started;
    };
    Bucket& bucketOf(int64_t offset) {
        auto it = std::upper_bound(buckets_.begin(), buckets_.end(), offset,
                                   [](int64_t o, const Bucket& b) { return o < b.begin; });
        internal_assert(it != buckets_.begin(), "a gradient outside the gradients' buckets");
        return *std::prev(it);
    }
    void start(Bucket& bucket) {
        bucket.started = true;
        const int64_t bytes = f64_ ? 8 : 4;
        bucket.sum = cluster::PendingSum::start(grads_ + bucket.begin * bytes, size_t(bucket.end - bucket.begin), f64_);
    }
    char* grads_;
    bool f64_;
    std::vector<Bucket> buckets_;
};

} // namespace

template <typename U> double Engine::sharedBackward(const U* x, const void* target) {
    // Every process's loss and gradients are means over its share of the batch: the global
    // batch's are their means.
    char* grads = typed(f64_, [&](auto zero) { return reinterpret_cast<char*>(grads_.data<decltype(zero)>()); });
    GradientBuckets buckets(grads, layout(), f64_);
    setGradientsReady(&GradientBuckets::ready, &buckets);
    double loss = 0;
    try {
        loss = backward(x, target);
    } catch (...) {
        setGradientsReady(nullptr, nullptr);
        throw;
    }
    setGradientsReady(nullptr, nullptr);
    const auto start = std::chrono::steady_clock::now();
    buckets.finish();
    cluster::sum(&loss, 1);
    commSeconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    typed(f64_, [&](auto zero) {
        using T = decltype(zero);
        T* g = grads_.data<T>();
        const T scale = T(1) / T(graph_.syncWorld);
        for (int64_t i = 0; i < parameterCount(); ++i) g[i] *= scale;
        return 0;
    });
    return loss / graph_.syncWorld;
}

template <typename U> double Engine::trainStep(const U* x, const void* target) {
    const bool shared = graph_.syncWorld > 1; // one of the processes of a data-parallel run
    const double loss = shared ? sharedBackward(x, target) : backward(x, target);
    if (clipping()) { // torch.nn.utils.clip_grad_norm_: the norm over every gradient, from the backward pass
        const double sumSq = typed(f64_, [&](auto zero) {
            using T = decltype(zero);
            if (shared) { // of the averaged gradients, not this process's own
                const T* g = grads_.data<T>();
                double s = 0;
                for (int64_t i = 0; i < parameterCount(); ++i) s += double(g[i]) * double(g[i]);
                return s;
            }
            return double(train_->program.acts().data<T>()[layout().at(Role::GradNormSq).offset]);
        });
        clip_.norm = std::sqrt(sumSq);
        clip_.scale = clipCoefficient(clip_.norm, optimizer_.clipGradNorm);
        clip_.clipped = !(clip_.scale == 1);
    }
    if (f64_) updateRunningStatistics<double>(), update<double>();
    else updateRunningStatistics<float>(), update<float>();
    return loss;
}

template <typename T> void Engine::update() {
    ++batchesTracked_;
    ++step_;
    Hyper h = hyperParameters(optimizer_, step_);
    if (clipping()) h[size_t(HyperSlot::GradScale)] = clip_.scale;
    UpdateArgs<T> args{state_.data<T>(), grads_.data<T>(), m_.empty() ? nullptr : m_.data<T>(),
                       v_.empty() ? nullptr : v_.data<T>()};
    struct Context {
        Executable* exe;
        const UpdateArgs<T>* args;
        const Hyper* h;
    } ctx{train_->exe.get(), &args, &h};
    // Memory-bound: every thread takes a contiguous part of the parameters.
    gradc_parallel_for(
        [](void* c, int64_t begin, int64_t end, int64_t) {
            auto* k = static_cast<Context*>(c);
            k->exe->update(*k->args, k->h->data(), begin, end);
        },
        &ctx, parameterCount(), resolveThreads(options_.threads));
}

template <typename U> double Engine::evaluate(const U* x, const void* target, U* logits) {
    if (!eval_) eval_ = std::make_unique<Compiled>(compileGraph(evalGraph_));
    double loss = eval_->program.run(state_, nullptr, x, target, logits);
    evaluated_ = true;
    return loss;
}

template <typename T> const T* Engine::layerOutput(size_t i) const {
    internal_assert(evaluated_ && i < layerCount(), "layerOutput before evaluate");
    return eval_->program.acts().data<T>() + eval_->exe->layout().at(Role::LayerOutput, graph_.layers[i].name).offset;
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
