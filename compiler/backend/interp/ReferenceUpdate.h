// ReferenceUpdate.h — the optimiser step in plain C++, with the formulas gradc_update
// compiles: what the interpreter backend runs, and the reference the compiled step is tested
// against.
#pragma once

#include "EntryAbi.h"

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace gradc {

/// The step over [begin, end), in T's precision, exactly as gradc_update computes it. `h`:
/// gradc_update's hyper-parameters, in HyperSlot order (EntryAbi.h; hyperParameters() in
/// runtime/Optimizer.h gives them).
template <typename T> void referenceUpdate(const double* h, T* p, const T* g, T* m, T* v, int64_t begin, int64_t end) {
    auto at = [h](HyperSlot s) { return h[size_t(s)]; };
    const T lr = T(at(HyperSlot::Lr)), wd = T(at(HyperSlot::WeightDecay)), mom = T(at(HyperSlot::Momentum)),
            damp = T(at(HyperSlot::Dampening)), b1 = T(at(HyperSlot::Beta1)), b2 = T(at(HyperSlot::Beta2)),
            eps = T(at(HyperSlot::Eps)), bc1 = T(at(HyperSlot::BiasCorrection1)),
            bc2 = T(at(HyperSlot::BiasCorrection2Sqrt)), scale = T(at(HyperSlot::GradScale));
    const double method = at(HyperSlot::Method);
    const bool nesterov = at(HyperSlot::Nesterov) != 0;
    for (int64_t i = begin; i < end; ++i) {
        T grad = g[i] * scale + wd * p[i]; // clip_grad_norm_'s coefficient (1 without), then weight decay
        if (method == double(OptimizerMethod::Sgd)) {
            p[i] -= lr * grad;
        } else if (method == double(OptimizerMethod::SgdMomentum)) {
            m[i] = mom * m[i] + (T(1) - damp) * grad;
            p[i] -= lr * (nesterov ? grad + mom * m[i] : m[i]);
        } else { // Adam
            m[i] = b1 * m[i] + (T(1) - b1) * grad;
            v[i] = b2 * v[i] + (T(1) - b2) * (grad * grad);
            p[i] -= (lr / bc1) * (m[i] / (std::sqrt(v[i]) / bc2 + eps));
        }
    }
}

} // namespace gradc
