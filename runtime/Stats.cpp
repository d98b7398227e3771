// Stats.cpp — one pass for the moments, one for the histogram.
#include "Stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>

namespace gradc {

TensorStats statistics(const std::string& name, const Tensor& t, int bins) {
    return statistics(name, t.shape, t.data.data(), bins);
}

template <typename T>
TensorStats statistics(const std::string& name, const Shape& shape, const T* data, int bins) {
    const std::span<const T> values(data, size_t(elementCount(shape)));
    TensorStats s;
    s.name = name, s.shape = shape, s.count = int64_t(values.size());
    double sum = 0, sumAbs = 0, sumSq = 0;
    int64_t finite = 0, small = 0;
    s.min = std::numeric_limits<double>::infinity();
    s.max = -s.min;
    for (double v : values) {
        if (std::isnan(v)) { ++s.nan; continue; }
        if (std::isinf(v)) { ++s.inf; continue; }
        ++finite;
        sum += v, sumAbs += std::fabs(v), sumSq += v * v;
        small += std::fabs(v) < 1e-8;
        s.min = std::min(s.min, v), s.max = std::max(s.max, v);
    }
    if (finite == 0) {
        s.min = s.max = std::nan("");
        s.mean = s.std = s.absMean = s.l2 = std::nan("");
        return s;
    }
    s.mean = sum / double(finite);
    s.absMean = sumAbs / double(finite);
    s.l2 = std::sqrt(sumSq);
    double var = 0;
    for (double v : values)
        if (std::isfinite(v)) var += (v - s.mean) * (v - s.mean);
    s.std = std::sqrt(var / double(finite));
    s.zeroFraction = double(small) / double(finite);
    s.edges.resize(size_t(bins) + 1);
    s.counts.assign(size_t(bins), 0);
    double width = (s.max - s.min) / bins;
    for (int i = 0; i <= bins; ++i) s.edges[size_t(i)] = s.min + width * i;
    s.edges.back() = s.max;
    for (double v : values) {
        if (!std::isfinite(v)) continue;
        int b = width > 0 ? int((v - s.min) / width) : 0;
        s.counts[size_t(std::clamp(b, 0, bins - 1))]++;
    }
    return s;
}

template TensorStats statistics<float>(const std::string&, const Shape&, const float*, int);
template TensorStats statistics<double>(const std::string&, const Shape&, const double*, int);

ActivationStats activationStatistics(const std::string& name, const Activation& f, const Tensor& preactivation) {
    ActivationStats s;
    s.name = name, s.function = f.name, s.shape = preactivation.shape;
    scalar::Evaluator fx(f.formula), dfx(f.derivative ? f.derivative : scalar::derivative(f.formula));
    double sum = 0, sumSq = 0;
    int64_t finite = 0, low = 0;
    for (double x : preactivation.data) {
        double y = fx(x);
        if (std::isnan(y)) { ++s.nan; continue; }
        if (std::isinf(y)) { ++s.inf; continue; }
        ++finite;
        sum += y, sumSq += y * y;
        low += std::fabs(dfx(x)) < 0.01;
    }
    if (finite == 0) {
        s.mean = s.std = s.lowGradientFraction = std::nan("");
        return s;
    }
    s.mean = sum / double(finite);
    s.std = std::sqrt(std::max(0.0, sumSq / double(finite) - s.mean * s.mean));
    s.lowGradientFraction = double(low) / double(finite);
    return s;
}

template <typename T> std::vector<TensorStats> gradientStatistics(const Layout& layout, const T* grads) {
    std::vector<TensorStats> out;
    for (const LayoutEntry* g : layout.all(Role::Gradient)) out.push_back(statistics(g->name, g->shape, grads + g->offset));
    return out;
}
template std::vector<TensorStats> gradientStatistics(const Layout&, const float*);
template std::vector<TensorStats> gradientStatistics(const Layout&, const double*);

VanishingFactor vanishingFactor(const std::vector<TensorStats>& gradients) {
    std::vector<const TensorStats*> weights;
    for (auto& s : gradients)
        if (isWeight(s.shape)) weights.push_back(&s);
    if (weights.size() < 2) return {std::nan(""), "", ""};
    return {weights.front()->absMean / weights.back()->absMean, weights.front()->name, weights.back()->name};
}

std::vector<ActivationStats> activationStatistics(const Graph& g, const std::map<std::string, Tensor>& outputs) {
    std::vector<ActivationStats> out;
    for (auto& o : g.outputs) {
        if (o.role != OutputRole::Preact) continue;
        for (auto& l : g.layers)
            if (l.name == o.name && isActivation(g[l.value]))
                out.push_back(activationStatistics(o.name, g.activations[size_t(g[l.value].fn)], outputs.at(outputLabel(o))));
    }
    return out;
}

} // namespace gradc
