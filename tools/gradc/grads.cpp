// grads.cpp — `gradc grads MODEL...`: one batch forward and backward, per-tensor gradient
// statistics (the seed's job). The options and the printing; the job is runtime/Jobs.h's.
#include "Cluster.h"
#include "Commands.h"

#include "Data.h"
#include "Jobs.h"
#include "Plot.h"
#include "Report.h"
#include "SafeTensors.h"

#include <fmt/format.h>

#include <string>
#include <vector>

namespace gradc::cli {

void gradsOptions(po::options_description& d) {
    d.add_options()("models", po::value<std::vector<std::string>>()->required()->multitoken(),
                    "model files (.nn)")("batch", po::value<int64_t>()->default_value(256),
                                         "examples in the batch")(
        "data", po::value<std::string>()->value_name("DIR")->default_value(kDefaultDataDir),
        "directory of IDX files (train-images-idx3-ubyte[.gz], ...)")(
        "normalize", po::value<std::string>()->value_name("MEAN,STD")->default_value("0.5,0.5"),
        "MEAN,STD: inputs are (pixel/255 - MEAN) / STD")(
        "seed", po::value<std::string>()->value_name("N")->default_value("42"), "parameter initialisation seed")(
        "format", po::value<std::string>()->default_value("table"), "table | json | csv")(
        "shuffle", "a random batch of the training set (drawn with --seed) instead of the first")(
        "inputs", po::value<std::string>()->value_name("FILE"),
        "the batch from FILE.safetensors instead of the data set: x [B,...] and target [B] (class "
        "indices)")("params", po::value<std::string>()->value_name("FILE"),
                    "load parameters from FILE.safetensors (PyTorch names)")(
        "save-params", po::value<std::string>()->value_name("FILE"), "write the parameters used to FILE.safetensors")(
        "dump-grads", po::value<std::string>()->value_name("FILE"),
        "write the gradients to FILE.safetensors (and each recurrent layer's norms of dL/dh_t, "
        "through:LAYER)")("plot", po::value<std::string>()->value_name("FILE"),
                          "draw the gradient flow and the weight-gradient histograms to FILE: .svg, .pdf or .png")(
        "plot-flow", po::value<std::string>()->value_name("FILE"),
        "draw the gradient flow alone, sized for a paper's column, to FILE: .svg, .pdf or .png")(
        "plot-scale", po::value<std::string>()->value_name("linear|log")->default_value("linear"),
        "the histograms' value axis: linear (each panel its own range) | log (log10 |gradient|, one range for "
        "all)")(
        "backend", po::value<std::string>()->value_name("jit|interp")->default_value("jit"),
        "jit (compiled native code) | interp (the double-precision reference interpreter)");
    addCodegenOptions(d);
}

/// `gradc grads MODEL...`: one batch forward and backward, per-tensor gradient statistics.
int runGrads(const po::variables_map& vm) {
    GradsOptions o;
    o.models = vm["models"].as<std::vector<std::string>>();
    o.batch = semaOptions(vm).batch;
    o.session.backend = backendOption(vm);
    const CodegenOptions codegen = codegenOptions(vm);
    o.session.cache = codegen.cache, o.session.threads = codegen.threads, o.f64 = codegen.f64;
    o.session.isa = codegen.isa;
    o.data = dataOptions(vm);
    o.seed = seedOption(vm);
    o.shuffle = vm.count("shuffle") != 0;
    const std::string format = vm["format"].as<std::string>();
    if (format != "table" && format != "json" && format != "csv")
        throw UsageError(fmt::format("--format={} is not a format (formats: table, json, csv)", format));
    o.params = fileOption(vm, "params");
    o.inputs = fileOption(vm, "inputs");
    if (!o.inputs.empty() && vm["batch"].defaulted()) o.batch = 0; // the file's
    if (!o.inputs.empty() && o.shuffle)
        throw UsageError("--shuffle draws from the data set; --inputs gives the batch");
    // In a data-parallel run (mpirun), rank 0 alone writes the files.
    const bool writes = cluster::root();
    auto output = [&](std::string path) { return writes ? path : std::string(); };
    const std::string paramsOut = output(fileOption(vm, "save-params")), gradsOut = output(fileOption(vm, "dump-grads")),
                      plotOut = output(figureOption(vm, "plot")), flowOut = output(figureOption(vm, "plot-flow"));
    const std::string scale = vm["plot-scale"].as<std::string>();
    if (scale != "linear" && scale != "log")
        throw UsageError(fmt::format("--plot-scale={} is not a scale (scales: linear, log)", scale));
    if ((!o.params.empty() || vm.count("save-params") || vm.count("dump-grads")) && o.models.size() != 1)
        throw UsageError("--params, --save-params and --dump-grads take exactly one model");
    // Every output checked before any work; all written at the end, or none.
    OutputSet outputs;
    for (auto& path : o.models) outputs.input(path);
    outputs.input(o.params);
    outputs.input(o.inputs);
    if (o.inputs.empty()) declareDataInputs(outputs, o.data.dir);
    outputs.output(paramsOut, "the parameter file");
    outputs.output(gradsOut, "the gradient file");
    outputs.output(plotOut, "the figure");
    outputs.output(flowOut, "the figure");

    bool first = true;
    GradsRun run = gradc::runGrads(o, [&](const GradsModel& m) {
        if (format != "table") return;
        if (!first) fmt::print("\n");
        first = false;
        if (o.inputs.empty())
            fmt::print("{}: batch {} (the first {} training examples of {}), seed {}\nbackend {}\n",
                       m.report.model, o.batch, o.batch, o.data.dir, o.seed, m.backend);
        else
            fmt::print("{}: batch {} (from {}), seed {}\nbackend {}\n", m.report.model,
                       m.report.batch, o.inputs, o.seed, m.backend);
        fmt::print("{}", formatTable(m.report));
    });
    std::vector<GradReport> reports;
    for (auto& m : run.models) reports.push_back(m.report);
    if (format == "json") fmt::print("{}", formatJson(reports));
    if (format == "csv") fmt::print("{}", formatCsv(reports));
    // Files last: a run that fails earlier writes none.
    if (!paramsOut.empty()) outputs.set(paramsOut, encodeSafetensors(run.params, /*f64=*/false, run.integers));
    if (!gradsOut.empty()) {
        auto tensors = run.grads; // then the recurrent layers' through:LAYER norms
        tensors.insert(tensors.end(), run.throughTime.begin(), run.throughTime.end());
        outputs.set(gradsOut, encodeSafetensors(tensors, run.wide));
    }
    std::vector<std::string> names; // each model's activations, for the figures
    for (auto& m : run.models) names.push_back(m.activations);
    if (!plotOut.empty()) outputs.set(plotOut, gradientFigure(reports, names, scale == "log").write(plotOut));
    if (!flowOut.empty()) outputs.set(flowOut, flowFigure(reports, names).write(flowOut));
    outputs.commit();
    return 0;
}

} // namespace gradc::cli
