// Init.cpp — deterministic initialisation: splitmix64 and Box-Muller.
#include "Init.h"

#include <cmath>

namespace gradc {
namespace {

struct Rng {
    uint64_t state;
    uint64_t next() { // splitmix64
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    double uniform() { return double(next() >> 11) * 0x1.0p-53; } // [0, 1)
    double normal() {
        double u1 = 1 - uniform(), u2 = uniform();
        return std::sqrt(-2 * std::log(u1)) * std::cos(2 * M_PI * u2);
    }
};

/// gain Q of nn.init.orthogonal_: a Gaussian draw of the weight's [rows, cols], Q of its QR
/// decomposition with the signs of R's diagonal made positive (so Q is unique), the transpose
/// when the matrix is wide. rows >= cols: the columns of Q are orthonormal (QᵀQ = I).
/// The factorisation is Gram-Schmidt run twice per column, in double.
void orthogonal(Rng& rng, Tensor& t, double gain) {
    const int64_t rows = t.shape[0], cols = elementCount(t.shape) / rows;
    const bool wide = rows < cols;
    const int64_t m = wide ? cols : rows, n = wide ? rows : cols; // m >= n: Q is [m, n]
    std::vector<double> a(size_t(m * n)); // column-major: column c at a[c m ..]
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
            const double v = rng.normal();
            if (wide)
                a[size_t(r * m + c)] = v; // column r of the transpose
            else
                a[size_t(c * m + r)] = v;
        }
    for (int64_t c = 0; c < n; ++c) {
        double* q = &a[size_t(c * m)];
        double diag = 0;
        for (int pass = 0; pass < 2; ++pass)
            for (int64_t p = 0; p < c; ++p) {
                const double* e = &a[size_t(p * m)];
                double dot = 0;
                for (int64_t i = 0; i < m; ++i) dot += e[i] * q[i];
                for (int64_t i = 0; i < m; ++i) q[i] -= dot * e[i];
            }
        for (int64_t i = 0; i < m; ++i) diag += q[i] * q[i];
        diag = std::sqrt(diag); // R's diagonal entry, positive: the sign correction is built in
        for (int64_t i = 0; i < m; ++i) q[i] /= diag;
    }
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
            t.data[size_t(r * cols + c)] =
                gain * (wide ? a[size_t(r * m + c)] : a[size_t(c * m + r)]);
}

} // namespace

Bindings initialiseParameters(const Graph& g, uint64_t seed) {
    Rng rng{seed};
    Bindings out;
    bool firstWeight = true;
    for (const ParamInfo& p : g.params) {
        const Shape& shape = g[p.node].shape;
        Tensor t{shape, std::vector<double>(size_t(elementCount(shape)))};
        const std::string& s = p.init.scheme;
        double fanIn = double(p.fanIn), fanOut = double(p.fanOut);
        const bool weight = isWeight(shape);
        if (s == "orthogonal") {
            orthogonal(rng, t, p.init.args.at(0));
        } else if (s == "identity") { // gain I in each gate block of a [G H, H] recurrent weight
            const int64_t cols = shape.at(1);
            for (int64_t r = 0; r < shape[0]; ++r)
                t.data[size_t(r * cols + r % cols)] = p.init.args.at(0);
        }
        for (double& v : t.data) {
            if (s == "orthogonal" || s == "identity") break;
            if (s == "pytorch") v = (2 * rng.uniform() - 1) / std::sqrt(fanIn);
            else if (s == "xavier") v = rng.normal() * std::sqrt(2 / (fanIn + fanOut));
            else if (s == "kaiming") v = rng.normal() * std::sqrt((firstWeight ? 1 : 2) / fanIn);
            else if (s == "normal") v = rng.normal() * p.init.args[0];
            else if (s == "constant") v = p.init.args[0];
            else internal_assert(false, "unknown init scheme " + s);
        }
        if (weight) firstWeight = false;
        out[p.name] = std::move(t);
    }
    for (const BufferInfo& b : g.buffers) out[b.name] = Tensor{{b.size}, std::vector<double>(size_t(b.size), b.initial)};
    return out;
}

} // namespace gradc
