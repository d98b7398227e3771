// Execute.h — runs a compiled model on named tensors, the way the interpreter takes them,
// so the two backends are interchangeable (and comparable) for the caller.
#pragma once

#include "Codegen.h"
#include "Interpreter.h"

#include <map>
#include <string>

namespace gradc {

/// Calls the compiled forward entry point ("logits", "loss") or the backward one ("loss",
/// "grad:NAME" for every parameter). Inputs and parameters come from `bindings` by name, as
/// for `interpret`; they are converted to the model's element type.
std::map<std::string, Tensor> runCompiled(const CompiledModel& model, const Graph& forward,
                                          const Bindings& bindings, bool backward);

} // namespace gradc
