// Scalar.h — scalar expressions: the algebra of element-wise functions.
//
// An activation is a closed expression in one variable `x` (its parameters are already
// bound to numbers). Expressions are immutable trees shared by pointer; every construction
// goes through the helpers below, so later stages (derivative, simplifier, lowering) see
// one canonical set of operators.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace gradc::scalar {

#define GRADC_SCALAR_OPS(X)                                                                        \
    X(Const, "const", 0)                                                                           \
    X(Var, "x", 0)                                                                                 \
    X(Out, "y", 0) /* the function's own output, used by derivatives (sigmoid' = y*(1-y)) */       \
    X(Arg, "arg", 0) /* operand number `value` of a fused kernel's element function */           \
    X(Add, "+", 2)                                                                                 \
    X(Sub, "-", 2)                                                                                 \
    X(Mul, "*", 2)                                                                                 \
    X(Div, "/", 2)                                                                                 \
    X(Pow, "^", 2)                                                                                 \
    X(Neg, "neg", 1)                                                                               \
    X(Lt, "<", 2)                                                                                  \
    X(Le, "<=", 2)                                                                                 \
    X(Gt, ">", 2)                                                                                  \
    X(Ge, ">=", 2)                                                                                 \
    X(Eq, "==", 2)                                                                                 \
    X(Ne, "!=", 2)                                                                                 \
    X(Select, "select", 3)                                                                         \
    X(Exp, "exp", 1)                                                                               \
    X(Log, "log", 1)                                                                               \
    X(Sqrt, "sqrt", 1)                                                                             \
    X(Abs, "abs", 1)                                                                               \
    X(Tanh, "tanh", 1)                                                                             \
    X(Sigmoid, "sigmoid", 1)                                                                       \
    X(Softplus, "softplus", 1)                                                                     \
    X(Erf, "erf", 1)                                                                               \
    X(Min, "min", 2)                                                                               \
    X(Max, "max", 2)

enum class Op : uint8_t {
#define X(name, spelling, arity) name,
    GRADC_SCALAR_OPS(X)
#undef X
};

struct OpInfo {
    const char* spelling;
    int arity;
};
const OpInfo& info(Op op);

/// The built-in functions an expression may call by name (exp, log, ..., select).
/// Returns false if `name` is not one.
bool lookupFunction(std::string_view name, Op* op);

struct Node;
using E = std::shared_ptr<const Node>;

struct Node {
    Op op;
    double value = 0; // Const
    std::vector<E> args;
};

E constant(double v);
E var();
E out();
E arg(int index); ///< a kernel operand leaf (Kernels.h)
E make(Op op, std::vector<E> args);

/// Evaluates in double precision at `x` (and `y` for expressions that use the output).
double eval(const E& e, double x, double y = 0);

/// Replaces the variable x by `value` everywhere.
E substitute(const E& e, const E& value);
/// Replaces the output leaf y by `value` everywhere.
E substituteOut(const E& e, const E& value);
/// Replaces each Arg(i) leaf by `values[i]`.
E substituteArgs(const E& e, const std::vector<E>& values);

bool usesVar(const E& e);
bool usesOut(const E& e);

/// Infix text with the fewest parentheses that keep the meaning: "x * sigmoid(x)".
std::string print(const E& e);

} // namespace gradc::scalar

namespace gradc::scalar {

/// Simplifies bottom-up: folds constants, applies algebraic identities (a+0, a*1, a*0,
/// --a, select with equal arms, ...), orders commutative operands canonically and shares
/// equal subexpressions (the result is a DAG: equal subtrees are one node).
E simplify(const E& e);

/// d/dx of e, simplified. Follows PyTorch at non-differentiable points: the derivative of a
/// select is the derivative of the taken arm (relu'(0) = 0), abs'(0) = 0, and min/max pass
/// the gradient to the first operand on ties.
E derivative(const E& e);

/// The derivative of the activation `f` written through its output y = f(x) when the
/// algebra allows (sigmoid: y * (1 - y); tanh: 1 - y ^ 2); nullptr if it still needs x.
E derivativeByOutput(const E& f, const E& df);

/// Structural equality (after simplify, equal expressions share one node).
bool same(const E& a, const E& b);

} // namespace gradc::scalar
