// Execute.cpp — named tensors to and from the flat buffers of an Executable.
#include "Execute.h"

#include "CpuBackend.h"

#include <fmt/format.h>

namespace gradc {
namespace {

const Tensor& binding(const Bindings& b, const std::string& name, const Shape& shape) {
    auto it = b.find(name);
    if (it == b.end()) throw UserError({}, fmt::format("no value given for '{}'", name));
    if (it->second.shape != shape)
        throw UserError({}, fmt::format("'{}' has shape {}, expected {}", name,
                                        shapeString(it->second.shape), shapeString(shape)));
    return it->second;
}

/// Every array of an executable, in element type T.
template <typename T> struct Arrays {
    Executable& exe;
    std::vector<T> state, x, targetValues, logits, grads, acts;
    std::vector<int32_t> labels;
    T loss = 0;

    Arrays(Executable& e, const Bindings& b) : exe(e) {
        const Layout& l = e.layout();
        state.resize(size_t(l.size(Array::State)));
        x.resize(size_t(l.size(Array::X)));
        logits.resize(size_t(l.size(Array::Logits)));
        grads.resize(size_t(l.size(Array::Grads)));
        acts.resize(size_t(l.size(Array::Acts)));
        for (auto& en : l.entries) {
            switch (en.role) {
            case Role::Parameter: writeBuffer(state.data(), en, binding(b, en.name, en.shape).data); break;
            case Role::RunningStat: // given, or as initialised
                writeBuffer(state.data(), en, b.count(en.name) ? binding(b, en.name, en.shape).data
                                                               : std::vector<double>(size_t(en.elements()), en.initial));
                break;
            case Role::Input: writeBuffer(x.data(), en, binding(b, en.name, en.shape).data); break;
            case Role::Target:
                if (en.type == DType::Index) labels.resize(size_t(l.size(Array::Target))), writeBuffer(labels.data(), en, binding(b, en.name, en.shape).data);
                else targetValues.resize(size_t(l.size(Array::Target))), writeBuffer(targetValues.data(), en, binding(b, en.name, en.shape).data);
                break;
            default: break;
            }
        }
    }

    void step(bool backward) {
        EntryArgs<T> a;
        a.state = state.data(), a.x = x.data(), a.loss = &loss, a.acts = acts.data();
        a.target = labels.empty() ? static_cast<const void*>(targetValues.data()) : labels.data();
        if (backward) a.grads = grads.data(), exe.backward(a);
        else a.logits = logits.data(), exe.forward(a);
    }

    std::map<std::string, Tensor> outputs(bool backward) const {
        std::map<std::string, Tensor> out;
        for (auto& en : exe.layout().entries) {
            switch (en.role) {
            case Role::Logits:
                if (!backward) out["logits"] = readBuffer(logits.data(), en);
                break;
            case Role::Loss: out["loss"] = Tensor{{}, {double(loss)}}; break;
            case Role::Gradient:
                if (backward) out[outputLabel({OutputRole::Grad, en.name, 0})] = readBuffer(grads.data(), en);
                break;
            case Role::Preact: out[outputLabel({OutputRole::Preact, en.name, 0})] = readBuffer(acts.data(), en); break;
            case Role::NormInput: out[outputLabel({OutputRole::NormInput, en.name, 0})] = readBuffer(acts.data(), en); break;
            case Role::LayerOutput: out[outputLabel({OutputRole::LayerOutput, en.name, 0})] = readBuffer(acts.data(), en); break;
            default: break;
            }
        }
        return out;
    }
};

} // namespace

struct PreparedCall::Impl {
    std::unique_ptr<Arrays<float>> f32;
    std::unique_ptr<Arrays<double>> f64;
};

PreparedCall::PreparedCall(Executable& e, const Bindings& bindings) : impl_(std::make_unique<Impl>()) {
    if (e.f64()) impl_->f64 = std::make_unique<Arrays<double>>(e, bindings);
    else impl_->f32 = std::make_unique<Arrays<float>>(e, bindings);
}

PreparedCall::PreparedCall(const CompiledModel& model, const Graph&, const Bindings& bindings)
    : own_(cpuExecutable(model)), impl_(std::make_unique<Impl>()) {
    if (own_->f64()) impl_->f64 = std::make_unique<Arrays<double>>(*own_, bindings);
    else impl_->f32 = std::make_unique<Arrays<float>>(*own_, bindings);
}

PreparedCall::~PreparedCall() = default;

void PreparedCall::step(bool backward) {
    if (impl_->f64) impl_->f64->step(backward);
    else impl_->f32->step(backward);
}

std::map<std::string, Tensor> PreparedCall::outputs(bool backward) const {
    return impl_->f64 ? impl_->f64->outputs(backward) : impl_->f32->outputs(backward);
}

std::map<std::string, Tensor> run(Executable& e, const Bindings& bindings, bool backward) {
    PreparedCall call(e, bindings);
    call.step(backward);
    return call.outputs(backward);
}

std::map<std::string, Tensor> runCompiled(const CompiledModel& model, const Graph& forward,
                                          const Bindings& bindings, bool backward) {
    PreparedCall call(model, forward, bindings);
    call.step(backward);
    return call.outputs(backward);
}

} // namespace gradc
