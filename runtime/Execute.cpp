// Execute.cpp — Program: an Executable's calls over flat buffers; named tensors to and from them.
#include "Execute.h"

#include "CpuBackend.h"

#include <fmt/format.h>

#include <algorithm>

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

} // namespace

void writeState(Values& state, const Layout& layout, const Bindings& b) {
    typed(state.f64(), [&](auto zero) {
        using T = decltype(zero);
        for (auto& e : layout.entries) {
            if (e.array != Array::State) continue;
            if (e.role == Role::RunningStat && !b.count(e.name)) // a running statistic not given starts as initialised
                writeBuffer(state.data<T>(), e, std::vector<double>(size_t(e.elements()), e.initial));
            else writeBuffer(state.data<T>(), e, binding(b, e.name, e.shape).data);
        }
    });
}

Program::Program(Executable& exe)
    : exe_(exe), acts_(exe.f64(), size_t(exe.layout().size(Array::Acts))),
      logits_(exe.f64(), size_t(exe.layout().size(Array::Logits))), x_(exe.f64(), 0), target_(exe.f64(), 0) {}

void Program::setInputs(const Bindings& b) {
    const Layout& l = layout();
    x_.assign(size_t(l.size(Array::X)));
    labels_.clear();
    typed(f64(), [&](auto zero) {
        using T = decltype(zero);
        for (auto& e : l.entries) {
            if (e.role == Role::Input) writeBuffer(x_.data<T>(), e, binding(b, e.name, e.shape).data);
            if (e.role != Role::Target) continue;
            const std::vector<double>& values = binding(b, e.name, e.shape).data;
            if (e.type == DType::Index) labels_.resize(size_t(l.size(Array::Target))), writeBuffer(labels_.data(), e, values);
            else target_.assign(size_t(l.size(Array::Target))), writeBuffer(target_.data<T>(), e, values);
        }
    });
}

template <typename T>
double Program::call(const Values& state, Values* grads, const T* x, const void* target, T* logits) {
    T loss = 0;
    EntryArgs<T> a;
    a.state = state.data<T>(), a.x = x, a.target = target, a.loss = &loss, a.acts = acts_.data<T>();
    if (grads) a.grads = grads->data<T>(), exe_.backward(a);
    else a.logits = logits ? logits : logits_.data<T>(), exe_.forward(a);
    return double(loss);
}

double Program::run(const Values& state, Values* grads) {
    return typed(f64(), [&](auto zero) {
        using T = decltype(zero);
        const void* target = labels_.empty() ? static_cast<const void*>(target_.data<T>()) : labels_.data();
        return call<T>(state, grads, x_.data<T>(), target, static_cast<T*>(nullptr));
    });
}

template <typename U>
double Program::run(const Values& state, Values* grads, const U* x, const void* target, U* logits) {
    return typed(f64(), [&](auto zero) {
        using T = decltype(zero);
        if constexpr (std::is_same_v<T, U>) {
            return call<T>(state, grads, x, target, logits);
        } else { // the caller's values converted to the element type
            const Layout& l = layout();
            x_.assign(size_t(l.size(Array::X)));
            std::copy(x, x + x_.size(), x_.data<T>());
            const std::vector<const LayoutEntry*> t = l.all(Role::Target);
            if (!t.empty() && t[0]->type != DType::Index) {
                target_.assign(size_t(l.size(Array::Target)));
                const U* values = static_cast<const U*>(target);
                std::copy(values, values + target_.size(), target_.data<T>());
                target = target_.data<T>();
            }
            const double loss = call<T>(state, grads, x_.data<T>(), target, static_cast<T*>(nullptr));
            if (logits && !grads) std::copy(logits_.data<T>(), logits_.data<T>() + logits_.size(), logits);
            return loss;
        }
    });
}

// Callers pass float or double.
template double Program::run(const Values&, Values*, const float*, const void*, float*);
template double Program::run(const Values&, Values*, const double*, const void*, double*);

std::map<std::string, Tensor> Program::outputs(const Values* grads, double loss) const {
    return typed(f64(), [&](auto zero) {
        using T = decltype(zero);
        std::map<std::string, Tensor> out;
        for (auto& en : layout().entries) {
            switch (en.role) {
            case Role::Logits:
                if (!grads) out["logits"] = readBuffer(logits_.data<T>(), en);
                break;
            case Role::Loss: out["loss"] = Tensor{{}, {loss}}; break;
            case Role::Gradient:
                if (grads) out[outputLabel({OutputRole::Grad, en.name, 0})] = readBuffer(grads->data<T>(), en);
                break;
            case Role::Preact: out[outputLabel({OutputRole::Preact, en.name, 0})] = readBuffer(acts_.data<T>(), en); break;
            case Role::NormInput: out[outputLabel({OutputRole::NormInput, en.name, 0})] = readBuffer(acts_.data<T>(), en); break;
            case Role::LayerOutput: out[outputLabel({OutputRole::LayerOutput, en.name, 0})] = readBuffer(acts_.data<T>(), en); break;
            case Role::ThroughTime:
                if (grads) out[outputLabel({OutputRole::ThroughTime, en.name, 0})] = readBuffer(acts_.data<T>(), en);
                break;
            case Role::GradNormSq:
                if (grads) out[outputLabel({OutputRole::GradNormSq, "", 0})] = readBuffer(acts_.data<T>(), en);
                break;
            default: break;
            }
        }
        return out;
    });
}

std::map<std::string, Tensor> run(Executable& e, const Bindings& bindings, bool backward) {
    Values state(e.f64(), size_t(e.layout().size(Array::State)));
    writeState(state, e.layout(), bindings);
    Program p(e);
    p.setInputs(bindings);
    Values grads(e.f64(), backward ? size_t(e.layout().size(Array::Grads)) : 0);
    const double loss = p.run(state, backward ? &grads : nullptr);
    return p.outputs(backward ? &grads : nullptr, loss);
}

std::map<std::string, Tensor> runCompiled(const CompiledModel& model, const Graph&, const Bindings& bindings,
                                          bool backward) {
    return run(*cpuExecutable(model), bindings, backward);
}

} // namespace gradc
