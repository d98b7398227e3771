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

/// Batch normalisation's statistics of channel j (dimension 1) of x[B,N,S...] over its
/// count = B S values (on [B,N], S = 1; on [B,C,H,W], S = H W): the mean and the sum of the
/// squared deviations from it.
struct ChannelMoments {
    double mean, sumSq;
    int64_t count;
};
ChannelMoments channelMoments(const Tensor& x, int64_t j);

/// The named outputs of `interpret` ("loss", "grad:layers.0.weight", ...).
std::map<std::string, Tensor> interpretOutputs(const Graph& g, const Bindings& bindings);

} // namespace gradc
