// Session.cpp — the public gradc::Session: an Engine behind a pimpl, and the one place its
// internal errors become gradc::Error.
#include "Engine.h"
#include "ModelImpl.h"
#include "Sema.h"
#include "Stats.h"

#include <gradc/Session.h>

#include <fmt/format.h>

#include <cmath>

namespace gradc {

struct Session::Impl {
    std::unique_ptr<Engine> engine;
    const void* target(const Graph& g, const void* t, bool labels) const {
        if (labels != (g.lossKind == "cross_entropy"))
            throw UserError({}, fmt::format("model {} has loss {}: pass {}", g.model, g.lossKind,
                                            labels ? "float targets" : "int32 class labels"));
        return t;
    }
};

Session::Session(const Model& model, int64_t batch, const SessionOptions& options) : impl_(std::make_unique<Impl>()) {
    publicCall([&] {
        SemaOptions train{batch}, eval{batch, /*eval=*/true, /*layerOutputs=*/true};
        impl_->engine = std::make_unique<Engine>(buildGraph(*model.impl().ast, train),
                                                 buildGraph(*model.impl().ast, eval), options);
        return 0;
    });
}

Session::~Session() = default;
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;

int64_t Session::batch() const { return impl_->engine->batch(); }
float* Session::parameters() { return impl_->engine->state().data(); }
const float* Session::gradients() const { return impl_->engine->gradients().data(); }

void Session::initialiseParameters(uint64_t seed) { impl_->engine->initialise(seed); }
void Session::loadParameters(const std::string& path) {
    publicCall([&] { return impl_->engine->load(path), 0; });
}
void Session::saveParameters(const std::string& path) const {
    publicCall([&] { return impl_->engine->save(path), 0; });
}

float Session::forward(const float* x, const int32_t* labels, float* logits) {
    return publicCall([&] { return impl_->engine->forward(x, impl_->target(impl_->engine->graph(), labels, true), logits); });
}
float Session::forward(const float* x, const float* targets, float* logits) {
    return publicCall([&] { return impl_->engine->forward(x, impl_->target(impl_->engine->graph(), targets, false), logits); });
}
float Session::backward(const float* x, const int32_t* labels) {
    return publicCall([&] { return impl_->engine->backward(x, impl_->target(impl_->engine->graph(), labels, true)); });
}
float Session::backward(const float* x, const float* targets) {
    return publicCall([&] { return impl_->engine->backward(x, impl_->target(impl_->engine->graph(), targets, false)); });
}

void Session::setOptimizer(const OptimizerOptions& options) {
    publicCall([&] { return impl_->engine->setOptimizer(options), 0; });
}
float Session::trainStep(const float* x, const int32_t* labels) {
    return publicCall([&] { return impl_->engine->trainStep(x, impl_->target(impl_->engine->graph(), labels, true)); });
}
float Session::trainStep(const float* x, const float* targets) {
    return publicCall([&] { return impl_->engine->trainStep(x, impl_->target(impl_->engine->graph(), targets, false)); });
}
int64_t Session::steps() const { return impl_->engine->steps(); }

float Session::evaluate(const float* x, const int32_t* labels, float* logits) {
    return publicCall([&] { return impl_->engine->evaluate(x, impl_->target(impl_->engine->graph(), labels, true), logits); });
}
float Session::evaluate(const float* x, const float* targets, float* logits) {
    return publicCall([&] { return impl_->engine->evaluate(x, impl_->target(impl_->engine->graph(), targets, false), logits); });
}

std::vector<LayerOutput> Session::layerOutputs() const {
    const Engine& e = *impl_->engine;
    std::vector<LayerOutput> out;
    for (size_t i = 0; i < e.layerCount(); ++i) {
        const LayerInfo& l = e.graph().layers[i];
        const float* v = e.layerOutput(i);
        out.push_back({l.name, l.what, l.out, std::vector<float>(v, v + elementCount(l.out))});
    }
    return out;
}

std::vector<GradientStatistics> Session::gradientStatistics() const {
    const Engine& e = *impl_->engine;
    if (!e.haveGradients()) throw Error("gradientStatistics: call backward first");
    std::vector<GradientStatistics> out;
    size_t offset = 0;
    for (auto& p : e.graph().params) {
        const Shape& s = e.graph()[p.node].shape;
        TensorStats t = statistics(p.name, s, e.gradients().data() + offset);
        offset += size_t(elementCount(s));
        out.push_back({t.name, t.shape, t.count, t.mean, t.std, t.absMean, t.min, t.max, t.l2, t.zeroFraction,
                       t.nan, t.inf, t.edges, t.counts});
    }
    return out;
}

std::vector<ActivationStatistics> Session::activationStatistics() const {
    std::vector<ActivationStatistics> out;
    for (auto& a : gradc::activationStatistics(impl_->engine->graph(), impl_->engine->lastOutputs()))
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
