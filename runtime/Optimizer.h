// Optimizer.h — the optimiser step's hyper-parameters, and a plain C++ step with the same
// formulas: the reference the compiled gradc_update is tested against, and what the
// interpreter backend runs.
#pragma once

#include <gradc/Session.h>

#include <array>
#include <cmath>
#include <cstdint>

namespace gradc {

/// method (0 SGD, 1 SGD with momentum, 2 Adam), lr, weight decay, momentum, dampening,
/// nesterov, beta1, beta2, eps, 1 - beta1^t, sqrt(1 - beta2^t): gradc_update's `hyper`.
using Hyper = std::array<double, 11>;

/// Checks the options (a UserError for a bad one) and gives the hyper-parameters of step
/// `t` (1, 2, ...).
Hyper hyperParameters(const OptimizerOptions& o, int64_t t);

/// The step over [begin, end), in T's precision, exactly as gradc_update computes it.
template <typename T> void referenceUpdate(const Hyper& h, T* p, const T* g, T* m, T* v, int64_t begin, int64_t end) {
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
