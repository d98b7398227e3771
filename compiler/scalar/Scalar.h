// Scalar.h — scalar expressions: the algebra of element-wise functions.
//
// An activation is a closed expression in one variable `x` (its parameters are already
// bound to numbers). Expressions are immutable DAGs: every construction goes through the
// helpers below, which hash-cons (one node per op, value and operand nodes, process-wide),
// so equal subexpressions are one node and `a == b` is structural equality. Every traversal
// (substitution, derivative, simplifier, evaluation, printing, lowering) visits each
// distinct node once and iteratively: work and memory are linear in the DAG, never in the
// tree it stands for (`f(x) + f(x)` nested 25 times is 26 nodes, not 2^25), and no depth
// overflows the stack.
#pragma once

#include <cstdint>
#include <functional>
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
    X(Param, "param", 0) /* parameter slot number `value` of an activation definition */         \
    X(Grad, "g", 0) /* the incoming gradient of a vector-Jacobian product (vjp) */              \
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

enum class Kind : uint8_t {
#define X(name, spelling, arity) name,
    GRADC_SCALAR_OPS(X)
#undef X
};

struct OpInfo {
    const char* spelling;
    int arity;
};
const OpInfo& info(Kind op);

/// The built-in functions an expression may call by name (exp, log, ..., select).
/// Returns false if `name` is not one.
bool lookupFunction(std::string_view name, Kind* op);

struct ExprNode;
using Expr = std::shared_ptr<const ExprNode>;

/// One hash-consed node: only the helpers below create them, and never two equal ones.
struct ExprNode : std::enable_shared_from_this<ExprNode> {
    Kind op;
    double value = 0;    ///< Const: the number (compared bit for bit); Arg, Param: the index
    std::vector<Expr> args; ///< operands
    uint64_t hash = 0;   ///< structural: the same for equal expressions in every run
    uint32_t depth = 0;  ///< 1 + the deepest operand's (saturating)
    uint8_t leaves = 0;  ///< leafBit() of each leaf kind below (Var, Out, Grad, Arg, Param)
};

constexpr uint8_t leafBit(Kind op) {
    return op == Kind::Var ? 1 : op == Kind::Out ? 2 : op == Kind::Grad ? 4 : op == Kind::Arg ? 8 : op == Kind::Param ? 16 : 0;
}

Expr constant(double v);
Expr var();
Expr out();
Expr grad();           ///< the incoming gradient leaf g of a vjp
Expr arg(int index);   ///< a kernel operand leaf (Kernels.h)
Expr param(int index); ///< a parameter slot of an activation definition (Activations.h)
Expr make(Kind op, std::vector<Expr> args);

/// The number of distinct nodes of `e` (its size as a DAG).
size_t dagSize(const Expr& e);

/// Calls visit(node) once for each distinct node reachable from `root`, operands before the
/// nodes that use them, without recursion.
void postOrder(const Expr& root, const std::function<void(const ExprNode&)>& visit);

/// An expression flattened for evaluation at many points: each distinct node once.
class Evaluator {
public:
    explicit Evaluator(const Expr& e);
    /// The value at x (y: the output leaf, g: the incoming gradient leaf).
    double operator()(double x, double y = 0, double g = 1);
    /// The value with each Arg(i) leaf at args[i] (a map node's element function).
    double withArgs(const double* args);

private:
    struct Step {
        Kind op;
        double value;
        uint32_t a[3];
    };
    std::vector<Step> steps_;
    std::vector<double> regs_;
};

/// Evaluates in double precision at `x` (and `y`, `g` for expressions that use them). NaN
/// propagates as in PyTorch: min and max of a NaN are NaN.
double eval(const Expr& e, double x, double y = 0, double g = 1);

/// What substitute and substituteParams throw when `visited` would pass `limit`: the caller
/// says where, and why the work is bounded.
struct WorkLimit {};

/// Replaces the variable x by `value` everywhere. `visited`, if given, grows by the number of
/// nodes visited (the work done); past `limit` the substitution stops with WorkLimit, so a
/// bound on the work bounds the time too.
Expr substitute(const Expr& e, const Expr& value, size_t* visited = nullptr, size_t limit = SIZE_MAX);
/// Replaces the output leaf y by `value` everywhere.
Expr substituteOut(const Expr& e, const Expr& value);
/// Replaces the gradient leaf g by `value` everywhere.
Expr substituteGrad(const Expr& e, const Expr& value);
/// Replaces each Arg(i) leaf by `values[i]`.
Expr substituteArgs(const Expr& e, const std::vector<Expr>& values);
/// Replaces each Param(i) leaf by `values[i]`.
Expr substituteParams(const Expr& e, const std::vector<Expr>& values, size_t* visited = nullptr,
                      size_t limit = SIZE_MAX);

bool usesVar(const Expr& e);
bool usesOut(const Expr& e);

/// Infix text with the fewest parentheses that keep the meaning: "x * sigmoid(x)". An
/// expression whose tree is large and shares subexpressions names each shared one once:
/// "t2 * sigmoid(t2)  where t1 = x * sigmoid(x); t2 = t1 * sigmoid(t1)", so the text stays
/// linear in the DAG.
std::string print(const Expr& e);

} // namespace gradc::scalar

namespace gradc::scalar {

/// Simplifies bottom-up: folds constants, applies algebraic identities and orders commutative
/// operands canonically. Only rewrites that give the same value for every input, NaN and
/// +-Inf included, are applied (a * 1, a - 0, --a, select with equal arms, ...; never 0 / 0,
/// a / a, a - a or a * 0, which are NaN at NaN and Inf). Like the code generator's `reassoc`,
/// products are flattened and their constants gathered (rounding may differ), and the sign
/// of a zero result may change (a + 0).
Expr simplify(const Expr& e);

/// d/dx of e, simplified. Follows PyTorch at non-differentiable points: the derivative of a
/// select is the derivative of the taken arm (relu'(0) = 0), abs'(0) = 0, and min/max pass
/// the gradient to the first operand on ties and NaN. Terms that do not depend on x are
/// dropped, as autograd drops them (d/dx (2 * x) is 2, never 0 * x + 2 * 1).
Expr derivative(const Expr& e);

/// g * f'(x) as the chain rule applies it (PyTorch's backward of f): in x and the gradient
/// leaf g, simplified. A select passes g only to the taken arm, so relu's is
/// select(x <= 0, 0, g): 0 where x <= 0 even for a NaN g, as PyTorch's threshold_backward.
Expr vjp(const Expr& e);

/// The derivative of the activation `f` written through its output y = f(x) when the
/// algebra allows (sigmoid: y * (1 - y); tanh: 1 - y ^ 2); nullptr if it still needs x.
Expr derivativeByOutput(const Expr& f, const Expr& df);

/// Structural equality (expressions are hash-consed: equal expressions are one node).
inline bool same(const Expr& a, const Expr& b) { return a == b; }

} // namespace gradc::scalar
