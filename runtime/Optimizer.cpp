// Optimizer.cpp — torch.optim's hyper-parameters for the compiled step.
#include "Optimizer.h"

#include "Source.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace gradc {

Hyper hyperParameters(const OptimizerOptions& o, int64_t t) {
    // In the order the command line's options are read; `flag` is the command line's message.
    auto check = [](bool ok, auto message, auto flag) { // messages formatted only for a bad option
        if (!ok) throw OptionError(message(), flag());
    };
    auto nonNegative = [&](double v, const char* name, const char* what, const char* flagWhat) {
        check(std::isfinite(v) && v >= 0, [&] { return fmt::format("{} {} is not a finite number >= 0", what, v); },
              [&] { return fmt::format("--{}: {} {} is not a finite number >= 0", name, flagWhat, v); });
    };
    auto beta = [](double b) { return b >= 0 && b < 1; };
    check(o.method == "sgd" || o.method == "adam", [&] { return fmt::format("optimizer '{}' is not sgd or adam", o.method); },
          [&] { return fmt::format("--optimizer={} is not sgd or adam", o.method); });
    nonNegative(o.lr, "lr", "learning rate", "learning rate");
    nonNegative(o.momentum, "momentum", "momentum", "momentum");
    nonNegative(o.weightDecay, "weight-decay", "weight decay", "weight decay");
    check(beta(o.beta1) && beta(o.beta2), [&] { return fmt::format("Adam's betas ({}, {}) are not in [0, 1)", o.beta1, o.beta2); },
          [&] { return beta(o.beta1) ? fmt::format("--beta2: Adam's beta2 {} is not in [0, 1)", o.beta2)
                                     : fmt::format("--beta1: Adam's beta1 {} is not in [0, 1)", o.beta1); });
    nonNegative(o.eps, "eps", "eps", "Adam's eps");
    check(o.clipGradNorm == 0 || (std::isfinite(o.clipGradNorm) && o.clipGradNorm > 0),
          [&] { return fmt::format("the gradient norm's limit {} is not a finite number > 0 (0: no clipping)", o.clipGradNorm); },
          [&] { return fmt::format("--clip-grad-norm: the gradient norm's limit {} is not a finite number > 0", o.clipGradNorm); });
    // No option of their own on the command line: it says what the library says.
    auto dampening = [&] { return fmt::format("dampening {} is not between 0 and 1", o.dampening); };
    check(std::isfinite(o.dampening) && o.dampening >= 0 && o.dampening <= 1, dampening, dampening);
    auto nesterov = [] { return std::string("Nesterov momentum needs momentum > 0 and no dampening"); };
    check(!o.nesterov || (o.momentum > 0 && o.dampening == 0), nesterov, nesterov);
    Hyper h{};
    h[0] = o.method == "adam" ? 2 : o.momentum > 0 ? 1 : 0;
    h[1] = o.lr, h[2] = o.weightDecay, h[3] = o.momentum;
    h[4] = t == 1 ? 0 : o.dampening; // PyTorch starts the momentum buffer at the gradient itself
    h[5] = o.nesterov ? 1 : 0;
    h[6] = o.beta1, h[7] = o.beta2, h[8] = o.eps;
    h[9] = 1 - std::pow(o.beta1, double(t));
    h[10] = std::sqrt(1 - std::pow(o.beta2, double(t)));
    h[11] = 1; // the gradient's scale: Engine::trainStep sets the clip coefficient
    return h;
}

double clipCoefficient(double norm, double maxNorm) {
    const double coefficient = maxNorm / (norm + 1e-6);
    return std::isnan(coefficient) ? coefficient : std::min(coefficient, 1.0); // torch.clamp(max=1) keeps NaN
}

} // namespace gradc
