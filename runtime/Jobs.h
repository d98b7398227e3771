// Jobs.h — the jobs of the gradc command (grads, train, acts, dead, bench) as runtime
// functions over the options of gradc/Jobs.h (train's loop itself is Train.h's). The command line and the public API
// (gradc::grads, gradc::acts, ...) both call these; the results here keep the runtime's own
// types (GradReport, TensorStats, tensors) that the command's printers and files need.
// Mistakes in the input throw UserError naming the file and place.
#pragma once

#include "Engine.h"
#include "Report.h"
#include "Train.h"

#include <gradc/Jobs.h>

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace gradc {

/// A job's option ranges (and a training run's optimiser options), the one place they are
/// checked: each job checks its options first, and the command calls the same check where it
/// reads them. Throw OptionError (Optimizer.h).
void checkJobOptions(const GradsOptions& o);
void checkJobOptions(const TrainingOptions& o);
void checkJobOptions(const ActsOptions& o);
void checkJobOptions(const DeadOptions& o);
void checkJobOptions(const BenchOptions& o);
/// A thread count for compiled code: 0 (all cores) to kMaxThreads (ThreadPool.h), as Session
/// takes it (the code reserves scratch per thread).
void checkThreads(int threads);
/// A Session's options, checked before anything is read or compiled: the threads, and for
/// the jit backend the instruction set (resolveIsa: a bad SessionOptions::isa or GRADC_ISA is
/// a UserError; the interpreter ignores both). Every job's check and Session's constructor
/// call it.
void checkSession(const SessionOptions& o);

/// One model of a grads run.
struct GradsModel {
    GradReport report;
    std::string backend;     ///< "interp", or "jit f32, compiled in 12.3 ms"
    std::string activations; ///< its hidden activations, for titles: "relu, tanh" ("none")
};

struct GradsRun {
    std::vector<GradsModel> models;
    /// Of the last model: its parameters with its running statistics (PyTorch's state_dict,
    /// `integers` naming the I64 ones) and its gradients (then each recurrent layer's norms of
    /// dL/dh_t as "through:LAYER"), for the safetensors files.
    std::vector<std::pair<std::string, Tensor>> params, grads;
    /// Of the last model: each recurrent layer's norms of dL/dh_t per step, [T], labelled
    /// through:LAYER; `--dump-grads` writes them after the gradients.
    std::vector<std::pair<std::string, Tensor>> throughTime;
    std::set<std::string> integers;
    bool wide = false; ///< the gradients were computed in double (interpreter or f64 code)
};

/// `gradc grads`: every model is compiled (and checked) before the data is read; then each
/// runs one forward and backward pass, and `onModel`, when given, sees its result at once.
GradsRun runGrads(const GradsOptions& o, const std::function<void(const GradsModel&)>& onModel = {});

/// A classifier engine for acts and dead (and train, with `classes` 10): the model file is
/// parsed and checked against the images in `o.data` (a cross_entropy classifier with at least
/// `classes` outputs, as many inputs as pixels) before anything is compiled; compiled for
/// training and evaluation at `batch` with o.session's backend, cache and threads (always f32);
/// parameters from o.params or initialised from o.seed. `gradNorm`: the training code also
/// computes the gradients' norm, for OptimizerOptions::clipGradNorm (Graph::gradNorm).
/// `syncWorld` > 1: one of the processes of a data-parallel run (Graph::syncWorld), `batch`
/// its share of every batch.
std::unique_ptr<Engine> classifierEngine(const ClassifierOptions& o, int64_t batch, int classes, bool gradNorm = false,
                                         int syncWorld = 1);

/// `gradc train`: the options checked, the classifier engine and the data split made, then
/// train() (Train.h). `outputs`, when given, holds the declared --save, --log and --logdir
/// (see TrainOptions::outputs); `onStart` sees the engine and the split before the first
/// step; `say` receives the progress lines. The engine is left holding the best epoch's
/// parameters.
struct TrainingRun {
    std::unique_ptr<Engine> engine;
    DataSplit data;
    TrainResult result;
};
TrainingRun runTraining(const TrainingOptions& o, const std::function<void(const std::string&)>& say,
                        OutputSet* outputs = nullptr, bool progressBar = false,
                        const std::function<void(const Engine&, const DataSplit&)>& onStart = {});

/// `gradc acts`: each module's output over the first o.count training images.
struct ActsRun {
    std::string model;
    int64_t examples = 0;
    std::vector<std::pair<std::string, TensorStats>> layers; ///< (op, 50-bin statistics)
};
ActsRun runActs(const ActsOptions& o);

/// `gradc dead`.
DeadResult runDead(const DeadOptions& o);

/// `gradc bench`.
BenchResult runBench(const BenchOptions& o);

} // namespace gradc
