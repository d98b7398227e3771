// Autodiff.h — stage 4: reverse-mode differentiation of a forward Graph.
#pragma once

#include "Graph.h"

namespace gradc {

struct AutodiffOptions {
    bool inputGradient = false; ///< also output the Grad of "x", the loss's gradient wrt the input
};

/// Returns one graph that computes the forward values, the loss and the gradient of the
/// loss with respect to every parameter: the forward graph's outputs, then a Grad output for
/// each parameter in order (and for the input x on request). Walks the forward graph in reverse
/// topological order, asks each op's rule (Ops.def) for its operands' gradients, and sums
/// gradients where a value fans out.
Graph differentiate(const Graph& forward, const AutodiffOptions& opts = {});

} // namespace gradc
