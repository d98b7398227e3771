// acts.cpp — `gradc acts MODEL`: each layer's output distribution over the first training
// images (evaluation mode). The options and the printing; the job is runtime/Jobs.h's.
#include "Commands.h"

#include "Data.h"
#include "Jobs.h"
#include "Plot.h"
#include "Report.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace gradc::cli {

void actsOptions(po::options_description& d) {
    d.add_options()("model", po::value<std::string>()->value_name("FILE")->required(), "model file (.nn)")(
        "count", po::value<int64_t>()->default_value(1024), "images")(
        "format", po::value<std::string>()->default_value("table"), "table | json")(
        "plot", po::value<std::string>()->value_name("FILE"), "draw the histograms to FILE: .svg, .pdf or .png");
    addDataOptions(d);
}

/// `gradc acts MODEL`: each layer's output distribution over the first 1024 training images.
int runActs(const po::variables_map& vm) {
    ActsOptions o;
    o.count = vm["count"].as<int64_t>();
    checkJobOptions(o);
    const int64_t count = o.count;
    const std::string dir = vm["data"].as<std::string>(), path = vm["model"].as<std::string>();
    const std::string format = vm["format"].as<std::string>();
    if (format != "table" && format != "json") throw UsageError(fmt::format("--format={} is not table or json", format));
    dataOptions(vm); // --normalize checked before any file
    OutputSet outputs;
    outputs.input(path);
    outputs.input(fileOption(vm, "params"));
    declareDataInputs(outputs, dir);
    outputs.output(figureOption(vm, "plot"), "the figure");
    static_cast<ClassifierOptions&>(o) = classifierOptions(vm);
    const ActsRun run = gradc::runActs(o);
    if (format == "json") {
        fmt::print("{}", formatLayersJson(run.model, count, run.layers));
    } else {
        fmt::print("{}: layer outputs over the first {} training images of {} (evaluation mode)\n\n", run.model, count, dir);
        // Each module's output with its shape ([B,C,H,W] for images); the columns widen to
        // their longest entry ("conv 32 -> 64, 3x3, padding 1").
        size_t wName = 12, wOp = 22, wShape = 5;
        for (auto& [what, s] : run.layers) {
            wName = std::max(wName, s.name.size()), wOp = std::max(wOp, what.size());
            wShape = std::max(wShape, shapeString(s.shape).size());
        }
        fmt::print("  {:<{}} {:<{}} {:<{}} {:>10} {:>10} {:>10} {:>10} {:>7}\n", "layer", wName, "op", wOp, "shape",
                   wShape, "mean", "variance", "min", "max", "zero");
        for (auto& [what, s] : run.layers)
            fmt::print("  {:<{}} {:<{}} {:<{}} {:>10.4f} {:>10.4f} {:>10.4f} {:>10.4f} {:>6.1f}%\n", s.name, wName, what,
                       wOp, shapeString(s.shape), wShape, s.mean, s.std * s.std, s.min, s.max, 100 * s.zeroFraction);
    }
    if (vm.count("plot")) {
        std::vector<std::pair<std::string, TensorStats>> panels;
        for (auto& [what, s] : run.layers) panels.emplace_back(fmt::format("{} - {}", s.name, what), s);
        const std::string plot = vm["plot"].as<std::string>();
        outputs.set(plot, histogramFigure(fmt::format("Activation distribution of {}", run.model), panels, 4)
                              .write(plot));
    }
    outputs.commit();
    return 0;
}

} // namespace gradc::cli
