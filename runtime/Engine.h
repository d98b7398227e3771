// Engine.h — a model compiled for one batch size with its state: parameters, buffers,
// gradients, optimiser state, and the evaluation-mode program. gradc::Session is its public
// face; the gradc command uses it directly. Both backends run through the one Executable
// interface (Backend.h); every array is sized and read by its Layout.
#pragma once

#include "Backend.h"
#include "Interpreter.h"
#include "Optimizer.h"

#include <gradc/Session.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace gradc {

class Engine {
public:
    /// Compiles `forward` (a training-mode graph) with the backend options.backend (compile(),
    /// Backend.h).
    /// `evalGraph` is the same model in evaluation mode with its layer outputs; it is
    /// compiled on the first evaluate().
    Engine(Graph forward, Graph evalGraph, const SessionOptions& options);

    const Graph& graph() const { return graph_; }
    int64_t batch() const { return graph_.batch; }
    int64_t parameterCount() const { return layout().parameterCount(); }
    /// Where the training-mode entry points' buffers are: state(), gradients() and the
    /// kept activations follow it.
    const Layout& layout() const { return train_.exe->layout(); }
    /// Parameters, then buffers.
    std::vector<float>& state() { return state_; }
    const std::vector<float>& state() const { return state_; }
    const std::vector<float>& gradients() const { return grads_; }
    bool haveGradients() const { return haveGradients_; }
    /// Whether a training-mode forward or backward pass has run (lastOutputs() holds it).
    bool haveOutputs() const { return haveOutputs_; }
    /// Whether evaluate() has run (layerOutput() holds its values).
    bool evaluated() const { return evaluated_; }
    /// How many training steps batchnorm's running statistics have seen
    /// (PyTorch's num_batches_tracked).
    int64_t batchesTracked() const { return batchesTracked_; }

    void initialise(uint64_t seed);
    void load(const std::string& path);
    void save(const std::string& path) const;

    /// Training mode. `target` is int32 labels for cross_entropy, float values otherwise.
    float forward(const float* x, const void* target, float* logits);
    float backward(const float* x, const void* target);
    void setOptimizer(const OptimizerOptions& o);
    float trainStep(const float* x, const void* target);
    int64_t steps() const { return step_; }

    /// Evaluation mode; then layerOutput(i) for each module but the last.
    float evaluate(const float* x, const void* target, float* logits);
    size_t layerCount() const { return graph_.layers.size() - 1; }
    /// The values of module `i` (graph().layers[i]) from the last evaluate(): [batch, width].
    const float* layerOutput(size_t i) const;

    /// Preactivations of the last forward or backward pass, by outputLabel ("preact:...").
    const std::map<std::string, Tensor>& lastOutputs() const;

private:
    struct Compiled {
        std::unique_ptr<Executable> exe;
        std::vector<float> acts, logits;
    };
    void prepare(Compiled& c, const Graph& g);
    float run(Compiled& c, const float* x, const void* target, float* logits, bool backward);
    void updateRunningStatistics();

    Graph graph_;
    SessionOptions options_;
    Compiled train_;
    std::unique_ptr<Compiled> eval_;
    Graph evalGraph_;
    std::vector<float> state_, grads_, m_, v_;
    OptimizerOptions optimizer_;
    int64_t step_ = 0, batchesTracked_ = 0;
    mutable std::map<std::string, Tensor> lastOutputs_; // the preactivations, on demand
    bool haveGradients_ = false, haveOutputs_ = false, evaluated_ = false;
};

} // namespace gradc
