// Sema.h — stage 3: AST to Graph. Resolves names, unrolls `repeat`, binds activations,
// names parameters as PyTorch does, and checks every shape.
#pragma once

#include "AST.h"
#include "Graph.h"

namespace gradc {

struct SemaOptions {
    int64_t batch = 256; ///< the batch size is a compile-time constant of the graph
    bool eval = false;   ///< evaluation mode (PyTorch's model.eval()): batchnorm normalises
                         ///< with its running statistics, which become graph inputs
    bool layerOutputs = false; ///< a LayerOutput output for every module but the last
    bool statistics = true; ///< a Preact output per hidden activation, for statistics (training
                            ///< without them saves their stores)
};

/// The forward graph of a model: outputs Logits (the last layer's value), Loss, and the kept
/// values (Graph::outputs).
/// Throws UserError for any mistake in the model.
Graph buildGraph(const ModuleAST& m, const SemaOptions& opts = {});

/// Limits that keep unrolling bounded.
constexpr int64_t kMaxLayers = 100000;
constexpr int64_t kMaxBatch = 1 << 20;
constexpr int64_t kMaxParameters = int64_t(1) << 31;

} // namespace gradc
