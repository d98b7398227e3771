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

/// A test hook: while set (t >= 0), every scan's forward loop adds `delta` to h_t[b, j] as it
/// computes it, before the output and step t+1 read it, so that a test can take dL/dh_t (the
/// total derivative through all later steps) by central differences. Not thread-safe; tests
/// reset it to the default.
struct ScanPerturbation {
    int64_t t = -1, b = 0, j = 0;
    double delta = 0;
};
void setScanPerturbation(const ScanPerturbation& p);

/// The named outputs of `interpret` ("loss", "grad:layers.0.weight", ...).
std::map<std::string, Tensor> interpretOutputs(const Graph& g, const Bindings& bindings);

} // namespace gradc
