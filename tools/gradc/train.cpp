// train.cpp — `gradc train MODEL`: epochs of SGD or Adam with early stopping on validation
// accuracy, then the test accuracy. The options and the printing; the job is runtime/Jobs.h's.
#include "Commands.h"

#include "Cluster.h"
#include "Jobs.h"
#include "Optimizer.h"

#include <fmt/format.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <unistd.h>

namespace gradc::cli {

void trainOptions(po::options_description& d) {
    addModelOptions(d);
    d.add_options()("epochs", po::value<int>()->default_value(50), "at most this many epochs")(
        "optimizer", po::value<std::string>()->value_name("sgd|adam")->default_value("sgd"), "sgd | adam")(
        "lr", po::value<double>(), "learning rate (default: 1e-2 for sgd, 1e-3 for adam)")(
        "momentum", po::value<double>()->default_value(0.0), "SGD momentum")(
        "nesterov", "Nesterov momentum")(
        "weight-decay", po::value<double>()->default_value(0.0), "L2 penalty added to the gradient")(
        "beta1", po::value<double>()->default_value(0.9), "Adam's beta1")(
        "beta2", po::value<double>()->default_value(0.999), "Adam's beta2")(
        "eps", po::value<double>()->default_value(1e-8), "Adam's eps")(
        "clip-grad-norm", po::value<double>(),
        "clip the gradients' total 2-norm to X before each step (torch.nn.utils.clip_grad_norm_)")(
        "val", po::value<int64_t>()->default_value(10000),
        "training images held out for validation (with --limit: a sixth of the images read)")(
        "patience", po::value<int>()->default_value(7), "stop after this many epochs without a better validation accuracy")(
        "save", po::value<std::string>()->value_name("FILE"), "write the best epoch's parameters to FILE.safetensors")(
        "log", po::value<std::string>()->value_name("FILE"), "write per-epoch loss, accuracy and gradient statistics to FILE.jsonl")(
        "log-every", po::value<int64_t>()->default_value(0),
        "also log the gradient statistics every N steps (--log, --logdir; 0: once an epoch)")(
        "logdir", po::value<std::string>()->value_name("DIR"), "write TensorBoard event files (scalars, gradient histograms) to DIR")(
        "steps", po::value<int64_t>()->default_value(0), "stop after this many steps in all (0: no limit)")(
        "limit", po::value<int64_t>()->default_value(0), "use only the first N images of each file (0: all)")(
        "no-progress", "no progress bar, even on a terminal");
    addDataOptions(d);
}

namespace {

void onInterrupt(int) {
    gInterrupted = 1;
    std::signal(SIGINT, SIG_DFL); // a second Ctrl-C stops at once
}

} // namespace

/// `gradc train MODEL`: epochs of SGD or Adam with early stopping on validation accuracy.
int runTrain(const po::variables_map& vm) {
    TrainingOptions o;
    o.batch = semaOptions(vm).batch;
    o.epochs = vm["epochs"].as<int>();
    o.patience = vm["patience"].as<int>();
    o.seed = seedOption(vm);
    o.maxSteps = vm["steps"].as<int64_t>();
    o.val = vm["val"].as<int64_t>(), o.limit = vm["limit"].as<int64_t>();
    // A small run (--limit) holds out a sixth of the images it reads, as the full one holds out
    // 10,000 of 60,000, unless --val says otherwise.
    if (vm["val"].defaulted() && o.limit > 0) o.val = std::clamp<int64_t>(o.limit / 6, 1, o.val);
    o.logEvery = vm["log-every"].as<int64_t>();
    o.save = fileOption(vm, "save"), o.log = fileOption(vm, "log"), o.logdir = fileOption(vm, "logdir");
    OptimizerOptions& opt = o.optimizer;
    opt.method = vm["optimizer"].as<std::string>();
    opt.lr = vm.count("lr") ? vm["lr"].as<double>() : opt.method == "adam" ? 1e-3 : 1e-2;
    opt.momentum = vm["momentum"].as<double>(), opt.weightDecay = vm["weight-decay"].as<double>();
    opt.nesterov = vm.count("nesterov") != 0;
    opt.beta1 = vm["beta1"].as<double>(), opt.beta2 = vm["beta2"].as<double>(), opt.eps = vm["eps"].as<double>();
    if (vm.count("clip-grad-norm")) { // 0 is the library's "no clipping": on the command line, a mistake
        opt.clipGradNorm = vm["clip-grad-norm"].as<double>();
        if (!(std::isfinite(opt.clipGradNorm) && opt.clipGradNorm > 0))
            throw UsageError(fmt::format("--clip-grad-norm: the gradient norm's limit {} is not a finite number > 0",
                                         opt.clipGradNorm));
    }
    checkJobOptions(o); // the ranges, then the optimiser's options
    const std::string dir = vm["data"].as<std::string>(), path = vm["model"].as<std::string>();
    dataOptions(vm); // --normalize checked before any file
    // Every output checked before any data is loaded or code compiled.
    OutputSet outputs;
    outputs.input(path);
    outputs.input(fileOption(vm, "params"));
    declareDataInputs(outputs, dir);
    if (cluster::root()) declareTrainOutputs(outputs, o.save, o.log, o.logdir); // rank 0 writes them
    static_cast<ClassifierOptions&>(o) = classifierOptions(vm);
    const bool terminal = isatty(STDERR_FILENO) && !vm.count("no-progress");
    auto say = [](const std::string& line) {
        fmt::print(stderr, "{}", line);
        std::fflush(stderr);
    };
    auto start = [&](const Engine& engine, const DataSplit& data) {
        fmt::print(stderr, "{}: {} parameters; {} training and {} validation examples of {}, batch {}{}; {} lr {}{}{}{}\n",
                   engine.graph().model, thousands(engine.parameterCount()), thousands(int64_t(data.fit.size())),
                   thousands(int64_t(data.val.size())), dir, o.batch,
                   cluster::size() > 1 ? fmt::format(" ({} processes of {})", cluster::size(), engine.batch()) : "",
                   opt.method, opt.lr,
                   opt.momentum > 0 ? fmt::format(" momentum {}", opt.momentum) : "",
                   opt.clipGradNorm > 0 ? fmt::format(", gradient norm clipped to {}", opt.clipGradNorm) : "",
                   engine.f64() ? "; f64" : "");
        gInterrupted = 0;
        std::signal(SIGINT, onInterrupt);
    };
    const TrainingRun run = runTraining(o, say, &outputs, terminal, start);
    const TrainResult& r = run.result;
    std::signal(SIGINT, SIG_DFL);
    outputs.commit(); // the log, also when interrupted
    if (r.interrupted) fmt::print(stderr, "\ninterrupted: keeping what was trained\n");
    fmt::print("{}: best epoch {} of {}{}, validation accuracy {:.2f}%, test accuracy {:.2f}% ({:.1f} s)\n",
               run.engine->graph().model, r.bestEpoch, r.epochs.size(), r.stoppedEarly ? " (stopped early)" : "",
               100 * r.bestValAccuracy, 100 * r.testAccuracy, r.seconds);
    if (!o.save.empty()) fmt::print("parameters of the best epoch: {}\n", o.save);
    return r.interrupted ? 130 : 0;
}

} // namespace gradc::cli
