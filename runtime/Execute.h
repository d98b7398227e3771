// Execute.h — calls an Executable (either backend, float or double) on the flat buffers its
// Layout describes; named tensors in and out, the way the interpreter takes them, so the
// backends are interchangeable (and comparable) for the caller. Engine (training,
// evaluation) and the jobs that run one step (grads, bench) all go through here.
#pragma once

#include "Backend.h"
#include "Codegen.h"
#include "Interpreter.h"

#include <map>
#include <memory>
#include <string>

namespace gradc {

/// Buffer `e` of an array as a tensor.
template <typename T> Tensor readBuffer(const T* array, const LayoutEntry& e) {
    Tensor t{e.shape, std::vector<double>(size_t(e.elements()))};
    for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = double(array[size_t(e.offset) + i]);
    return t;
}

/// Stores `t` (of e's shape) into buffer `e` of an array.
template <typename T> void writeBuffer(T* array, const LayoutEntry& e, const std::vector<double>& values) {
    internal_assert(int64_t(values.size()) == e.elements(), "a buffer written with the wrong size");
    for (size_t i = 0; i < values.size(); ++i) array[size_t(e.offset) + i] = T(values[i]);
}

/// Calls the forward entry point ("logits", "loss") or the backward one ("loss", "grad:NAME"
/// for every parameter); both also give the kept activations ("preact:NAME", ...). Results
/// are named by outputLabel. Inputs and parameters come from `bindings` by name, as for
/// `interpret` (running statistics default to their initial values), converted to the
/// executable's element type.
std::map<std::string, Tensor> run(Executable& e, const Bindings& bindings, bool backward);

/// The same for code compiled by compileModel from `forward`.
std::map<std::string, Tensor> runCompiled(const CompiledModel& model, const Graph& forward,
                                          const Bindings& bindings, bool backward);

/// The same call with its buffers prepared once, for timing repeated steps: `step` runs one
/// entry point and nothing else.
class PreparedCall {
public:
    PreparedCall(Executable& e, const Bindings& bindings);
    /// Code compiled by compileModel from `forward`.
    PreparedCall(const CompiledModel& model, const Graph& forward, const Bindings& bindings);
    ~PreparedCall();
    void step(bool backward);
    std::map<std::string, Tensor> outputs(bool backward) const;

private:
    struct Impl;
    std::unique_ptr<Executable> own_;
    std::unique_ptr<Impl> impl_;
};

} // namespace gradc
