// plot.cpp — `gradc plot RUN.jsonl... -o FIGURE`: training runs from their logs.
#include "Commands.h"

#include "Files.h"
#include "Plot.h"
#include "RunLog.h"

namespace gradc::cli {

void plotOptions(po::options_description& d) {
    d.add_options()("runs", po::value<std::vector<std::string>>()->required()->multitoken(),
                    "training logs written by gradc train --log")(
        "output,o", po::value<std::string>()->value_name("FILE")->required(), "the figure: FILE.svg, .pdf or .png");
}

/// `gradc plot`: the loss and accuracy of every run, and each run's gradient flow over training.
int runPlot(const po::variables_map& vm) {
    const auto& paths = vm["runs"].as<std::vector<std::string>>();
    const std::string out = figureOption(vm, "output");
    OutputSet outputs;
    for (auto& p : paths) outputs.input(p);
    outputs.output(out, "the figure");
    std::vector<RunLog> runs;
    for (auto& p : paths) runs.push_back(readRunLog(p));
    outputs.set(out, trainingFigure(runs).write(out));
    outputs.commit();
    return 0;
}

} // namespace gradc::cli
