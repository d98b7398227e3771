// main.cpp — the `gradc` command: one function per subcommand, options parsed with
// Boost.Program_options. Exit status: 0 success, 1 an error in the user's input (model,
// data, parameters), 2 a usage error (unknown command, option or value).
#include "Autodiff.h"
#include "Aot.h"
#include "Codegen.h"
#include "Execute.h"
#include "Data.h"
#include "Init.h"
#include "Interpreter.h"
#include "Report.h"
#include "Files.h"
#include "Plot.h"
#include "SafeTensors.h"
#include "Stats.h"
#include "Text.h"
#include "ThreadPool.h"
#include "Parser.h"
#include "Pipeline.h"
#include "Train.h"

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <cfloat>
#include <chrono>
#include <csignal>
#include <cmath>
#include <unistd.h>
#include <random>
#include <set>
#include <cstdio>
#include <algorithm>
#include <functional>
#include <sstream>
#include <iostream>
#include <string>
#include <vector>

namespace po = boost::program_options;
using namespace gradc;

namespace {

/// A usage mistake: printed as one line plus the relevant usage, exit status 2.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Command {
    const char* name;
    const char* args;    // after the command name, for the usage line
    const char* summary;
    std::function<void(po::options_description&)> options;
    std::function<int(const po::variables_map&)> run;
};

std::string thousands(int64_t v) {
    std::string digits = std::to_string(v < 0 ? -v : v), out;
    for (size_t i = 0; i < digits.size(); ++i) {
        if (i && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return (v < 0 ? "-" : "") + out;
}

SemaOptions semaOptions(const po::variables_map& vm) {
    SemaOptions o;
    o.batch = vm["batch"].as<int64_t>();
    if (o.batch < 1 || o.batch > kMaxBatch)
        throw UsageError(fmt::format("--batch {} is out of range (1 to {})", o.batch, kMaxBatch));
    return o;
}

void addModelOptions(po::options_description& d) {
    d.add_options()("model", po::value<std::string>()->required(), "model file (.nn)")(
        "batch", po::value<int64_t>()->default_value(256), "batch size the graph is built for");
}

/// --seed: a whole number from 0 to 2^64 - 1. Read as text, because Boost reads "-1" as an
/// unsigned number (2^64 - 1) without a word.
uint64_t seedOption(const po::variables_map& vm) {
    const std::string text = vm["seed"].as<std::string>();
    uint64_t v = 0;
    bool ok = !text.empty() && text.size() <= 20;
    for (char c : text) {
        ok = ok && c >= '0' && c <= '9';
        if (!ok) break;
        const uint64_t digit = uint64_t(c - '0');
        ok = v <= (UINT64_MAX - digit) / 10;
        v = v * 10 + digit;
    }
    if (!ok) throw UsageError(fmt::format("--seed '{}' is not a whole number from 0 to {}", text, UINT64_MAX));
    return v;
}

/// A real-valued option that must be finite and at least `low` (and below `high` when
/// given); `what` names the quantity in the message.
double realOption(const po::variables_map& vm, const char* name, const char* what, double low,
                  double high = INFINITY) {
    const double v = vm[name].as<double>();
    if (!std::isfinite(v) || v < low || !(v < high))
        throw UsageError(std::isinf(high) ? fmt::format("--{}: {} {} is not a finite number >= {}", name, what, v, low)
                                          : fmt::format("--{}: {} {} is not in [{}, {})", name, what, v, low, high));
    return v;
}

CodegenOptions codegenOptions(const po::variables_map& vm) {
    CodegenOptions o;
    if (vm.count("threads")) {
        const int threads = vm["threads"].as<int>();
        if (threads < 0 || threads > 1024)
            throw UsageError(fmt::format("--threads {} is out of range (0 for all cores, up to 1024)", threads));
        setThreadCount(threads == 0 ? hardwareThreads() : threads);
    }
    o.cache = !vm.count("no-cache");
    const std::string dtype = vm["dtype"].as<std::string>();
    if (dtype != "f32" && dtype != "f64")
        throw UsageError(fmt::format("--dtype={} is not an element type (f32, f64)", dtype));
    o.f64 = dtype == "f64";
    return o;
}

void addCodegenOptions(po::options_description& d) {
    d.add_options()("dtype", po::value<std::string>()->default_value("f32"),
                    "element type of the compiled code: f32 | f64")(
        "threads", po::value<int>()->default_value(0), "threads for compiled code (0: all cores)")(
        "no-cache", "compile afresh: neither read nor write the cache of compiled code");
}

/// Declares the IDX files of a data folder as inputs of a run, so no output replaces them.
void declareDataInputs(OutputSet& outputs, const std::string& dir) {
    for (const char* name : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                             "t10k-labels-idx1-ubyte"})
        for (const char* ext : {"", ".gz"}) outputs.input(fmt::format("{}/{}{}", dir, name, ext));
}

/// The value of a file option, or "" when it is not given.
std::string fileOption(const po::variables_map& vm, const char* name) {
    return vm.count(name) ? vm[name].as<std::string>() : std::string();
}

int runCheck(const po::variables_map& vm) {
    FrontEnd fe = compileFile(vm["model"].as<std::string>(), semaOptions(vm));
    const Graph& g = fe.graph;
    const Node& x = g[0]; // the input is always the first node
    const Node& logits = g[g.output("logits")];
    fmt::print("model {}: input {}, output {}, loss {}, batch {}\n\n", g.model, x.shape.back(),
               logits.shape.back(), g.lossKind, g.batch);
    size_t wName = 5, wWhat = 5, wIn = 5;
    for (auto& l : g.layers) {
        wName = std::max(wName, l.name.size());
        wWhat = std::max(wWhat, l.what.size());
        wIn = std::max(wIn, shapeString(l.in).size());
    }
    fmt::print("  {:<{}}  {:<{}}  {:<{}}  {}\n", "layer", wName, "op", wWhat, "input", wIn, "output");
    for (auto& l : g.layers)
        fmt::print("  {:<{}}  {:<{}}  {:<{}}  {}\n", l.name, wName, l.what, wWhat,
                   shapeString(l.in), wIn, shapeString(l.out));
    size_t wP = 9, wS = 5;
    for (auto& p : g.params) {
        wP = std::max(wP, p.name.size());
        wS = std::max(wS, shapeString(g[p.node].shape).size());
    }
    const std::string total = thousands(g.parameterCount());
    size_t wC = std::max<size_t>(total.size(), 5);
    fmt::print("\n  {:<{}}  {:<{}}  {:>{}}  {}\n", "parameter", wP, "shape", wS, "count", wC, "init");
    for (auto& p : g.params) {
        std::string init = p.init.scheme;
        for (size_t i = 0; i < p.init.args.size(); ++i)
            init += fmt::format("{}{}", i ? "," : "(", p.init.args[i]);
        if (!p.init.args.empty()) init += ")";
        fmt::print("  {:<{}}  {:<{}}  {:>{}}  {}\n", p.name, wP, shapeString(g[p.node].shape), wS,
                   thousands(elementCount(g[p.node].shape)), wC, init);
    }
    fmt::print("  {:<{}}  {:<{}}  {:>{}}\n", "total", wP, "", wS, total, wC);
    return 0;
}

int runDump(const po::variables_map& vm) {
    const std::string emit = vm["emit"].as<std::string>();
    static const std::vector<std::string> stages = {"ast", "graph", "grad", "kernels", "memplan", "llvm", "asm",
                                                     "llvm-unoptimised"};
    if (std::find(stages.begin(), stages.end(), emit) == stages.end()) {
        std::string known;
        for (auto& s : stages) known += (known.empty() ? "" : ", ") + s;
        throw UsageError(fmt::format("--emit={} is not a stage (stages: {})", emit, known));
    }
    SemaOptions so = semaOptions(vm);
    so.eval = vm.count("eval") != 0;
    if (so.eval && emit == "grad") throw UsageError("--eval: evaluation mode has no backward pass to print");
    FrontEnd fe = compileFile(vm["model"].as<std::string>(), so);
    if (emit == "ast") fmt::print("{}", printAST(fe.ast));
    else if (emit == "graph") fmt::print("{}", printGraph(fe.graph));
    else if (emit == "grad") fmt::print("{}", printGraph(differentiate(fe.graph)));
    else fmt::print("{}", emitModule(fe.graph, codegenOptions(vm), emit));
    return 0;
}

/// `gradc act sigmoid relu ...`: each activation and its derivative on [-5, 5].
int runAct(const po::variables_map& vm) {
    OutputSet outputs;
    outputs.input(fileOption(vm, "model"));
    outputs.output(fileOption(vm, "plot"), "the figure");
    ActivationTable table;
    if (vm.count("model")) {
        FrontEnd fe = compileFile(vm["model"].as<std::string>());
        for (auto& s : fe.ast.stmts)
            if (s->kind == Stmt::Kind::ActivationDef) table.define(*s);
    }
    std::vector<Activation> acts;
    for (auto& text : vm["names"].as<std::vector<std::string>>()) {
        std::unique_ptr<Expr> e = parseExpression(makeSourceFile("<activation>", text));
        ActRef ref{e->name, {}, e->loc};
        bool ok = e->kind == Expr::Kind::Var || e->kind == Expr::Kind::Call;
        for (auto& a : e->args) {
            bool neg = a->kind == Expr::Kind::Neg && a->args[0]->kind == Expr::Kind::Number;
            ok = ok && (a->kind == Expr::Kind::Number || neg);
            if (ok) ref.args.push_back(neg ? -a->args[0]->number : a->number);
        }
        if (!ok) throw UserError({makeSourceFile("<activation>", text), 1, 1},
                                 fmt::format("'{}' is not an activation name such as relu or elu(0.5)", text));
        acts.push_back(table.instantiate(ref));
    }
    if (vm.count("plot")) {
        outputs.set(vm["plot"].as<std::string>(), activationFigure(acts));
        outputs.commit();
        return 0;
    }
    fmt::print("{:>6}", "x");
    for (auto& a : acts) fmt::print("  {:>12} {:>12}", a.name, "d/dx");
    fmt::print("\n");
    std::vector<scalar::Evaluator> fs, dfs;
    for (auto& a : acts) fs.emplace_back(a.formula), dfs.emplace_back(scalar::derivative(a.formula));
    for (int i = -5; i <= 5; ++i) {
        fmt::print("{:>6}", i);
        for (size_t k = 0; k < acts.size(); ++k) fmt::print("  {:>12.6f} {:>12.6f}", fs[k](i), dfs[k](i));
        fmt::print("\n");
    }
    return 0;
}

/// `gradc compile MODEL -o model.o --header model.h`: ahead-of-time compilation.
int runCompile(const po::variables_map& vm) {
    AotOptions o;
    o.targetCpu = vm["target-cpu"].as<std::string>();
    if (o.targetCpu == "help") {
        for (auto& name : knownCpus()) fmt::print("{}\n", name);
        return 0;
    }
    if (!vm.count("output")) throw UsageError("-o FILE is required");
    o.f64 = codegenOptions(vm).f64;
    if (!isKnownCpu(o.targetCpu))
        throw UsageError(fmt::format("--target-cpu {} is not a CPU LLVM knows (generic, native, or a name that "
                                     "'gradc compile MODEL --target-cpu help' lists)", o.targetCpu));
    o.emit = vm["emit"].as<std::string>();
    if (vm.count("prefix")) o.prefix = vm["prefix"].as<std::string>();
    if (vm.count("prefix") && !isCIdentifier(o.prefix))
        throw UsageError(fmt::format("--prefix '{}' is not a C identifier (letters, digits and _, not first a digit)",
                                     o.prefix));
    o.source = vm["model"].as<std::string>();
    if (o.emit != "obj" && o.emit != "asm" && o.emit != "llvm")
        throw UsageError(fmt::format("--emit={} is not obj, asm or llvm", o.emit));
    OutputSet outputs;
    outputs.input(o.source);
    outputs.output(fileOption(vm, "output"));
    outputs.output(fileOption(vm, "header"), "the header");
    AotResult r = compileAhead(compileFile(o.source, semaOptions(vm)).graph, o);
    outputs.set(vm["output"].as<std::string>(), r.output);
    if (vm.count("header")) outputs.set(vm["header"].as<std::string>(), r.header);
    outputs.commit();
    return 0;
}

/// `gradc derive sigmoid`, `gradc derive 'leaky_relu(0.1)'`, `gradc derive 'x*sigmoid(x)'`:
/// the function and its simplified derivative, also through y = f(x) where possible.
int runDerive(const po::variables_map& vm) {
    const std::string text = vm["expr"].as<std::string>();
    ActivationTable table;
    if (vm.count("model")) {
        FrontEnd fe = compileFile(vm["model"].as<std::string>());
        for (auto& s : fe.ast.stmts)
            if (s->kind == Stmt::Kind::ActivationDef) table.define(*s);
    }
    auto file = makeSourceFile("<expression>", text);
    std::unique_ptr<Expr> e = parseExpression(file);
    scalar::E f;
    // A bare activation use (`elu`, `elu(0.5)`) names an activation; anything else is a
    // formula in x.
    bool use = e->kind == Expr::Kind::Var && e->name != "x";
    if (e->kind == Expr::Kind::Call && table.has(e->name)) {
        use = true;
        for (auto& a : e->args)
            use = use && (a->kind == Expr::Kind::Number ||
                          (a->kind == Expr::Kind::Neg && a->args[0]->kind == Expr::Kind::Number));
    }
    if (use) {
        ActRef ref{e->name, {}, e->loc};
        for (auto& a : e->args)
            ref.args.push_back(a->kind == Expr::Kind::Number ? a->number : -a->args[0]->number);
        f = table.instantiate(ref).formula;
    } else {
        f = table.convert(*e);
    }
    scalar::E df = scalar::derivative(f);
    fmt::print("f(x)  = {}\nf'(x) = {}\n", scalar::print(scalar::simplify(f)), scalar::print(df));
    if (scalar::E byOut = scalar::derivativeByOutput(f, df); byOut && scalar::usesOut(byOut))
        fmt::print("f'(x) = {}  where y = f(x)\n", scalar::print(byOut));
    return 0;
}

/// --normalize MEAN,STD: a finite mean and a normal (not subnormal) positive std, such that
/// every normalised pixel (pixel/255 - MEAN) / STD is a finite float.
std::pair<double, double> parseNormalize(const std::string& text) {
    double mean = 0, std = 0;
    char comma = 0, extra = 0;
    if (std::sscanf(text.c_str(), "%lf %c %lf %c", &mean, &comma, &std, &extra) != 3 || comma != ',' ||
        !std::isfinite(mean) || !std::isnormal(std) || !(std > 0))
        throw UsageError(fmt::format("--normalize '{}' is not MEAN,STD with a finite MEAN and a normal STD > 0", text));
    if (std::max(std::fabs(mean), std::fabs(1 - mean)) / std > FLT_MAX)
        throw UsageError(fmt::format("--normalize '{}': (pixel/255 - MEAN) / STD overflows a float", text));
    return {mean, std};
}

/// The model's hidden activations, for titles: "sigmoid", "relu, tanh".
std::string activationNames(const Graph& g) {
    std::vector<std::string> names;
    for (auto& l : g.layers)
        if (g[l.value].op == Op::Act && std::find(names.begin(), names.end(), l.what) == names.end() && l.what != "identity")
            names.push_back(l.what);
    std::string out;
    for (auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return out.empty() ? "none" : out;
}

/// `gradc grads MODEL...`: one batch forward and backward, per-tensor gradient statistics.
int runGrads(const po::variables_map& vm) {
    const auto models = vm["models"].as<std::vector<std::string>>();
    const int64_t batch = semaOptions(vm).batch;
    const std::string backend = vm["backend"].as<std::string>();
    if (backend != "interp" && backend != "jit")
        throw UsageError(fmt::format("--backend={} is not available (backends: jit, interp)", backend));
    const CodegenOptions codegen = codegenOptions(vm);
    const std::string dir = vm["data"].as<std::string>();
    auto [mean, std] = parseNormalize(vm["normalize"].as<std::string>());
    const uint64_t seed = seedOption(vm);
    const std::string format = vm["format"].as<std::string>();
    if (format != "table" && format != "json" && format != "csv")
        throw UsageError(fmt::format("--format={} is not a format (formats: table, json, csv)", format));
    std::vector<GradReport> reports;
    const std::string paramsIn = fileOption(vm, "params"), paramsOut = fileOption(vm, "save-params"),
                      gradsOut = fileOption(vm, "dump-grads"), plotOut = fileOption(vm, "plot");
    if ((!paramsIn.empty() || !paramsOut.empty() || !gradsOut.empty()) && models.size() != 1)
        throw UsageError("--params, --save-params and --dump-grads take exactly one model");
    // Every output checked before any work; all written at the end, or none.
    OutputSet outputs;
    for (auto& path : models) outputs.input(path);
    outputs.input(paramsIn);
    declareDataInputs(outputs, dir);
    outputs.output(paramsOut, "the parameter file");
    outputs.output(gradsOut, "the gradient file");
    outputs.output(plotOut, "the figure");
    std::vector<std::pair<std::string, Tensor>> paramsToSave, gradsToSave;
    std::set<std::string> integers; // num_batches_tracked, written as I64

    // Compile every model first, so a mistake in the last one costs no data loading.
    std::vector<Graph> graphs;
    for (auto& path : models) graphs.push_back(compileFile(path, {batch}).graph);

    Examples ex = vm.count("shuffle") ? sample(readExamples(dir, true, exampleCount(dir, true)), batch, seed)
                                      : readExamples(dir, /*train=*/true, batch);
    Tensor x{{batch, ex.features}, normalise(ex, mean, std)};
    for (size_t m = 0; m < graphs.size(); ++m) {
        const Graph& g = graphs[m];
        const int64_t width = g[0].shape[1];
        if (width != ex.features)
            throw UserError({makeSourceFile(models[m], ""), 0, 0},
                            fmt::format("the model takes {} inputs, but the images in {} have {} "
                                        "pixels", width, dir, ex.features));
        Bindings b = paramsIn.empty() ? initialiseParameters(g, seed) : loadParameters(g, paramsIn);
        paramsToSave = stateDict(g, b, &integers); // running statistics too, as PyTorch's state_dict
        b["x"] = x;
        const int64_t outputs = g[g.output("logits")].shape[1];
        if (g.lossKind == "cross_entropy") {
            Tensor labels{{batch}, {}};
            for (int64_t i = 0; i < batch; ++i) {
                if (ex.labels[size_t(i)] >= outputs)
                    throw UserError({makeSourceFile(ex.labelFile, ""), 0, 0},
                                    fmt::format("label {} of example {} is out of range for the "
                                                "model's {} classes", ex.labels[size_t(i)], i, outputs));
                labels.data.push_back(ex.labels[size_t(i)]);
            }
            b["target"] = std::move(labels);
        } else if (g.lossKind == "mse" && outputs == width) {
            b["target"] = x; // an autoencoder reproduces its input
        } else {
            throw UserError({makeSourceFile(models[m], ""), 0, 0},
                            fmt::format("gradc grads needs a cross_entropy classifier with at least "
                                        "{} classes, or an mse autoencoder; this model's loss is {} "
                                        "with {} outputs", 10, g.lossKind, outputs));
        }
        std::string how = backend;
        std::map<std::string, Tensor> out;
        if (backend == "interp") {
            out = interpretOutputs(differentiate(g), b);
        } else {
            CompiledModel cm = compileModel(g, codegen);
            how = fmt::format("jit {}, {} in {:.1f} ms", codegen.f64 ? "f64" : "f32",
                              cm.cacheHit ? "loaded from the cache" : "compiled", cm.compileMs);
            out = runCompiled(cm, g, b, /*backward=*/true);
        }
        GradReport r;
        r.model = g.model, r.batch = batch, r.loss = out.at("loss").data[0];
        for (auto& p : g.params) {
            r.params.push_back(statistics(p.name, out.at("grad:" + p.name)));
            gradsToSave.emplace_back(p.name, out.at("grad:" + p.name));
        }
        r.activations = activationStatistics(g, out);
        computeVanishingFactor(r);
        if (format == "table") {
            if (m) fmt::print("\n");
            fmt::print("{}: batch {} (the first {} training examples of {}), seed {}\nbackend {}\n",
                       g.model, batch, batch, dir, seed, how);
            fmt::print("{}", formatTable(r));
        }
        reports.push_back(std::move(r));
    }
    if (format == "json") fmt::print("{}", formatJson(reports));
    if (format == "csv") fmt::print("{}", formatCsv(reports));
    // Files last: a run that fails earlier writes none.
    const bool wide = backend == "interp" || codegen.f64;
    if (!paramsOut.empty()) outputs.set(paramsOut, encodeSafetensors(paramsToSave, /*f64=*/false, integers));
    if (!gradsOut.empty()) outputs.set(gradsOut, encodeSafetensors(gradsToSave, wide));
    if (!plotOut.empty()) {
        std::vector<std::string> names;
        for (auto& g : graphs) names.push_back(activationNames(g));
        outputs.set(plotOut, gradientFigure(reports, names));
    }
    outputs.commit();
    return 0;
}

/// Multiply-adds of the matrix products in a graph, counted as 2 flops each.
double matmulFlops(const Graph& g) {
    double flops = 0;
    for (auto& n : g.nodes) {
        if (n.op == Op::MatMulNT) flops += 2.0 * double(elementCount(n.shape)) * double(g[n.in[0]].shape[1]);
        if (n.op == Op::MatMulNN) flops += 2.0 * double(elementCount(n.shape)) * double(g[n.in[0]].shape[1]);
        if (n.op == Op::MatMulTN) flops += 2.0 * double(elementCount(n.shape)) * double(g[n.in[0]].shape[0]);
    }
    return flops;
}

/// `gradc bench MODEL`: times the compiled forward + backward step on random data.
int runBench(const po::variables_map& vm) {
    const int64_t batch = semaOptions(vm).batch;
    const int steps = vm["steps"].as<int>();
    if (steps < 1 || steps > 1000000) throw UsageError(fmt::format("--steps {} is out of range (1 to 1000000)", steps));
    CodegenOptions codegen = codegenOptions(vm);
    codegen.profile = vm.count("profile") != 0;
    if (codegen.profile) codegen.cache = false; // profiled code is not the code users run
    const std::string path = vm["model"].as<std::string>();
    // The step `gradc train` runs; with --statistics, the one `gradc grads` runs.
    Graph g = compileFile(path, {batch, false, false, vm.count("statistics") != 0}).graph;
    CompiledModel cm = compileModel(g, codegen);
    Graph grad = differentiate(g);
    std::mt19937_64 rng(1);
    Bindings b = initialiseParameters(g, 1);
    for (auto& n : g.nodes) {
        if (n.op != Op::Input) continue;
        Tensor t{n.shape, std::vector<double>(size_t(elementCount(n.shape)))};
        const int64_t classes = g[g.output("logits")].shape[1];
        for (double& v : t.data) v = n.type == DType::Index ? double(rng() % uint64_t(classes)) : double(rng() % 1000) / 1000.0;
        b[n.name] = std::move(t);
    }
    PreparedCall call(cm, g, b);
    call.step(true); // warm up
    // Five rounds (fewer with fewer steps); the median round's time per step, which a shared
    // machine's pauses disturb less than the mean.
    const int rounds = std::min(steps, 5);
    std::vector<double> perStep;
    for (int r = 0; r < rounds; ++r) {
        const int n = steps / rounds + (r < steps % rounds);
        auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < n; ++i) call.step(true);
        perStep.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / n);
    }
    std::sort(perStep.begin(), perStep.end());
    const double ms = perStep[perStep.size() / 2];
    double gflops = matmulFlops(grad) / (ms * 1e6);
    const double peak = measureFmaPeak(codegen.f64);
    fmt::print("{}: batch {}, {} steps, {} code {} in {:.1f} ms\n", g.model, batch, steps,
               codegen.f64 ? "f64" : "f32", cm.cacheHit ? "loaded from the cache" : "compiled", cm.compileMs);
    fmt::print("FMA peak (measured): {:.1f} GFLOP/s per thread; {} thread{}\n", peak, threadCount(),
               threadCount() == 1 ? "" : "s");
    fmt::print("forward + backward: {:.3f} ms per step, {:.2f} GFLOP/s ({:.3f} GFLOP per step), {:.1f}% of peak\n", ms,
               gflops, matmulFlops(grad) / 1e9, 100 * gflops / (peak * threadCount()));
    fmt::print("(median of {} rounds, {:.3f} to {:.3f} ms; {})\n", rounds, perStep.front(), perStep.back(),
               vm.count("statistics") ? "with activation statistics, as gradc grads"
                                      : "without activation statistics, as gradc train");
    if (codegen.profile) {
        uint64_t total = 0;
        for (size_t i = 0; i < cm.kernelsBackward.size(); ++i) total += cm.profileBackward[i];
        fmt::print("\nbackward entry point, share of cycles per kernel:\n");
        for (size_t i = 0; i < cm.kernelsBackward.size(); ++i)
            fmt::print("  {:5.1f}%  {}\n", 100.0 * double(cm.profileBackward[i]) / double(total), cm.kernelsBackward[i]);
    }
    return 0;
}

/// The model must classify the data set's images (`classes` at least): checked before any
/// data is read or code compiled.
void needClassifier(const Graph& g, const std::string& model, int64_t features, int classes) {
    const int64_t outputs = g[g.output("logits")].shape[1];
    if (g.lossKind != "cross_entropy" || outputs < classes)
        throw UserError({makeSourceFile(model, ""), 0, 0},
                        fmt::format("this command needs a cross_entropy classifier with at least {} classes; the "
                                    "model's loss is {} with {} outputs", classes, g.lossKind, outputs));
    if (g[0].shape[1] != features)
        throw UserError({makeSourceFile(model, ""), 0, 0},
                        fmt::format("the model takes {} inputs, but the images have {} pixels", g[0].shape[1], features));
}

/// A classifier of the images in --data with at least `classes` outputs, compiled for
/// training and evaluation at `batch`, its parameters from --params or initialised with
/// --seed. The model file is parsed once and checked before anything is compiled.
std::unique_ptr<Engine> makeEngine(const po::variables_map& vm, int64_t batch, int classes) {
    const std::string path = vm["model"].as<std::string>();
    const CodegenOptions codegen = codegenOptions(vm);
    if (codegen.f64) throw UsageError("training runs in f32 (--dtype f64 is for gradients only)");
    const std::string backend = vm["backend"].as<std::string>();
    if (backend != "interp" && backend != "jit")
        throw UsageError(fmt::format("--backend={} is not available (backends: jit, interp)", backend));
    // Training reads no activation statistics: its program does not store them.
    FrontEnd fe = compileFile(path, {batch, /*eval=*/false, /*layerOutputs=*/false, /*statistics=*/false});
    needClassifier(fe.graph, path, readExamples(vm["data"].as<std::string>(), true, 1).features, classes);
    Graph evalGraph = buildGraph(fe.ast, {batch, /*eval=*/true, /*layerOutputs=*/true});
    auto engine = std::make_unique<Engine>(std::move(fe.graph), std::move(evalGraph), SessionOptions{backend, codegen.cache});
    if (vm.count("params")) engine->load(vm["params"].as<std::string>());
    else engine->initialise(seedOption(vm));
    return engine;
}

void onInterrupt(int) {
    gInterrupted = 1;
    std::signal(SIGINT, SIG_DFL); // a second Ctrl-C stops at once
}

/// `gradc train MODEL`: epochs of SGD or Adam with early stopping on validation accuracy.
int runTrain(const po::variables_map& vm) {
    const int64_t batch = semaOptions(vm).batch;
    TrainOptions o;
    o.epochs = vm["epochs"].as<int>();
    o.patience = vm["patience"].as<int>();
    o.seed = seedOption(vm);
    o.maxSteps = vm["steps"].as<int64_t>();
    const int64_t val = vm["val"].as<int64_t>(), limit = vm["limit"].as<int64_t>();
    if (o.epochs < 1 || o.epochs > 100000) throw UsageError(fmt::format("--epochs {} is out of range (1 to 100000)", o.epochs));
    if (o.patience < 1) throw UsageError(fmt::format("--patience {} must be at least 1", o.patience));
    if (o.maxSteps < 0) throw UsageError(fmt::format("--steps {} must not be negative", o.maxSteps));
    if (val < 1) throw UsageError(fmt::format("--val {} must be at least 1", val));
    if (limit < 0) throw UsageError(fmt::format("--limit {} must not be negative", limit));
    o.save = fileOption(vm, "save"), o.log = fileOption(vm, "log"), o.logdir = fileOption(vm, "logdir");
    OptimizerOptions opt;
    opt.method = vm["optimizer"].as<std::string>();
    if (opt.method != "sgd" && opt.method != "adam")
        throw UsageError(fmt::format("--optimizer={} is not sgd or adam", opt.method));
    opt.lr = vm.count("lr") ? realOption(vm, "lr", "learning rate", 0) : opt.method == "adam" ? 1e-3 : 1e-2;
    opt.momentum = realOption(vm, "momentum", "momentum", 0);
    opt.weightDecay = realOption(vm, "weight-decay", "weight decay", 0);
    opt.nesterov = vm.count("nesterov") != 0;
    opt.beta1 = realOption(vm, "beta1", "Adam's beta1", 0, 1), opt.beta2 = realOption(vm, "beta2", "Adam's beta2", 0, 1);
    opt.eps = realOption(vm, "eps", "Adam's eps", 0);
    try {
        hyperParameters(opt, 1);
    } catch (const UserError& e) {
        throw UsageError(e.what());
    }
    const std::string dir = vm["data"].as<std::string>(), path = vm["model"].as<std::string>();
    auto [mean, std] = parseNormalize(vm["normalize"].as<std::string>());
    // Every output checked before any data is loaded or code compiled.
    OutputSet outputs;
    outputs.input(path);
    outputs.input(fileOption(vm, "params"));
    declareDataInputs(outputs, dir);
    declareTrainOutputs(outputs, o);
    o.outputs = &outputs;
    std::unique_ptr<Engine> engine = makeEngine(vm, batch, /*classes=*/10);
    engine->setOptimizer(opt);
    DataSplit data = loadSplit(dir, val, mean, std, limit);
    const bool terminal = isatty(STDERR_FILENO) && !vm.count("no-progress");
    o.progressBar = terminal;
    fmt::print(stderr, "{}: {} parameters; {} training and {} validation examples of {}, batch {}; {} lr {}{}\n",
               engine->graph().model, thousands(engine->parameterCount()), thousands(int64_t(data.fit.size())),
               thousands(int64_t(data.val.size())), dir, batch, opt.method, opt.lr,
               opt.momentum > 0 ? fmt::format(" momentum {}", opt.momentum) : "");
    gInterrupted = 0;
    std::signal(SIGINT, onInterrupt);
    TrainResult r = train(*engine, data, o, [](const std::string& line) {
        fmt::print(stderr, "{}", line);
        std::fflush(stderr);
    });
    std::signal(SIGINT, SIG_DFL);
    outputs.commit(); // the log, also when interrupted
    if (r.interrupted) fmt::print(stderr, "\ninterrupted: keeping what was trained\n");
    fmt::print("{}: best epoch {} of {}{}, validation accuracy {:.2f}%, test accuracy {:.2f}% ({:.1f} s)\n",
               engine->graph().model, r.bestEpoch, r.epochs.size(), r.stoppedEarly ? " (stopped early)" : "",
               100 * r.bestValAccuracy, 100 * r.testAccuracy, r.seconds);
    if (!o.save.empty()) fmt::print("parameters of the best epoch: {}\n", o.save);
    return r.interrupted ? 130 : 0;
}

/// The activation layers of a graph: the modules whose output is an activation function's.
bool isActivationLayer(const Graph& g, const LayerInfo& l) { return g[l.value].op == Op::Act; }

/// acts and dead read the layers' outputs, never the loss, so they take any classifier with
/// two or more classes: the data set's labels (0 to 9) are replaced by class 0, which every
/// such model has, and no backend is given a label out of its range.
void onlyImages(std::vector<int32_t>& labels) { std::fill(labels.begin(), labels.end(), 0); }

/// `gradc acts MODEL`: each layer's output distribution over the first 1024 training images.
int runActs(const po::variables_map& vm) {
    const int64_t count = vm["count"].as<int64_t>();
    if (count < 1 || count > kMaxBatch) throw UsageError(fmt::format("--count {} is out of range (1 to {})", count, kMaxBatch));
    const std::string dir = vm["data"].as<std::string>(), path = vm["model"].as<std::string>();
    const std::string format = vm["format"].as<std::string>();
    if (format != "table" && format != "json") throw UsageError(fmt::format("--format={} is not table or json", format));
    auto [mean, std] = parseNormalize(vm["normalize"].as<std::string>());
    OutputSet outputs;
    outputs.input(path);
    outputs.input(fileOption(vm, "params"));
    declareDataInputs(outputs, dir);
    outputs.output(fileOption(vm, "plot"), "the figure");
    std::unique_ptr<Engine> engine = makeEngine(vm, count, /*classes=*/2);
    Examples ex = readExamples(dir, true, count);
    std::vector<int64_t> all(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) all[size_t(i)] = i;
    std::vector<float> x;
    std::vector<int32_t> labels;
    gather(ex, all, 0, count, mean, std, x, labels);
    onlyImages(labels);
    engine->evaluate(x.data(), labels.data(), nullptr);
    const Graph& g = engine->graph();
    std::vector<std::pair<std::string, TensorStats>> layers;
    for (size_t i = 0; i < engine->layerCount(); ++i) {
        const LayerInfo& l = g.layers[i];
        layers.emplace_back(l.what, statistics(l.name, l.out, engine->layerOutput(i), 50));
    }
    if (format == "json") {
        fmt::print("{}", formatLayersJson(g.model, count, layers));
    } else {
        fmt::print("{}: layer outputs over the first {} training images of {} (evaluation mode)\n\n", g.model, count, dir);
        fmt::print("  {:<12} {:<22} {:>10} {:>10} {:>10} {:>10} {:>7}\n", "layer", "op", "mean", "variance", "min", "max",
                   "zero");
        for (auto& [what, s] : layers)
            fmt::print("  {:<12} {:<22} {:>10.4f} {:>10.4f} {:>10.4f} {:>10.4f} {:>6.1f}%\n", s.name, what, s.mean,
                       s.std * s.std, s.min, s.max, 100 * s.zeroFraction);
    }
    if (vm.count("plot")) {
        std::vector<std::pair<std::string, TensorStats>> panels;
        for (auto& [what, s] : layers) panels.emplace_back(fmt::format("{} - {}", s.name, what), s);
        outputs.set(vm["plot"].as<std::string>(),
                    histogramFigure(fmt::format("Activation distribution of {}", g.model), panels, 4));
    }
    outputs.commit();
    return 0;
}

/// `gradc dead MODEL`: per activation layer, the units that output zero for every training
/// image of the split, as the tutorial counts dead neurons.
int runDead(const po::variables_map& vm) {
    const int64_t batch = semaOptions(vm).batch;
    const std::string dir = vm["data"].as<std::string>(), path = vm["model"].as<std::string>();
    auto [mean, std] = parseNormalize(vm["normalize"].as<std::string>());
    const int64_t val = vm["val"].as<int64_t>(), limit = vm["limit"].as<int64_t>();
    if (val < 0) throw UsageError(fmt::format("--val {} must not be negative", val));
    if (limit < 0) throw UsageError(fmt::format("--limit {} must not be negative", limit));
    std::unique_ptr<Engine> engine = makeEngine(vm, batch, /*classes=*/2);
    DataSplit data = loadSplit(dir, val, mean, std, limit);
    const Graph& g = engine->graph();
    std::vector<size_t> layers;
    std::vector<std::vector<char>> alive;
    for (size_t i = 0; i < engine->layerCount(); ++i)
        if (isActivationLayer(g, g.layers[i])) {
            layers.push_back(i);
            alive.emplace_back(size_t(g.layers[i].out[1]), 0);
        }
    std::vector<float> x;
    std::vector<int32_t> labels;
    for (size_t begin = 0; begin < data.fit.size(); begin += size_t(batch)) {
        gather(data.train, data.fit, begin, batch, mean, std, x, labels);
        onlyImages(labels);
        engine->evaluate(x.data(), labels.data(), nullptr);
        const size_t rows = std::min(size_t(batch), data.fit.size() - begin);
        for (size_t k = 0; k < layers.size(); ++k) {
            const float* y = engine->layerOutput(layers[k]);
            const size_t N = alive[k].size();
            for (size_t r = 0; r < rows; ++r)
                for (size_t j = 0; j < N; ++j) alive[k][j] |= y[r * N + j] != 0.0f;
        }
    }
    fmt::print("{}: units that output zero for all {} training images (evaluation mode)\n\n", g.model,
               thousands(int64_t(data.fit.size())));
    fmt::print("  {:<12} {:<18} {:>6} {:>6} {:>8}\n", "layer", "activation", "units", "dead", "dead %");
    int64_t totalDead = 0, total = 0;
    for (size_t k = 0; k < layers.size(); ++k) {
        int64_t dead = 0;
        for (char a : alive[k]) dead += !a;
        totalDead += dead, total += int64_t(alive[k].size());
        const LayerInfo& l = g.layers[layers[k]];
        fmt::print("  {:<12} {:<18} {:>6} {:>6} {:>7.2f}%\n", l.name, l.what, alive[k].size(), dead,
                   100.0 * double(dead) / double(alive[k].size()));
    }
    fmt::print("  {:<12} {:<18} {:>6} {:>6} {:>7.2f}%\n", "total", "", total, totalDead,
               total ? 100.0 * double(totalDead) / double(total) : 0.0);
    return 0;
}

void addDataOptions(po::options_description& d) {
    d.add_options()("data", po::value<std::string>()->default_value(kDefaultDataDir),
                    "directory of IDX files (train-images-idx3-ubyte[.gz], ...)")(
        "normalize", po::value<std::string>()->default_value("0.5,0.5"), "MEAN,STD: inputs are (pixel/255 - MEAN) / STD")(
        "seed", po::value<std::string>()->default_value("42"), "parameter initialisation (and shuffling) seed")(
        "params", po::value<std::string>(), "start from the parameters in FILE.safetensors")(
        "backend", po::value<std::string>()->default_value("jit"), "jit | interp");
    addCodegenOptions(d);
}

const std::vector<Command>& commands() {
    static const std::vector<Command> cmds = {
        {"check", "MODEL [--batch N]",
         "parse and verify a model; print its layers, shapes and parameters",
         [](po::options_description& d) { addModelOptions(d); }, runCheck},
        {"dump", "MODEL --emit=STAGE [--batch N]",
         "print a pipeline stage: ast, graph, grad, kernels, memplan, llvm, asm",
         [](po::options_description& d) {
             addModelOptions(d);
             d.add_options()("emit", po::value<std::string>()->default_value("graph"),
                             "stage to print: ast | graph | grad | kernels | memplan | llvm | asm")(
                 "eval", "the graph of evaluation mode (batchnorm with its running statistics)");
             addCodegenOptions(d);
         },
         runDump},
        {"grads", "MODEL... [--data DIR] [--batch N] [--seed N] [--format table|json|csv] [--backend jit|interp]",
         "one batch forward and backward; per-layer gradient statistics",
         [](po::options_description& d) {
             d.add_options()("models", po::value<std::vector<std::string>>()->required()->multitoken(),
                             "model files (.nn)")(
                 "batch", po::value<int64_t>()->default_value(256), "examples in the batch")(
                 "data", po::value<std::string>()->default_value(kDefaultDataDir),
                 "directory of IDX files (train-images-idx3-ubyte[.gz], ...)")(
                 "normalize", po::value<std::string>()->default_value("0.5,0.5"),
                 "MEAN,STD: inputs are (pixel/255 - MEAN) / STD")(
                 "seed", po::value<std::string>()->default_value("42"), "parameter initialisation seed")(
                 "format", po::value<std::string>()->default_value("table"), "table | json | csv")(
                 "shuffle", "a random batch of the training set (drawn with --seed) instead of the first")(
                 "params", po::value<std::string>(), "load parameters from FILE.safetensors (PyTorch names)")(
                 "save-params", po::value<std::string>(), "write the parameters used to FILE.safetensors")(
                 "dump-grads", po::value<std::string>(), "write the gradients to FILE.safetensors")(
                 "plot", po::value<std::string>(), "draw the weight-gradient histograms to FILE.svg")(
                 "backend", po::value<std::string>()->default_value("jit"),
                 "jit (compiled native code) | interp (the double-precision reference interpreter)");
             addCodegenOptions(d);
         },
         runGrads},
        {"bench", "MODEL [--batch N] [--steps N]",
         "time the compiled forward + backward step",
         [](po::options_description& d) {
             addModelOptions(d);
             d.add_options()("steps", po::value<int>()->default_value(50), "timed steps")(
                 "profile", "count the cycles of each kernel and print their shares")(
                 "statistics", "time the step of gradc grads, which also stores each hidden activation's input "
                               "for its statistics (default: the step of gradc train, which does not)");
             addCodegenOptions(d);
         },
         runBench},
        {"train", "MODEL [--epochs 50] [--batch 256] [--optimizer sgd|adam] [--lr X] [--momentum X] [--save FILE] [--log FILE.jsonl] [--logdir DIR]",
         "train on FashionMNIST (50,000 images; 10,000 validate) with early stopping; report test accuracy",
         [](po::options_description& d) {
             addModelOptions(d);
             d.add_options()("epochs", po::value<int>()->default_value(50), "at most this many epochs")(
                 "optimizer", po::value<std::string>()->default_value("sgd"), "sgd | adam")(
                 "lr", po::value<double>(), "learning rate (default: 1e-2 for sgd, 1e-3 for adam)")(
                 "momentum", po::value<double>()->default_value(0.0), "SGD momentum")(
                 "nesterov", "Nesterov momentum")(
                 "weight-decay", po::value<double>()->default_value(0.0), "L2 penalty added to the gradient")(
                 "beta1", po::value<double>()->default_value(0.9), "Adam's beta1")(
                 "beta2", po::value<double>()->default_value(0.999), "Adam's beta2")(
                 "eps", po::value<double>()->default_value(1e-8), "Adam's eps")(
                 "val", po::value<int64_t>()->default_value(10000), "training images held out for validation")(
                 "patience", po::value<int>()->default_value(7), "stop after this many epochs without a better validation accuracy")(
                 "save", po::value<std::string>(), "write the best epoch's parameters to FILE.safetensors")(
                 "log", po::value<std::string>(), "write per-epoch loss, accuracy and gradient statistics to FILE.jsonl")(
                 "logdir", po::value<std::string>(), "write TensorBoard event files (scalars, gradient histograms) to DIR")(
                 "steps", po::value<int64_t>()->default_value(0), "stop after this many steps in all (0: no limit)")(
                 "limit", po::value<int64_t>()->default_value(0), "use only the first N images of each file (0: all)")(
                 "no-progress", "no progress bar, even on a terminal");
             addDataOptions(d);
         },
         runTrain},
        {"acts", "MODEL [--params FILE] [--count 1024] [--plot FILE.svg] [--format table|json]",
         "each layer's output distribution over the first training images (evaluation mode)",
         [](po::options_description& d) {
             d.add_options()("model", po::value<std::string>()->required(), "model file (.nn)")(
                 "count", po::value<int64_t>()->default_value(1024), "images")(
                 "format", po::value<std::string>()->default_value("table"), "table | json")(
                 "plot", po::value<std::string>(), "draw the histograms to FILE.svg");
             addDataOptions(d);
         },
         runActs},
        {"dead", "MODEL [--params FILE]",
         "per activation layer, the units that output zero for every training image",
         [](po::options_description& d) {
             addModelOptions(d);
             d.add_options()("val", po::value<int64_t>()->default_value(10000), "training images held out (as gradc train)")(
                 "limit", po::value<int64_t>()->default_value(0), "use only the first N images (0: all)");
             addDataOptions(d);
         },
         runDead},
        {"compile", "MODEL -o FILE.o [--header FILE.h] [--target-cpu generic|native|NAME] [--emit obj|asm|llvm]",
         "compile a model ahead of time: an object file and a C header, linkable without LLVM",
         [](po::options_description& d) {
             addModelOptions(d);
             d.add_options()("output,o", po::value<std::string>(), "the object file (or .s, .ll) to write")(
                 "header", po::value<std::string>(), "the C header to write")(
                 "target-cpu", po::value<std::string>()->default_value("generic"),
                 "generic (portable x86-64), native (this machine), or an LLVM CPU name such as x86-64-v3")(
                 "emit", po::value<std::string>()->default_value("obj"), "obj | asm | llvm")(
                 "prefix", po::value<std::string>(), "prefix of the C symbols (default: the model's name)")(
                 "dtype", po::value<std::string>()->default_value("f32"), "element type: f32 | f64");
         },
         runCompile},
        {"act", "NAME... [--plot FILE.svg] [--model FILE]",
         "each activation and its derivative on [-5, 5]: a table, or the seed's figure",
         [](po::options_description& d) {
             d.add_options()("names", po::value<std::vector<std::string>>()->required()->multitoken(),
                             "activations: sigmoid, elu(0.5), ...")(
                 "plot", po::value<std::string>(), "draw them to FILE.svg")(
                 "model", po::value<std::string>(), "model file whose activations may be named");
         },
         runAct},
        {"derive", "EXPR|ACTIVATION [--model FILE]",
         "print an activation or a formula in x and its simplified symbolic derivative",
         [](po::options_description& d) {
             d.add_options()("expr", po::value<std::string>()->required(),
                             "a formula in x ('x * sigmoid(x)') or an activation ('elu(0.5)')")(
                 "model", po::value<std::string>(), "model file whose activations may be named");
         },
         runDerive},
    };
    return cmds;
}

void printUsage(FILE* out) {
    fmt::print(out, "usage: gradc COMMAND [OPTIONS] ...\n       gradc --help | --version\n\ncommands:\n");
    for (auto& c : commands()) fmt::print(out, "  {:<8} {}\n", c.name, c.summary);
    fmt::print(out, "\n'gradc COMMAND --help' describes a command's options.\n");
}

std::string commandUsage(const Command& c, const po::options_description& d) {
    std::ostringstream os;
    os << d;
    return fmt::format("usage: gradc {} {}\n{}\n\noptions:\n{}", c.name, c.args, c.summary, os.str());
}

int runCommand(const Command& c, const std::vector<std::string>& args) {
    po::options_description visible;
    c.options(visible);
    visible.add_options()("help,h", "show this help");
    po::positional_options_description pos;
    const std::string name = c.name;
    pos.add(name == "derive" ? "expr" : name == "grads" ? "models" : name == "act" ? "names" : "model",
            name == "grads" || name == "act" ? -1 : 1);
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(visible).positional(pos).run(), vm);
        if (vm.count("help")) {
            fmt::print("{}", commandUsage(c, visible));
            return 0;
        }
        po::notify(vm);
    } catch (const po::error& e) {
        fmt::print(stderr, "gradc {}: error: {}\n{}", c.name, e.what(), commandUsage(c, visible));
        return 2;
    }
    try {
        return c.run(vm);
    } catch (const UsageError& e) {
        fmt::print(stderr, "gradc {}: error: {}\n{}", c.name, e.what(), commandUsage(c, visible));
        return 2;
    }
}

} // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    try {
        if (args.empty()) {
            printUsage(stderr);
            return 2;
        }
        const std::string& first = args[0];
        if (first == "--help" || first == "-h" || first == "help") {
            printUsage(stdout);
            return 0;
        }
        if (first == "--version") {
            fmt::print("{}\n", versionString());
            return 0;
        }
        for (auto& c : commands())
            if (first == c.name) return runCommand(c, {args.begin() + 1, args.end()});
        fmt::print(stderr, "gradc: error: {} '{}'\n",
                   first.rfind('-', 0) == 0 ? "unknown option" : "unknown command", first);
        printUsage(stderr);
        return 2;
    } catch (const UserError& e) {
        std::fflush(stdout);
        fmt::print(stderr, "{}", e.format());
        return 1;
    } catch (const std::bad_alloc&) {
        std::fflush(stdout);
        fmt::print(stderr, "gradc: error: out of memory\n");
        return 1;
    } catch (const std::exception& e) {
        // The last resort: every known cause is a UserError, but no input may end in abort().
        std::fflush(stdout);
        fmt::print(stderr, "gradc: error: {}\n", e.what());
        return 1;
    } catch (...) {
        std::fflush(stdout);
        fmt::print(stderr, "gradc: error: an unexpected failure (an exception of unknown type)\n");
        return 1;
    }
}
