// Optimizer.h — the optimiser step's hyper-parameters, and a plain C++ step with the same
// formulas: the reference the compiled gradc_update is tested against, and what the
// interpreter backend runs.
#pragma once

#include "ReferenceUpdate.h"

#include <gradc/Session.h>

#include <array>
#include <cmath>
#include <cstdint>

namespace gradc {

/// method (0 SGD, 1 SGD with momentum, 2 Adam), lr, weight decay, momentum, dampening,
/// nesterov, beta1, beta2, eps, 1 - beta1^t, sqrt(1 - beta2^t): gradc_update's `hyper`
/// (referenceUpdate, ReferenceUpdate.h, documents its use).
using Hyper = std::array<double, 11>;

template <typename T> void referenceUpdate(const Hyper& h, T* p, const T* g, T* m, T* v, int64_t begin, int64_t end) {
    referenceUpdate(h.data(), p, g, m, v, begin, end);
}

/// Checks the options (a UserError for a bad one) and gives the hyper-parameters of step
/// `t` (1, 2, ...).
Hyper hyperParameters(const OptimizerOptions& o, int64_t t);

} // namespace gradc
