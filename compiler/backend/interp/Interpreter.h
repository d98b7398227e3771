// Interpreter.h — the reference backend: evaluates any Graph in double precision, one op
// at a time, as plainly as possible. It is the oracle the compiled code and the gradient
// checks are compared with (`--backend=interp`).
#pragma once

#include "Graph.h"
#include "Tensor.h"

#include <map>
#include <string>
#include <vector>

namespace gradc {

/// Evaluates every node; the result is indexed by ValueId. Throws UserError if a binding is
/// missing or misshapen, or a class label is out of range.
std::vector<Tensor> interpret(const Graph& g, const Bindings& bindings);

/// The named outputs of `interpret` ("loss", "grad:layers.0.weight", ...).
std::map<std::string, Tensor> interpretOutputs(const Graph& g, const Bindings& bindings);

} // namespace gradc
