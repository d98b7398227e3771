// Fusion.cpp — Graph to kernel program: dead-code elimination, common subexpressions, and
// fusion of element-wise chains into the kernels that produce or consume them.
#include "Kernels.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <optional>
#include <tuple>
#include <unordered_map>

namespace gradc {

std::vector<int32_t> Kernel::reads() const {
    std::vector<int32_t> r = in;
    if (a >= 0) r.push_back(a);
    if (b >= 0) r.push_back(b);
    for (auto& x : args)
        if (x.buffer >= 0) r.push_back(x.buffer);
    return r;
}

std::vector<int32_t> Kernel::writes() const {
    std::vector<int32_t> w;
    for (size_t i = 0; i < out.size(); ++i)
        if (writesOut(i)) w.push_back(out[i]);
    for (auto& s : stores)
        if (s.buffer >= 0) w.push_back(s.buffer); // -1: a pooled conv's epilogue, kept in its buffer
    for (auto& s : columnSums) w.push_back(s.buffer);
    for (auto& s : rowSums) w.push_back(s.buffer);
    return w;
}

namespace {

bool elementwise(Op op) { return describe(op).has(trait::ElementWise); }

/// A loop kernel's domain [outer, rows, cols] as a split of a row-major shape: dimensions
/// [0, i) are the outer one, [i, j) the rows, [j, n) the columns.
struct Domain {
    size_t i = 0, j = 0;
    int64_t outer = 1, rows = 1, cols = 1;
};

Domain splitAt(const Shape& s, size_t i, size_t j) {
    Domain d{i, j};
    for (size_t k = 0; k < s.size(); ++k) (k < i ? d.outer : k < j ? d.rows : d.cols) *= s[k];
    return d;
}

/// The 2-D domain of every kernel before outer extents: [prod(leading dimensions), last].
Domain matrixDomain(const Shape& s) { return splitAt(s, 0, s.empty() ? 0 : s.size() - 1); }

/// The domain of an element-wise kernel over `s`: images [B,C,H,W] as [B, C, H W] (a
/// per-channel operand is read per row, and the rows are whole images' planes, long enough
/// to vectorise), every other tensor as the 2-D [prod(leading dimensions), last].
Domain defaultDomain(const Shape& s) { return s.size() == 4 ? splitAt(s, 1, 2) : matrixDomain(s); }

/// How an operand of shape `s`, broadcast against `result` (numpy's rule: right-aligned,
/// each dimension equal or 1), is read on domain `d`: the element (the result's shape), per
/// column (it varies along the columns' dimensions only) or per row (along the rows' only);
/// none when it varies along dimensions of more than one part of the domain.
std::optional<Access::Mode> placement(const Shape& s, const Shape& result, const Domain& d) {
    const size_t n = result.size();
    if (s.size() > n) return std::nullopt;
    auto dim = [&](size_t k) { return k < n - s.size() ? int64_t(1) : s[k - (n - s.size())]; };
    auto fits = [&](size_t from, size_t to) { // varies along [from, to) only
        for (size_t k = 0; k < n; ++k)
            if (dim(k) != (k >= from && k < to ? result[k] : 1) && result[k] != 1) return false;
        return true;
    };
    // Per column first: [N] against [1,N] is read as it was before outer extents.
    if (fits(d.j, n)) return Access::Mode::Col;
    if (fits(d.i, d.j)) return Access::Mode::Row;
    if (fits(0, n)) return Access::Mode::Elem;
    return std::nullopt;
}

bool matmul(Op op) { return describe(op).has(trait::MatMul); }

/// The CSE key: op, canonical operands and every attribute the op declares (Ops.def).
struct CseKey {
    std::vector<ValueId> ins;
    const Node* node;
};
struct CseHash {
    size_t operator()(const CseKey& k) const {
        size_t h = hashAttrs(*k.node);
        for (ValueId v : k.ins) h = h * 1000003u + v;
        return h;
    }
};
struct CseEqual {
    bool operator()(const CseKey& a, const CseKey& b) const {
        // The shape too: a reshape's result shape is its own, not its operand's.
        return a.ins == b.ins && sameAttrs(*a.node, *b.node) && a.node->shape == b.node->shape;
    }
};

class Builder {
public:
    Builder(const Graph& g, const std::string& name, const std::vector<Output>& outputs, const Layout& layout,
            const GemmBlocking& blocking)
        : g_(g), outputs_(outputs), layout_(layout), blocking_(blocking) {
        p_.name = name;
    }

    KernelProgram run() {
        canonicalise();
        decideMaterialised();
        createBuffers();
        for (ValueId v = 0; v < g_.nodes.size(); ++v)
            if (live_[v] && canon_[v] == v && materialised_[v]) emit(v);
        for (auto& [v, o] : copies_) copy(addOutputBuffer(o, g_[v].shape), buffer_[v], g_[v].shape);
        mergeLoops();
        dropDeadStores();
        fuseEpilogues();
        fusePoolGradients();
        storePoolPositions();
        fusePoolEpilogues();
        elideCopies();
        return std::move(p_);
    }

private:
    const Graph& g_;
    std::vector<Output> outputs_;
    const Layout& layout_;
    const GemmBlocking& blocking_; // which convolutions run direct
    KernelProgram p_;
    std::vector<ValueId> canon_;      // CSE: each value's representative
    std::vector<bool> live_;          // DCE: reaches a requested output
    std::vector<int> uses_;
    std::vector<bool> materialised_;  // has a buffer (else inlined into its one consumer)
    std::vector<int32_t> buffer_;
    std::vector<bool> isOutput_;
    std::vector<std::pair<ValueId, Output>> copies_;
    std::map<std::pair<ValueId, Shape>, int32_t> expansions_; // broadcast operands expanded by a copy

    const Node& node(ValueId v) const { return g_[v]; }
    ValueId in(ValueId v, size_t i) const { return canon_[g_[v].in[i]]; }

    void canonicalise() {
        const size_t n = g_.nodes.size();
        canon_.resize(n);
        std::unordered_map<CseKey, ValueId, CseHash, CseEqual> seen;
        for (ValueId v = 0; v < n; ++v) {
            const Node& nd = g_[v];
            canon_[v] = v;
            if (nd.in.empty()) continue; // leaves are distinct tensors
            if (nd.op == Op::Map && nd.expr == scalar::arg(0) && g_[nd.in[0]].shape == nd.shape) {
                canon_[v] = canon_[nd.in[0]]; // identity: the same value under another name
                continue;
            }
            std::vector<ValueId> ins;
            for (ValueId i : nd.in) ins.push_back(canon_[i]);
            auto [it, fresh] = seen.emplace(CseKey{std::move(ins), &nd}, v);
            if (!fresh) canon_[v] = it->second;
        }
        live_.assign(n, false);
        uses_.assign(n, 0);
        isOutput_.assign(n, false);
        std::vector<ValueId> work;
        for (auto& o : outputs_) {
            ValueId v = canon_[o.value];
            isOutput_[v] = true;
            ++uses_[v];
            work.push_back(v);
        }
        while (!work.empty()) {
            ValueId v = work.back();
            work.pop_back();
            if (live_[v]) continue;
            live_[v] = true;
            for (size_t i = 0; i < g_[v].in.size(); ++i) work.push_back(in(v, i));
        }
        for (ValueId v = 0; v < n; ++v)
            if (live_[v] && canon_[v] == v)
                for (size_t i = 0; i < g_[v].in.size(); ++i) ++uses_[in(v, i)];
    }

    void decideMaterialised() {
        const size_t n = g_.nodes.size();
        std::vector<ValueId> consumer(n, ValueId(-1));
        for (ValueId v = 0; v < n; ++v)
            if (live_[v] && canon_[v] == v)
                for (size_t i = 0; i < g_[v].in.size(); ++i) consumer[in(v, i)] = v;
        materialised_.assign(n, true);
        for (ValueId v = 0; v < n; ++v) {
            const Node& nd = g_[v];
            if (!live_[v] || canon_[v] != v || isOutput_[v] || uses_[v] != 1) continue;
            if (!(elementwise(nd.op) || matmul(nd.op))) continue;
            ValueId c = consumer[v];
            if (elementwise(g_[c].op) && g_[c].shape == nd.shape) materialised_[v] = false;
        }
        // One matrix product per kernel: a second one in the same fused tree gets a buffer.
        for (ValueId v = 0; v < n; ++v) {
            if (!live_[v] || canon_[v] != v || !materialised_[v] || !elementwise(g_[v].op)) continue;
            int products = 0;
            std::vector<ValueId> work = {v};
            while (!work.empty()) {
                ValueId u = work.back();
                work.pop_back();
                if (u != v && materialised_[u]) continue;
                if (matmul(g_[u].op) && ++products > 1) {
                    materialised_[u] = true;
                    continue;
                }
                for (size_t i = 0; i < g_[u].in.size(); ++i) work.push_back(in(u, i));
            }
        }
    }

    int32_t addBuffer(Buffer::Kind kind, std::string name, Shape shape, bool index = false) {
        p_.buffers.push_back({kind, std::move(name), std::move(shape), index, 0});
        return int32_t(p_.buffers.size() - 1);
    }

    /// A training-mode batchnorm whose input the entry point keeps also writes its batch mean
    /// and unbiased variance where the layout places them: the running statistics' update.
    void batchStatistics(ValueId v, Kernel& k) {
        for (auto& o : outputs_) {
            if (o.role != OutputRole::NormInput || canon_[o.value] != in(v, 0)) continue;
            for (auto [role, label] : {std::pair{Role::NormMean, "mean:"}, std::pair{Role::NormVar, "var:"}}) {
                const LayoutEntry& e = layout_.at(role, o.name);
                k.out.push_back(addBuffer(Buffer::Kind::Activation, label + o.name, e.shape));
                p_.buffers.back().offset = e.offset;
            }
            return;
        }
    }

    /// A buffer for an output the entry point returns, where the layout places it.
    int32_t addOutputBuffer(const Output& o, const Shape& shape) {
        const Role role = roleOf(o.role);
        const LayoutEntry* e = layout_.find(role, o.name);
        internal_assert(e, "no place in the layout for output " + outputLabel(o));
        Buffer::Kind kind = role == Role::Loss     ? Buffer::Kind::Loss
                            : role == Role::Logits ? Buffer::Kind::Logits
                            : role == Role::Gradient ? Buffer::Kind::Grad
                                                     : Buffer::Kind::Activation;
        int32_t id = addBuffer(kind, outputLabel(o), kind == Buffer::Kind::Loss ? Shape{1} : shape);
        p_.buffers.back().offset = e->offset;
        return id;
    }

    void createBuffers() {
        buffer_.assign(g_.nodes.size(), -1);
        for (auto& o : outputs_) {
            ValueId v = canon_[o.value];
            if (buffer_[v] >= 0 || g_[v].op == Op::Input || g_[v].op == Op::Param) {
                copies_.emplace_back(v, o); // an output that is another value's buffer
                continue;
            }
            buffer_[v] = addOutputBuffer(o, g_[v].shape);
        }
        for (ValueId v = 0; v < g_.nodes.size(); ++v) {
            const Node& nd = g_[v];
            if (!live_[v] || canon_[v] != v || !materialised_[v] || buffer_[v] >= 0) continue;
            if (nd.op == Op::Param) {
                buffer_[v] = addBuffer(Buffer::Kind::Param, nd.name, nd.shape);
                p_.buffers.back().offset = layout_.state(nd.name).offset;
            } else if (nd.op == Op::Input) {
                bool x = nd.name == "x";
                buffer_[v] = addBuffer(x ? Buffer::Kind::Input : Buffer::Kind::Target, nd.name,
                                       nd.shape, nd.type == DType::Index);
            } else {
                buffer_[v] = addBuffer(Buffer::Kind::Temp, fmt::format("t{}", v), nd.shape);
            }
        }
    }

    // ---- Loop kernels: the expression of a fused element-wise tree.
    struct LoopBuild {
        Kernel k;
        Domain domain;
        void setDomain(const Domain& d) {
            domain = d;
            k.outer = d.outer, k.rows = d.rows, k.cols = d.cols;
        }
        std::map<std::pair<int, int32_t>, int> argIndex;
        scalar::Expr load(Access::Mode mode, int32_t buf) {
            auto key = std::make_pair(int(mode), buf);
            auto it = argIndex.find(key);
            if (it != argIndex.end()) return scalar::arg(it->second);
            k.args.push_back({mode, buf});
            int i = int(k.args.size() - 1);
            argIndex[key] = i;
            return scalar::arg(i);
        }
    };

    scalar::Expr exprOf(ValueId v, ValueId root, LoopBuild& lb) {
        const Node& nd = g_[v];
        if (v != root && materialised_[v]) return lb.load(Access::Mode::Elem, buffer_[v]);
        using scalar::Kind;
        switch (nd.op) {
        case gradc::Op::MatMulNT:
        case gradc::Op::MatMulNN:
        case gradc::Op::MatMulTN: {
            Kernel& k = lb.k;
            internal_assert(k.a < 0, "two products in one kernel");
            internal_assert(k.outer == 1, "a matrix product on a domain with an outer extent");
            const Shape& s0 = g_[in(v, 0)].shape;
            k.a = buffer_[in(v, 0)], k.b = buffer_[in(v, 1)];
            k.transA = nd.op == gradc::Op::MatMulTN;
            k.transB = nd.op == gradc::Op::MatMulNT;
            k.depth = nd.op == gradc::Op::MatMulTN ? domain(s0).first : s0.back();
            return lb.load(Access::Mode::Acc, -1);
        }
        case gradc::Op::Map: { // operands of the result's shape fuse; a broadcast one is read per row or column
            std::vector<scalar::Expr> vals;
            for (size_t i = 0; i < nd.in.size(); ++i) {
                const Shape& s = g_[in(v, i)].shape;
                if (s == nd.shape) {
                    vals.push_back(exprOf(in(v, i), root, lb));
                } else if (std::optional<Access::Mode> mode = placement(s, nd.shape, lb.domain)) {
                    vals.push_back(lb.load(*mode, buffer_[in(v, i)]));
                } else { // a copy kernel (emitted before this one) expands it to the result's shape
                    vals.push_back(lb.load(Access::Mode::Elem, expanded(in(v, i), nd.shape)));
                }
            }
            return scalar::substituteArgs(nd.expr, vals);
        }
        case gradc::Op::Zeros: return scalar::constant(0);
        default: internal_assert(false, fmt::format("op '{}' cannot be fused", describe(nd.op).spelling));
        }
        return nullptr;
    }

    /// The [rows, cols] domain of a row-major tensor: [prod(leading dimensions), last].
    static std::pair<int64_t, int64_t> domain(const Shape& s) {
        if (s.size() >= 2) return {elementCount(s) / s.back(), s.back()};
        if (s.size() == 1) return {1, s[0]};
        return {1, 1};
    }

    /// The operands a fused tree rooted at `root` reads broadcast (their shapes differ from
    /// the root's), and whether the tree holds a matrix product: the walk of exprOf.
    void broadcastOperands(ValueId v, ValueId root, std::vector<Shape>& out, bool& product) const {
        const Node& nd = g_[v];
        if (v != root && materialised_[v]) return;
        if (matmul(nd.op)) product = true;
        if (nd.op != Op::Map) return;
        for (size_t i = 0; i < nd.in.size(); ++i) {
            if (g_[in(v, i)].shape == nd.shape) broadcastOperands(in(v, i), root, out, product);
            else out.push_back(g_[in(v, i)].shape);
        }
    }

    /// The domain of the loop kernel of the fused tree rooted at `v`: the default one when its
    /// broadcast operands are each read per row, per column or whole there (every model
    /// without images: its code is unchanged), else the split of the result's shape that
    /// places the most of them (then the widest columns); the others are expanded by copies.
    /// A matrix product keeps the 2-D domain.
    Domain chooseDomain(ValueId v) const {
        const Shape& shape = g_[v].shape;
        std::vector<Shape> operands;
        bool product = false;
        broadcastOperands(v, v, operands, product);
        auto placed = [&](const Domain& d) {
            size_t count = 0;
            for (const Shape& s : operands) count += placement(s, shape, d).has_value();
            return count;
        };
        if (product) return matrixDomain(shape);
        const Domain flat = defaultDomain(shape);
        if (placed(flat) == operands.size()) return flat;
        Domain best = flat;
        auto key = [&](const Domain& d) { return std::make_tuple(placed(d), d.cols, d.rows); };
        for (size_t i = 0; i <= shape.size(); ++i)
            for (size_t j = i; j <= shape.size(); ++j)
                if (const Domain d = splitAt(shape, i, j); key(d) > key(best)) best = d;
        return placed(best) > placed(flat) ? best : flat;
    }

    /// A buffer of `shape` holding `v` broadcast to it: a copy kernel on a domain where `v`
    /// is read per row or per column (one per value and shape).
    int32_t expanded(ValueId v, const Shape& shape) {
        auto key = std::make_pair(v, shape);
        if (auto it = expansions_.find(key); it != expansions_.end()) return it->second;
        const Shape& s = g_[v].shape;
        std::optional<Domain> found;
        for (size_t i = 0; i <= shape.size() && !found; ++i)
            for (size_t j = i; j <= shape.size() && !found; ++j)
                if (placement(s, shape, splitAt(shape, i, j))) found = splitAt(shape, i, j);
        internal_assert(found.has_value(), fmt::format("map broadcasts {} to {}: the operand varies along more than "
                                                       "two separate groups of dimensions, which no loop kernel reads",
                                                       shapeString(s), shapeString(shape)));
        const int32_t out = addBuffer(Buffer::Kind::Temp, fmt::format("t{}b", v), shape);
        LoopBuild lb;
        lb.setDomain(*found);
        lb.k.stores.push_back({out, lb.load(*placement(s, shape, *found), buffer_[v])});
        p_.kernels.push_back(std::move(lb.k));
        expansions_.emplace(key, out);
        return out;
    }

    /// sum_to: the operand g summed over the dimensions where the target (right-aligned) is
    /// 1, as one loop kernel: column sums when the kept dimensions are the last ones
    /// ([B,H,W] -> [W]), else row sums over a domain whose rows are the kept ones
    /// ([B,O,OH,OW] -> [O,1,1]: outer B, rows O, columns OH OW).
    void sumTo(ValueId v) {
        const Shape& g = g_[in(v, 0)].shape;
        const Shape& t = g_[v].shape;
        const size_t n = g.size(), lead = n - t.size();
        auto kept = [&](size_t k) { return g[k] != 1 && k >= lead && t[k - lead] != 1; };
        auto summed = [&](size_t k) { return g[k] != 1 && !kept(k); };
        auto none = [&](size_t from, size_t to, auto&& what) {
            for (size_t k = from; k < to; ++k)
                if (what(k)) return false;
            return true;
        };
        LoopBuild lb;
        for (size_t j = 0; j <= n; ++j) // column sums: summed before j, kept from j
            if (none(0, j, kept) && none(j, n, summed)) {
                lb.setDomain(splitAt(g, 0, j));
                lb.k.columnSums.push_back({buffer_[v], lb.load(Access::Mode::Elem, buffer_[in(v, 0)])});
                p_.kernels.push_back(std::move(lb.k));
                return;
            }
        for (size_t i = 0; i <= n; ++i) // row sums: kept in [i, j) only
            for (size_t j = i; j <= n; ++j)
                if (none(0, i, kept) && none(i, j, summed) && none(j, n, kept)) {
                    lb.setDomain(splitAt(g, i, j));
                    lb.k.rowSums.push_back({buffer_[v], lb.load(Access::Mode::Elem, buffer_[in(v, 0)])});
                    p_.kernels.push_back(std::move(lb.k));
                    return;
                }
        internal_assert(false, fmt::format("sum_to {} -> {}: the kept dimensions are not one group, which no loop "
                                           "kernel sums in one pass", shapeString(g), shapeString(t)));
    }

    /// A loop kernel that copies the row-major elements of `src` (of `shape`) to `dst`.
    void copy(int32_t dst, int32_t src, const Shape& shape) {
        LoopBuild lb;
        lb.setDomain(defaultDomain(shape));
        lb.k.stores.push_back({dst, lb.load(Access::Mode::Elem, src)});
        p_.kernels.push_back(std::move(lb.k));
    }

    /// The scan ops: one kernel per sibling family (scan + scan_state; the four reverse ops)
    /// and operand list, whose out has one slot per sibling (-1 until, or unless, it is live),
    /// as a loss and its gradient share one kernel. Domain [T, B, H].
    void scanKernel(ValueId v) {
        const Node& nd = g_[v];
        const bool reverse = nd.op != Op::Scan && nd.op != Op::ScanState;
        const Op family = reverse ? Op::ScanGrad : Op::Scan;
        const size_t slot = size_t(nd.op) - size_t(family);
        std::vector<int32_t> ins;
        for (size_t i = 0; i < nd.in.size(); ++i) ins.push_back(buffer_[in(v, i)]);
        for (Kernel& k : p_.kernels)
            if (k.kind == Kernel::Kind::Op && k.op == family && k.in == ins && k.attrs.cell == nd.cell &&
                k.attrs.expr == nd.expr && k.out[slot] < 0) {
                k.out[slot] = buffer_[v];
                return;
            }
        Kernel k;
        k.kind = Kernel::Kind::Op, k.op = family, k.attrs = nd, k.in = ins;
        k.out.assign(reverse ? 4 : 2, -1);
        k.out[slot] = buffer_[v];
        const Shape& seq = g_[in(v, 0)].shape; // xp [B,T,GH] or h [B,T,H]
        k.outer = seq[1], k.rows = seq[0], k.cols = g_[in(v, reverse ? 3 : 1)].shape[1];
        p_.kernels.push_back(std::move(k));
    }

    void emit(ValueId v) {
        const Node& nd = g_[v];
        auto buf = [&](size_t i) { return buffer_[in(v, i)]; };
        if (isScanFamily(nd.op)) {
            scanKernel(v);
            return;
        }
        if (nd.op == Op::LastStep || nd.op == Op::LastStepGrad) { // domain [T, B, K]
            Kernel k;
            k.kind = Kernel::Kind::Op, k.op = nd.op, k.attrs = nd, k.in = {buf(0)}, k.out = {buffer_[v]};
            const Shape& seq = nd.op == Op::LastStep ? g_[in(v, 0)].shape : nd.shape;
            k.outer = seq[1], k.rows = seq[0], k.cols = seq[2];
            p_.kernels.push_back(std::move(k));
            return;
        }
        if (hasOwnKernel(nd.op)) { // rows of the last dimension's length
            Kernel k;
            k.kind = Kernel::Kind::Op, k.op = nd.op, k.attrs = nd;
            for (size_t i = 0; i < nd.in.size(); ++i) k.in.push_back(buf(i));
            k.out = {buffer_[v]};
            if (nd.op == Op::BatchNorm) batchStatistics(v, k);
            const Shape& x = g_[in(v, 0)].shape;
            std::tie(k.rows, k.cols) = domain(x);
            if (perChannel(nd.op, x)) { // [B, C, the rest]
                k.outer = x[0], k.rows = x[1], k.cols = elementCount(x) / (x[0] * x[1]);
            }
            p_.kernels.push_back(std::move(k));
            return;
        }
        switch (nd.op) {
        case Op::Input:
        case Op::Param: return;
        case Op::SumRows: { // over dimension 0: the domain [d0, the rest]
            LoopBuild lb;
            const Shape& s = g_[in(v, 0)].shape;
            lb.k.rows = s[0], lb.k.cols = elementCount(s) / s[0];
            lb.k.columnSums.push_back({buffer_[v], lb.load(Access::Mode::Elem, buf(0))});
            p_.kernels.push_back(std::move(lb.k));
            return;
        }
        case Op::CrossEntropy:
        case Op::CrossEntropyGrad:
        case Op::BCEWithLogits:
        case Op::BCEWithLogitsGrad:
        case Op::MSE:
        case Op::MSEGrad: {
            Kernel::Kind kind = nd.op == Op::CrossEntropy || nd.op == Op::CrossEntropyGrad
                                    ? Kernel::Kind::SoftmaxCrossEntropy
                                : nd.op == Op::BCEWithLogits || nd.op == Op::BCEWithLogitsGrad
                                    ? Kernel::Kind::BCEWithLogits
                                    : Kernel::Kind::MSE;
            bool grad = nd.op == Op::CrossEntropyGrad || nd.op == Op::BCEWithLogitsGrad || nd.op == Op::MSEGrad;
            std::vector<int32_t> ins = {buf(0), buf(1)};
            // The loss and its gradient read the same rows: one kernel computes both.
            for (Kernel& k : p_.kernels)
                if (k.kind == kind && k.in == ins && k.out[grad ? 1 : 0] < 0) {
                    k.out[grad ? 1 : 0] = buffer_[v];
                    return;
                }
            Kernel k;
            k.kind = kind, k.in = ins, k.out = {-1, -1};
            std::tie(k.rows, k.cols) = domain(g_[in(v, 0)].shape);
            k.out[grad ? 1 : 0] = buffer_[v];
            p_.kernels.push_back(std::move(k));
            return;
        }
        case Op::SumTo: sumTo(v); return;
        case Op::Reshape: // a copy of the row-major elements (the kernels have no aliases)
            copy(buffer_[v], buf(0), nd.shape);
            return;
        default: {
            LoopBuild lb;
            lb.setDomain(chooseDomain(v));
            scalar::Expr e = scalar::simplify(exprOf(v, v, lb));
            lb.k.stores.push_back({buffer_[v], e});
            p_.kernels.push_back(std::move(lb.k));
            return;
        }
        }
    }

    /// Folds a loop kernel into the loop kernel before it when both run over the same
    /// domain and the second reads, of what the first writes, only element-wise values the
    /// first stores: those reads become the first kernel's expressions.
    /// Merges each loop kernel into the loop before it when it can join it. A loop that only
    /// sums (a bias's gradient) may also join an earlier one past kernels it does not depend
    /// on: the sum of what a pooling gradient also reads joins the loop that wrote it, and
    /// moving sums, whose results are small, keeps the live ranges of large buffers as they were.
    void mergeLoops() {
        std::vector<Kernel> out;
        for (Kernel& k2 : p_.kernels) {
            const bool sumsOnly = k2.stores.empty();
            bool merged = false;
            for (size_t j = out.size(); j-- > 0 && !merged;) {
                if (canMerge(out[j], k2)) {
                    merge(out[j], k2);
                    merged = true;
                } else if (!sumsOnly || dependsOn(k2, out[j])) {
                    break;
                }
            }
            if (!merged) out.push_back(std::move(k2));
        }
        p_.kernels = std::move(out);
    }

    /// k2 cannot run before k1: it reads what k1 writes, or writes what k1 reads or writes.
    static bool dependsOn(const Kernel& k2, const Kernel& k1) {
        const std::vector<int32_t> r1 = k1.reads(), w1 = k1.writes(), r2 = k2.reads(), w2 = k2.writes();
        auto meets = [](const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
            return std::find_first_of(a.begin(), a.end(), b.begin(), b.end()) != a.end();
        };
        return meets(r2, w1) || meets(w2, r1) || meets(w2, w1);
    }

    bool canMerge(const Kernel& k1, const Kernel& k2) const {
        if (k1.kind != Kernel::Kind::Loop || k2.kind != Kernel::Kind::Loop || k2.a >= 0) return false;
        if (k1.rows != k2.rows || k1.cols != k2.cols || k1.outer != k2.outer) return false;
        if (k1.a >= 0 && !k2.rowSums.empty()) return false; // a product's epilogue has no row sums
        std::vector<int32_t> w1 = k1.writes();
        auto written = [&](int32_t b) { return std::find(w1.begin(), w1.end(), b) != w1.end(); };
        for (auto& acc : k2.args) {
            if (acc.buffer < 0 || !written(acc.buffer)) continue;
            bool stored = false;
            for (auto& s : k1.stores) stored = stored || s.buffer == acc.buffer;
            if (acc.mode != Access::Mode::Elem || !stored) return false;
        }
        for (int32_t b : k2.writes())
            for (int32_t r : k1.reads())
                if (b == r) return false;
        return true;
    }

    void merge(Kernel& k1, Kernel& k2) {
        std::vector<scalar::Expr> values;
        for (auto& acc : k2.args) {
            scalar::Expr e;
            for (auto& s : k1.stores)
                if (acc.mode == Access::Mode::Elem && s.buffer == acc.buffer) e = s.expr;
            if (!e) {
                int idx = -1;
                for (size_t i = 0; i < k1.args.size(); ++i)
                    if (k1.args[i].mode == acc.mode && k1.args[i].buffer == acc.buffer) idx = int(i);
                if (idx < 0) k1.args.push_back(acc), idx = int(k1.args.size() - 1);
                e = scalar::arg(idx);
            }
            values.push_back(e);
        }
        for (auto& s : k2.stores) k1.stores.push_back({s.buffer, scalar::simplify(scalar::substituteArgs(s.expr, values))});
        for (auto& s : k2.columnSums)
            k1.columnSums.push_back({s.buffer, scalar::simplify(scalar::substituteArgs(s.expr, values))});
        for (auto& s : k2.rowSums)
            k1.rowSums.push_back({s.buffer, scalar::simplify(scalar::substituteArgs(s.expr, values))});
    }

    /// Folds into a conv2d kernel the loop kernel over its result [B, O, OH OW] that first
    /// reads it, element-wise (the bias and activation after it): the conv moves down to the
    /// loop kernel's place (the kernels between neither read its result nor write what it
    /// reads), and the loop's expressions become its epilogue (Kernel::hasEpilogue), which
    /// also stores the result when a later kernel reads it or the entry point returns it.
    void fuseEpilogues() {
        std::vector<bool> gone(p_.kernels.size(), false);
        for (size_t i = 0; i < p_.kernels.size(); ++i) {
            const Kernel& conv = p_.kernels[i];
            if (conv.kind != Kernel::Kind::Op || conv.op != Op::Conv2d || conv.hasEpilogue()) continue;
            const int32_t y = conv.out[0];
            const Buffer& yb = p_.buffers[size_t(y)];
            if (yb.shape.size() != 4) continue;
            // The first kernel after it that reads y; later ones may read it too (then, or when
            // the entry point returns y, the epilogue also stores y), none writes it.
            std::optional<size_t> reader;
            bool others = yb.kind != Buffer::Kind::Temp, ok = true;
            for (size_t j = 0; j < p_.kernels.size(); ++j) {
                if (j == i) continue;
                std::vector<int32_t> r = p_.kernels[j].reads(), w = p_.kernels[j].writes();
                if (std::find(w.begin(), w.end(), y) != w.end() || (j < i && std::find(r.begin(), r.end(), y) != r.end()))
                    ok = false;
                if (std::find(r.begin(), r.end(), y) == r.end()) continue;
                if (reader) others = true;
                else reader = j;
            }
            if (!ok || !reader) continue;
            const Kernel& k = p_.kernels[*reader];
            if (k.kind != Kernel::Kind::Loop || k.a >= 0 || !k.columnSums.empty() || !k.rowSums.empty()) continue;
            if (k.outer != yb.shape[0] || k.rows != yb.shape[1] || k.cols != yb.shape[2] * yb.shape[3]) continue;
            for (const Access& a : k.args)
                if (a.buffer == y && a.mode != Access::Mode::Elem) ok = false;
            // The conv runs at the loop's place: nothing between (nor the loop) writes what it reads.
            const std::vector<int32_t> convReads = conv.reads();
            for (size_t j = i + 1; j <= *reader && ok; ++j)
                for (int32_t w : p_.kernels[j].writes())
                    if (std::find(convReads.begin(), convReads.end(), w) != convReads.end()) ok = false;
            if (!ok) continue;
            Kernel fused = conv;
            fused.args = k.args;
            int acc = -1; // the argument that reads y: the tile's values
            for (size_t a = 0; a < fused.args.size(); ++a)
                if (fused.args[a].buffer == y) fused.args[a] = {Access::Mode::Acc, -1}, acc = int(a);
            fused.stores = k.stores;
            if (others) fused.stores.push_back({y, scalar::arg(acc)});
            p_.kernels[*reader] = std::move(fused);
            gone[i] = true;
        }
        dropKernels(gone);
    }

    /// The kernels other than `writer` that read `buffer`, in order, when no other writes it.
    std::optional<std::vector<size_t>> readersOf(size_t writer, int32_t buffer) const {
        std::vector<size_t> readers;
        for (size_t j = 0; j < p_.kernels.size(); ++j) {
            if (j == writer) continue;
            const std::vector<int32_t> r = p_.kernels[j].reads(), w = p_.kernels[j].writes();
            if (std::find(w.begin(), w.end(), buffer) != w.end()) return std::nullopt;
            if (std::find(r.begin(), r.end(), buffer) != r.end()) readers.push_back(j);
        }
        return readers;
    }

    /// The one kernel that reads `buffer`, which kernel `writer` alone writes, when it runs
    /// after the writer.
    std::optional<size_t> onlyReader(size_t writer, int32_t buffer) const {
        const std::optional<std::vector<size_t>> readers = readersOf(writer, buffer);
        if (!readers || readers->size() != 1 || readers->front() < writer) return std::nullopt;
        return readers->front();
    }

    /// Folds a maxpool's gradient into the convolution gradients that are its only readers
    /// (Kernel::poolsGradient: a conv2d_grad_w, a conv2d_grad_x, or both): each, at its own
    /// place, expands g from the pool's operands image by image (nothing between writes
    /// them), and the pool's gradient (as large as the convolution's output: 13 MB for
    /// cnn_relu's second layer, 26 MB for its first) is neither written nor read back.
    void fusePoolGradients() {
        std::vector<bool> gone(p_.kernels.size(), false);
        for (size_t i = 0; i < p_.kernels.size(); ++i) {
            const Kernel& pool = p_.kernels[i];
            if (pool.kind != Kernel::Kind::Op || pool.op != Op::MaxPool2dGrad) continue;
            const int32_t g = pool.out[0];
            if (p_.buffers[size_t(g)].kind != Buffer::Kind::Temp) continue;
            const std::optional<std::vector<size_t>> found = readersOf(i, g);
            if (!found || found->empty()) continue;
            const std::vector<size_t>& readers = *found;
            bool ok = true;
            for (size_t j : readers) { // convolution gradients after the pool's, reading g as their g alone
                const Kernel& k = p_.kernels[j];
                const std::vector<int32_t> r = k.reads();
                ok = ok && k.kind == Kernel::Kind::Op && (k.op == Op::Conv2dGradW || k.op == Op::Conv2dGradX) &&
                     !k.poolsGradient() && j > i && std::count(r.begin(), r.end(), g) == 1 && k.in[k.gradientAt()] == g;
            }
            if (!ok) continue;
            for (size_t j = i + 1; j <= readers.back() && ok; ++j) // they expand g at their own places
                for (int32_t w : p_.kernels[j].writes())
                    if (w == pool.in[0] || w == pool.in[1]) ok = false;
            if (!ok) continue;
            for (size_t j : readers) {
                Kernel& fused = p_.kernels[j];
                const auto at = fused.in.begin() + std::ptrdiff_t(fused.gradientAt());
                fused.in.insert(fused.in.erase(at), {pool.in[0], pool.in[1]});
                fused.pool = pool.attrs.window;
            }
            gone[i] = true;
        }
        dropKernels(gone);
    }

    /// A maxpool's gradient (its kernel, or a convolution gradient that expands it) reads the positions
    /// of the maxima that the maxpool2d of the same program stores as it finds them
    /// (Kernel::maxPositions), instead of reading the pool's input again to find them: a
    /// byte per pooled element (the place in its window), a sixteenth of the input's bytes
    /// for 2x2 windows.
    void storePoolPositions() {
        for (size_t i = 0; i < p_.kernels.size(); ++i) {
            Kernel& grad = p_.kernels[i];
            const bool own = grad.kind == Kernel::Kind::Op && grad.op == Op::MaxPool2dGrad;
            if ((!own && !grad.poolsGradient()) || grad.maxPositions) continue;
            const size_t xAt = own ? 0 : grad.gradientAt(); // the pool's input x, then its g
            const int32_t x = grad.in[xAt];
            const Window& window = own ? grad.attrs.window : grad.pool;
            const Shape& xs = p_.buffers[size_t(x)].shape;
            // Positions in the plane are int32, a place in the window a byte.
            if (xs[2] * xs[3] >= (int64_t(1) << 31) || int64_t(window.kh) * window.kw > 256) continue;
            for (size_t f = 0; f < i; ++f) {
                Kernel& pool = p_.kernels[f];
                if (pool.kind != Kernel::Kind::Op || pool.op != Op::MaxPool2d || pool.in[0] != x || !(pool.attrs.window == window))
                    continue;
                bool rewritten = false; // x between the two: the maxima would be another's
                for (size_t j = f + 1; j < i; ++j)
                    for (int32_t w : p_.kernels[j].writes()) rewritten = rewritten || w == x;
                if (rewritten) continue;
                if (!pool.maxPositions) {
                    const Buffer& y = p_.buffers[size_t(pool.out[0])];
                    p_.buffers.push_back({Buffer::Kind::Temp, y.name + ".argmax", y.shape});
                    pool.out.push_back(int32_t(p_.buffers.size() - 1));
                    pool.maxPositions = true;
                }
                grad.in[xAt] = pool.out[1];
                grad.maxPositions = true;
                break;
            }
        }
    }

    /// Folds into a conv2d with an epilogue (Kernel::poolsOutput) the maxpool that is the one
    /// reader of what the epilogue stores. A direct conv pools each image's result while it
    /// is in the thread's buffer, so the result (cnn_relu's first layer: 26 MB) is neither
    /// written nor read back; its epilogue may read only the result and per-channel or
    /// per-position operands (its values are computed image by image at image 0's index). A
    /// conv through the register tile still stores its result, but pools each image as soon
    /// as its last panel is done, from cache (cnn_relu's second layer: 13 MB not read back
    /// from memory). Either way the epilogue must store nothing else (activation statistics
    /// keep the result).
    void fusePoolEpilogues() {
        std::vector<bool> gone(p_.kernels.size(), false);
        for (size_t i = 0; i < p_.kernels.size(); ++i) {
            Kernel& conv = p_.kernels[i];
            if (conv.kind != Kernel::Kind::Op || conv.op != Op::Conv2d || !conv.hasEpilogue() || conv.stores.size() != 1)
                continue;
            const bool direct = planConv(conv, p_.buffers, blocking_).direct;
            bool ok = true;
            for (const Access& a : conv.args) ok = ok && (!direct || a.mode != Access::Mode::Elem);
            const int32_t y = conv.stores[0].buffer;
            if (!ok || p_.buffers[size_t(y)].kind != Buffer::Kind::Temp) continue;
            const std::optional<size_t> reader = onlyReader(i, y);
            if (!reader) continue;
            const Kernel& pool = p_.kernels[*reader];
            if (pool.kind != Kernel::Kind::Op || pool.op != Op::MaxPool2d || pool.in[0] != y) continue;
            // The pool runs at the conv's place: nothing between reads or writes what it writes.
            for (size_t j = i + 1; j < *reader && ok; ++j) {
                std::vector<int32_t> touched = p_.kernels[j].reads();
                for (int32_t w : p_.kernels[j].writes()) touched.push_back(w);
                for (int32_t b : pool.out) ok = ok && std::find(touched.begin(), touched.end(), b) == touched.end();
            }
            if (!ok) continue;
            conv.pool = pool.attrs.window;
            conv.maxPositions = pool.maxPositions;
            if (direct) conv.stores[0].buffer = -1;
            for (int32_t b : pool.out) conv.out.push_back(b);
            gone[*reader] = true;
        }
        dropKernels(gone);
    }

    /// A reshape's copy (a loop kernel storing an operand's elements in order) into a
    /// workspace buffer is left out when no kernel takes its result as an operand (`in`,
    /// read by shape): the loop kernels and epilogues index it by element (and a matrix
    /// product by row-major rows), so the source's bytes are the same values, and they read
    /// those. The source is a workspace buffer, a parameter or the
    /// input, and nothing writes it after the copy.
    void elideCopies() {
        std::vector<bool> gone(p_.kernels.size(), false);
        auto kind = [&](int32_t b) { return b >= 0 ? p_.buffers[size_t(b)].kind : Buffer::Kind::Loss; };
        for (size_t i = 0; i < p_.kernels.size(); ++i) {
            const Kernel& c = p_.kernels[i];
            if (c.kind != Kernel::Kind::Loop || c.a >= 0 || c.args.size() != 1 || c.stores.size() != 1 ||
                !c.columnSums.empty() || !c.rowSums.empty() || c.args[0].mode != Access::Mode::Elem ||
                !(c.stores[0].expr == scalar::arg(0)))
                continue;
            const int32_t src = c.args[0].buffer, dst = c.stores[0].buffer;
            const Buffer::Kind from = kind(src);
            if ((from != Buffer::Kind::Temp && from != Buffer::Kind::Param && from != Buffer::Kind::Input) ||
                kind(dst) != Buffer::Kind::Temp || p_.buffers[size_t(src)].elements() != p_.buffers[size_t(dst)].elements())
                continue;
            bool ok = true;
            for (size_t j = i + 1; j < p_.kernels.size() && ok; ++j) {
                const Kernel& r = p_.kernels[j];
                const std::vector<int32_t> writes = r.writes();
                ok = std::find(r.in.begin(), r.in.end(), dst) == r.in.end() && std::find(writes.begin(), writes.end(), src) == writes.end();
            }
            if (!ok) continue;
            for (size_t j = i + 1; j < p_.kernels.size(); ++j) {
                Kernel& r = p_.kernels[j];
                for (int32_t* b : {&r.a, &r.b})
                    if (*b == dst) *b = src;
                for (Access& a : r.args)
                    if (a.buffer == dst) a.buffer = src;
            }
            gone[i] = true;
        }
        dropKernels(gone);
    }

    void dropKernels(const std::vector<bool>& gone) {
        std::vector<Kernel> kept;
        for (size_t i = 0; i < p_.kernels.size(); ++i)
            if (!gone[i]) kept.push_back(std::move(p_.kernels[i]));
        p_.kernels = std::move(kept);
    }

    void dropDeadStores() {
        std::vector<bool> read(p_.buffers.size(), false);
        for (auto& k : p_.kernels)
            for (int32_t b : k.reads()) read[size_t(b)] = true;
        for (auto& k : p_.kernels) {
            std::vector<Store> kept;
            for (auto& s : k.stores)
                if (p_.buffers[size_t(s.buffer)].kind != Buffer::Kind::Temp || read[size_t(s.buffer)])
                    kept.push_back(s);
            k.stores = std::move(kept);
        }
        std::vector<Kernel> live;
        for (auto& k : p_.kernels)
            if (!k.writes().empty()) live.push_back(std::move(k));
        p_.kernels = std::move(live);
    }
};

/// Convolutional networks came in phases, and the kernels still leave out a window op without
/// a kernel of its own and a map whose operand varies along two separate groups of dimensions
/// ([C,1,W] against [B,C,H,W]), which no loop kernel reads in one pass (the model language
/// makes none; its gradient would be such a sum_to). Every path to the kernels (the JIT,
/// `gradc compile`, `dump --emit=kernels`) refuses them by name at their line.
void refuseUncompiled(const Graph& g) {
    for (const Node& n : g.nodes) {
        std::string what;
        if (describe(n.op).has(trait::Spatial) && !hasOwnKernel(n.op)) what = describe(n.op).spelling;
        for (ValueId in : n.op == Op::Map && what.empty() ? n.in : std::vector<ValueId>{})
            if (!readsInOnePass(g[in].shape, n.shape))
                what = fmt::format("a map that broadcasts {} to {} along two separate groups of dimensions",
                                   shapeString(g[in].shape), shapeString(n.shape));
        if (n.op == Op::SumTo && !readsInOnePass(n.shape, g[n.in[0]].shape))
            what = fmt::format("a sum_to of {} to {} over two separate groups of dimensions",
                               shapeString(g[n.in[0]].shape), shapeString(n.shape));
        if (!what.empty())
            throw UserError(n.loc, fmt::format("{} is not compiled by the jit backend yet; use --backend interp", what));
    }
}

} // namespace

bool readsInOnePass(const Shape& operand, const Shape& result) {
    for (size_t i = 0; i <= result.size(); ++i)
        for (size_t j = i; j <= result.size(); ++j)
            if (placement(operand, result, splitAt(result, i, j))) return true;
    return false;
}

KernelProgram buildKernels(const Graph& g, const std::string& name,
                           const std::vector<Output>& outputs, const Layout& layout, int elementBytes,
                           const GemmBlocking& blocking) {
    refuseUncompiled(g);
    KernelProgram p = Builder(g, name, outputs, layout, blocking).run();
    p.blocking = blocking;
    p.syncWorld = g.syncWorld;
    planMemory(p, elementBytes);
    return p;
}

} // namespace gradc
