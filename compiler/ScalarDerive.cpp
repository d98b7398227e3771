// ScalarDerive.cpp — symbolic derivative and simplifier of scalar expressions.
#include "Scalar.h"

#include "Source.h"

#include <cmath>
#include <algorithm>
#include <map>
#include <tuple>

namespace gradc::scalar {

bool same(const E& a, const E& b) {
    if (a == b) return true;
    if (a->op != b->op || a->args.size() != b->args.size()) return false;
    if (a->op == Op::Const || a->op == Op::Arg)
        return a->value == b->value || (std::isnan(a->value) && std::isnan(b->value));
    for (size_t i = 0; i < a->args.size(); ++i)
        if (!same(a->args[i], b->args[i])) return false;
    return true;
}

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
    case Op::Var: case Op::Out: case Op::Arg: return 1;
    case Op::Add: case Op::Sub: case Op::Mul: case Op::Div: case Op::Neg: return 4;
    case Op::Pow: return 3;
    default: return 2;
    }
}

/// A total order on expressions used to put commutative operands in one canonical order.
int compare(const E& a, const E& b) {
    if (a == b) return 0;
    if (rank(a->op) != rank(b->op)) return rank(a->op) < rank(b->op) ? -1 : 1;
    if (a->op != b->op) return int(a->op) < int(b->op) ? -1 : 1;
    if (a->op == Op::Const || a->op == Op::Arg) return a->value < b->value ? -1 : a->value > b->value ? 1 : 0;
    for (size_t i = 0; i < a->args.size(); ++i)
        if (int c = compare(a->args[i], b->args[i])) return c;
    return 0;
}

/// Hash-consing: one node per distinct (op, value, operand nodes).
class Interner {
public:
    E get(Op op, double value, std::vector<E> args) {
        Key key{op, value, {}};
        for (auto& a : args) key.args.push_back(a.get());
        auto it = table_.find(key);
        if (it != table_.end()) return it->second;
        E e = op == Op::Const ? constant(value)
              : op == Op::Var ? var()
              : op == Op::Out ? out()
              : op == Op::Arg ? arg(int(value))
                              : make(op, std::move(args));
        table_.emplace(std::move(key), e);
        return e;
    }

private:
    struct Key {
        Op op;
        double value;
        std::vector<const Node*> args;
        bool operator<(const Key& o) const {
            return std::tie(op, value, args) < std::tie(o.op, o.value, o.args);
        }
    };
    std::map<Key, E> table_;
};

class Simplifier {
public:
    E run(const E& e) {
        auto it = memo_.find(e.get());
        if (it != memo_.end()) return it->second;
        std::vector<E> args;
        for (auto& a : e->args) args.push_back(run(a));
        E r = rewrite(e->op, e->value, std::move(args));
        memo_[e.get()] = r;
        keep_.push_back(e);
        return r;
    }

private:
    Interner in_;
    std::map<const Node*, E> memo_;
    std::vector<E> keep_; // keeps memo keys alive

    E num(double v) { return in_.get(Op::Const, v, {}); }
    E mk(Op op, std::vector<E> args) { return rewrite(op, 0, std::move(args)); }

    E rewrite(Op op, double value, std::vector<E> a) {
        if (op == Op::Const || op == Op::Var || op == Op::Out || op == Op::Arg) return in_.get(op, value, {});
        // Constant folding (NaN and infinities are left for run time to produce).
        bool allConst = !a.empty();
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
            if (same(a[0], a[1])) return mk(Op::Mul, {num(2), a[0]});
            break;
        case Op::Sub:
            if (isConst(a[1], 0)) return a[0];
            if (isConst(a[0], 0)) return mk(Op::Neg, {a[1]});
            if (same(a[0], a[1])) return num(0);
            if (a[1]->op == Op::Neg) return mk(Op::Add, {a[0], a[1]->args[0]});
            break;
        case Op::Mul: {
            // A product in one canonical form: flattened, its constants and signs folded into
            // one leading factor, the rest sorted, repeated factors as powers (x * x -> x ^ 2).
            std::vector<E> factors, work = {a[0], a[1]};
            double c = 1;
            while (!work.empty()) {
                E f = work.back();
                work.pop_back();
                if (f->op == Op::Mul) work.insert(work.end(), f->args.begin(), f->args.end());
                else if (f->op == Op::Neg) c = -c, work.push_back(f->args[0]);
                else if (isConst(f)) c *= f->value;
                else factors.push_back(f);
            }
            if (c == 0 || factors.empty()) return num(c);
            std::sort(factors.begin(), factors.end(), [](const E& x, const E& y) { return compare(x, y) < 0; });
            E prod;
            for (size_t i = 0; i < factors.size();) {
                size_t j = i + 1;
                while (j < factors.size() && same(factors[j], factors[i])) ++j;
                E f = j - i == 1 ? factors[i] : mk(Op::Pow, {factors[i], num(double(j - i))});
                prod = prod ? in_.get(Op::Mul, 0, {prod, f}) : f;
                i = j;
            }
            if (c == -1) return mk(Op::Neg, {prod});
            return c == 1 ? prod : in_.get(Op::Mul, 0, {num(c), prod});
        }
        case Op::Div:
            if (isConst(a[1], 1)) return a[0];
            if (isConst(a[0], 0)) return num(0);
            if (same(a[0], a[1])) return num(1);
            if (a[0]->op == Op::Neg) return mk(Op::Neg, {mk(Op::Div, {a[0]->args[0], a[1]})});
            if (isConst(a[1]) && a[1]->value != 0 && std::isfinite(1 / a[1]->value) &&
                std::fabs(a[1]->value) == std::exp2(std::round(std::log2(std::fabs(a[1]->value)))))
                return mk(Op::Mul, {num(1 / a[1]->value), a[0]}); // exact for powers of two
            break;
        case Op::Pow:
            if (isConst(a[1], 1)) return a[0];
            if (isConst(a[1], 0)) return num(1);
            break;
        case Op::Neg:
            if (a[0]->op == Op::Neg) return a[0]->args[0];
            if (a[0]->op == Op::Sub) return mk(Op::Sub, {a[0]->args[1], a[0]->args[0]});
            break;
        case Op::Select:
            if (same(a[1], a[2])) return a[1];
            if (isConst(a[0])) return a[0]->value != 0 ? a[1] : a[2];
            break;
        default: break;
        }
        return in_.get(op, 0, std::move(a));
    }
};

/// d/dx, unsimplified (the caller simplifies once at the end).
E d(const E& e) {
    auto c = [](double v) { return constant(v); };
    auto m = [](Op op, std::vector<E> a) { return make(op, std::move(a)); };
    const std::vector<E>& a = e->args;
    switch (e->op) {
    case Op::Const: return c(0);
    case Op::Var: return c(1);
    case Op::Out: case Op::Arg: internal_assert(false, "derivative of an expression in y or a kernel operand");
    case Op::Add: return m(Op::Add, {d(a[0]), d(a[1])});
    case Op::Sub: return m(Op::Sub, {d(a[0]), d(a[1])});
    case Op::Neg: return m(Op::Neg, {d(a[0])});
    case Op::Mul: return m(Op::Add, {m(Op::Mul, {d(a[0]), a[1]}), m(Op::Mul, {a[0], d(a[1])})});
    case Op::Div: // (u'v - uv') / v^2
        return m(Op::Div, {m(Op::Sub, {m(Op::Mul, {d(a[0]), a[1]}), m(Op::Mul, {a[0], d(a[1])})}),
                           m(Op::Pow, {a[1], c(2)})});
    case Op::Pow:
        if (!usesVar(a[1])) // n u^(n-1) u'
            return m(Op::Mul, {m(Op::Mul, {a[1], m(Op::Pow, {a[0], m(Op::Sub, {a[1], c(1)})})}), d(a[0])});
        // u^v (v' log u + v u'/u)
        return m(Op::Mul, {e, m(Op::Add, {m(Op::Mul, {d(a[1]), m(Op::Log, {a[0]})}),
                                          m(Op::Div, {m(Op::Mul, {a[1], d(a[0])}), a[0]})})});
    case Op::Lt: case Op::Le: case Op::Gt: case Op::Ge: case Op::Eq: case Op::Ne: return c(0);
    case Op::Select: return m(Op::Select, {a[0], d(a[1]), d(a[2])});
    case Op::Exp: return m(Op::Mul, {e, d(a[0])});
    case Op::Log: return m(Op::Div, {d(a[0]), a[0]});
    case Op::Sqrt: return m(Op::Div, {d(a[0]), m(Op::Mul, {c(2), e})});
    case Op::Abs: // sign(u) u', with sign(0) = 0 as PyTorch
        return m(Op::Mul, {m(Op::Select, {m(Op::Gt, {a[0], c(0)}), c(1),
                                          m(Op::Select, {m(Op::Lt, {a[0], c(0)}), c(-1), c(0)})}),
                           d(a[0])});
    case Op::Tanh: return m(Op::Mul, {m(Op::Sub, {c(1), m(Op::Pow, {e, c(2)})}), d(a[0])});
    case Op::Sigmoid: return m(Op::Mul, {m(Op::Mul, {e, m(Op::Sub, {c(1), e})}), d(a[0])});
    case Op::Softplus: return m(Op::Mul, {m(Op::Sigmoid, {a[0]}), d(a[0])});
    case Op::Erf: // 2/sqrt(pi) exp(-u^2) u'
        return m(Op::Mul, {m(Op::Mul, {c(2 / std::sqrt(M_PI)),
                                       m(Op::Exp, {m(Op::Neg, {m(Op::Pow, {a[0], c(2)})})})}),
                           d(a[0])});
    case Op::Min: return m(Op::Select, {m(Op::Le, {a[0], a[1]}), d(a[0]), d(a[1])});
    case Op::Max: return m(Op::Select, {m(Op::Ge, {a[0], a[1]}), d(a[0]), d(a[1])});
    }
    internal_assert(false, "unknown scalar op");
}

/// Replaces every occurrence of `f` (structurally) by y.
E replaceByOut(const E& e, const E& f) {
    if (same(e, f)) return out();
    if (e->args.empty()) return e;
    std::vector<E> args;
    for (auto& a : e->args) args.push_back(replaceByOut(a, f));
    return make(e->op, std::move(args));
}

} // namespace

E simplify(const E& e) { return Simplifier().run(e); }

E derivative(const E& e) { return simplify(d(e)); }

E derivativeByOutput(const E& f, const E& df) {
    if (!usesVar(f)) return nullptr;
    E g = simplify(f);
    if (!usesVar(g) || g->op == Op::Var) return nullptr; // constant or identity: nothing to gain
    E r = simplify(replaceByOut(df, g));
    return usesVar(r) ? nullptr : r;
}

} // namespace gradc::scalar
