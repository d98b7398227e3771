// act.cpp — `gradc act NAME...`: each activation and its derivative on [-5, 5], as a table or
// the seed's figure.
#include "Commands.h"

#include "Activations.h"
#include "Parser.h"
#include "Pipeline.h"
#include "Plot.h"

#include <fmt/format.h>

#include <memory>
#include <string>
#include <vector>

namespace gradc::cli {

void actOptions(po::options_description& d) {
    d.add_options()("names", po::value<std::vector<std::string>>()->required()->multitoken(),
                    "activations: sigmoid, elu(0.5), ...")(
        "plot", po::value<std::string>()->value_name("FILE"), "draw them to FILE: .svg, .pdf or .png")(
        "model", po::value<std::string>()->value_name("FILE"), "model file whose activations may be named");
}

/// `gradc act sigmoid relu ...`: each activation and its derivative on [-5, 5].
int runAct(const po::variables_map& vm) {
    OutputSet outputs;
    outputs.input(fileOption(vm, "model"));
    outputs.output(figureOption(vm, "plot"), "the figure");
    const ActivationTable table = activationTable(vm);
    std::vector<Activation> acts;
    for (auto& text : vm["names"].as<std::vector<std::string>>()) {
        std::unique_ptr<ExprAST> e = parseExpression(makeSourceFile("<activation>", text));
        const std::optional<ActRef> ref = activationUse(*e);
        if (!ref) throw UserError({makeSourceFile("<activation>", text), 1, 1},
                                  fmt::format("'{}' is not an activation name such as relu or elu(0.5)", text));
        acts.push_back(table.instantiate(*ref));
    }
    if (vm.count("plot")) {
        const std::string path = vm["plot"].as<std::string>();
        outputs.set(path, activationFigure(acts).write(path));
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

} // namespace gradc::cli
