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
        "model", po::value<std::string>(), "model file whose activations may be named");
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

} // namespace gradc::cli
