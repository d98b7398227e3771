// ScalarDerive.cpp — symbolic derivative and simplifier of scalar expressions.
#include "Scalar.h"

#include "Source.h"

#include <cmath>
#include <algorithm>
#include <unordered_map>

namespace gradc::scalar {

namespace {

bool isConst(const Expr& e, double v) { return e->op == Kind::Const && e->value == v; }
bool isConst(const Expr& e) { return e->op == Kind::Const; }

bool commutative(Kind op) {
    return op == Kind::Add || op == Kind::Mul || op == Kind::Eq || op == Kind::Ne || op == Kind::Min ||
           op == Kind::Max;
}

/// Orders kinds of operand for printing: constants, then variables, then function calls,
/// then arithmetic ("0.5 * x * sigmoid(x) * (1 - y)").
int rank(Kind op) {
    switch (op) {
    case Kind::Const: return 0;
    case Kind::Var: case Kind::Out: case Kind::Grad: case Kind::Arg: case Kind::Param: return 1;
    case Kind::Add: case Kind::Sub: case Kind::Mul: case Kind::Div: case Kind::Neg: return 4;
    case Kind::Pow: return 3;
    default: return 2;
    }
}

/// A total order on expressions used to put commutative operands in one canonical order:
/// their prefix spellings compared token by token (kind, op, value), the first kCompareTokens
/// only, then the structural hash. Bounded work however large the DAGs; readable order for
/// small expressions.
constexpr int kCompareTokens = 64;

int compare(const Expr& a, const Expr& b) {
    if (a == b) return 0;
    std::vector<const ExprNode*> sa{a.get()}, sb{b.get()};
    for (int t = 0; t < kCompareTokens && !sa.empty() && !sb.empty(); ++t) {
        const ExprNode* x = sa.back();
        const ExprNode* y = sb.back();
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
    Expr run(const Expr& e) {
        postOrder(e, [&](const ExprNode& n) {
            if (memo_.count(&n)) return;
            std::vector<Expr> args;
            for (auto& a : n.args) args.push_back(memo_.at(a.get()));
            memo_[&n] = args.empty() ? n.shared_from_this() : rewrite(n.op, std::move(args));
            keep_.push_back(n.shared_from_this());
        });
        return memo_.at(e.get());
    }

private:
    std::unordered_map<const ExprNode*, Expr> memo_;
    std::vector<Expr> keep_; // keeps memo keys alive

    Expr num(double v) { return constant(v); }
    Expr mk(Kind op, std::vector<Expr> args) { return rewrite(op, std::move(args)); }

    // Every rule gives the same value as what it replaces for every input, NaN and +-Inf
    // included: a rule that drops an operand (a * 0 -> 0, a - a -> 0, a / a -> 1, 0 / a -> 0)
    // would turn a NaN or an Inf into a number. Products are flattened and their constants
    // gathered, which may round differently (as `reassoc` in the code generator), and a
    // zero's sign may change (0 + a -> a, 0 - a -> -a, -(a - b) -> b - a).
    Expr rewrite(Kind op, std::vector<Expr> a) {
        // Constant folding (NaN and infinities are left for run time to produce).
        bool allConst = true;
        for (auto& x : a) allConst = allConst && isConst(x);
        if (allConst) {
            double v = eval(make(op, a), 0);
            if (std::isfinite(v)) return num(v);
        }
        if (commutative(op) && compare(a[1], a[0]) < 0) std::swap(a[0], a[1]);
        switch (op) {
        case Kind::Add:
            if (isConst(a[0], 0)) return a[1];
            if (a[1]->op == Kind::Neg) return mk(Kind::Sub, {a[0], a[1]->args[0]});
            if (a[0]->op == Kind::Neg) return mk(Kind::Sub, {a[1], a[0]->args[0]});
            if (a[0] == a[1]) return mk(Kind::Mul, {num(2), a[0]}); // a + a is 2 * a exactly
            break;
        case Kind::Sub:
            if (isConst(a[1], 0)) return a[0];
            if (isConst(a[0], 0)) return mk(Kind::Neg, {a[1]});
            if (a[1]->op == Kind::Neg) return mk(Kind::Add, {a[0], a[1]->args[0]});
            break;
        case Kind::Mul: {
            // A product in one canonical form: flattened (up to kMaxFactors factors, so that
            // shared products do not multiply the work), its constants and signs folded into
            // one leading factor, the rest sorted, repeated factors as powers (x * x -> x ^ 2).
            constexpr size_t kMaxFactors = 64;
            std::vector<Expr> factors, work = {a[0], a[1]};
            double c = 1;
            while (!work.empty()) {
                Expr f = work.back();
                work.pop_back();
                if (f->op == Kind::Mul && factors.size() + work.size() < kMaxFactors)
                    work.insert(work.end(), f->args.begin(), f->args.end());
                else if (f->op == Kind::Neg) c = -c, work.push_back(f->args[0]);
                else if (isConst(f)) c *= f->value;
                else factors.push_back(f);
            }
            if (factors.empty()) return num(c);
            std::sort(factors.begin(), factors.end(), [](const Expr& x, const Expr& y) { return compare(x, y) < 0; });
            Expr prod;
            for (size_t i = 0; i < factors.size();) {
                size_t j = i + 1;
                while (j < factors.size() && factors[j] == factors[i]) ++j;
                Expr f = j - i == 1 ? factors[i] : mk(Kind::Pow, {factors[i], num(double(j - i))});
                prod = prod ? make(Kind::Mul, {prod, f}) : f;
                i = j;
            }
            if (c == -1) return mk(Kind::Neg, {prod});
            return c == 1 ? prod : make(Kind::Mul, {num(c), prod}); // 0 * prod stays: NaN at NaN
        }
        case Kind::Div:
            if (isConst(a[1], 1)) return a[0];
            if (a[0]->op == Kind::Neg) return mk(Kind::Neg, {mk(Kind::Div, {a[0]->args[0], a[1]})});
            if (isConst(a[1]) && a[1]->value != 0 && std::isfinite(1 / a[1]->value) &&
                std::fabs(a[1]->value) == std::exp2(std::round(std::log2(std::fabs(a[1]->value)))))
                return mk(Kind::Mul, {num(1 / a[1]->value), a[0]}); // exact for powers of two
            break;
        case Kind::Pow:
            if (isConst(a[1], 1)) return a[0];
            if (isConst(a[1], 0)) return num(1); // pow(a, 0) is 1 for every a, NaN included
            break;
        case Kind::Neg:
            if (a[0]->op == Kind::Neg) return a[0]->args[0];
            if (a[0]->op == Kind::Sub) return mk(Kind::Sub, {a[0]->args[1], a[0]->args[0]});
            break;
        case Kind::Select:
            if (a[1] == a[2]) return a[1];
            if (isConst(a[0])) return a[0]->value != 0 ? a[1] : a[2]; // NaN counts as true
            break;
        default: break;
        }
        return make(op, std::move(a));
    }
};

/// Rebuilds `e` bottom-up, each distinct node once: rule(node, its rebuilt operands).
template <typename F> Expr transform(const Expr& e, const F& rule) {
    std::unordered_map<const ExprNode*, Expr> done;
    postOrder(e, [&](const ExprNode& n) {
        std::vector<Expr> args;
        for (auto& a : n.args) args.push_back(done.at(a.get()));
        done[&n] = rule(n, std::move(args));
    });
    return done.at(e.get());
}

// Tangents: null stands for "does not depend on x", an exact zero that drops the terms it
// multiplies, as autograd never differentiates through constants.
Expr add(const Expr& a, const Expr& b) { return !a ? b : !b ? a : make(Kind::Add, {a, b}); }
Expr sub(const Expr& a, const Expr& b) { return !b ? a : !a ? make(Kind::Neg, {b}) : make(Kind::Sub, {a, b}); }
Expr mul(const Expr& a, const Expr& b) { return a && b ? make(Kind::Mul, {a, b}) : nullptr; }
Expr div(const Expr& a, const Expr& b) { return a ? make(Kind::Div, {a, b}) : nullptr; }
Expr orZero(const Expr& a) { return a ? a : constant(0); }

/// The tangent of e when x moves by `seed` (seed 1: d/dx; seed g: g * f'(x)), unsimplified.
/// Each distinct node is differentiated once.
Expr tangent(const Expr& root, const Expr& seed) {
    std::unordered_map<const ExprNode*, Expr> t;
    // min or max of operands a with tangents d0, d1 (null: zero): d0 where a[0] `first` a[1]
    // (it is the one chosen), d1 where a[0] `second` a[1], half of each on a tie, and both
    // where neither compares (NaN), as PyTorch 1.13's torch.minimum and torch.maximum.
    auto pick = [](const std::vector<Expr>& a, const Expr& d0, const Expr& d1, Kind first, Kind second) -> Expr {
        if (!d0 && !d1) return nullptr;
        const Expr both = add(d0, d1);
        return make(Kind::Select,
                    {make(first, {a[0], a[1]}), orZero(d0),
                     make(Kind::Select, {make(second, {a[0], a[1]}), orZero(d1),
                                         make(Kind::Select, {make(Kind::Eq, {a[0], a[1]}),
                                                             make(Kind::Mul, {constant(0.5), both}), both})})});
    };
    postOrder(root, [&](const ExprNode& n) {
        auto c = [](double v) { return constant(v); };
        auto m = [](Kind op, std::vector<Expr> a) { return make(op, std::move(a)); };
        const std::vector<Expr>& a = n.args;
        auto d = [&](size_t i) { return t.at(a[i].get()); };
        Expr e = n.shared_from_this();
        Expr r;
        switch (n.op) {
        case Kind::Const: case Kind::Param: break;
        case Kind::Var: r = seed; break;
        case Kind::Out: case Kind::Arg: case Kind::Grad:
            internal_assert(false, "derivative of an expression in y, g or a kernel operand");
            break;
        case Kind::Add: r = add(d(0), d(1)); break;
        case Kind::Sub: r = sub(d(0), d(1)); break;
        case Kind::Neg: r = d(0) ? m(Kind::Neg, {d(0)}) : nullptr; break;
        case Kind::Mul: r = add(mul(d(0), a[1]), mul(a[0], d(1))); break;
        case Kind::Div: // u'/v - v' (u/v)/v, as PyTorch's div backward
            r = sub(div(d(0), a[1]), mul(d(1), m(Kind::Div, {e, a[1]})));
            break;
        case Kind::Pow: // v u^(v-1) u' + u^v log(u) v'
            r = add(mul(m(Kind::Mul, {a[1], m(Kind::Pow, {a[0], m(Kind::Sub, {a[1], c(1)})})}), d(0)),
                    mul(m(Kind::Mul, {e, m(Kind::Log, {a[0]})}), d(1)));
            break;
        case Kind::Lt: case Kind::Le: case Kind::Gt: case Kind::Ge: case Kind::Eq: case Kind::Ne: break;
        case Kind::Select: // the gradient goes to the taken arm only
            if (d(1) || d(2)) r = m(Kind::Select, {a[0], orZero(d(1)), orZero(d(2))});
            break;
        case Kind::Exp: r = mul(e, d(0)); break;
        case Kind::Log: r = div(d(0), a[0]); break;
        case Kind::Sqrt: r = div(d(0), m(Kind::Mul, {c(2), e})); break;
        case Kind::Abs: // sign(u) u', with sign(0) = sign(NaN) = 0 as PyTorch
            r = mul(m(Kind::Select, {m(Kind::Gt, {a[0], c(0)}), c(1),
                                   m(Kind::Select, {m(Kind::Lt, {a[0], c(0)}), c(-1), c(0)})}),
                    d(0));
            break;
        case Kind::Tanh: r = mul(m(Kind::Sub, {c(1), m(Kind::Pow, {e, c(2)})}), d(0)); break;
        case Kind::Sigmoid: r = mul(m(Kind::Mul, {e, m(Kind::Sub, {c(1), e})}), d(0)); break;
        case Kind::Softplus: r = mul(m(Kind::Sigmoid, {a[0]}), d(0)); break;
        case Kind::Erf: // 2/sqrt(pi) exp(-u^2) u'
            r = mul(m(Kind::Mul, {c(2 / std::sqrt(M_PI)), m(Kind::Exp, {m(Kind::Neg, {m(Kind::Pow, {a[0], c(2)})})})}), d(0));
            break;
        case Kind::Min: // as torch.minimum's: to the smaller operand, half to each on a tie,
            r = pick(a, d(0), d(1), Kind::Lt, Kind::Gt); // the whole to both when one is NaN
            break;
        case Kind::Max: // as torch.maximum's
            r = pick(a, d(0), d(1), Kind::Gt, Kind::Lt);
            break;
        }
        t[&n] = r;
    });
    return orZero(t.at(root.get()));
}

} // namespace

Expr simplify(const Expr& e) { return Simplifier().run(e); }

Expr derivative(const Expr& e) { return simplify(tangent(e, constant(1))); }

Expr vjp(const Expr& e) { return simplify(tangent(e, grad())); }

Expr derivativeByOutput(const Expr& f, const Expr& df) {
    if (!usesVar(f)) return nullptr;
    Expr g = simplify(f);
    if (!usesVar(g) || g->op == Kind::Var) return nullptr; // constant or identity: nothing to gain
    // f = select(x CMP k, a, b), one arm x and the other a constant on its own side of k
    // (relu: select(x <= 0, 0, x)): x CMP k and y CMP k agree for every x, NaN included
    // (both false), so the comparison reads y.
    const ExprNode* compare = nullptr;
    Expr compareByOutput;
    if (g->op == Kind::Select) {
        const Expr &p = g->args[0], &a = g->args[1], &b = g->args[2];
        const bool ordered = p->op == Kind::Lt || p->op == Kind::Le || p->op == Kind::Gt || p->op == Kind::Ge;
        if (ordered && p->args[0]->op == Kind::Var && p->args[1]->op == Kind::Const) {
            // The constant's side of k, in double and in float (the float code compares the
            // rounded constants: 0.1 and 0.09999999999 are one float).
            auto side = [&](auto v, auto k) {
                return p->op == Kind::Lt ? v < k : p->op == Kind::Le ? v <= k : p->op == Kind::Gt ? v > k : v >= k;
            };
            const double k = p->args[1]->value;
            auto holds = [&](double v) { return side(v, k) && side(float(v), float(k)); };
            auto fails = [&](double v) { return !side(v, k) && !side(float(v), float(k)); };
            const bool constTrueArm = a->op == Kind::Const && b->op == Kind::Var && holds(a->value);
            const bool constFalseArm = b->op == Kind::Const && a->op == Kind::Var && fails(b->value);
            if (constTrueArm || constFalseArm) compare = p.get(), compareByOutput = make(p->op, {out(), p->args[1]});
        }
    }
    // Every occurrence of f (one node: expressions are hash-consed) becomes y.
    Expr r = simplify(transform(df, [&](const ExprNode& n, std::vector<Expr> args) -> Expr {
        if (&n == g.get()) return out();
        if (&n == compare) return compareByOutput;
        if (args.empty()) return n.shared_from_this();
        return make(n.op, std::move(args));
    }));
    return usesVar(r) ? nullptr : r;
}

} // namespace gradc::scalar
