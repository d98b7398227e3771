// dump.cpp — `gradc dump MODEL --emit=STAGE`: print a pipeline stage.
#include "Commands.h"

#include "AST.h"
#include "Autodiff.h"
#include "Codegen.h"
#include "Layout.h"
#include "Pipeline.h"

#include <fmt/format.h>

#include <algorithm>
#include <string>
#include <vector>

namespace gradc::cli {

void dumpOptions(po::options_description& d) {
    addModelOptions(d);
    d.add_options()("emit", po::value<std::string>()->default_value("graph")->value_name("ast|graph|grad|dot|grad-dot|layout|kernels|memplan|llvm|llvm-unoptimised|asm"),
                    "stage to print: ast | graph | grad | dot | grad-dot | layout | kernels | memplan | llvm | "
                    "llvm-unoptimised | asm (dot, grad-dot: the graph or its differentiated one for Graphviz; "
                    "llvm-unoptimised: the IR as lowered, before the optimiser)")(
        "eval", "the graph of evaluation mode (batchnorm with its running statistics)");
    addCodegenOptions(d, /*cache=*/false); // dump compiles afresh, never through the cache
}

int runDump(const po::variables_map& vm) {
    const std::string emit = vm["emit"].as<std::string>();
    static const std::vector<std::string> stages = {"ast", "graph", "grad", "dot", "grad-dot", "layout", "kernels",
                                                     "memplan", "llvm", "asm", "llvm-unoptimised"};
    if (std::find(stages.begin(), stages.end(), emit) == stages.end()) {
        std::string known;
        for (auto& s : stages) known += (known.empty() ? "" : ", ") + s;
        throw UsageError(fmt::format("--emit={} is not a stage (stages: {})", emit, known));
    }
    const CodegenOptions codegen = codegenOptions(vm); // checked whatever the stage
    SemaOptions so = semaOptions(vm);
    so.eval = vm.count("eval") != 0;
    if (so.eval && (emit == "grad" || emit == "grad-dot"))
        throw UsageError("--eval: evaluation mode has no backward pass to print");
    FrontEnd fe = compileFile(vm["model"].as<std::string>(), so);
    if (emit == "ast") fmt::print("{}", printAST(fe.ast));
    else if (emit == "graph") fmt::print("{}", printGraph(fe.graph));
    else if (emit == "grad") fmt::print("{}", printGraph(differentiate(fe.graph)));
    else if (emit == "dot") fmt::print("{}", dotGraph(fe.graph));
    else if (emit == "grad-dot") fmt::print("{}", dotGraph(differentiate(fe.graph)));
    else if (emit == "layout") fmt::print("{}", printLayout(computeLayout(fe.graph)));
    else fmt::print("{}", emitModule(fe.graph, codegen, emit));
    return 0;
}

} // namespace gradc::cli
