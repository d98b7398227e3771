// ReferenceUpdate.h — the optimiser step in plain C++, with the formulas gradc_update
// compiles: what the interpreter backend runs, and the reference the compiled step is tested
// against.
#pragma once

#include <cmath>
#include <cstdint>

namespace gradc {

/// `h`: method (0 SGD, 1 SGD with momentum, 2 Adam), lr, weight decay, momentum, dampening,
/// nesterov, beta1, beta2, eps, 1 - beta1^t, sqrt(1 - beta2^t) (hyperParameters() in
/// runtime/Optimizer.h gives them).
/// The step over [begin, end), in T's precision, exactly as gradc_update computes it.
template <typename T> void referenceUpdate(const double* h, T* p, const T* g, T* m, T* v, int64_t begin, int64_t end) {
    const T lr = T(h[1]), wd = T(h[2]), mom = T(h[3]), damp = T(h[4]), b1 = T(h[6]), b2 = T(h[7]), eps = T(h[8]),
            bc1 = T(h[9]), bc2 = T(h[10]);
    for (int64_t i = begin; i < end; ++i) {
        T grad = g[i] + wd * p[i];
        if (h[0] == 0) {
            p[i] -= lr * grad;
        } else if (h[0] == 1) {
            m[i] = mom * m[i] + (T(1) - damp) * grad;
            p[i] -= lr * (h[5] != 0 ? grad + mom * m[i] : m[i]);
        } else {
            m[i] = b1 * m[i] + (T(1) - b1) * grad;
            v[i] = b2 * v[i] + (T(1) - b2) * (grad * grad);
            p[i] -= (lr / bc1) * (m[i] / (std::sqrt(v[i]) / bc2 + eps));
        }
    }
}

} // namespace gradc
