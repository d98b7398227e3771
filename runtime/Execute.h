// Execute.h — runs a compiled model on named tensors, the way the interpreter takes them,
// so the two backends are interchangeable (and comparable) for the caller.
#pragma once

#include "Codegen.h"
#include "Interpreter.h"

#include <map>
#include <memory>
#include <string>

namespace gradc {

/// Calls the compiled forward entry point ("logits", "loss") or the backward one ("loss",
/// "grad:NAME" for every parameter); both also give "preact:NAME". Inputs and parameters
/// come from `bindings` by name, as for `interpret`, converted to the model's element type.
std::map<std::string, Tensor> runCompiled(const CompiledModel& model, const Graph& forward,
                                          const Bindings& bindings, bool backward);

/// The same call with its buffers prepared once, for timing repeated steps: `step` runs one
/// entry point and nothing else.
class PreparedCall {
public:
    PreparedCall(const CompiledModel& model, const Graph& forward, const Bindings& bindings);
    ~PreparedCall();
    void step(bool backward);
    std::map<std::string, Tensor> outputs(bool backward) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace gradc
