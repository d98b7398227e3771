// grads.cpp — `gradc grads MODEL...`: one batch forward and backward, per-tensor gradient
// statistics (the seed's job).
#include "Commands.h"

#include "Autodiff.h"
#include "Data.h"
#include "Execute.h"
#include "Init.h"
#include "Interpreter.h"
#include "Pipeline.h"
#include "Plot.h"
#include "Report.h"
#include "SafeTensors.h"
#include "Stats.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace gradc::cli {

void gradsOptions(po::options_description& d) {
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
}

namespace {

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

} // namespace

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

} // namespace gradc::cli
