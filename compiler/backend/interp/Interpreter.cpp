// Interpreter.cpp — the reference backend: each op written as its textbook definition.
#include "Interpreter.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace gradc {
namespace {

struct Eval {
    const Graph& g;
    std::vector<Tensor>& val;

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
        case Op::Map: { // an operand of fewer elements is a suffix of the result: it repeats
            scalar::Evaluator f(n.expr);
            std::vector<double> args(n.in.size());
            for (size_t i = 0; i < o.size(); ++i) {
                for (size_t k = 0; k < args.size(); ++k) {
                    const std::vector<double>& d = in(n, k).data;
                    args[k] = d[d.size() == o.size() ? i : i % d.size()];
                }
                o[i] = f.withArgs(args.data());
            }
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

    Tensor batchnorm(const Node& n, Tensor t) {
        const Tensor& x = in(n, 0);
        int64_t B = x.shape[0], N = x.shape[1];
        for (int64_t j = 0; j < N; ++j) {
            double mean = 0, var = 0;
            for (int64_t b = 0; b < B; ++b) mean += x.data[b * N + j];
            mean /= double(B);
            for (int64_t b = 0; b < B; ++b) var += (x.data[b * N + j] - mean) * (x.data[b * N + j] - mean);
            var /= double(B); // biased, as PyTorch normalises in training mode
            double sigma = std::sqrt(var + n.eps);
            auto xhat = [&](int64_t b) { return (x.data[b * N + j] - mean) / sigma; };
            if (n.op == Op::BatchNorm) {
                for (int64_t b = 0; b < B; ++b)
                    t.data[b * N + j] = xhat(b) * in(n, 1).data[j] + in(n, 2).data[j];
                continue;
            }
            const Tensor& dy = in(n, n.op == Op::BatchNormGradX ? 2 : 1);
            double sumG = 0, sumGX = 0;
            for (int64_t b = 0; b < B; ++b) {
                sumG += dy.data[b * N + j];
                sumGX += dy.data[b * N + j] * xhat(b);
            }
            if (n.op == Op::BatchNormGradGamma) {
                t.data[j] = sumGX;
                continue;
            }
            double scale = in(n, 1).data[j] / (double(B) * sigma);
            for (int64_t b = 0; b < B; ++b)
                t.data[b * N + j] = scale * (double(B) * dy.data[b * N + j] - sumG - xhat(b) * sumGX);
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

std::vector<Tensor> interpret(const Graph& g, const Bindings& bindings) {
    std::vector<Tensor> val;
    val.reserve(g.nodes.size());
    Eval ev{g, val};
    for (const Node& n : g.nodes) val.push_back(ev.run(n, bindings));
    return val;
}

std::map<std::string, Tensor> interpretOutputs(const Graph& g, const Bindings& bindings) {
    std::vector<Tensor> val = interpret(g, bindings);
    std::map<std::string, Tensor> out;
    for (auto& o : g.outputs) out[outputLabel(o)] = val[o.value];
    return out;
}

} // namespace gradc
