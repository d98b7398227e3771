// Engine.h — a model compiled for one batch size with its state: parameters, buffers,
// gradients, optimiser state, and the evaluation-mode program. gradc::Session is its public
// face; the gradc command uses it directly. Both backends run through the one Executable
// interface (Backend.h), called by a Program (Execute.h); every array is sized and read by
// its Layout. The element type of every array (float or double) is chosen once, when the
// Engine is made; the one code path is a template over it.
#pragma once

#include "Backend.h"
#include "Execute.h"
#include "Interpreter.h"
#include "Optimizer.h"
#include "Stats.h"

#include <gradc/Session.h>

#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace gradc {

class Engine {
public:
    /// Compiles `forward` (a training-mode graph) with the backend options.backend (compile(),
    /// Backend.h); every array is double when `f64`, float otherwise.
    /// `evalGraph` is the same model in evaluation mode with its layer outputs; it is
    /// compiled on the first evaluate().
    Engine(Graph forward, Graph evalGraph, const SessionOptions& options, bool f64 = false);

    const Graph& graph() const { return graph_; }
    int64_t batch() const { return graph_.batch; }
    int64_t parameterCount() const { return layout().parameterCount(); }
    /// Where the training-mode entry points' buffers are: state(), gradients() and the
    /// kept activations follow it.
    const Layout& layout() const { return train_->exe->layout(); }
    /// The training-mode code's backend (Executable::describe): "jit f32, compiled in ...".
    std::string describe() const { return train_->exe->describe(); }
    /// The element type of every array: double or float.
    bool f64() const { return f64_; }
    /// Parameters, then buffers.
    Values& state() { return state_; }
    const Values& state() const { return state_; }
    const Values& gradients() const { return grads_; }
    /// Statistics of every parameter's gradient (gradientStatistics, Stats.h).
    std::vector<TensorStats> gradientStatistics() const;
    /// Each recurrent layer's ‖dL/dh_t‖ from the last backward pass or training step
    /// (throughTimeStatistics, Stats.h): empty for a model without one, or before any.
    std::vector<ThroughTime> throughTime() const;
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

    /// Training mode. `target` is int32 labels for cross_entropy, U values otherwise. U (the
    /// type of x, the targets and the logits) is float or double; where it is not the element
    /// type, the values are converted on the way in and out.
    template <typename U> double forward(const U* x, const void* target, U* logits);
    template <typename U> double backward(const U* x, const void* target);
    /// Chooses the optimiser. With o.clipGradNorm > 0 the training code must compute the
    /// gradients' norm (Graph::gradNorm): a graph made without it is compiled again.
    void setOptimizer(const OptimizerOptions& o);
    template <typename U> double trainStep(const U* x, const void* target);
    int64_t steps() const { return step_; }
    /// A data-parallel run's time in the gradients' allreduce (waiting for the other
    /// processes included), summed over its training steps: seconds.
    double communicationSeconds() const { return commSeconds_; }

    /// Gradient-norm clipping in the last trainStep (OptimizerOptions::clipGradNorm > 0): the
    /// total 2-norm of the gradients before clipping, the coefficient they were multiplied by
    /// (clipCoefficient, Optimizer.h) and whether it was not 1 (a NaN norm scales by NaN).
    struct Clip {
        double norm = 0, scale = 1;
        bool clipped = false;
    };
    bool clipping() const { return optimizer_.clipGradNorm > 0; }
    const Clip& lastClip() const { return clip_; }

    /// Evaluation mode; then layerOutput(i) for each module but the last.
    template <typename U> double evaluate(const U* x, const void* target, U* logits);
    size_t layerCount() const { return graph_.layers.size() - 1; }
    /// The values of module `i` (graph().layers[i]) from the last evaluate(): [batch, width].
    /// T must be the element type.
    template <typename T> const T* layerOutput(size_t i) const;

    /// Preactivations of the last forward or backward pass, by outputLabel ("preact:...").
    const std::map<std::string, Tensor>& lastOutputs() const;

private:
    /// A compiled graph and the Program that calls it.
    struct Compiled {
        std::unique_ptr<Executable> exe;
        Program program;
        explicit Compiled(std::unique_ptr<Executable> e) : exe(std::move(e)), program(*exe) {}
    };
    std::unique_ptr<Executable> compileGraph(const Graph& g) const;
    template <typename T> void updateRunningStatistics();
    /// The backward pass of a data-parallel step (Graph::syncWorld > 1): the gradients summed
    /// over the processes as the pass makes them final, then divided by their number; returns
    /// the mean of the processes' losses.
    template <typename U> double sharedBackward(const U* x, const void* target);
    template <typename T> void update();

    Graph graph_;
    SessionOptions options_;
    bool f64_;
    std::optional<Compiled> train_; // compiled again when clipping needs the gradients' norm
    std::unique_ptr<Compiled> eval_;
    Graph evalGraph_;
    Values state_, grads_, m_, v_;
    OptimizerOptions optimizer_;
    int64_t step_ = 0, batchesTracked_ = 0;
    double commSeconds_ = 0;
    Clip clip_;
    mutable std::map<std::string, Tensor> lastOutputs_; // the preactivations, on demand
    bool haveGradients_ = false, haveOutputs_ = false, evaluated_ = false;
};

} // namespace gradc
