// Activations.h — the one table of activation functions, built-in and user-defined.
//
// Every built-in activation is written once, as a formula in the model language's own
// expression syntax; a user's `activation NAME(x) = EXPR` joins the same table. Using an
// activation (`leaky_relu(0.1)`) binds its parameters and yields a closed scalar expression.
#pragma once

#include "AST.h"
#include "Scalar.h"

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace gradc {

/// An activation with its parameters bound: what a graph node applies element-wise.
struct Activation {
    std::string name;    ///< as printed: "sigmoid", "leaky_relu(0.1)"
    scalar::Expr formula;   ///< closed expression in x
    scalar::Expr derivative;         ///< d/dx in x (set by autodiff)
    scalar::Expr derivativeByOutput; ///< d/dx in y = f(x), where the algebra allows (or null)
    scalar::Expr vjp;                ///< g * f'(x) as backward applies it, in x and g (set by autodiff)
    scalar::Expr vjpByOutput;        ///< the same in y and g, where the algebra allows (or null)
};

class ActivationTable {
public:
    /// The table of built-ins: identity sigmoid tanh relu leaky_relu elu swish silu gelu softplus.
    ActivationTable();

    /// Adds `activation NAME(x, ...) = EXPR`; its body may call earlier activations.
    void define(const Stmt& def);

    /// Binds a use such as `elu(0.5)`; throws UserError naming the place if it is unknown
    /// or given the wrong arguments.
    Activation instantiate(const ActRef& use) const;

    /// Converts an expression in the single variable x (for `gradc derive EXPR`).
    scalar::Expr convert(const ExprAST& e) const;

    bool has(const std::string& name) const { return defs_.count(name) != 0; }
    std::vector<std::string> builtinNames() const;

    struct Def {
        std::string name;
        std::vector<std::string> params; // params[0] is the input variable
        std::vector<std::optional<double>> defaults;
        std::string formula;             // built-ins: the source text
        scalar::Expr body;                  // in Var (the input) and Param(i) (its parameters)
        bool builtin = false;
    };

    /// Calls of activations in definitions are expanded (substituted) as they are defined,
    /// sharing what does not change; a file whose expansion takes more steps than this in
    /// all is refused at the definition that crosses the limit.
    static constexpr size_t kMaxExpansionWork = 250'000;
    /// An activation a layer uses may have at most this many distinct operations.
    static constexpr size_t kMaxOperations = 10'000;

private:
    std::map<std::string, Def> defs_;
    mutable size_t work_ = 0; // substitution steps so far
    mutable std::map<std::string, std::pair<scalar::Expr, size_t>> instances_; // by use, with size
    std::vector<std::string> order_;

    scalar::Expr toScalar(const ExprAST& e, const std::map<std::string, scalar::Expr>& env) const;
    scalar::Expr bind(const Def& d, const std::vector<scalar::Expr>& args, const SourceLoc& loc) const;
    void add(Def d);
};

} // namespace gradc
