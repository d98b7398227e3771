// Jobs.cpp — the jobs of the gradc command (see Jobs.h): what each computes, nothing printed.
#include "Jobs.h"

#include "Cluster.h"

#include "Autodiff.h"
#include "Codegen.h"
#include "CpuBackend.h"
#include "Data.h"
#include "Execute.h"
#include "FmaProbe.h"
#include "Init.h"
#include "Layout.h"
#include "Pipeline.h"
#include "Optimizer.h"
#include "SafeTensors.h"
#include "Stats.h"
#include "ThreadPool.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <random>
#include <utility>

namespace gradc {
namespace {

/// An OptionError unless `ok`: the job says `subject` (a format of `value`) and `rule`, the
/// command line "--FLAG VALUE RULE".
void require(bool ok, const char* flag, int64_t value, const char* subject, const std::string& rule) {
    if (!ok) throw OptionError(fmt::format(fmt::runtime(subject), value) + rule, fmt::format("--{} {} {}", flag, value, rule));
}

[[noreturn]] void failIn(const std::string& file, const std::string& message) {
    throw UserError({makeSourceFile(file, ""), 0, 0}, message);
}

/// The model's hidden activations, for titles: "sigmoid", "relu, tanh".
std::string activationNames(const Graph& g) {
    std::vector<std::string> names;
    for (auto& l : g.layers)
        if (isActivation(g[l.value]) && std::find(names.begin(), names.end(), l.what) == names.end() && l.what != "identity")
            names.push_back(l.what);
    std::string out;
    for (auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return out.empty() ? "none" : out;
}

/// The class indices `labels` of a cross_entropy batch, each checked against the model's
/// `classes`; a mistake names `file`, where the labels come from.
Tensor classTargets(const Shape& shape, const std::vector<double>& labels, int64_t classes,
                    const std::string& file) {
    for (size_t i = 0; i < labels.size(); ++i) {
        const double v = labels[i];
        if (v != std::floor(v)) // NaN too
            failIn(file, fmt::format("label {} of example {} is not a class index (a whole number)",
                                     v, i));
        if (v < 0 || v >= double(classes))
            failIn(file, fmt::format("label {} of example {} is out of range for the model's {} "
                                     "classes (0 to {})", v, i, classes, classes - 1));
    }
    return Tensor{shape, labels};
}

/// The targets of a grads batch. From the data set `ex`: the labels for a cross_entropy
/// classifier, the inputs x for an mse autoencoder. From an inputs file (`given`, its
/// 'target'): the tensor in the model's target shape, class indices for cross_entropy.
Tensor gradsTarget(const Graph& g, const std::string& model, const Examples& ex, const Tensor& x,
                   const Tensor* given, const std::string& inputsFile) {
    const Node* target = nullptr;
    for (const Node& n : g.nodes)
        if (n.op == Op::Input && n.name == "target") target = &n;
    internal_assert(target, "a model without a target");
    const int64_t outputs = g[g.output(OutputRole::Logits)].shape[1];
    const bool classes = target->type == DType::Index;
    if (given) {
        if (elementCount(given->shape) != elementCount(target->shape))
            failIn(inputsFile, fmt::format("'target' {} does not fit the model's target {}",
                                           shapeString(given->shape), shapeString(target->shape)));
        return classes ? classTargets(target->shape, given->data, outputs, inputsFile)
                       : Tensor{target->shape, given->data};
    }
    if (g.lossKind == "cross_entropy")
        return classTargets(target->shape,
                            std::vector<double>(ex.labels.begin(), ex.labels.begin() + x.shape[0]),
                            outputs, ex.labelFile);
    if (g.lossKind == "mse" && outputs == perExample(g[0].shape)) return x; // an autoencoder reproduces its input
    failIn(model, fmt::format("gradc grads needs a cross_entropy classifier with at least {} classes, or an mse "
                              "autoencoder; this model's loss is {} with {} outputs", 10, g.lossKind, outputs));
}

/// An inputs file's x fits the model's input: the same shape but the batch, or flat [B, K]
/// with K the model's inputs per example. `input 5 steps 3` is [B,5,3]; an x [B,3,5] is a
/// mistake that the count of inputs would not show.
void checkGivenInputs(const Graph& g, const std::string& model, const Tensor& x,
                      const std::string& inputsFile) {
    const Shape& want = g[0].shape;
    const bool flat = x.shape.size() == 2 && x.shape[1] == perExample(want);
    const bool same = x.shape.size() == want.size() &&
                      std::equal(x.shape.begin() + 1, x.shape.end(), want.begin() + 1);
    if (flat || same) return;
    Shape perEx(want.begin() + 1, want.end());
    failIn(inputsFile,
           fmt::format("'x' {} does not fit the model {}, whose input is {} per example: give x as "
                       "[batch,{} or flat [batch,{}]",
                       shapeString(x.shape), model, shapeString(perEx),
                       shapeString(perEx).substr(1), perExample(want)));
}

/// acts and dead read the layers' outputs, never the loss, so they take any classifier with
/// two or more classes: the data set's labels (0 to 9) are replaced by class 0, which every
/// such model has, and no backend is given a label out of its range.
void onlyImages(std::vector<int32_t>& labels) { std::fill(labels.begin(), labels.end(), 0); }

/// Multiply-adds of the matrix products and convolutions in a graph, counted as 2 flops each
/// (a convolution and each of its gradients: B O OH OW C KH KW).
double matmulFlops(const Graph& g) {
    double flops = 0;
    for (auto& n : g.nodes) {
        if (n.op == Op::Conv2d || n.op == Op::Conv2dGradX || n.op == Op::Conv2dGradW) {
            const Shape& y = n.op == Op::Conv2d ? n.shape : g[n.in[n.op == Op::Conv2dGradX ? 0 : 1]].shape;
            const int64_t channels = n.op == Op::Conv2dGradX ? n.shape[1] : g[n.in[0]].shape[1];
            flops += 2.0 * double(elementCount(y)) * double(channels) * n.window.kh * n.window.kw;
        }
        if (n.op == Op::MatMulNT) flops += 2.0 * double(elementCount(n.shape)) * double(g[n.in[0]].shape.back());
        if (n.op == Op::MatMulNN) flops += 2.0 * double(elementCount(n.shape)) * double(g[n.in[0]].shape.back());
        if (n.op == Op::MatMulTN) flops += 2.0 * double(elementCount(n.shape)) * double(elementCount(g[n.in[0]].shape) / g[n.in[0]].shape.back());
        // A scan's recurrent product h_{t-1} W_hhᵀ at every step but the first; its reverse loop
        // (counted once, at the norms every reverse loop makes) the carry dzhh_t W_hh and dW_hh's.
        if (n.op == Op::Scan || n.op == Op::ScanGradNorm) {
            const Shape& h = n.op == Op::Scan ? n.shape : g[n.in[0]].shape; // [B,T,H]
            const Shape& w = g[n.in[n.op == Op::Scan ? 1 : 3]].shape;       // [GH,H]
            flops += (n.op == Op::Scan ? 2.0 : 4.0) * double(h[0]) * double(h[1] - 1) * double(w[0]) * double(w[1]);
        }
    }
    return flops;
}

} // namespace

void checkThreads(int threads) {
    require(threads >= 0 && threads <= kMaxThreads, "threads", threads, "{} threads ",
            fmt::format("is out of range (0 for all cores, up to {})", kMaxThreads));
}

void checkSession(const SessionOptions& o) {
    checkThreads(o.threads);
    if (o.backend == "jit") resolveIsa(o.isa, "SessionOptions::isa"); // the interpreter has no instruction set
}

void checkJobOptions(const GradsOptions& o) { checkSession(o.session); }

void checkJobOptions(const TrainingOptions& o) {
    require(o.epochs >= 1 && o.epochs <= 100000, "epochs", o.epochs, "{} epochs ", "is out of range (1 to 100000)");
    require(o.patience >= 1, "patience", o.patience, "a patience of {} epochs: ", "must be at least 1");
    require(o.maxSteps >= 0, "steps", o.maxSteps, "{} steps: ", "must not be negative");
    require(o.val >= 1, "val", o.val, "{} validation images: ", "must be at least 1");
    require(o.limit >= 0, "limit", o.limit, "a limit of {} images: ", "must not be negative");
    require(o.logEvery >= 0, "log-every", o.logEvery, "logging every {} steps: ", "must not be negative");
    hyperParameters(o.optimizer, 1);
    checkSession(o.session);
}

void checkJobOptions(const ActsOptions& o) {
    require(o.count >= 1 && o.count <= kMaxBatch, "count", o.count, "{} images ",
            fmt::format("is out of range (1 to {})", kMaxBatch));
    checkSession(o.session);
}

void checkJobOptions(const DeadOptions& o) {
    require(o.val >= 0, "val", o.val, "{} validation images: ", "must not be negative");
    require(o.limit >= 0, "limit", o.limit, "a limit of {} images: ", "must not be negative");
    checkSession(o.session);
}

void checkJobOptions(const BenchOptions& o) {
    require(o.steps >= 1 && o.steps <= 1000000, "steps", o.steps, "{} steps ", "is out of range (1 to 1000000)");
    checkThreads(o.threads);
}

namespace {

/// The outputs of one process of a data-parallel grads run made the whole batch's: the loss
/// and the gradients averaged (each process's are means over its rows), the preactivations
/// gathered in rank order (rank r holds rows [r b, (r + 1) b)), and each step's ‖dL/dh_t‖
/// the root of the sum of the processes' squares, over `world` (the same averaging).
std::map<std::string, Tensor> combineProcesses(const Graph& whole, std::map<std::string, Tensor> out, int world) {
    for (auto& [label, t] : out) {
        if (label == "loss" || label.rfind("grad:", 0) == 0) {
            cluster::sum(t.data.data(), t.data.size());
            for (double& v : t.data) v /= world;
        } else if (label.rfind(outputLabel({OutputRole::ThroughTime, "", 0}), 0) == 0) {
            cluster::normSum(t.data.data(), t.data.size());
            for (double& v : t.data) v /= world;
        }
    }
    for (const Output& o : whole.outputs) {
        if (o.role != OutputRole::Preact) continue;
        Tensor& t = out.at(outputLabel(o));
        std::vector<double> all(t.data.size() * size_t(world));
        cluster::gather(t.data.data(), t.data.size(), all.data());
        t = Tensor{whole[o.value].shape, std::move(all)};
    }
    return out;
}

/// The processes a job's batch is shared among (cluster::size()), checked: they divide the
/// batch, and run compiled code (the interpreter runs on one process).
int dataParallelWorld(int64_t batch, const std::string& backend) {
    const int world = cluster::size();
    if (world > 1 && batch % world != 0)
        throw UserError({}, fmt::format("--batch {} does not divide among {} processes: a multiple of {} does", batch,
                                        world, world));
    if (world > 1 && backend != "jit")
        throw UserError({}, "the interpreter runs on one process: a data-parallel run needs --backend jit");
    return world;
}

} // namespace

GradsRun runGrads(const GradsOptions& o, const std::function<void(const GradsModel&)>& onModel) {
    if (o.models.empty()) throw UserError({}, "no model to run");
    checkJobOptions(o);
    if (!o.params.empty() && o.models.size() != 1) throw UserError({}, "parameters from a file need exactly one model");
    if (o.session.backend != "interp" && o.session.backend != "jit")
        throw UserError({}, fmt::format("backend '{}' is not one of jit, interp", o.session.backend));
    BackendOptions backend; // the interpreter computes in double: its buffers are double too
    backend.backend = o.session.backend, backend.f64 = o.session.backend == "interp" || o.f64;
    backend.cache = o.session.cache, backend.threads = o.session.threads;
    backend.isa = o.session.isa;
    int64_t batch = o.batch;
    const std::string& dir = o.data.dir;
    std::map<std::string, Tensor> given; // --inputs: x and target from a file
    if (!o.inputs.empty()) {
        given = readSafetensors(o.inputs);
        if (!given.count("x") || given.at("x").shape.size() < 2 || !given.count("target"))
            failIn(o.inputs, "an inputs file needs a tensor 'x' [batch, ...] and a tensor 'target' "
                             "[batch, ...]");
        const int64_t rows = given.at("x").shape[0];
        if (batch != 0 && batch != rows)
            failIn(o.inputs,
                   fmt::format("'x' holds {} examples, but the batch is {}", rows, batch));
        batch = rows;
    }
    // A data-parallel run: each process computes `local` rows of the batch (rank r: rows
    // [r local, (r + 1) local)); the loss and gradients are averaged, the preactivations
    // gathered, so every statistic is the whole batch's, as one process computes it.
    const int world = dataParallelWorld(batch, o.session.backend);
    const int64_t local = batch / world;
    // Compile every model first, so a mistake in the last one costs no data loading.
    std::vector<Graph> graphs;
    for (auto& path : o.models) graphs.push_back(compileFile(path, {batch}).graph);

    Examples ex;
    Tensor x;
    if (given.empty()) {
        ex = o.shuffle ? sample(readExamples(dir, true, exampleCount(dir, true)), batch, o.seed)
                       : readExamples(dir, /*train=*/true, batch);
        x = Tensor{{batch, ex.features}, normalise(ex, o.data.mean, o.data.std)};
    } else {
        x = given.at("x");
    }
    GradsRun run;
    run.wide = backend.f64;
    for (size_t m = 0; m < graphs.size(); ++m) {
        const Graph& g = graphs[m];
        if (!given.empty()) checkGivenInputs(g, o.models[m], x, o.inputs);
        if (given.empty() && perExample(g[0].shape) != ex.features)
            failIn(o.models[m], fmt::format("the model takes {} inputs, but the images in {} have {} pixels",
                                            perExample(g[0].shape), dir, ex.features));
        Bindings b = o.params.empty() ? initialiseParameters(g, o.seed) : loadParameters(g, o.params);
        run.integers.clear();
        run.params = stateDict(g, b, &run.integers); // running statistics too, as PyTorch's state_dict
        b["x"] = Tensor{g[0].shape, x.data}; // [batch, 784] read as the model's [batch, 28, 28], ...
        b["target"] = gradsTarget(g, o.models[m], ex, x,
                                  given.empty() ? nullptr : &given.at("target"), o.inputs);
        GradsModel result;
        std::map<std::string, Tensor> out;
        if (world == 1) {
            std::unique_ptr<Executable> exe = compile(g, backend);
            result.backend = exe->describe();
            out = gradc::run(*exe, b, /*backward=*/true);
        } else {
            Graph part = compileFile(o.models[m], {local}).graph;
            part.syncWorld = world; // batchnorm's statistics are the whole batch's
            std::unique_ptr<Executable> exe = compile(part, backend);
            result.backend = fmt::format("{}; {} processes of {} examples", exe->describe(), world, local);
            for (const char* name : {"x", "target"}) { // this process's rows
                const Tensor& whole = b.at(name);
                const size_t row = whole.data.size() / size_t(batch);
                Shape shape = whole.shape;
                shape[0] = local;
                const auto first = whole.data.begin() + std::ptrdiff_t(size_t(cluster::rank() * local) * row);
                b[name] = Tensor{shape, std::vector<double>(first, first + std::ptrdiff_t(size_t(local) * row))};
            }
            out = combineProcesses(g, gradc::run(*exe, b, /*backward=*/true), world);
        }
        GradReport& r = result.report;
        r.model = g.model, r.batch = batch, r.loss = out.at("loss").data[0];
        run.grads.clear();
        for (auto& p : g.params) {
            r.params.push_back(statistics(p.name, out.at("grad:" + p.name)));
            run.grads.emplace_back(p.name, out.at("grad:" + p.name));
        }
        run.throughTime.clear();
        const Layout layout = computeLayout(g);
        for (const LayoutEntry* e : layout.all(Role::ThroughTime)) {
            const std::string label = outputLabel({OutputRole::ThroughTime, e->name, 0});
            run.throughTime.emplace_back(label, out.at(label));
        }
        r.activations = activationStatistics(g, out);
        r.throughTime = throughTimeStatistics(g, out);
        computeVanishingFactor(r);
        result.activations = activationNames(g);
        if (onModel) onModel(result);
        run.models.push_back(std::move(result));
    }
    return run;
}

namespace {

/// The model must classify the data set's images (`classes` at least): checked before any
/// data is read or code compiled.
void needClassifier(const Graph& g, const std::string& model, int64_t features, int classes) {
    const int64_t outputs = g[g.output(OutputRole::Logits)].shape[1];
    if (g.lossKind != "cross_entropy" || outputs < classes)
        failIn(model, fmt::format("this command needs a cross_entropy classifier with at least {} classes; the "
                                  "model's loss is {} with {} outputs", classes, g.lossKind, outputs));
    if (perExample(g[0].shape) != features)
        failIn(model, fmt::format("the model takes {} inputs, but the images have {} pixels", perExample(g[0].shape), features));
}

} // namespace

std::unique_ptr<Engine> classifierEngine(const ClassifierOptions& o, int64_t batch, int classes, bool gradNorm,
                                         int syncWorld) {
    // Training reads no activation statistics: its program does not store them.
    FrontEnd fe = compileFile(o.model, {batch, /*eval=*/false, /*layerOutputs=*/false, /*statistics=*/false});
    fe.graph.gradNorm = gradNorm; // compiled once, ready for the optimiser's clipping
    fe.graph.syncWorld = syncWorld;
    needClassifier(fe.graph, o.model, readExamples(o.data.dir, true, 1).features, classes);
    Graph evalGraph = buildGraph(fe.ast, {batch, /*eval=*/true, /*layerOutputs=*/true});
    auto engine = std::make_unique<Engine>(std::move(fe.graph), std::move(evalGraph), o.session, o.f64);
    if (!o.params.empty()) engine->load(o.params);
    else engine->initialise(o.seed);
    return engine;
}

TrainingRun runTraining(const TrainingOptions& o, const std::function<void(const std::string&)>& say,
                        OutputSet* outputs, bool progressBar,
                        const std::function<void(const Engine&, const DataSplit&)>& onStart) {
    checkJobOptions(o);
    TrainOptions t;
    t.epochs = o.epochs, t.patience = o.patience, t.seed = o.seed, t.maxSteps = o.maxSteps;
    t.save = o.save, t.log = o.log, t.logdir = o.logdir, t.logEvery = o.logEvery;
    t.outputs = outputs, t.progressBar = progressBar;
    TrainingRun run;
    // A data-parallel run: each process computes its share of every batch.
    const int world = dataParallelWorld(o.batch, o.session.backend);
    // (A data-parallel run computes the norm of the averaged gradients itself.)
    run.engine = classifierEngine(o, o.batch / world, /*classes=*/10, /*gradNorm=*/o.optimizer.clipGradNorm > 0 && world == 1,
                                  world);
    run.engine->setOptimizer(o.optimizer);
    run.data = loadSplit(o.data.dir, o.val, o.data.mean, o.data.std, o.limit);
    const OptimizerOptions& opt = o.optimizer;
    t.hparams = {{"model", run.engine->graph().model},
                 {"activation", activationNames(run.engine->graph())},
                 {"optimizer", opt.method},
                 {"lr", opt.lr},
                 {"momentum", opt.method == "sgd" ? opt.momentum : 0.0},
                 {"weight_decay", opt.weightDecay},
                 {"batch", double(o.batch)},
                 {"seed", double(o.seed)}};
    if (onStart) onStart(*run.engine, run.data);
    run.result = train(*run.engine, run.data, t, say);
    return run;
}

ActsRun runActs(const ActsOptions& o) {
    checkJobOptions(o);
    const int64_t count = o.count;
    std::unique_ptr<Engine> engine = classifierEngine(o, count, /*classes=*/2);
    Examples ex = readExamples(o.data.dir, true, count);
    std::vector<int64_t> all(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) all[size_t(i)] = i;
    const Graph& g = engine->graph();
    ActsRun run;
    run.model = g.model, run.examples = count;
    auto evaluate = [&](auto zero) { // in the engine's element type
        using T = decltype(zero);
        std::vector<T> x;
        std::vector<int32_t> labels;
        gather(ex, all, 0, count, o.data.mean, o.data.std, x, labels);
        onlyImages(labels);
        engine->evaluate(x.data(), labels.data(), static_cast<T*>(nullptr));
        for (size_t i = 0; i < engine->layerCount(); ++i) {
            const LayerInfo& l = g.layers[i];
            run.layers.emplace_back(l.what, statistics(l.name, l.out, engine->layerOutput<T>(i), 50));
        }
    };
    typed(engine->f64(), evaluate);
    return run;
}

DeadResult runDead(const DeadOptions& o) {
    checkJobOptions(o);
    const int64_t batch = o.batch;
    std::unique_ptr<Engine> engine = classifierEngine(o, batch, /*classes=*/2);
    DataSplit data = loadSplit(o.data.dir, o.val, o.data.mean, o.data.std, o.limit);
    const Graph& g = engine->graph();
    std::vector<size_t> layers; // the activation layers: modules whose output is an activation function's
    std::vector<UnitMask> alive;
    for (size_t i = 0; i < engine->layerCount(); ++i)
        if (isActivation(g[g.layers[i].value])) {
            layers.push_back(i);
            alive.emplace_back(g.layers[i].out);
        }
    auto scan = [&](auto zero) { // in the engine's element type
        using T = decltype(zero);
        std::vector<T> x;
        std::vector<int32_t> labels;
        for (size_t begin = 0; begin < data.fit.size(); begin += size_t(batch)) {
            gather(data.train, data.fit, begin, batch, data.mean, data.std, x, labels);
            onlyImages(labels);
            engine->evaluate(x.data(), labels.data(), static_cast<T*>(nullptr));
            const int64_t rows = int64_t(std::min(size_t(batch), data.fit.size() - begin));
            for (size_t k = 0; k < layers.size(); ++k) alive[k].add(engine->layerOutput<T>(layers[k]), rows);
        }
    };
    typed(engine->f64(), scan);
    DeadResult result;
    result.model = g.model, result.images = int64_t(data.fit.size());
    for (size_t k = 0; k < layers.size(); ++k) {
        const LayerInfo& l = g.layers[layers[k]];
        DeadLayer d{l.name, l.what, alive[k].units(), alive[k].dead(), alive[k].channels() ? "channel" : "unit",
                    Shape(l.out.begin() + 1, l.out.end())};
        result.layers.push_back(std::move(d));
    }
    return result;
}

BenchResult runBench(const BenchOptions& o) {
    checkJobOptions(o);
    CodegenOptions codegen;
    codegen.f64 = o.f64, codegen.threads = o.threads;
    codegen.isa = resolveIsa(o.isa);
    codegen.profile = o.profile;
    codegen.cache = o.cache && !o.profile; // profiled code is not the code users run
    // The step `gradc train` runs; with `statistics`, the one `gradc grads` runs.
    std::vector<CompilePhase> frontEnd;
    PhaseTimer timer(&frontEnd);
    Graph g = compileFile(o.model, {o.batch, false, false, o.statistics}).graph;
    timer("front end");
    const CompiledModel cm = compileModel(g, codegen);
    const std::unique_ptr<Executable> exe = cpuExecutable(cm);
    Graph grad = differentiate(g);
    std::mt19937_64 rng(1);
    Bindings b = initialiseParameters(g, 1);
    for (auto& n : g.nodes) {
        if (n.op != Op::Input) continue;
        Tensor t{n.shape, std::vector<double>(size_t(elementCount(n.shape)))};
        const int64_t classes = g[g.output(OutputRole::Logits)].shape[1];
        for (double& v : t.data) v = n.type == DType::Index ? double(rng() % uint64_t(classes)) : double(rng() % 1000) / 1000.0;
        b[n.name] = std::move(t);
    }
    Values state(exe->f64(), size_t(exe->layout().size(Array::State)));
    Values grads(exe->f64(), size_t(exe->layout().size(Array::Grads)));
    writeState(state, exe->layout(), b);
    Program step(*exe);
    step.setInputs(b);
    step.run(state, &grads); // warm up
    // Five rounds (fewer with fewer steps); the median round's time per step, which a shared
    // machine's pauses disturb less than the mean.
    const int rounds = std::min(o.steps, 5);
    BenchResult r;
    for (int k = 0; k < rounds; ++k) {
        const int n = o.steps / rounds + (k < o.steps % rounds);
        auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < n; ++i) step.run(state, &grads);
        r.roundMs.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / n);
    }
    std::sort(r.roundMs.begin(), r.roundMs.end());
    r.model = g.model, r.batch = o.batch, r.steps = o.steps, r.threads = resolveThreads(o.threads);
    r.f64 = o.f64, r.cacheHit = cm.cacheHit, r.compileMs = frontEnd[0].ms + cm.compileMs();
    for (const std::vector<CompilePhase>* phases : {&std::as_const(frontEnd), &cm.phases})
        for (const CompilePhase& p : *phases) r.compilePhases.push_back({p.name, p.ms, p.cpuMs});
    r.msPerStep = r.roundMs[r.roundMs.size() / 2];
    r.gflopPerStep = matmulFlops(grad) / 1e9;
    r.fmaPeak = measureFmaPeak(o.f64, codegen.isa);
    const IsaTarget target = isaTarget(codegen.isa);
    r.isa = codegen.isa, r.cpu = target.cpu, r.vectorBits = target.vectorBits;
    if (o.explain) r.products = explainProducts(g, codegen);
    if (o.profile) {
        uint64_t total = 0;
        for (size_t i = 0; i < cm.kernelsBackward.size(); ++i) total += cm.profileBackward[i];
        for (size_t i = 0; i < cm.kernelsBackward.size(); ++i)
            r.kernelShares.emplace_back(cm.kernelsBackward[i], double(cm.profileBackward[i]) / double(total));
    }
    return r;
}

} // namespace gradc
