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

template <typename T>
std::map<std::string, Tensor> run(const CompiledModel& model, const Graph& g, const Bindings& b, bool backward) {
    std::vector<T> params;
    params.reserve(size_t(model.parameterCount));
    for (auto& p : g.params)
        for (double v : binding(b, p.name, g[p.node].shape).data) params.push_back(T(v));
    std::vector<T> x, targetValues;
    std::vector<int32_t> labels;
    for (auto& n : g.nodes) {
        if (n.op != Op::Input) continue;
        const Tensor& t = binding(b, n.name, n.shape);
        if (n.name == "x") {
            for (double v : t.data) x.push_back(T(v));
        } else if (n.type == DType::Index) {
            for (double v : t.data) labels.push_back(int32_t(v));
        } else {
            for (double v : t.data) targetValues.push_back(T(v));
        }
    }
    const void* target = labels.empty() ? static_cast<const void*>(targetValues.data()) : labels.data();
    // The workspace is 64-byte aligned, as the memory plan assumes.
    std::unique_ptr<void, decltype(&std::free)> ws(
        std::aligned_alloc(64, size_t((model.workspaceBytes + 63) / 64 * 64 + 64)), &std::free);
    if (!ws) throw std::bad_alloc();
    T loss = 0;
    std::vector<T> acts(size_t(model.activationCount));
    std::map<std::string, Tensor> out;
    if (!backward) {
        const Shape& shape = g[g.output("logits")].shape;
        std::vector<T> logits(size_t(elementCount(shape)));
        model.forward(params.data(), x.data(), target, logits.data(), &loss, acts.data(), ws.get());
        out["logits"] = Tensor{shape, std::vector<double>(logits.begin(), logits.end())};
    } else {
        std::vector<T> grads(params.size());
        model.backward(params.data(), x.data(), target, &loss, grads.data(), acts.data(), ws.get());
        size_t offset = 0;
        for (auto& p : g.params) {
            size_t n = size_t(elementCount(g[p.node].shape));
            out["grad:" + p.name] = Tensor{g[p.node].shape, std::vector<double>(grads.begin() + long(offset),
                                                                                grads.begin() + long(offset + n))};
            offset += n;
        }
    }
    out["loss"] = Tensor{{}, {double(loss)}};
    size_t offset = 0;
    for (auto& [name, v] : g.outputs) {
        if (name.rfind("preact:", 0) != 0) continue;
        size_t n = size_t(elementCount(g[v].shape));
        out[name] = Tensor{g[v].shape, std::vector<double>(acts.begin() + long(offset), acts.begin() + long(offset + n))};
        offset += n;
    }
    return out;
}

} // namespace

std::map<std::string, Tensor> runCompiled(const CompiledModel& model, const Graph& forward,
                                          const Bindings& bindings, bool backward) {
    return model.f64 ? run<double>(model, forward, bindings, backward)
                     : run<float>(model, forward, bindings, backward);
}

} // namespace gradc
