// Scalar.cpp — construction, evaluation and printing of scalar expressions.
#include "Scalar.h"

#include "Source.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

namespace gradc::scalar {

static const OpInfo kOps[] = {
#define X(name, spelling, arity) {spelling, arity},
    GRADC_SCALAR_OPS(X)
#undef X
};

const OpInfo& info(Kind op) { return kOps[size_t(op)]; }

bool lookupFunction(std::string_view name, Kind* op) {
    static const Kind callable[] = {Kind::Select, Kind::Exp,      Kind::Log, Kind::Sqrt, Kind::Abs, Kind::Tanh,
                                  Kind::Sigmoid, Kind::Softplus, Kind::Erf, Kind::Min,  Kind::Max};
    for (Kind o : callable)
        if (name == info(o).spelling) return *op = o, true;
    return false;
}

// ---- Hash-consing. The table holds every live node once, keyed by (op, value bits, operand
// nodes); a node leaves it when its last reference goes. Nodes are built and released from
// any thread (Sessions compile concurrently), so the table has a lock.
namespace {

uint64_t bits(double v) {
    uint64_t b;
    std::memcpy(&b, &v, sizeof b);
    return b;
}

uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

struct ShallowHash {
    size_t operator()(const ExprNode* n) const {
        uint64_t h = mix(uint64_t(n->op), bits(n->value));
        for (auto& a : n->args) h = mix(h, uint64_t(reinterpret_cast<uintptr_t>(a.get())));
        return size_t(h);
    }
};
struct ShallowEq {
    bool operator()(const ExprNode* a, const ExprNode* b) const {
        if (a->op != b->op || bits(a->value) != bits(b->value) || a->args.size() != b->args.size()) return false;
        for (size_t i = 0; i < a->args.size(); ++i)
            if (a->args[i] != b->args[i]) return false;
        return true;
    }
};

struct Table {
    std::mutex mutex;
    std::unordered_set<const ExprNode*, ShallowHash, ShallowEq> nodes;
};
Table& table() {
    static Table* t = new Table; // never destroyed: nodes may outlive static destructors
    return *t;
}

// Releasing a node releases its operands; a chain 100,000 deep would recurse as deep. The
// outermost release on a thread drains the operands iteratively instead.
thread_local std::vector<std::vector<Expr>>* tGraveyard = nullptr;

// A thread that holds the table's lock (in intern) may drop the last reference to a node: a
// duplicate's operands, or a reference that weak_ptr::lock took while another thread let go
// of its own. release() takes the lock, so such nodes wait here until the lock is let go.
thread_local bool tHoldsTable = false;
thread_local std::vector<ExprNode*> tDeferred;

void release(ExprNode* n) {
    if (tHoldsTable) {
        tDeferred.push_back(n);
        return;
    }
    {
        Table& t = table();
        std::lock_guard<std::mutex> lock(t.mutex);
        auto it = t.nodes.find(n);
        if (it != t.nodes.end() && *it == n) t.nodes.erase(it);
    }
    std::vector<Expr> args = std::move(n->args);
    delete n;
    if (tGraveyard) {
        if (!args.empty()) tGraveyard->push_back(std::move(args));
        return;
    }
    std::vector<std::vector<Expr>> pending;
    tGraveyard = &pending;
    pending.push_back(std::move(args));
    while (!pending.empty()) {
        std::vector<Expr> a = std::move(pending.back());
        pending.pop_back();
        a.clear(); // may push more operands onto `pending`
    }
    tGraveyard = nullptr;
}

/// Marks the table's lock as held by this thread for as long as it lives.
struct HoldingTable {
    HoldingTable() { tHoldsTable = true; }
    ~HoldingTable() { tHoldsTable = false; }
};

Expr intern(Kind op, double value, std::vector<Expr> args) {
    auto* n = new ExprNode;
    n->op = op;
    n->value = value;
    n->args = std::move(args);
    uint64_t h = mix(uint64_t(op) + 1, op == Kind::Const || op == Kind::Arg || op == Kind::Param ? bits(value) : 0);
    uint32_t depth = 0;
    n->leaves = n->args.empty() ? leafBit(op) : 0;
    for (auto& a : n->args) h = mix(h, a->hash), depth = std::max(depth, a->depth), n->leaves |= a->leaves;
    n->hash = h;
    n->depth = depth == UINT32_MAX ? depth : depth + 1;
    Expr result;
    {
        Table& t = table();
        std::lock_guard<std::mutex> lock(t.mutex);
        HoldingTable holding; // destroyed before the lock is let go, after everything below
        auto it = t.nodes.find(n);
        Expr existing = it != t.nodes.end() ? (*it)->weak_from_this().lock() : nullptr;
        if (existing) {
            std::vector<Expr> operands = std::move(n->args);
            delete n;
            result = std::move(existing);
        } else {
            if (it != t.nodes.end()) t.nodes.erase(it); // being released: this node takes its place
            result = Expr(n, release);
            t.nodes.insert(n);
        }
    }
    while (!tDeferred.empty()) {
        ExprNode* d = tDeferred.back();
        tDeferred.pop_back();
        release(d);
    }
    return result;
}

} // namespace

Expr constant(double v) { return intern(Kind::Const, v, {}); }
Expr var() { return intern(Kind::Var, 0, {}); }
Expr out() { return intern(Kind::Out, 0, {}); }
Expr grad() { return intern(Kind::Grad, 0, {}); }
Expr arg(int index) { return intern(Kind::Arg, double(index), {}); }
Expr param(int index) { return intern(Kind::Param, double(index), {}); }

Expr make(Kind op, std::vector<Expr> args) {
    internal_assert(int(args.size()) == info(op).arity, info(op).spelling);
    return intern(op, 0, std::move(args));
}

void postOrder(const Expr& root, const std::function<void(const ExprNode&)>& visit) {
    std::unordered_set<const ExprNode*> seen;
    std::vector<std::pair<const ExprNode*, size_t>> stack; // node, next operand to look at
    seen.insert(root.get());
    stack.push_back({root.get(), 0});
    while (!stack.empty()) {
        auto& [n, next] = stack.back();
        if (next < n->args.size()) {
            const ExprNode* a = n->args[next++].get();
            if (seen.insert(a).second) stack.push_back({a, 0});
            continue;
        }
        const ExprNode* done = n;
        stack.pop_back();
        visit(*done);
    }
}

size_t dagSize(const Expr& e) {
    size_t n = 0;
    postOrder(e, [&](const ExprNode&) { ++n; });
    return n;
}

/// sigmoid without overflow: exp of a non-positive number only.
static double stableSigmoid(double v) {
    if (v >= 0) return 1 / (1 + std::exp(-v));
    double e = std::exp(v);
    return e / (1 + e);
}

/// max and min as PyTorch's maximum and minimum: NaN if either is NaN.
static double maxNaN(double a, double b) { return std::isnan(a) || std::isnan(b) ? a + b : std::fmax(a, b); }
static double minNaN(double a, double b) { return std::isnan(a) || std::isnan(b) ? a + b : std::fmin(a, b); }

static double apply(Kind op, double value, double a, double b, double c, double x, double y, double g,
                    const double* args = nullptr) {
    switch (op) {
    case Kind::Const: return value;
    case Kind::Var: return x;
    case Kind::Out: return y;
    case Kind::Grad: return g;
    case Kind::Arg:
        internal_assert(args != nullptr, "a kernel operand cannot be evaluated alone");
        return args[size_t(value)];
    case Kind::Param: internal_assert(false, "an unbound activation parameter"); return 0;
    case Kind::Add: return a + b;
    case Kind::Sub: return a - b;
    case Kind::Mul: return a * b;
    case Kind::Div: return a / b;
    case Kind::Pow: return b == 2 ? a * a : std::pow(a, b); // x ^ 2 is x * x in compiled code too
    case Kind::Neg: return -a;
    case Kind::Lt: return a < b;
    case Kind::Le: return a <= b;
    case Kind::Gt: return a > b;
    case Kind::Ge: return a >= b;
    case Kind::Eq: return a == b;
    case Kind::Ne: return a != b;
    case Kind::Select: return a != 0 ? b : c; // a NaN condition counts as true, as in compiled code
    case Kind::Exp: return std::exp(a);
    case Kind::Log: return std::log(a);
    case Kind::Sqrt: return std::sqrt(a);
    case Kind::Abs: return std::fabs(a);
    case Kind::Tanh: return std::tanh(a);
    case Kind::Sigmoid: return stableSigmoid(a);
    case Kind::Softplus: // log(1 + exp(v)) without overflow
        return std::max(a, 0.0) + std::log1p(std::exp(-std::fabs(a)));
    case Kind::Erf: return std::erf(a);
    case Kind::Min: return minNaN(a, b);
    case Kind::Max: return maxNaN(a, b);
    }
    internal_assert(false, "unknown scalar op");
    return 0;
}

Evaluator::Evaluator(const Expr& e) {
    std::unordered_map<const ExprNode*, uint32_t> reg;
    postOrder(e, [&](const ExprNode& n) {
        Step s{n.op, n.value, {0, 0, 0}};
        for (size_t i = 0; i < n.args.size(); ++i) s.a[i] = reg.at(n.args[i].get());
        reg[&n] = uint32_t(steps_.size());
        steps_.push_back(s);
    });
    regs_.resize(steps_.size());
}

double Evaluator::operator()(double x, double y, double g) {
    double* r = regs_.data();
    for (size_t i = 0; i < steps_.size(); ++i) {
        const Step& s = steps_[i];
        r[i] = apply(s.op, s.value, r[s.a[0]], r[s.a[1]], r[s.a[2]], x, y, g);
    }
    return r[steps_.size() - 1];
}

double Evaluator::withArgs(const double* args) {
    double* r = regs_.data();
    for (size_t i = 0; i < steps_.size(); ++i) {
        const Step& s = steps_[i];
        r[i] = apply(s.op, s.value, r[s.a[0]], r[s.a[1]], r[s.a[2]], 0, 0, 1, args);
    }
    return r[steps_.size() - 1];
}

double eval(const Expr& e, double x, double y, double g) { return Evaluator(e)(x, y, g); }

/// Rebuilds `e` with each leaf replaced by `leaf(e)` (nullptr: keep it); shares what is
/// unchanged, and rebuilds each distinct node once.
template <typename F>
static Expr replaceLeaves(const Expr& e, const F& leaf, size_t* visited = nullptr, size_t limit = SIZE_MAX) {
    std::unordered_map<const ExprNode*, Expr> done;
    postOrder(e, [&](const ExprNode& n) {
        if (visited && ++*visited > limit) throw WorkLimit{};
        Expr self = n.shared_from_this();
        if (n.args.empty()) {
            Expr r = leaf(self);
            done[&n] = r ? r : self;
            return;
        }
        std::vector<Expr> args;
        bool same = true;
        for (auto& a : n.args) {
            args.push_back(done.at(a.get()));
            same = same && args.back() == a;
        }
        done[&n] = same ? self : make(n.op, std::move(args));
    });
    return done.at(e.get());
}

Expr substitute(const Expr& e, const Expr& value, size_t* visited, size_t limit) {
    if (value->op == Kind::Var || !usesVar(e)) return e;
    return replaceLeaves(e, [&](const Expr& l) { return l->op == Kind::Var ? value : nullptr; }, visited, limit);
}

Expr substituteOut(const Expr& e, const Expr& value) {
    return replaceLeaves(e, [&](const Expr& l) { return l->op == Kind::Out ? value : nullptr; });
}

Expr substituteGrad(const Expr& e, const Expr& value) {
    return replaceLeaves(e, [&](const Expr& l) { return l->op == Kind::Grad ? value : nullptr; });
}

Expr substituteArgs(const Expr& e, const std::vector<Expr>& values) {
    return replaceLeaves(e, [&](const Expr& l) {
        return l->op == Kind::Arg ? values.at(size_t(l->value)) : nullptr;
    });
}

Expr substituteParams(const Expr& e, const std::vector<Expr>& values, size_t* visited, size_t limit) {
    if (!(e->leaves & leafBit(Kind::Param))) return e;
    return replaceLeaves(e, [&](const Expr& l) {
        return l->op == Kind::Param ? values.at(size_t(l->value)) : nullptr;
    }, visited, limit);
}

bool usesVar(const Expr& e) { return e->leaves & leafBit(Kind::Var); }
bool usesOut(const Expr& e) { return e->leaves & leafBit(Kind::Out); }

// Binding strength for printing: higher binds tighter.
static int precedence(Kind op) {
    switch (op) {
    case Kind::Lt: case Kind::Le: case Kind::Gt: case Kind::Ge: case Kind::Eq: case Kind::Ne: return 1;
    case Kind::Add: case Kind::Sub: return 2;
    case Kind::Mul: case Kind::Div: return 3;
    case Kind::Neg: return 4;
    case Kind::Pow: return 5;
    default: return 6;
    }
}

static std::string printNumber(double v) {
    if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", int64_t(v));
    return fmt::format("{}", v);
}

namespace {

/// Prints without recursion: a stack of pieces still to write, each a node or literal text.
class Printer {
public:
    explicit Printer(const Expr& root) {
        // Tree sizes (saturating) and use counts decide whether to name shared nodes.
        std::unordered_map<const ExprNode*, uint64_t> treeSize;
        std::vector<const ExprNode*> order;
        postOrder(root, [&](const ExprNode& n) {
            uint64_t size = 1;
            for (auto& a : n.args) size = std::min<uint64_t>(size + treeSize.at(a.get()), uint64_t(1) << 40);
            treeSize[&n] = size;
            for (auto& a : n.args) ++uses_[a.get()];
            order.push_back(&n);
        });
        if (treeSize.at(root.get()) <= kInlineLimit) return;
        for (const ExprNode* n : order)
            if (n != root.get() && uses_[n] > 1 && treeSize.at(n) >= 4) names_.emplace(n, names_.size() + 1);
        for (const ExprNode* n : order)
            if (names_.count(n)) bound_.push_back(n);
    }

    std::string run(const Expr& root) {
        std::string body = expand(root.get());
        if (bound_.empty()) return body;
        body += "  where ";
        for (size_t i = 0; i < bound_.size(); ++i)
            body += fmt::format("{}t{} = {}", i ? "; " : "", names_.at(bound_[i]), expand(bound_[i]));
        return body;
    }

private:
    static constexpr uint64_t kInlineLimit = 400; // nodes of the tree printed without names
    std::unordered_map<const ExprNode*, size_t> uses_;
    std::unordered_map<const ExprNode*, size_t> names_;
    std::vector<const ExprNode*> bound_;

    struct Piece {
        const ExprNode* node; // null: text
        std::string text;
    };

    int prec(const ExprNode* n) const {
        if (names_.count(n)) return 6;
        if (n->op == Kind::Const && n->value < 0) return 4; // prints like a negation
        return precedence(n->op);
    }

    /// The text of `top`, naming the bound nodes below it.
    std::string expand(const ExprNode* top) {
        std::string out;
        std::vector<Piece> stack{{top, {}}};
        while (!stack.empty()) {
            Piece piece = std::move(stack.back());
            stack.pop_back();
            const ExprNode* e = piece.node;
            if (!e) {
                out += piece.text;
                continue;
            }
            if (e != top && names_.count(e)) {
                out += fmt::format("t{}", names_.at(e));
                continue;
            }
            std::vector<Piece> parts; // in writing order
            const int p = precedence(e->op);
            auto sub = [&](size_t i, bool rightOperand) {
                const ExprNode* a = e->args[i].get();
                int q = prec(a);
                // Left-associative operators need parentheses on the right at equal precedence
                // (a - (b - c)); '^' is right-associative and the other way round.
                bool paren = q < p || (q == p && (e->op == Kind::Pow ? !rightOperand : rightOperand) &&
                                       e->op != Kind::Add && e->op != Kind::Mul);
                if (q == p && p == 1) paren = true; // comparisons do not chain
                if (paren) parts.push_back({nullptr, "("});
                parts.push_back({a, {}});
                if (paren) parts.push_back({nullptr, ")"});
            };
            switch (e->op) {
            case Kind::Const: out += printNumber(e->value); continue;
            case Kind::Var: out += "x"; continue;
            case Kind::Out: out += "y"; continue;
            case Kind::Grad: out += "g"; continue;
            case Kind::Arg: out += fmt::format("a{}", int(e->value)); continue;
            case Kind::Param: out += fmt::format("p{}", int(e->value)); continue;
            case Kind::Neg: parts.push_back({nullptr, "-"}), sub(0, true); break;
            case Kind::Add: case Kind::Sub: case Kind::Mul: case Kind::Div: case Kind::Pow:
            case Kind::Lt: case Kind::Le: case Kind::Gt: case Kind::Ge: case Kind::Eq: case Kind::Ne:
                sub(0, false);
                parts.push_back({nullptr, fmt::format(" {} ", info(e->op).spelling)});
                sub(1, true);
                break;
            default:
                parts.push_back({nullptr, std::string(info(e->op).spelling) + "("});
                for (size_t i = 0; i < e->args.size(); ++i) {
                    if (i) parts.push_back({nullptr, ", "});
                    parts.push_back({e->args[i].get(), {}});
                }
                parts.push_back({nullptr, ")"});
            }
            for (size_t i = parts.size(); i-- > 0;) stack.push_back(std::move(parts[i]));
        }
        return out;
    }
};

} // namespace

std::string print(const Expr& e) { return Printer(e).run(e); }

} // namespace gradc::scalar
