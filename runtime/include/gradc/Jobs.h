// gradc/Jobs.h — the jobs of the `gradc` command as library calls: the gradient statistics of
// one batch (grads), training with early stopping (train), each layer's output distribution
// (acts), the units that never fire (dead) and the timing of a training step (bench). The command line parses its options into
// these structs, calls the same functions and prints their results; a program embedding gradc
// calls them directly.
//
// Every function throws gradc::Error with the message the command prints (the file and the
// place at fault) for a mistake in its input: a model that does not parse, a data folder that
// is missing or corrupt, a parameter file that does not fit, an option out of range.
#pragma once

#include <gradc/Session.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace gradc {

/// The images a job reads (IDX files, FashionMNIST's layout) and how pixels become inputs.
struct DataOptions {
    /// DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
    std::string dir = "/usr/share/datasets/fashion-mnist";
    double mean = 0.5, std = 0.5; ///< inputs are (pixel/255 - mean) / std
};

/// `gradc grads`: each model's gradients after one forward and backward pass over a batch
/// of training images.
struct GradsOptions {
    std::vector<std::string> models; ///< model files (.nn)
    int64_t batch = 256;
    DataOptions data;
    uint64_t seed = 42;  ///< parameter initialisation, and the batch drawn with `shuffle`
    bool shuffle = false; ///< a random batch of the training set instead of the first images
    std::string params;  ///< parameters from this safetensors file (one model only); "": from `seed`
    /// The batch from this safetensors file instead of the data set: `x` [B, ...] (the
    /// model's inputs per example, any shape that holds them) and `target` [B] (class
    /// indices, as floats) or the model's target shape; `batch` 0 takes B from the file.
    /// Inputs that are not images: the PyTorch twins' sequences of a few steps.
    std::string inputs;
    SessionOptions session; ///< backend, cache, threads, isa
    bool f64 = false;    ///< compiled code in double (the interpreter always is)
};

/// One model's result: cross_entropy classifiers get the images' labels, mse autoencoders
/// their inputs as targets.
struct GradsReport {
    std::string model;
    int64_t batch = 0;
    double loss = 0;
    std::string backend; ///< "interp", or "jit f32, compiled in 12.3 ms"
    std::vector<GradientStatistics> gradients; ///< in parameter order
    std::vector<ActivationStatistics> activations;
    /// abs_mean of the first weight gradient over the last one's (NaN with fewer than two).
    double vanishingFactor = 0;
    std::string firstWeight, lastWeight;
    std::vector<ThroughTimeStatistics> throughTime; ///< one per recurrent layer, in layer order
};

std::vector<GradsReport> grads(const GradsOptions& options);

/// A classifier of the images in `data` (cross_entropy, at least two classes), its
/// parameters from `params` or initialised from `seed`, run in evaluation mode.
struct ClassifierOptions {
    std::string model;   ///< model file (.nn)
    DataOptions data;
    uint64_t seed = 42;  ///< parameter initialisation when `params` is ""
    std::string params;  ///< parameters from this safetensors file
    SessionOptions session;
    bool f64 = false;    ///< every array (parameters, gradients, activations) in double
};

/// `gradc acts`: each module's output over the first `count` training images.
struct ActsOptions : ClassifierOptions {
    int64_t count = 1024;
};
struct LayerStatistics {
    std::string op;         ///< "linear 784 -> 512", "relu", ...
    TensorStatistics stats; ///< named after the layer; a 50-bin histogram
};
struct ActsResult {
    std::string model;
    int64_t examples = 0;
    std::vector<LayerStatistics> layers; ///< every module but the last
};
ActsResult acts(const ActsOptions& options);

/// `gradc dead`: per activation layer, the units that output zero for every training image
/// of the split `gradc train` trains on (`val` images held out; `limit` > 0: only the first
/// `limit` images of each file). A unit is one value of an example, except in a layer of
/// images ([B,C,H,W]), where it is a channel: dead when zero at every position of every image.
struct DeadOptions : ClassifierOptions {
    int64_t batch = 256;
    int64_t val = 10000, limit = 0;
};
struct DeadLayer {
    std::string name, activation;
    int64_t units = 0, dead = 0;
    std::string unit = "unit";  ///< what `units` counts: "unit" (a value of an example) or "channel"
    std::vector<int64_t> shape; ///< the layer's output for one example: [512], [32,28,28]
};
struct DeadResult {
    std::string model;
    int64_t images = 0; ///< training images looked at
    std::vector<DeadLayer> layers;
};
DeadResult dead(const DeadOptions& options);

/// `gradc train`: a classifier of the images (at least ten classes) trained as the tutorial
/// trains it: `val` training images held out for validation (drawn by a fixed seed), epochs
/// of shuffled batches (shuffled by `seed`, which also initialises the parameters unless
/// `params` is given), early stopping when the best validation accuracy is `patience` epochs
/// old, then the test accuracy of the best epoch's parameters.
struct TrainingOptions : ClassifierOptions {
    int64_t batch = 256;
    int64_t val = 10000;
    int64_t limit = 0;         ///< > 0: only the first `limit` images of each file
    OptimizerOptions optimizer;
    int epochs = 50;           ///< at most (1 to 100000)
    int patience = 7;          ///< at least 1
    int64_t maxSteps = 0;      ///< stop after this many steps in all (0: no limit)
    std::string save;          ///< the best epoch's parameters to this safetensors file
    std::string log;           ///< one JSON line per epoch and one at the end to this file
    std::string logdir;        ///< TensorBoard event files in this folder
    /// > 0: also every this many steps, the gradients' statistics (a {"kind": "step"} line of
    /// the log; TensorBoard's gradient histograms and means at those steps, not per epoch)
    int64_t logEvery = 0;
};
struct EpochSummary {
    int epoch = 0;
    int64_t step = 0; ///< steps taken by the end of the epoch
    double trainLoss = 0, valLoss = 0, valAccuracy = 0, seconds = 0;
    double vanishingFactor = 0; ///< of the epoch's last step
    std::vector<ThroughTimeStatistics>
        throughTime; ///< of the epoch's last step, one per recurrent layer
};
struct TrainingResult {
    std::string model;
    int64_t parameters = 0, trainExamples = 0, valExamples = 0;
    std::vector<EpochSummary> epochs;
    int bestEpoch = 0;
    double bestValAccuracy = 0, testAccuracy = 0, testLoss = 0, seconds = 0;
    bool stoppedEarly = false;
};
TrainingResult train(const TrainingOptions& options);

/// `gradc bench`: the compiled training step on random data, timed.
struct BenchOptions {
    std::string model; ///< model file (.nn)
    int64_t batch = 256;
    int steps = 50;
    bool statistics = false; ///< the step of `grads` (storing activations), not of `train`
    bool profile = false;    ///< count each kernel's cycles (never cached)
    bool explain = false;    ///< describe each matrix product (BenchResult::products)
    bool f64 = false;
    bool cache = true;
    int threads = 0;         ///< 0: all cores
    std::string isa;         ///< instruction set, as SessionOptions::isa ("": GRADC_ISA, else native)
};
struct BenchResult {
    std::string model;
    int64_t batch = 0;
    int steps = 0, threads = 0;
    bool f64 = false, cacheHit = false;
    double compileMs = 0;
    /// The compilation by phase, in order: front end (parse, sema), autodiff, fusion + memory
    /// plan, lowering, object cache, LLVM optimisation, machine code (these two only when not
    /// loaded from the cache), JIT load; wall-clock and CPU milliseconds.
    struct Phase {
        std::string name;
        double ms = 0, cpuMs = 0;
    };
    std::vector<Phase> compilePhases;
    double msPerStep = 0;              ///< the median round's time per step
    std::vector<double> roundMs;       ///< each round's time per step, ascending
    double gflopPerStep = 0;           ///< of the matrix products, forward and backward
    double fmaPeak = 0;                ///< measured GFLOP/s of one thread, in the code's instruction set
    std::string isa;                   ///< the code's instruction set: native, avx2 or avx512
    std::string cpu;                   ///< the CPU it was compiled for (LLVM's name: znver4, ...)
    int vectorBits = 0;                ///< the matrix products' vector width: 512, 256 or 128
    /// With `profile`: each backward kernel and its share of the cycles.
    std::vector<std::pair<std::string, double>> kernelShares;
    /// With `explain`: each matrix product of the step: its shape, register tile, blocking, packing, threads
    /// and where the tile came from (`gradc bench --explain`).
    std::vector<std::string> products;
};
BenchResult bench(const BenchOptions& options);

} // namespace gradc
