// check.cpp — `gradc check MODEL`: parse and verify a model; print its layers, shapes and
// parameters.
#include "Commands.h"

#include "Pipeline.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

namespace gradc::cli {

void checkOptions(po::options_description& d) { addModelOptions(d); }

int runCheck(const po::variables_map& vm) {
    FrontEnd fe = compileFile(vm["model"].as<std::string>(), semaOptions(vm));
    const Graph& g = fe.graph;
    const Node& x = g[0]; // the input is always the first node
    const Node& logits = g[g.output(OutputRole::Logits)];
    // The sizes of one example as the model file spells them: 784, 28x28, 28 steps 28.
    const std::string input =
        g.sequence ? fmt::format("{} steps {}", x.shape.at(1), x.shape.at(2))
                   : fmt::format("{}", fmt::join(x.shape.begin() + 1, x.shape.end(), "x"));
    fmt::print("model {}: input {}, output {}, loss {}, batch {}\n\n", g.model, input,
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

} // namespace gradc::cli
