// ScalarDerive.cpp — symbolic derivative and simplifier of scalar expressions.
#include "Scalar.h"

#include "Source.h"

#include <cmath>
#include <algorithm>
#include <unordered_map>

namespace gradc::scalar {

namespace {

bool isConst(const E& e, double v) { return e->op == Op::Const && e->value == v; }
bool isConst(const E& e) { return e->op == Op::Const; }

bool commutative(Op op) {
    return op == Op::Add || op == Op::Mul || op == Op::Eq || op == Op::Ne || op == Op::Min ||
           op == Op::Max;
}

/// Orders kinds of operand for printing: constants, then variables, then function calls,
/// then arithmetic ("0.5 * x * sigmoid(x) * (1 - y)").
int rank(Op op) {
    switch (op) {
    case Op::Const: return 0;
    case Op::Var: case Op::Out: case Op::Grad: case Op::Arg: case Op::Param: return 1;
    case Op::Add: case Op::Sub: case Op::Mul: case Op::Div: case Op::Neg: return 4;
    case Op::Pow: return 3;
    default: return 2;
    }
}

/// A total order on expressions used to put commutative operands in one canonical order:
/// their prefix spellings compared token by token (kind, op, value), the first kCompareTokens
/// only, then the structural hash. Bounded work however large the DAGs; readable order for
/// small expressions.
constexpr int kCompareTokens = 64;

int compare(const E& a, const E& b) {
    if (a == b) return 0;
    std::vector<const Node*> sa{a.get()}, sb{b.get()};
    for (int t = 0; t < kCompareTokens && !sa.empty() && !sb.empty(); ++t) {
        const Node* x = sa.back();
        const Node* y = sb.back();
        sa.pop_back(), sb.pop_back();
        if (rank(x->op) != rank(y->op)) return rank(x->op) < rank(y->op) ? -1 : 1;
        if (x->op != y->op) return int(x->op) < int(y->op) ? -1 : 1;
        if (x->value != y->value && !(std::isnan(x->value) && std::isnan(y->value))) // NaN last
            return std::isnan(x->value) ? 1 : std::isnan(y->value) ? -1 : x->value < y->value ? -1 : 1;
        for (size_t i = x->args.size(); i-- > 0;) sa.push_back(x->args[i].get());
        for (size_t i = y->args.size(); i-- > 0;) sb.push_back(y->args[i].get());
    }
    if (a->hash != b->hash) return a->hash < b->hash ? -1 : 1;
    return 0;
}

class Simplifier {
public:
    E run(const E& e) {
        postOrder(e, [&](const Node& n) {
            if (memo_.count(&n)) return;
            std::vector<E> args;
            for (auto& a : n.args) args.push_back(memo_.at(a.get()));
            memo_[&n] = args.empty() ? n.shared_from_this() : rewrite(n.op, std::move(args));
            keep_.push_back(n.shared_from_this());
        });
        return memo_.at(e.get());
    }

private:
    std::unordered_map<const Node*, E> memo_;
    std::vector<E> keep_; // keeps memo keys alive

    E num(double v) { return constant(v); }
    E mk(Op op, std::vector<E> args) { return rewrite(op, std::move(args)); }

    // Every rule gives the same value as what it replaces for every input, NaN and +-Inf
    // included: a rule that drops an operand (a * 0 -> 0, a - a -> 0, a / a -> 1, 0 / a -> 0)
    // would turn a NaN or an Inf into a number. Products are flattened and their constants
    // gathered, which may round differently (as `reassoc` in the code generator), and a
    // zero's sign may change (0 + a -> a, 0 - a -> -a, -(a - b) -> b - a).
    E rewrite(Op op, std::vector<E> a) {
        // Constant folding (NaN and infinities are left for run time to produce).
        bool allConst = true;
        for (auto& x : a) allConst = allConst && isConst(x);
        if (allConst) {
            double v = eval(make(op, a), 0);
            if (std::isfinite(v)) return num(v);
        }
        if (commutative(op) && compare(a[1], a[0]) < 0) std::swap(a[0], a[1]);
        switch (op) {
        case Op::Add:
            if (isConst(a[0], 0)) return a[1];
            if (a[1]->op == Op::Neg) return mk(Op::Sub, {a[0], a[1]->args[0]});
            if (a[0]->op == Op::Neg) return mk(Op::Sub, {a[1], a[0]->args[0]});
            if (a[0] == a[1]) return mk(Op::Mul, {num(2), a[0]}); // a + a is 2 * a exactly
            break;
        case Op::Sub:
            if (isConst(a[1], 0)) return a[0];
            if (isConst(a[0], 0)) return mk(Op::Neg, {a[1]});
            if (a[1]->op == Op::Neg) return mk(Op::Add, {a[0], a[1]->args[0]});
            break;
        case Op::Mul: {
            // A product in one canonical form: flattened (up to kMaxFactors factors, so that
            // shared products do not multiply the work), its constants and signs folded into
            // one leading factor, the rest sorted, repeated factors as powers (x * x -> x ^ 2).
            constexpr size_t kMaxFactors = 64;
            std::vector<E> factors, work = {a[0], a[1]};
            double c = 1;
            while (!work.empty()) {
                E f = work.back();
                work.pop_back();
                if (f->op == Op::Mul && factors.size() + work.size() < kMaxFactors)
                    work.insert(work.end(), f->args.begin(), f->args.end());
                else if (f->op == Op::Neg) c = -c, work.push_back(f->args[0]);
                else if (isConst(f)) c *= f->value;
                else factors.push_back(f);
            }
            if (factors.empty()) return num(c);
            std::sort(factors.begin(), factors.end(), [](const E& x, const E& y) { return compare(x, y) < 0; });
            E prod;
            for (size_t i = 0; i < factors.size();) {
                size_t j = i + 1;
                while (j < factors.size() && factors[j] == factors[i]) ++j;
                E f = j - i == 1 ? factors[i] : mk(Op::Pow, {factors[i], num(double(j - i))});
                prod = prod ? make(Op::Mul, {prod, f}) : f;
                i = j;
            }
            if (c == -1) return mk(Op::Neg, {prod});
            return c == 1 ? prod : make(Op::Mul, {num(c), prod}); // 0 * prod stays: NaN at NaN
        }
        case Op::Div:
            if (isConst(a[1], 1)) return a[0];
            if (a[0]->op == Op::Neg) return mk(Op::Neg, {mk(Op::Div, {a[0]->args[0], a[1]})});
            if (isConst(a[1]) && a[1]->value != 0 && std::isfinite(1 / a[1]->value) &&
                std::fabs(a[1]->value) == std::exp2(std::round(std::log2(std::fabs(a[1]->value)))))
                return mk(Op::Mul, {num(1 / a[1]->value), a[0]}); // exact for powers of two
            break;
        case Op::Pow:
            if (isConst(a[1], 1)) return a[0];
            if (isConst(a[1], 0)) return num(1); // pow(a, 0) is 1 for every a, NaN included
            break;
        case Op::Neg:
            if (a[0]->op == Op::Neg) return a[0]->args[0];
            if (a[0]->op == Op::Sub) return mk(Op::Sub, {a[0]->args[1], a[0]->args[0]});
            break;
        case Op::Select:
            if (a[1] == a[2]) return a[1];
            if (isConst(a[0])) return a[0]->value != 0 ? a[1] : a[2]; // NaN counts as true
            break;
        default: break;
        }
        return make(op, std::move(a));
    }
};

/// Rebuilds `e` bottom-up, each distinct node once: rule(node, its rebuilt operands).
template <typename F> E transform(const E& e, const F& rule) {
    std::unordered_map<const Node*, E> done;
    postOrder(e, [&](const Node& n) {
        std::vector<E> args;
        for (auto& a : n.args) args.push_back(done.at(a.get()));
        done[&n] = rule(n, std::move(args));
    });
    return done.at(e.get());
}

// Tangents: null stands for "does not depend on x", an exact zero that drops the terms it
// multiplies, as autograd never differentiates through constants.
E add(const E& a, const E& b) { return !a ? b : !b ? a : make(Op::Add, {a, b}); }
E sub(const E& a, const E& b) { return !b ? a : !a ? make(Op::Neg, {b}) : make(Op::Sub, {a, b}); }
E mul(const E& a, const E& b) { return a && b ? make(Op::Mul, {a, b}) : nullptr; }
E div(const E& a, const E& b) { return a ? make(Op::Div, {a, b}) : nullptr; }
E orZero(const E& a) { return a ? a : constant(0); }

/// The tangent of e when x moves by `seed` (seed 1: d/dx; seed g: g * f'(x)), unsimplified.
/// Each distinct node is differentiated once.
E tangent(const E& root, const E& seed) {
    std::unordered_map<const Node*, E> t;
    postOrder(root, [&](const Node& n) {
        auto c = [](double v) { return constant(v); };
        auto m = [](Op op, std::vector<E> a) { return make(op, std::move(a)); };
        const std::vector<E>& a = n.args;
        auto d = [&](size_t i) { return t.at(a[i].get()); };
        E e = n.shared_from_this();
        E r;
        switch (n.op) {
        case Op::Const: case Op::Param: break;
        case Op::Var: r = seed; break;
        case Op::Out: case Op::Arg: case Op::Grad:
            internal_assert(false, "derivative of an expression in y, g or a kernel operand");
            break;
        case Op::Add: r = add(d(0), d(1)); break;
        case Op::Sub: r = sub(d(0), d(1)); break;
        case Op::Neg: r = d(0) ? m(Op::Neg, {d(0)}) : nullptr; break;
        case Op::Mul: r = add(mul(d(0), a[1]), mul(a[0], d(1))); break;
        case Op::Div: // u'/v - v' (u/v)/v, as PyTorch's div backward
            r = sub(div(d(0), a[1]), mul(d(1), m(Op::Div, {e, a[1]})));
            break;
        case Op::Pow: // v u^(v-1) u' + u^v log(u) v'
            r = add(mul(m(Op::Mul, {a[1], m(Op::Pow, {a[0], m(Op::Sub, {a[1], c(1)})})}), d(0)),
                    mul(m(Op::Mul, {e, m(Op::Log, {a[0]})}), d(1)));
            break;
        case Op::Lt: case Op::Le: case Op::Gt: case Op::Ge: case Op::Eq: case Op::Ne: break;
        case Op::Select: // the gradient goes to the taken arm only
            if (d(1) || d(2)) r = m(Op::Select, {a[0], orZero(d(1)), orZero(d(2))});
            break;
        case Op::Exp: r = mul(e, d(0)); break;
        case Op::Log: r = div(d(0), a[0]); break;
        case Op::Sqrt: r = div(d(0), m(Op::Mul, {c(2), e})); break;
        case Op::Abs: // sign(u) u', with sign(0) = sign(NaN) = 0 as PyTorch
            r = mul(m(Op::Select, {m(Op::Gt, {a[0], c(0)}), c(1),
                                   m(Op::Select, {m(Op::Lt, {a[0], c(0)}), c(-1), c(0)})}),
                    d(0));
            break;
        case Op::Tanh: r = mul(m(Op::Sub, {c(1), m(Op::Pow, {e, c(2)})}), d(0)); break;
        case Op::Sigmoid: r = mul(m(Op::Mul, {e, m(Op::Sub, {c(1), e})}), d(0)); break;
        case Op::Softplus: r = mul(m(Op::Sigmoid, {a[0]}), d(0)); break;
        case Op::Erf: // 2/sqrt(pi) exp(-u^2) u'
            r = mul(m(Op::Mul, {c(2 / std::sqrt(M_PI)), m(Op::Exp, {m(Op::Neg, {m(Op::Pow, {a[0], c(2)})})})}), d(0));
            break;
        case Op::Min: // to the first operand on ties and NaN
            if (d(0) || d(1)) r = m(Op::Select, {m(Op::Lt, {a[1], a[0]}), orZero(d(1)), orZero(d(0))});
            break;
        case Op::Max:
            if (d(0) || d(1)) r = m(Op::Select, {m(Op::Gt, {a[1], a[0]}), orZero(d(1)), orZero(d(0))});
            break;
        }
        t[&n] = r;
    });
    return orZero(t.at(root.get()));
}

} // namespace

E simplify(const E& e) { return Simplifier().run(e); }

E derivative(const E& e) { return simplify(tangent(e, constant(1))); }

E vjp(const E& e) { return simplify(tangent(e, grad())); }

E derivativeByOutput(const E& f, const E& df) {
    if (!usesVar(f)) return nullptr;
    E g = simplify(f);
    if (!usesVar(g) || g->op == Op::Var) return nullptr; // constant or identity: nothing to gain
    // Every occurrence of f (one node: expressions are hash-consed) becomes y.
    E r = simplify(transform(df, [&](const Node& n, std::vector<E> args) -> E {
        if (&n == g.get()) return out();
        if (args.empty()) return n.shared_from_this();
        return make(n.op, std::move(args));
    }));
    return usesVar(r) ? nullptr : r;
}

} // namespace gradc::scalar
