// Train.h — training on an IDX data set (FashionMNIST): the tutorial's train/validation
// split, epochs of shuffled batches, validation accuracy with early stopping, logs.
#pragma once

#include "Data.h"
#include "Engine.h"
#include "Events.h"
#include "Files.h"
#include "Stats.h"

#include <csignal>
#include <functional>
#include <string>
#include <vector>

namespace gradc {

/// The training images split as the tutorial splits them: `val` of the 60,000 for
/// validation, the rest for training, drawn by a fixed seed (42) so every run and every
/// model sees the same split.
struct DataSplit {
    Examples train;              ///< the whole training file
    Examples test;               ///< the test file
    std::vector<int64_t> fit;    ///< indices into `train` to train on (50,000)
    std::vector<int64_t> val;    ///< indices into `train` to validate on (10,000)
    double mean = 0.5, std = 0.5; ///< normalisation: (p/255 - mean) / std
};
/// Both files of the training set and of the test set are checked (each pair agrees, neither
/// set is empty, the test images have the training images' size); `limit` > 0 reads only
/// the first `limit` examples of each. Throws UserError naming the file at fault.
DataSplit loadSplit(const std::string& dir, int64_t val, double mean, double std, int64_t limit = 0);

/// Checks a split against the engine's model before anything is computed: the training and
/// test images have the model's input size, every label is one of its classes, the
/// validation and test sets are not empty. Throws UserError naming the file at fault.
void checkSplit(const Engine& engine, const DataSplit& data);

/// Normalised inputs (float or double) and labels of examples `indices` of `e`, padded with
/// zeros to `batch`.
template <typename T>
void gather(const Examples& e, const std::vector<int64_t>& indices, size_t begin, int64_t batch, double mean,
            double std, std::vector<T>& x, std::vector<int32_t>& labels);

struct Accuracy {
    double loss = 0, accuracy = 0; ///< mean cross-entropy and share of correct argmaxes
};
/// The model in evaluation mode over examples `indices` of `e`.
Accuracy evaluate(Engine& engine, const Examples& e, const std::vector<int64_t>& indices, double mean, double std);

struct TrainOptions {
    int epochs = 50;
    int patience = 7;            ///< stop when the best validation accuracy is this many epochs old
    uint64_t seed = 42;          ///< shuffling (the parameters are initialised by the caller)
    std::string save;            ///< the best epoch's parameters, rewritten whenever it improves
    std::string log;             ///< JSON lines, one per epoch and one at the end
    std::string logdir;          ///< TensorBoard event files
    /// The run's outputs, where save, log and logdir are declared (and checked) before any
    /// data is loaded; the log is streamed to its temporary and put in place by the caller's
    /// commit(). Without it, train() checks them itself and commits the log when it returns.
    OutputSet* outputs = nullptr;
    int64_t maxSteps = 0;        ///< stop after this many steps in all (0: no limit)
    bool progressBar = false;    ///< redraw one line per step (on a terminal)
    int64_t logEvery = 0;        ///< > 0: gradient statistics every this many steps too
    /// The run's hyperparameters for TensorBoard's HParams dashboard (with logdir), its final
    /// losses and accuracies the metrics.
    std::vector<HParam> hparams;
};

/// The progress bar's line: the epoch, a bar of its steps, the running loss, the time the epoch
/// has taken, its steps per second and the time its remaining steps will take at that rate.
std::string progressLine(int epoch, int epochs, int64_t step, int64_t steps, double loss, double seconds);

struct EpochRecord {
    int epoch = 0;
    int64_t step = 0;
    double trainLoss = 0, valLoss = 0, valAccuracy = 0, seconds = 0;
    /// The epoch's training steps per second (its steps' time alone: no evaluation), and on
    /// a data-parallel run the mean time a step spent in the gradients' allreduce.
    double stepsPerSecond = 0, commSecondsPerStep = 0;
    bool dataParallel = false;
    double vanishingFactor = 0;
    std::vector<TensorStats> grads; ///< of the epoch's last step
    std::vector<ThroughTime> throughTime; ///< of the epoch's last step: each recurrent layer's ‖dL/dh_t‖
    /// Gradient-norm clipping (Engine::clipping): the epoch's last step's norm before clipping
    /// and whether it was clipped; how many of the epoch's steps were.
    bool clipping = false, clipped = false;
    double gradNorm = 0;
    int64_t clippedSteps = 0;
};

struct TrainResult {
    std::vector<EpochRecord> epochs;
    int bestEpoch = 0;
    double bestValAccuracy = -1, testAccuracy = 0, testLoss = 0, seconds = 0;
    bool interrupted = false, stoppedEarly = false;
};

/// Set by SIGINT while train() runs: it finishes the step, keeps what was trained and returns.
extern volatile std::sig_atomic_t gInterrupted;

/// Declares (and checks) the outputs of a training run: --save, --log, --logdir.
void declareTrainOutputs(OutputSet& outputs, const std::string& save, const std::string& log,
                         const std::string& logdir);

/// Trains `engine` (its optimiser already chosen); `say` receives the progress lines. At the
/// end the engine holds the best epoch's parameters and the result its test accuracy. A run
/// that throws leaves an existing log file as it was.
TrainResult train(Engine& engine, const DataSplit& data, const TrainOptions& o,
                  const std::function<void(const std::string&)>& say);

} // namespace gradc
