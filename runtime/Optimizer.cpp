// Optimizer.cpp — torch.optim's hyper-parameters for the compiled step.
#include "Optimizer.h"

#include "Source.h"

#include <fmt/format.h>

namespace gradc {

Hyper hyperParameters(const OptimizerOptions& o, int64_t t) {
    auto check = [](bool ok, const std::string& what) {
        if (!ok) throw UserError({}, what);
    };
    check(o.method == "sgd" || o.method == "adam", fmt::format("optimizer '{}' is not sgd or adam", o.method));
    check(std::isfinite(o.lr) && o.lr >= 0, fmt::format("learning rate {} is not a finite number >= 0", o.lr));
    check(std::isfinite(o.weightDecay) && o.weightDecay >= 0,
          fmt::format("weight decay {} is not a finite number >= 0", o.weightDecay));
    check(std::isfinite(o.momentum) && o.momentum >= 0, fmt::format("momentum {} is not a finite number >= 0", o.momentum));
    check(std::isfinite(o.dampening) && o.dampening >= 0 && o.dampening <= 1,
          fmt::format("dampening {} is not between 0 and 1", o.dampening));
    check(!o.nesterov || (o.momentum > 0 && o.dampening == 0), "Nesterov momentum needs momentum > 0 and no dampening");
    check(o.beta1 >= 0 && o.beta1 < 1 && o.beta2 >= 0 && o.beta2 < 1,
          fmt::format("Adam's betas ({}, {}) are not in [0, 1)", o.beta1, o.beta2));
    check(std::isfinite(o.eps) && o.eps >= 0, fmt::format("eps {} is not a finite number >= 0", o.eps));
    Hyper h{};
    h[0] = o.method == "adam" ? 2 : o.momentum > 0 ? 1 : 0;
    h[1] = o.lr, h[2] = o.weightDecay, h[3] = o.momentum;
    h[4] = t == 1 ? 0 : o.dampening; // PyTorch starts the momentum buffer at the gradient itself
    h[5] = o.nesterov ? 1 : 0;
    h[6] = o.beta1, h[7] = o.beta2, h[8] = o.eps;
    h[9] = 1 - std::pow(o.beta1, double(t));
    h[10] = std::sqrt(1 - std::pow(o.beta2, double(t)));
    return h;
}

} // namespace gradc
