// gradc/Session.h — a model compiled for one batch size, with its parameters and gradients.
#pragma once

#include <gradc/Model.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace gradc {

struct SessionOptions {
    std::string backend = "jit"; ///< "jit" (native code) or "interp" (the reference interpreter)
    bool cache = true;           ///< use the on-disk cache of compiled code
    /// Threads the compiled code runs on (0: all cores). Sessions with different counts may
    /// run at once: they share one pool of threads, which grows to the largest count.
    int threads = 0;
    /// The instruction set of the compiled code: "native" (every feature of this CPU), "avx2"
    /// (AVX2 and FMA, without AVX-512: what an AVX2-only CPU runs) or "avx512" (native, on a
    /// CPU with AVX-512; an error elsewhere); "": the environment's GRADC_ISA, else native.
    std::string isa;
    /// The folder of the cache of compiled code; "": GRADC_CACHE_DIR, else
    /// $XDG_CACHE_HOME/gradc, else ~/.cache/gradc.
    std::string cacheDir;
};

/// Statistics of one tensor: a gradient, or a layer's outputs (NaN and Inf are counted,
/// never folded in).
struct TensorStatistics {
    std::string name;
    std::vector<int64_t> shape;
    int64_t count = 0;
    double mean = 0, std = 0, absMean = 0, min = 0, max = 0, l2 = 0;
    double zeroFraction = 0; ///< share of entries with |g| < 1e-8
    int64_t nan = 0, inf = 0;
    std::vector<double> histogramEdges;   ///< over [min, max]: 31 edges for a gradient
    std::vector<int64_t> histogramCounts; ///< 30 bins for a gradient, 50 for a layer's outputs
};
using GradientStatistics = TensorStatistics;

/// A hidden activation layer over the batch: its output's mean and std, and the share of
/// units with |f'| < 0.01 (saturated or dead).
struct ActivationStatistics {
    std::string name, function;
    double mean = 0, std = 0, lowGradientFraction = 0;
};

/// A recurrent layer's gradient through time: ‖dL/dh_t‖ for t = 0 .. T-1 (the Frobenius norm
/// over the batch of the total derivative of the loss with respect to its hidden state h_t,
/// through all later steps), and the vanishing factor gradNorm[0] / gradNorm[T-1].
struct ThroughTimeStatistics {
    std::string layer;            ///< layers.0
    std::string cell;             ///< lstm, gru, rnn tanh, rnn relu
    std::vector<double> gradNorm; ///< T norms
    /// gradNorm[0] / gradNorm[T-1]; NaN when the last norm is 0 or not finite; JSON null whenever
    /// not finite.
    double vanishingFactor = 0;
};

/// torch.optim's optimisers with PyTorch's formulas and defaults: SGD (with momentum when
/// momentum > 0, optionally Nesterov) and Adam; weight decay adds `weightDecay * p` to the
/// gradient, as both do.
struct OptimizerOptions {
    std::string method = "sgd"; ///< sgd or adam
    double lr = 1e-2;           ///< torch.optim.SGD has no default; Adam's is 1e-3
    double momentum = 0, dampening = 0, weightDecay = 0;
    bool nesterov = false;
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
    /// Gradient-norm clipping, torch.nn.utils.clip_grad_norm_(parameters, clipGradNorm) before
    /// every step (PyTorch 1.13): the total 2-norm over all parameters' gradients; every
    /// gradient is multiplied by min(1, clipGradNorm / (norm + 1e-6)), before the weight decay
    /// is added. 0: no clipping; otherwise a finite number > 0. gradients() holds them
    /// unclipped.
    double clipGradNorm = 0;
};

/// One module's output over a batch (Session::layerOutputs): `values` has `shape`, [batch, width]
/// or for images [batch, C, H, W].
struct LayerOutput {
    std::string name; ///< layers.0, h, ...
    std::string what; ///< "linear 784 -> 512", "relu", "batchnorm 512", ...
    std::vector<int64_t> shape;
    std::vector<float> values;
};

/// Threads: a Session is used by one thread at a time (a call made while another thread is
/// inside a call on the same Session throws gradc::Error and changes nothing; pointers it
/// returned are the caller's to share safely). Different Sessions are independent: any number
/// may run at once on different threads, each giving exactly the results it gives alone,
/// whether they were built from one Model or from several.
///
/// Every misuse throws gradc::Error with a message and leaves the Session as it was: a Session
/// that was moved from, a null input, labels that are not classes, int32 labels for a model
/// with float targets (or the reverse), results asked for before the pass that makes them.
class Session {
public:
    /// Compiles `model` for batches of `batch` examples (1 to 2^20); throws gradc::Error.
    /// Compiled code is planned for `options.threads` threads (default: all cores).
    Session(const Model& model, int64_t batch, const SessionOptions& options = {});
    ~Session();
    /// The Session moved to owns everything; every call on the one moved from throws
    /// gradc::Error (it may still be destroyed or assigned to).
    Session(Session&&) noexcept;
    Session& operator=(Session&&) noexcept;

    int64_t batch() const;
    /// The backend and its code: "interp", or "jit f32, compiled in 80.1 ms" ("jit f32
    /// avx2, ..." for code in another instruction set than all of the host's).
    std::string describe() const;

    /// Parameters from the model's init schemes, deterministically from `seed`.
    void initialiseParameters(uint64_t seed);
    /// Parameters from a safetensors file with PyTorch's names (a state_dict).
    void loadParameters(const std::string& path);
    void saveParameters(const std::string& path) const;
    /// The flat state array, writable: the parameters (see Model::parameters for the layout),
    /// then the buffers (Model::buffers: batchnorm's running statistics). It stays in place
    /// for the Session's life (loadParameters and initialiseParameters write into it).
    float* parameters();

    /// One forward pass: `x` is [batch, inputWidth] row-major (images: [batch, C, H, W],
    /// Model::inputShape); `labels` (cross_entropy) or
    /// `targets` (bce, mse: [batch, outputWidth]) give the loss; every label must be a class,
    /// 0 to outputWidth - 1. Writes `logits` ([batch, outputWidth]) when it is not null.
    /// Returns the loss.
    float forward(const float* x, const int32_t* labels, float* logits = nullptr);
    float forward(const float* x, const float* targets, float* logits = nullptr);
    /// The logits alone (`logits` must not be null), for inputs without labels: returns NaN,
    /// the loss of no labels. forward(x, nullptr, logits) picks this one.
    float forward(const float* x, std::nullptr_t, float* logits);

    /// One forward and backward pass; the gradients are then in gradients(). Returns the loss.
    float backward(const float* x, const int32_t* labels);
    float backward(const float* x, const float* targets);
    /// The gradients of the last backward() or trainStep() (throws before the first); the
    /// array stays in place for the Session's life.
    const float* gradients() const;

    /// Chooses the optimiser and clears its state (momentum buffers, Adam's moments, step).
    void setOptimizer(const OptimizerOptions& options);
    /// One training step (PyTorch's model.train()): forward and backward with batch
    /// statistics, batchnorm's running statistics updated, then the optimiser's step (SGD
    /// with lr 1e-2 if none was set). The gradients stay in gradients(). Returns the loss
    /// before the step.
    float trainStep(const float* x, const int32_t* labels);
    float trainStep(const float* x, const float* targets);
    /// Optimiser steps taken since setOptimizer.
    int64_t steps() const;

    /// One forward pass in evaluation mode (model.eval()): batchnorm normalises with its
    /// running statistics. Compiled on first use. Writes `logits` when not null; returns the
    /// loss.
    float evaluate(const float* x, const int32_t* labels, float* logits = nullptr);
    float evaluate(const float* x, const float* targets, float* logits = nullptr);
    /// Every module's output but the last one's, from the last evaluate() (throws before the
    /// first).
    std::vector<LayerOutput> layerOutputs() const;

    /// Statistics of the gradients of the last backward() or trainStep() (throws before the
    /// first).
    std::vector<GradientStatistics> gradientStatistics() const;
    /// Statistics of the hidden activations of the last training-mode pass: forward(),
    /// backward() or trainStep() (throws before the first).
    std::vector<ActivationStatistics> activationStatistics() const;
    /// abs_mean of the first weight gradient over the last one's (NaN with fewer than two);
    /// throws before the first backward() or trainStep().
    double vanishingFactor() const;
    /// Each recurrent layer's ‖dL/dh_t‖ and factor through time from the last backward() or
    /// trainStep(), in layer order (empty for a model without one); throws before the first.
    std::vector<ThroughTimeStatistics> throughTime() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace gradc
