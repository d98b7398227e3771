// Session.cpp — the public gradc::Session: an Engine behind a pimpl, and the one place its
// internal errors become gradc::Error. Every call checks its use first: a Session that was
// moved from, one already in use by another thread, null buffers, labels that are not
// classes, and results asked for before the pass that makes them are errors, never a crash.
#include "Engine.h"
#include "Jobs.h"
#include "ModelImpl.h"
#include "PublicStats.h"
#include "Sema.h"

#include <gradc/Session.h>

#include <fmt/format.h>

#include <atomic>
#include <cmath>

namespace gradc {

struct Session::Impl {
    std::unique_ptr<Engine> engine;
    /// Set while a call runs: a Session is used by one thread at a time, and a second thread
    /// calling at once gets an Error instead of sharing its buffers.
    std::atomic<bool> busy{false};
};

namespace {

[[noreturn]] void misuse(const char* call, const std::string& message) {
    throw Error(fmt::format("gradc: error: Session::{}: {}", call, message));
}

/// Runs `f(engine)` for the public call `call` on the Session whose Impl is `impl`, with
/// the Session held for this thread, and internal errors turned into gradc::Error.
template <typename I, typename F> auto use(I* impl, const char* call, F&& f) {
    if (!impl) misuse(call, "this Session was moved from");
    if (impl->busy.exchange(true, std::memory_order_acq_rel))
        misuse(call, "the Session is in use by another thread (a Session is used by one thread at a time; "
                     "different Sessions are independent)");
    struct Release {
        std::atomic<bool>& busy;
        ~Release() { busy.store(false, std::memory_order_release); }
    } release{impl->busy};
    return publicCall([&] { return f(*impl->engine); });
}

void checkInput(const char* call, const float* x) {
    if (!x) misuse(call, "the input x is a null pointer");
}

/// The class labels of a cross_entropy model: one per example, each in [0, classes).
const void* target(const char* call, const Graph& g, const int32_t* labels) {
    if (g.lossKind != "cross_entropy")
        misuse(call, fmt::format("model {} has loss {}: pass float targets", g.model, g.lossKind));
    if (!labels) misuse(call, "the labels are a null pointer");
    const int64_t classes = g[g.output(OutputRole::Logits)].shape[1];
    for (int64_t i = 0; i < g.batch; ++i)
        if (labels[i] < 0 || labels[i] >= classes)
            misuse(call, fmt::format("labels[{}] is {}, not a class of model {} (0 to {})", i, labels[i], g.model,
                                     classes - 1));
    return labels;
}

/// The float targets of a bce or mse model: [batch, outputWidth].
const void* target(const char* call, const Graph& g, const float* targets) {
    if (g.lossKind == "cross_entropy")
        misuse(call, fmt::format("model {} has loss {}: pass int32 class labels", g.model, g.lossKind));
    if (!targets) misuse(call, "the targets are a null pointer");
    return targets;
}

} // namespace

Session::Session(const Model& model, int64_t batch, const SessionOptions& options) : impl_(std::make_unique<Impl>()) {
    publicCall([&] {
        const Model::Impl& m = model.impl(); // throws for a Model that was moved from
        checkSession(options); // before anything is compiled
        SemaOptions train{batch}, eval{batch, /*eval=*/true, /*layerOutputs=*/true};
        impl_->engine = std::make_unique<Engine>(buildGraph(*m.ast, train), buildGraph(*m.ast, eval), options);
        return 0;
    });
}

Session::~Session() = default;
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&&) noexcept = default;

std::string Session::describe() const {
    return use(impl_.get(), "describe", [](Engine& e) { return e.describe(); });
}

int64_t Session::batch() const {
    return use(impl_.get(), "batch", [](Engine& e) { return e.batch(); });
}
float* Session::parameters() {
    return use(impl_.get(), "parameters", [](Engine& e) { return e.state().data<float>(); });
}
const float* Session::gradients() const {
    return use(impl_.get(), "gradients", [](Engine& e) {
        if (!e.haveGradients()) misuse("gradients", "no gradients yet: call backward() or trainStep() first");
        return e.gradients().data<float>();
    });
}

void Session::initialiseParameters(uint64_t seed) {
    use(impl_.get(), "initialiseParameters", [&](Engine& e) { return e.initialise(seed), 0; });
}
void Session::loadParameters(const std::string& path) {
    use(impl_.get(), "loadParameters", [&](Engine& e) { return e.load(path), 0; });
}
void Session::saveParameters(const std::string& path) const {
    use(impl_.get(), "saveParameters", [&](Engine& e) { return e.save(path), 0; });
}

float Session::forward(const float* x, const int32_t* labels, float* logits) {
    return use(impl_.get(), "forward", [&](Engine& e) {
        checkInput("forward", x);
        return float(e.forward(x, target("forward", e.graph(), labels), logits));
    });
}
float Session::forward(const float* x, std::nullptr_t, float* logits) {
    return use(impl_.get(), "forward", [&](Engine& e) {
        checkInput("forward", x);
        if (!logits) misuse("forward", "without labels or targets, the logits are what it gives: they are a null pointer");
        // The compiled pass reads a target: any valid one (class 0, or zeros) for a loss that
        // is then not returned.
        const Graph& g = e.graph();
        const int64_t width = g[g.output(OutputRole::Logits)].shape[1];
        if (g.lossKind == "cross_entropy") {
            const std::vector<int32_t> none(size_t(g.batch), 0);
            e.forward(x, none.data(), logits);
        } else {
            const std::vector<float> none(size_t(g.batch * width), 0.0f);
            e.forward(x, none.data(), logits);
        }
        return std::nanf("");
    });
}

float Session::forward(const float* x, const float* targets, float* logits) {
    return use(impl_.get(), "forward", [&](Engine& e) {
        checkInput("forward", x);
        return float(e.forward(x, target("forward", e.graph(), targets), logits));
    });
}
float Session::backward(const float* x, const int32_t* labels) {
    return use(impl_.get(), "backward", [&](Engine& e) {
        checkInput("backward", x);
        return float(e.backward(x, target("backward", e.graph(), labels)));
    });
}
float Session::backward(const float* x, const float* targets) {
    return use(impl_.get(), "backward", [&](Engine& e) {
        checkInput("backward", x);
        return float(e.backward(x, target("backward", e.graph(), targets)));
    });
}

void Session::setOptimizer(const OptimizerOptions& options) {
    use(impl_.get(), "setOptimizer", [&](Engine& e) { return e.setOptimizer(options), 0; });
}
float Session::trainStep(const float* x, const int32_t* labels) {
    return use(impl_.get(), "trainStep", [&](Engine& e) {
        checkInput("trainStep", x);
        return float(e.trainStep(x, target("trainStep", e.graph(), labels)));
    });
}
float Session::trainStep(const float* x, const float* targets) {
    return use(impl_.get(), "trainStep", [&](Engine& e) {
        checkInput("trainStep", x);
        return float(e.trainStep(x, target("trainStep", e.graph(), targets)));
    });
}
int64_t Session::steps() const {
    return use(impl_.get(), "steps", [](Engine& e) { return e.steps(); });
}

float Session::evaluate(const float* x, const int32_t* labels, float* logits) {
    return use(impl_.get(), "evaluate", [&](Engine& e) {
        checkInput("evaluate", x);
        return float(e.evaluate(x, target("evaluate", e.graph(), labels), logits));
    });
}
float Session::evaluate(const float* x, const float* targets, float* logits) {
    return use(impl_.get(), "evaluate", [&](Engine& e) {
        checkInput("evaluate", x);
        return float(e.evaluate(x, target("evaluate", e.graph(), targets), logits));
    });
}

std::vector<LayerOutput> Session::layerOutputs() const {
    return use(impl_.get(), "layerOutputs", [](Engine& e) {
        if (!e.evaluated()) misuse("layerOutputs", "no layer outputs yet: call evaluate() first");
        std::vector<LayerOutput> out;
        for (size_t i = 0; i < e.layerCount(); ++i) {
            const LayerInfo& l = e.graph().layers[i];
            const float* v = e.layerOutput<float>(i);
            out.push_back({l.name, l.what, l.out, std::vector<float>(v, v + elementCount(l.out))});
        }
        return out;
    });
}

namespace {

std::vector<GradientStatistics> gradientStatisticsOf(const Engine& e, const char* call) {
    if (!e.haveGradients()) misuse(call, "no gradients yet: call backward() or trainStep() first");
    std::vector<GradientStatistics> out;
    for (const TensorStats& t : e.gradientStatistics())
        out.push_back(publicStatistics(t));
    return out;
}

} // namespace

std::vector<GradientStatistics> Session::gradientStatistics() const {
    return use(impl_.get(), "gradientStatistics", [](Engine& e) { return gradientStatisticsOf(e, "gradientStatistics"); });
}

std::vector<ActivationStatistics> Session::activationStatistics() const {
    return use(impl_.get(), "activationStatistics", [](Engine& e) {
        if (!e.haveOutputs())
            misuse("activationStatistics", "no activations yet: call forward(), backward() or trainStep() first");
        std::vector<ActivationStatistics> out;
        for (auto& a : gradc::activationStatistics(e.graph(), e.lastOutputs()))
            out.push_back({a.name, a.function, a.mean, a.std, a.lowGradientFraction});
        return out;
    });
}

double Session::vanishingFactor() const {
    return use(impl_.get(), "vanishingFactor", [](Engine& e) {
        if (!e.haveGradients()) misuse("vanishingFactor", "no gradients yet: call backward() or trainStep() first");
        return gradc::vanishingFactor(e.gradientStatistics()).value;
    });
}

std::vector<ThroughTimeStatistics> Session::throughTime() const {
    return use(impl_.get(), "throughTime", [](Engine& e) {
        if (!e.haveGradients())
            misuse("throughTime", "no gradients yet: call backward() or trainStep() first");
        return publicThroughTime(e.throughTime());
    });
}

} // namespace gradc
