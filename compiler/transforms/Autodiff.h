// Autodiff.h — stage 4: reverse-mode differentiation of a forward Graph.
#pragma once

#include "Graph.h"

namespace gradc {

struct AutodiffOptions {
    bool inputGradient = false; ///< also output the Grad of "x", the loss's gradient wrt the input
    /// Also output GradNormSq [1]: Σ g² over every parameter's gradient (gradient-norm
    /// clipping). Each gradient's squares are summed as soon as it is complete, so that fusion
    /// folds the sum into the kernel that produces it (a weight's [N,K] gradient: column sums
    /// in its product's epilogue).
    bool gradNorm = false;
};

/// Returns one graph that computes the forward values, the loss and the gradient of the
/// loss with respect to every parameter: the forward graph's outputs, then a Grad output for
/// each parameter in order (and for the input x on request). Walks the forward graph in reverse
/// topological order, asks each op's rule (Ops.def) for its operands' gradients, and sums
/// gradients where a value fans out.
Graph differentiate(const Graph& forward, const AutodiffOptions& opts = {});

} // namespace gradc
