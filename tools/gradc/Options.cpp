// Options.cpp — the option helpers and the classifier engine that several commands share.
#include "Options.h"

#include "Data.h"
#include "Pipeline.h"
#include "ThreadPool.h"

#include <fmt/format.h>

#include <algorithm>
#include <cfloat>
#include <cstdio>

namespace gradc::cli {

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

void addCodegenOptions(po::options_description& d) {
    d.add_options()("dtype", po::value<std::string>()->default_value("f32"),
                    "element type of the compiled code: f32 | f64")(
        "threads", po::value<int>()->default_value(0), "threads for compiled code (0: all cores)")(
        "no-cache", "compile afresh: neither read nor write the cache of compiled code");
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

double realOption(const po::variables_map& vm, const char* name, const char* what, double low,
                  double high) {
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

void declareDataInputs(OutputSet& outputs, const std::string& dir) {
    for (const char* name : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                             "t10k-labels-idx1-ubyte"})
        for (const char* ext : {"", ".gz"}) outputs.input(fmt::format("{}/{}{}", dir, name, ext));
}

std::string fileOption(const po::variables_map& vm, const char* name) {
    return vm.count(name) ? vm[name].as<std::string>() : std::string();
}

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

namespace {

/// The model must classify the data set's images (`classes` at least): checked before any
/// data is read or code compiled.
void needClassifier(const Graph& g, const std::string& model, int64_t features, int classes) {
    const int64_t outputs = g[g.output(OutputRole::Logits)].shape[1];
    if (g.lossKind != "cross_entropy" || outputs < classes)
        throw UserError({makeSourceFile(model, ""), 0, 0},
                        fmt::format("this command needs a cross_entropy classifier with at least {} classes; the "
                                    "model's loss is {} with {} outputs", classes, g.lossKind, outputs));
    if (g[0].shape[1] != features)
        throw UserError({makeSourceFile(model, ""), 0, 0},
                        fmt::format("the model takes {} inputs, but the images have {} pixels", g[0].shape[1], features));
}

} // namespace

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

void onlyImages(std::vector<int32_t>& labels) { std::fill(labels.begin(), labels.end(), 0); }

} // namespace gradc::cli
