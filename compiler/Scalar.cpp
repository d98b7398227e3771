// Scalar.cpp — construction, evaluation and printing of scalar expressions.
#include "Scalar.h"

#include "Source.h"

#include <fmt/format.h>

#include <cmath>

namespace gradc::scalar {

static const OpInfo kOps[] = {
#define X(name, spelling, arity) {spelling, arity},
    GRADC_SCALAR_OPS(X)
#undef X
};

const OpInfo& info(Op op) { return kOps[size_t(op)]; }

bool lookupFunction(std::string_view name, Op* op) {
    static const Op callable[] = {Op::Select, Op::Exp,      Op::Log, Op::Sqrt, Op::Abs, Op::Tanh,
                                  Op::Sigmoid, Op::Softplus, Op::Erf, Op::Min,  Op::Max};
    for (Op o : callable)
        if (name == info(o).spelling) return *op = o, true;
    return false;
}

E constant(double v) { return std::make_shared<Node>(Node{Op::Const, v, {}}); }
E var() { return std::make_shared<Node>(Node{Op::Var, 0, {}}); }
E out() { return std::make_shared<Node>(Node{Op::Out, 0, {}}); }
E arg(int index) { return std::make_shared<Node>(Node{Op::Arg, double(index), {}}); }

E make(Op op, std::vector<E> args) {
    internal_assert(int(args.size()) == info(op).arity, info(op).spelling);
    return std::make_shared<Node>(Node{op, 0, std::move(args)});
}

/// sigmoid without overflow: exp of a non-positive number only.
static double stableSigmoid(double v) {
    if (v >= 0) return 1 / (1 + std::exp(-v));
    double e = std::exp(v);
    return e / (1 + e);
}

double eval(const E& e, double x, double y) {
    auto a = [&](size_t i) { return eval(e->args[i], x, y); };
    switch (e->op) {
    case Op::Const: return e->value;
    case Op::Var: return x;
    case Op::Out: return y;
    case Op::Arg: internal_assert(false, "a kernel operand cannot be evaluated alone"); return 0;
    case Op::Add: return a(0) + a(1);
    case Op::Sub: return a(0) - a(1);
    case Op::Mul: return a(0) * a(1);
    case Op::Div: return a(0) / a(1);
    case Op::Pow: return std::pow(a(0), a(1));
    case Op::Neg: return -a(0);
    case Op::Lt: return a(0) < a(1);
    case Op::Le: return a(0) <= a(1);
    case Op::Gt: return a(0) > a(1);
    case Op::Ge: return a(0) >= a(1);
    case Op::Eq: return a(0) == a(1);
    case Op::Ne: return a(0) != a(1);
    case Op::Select: return a(0) != 0 ? a(1) : a(2);
    case Op::Exp: return std::exp(a(0));
    case Op::Log: return std::log(a(0));
    case Op::Sqrt: return std::sqrt(a(0));
    case Op::Abs: return std::fabs(a(0));
    case Op::Tanh: return std::tanh(a(0));
    case Op::Sigmoid: return stableSigmoid(a(0));
    case Op::Softplus: { // log(1 + exp(v)) without overflow
        double v = a(0);
        return std::max(v, 0.0) + std::log1p(std::exp(-std::fabs(v)));
    }
    case Op::Erf: return std::erf(a(0));
    case Op::Min: return std::fmin(a(0), a(1));
    case Op::Max: return std::fmax(a(0), a(1));
    }
    internal_assert(false, "unknown scalar op");
}

/// Rebuilds `e` with each leaf replaced by `leaf(e)` (nullptr: keep it); shares what is unchanged.
template <typename F> static E replaceLeaves(const E& e, const F& leaf) {
    if (e->args.empty()) {
        E r = leaf(e);
        return r ? r : e;
    }
    std::vector<E> args;
    bool same = true;
    for (auto& a : e->args) {
        args.push_back(replaceLeaves(a, leaf));
        same = same && args.back() == a;
    }
    return same ? e : make(e->op, std::move(args));
}

E substitute(const E& e, const E& value) {
    return replaceLeaves(e, [&](const E& l) { return l->op == Op::Var ? value : nullptr; });
}

E substituteOut(const E& e, const E& value) {
    return replaceLeaves(e, [&](const E& l) { return l->op == Op::Out ? value : nullptr; });
}

E substituteArgs(const E& e, const std::vector<E>& values) {
    return replaceLeaves(e, [&](const E& l) {
        return l->op == Op::Arg ? values.at(size_t(l->value)) : nullptr;
    });
}

static bool uses(const E& e, Op leaf) {
    if (e->op == leaf) return true;
    for (auto& a : e->args)
        if (uses(a, leaf)) return true;
    return false;
}
bool usesVar(const E& e) { return uses(e, Op::Var); }
bool usesOut(const E& e) { return uses(e, Op::Out); }

// Binding strength for printing: higher binds tighter.
static int precedence(Op op) {
    switch (op) {
    case Op::Lt: case Op::Le: case Op::Gt: case Op::Ge: case Op::Eq: case Op::Ne: return 1;
    case Op::Add: case Op::Sub: return 2;
    case Op::Mul: case Op::Div: return 3;
    case Op::Neg: return 4;
    case Op::Pow: return 5;
    default: return 6;
    }
}

static std::string printNumber(double v) {
    if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", int64_t(v));
    return fmt::format("{}", v);
}

std::string print(const E& e) {
    const int p = precedence(e->op);
    auto sub = [&](size_t i, bool rightOperand) {
        const E& a = e->args[i];
        int q = precedence(a->op);
        if (a->op == Op::Const && a->value < 0) q = 4; // prints like a negation
        // Left-associative operators need parentheses on the right at equal precedence
        // (a - (b - c)); '^' is right-associative and the other way round.
        bool paren = q < p || (q == p && (e->op == Op::Pow ? !rightOperand : rightOperand) &&
                               e->op != Op::Add && e->op != Op::Mul);
        if (q == p && p == 1) paren = true; // comparisons do not chain
        std::string s = print(a);
        return paren ? "(" + s + ")" : s;
    };
    switch (e->op) {
    case Op::Const: return printNumber(e->value);
    case Op::Var: return "x";
    case Op::Out: return "y";
    case Op::Arg: return fmt::format("a{}", int(e->value));
    case Op::Neg: return "-" + sub(0, true);
    case Op::Add: case Op::Sub: case Op::Mul: case Op::Div: case Op::Pow:
    case Op::Lt: case Op::Le: case Op::Gt: case Op::Ge: case Op::Eq: case Op::Ne:
        return fmt::format("{} {} {}", sub(0, false), info(e->op).spelling, sub(1, true));
    default: {
        std::string s = std::string(info(e->op).spelling) + "(";
        for (size_t i = 0; i < e->args.size(); ++i) s += (i ? ", " : "") + print(e->args[i]);
        return s + ")";
    }
    }
}

} // namespace gradc::scalar
