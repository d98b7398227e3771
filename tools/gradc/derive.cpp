// derive.cpp — `gradc derive EXPR|ACTIVATION`: a function and its simplified symbolic
// derivative.
#include "Commands.h"

#include "Activations.h"
#include "Parser.h"
#include "Pipeline.h"

#include <fmt/format.h>

#include <memory>
#include <string>

namespace gradc::cli {

void deriveOptions(po::options_description& d) {
    d.add_options()("expr", po::value<std::string>()->required(),
                    "a formula in x ('x * sigmoid(x)') or an activation ('elu(0.5)')")(
        "model", po::value<std::string>()->value_name("FILE"), "model file whose activations may be named");
}

/// `gradc derive sigmoid`, `gradc derive 'leaky_relu(0.1)'`, `gradc derive 'x*sigmoid(x)'`:
/// the function and its simplified derivative, also through y = f(x) where possible.
int runDerive(const po::variables_map& vm) {
    const std::string text = vm["expr"].as<std::string>();
    const ActivationTable table = activationTable(vm);
    auto file = makeSourceFile("<expression>", text);
    std::unique_ptr<ExprAST> e = parseExpression(file);
    // A bare activation use (`elu`, `elu(0.5)`, a function the table knows) names an
    // activation; anything else is a formula in x.
    std::optional<ActRef> use;
    if ((e->kind == ExprAST::Kind::Var && e->name != "x") || (e->kind == ExprAST::Kind::Call && table.has(e->name)))
        use = activationUse(*e);
    const scalar::Expr f = use ? table.instantiate(*use).formula : table.convert(*e);
    scalar::Expr df = scalar::derivative(f);
    fmt::print("f(x)  = {}\nf'(x) = {}\n", scalar::print(scalar::simplify(f)), scalar::print(df));
    if (scalar::Expr byOut = scalar::derivativeByOutput(f, df); byOut && scalar::usesOut(byOut))
        fmt::print("f'(x) = {}  where y = f(x)\n", scalar::print(byOut));
    return 0;
}

} // namespace gradc::cli
