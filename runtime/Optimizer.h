// Optimizer.h — the optimiser step's hyper-parameters, and a plain C++ step with the same
// formulas: the reference the compiled gradc_update is tested against, and what the
// interpreter backend runs.
#pragma once

#include "ReferenceUpdate.h"
#include "Source.h"

#include <gradc/Session.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

namespace gradc {

/// An option of the optimiser or of a job (checkJobOptions, Jobs.h) out of its range. what() is
/// the library's message ("0 epochs is out of range (1 to 100000)"); `flag` is the command
/// line's, which names the option as it is spelled there ("--epochs 0 is out of range (1 to
/// 100000)") and which the command prints as a usage mistake.
struct OptionError : UserError {
    OptionError(const std::string& message, std::string flag) : UserError({}, message), flag(std::move(flag)) {}
    std::string flag;
};

/// method (0 SGD, 1 SGD with momentum, 2 Adam), lr, weight decay, momentum, dampening,
/// nesterov, beta1, beta2, eps, 1 - beta1^t, sqrt(1 - beta2^t), the gradient's scale:
/// gradc_update's `hyper` (referenceUpdate, ReferenceUpdate.h, documents its use).
using Hyper = std::array<double, 12>;

template <typename T> void referenceUpdate(const Hyper& h, T* p, const T* g, T* m, T* v, int64_t begin, int64_t end) {
    referenceUpdate(h.data(), p, g, m, v, begin, end);
}

/// Checks the options (an OptionError for a bad one) and gives the hyper-parameters of step
/// `t` (1, 2, ...), with the gradient's scale 1.
Hyper hyperParameters(const OptimizerOptions& o, int64_t t);

/// torch.nn.utils.clip_grad_norm_'s coefficient (PyTorch 1.13) for the total 2-norm `norm` of
/// the gradients and `maxNorm` > 0: maxNorm / (norm + 1e-6), clamped to at most 1; NaN stays
/// NaN (an infinite norm gives 0). The gradients are multiplied by it, also when it is 1.
double clipCoefficient(double norm, double maxNorm);

} // namespace gradc
