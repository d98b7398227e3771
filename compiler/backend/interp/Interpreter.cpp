// Interpreter.cpp — the reference backend: each op written as its textbook definition.
#include "Interpreter.h"

#include "Cells.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace gradc {
namespace {

/// Walks the elements of a tensor of shape `over` in row-major order, keeping the offset of
/// the element each operand broadcasts from (numpy's rule: operand shapes right-aligned,
/// dimensions of size 1 repeat).
class Odometer {
public:
    Odometer(const Shape& over, const std::vector<const Shape*>& operands)
        : dims_(over), index_(over.size(), 0), offsets_(operands.size(), 0) {
        for (const Shape* s : operands) {
            std::vector<int64_t> strides(over.size(), 0);
            int64_t stride = 1;
            for (size_t d = s->size(); d-- > 0;) {
                const size_t at = over.size() - s->size() + d;
                strides[at] = (*s)[d] == 1 ? 0 : stride;
                stride *= (*s)[d];
            }
            strides_.push_back(std::move(strides));
        }
    }
    int64_t offset(size_t k) const { return offsets_[k]; }
    void next() {
        for (size_t d = dims_.size(); d-- > 0;) {
            for (size_t k = 0; k < offsets_.size(); ++k) offsets_[k] += strides_[k][d];
            if (++index_[d] < dims_[d]) return;
            for (size_t k = 0; k < offsets_.size(); ++k) offsets_[k] -= strides_[k][d] * dims_[d];
            index_[d] = 0;
        }
    }

private:
    Shape dims_;
    std::vector<int64_t> index_, offsets_;
    std::vector<std::vector<int64_t>> strides_;
};

/// The outputs j of a window pass whose input column j * stride + q - pad lies in [0, size):
/// [first, end) within [0, out).
std::pair<int64_t, int64_t> validRange(int64_t out, int64_t size, int64_t q, int64_t stride, int64_t pad) {
    int64_t first = 0, end = out;
    if (pad - q > 0) first = (pad - q + stride - 1) / stride;
    end = std::min(out, size - 1 + pad - q < 0 ? 0 : (size - 1 + pad - q) / stride + 1);
    return {first, std::max(first, end)};
}

ScanPerturbation gScanPerturbation; // the test hook (setScanPerturbation)

struct Eval {
    const Graph& g;
    std::vector<Tensor>& val;
    /// The results of a loop shared by sibling ops (scan and scan_state; the four reverse
    /// ops), by the family's first op and its operands: each loop runs once.
    std::map<std::vector<int64_t>, std::vector<Tensor>> memo;

    const Tensor& in(const Node& n, size_t i) const { return val[n.in[i]]; }

    Tensor run(const Node& n, const Bindings& bindings) {
        Tensor t{n.shape, std::vector<double>(size_t(elementCount(n.shape)), 0.0)};
        auto& o = t.data;
        switch (n.op) {
        case Op::Input:
        case Op::Param: {
            auto it = bindings.find(n.name);
            if (it == bindings.end()) throw UserError(n.loc, fmt::format("no value given for '{}'", n.name));
            if (it->second.shape != n.shape || it->second.data.size() != o.size())
                throw UserError(n.loc, fmt::format("'{}' has shape {}, expected {}", n.name,
                                                   shapeString(it->second.shape), shapeString(n.shape)));
            return it->second;
        }
        case Op::Zeros: return t;
        // The three products differ only in which operand is transposed; each keeps its
        // innermost loop on contiguous memory, which makes the oracle fast enough for grads.
        // A tensor of rank > 2 is the matrix [prod(leading dimensions), last] (row-major).
        case Op::MatMulNT: { // [B,K] x [N,K]^T
            const Tensor &x = in(n, 0), &w = in(n, 1);
            int64_t K = x.shape.back(), B = elementCount(x.shape) / K, N = w.shape[0];
            for (int64_t b = 0; b < B; ++b)
                for (int64_t j = 0; j < N; ++j) {
                    double s = 0;
                    for (int64_t k = 0; k < K; ++k) s += x.data[b * K + k] * w.data[j * K + k];
                    o[b * N + j] = s;
                }
            return t;
        }
        case Op::MatMulNN: { // [B,N] x [N,K]
            const Tensor &a = in(n, 0), &w = in(n, 1);
            int64_t N = a.shape.back(), B = elementCount(a.shape) / N, K = w.shape[1];
            for (int64_t b = 0; b < B; ++b)
                for (int64_t j = 0; j < N; ++j) {
                    double s = a.data[b * N + j];
                    for (int64_t k = 0; k < K; ++k) o[b * K + k] += s * w.data[j * K + k];
                }
            return t;
        }
        case Op::MatMulTN: { // [B,N]^T x [B,K]
            const Tensor &a = in(n, 0), &x = in(n, 1);
            int64_t N = a.shape.back(), B = elementCount(a.shape) / N, K = x.shape.back();
            for (int64_t b = 0; b < B; ++b)
                for (int64_t j = 0; j < N; ++j) {
                    double s = a.data[b * N + j];
                    for (int64_t k = 0; k < K; ++k) o[j * K + k] += s * x.data[b * K + k];
                }
            return t;
        }
        case Op::Reshape: return Tensor{n.shape, in(n, 0).data};
        case Op::SumRows: { // over dimension 0
            const Tensor& a = in(n, 0);
            size_t N = o.size(), B = a.data.size() / std::max<size_t>(N, 1);
            for (size_t b = 0; b < B; ++b)
                for (size_t j = 0; j < N; ++j) o[j] += a.data[b * N + j];
            return t;
        }
        case Op::SumTo: { // each element of the operand adds to the target element it broadcasts from
            const Tensor& a = in(n, 0);
            Odometer it(a.shape, {&n.shape});
            for (size_t i = 0; i < a.data.size(); ++i, it.next()) o[it.offset(0)] += a.data[i];
            return t;
        }
        case Op::Conv2d:
        case Op::Conv2dGradX:
        case Op::Conv2dGradW: return conv(n, std::move(t));
        case Op::MaxPool2d:
        case Op::MaxPool2dGrad:
        case Op::AvgPool2d:
        case Op::AvgPool2dGrad: return pool(n, std::move(t));
        case Op::Map: { // an operand of fewer elements repeats (numpy's broadcasting)
            scalar::Evaluator f(n.expr);
            std::vector<double> args(n.in.size());
            bool suffixes = true; // every operand the result's shape or a suffix of it: i % size
            std::vector<const Shape*> shapes;
            for (size_t k = 0; k < args.size(); ++k) {
                const Shape& s = in(n, k).shape;
                shapes.push_back(&s);
                suffixes = suffixes && isSuffix(s, n.shape);
            }
            if (!suffixes) {
                Odometer it(n.shape, shapes);
                for (size_t i = 0; i < o.size(); ++i, it.next()) {
                    for (size_t k = 0; k < args.size(); ++k) args[k] = in(n, k).data[it.offset(k)];
                    o[i] = f.withArgs(args.data());
                }
                return t;
            }
            for (size_t i = 0; i < o.size(); ++i) {
                for (size_t k = 0; k < args.size(); ++k) {
                    const std::vector<double>& d = in(n, k).data;
                    args[k] = d[d.size() == o.size() ? i : i % d.size()];
                }
                o[i] = f.withArgs(args.data());
            }
            return t;
        }
        case Op::Scan:
        case Op::ScanState: return scanForward(n)[n.op == Op::Scan ? 0 : 1];
        case Op::ScanGrad:
        case Op::ScanGradW:
        case Op::ScanGradB:
        case Op::ScanGradNorm: return scanReverse(n)[size_t(n.op) - size_t(Op::ScanGrad)];
        case Op::LastStep: { // x[:, T-1]
            const Tensor& x = in(n, 0);
            const int64_t B = x.shape[0], T = x.shape[1], K = x.shape[2];
            for (int64_t b = 0; b < B; ++b)
                for (int64_t k = 0; k < K; ++k) o[size_t(b * K + k)] = x.data[size_t((b * T + T - 1) * K + k)];
            return t;
        }
        case Op::LastStepGrad: { // zeros but step T-1
            const Tensor& d = in(n, 0);
            const int64_t B = n.shape[0], T = n.shape[1], K = n.shape[2];
            for (int64_t b = 0; b < B; ++b)
                for (int64_t k = 0; k < K; ++k) o[size_t((b * T + T - 1) * K + k)] = d.data[size_t(b * K + k)];
            return t;
        }
        case Op::BatchNorm:
        case Op::BatchNormGradX:
        case Op::BatchNormGradGamma: return batchnorm(n, std::move(t));
        case Op::LayerNormNormalise:
        case Op::LayerNormNormaliseGrad: return layernorm(n, std::move(t));
        case Op::CrossEntropy:
        case Op::CrossEntropyGrad: {
            const Tensor &z = in(n, 0), &l = in(n, 1);
            int64_t B = z.shape[0], C = z.shape[1];
            double loss = 0;
            for (int64_t b = 0; b < B; ++b) {
                const double* row = &z.data[size_t(b * C)];
                double m = row[0];
                for (int64_t c = 1; c < C; ++c) m = std::max(m, row[c]);
                double s = 0;
                for (int64_t c = 0; c < C; ++c) s += std::exp(row[c] - m);
                double lv = l.data[size_t(b)];
                if (!(lv >= 0 && lv < double(C)) || lv != std::floor(lv))
                    throw UserError(g[n.in[1]].loc, fmt::format("label {} of example {} is not a "
                                                                "class index (0 to {})", lv, b, C - 1));
                int64_t label = int64_t(lv);
                loss += m + std::log(s) - row[label];
                if (n.op == Op::CrossEntropyGrad)
                    for (int64_t c = 0; c < C; ++c)
                        o[b * C + c] = (std::exp(row[c] - m) / s - (c == label)) / double(B);
            }
            if (n.op == Op::CrossEntropy) o[0] = loss / double(B);
            return t;
        }
        case Op::BCEWithLogits:
        case Op::BCEWithLogitsGrad: {
            const Tensor &z = in(n, 0), &y = in(n, 1);
            double loss = 0, count = double(z.data.size());
            for (size_t i = 0; i < z.data.size(); ++i) {
                double v = z.data[i];
                loss += std::max(v, 0.0) - v * y.data[i] + std::log1p(std::exp(-std::fabs(v)));
                if (n.op == Op::BCEWithLogitsGrad) {
                    double s = v >= 0 ? 1 / (1 + std::exp(-v)) : std::exp(v) / (1 + std::exp(v));
                    o[i] = (s - y.data[i]) / count;
                }
            }
            if (n.op == Op::BCEWithLogits) o[0] = loss / count;
            return t;
        }
        case Op::MSE:
        case Op::MSEGrad: {
            const Tensor &p = in(n, 0), &y = in(n, 1);
            double loss = 0, count = double(p.data.size());
            for (size_t i = 0; i < p.data.size(); ++i) {
                double d = p.data[i] - y.data[i];
                loss += d * d;
                if (n.op == Op::MSEGrad) o[i] = 2 * d / count;
            }
            if (n.op == Op::MSE) o[0] = loss / count;
            return t;
        }
        }
        internal_assert(false, "op without an interpreter case");
        return t;
    }

    /// The memo key of a loop family: its first op, cell and operands.
    static std::vector<int64_t> familyKey(Op first, const Node& n) {
        std::vector<int64_t> key = {int64_t(first), int64_t(n.cell), int64_t(n.expr ? n.expr->hash : 0)};
        for (ValueId v : n.in) key.push_back(int64_t(v));
        return key;
    }

    /// scan and scan_state: the loop over t = 0..T-1 of Ops.def, one (b, j) at a time through
    /// the cell's forward expressions; {h [B,T,H], state [B,T,S H]}.
    const std::vector<Tensor>& scanForward(const Node& n) {
        auto key = familyKey(Op::Scan, n);
        if (auto it = memo.find(key); it != memo.end()) return it->second;
        const Tensor &xp = in(n, 0), &w = in(n, 1), &bias = in(n, 2);
        const CellDef cell = cellDef(n.cell, n.expr);
        const int64_t B = xp.shape[0], T = xp.shape[1], H = w.shape[1], G = cell.gates, S = cell.states;
        Tensor h{{B, T, H}, std::vector<double>(size_t(B * T * H), 0.0)};
        Tensor st{{B, T, S * H}, std::vector<double>(size_t(B * T * S * H), 0.0)};
        std::vector<scalar::Evaluator> f;
        for (const scalar::Expr& e : cell.forward) f.emplace_back(e);
        std::vector<double> zh(size_t(G * H)), args(size_t(cell.forwardArgs()));
        const ScanPerturbation& p = gScanPerturbation;
        for (int64_t t = 0; t < T; ++t)
            for (int64_t b = 0; b < B; ++b) {
                const double* hp = t > 0 ? &h.data[size_t((b * T + t - 1) * H)] : nullptr;
                for (int64_t r = 0; r < G * H; ++r) { // h_{t-1} W_hhᵀ + b_hh
                    double sum = bias.data[size_t(r)];
                    for (int64_t k = 0; hp && k < H; ++k) sum += hp[k] * w.data[size_t(r * H + k)];
                    zh[size_t(r)] = sum;
                }
                for (int64_t j = 0; j < H; ++j) {
                    for (int64_t g = 0; g < G; ++g) {
                        args[size_t(cell.xpArg(int(g)))] = xp.data[size_t((b * T + t) * G * H + g * H + j)];
                        args[size_t(cell.zhArg(int(g)))] = zh[size_t(g * H + j)];
                    }
                    args[size_t(cell.hPrevArg())] = hp ? hp[j] : 0;
                    args[size_t(cell.cPrevArg())] = t > 0 && cell.cellStateSlot >= 0
                        ? st.data[size_t((b * T + t - 1) * S * H + cell.cellStateSlot * H + j)] : 0;
                    double out = f[0].withArgs(args.data());
                    if (t == p.t && b == p.b && j == p.j) out += p.delta;
                    h.data[size_t((b * T + t) * H + j)] = out;
                    for (int64_t s = 0; s < S; ++s)
                        st.data[size_t((b * T + t) * S * H + s * H + j)] = f[size_t(1 + s)].withArgs(args.data());
                }
            }
        return memo[key] = {std::move(h), std::move(st)};
    }

    /// scan_grad, scan_grad_w, scan_grad_b and scan_grad_norm: the reverse loop, t = T-1..0
    /// (Autodiff.cpp's gradOfScan); {dxp, dW_hh, db_hh, norms}.
    const std::vector<Tensor>& scanReverse(const Node& n) {
        auto key = familyKey(Op::ScanGrad, n);
        if (auto it = memo.find(key); it != memo.end()) return it->second;
        const Tensor &h = in(n, 0), &st = in(n, 1), &dy = in(n, 2), &w = in(n, 3);
        const CellDef cell = cellDef(n.cell, n.expr);
        const int64_t B = h.shape[0], T = h.shape[1], H = h.shape[2], G = cell.gates, S = cell.states;
        Tensor dxp{{B, T, G * H}, std::vector<double>(size_t(B * T * G * H), 0.0)};
        Tensor dw{{G * H, H}, std::vector<double>(size_t(G * H * H), 0.0)};
        Tensor db{{G * H}, std::vector<double>(size_t(G * H), 0.0)};
        Tensor norms{{T}, std::vector<double>(size_t(T), 0.0)};
        auto evaluators = [](const std::vector<scalar::Expr>& es) {
            std::vector<scalar::Evaluator> out;
            for (const scalar::Expr& e : es) out.emplace_back(e);
            return out;
        };
        std::vector<scalar::Evaluator> fdxp = evaluators(cell.dxp), fdzhh = evaluators(cell.dzhh);
        scalar::Evaluator fdirect(cell.direct), fdc(cell.dcPrev);
        // carry: dL/dh_t through step t+1; dc: dL/dc_t through step t+1 (the LSTM's).
        std::vector<double> carry(size_t(B * H), 0.0), dc(size_t(B * H), 0.0), dzhh(size_t(B * G * H));
        std::vector<double> args(size_t(cell.backwardArgs()));
        for (int64_t t = T; t-- > 0;) {
            double norm2 = 0;
            std::vector<double> next(size_t(B * H), 0.0), nextDc(size_t(B * H), 0.0);
            for (int64_t b = 0; b < B; ++b)
                for (int64_t j = 0; j < H; ++j) {
                    const double dh = dy.data[size_t((b * T + t) * H + j)] + carry[size_t(b * H + j)];
                    norm2 += dh * dh;
                    args[CellDef::kDh] = dh;
                    args[CellDef::kDc] = dc[size_t(b * H + j)];
                    args[CellDef::kHPrev] = t > 0 ? h.data[size_t((b * T + t - 1) * H + j)] : 0;
                    args[CellDef::kCPrev] = t > 0 && cell.cellStateSlot >= 0
                        ? st.data[size_t((b * T + t - 1) * S * H + cell.cellStateSlot * H + j)] : 0;
                    for (int64_t s = 0; s < S; ++s)
                        args[size_t(CellDef::stateArg(int(s)))] = st.data[size_t((b * T + t) * S * H + s * H + j)];
                    for (int64_t g = 0; g < G; ++g) {
                        dxp.data[size_t((b * T + t) * G * H + g * H + j)] = fdxp[size_t(g)].withArgs(args.data());
                        dzhh[size_t(b * G * H + g * H + j)] = fdzhh[size_t(g)].withArgs(args.data());
                    }
                    next[size_t(b * H + j)] = fdirect.withArgs(args.data());
                    nextDc[size_t(b * H + j)] = fdc.withArgs(args.data());
                }
            norms.data[size_t(t)] = std::sqrt(norm2);
            for (int64_t b = 0; b < B; ++b)
                for (int64_t r = 0; r < G * H; ++r) {
                    const double d = dzhh[size_t(b * G * H + r)];
                    db.data[size_t(r)] += d;
                    if (t == 0) continue; // h_{-1} = 0: no product, no carry
                    for (int64_t k = 0; k < H; ++k) {
                        next[size_t(b * H + k)] += d * w.data[size_t(r * H + k)];
                        dw.data[size_t(r * H + k)] += d * h.data[size_t((b * T + t - 1) * H + k)];
                    }
                }
            carry = std::move(next), dc = std::move(nextDc);
        }
        return memo[key] = {std::move(dxp), std::move(dw), std::move(db), std::move(norms)};
    }

    /// Per channel j (dimension 1) over the M = B S values of x[B,N,S...]: on [B,N], S = 1
    /// and the element of example b is b N + j; on [B,C,H,W], S = H W.
    Tensor batchnorm(const Node& n, Tensor t) {
        const Tensor& x = in(n, 0);
        const int64_t B = x.shape[0], N = x.shape[1], S = elementCount(x.shape) / (B * N);
        const double M = double(B * S);
        auto at = [&](int64_t b, int64_t j, int64_t s) { return size_t((b * N + j) * S + s); };
        for (int64_t j = 0; j < N; ++j) {
            const ChannelMoments moments = channelMoments(x, j);
            const double mean = moments.mean, var = moments.sumSq / M; // biased, as PyTorch normalises in training mode
            double sigma = std::sqrt(var + n.eps);
            auto xhat = [&](size_t i) { return (x.data[i] - mean) / sigma; };
            if (n.op == Op::BatchNorm) {
                for (int64_t b = 0; b < B; ++b)
                    for (int64_t s = 0; s < S; ++s)
                        t.data[at(b, j, s)] = xhat(at(b, j, s)) * in(n, 1).data[j] + in(n, 2).data[j];
                continue;
            }
            const Tensor& dy = in(n, n.op == Op::BatchNormGradX ? 2 : 1);
            double sumG = 0, sumGX = 0;
            for (int64_t b = 0; b < B; ++b)
                for (int64_t s = 0; s < S; ++s) {
                    sumG += dy.data[at(b, j, s)];
                    sumGX += dy.data[at(b, j, s)] * xhat(at(b, j, s));
                }
            if (n.op == Op::BatchNormGradGamma) {
                t.data[j] = sumGX;
                continue;
            }
            double scale = in(n, 1).data[j] / (M * sigma);
            for (int64_t b = 0; b < B; ++b)
                for (int64_t s = 0; s < S; ++s) {
                    const size_t i = at(b, j, s);
                    t.data[i] = scale * (M * dy.data[i] - sumG - xhat(i) * sumGX);
                }
        }
        return t;
    }

    /// conv2d and its gradients, as the sum that defines them: y[b,o,i,j] += w[o,c,p,q]
    /// x[b,c,i SH + p - PH, j SW + q - PW] over the positions inside the input (the padding is
    /// zero); the gradient with respect to x scatters the same products back, the one with
    /// respect to w sums them over the batch and the positions.
    Tensor conv(const Node& n, Tensor t) {
        const Window& win = n.window;
        const Tensor& w = n.op == Op::Conv2dGradW ? t : in(n, 1);
        const Shape& xs = n.op == Op::Conv2dGradX ? n.shape : in(n, 0).shape;
        const Shape& ys = n.op == Op::Conv2d ? n.shape : in(n, n.op == Op::Conv2dGradX ? 0 : 1).shape;
        const int64_t B = xs[0], C = xs[1], H = xs[2], W = xs[3], O = ys[1], OH = ys[2], OW = ys[3];
        const int64_t KH = win.kh, KW = win.kw;
        for (int64_t b = 0; b < B; ++b)
            for (int64_t o = 0; o < O; ++o)
                for (int64_t c = 0; c < C; ++c)
                    for (int64_t p = 0; p < KH; ++p) {
                        auto [i0, i1] = validRange(OH, H, p, win.sh, win.ph);
                        for (int64_t q = 0; q < KW; ++q) {
                            auto [j0, j1] = validRange(OW, W, q, win.sw, win.pw);
                            const size_t wi = size_t(((o * C + c) * KH + p) * KW + q);
                            double dw = 0;
                            for (int64_t i = i0; i < i1; ++i) {
                                const int64_t r = i * win.sh + p - win.ph;
                                const size_t yrow = size_t(((b * O + o) * OH + i) * OW);
                                const size_t xrow = size_t(((b * C + c) * H + r) * W);
                                for (int64_t j = j0; j < j1; ++j) {
                                    const size_t xi = xrow + size_t(j * win.sw + q - win.pw), yi = yrow + size_t(j);
                                    switch (n.op) {
                                    case Op::Conv2d: t.data[yi] += w.data[wi] * in(n, 0).data[xi]; break;
                                    case Op::Conv2dGradX: t.data[xi] += w.data[wi] * in(n, 0).data[yi]; break;
                                    default: dw += in(n, 1).data[yi] * in(n, 0).data[xi]; break;
                                    }
                                }
                            }
                            if (n.op == Op::Conv2dGradW) t.data[wi] += dw;
                        }
                    }
        return t;
    }

    /// Pooling and its gradients over each window of x[B,C,H,W]. maxpool2d keeps PyTorch's
    /// CPU kernel's choice: the first position in row-major window order whose value is
    /// greater than every earlier one or NaN (a window of -inf only: its first position).
    Tensor pool(const Node& n, Tensor t) {
        const Window& win = n.window;
        const bool grad = n.op == Op::MaxPool2dGrad || n.op == Op::AvgPool2dGrad;
        const Shape& xs = n.op == Op::AvgPool2dGrad ? n.shape : in(n, 0).shape;
        const Shape& ys = grad ? in(n, n.op == Op::MaxPool2dGrad ? 1 : 0).shape : n.shape;
        const Tensor& dy = in(n, n.op == Op::MaxPool2dGrad ? 1 : 0);
        const int64_t H = xs[2], W = xs[3], OH = ys[2], OW = ys[3];
        const double area = double(win.kh) * double(win.kw);
        for (int64_t plane = 0; plane < xs[0] * xs[1]; ++plane)
            for (int64_t i = 0; i < OH; ++i)
                for (int64_t j = 0; j < OW; ++j) {
                    const int64_t r0 = std::max<int64_t>(0, i * win.sh - win.ph), r1 = std::min(H, i * win.sh - win.ph + win.kh);
                    const int64_t c0 = std::max<int64_t>(0, j * win.sw - win.pw), c1 = std::min(W, j * win.sw - win.pw + win.kw);
                    const size_t yi = size_t((plane * OH + i) * OW + j), base = size_t(plane * H * W);
                    if (n.op == Op::AvgPool2d || n.op == Op::AvgPool2dGrad) {
                        double sum = 0;
                        for (int64_t r = r0; r < r1; ++r)
                            for (int64_t c = c0; c < c1; ++c) {
                                const size_t xi = base + size_t(r * W + c);
                                if (grad) t.data[xi] += dy.data[yi] / area;
                                else sum += in(n, 0).data[xi];
                            }
                        if (!grad) t.data[yi] = sum / area;
                        continue;
                    }
                    const std::vector<double>& x = in(n, 0).data;
                    double best = -std::numeric_limits<double>::infinity();
                    size_t arg = base + size_t(r0 * W + c0);
                    for (int64_t r = r0; r < r1; ++r)
                        for (int64_t c = c0; c < c1; ++c) {
                            const size_t xi = base + size_t(r * W + c);
                            if (x[xi] > best || std::isnan(x[xi])) best = x[xi], arg = xi;
                        }
                    if (grad) t.data[arg] += dy.data[yi];
                    else t.data[yi] = best;
                }
        return t;
    }

    /// Each row of the last dimension normalised on its own: x̂ = (x - mean) / σ with
    /// σ = sqrt(biased var + eps); the gradient (g - mean(g) - x̂ mean(g x̂)) / σ.
    Tensor layernorm(const Node& n, Tensor t) {
        const Tensor& x = in(n, 0);
        const size_t N = size_t(x.shape.back()), rows = x.data.size() / std::max<size_t>(N, 1);
        for (size_t r = 0; r < rows; ++r) {
            const double* row = &x.data[r * N];
            double mean = 0, var = 0;
            for (size_t j = 0; j < N; ++j) mean += row[j];
            mean /= double(N);
            for (size_t j = 0; j < N; ++j) var += (row[j] - mean) * (row[j] - mean);
            var /= double(N);
            double sigma = std::sqrt(var + n.eps);
            auto xhat = [&](size_t j) { return (row[j] - mean) / sigma; };
            double* o = &t.data[r * N];
            if (n.op == Op::LayerNormNormalise) {
                for (size_t j = 0; j < N; ++j) o[j] = xhat(j);
                continue;
            }
            const double* g = &in(n, 1).data[r * N];
            double meanG = 0, meanGX = 0;
            for (size_t j = 0; j < N; ++j) meanG += g[j], meanGX += g[j] * xhat(j);
            meanG /= double(N), meanGX /= double(N);
            for (size_t j = 0; j < N; ++j) o[j] = (g[j] - meanG - xhat(j) * meanGX) / sigma;
        }
        return t;
    }
};

} // namespace

ChannelMoments channelMoments(const Tensor& x, int64_t j) {
    const int64_t B = x.shape[0], N = x.shape[1], S = elementCount(x.shape) / (B * N);
    auto at = [&](int64_t b, int64_t s) { return size_t((b * N + j) * S + s); };
    double mean = 0, sumSq = 0;
    for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < S; ++s) mean += x.data[at(b, s)];
    mean /= double(B * S);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < S; ++s) {
            const double d = x.data[at(b, s)] - mean;
            sumSq += d * d;
        }
    return {mean, sumSq, B * S};
}

std::vector<Tensor> interpret(const Graph& g, const Bindings& bindings) {
    std::vector<Tensor> val;
    val.reserve(g.nodes.size());
    Eval ev{g, val, {}};
    for (const Node& n : g.nodes) val.push_back(ev.run(n, bindings));
    return val;
}

void setScanPerturbation(const ScanPerturbation& p) { gScanPerturbation = p; }

std::map<std::string, Tensor> interpretOutputs(const Graph& g, const Bindings& bindings) {
    std::vector<Tensor> val = interpret(g, bindings);
    std::map<std::string, Tensor> out;
    for (auto& o : g.outputs) out[outputLabel(o)] = val[o.value];
    return out;
}

} // namespace gradc
