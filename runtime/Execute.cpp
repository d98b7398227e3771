// Execute.cpp — flat buffers in the compiled entry points' layout.
#include "Execute.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <memory>

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

/// The entry points' arguments, in element type T.
template <typename T> struct Buffers {
    const CompiledModel& model;
    const Graph& g;
    std::vector<T> params, x, targetValues, logits, grads, acts;
    std::vector<int32_t> labels;
    T loss = 0;
    std::unique_ptr<void, decltype(&std::free)> ws{nullptr, &std::free};

    Buffers(const CompiledModel& m, const Graph& graph, const Bindings& b) : model(m), g(graph) {
        for (auto& p : g.params)
            for (double v : binding(b, p.name, g[p.node].shape).data) params.push_back(T(v));
        for (auto& buf : g.buffers) { // running statistics: given, or as initialised
            auto it = b.find(buf.name);
            for (int64_t i = 0; i < buf.size; ++i)
                params.push_back(T(it != b.end() ? binding(b, buf.name, {buf.size}).data[size_t(i)] : buf.initial));
        }
        for (auto& n : g.nodes) {
            if (n.op != Op::Input) continue;
            const Tensor& t = binding(b, n.name, n.shape);
            for (double v : t.data) {
                if (n.name == "x") x.push_back(T(v));
                else if (n.type == DType::Index) labels.push_back(int32_t(v));
                else targetValues.push_back(T(v));
            }
        }
        logits.resize(size_t(elementCount(g[g.output("logits")].shape)));
        grads.resize(size_t(g.parameterCount()));
        acts.resize(size_t(model.activationCount));
        // The workspace is 64-byte aligned, as the memory plan assumes.
        ws.reset(std::aligned_alloc(64, size_t((model.workspaceBytes + 63) / 64 * 64 + 64)));
        if (!ws) throw std::bad_alloc();
    }

    void step(bool backward) {
        const void* target = labels.empty() ? static_cast<const void*>(targetValues.data()) : labels.data();
        if (backward) model.backward(params.data(), x.data(), target, &loss, grads.data(), acts.data(), ws.get());
        else model.forward(params.data(), x.data(), target, logits.data(), &loss, acts.data(), ws.get());
    }

    std::map<std::string, Tensor> outputs(bool backward) const {
        std::map<std::string, Tensor> out;
        auto slice = [](const std::vector<T>& v, size_t offset, const Shape& s) {
            size_t n = size_t(elementCount(s));
            return Tensor{s, std::vector<double>(v.begin() + long(offset), v.begin() + long(offset + n))};
        };
        if (!backward) out["logits"] = slice(logits, 0, g[g.output("logits")].shape);
        size_t offset = 0;
        if (backward)
            for (auto& p : g.params) {
                out["grad:" + p.name] = slice(grads, offset, g[p.node].shape);
                offset += size_t(elementCount(g[p.node].shape));
            }
        out["loss"] = Tensor{{}, {double(loss)}};
        offset = 0;
        for (auto& [name, v] : g.outputs) {
            if (!isActivationOutput(name)) continue;
            out[name] = slice(acts, offset, g[v].shape);
            offset += size_t(elementCount(g[v].shape));
        }
        return out;
    }
};

} // namespace

struct PreparedCall::Impl {
    std::unique_ptr<Buffers<float>> f32;
    std::unique_ptr<Buffers<double>> f64;
};

PreparedCall::PreparedCall(const CompiledModel& model, const Graph& forward, const Bindings& bindings)
    : impl_(std::make_unique<Impl>()) {
    if (model.f64) impl_->f64 = std::make_unique<Buffers<double>>(model, forward, bindings);
    else impl_->f32 = std::make_unique<Buffers<float>>(model, forward, bindings);
}
PreparedCall::~PreparedCall() = default;

void PreparedCall::step(bool backward) {
    if (impl_->f64) impl_->f64->step(backward);
    else impl_->f32->step(backward);
}

std::map<std::string, Tensor> PreparedCall::outputs(bool backward) const {
    return impl_->f64 ? impl_->f64->outputs(backward) : impl_->f32->outputs(backward);
}

std::map<std::string, Tensor> runCompiled(const CompiledModel& model, const Graph& forward,
                                          const Bindings& bindings, bool backward) {
    PreparedCall call(model, forward, bindings);
    call.step(backward);
    return call.outputs(backward);
}

} // namespace gradc
