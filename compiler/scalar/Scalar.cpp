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

const OpInfo& info(Op op) { return kOps[size_t(op)]; }

bool lookupFunction(std::string_view name, Op* op) {
    static const Op callable[] = {Op::Select, Op::Exp,      Op::Log, Op::Sqrt, Op::Abs, Op::Tanh,
                                  Op::Sigmoid, Op::Softplus, Op::Erf, Op::Min,  Op::Max};
    for (Op o : callable)
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
    size_t operator()(const Node* n) const {
        uint64_t h = mix(uint64_t(n->op), bits(n->value));
        for (auto& a : n->args) h = mix(h, uint64_t(reinterpret_cast<uintptr_t>(a.get())));
        return size_t(h);
    }
};
struct ShallowEq {
    bool operator()(const Node* a, const Node* b) const {
        if (a->op != b->op || bits(a->value) != bits(b->value) || a->args.size() != b->args.size()) return false;
        for (size_t i = 0; i < a->args.size(); ++i)
            if (a->args[i] != b->args[i]) return false;
        return true;
    }
};

struct Table {
    std::mutex mutex;
    std::unordered_set<const Node*, ShallowHash, ShallowEq> nodes;
};
Table& table() {
    static Table* t = new Table; // never destroyed: nodes may outlive static destructors
    return *t;
}

// Releasing a node releases its operands; a chain 100,000 deep would recurse as deep. The
// outermost release on a thread drains the operands iteratively instead.
thread_local std::vector<std::vector<E>>* tGraveyard = nullptr;

// A thread that holds the table's lock (in intern) may drop the last reference to a node: a
// duplicate's operands, or a reference that weak_ptr::lock took while another thread let go
// of its own. release() takes the lock, so such nodes wait here until the lock is let go.
thread_local bool tHoldsTable = false;
thread_local std::vector<Node*> tDeferred;

void release(Node* n) {
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
    std::vector<E> args = std::move(n->args);
    delete n;
    if (tGraveyard) {
        if (!args.empty()) tGraveyard->push_back(std::move(args));
        return;
    }
    std::vector<std::vector<E>> pending;
    tGraveyard = &pending;
    pending.push_back(std::move(args));
    while (!pending.empty()) {
        std::vector<E> a = std::move(pending.back());
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

E intern(Op op, double value, std::vector<E> args) {
    auto* n = new Node;
    n->op = op;
    n->value = value;
    n->args = std::move(args);
    uint64_t h = mix(uint64_t(op) + 1, op == Op::Const || op == Op::Arg || op == Op::Param ? bits(value) : 0);
    uint32_t depth = 0;
    n->leaves = n->args.empty() ? leafBit(op) : 0;
    for (auto& a : n->args) h = mix(h, a->hash), depth = std::max(depth, a->depth), n->leaves |= a->leaves;
    n->hash = h;
    n->depth = depth == UINT32_MAX ? depth : depth + 1;
    E result;
    {
        Table& t = table();
        std::lock_guard<std::mutex> lock(t.mutex);
        HoldingTable holding; // destroyed before the lock is let go, after everything below
        auto it = t.nodes.find(n);
        E existing = it != t.nodes.end() ? (*it)->weak_from_this().lock() : nullptr;
        if (existing) {
            std::vector<E> operands = std::move(n->args);
            delete n;
            result = std::move(existing);
        } else {
            if (it != t.nodes.end()) t.nodes.erase(it); // being released: this node takes its place
            result = E(n, release);
            t.nodes.insert(n);
        }
    }
    while (!tDeferred.empty()) {
        Node* d = tDeferred.back();
        tDeferred.pop_back();
        release(d);
    }
    return result;
}

} // namespace

E constant(double v) { return intern(Op::Const, v, {}); }
E var() { return intern(Op::Var, 0, {}); }
E out() { return intern(Op::Out, 0, {}); }
E grad() { return intern(Op::Grad, 0, {}); }
E arg(int index) { return intern(Op::Arg, double(index), {}); }
E param(int index) { return intern(Op::Param, double(index), {}); }

E make(Op op, std::vector<E> args) {
    internal_assert(int(args.size()) == info(op).arity, info(op).spelling);
    return intern(op, 0, std::move(args));
}

void postOrder(const E& root, const std::function<void(const Node&)>& visit) {
    std::unordered_set<const Node*> seen;
    std::vector<std::pair<const Node*, size_t>> stack; // node, next operand to look at
    seen.insert(root.get());
    stack.push_back({root.get(), 0});
    while (!stack.empty()) {
        auto& [n, next] = stack.back();
        if (next < n->args.size()) {
            const Node* a = n->args[next++].get();
            if (seen.insert(a).second) stack.push_back({a, 0});
            continue;
        }
        const Node* done = n;
        stack.pop_back();
        visit(*done);
    }
}

size_t dagSize(const E& e) {
    size_t n = 0;
    postOrder(e, [&](const Node&) { ++n; });
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

static double apply(Op op, double value, double a, double b, double c, double x, double y, double g,
                    const double* args = nullptr) {
    switch (op) {
    case Op::Const: return value;
    case Op::Var: return x;
    case Op::Out: return y;
    case Op::Grad: return g;
    case Op::Arg:
        internal_assert(args != nullptr, "a kernel operand cannot be evaluated alone");
        return args[size_t(value)];
    case Op::Param: internal_assert(false, "an unbound activation parameter"); return 0;
    case Op::Add: return a + b;
    case Op::Sub: return a - b;
    case Op::Mul: return a * b;
    case Op::Div: return a / b;
    case Op::Pow: return b == 2 ? a * a : std::pow(a, b); // x ^ 2 is x * x in compiled code too
    case Op::Neg: return -a;
    case Op::Lt: return a < b;
    case Op::Le: return a <= b;
    case Op::Gt: return a > b;
    case Op::Ge: return a >= b;
    case Op::Eq: return a == b;
    case Op::Ne: return a != b;
    case Op::Select: return a != 0 ? b : c; // a NaN condition counts as true, as in compiled code
    case Op::Exp: return std::exp(a);
    case Op::Log: return std::log(a);
    case Op::Sqrt: return std::sqrt(a);
    case Op::Abs: return std::fabs(a);
    case Op::Tanh: return std::tanh(a);
    case Op::Sigmoid: return stableSigmoid(a);
    case Op::Softplus: // log(1 + exp(v)) without overflow
        return std::max(a, 0.0) + std::log1p(std::exp(-std::fabs(a)));
    case Op::Erf: return std::erf(a);
    case Op::Min: return minNaN(a, b);
    case Op::Max: return maxNaN(a, b);
    }
    internal_assert(false, "unknown scalar op");
    return 0;
}

Evaluator::Evaluator(const E& e) {
    std::unordered_map<const Node*, uint32_t> reg;
    postOrder(e, [&](const Node& n) {
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

double eval(const E& e, double x, double y, double g) { return Evaluator(e)(x, y, g); }

/// Rebuilds `e` with each leaf replaced by `leaf(e)` (nullptr: keep it); shares what is
/// unchanged, and rebuilds each distinct node once.
template <typename F> static E replaceLeaves(const E& e, const F& leaf, size_t* visited = nullptr) {
    std::unordered_map<const Node*, E> done;
    postOrder(e, [&](const Node& n) {
        if (visited) ++*visited;
        E self = n.shared_from_this();
        if (n.args.empty()) {
            E r = leaf(self);
            done[&n] = r ? r : self;
            return;
        }
        std::vector<E> args;
        bool same = true;
        for (auto& a : n.args) {
            args.push_back(done.at(a.get()));
            same = same && args.back() == a;
        }
        done[&n] = same ? self : make(n.op, std::move(args));
    });
    return done.at(e.get());
}

E substitute(const E& e, const E& value, size_t* visited) {
    if (value->op == Op::Var || !usesVar(e)) return e;
    return replaceLeaves(e, [&](const E& l) { return l->op == Op::Var ? value : nullptr; }, visited);
}

E substituteOut(const E& e, const E& value) {
    return replaceLeaves(e, [&](const E& l) { return l->op == Op::Out ? value : nullptr; });
}

E substituteGrad(const E& e, const E& value) {
    return replaceLeaves(e, [&](const E& l) { return l->op == Op::Grad ? value : nullptr; });
}

E substituteArgs(const E& e, const std::vector<E>& values) {
    return replaceLeaves(e, [&](const E& l) {
        return l->op == Op::Arg ? values.at(size_t(l->value)) : nullptr;
    });
}

E substituteParams(const E& e, const std::vector<E>& values, size_t* visited) {
    if (!(e->leaves & leafBit(Op::Param))) return e;
    return replaceLeaves(e, [&](const E& l) {
        return l->op == Op::Param ? values.at(size_t(l->value)) : nullptr;
    }, visited);
}

bool usesVar(const E& e) { return e->leaves & leafBit(Op::Var); }
bool usesOut(const E& e) { return e->leaves & leafBit(Op::Out); }

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

namespace {

/// Prints without recursion: a stack of pieces still to write, each a node or literal text.
class Printer {
public:
    explicit Printer(const E& root) {
        // Tree sizes (saturating) and use counts decide whether to name shared nodes.
        std::unordered_map<const Node*, uint64_t> treeSize;
        std::vector<const Node*> order;
        postOrder(root, [&](const Node& n) {
            uint64_t size = 1;
            for (auto& a : n.args) size = std::min<uint64_t>(size + treeSize.at(a.get()), uint64_t(1) << 40);
            treeSize[&n] = size;
            for (auto& a : n.args) ++uses_[a.get()];
            order.push_back(&n);
        });
        if (treeSize.at(root.get()) <= kInlineLimit) return;
        for (const Node* n : order)
            if (n != root.get() && uses_[n] > 1 && treeSize.at(n) >= 4) names_.emplace(n, names_.size() + 1);
        for (const Node* n : order)
            if (names_.count(n)) bound_.push_back(n);
    }

    std::string run(const E& root) {
        std::string body = expand(root.get());
        if (bound_.empty()) return body;
        body += "  where ";
        for (size_t i = 0; i < bound_.size(); ++i)
            body += fmt::format("{}t{} = {}", i ? "; " : "", names_.at(bound_[i]), expand(bound_[i]));
        return body;
    }

private:
    static constexpr uint64_t kInlineLimit = 400; // nodes of the tree printed without names
    std::unordered_map<const Node*, size_t> uses_;
    std::unordered_map<const Node*, size_t> names_;
    std::vector<const Node*> bound_;

    struct Piece {
        const Node* node; // null: text
        std::string text;
    };

    int prec(const Node* n) const {
        if (names_.count(n)) return 6;
        if (n->op == Op::Const && n->value < 0) return 4; // prints like a negation
        return precedence(n->op);
    }

    /// The text of `top`, naming the bound nodes below it.
    std::string expand(const Node* top) {
        std::string out;
        std::vector<Piece> stack{{top, {}}};
        while (!stack.empty()) {
            Piece piece = std::move(stack.back());
            stack.pop_back();
            const Node* e = piece.node;
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
                const Node* a = e->args[i].get();
                int q = prec(a);
                // Left-associative operators need parentheses on the right at equal precedence
                // (a - (b - c)); '^' is right-associative and the other way round.
                bool paren = q < p || (q == p && (e->op == Op::Pow ? !rightOperand : rightOperand) &&
                                       e->op != Op::Add && e->op != Op::Mul);
                if (q == p && p == 1) paren = true; // comparisons do not chain
                if (paren) parts.push_back({nullptr, "("});
                parts.push_back({a, {}});
                if (paren) parts.push_back({nullptr, ")"});
            };
            switch (e->op) {
            case Op::Const: out += printNumber(e->value); continue;
            case Op::Var: out += "x"; continue;
            case Op::Out: out += "y"; continue;
            case Op::Grad: out += "g"; continue;
            case Op::Arg: out += fmt::format("a{}", int(e->value)); continue;
            case Op::Param: out += fmt::format("p{}", int(e->value)); continue;
            case Op::Neg: parts.push_back({nullptr, "-"}), sub(0, true); break;
            case Op::Add: case Op::Sub: case Op::Mul: case Op::Div: case Op::Pow:
            case Op::Lt: case Op::Le: case Op::Gt: case Op::Ge: case Op::Eq: case Op::Ne:
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

std::string print(const E& e) { return Printer(e).run(e); }

} // namespace gradc::scalar
