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
    double sum = 0, sumAbs = 0, sumSq = 0, smallest = std::numeric_limits<double>::infinity();
    int64_t finite = 0, small = 0;
    s.min = std::numeric_limits<double>::infinity();
    s.max = -s.min;
    for (double v : values) {
        if (std::isnan(v)) { ++s.nan; continue; }
        if (std::isinf(v)) { ++s.inf; continue; }
        ++finite;
        sum += v, sumAbs += std::fabs(v), sumSq += v * v;
        if (v != 0) smallest = std::min(smallest, std::fabs(v));
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
    // The tenth-decade bins from the smallest |g| that is not zero to the largest.
    auto logBin = [](double a) { return int(std::floor(std::log10(a) * TensorStats::kLogPerDecade)); };
    if (std::isfinite(smallest)) {
        s.logFirst = logBin(smallest);
        s.logCounts.assign(size_t(logBin(std::max(std::fabs(s.min), std::fabs(s.max))) - s.logFirst + 1), 0);
    }
    for (double v : values) {
        if (!std::isfinite(v)) continue;
        int b = width > 0 ? int((v - s.min) / width) : 0;
        s.counts[size_t(std::clamp(b, 0, bins - 1))]++;
        if (v == 0) {
            ++s.zeros;
            continue;
        }
        const int lb = logBin(std::fabs(v)) - s.logFirst;
        s.logCounts[size_t(std::clamp(lb, 0, int(s.logCounts.size()) - 1))]++;
    }
    return s;
}

template TensorStats statistics<float>(const std::string&, const Shape&, const float*, int);
template TensorStats statistics<double>(const std::string&, const Shape&, const double*, int);

ActivationStats activationStatistics(const std::string& name, const Activation& f, const Tensor& preactivation) {
    ActivationStats s;
    s.name = name, s.function = f.name, s.shape = preactivation.shape;
    scalar::Evaluator fx(f.formula), dfx(f.derivative ? f.derivative : scalar::derivative(f.formula));
    // Welford's running mean and sum of squared deviations: a conv layer's millions of values
    // lose nothing to cancellation (sum of squares minus the squared mean would).
    double mean = 0, squares = 0;
    int64_t finite = 0, low = 0;
    for (double x : preactivation.data) {
        double y = fx(x);
        if (std::isnan(y)) { ++s.nan; continue; }
        if (std::isinf(y)) { ++s.inf; continue; }
        ++finite;
        const double delta = y - mean;
        mean += delta / double(finite);
        squares += delta * (y - mean);
        low += std::fabs(dfx(x)) < 0.01;
    }
    if (finite == 0) {
        s.mean = s.std = s.lowGradientFraction = std::nan("");
        return s;
    }
    s.mean = mean;
    s.std = std::sqrt(std::max(0.0, squares / double(finite)));
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

UnitMask::UnitMask(const Shape& shape) {
    channels_ = shape.size() == 4;
    positions_ = channels_ ? shape[2] * shape[3] : 1;
    alive_.assign(size_t(channels_ ? shape[1] : perExample(shape)), 0);
}

template <typename T> void UnitMask::add(const T* values, int64_t rows) {
    const size_t units = alive_.size(), positions = size_t(positions_);
    for (int64_t r = 0; r < rows; ++r)
        for (size_t u = 0; u < units; ++u) {
            const T* v = values + (size_t(r) * units + u) * positions;
            if (alive_[u]) continue;
            for (size_t p = 0; p < positions; ++p)
                if (v[p] != T(0)) {
                    alive_[u] = 1;
                    break;
                }
        }
}
template void UnitMask::add(const float*, int64_t);
template void UnitMask::add(const double*, int64_t);

int64_t UnitMask::dead() const { return int64_t(std::count(alive_.begin(), alive_.end(), 0)); }

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

PositiveRange& PositiveRange::add(const std::vector<double>& values) {
    for (double v : values)
        if (std::isfinite(v) && v > 0) lo = std::min(lo, v), hi = std::max(hi, v);
    return *this;
}

ThroughTime throughTime(const std::string& layer, const std::string& cell,
                        std::vector<double> norms) {
    ThroughTime t;
    t.layer = layer, t.cell = cell, t.norms = std::move(norms);
    // 0/0 and x/0 say nothing about decay: no factor (NaN) when the last step has no gradient,
    // or one that is not finite.
    const bool defined = !t.norms.empty() && std::isfinite(t.norms.back()) && t.norms.back() != 0;
    t.vanishingFactor = defined ? t.norms.front() / t.norms.back() : std::nan("");
    return t;
}

std::string cellDescription(const Node& scan) {
    internal_assert(scan.op == Op::Scan, "cellDescription of a node that is not a scan");
    if (scan.cell != Cell::Rnn) return cellName(scan.cell);
    // rnn's non-linearity is tanh or relu, which Layers.cpp builds as select(x <= 0, 0, x):
    // anything else is a cell this report cannot name, not a relu.
    using scalar::Kind;
    const scalar::Expr& f = scan.expr;
    if (f && f->op == Kind::Tanh) return "rnn tanh";
    const bool relu = f && f->op == Kind::Select && f->args[0]->op == Kind::Le &&
                      f->args[1]->op == Kind::Const && f->args[1]->value == 0 &&
                      f->args[2]->op == Kind::Arg && f->args[2]->value == 0;
    internal_assert(relu, "an rnn whose non-linearity is neither tanh nor relu");
    return "rnn relu";
}

std::vector<ThroughTime> throughTimeStatistics(const Graph& g,
                                               const std::map<std::string, Tensor>& outputs) {
    std::vector<ThroughTime> out;
    for (const LayerInfo& l : g.layers) {
        if (g[l.value].op != Op::Scan) continue;
        auto it = outputs.find(outputLabel({OutputRole::ThroughTime, l.name, 0}));
        internal_assert(it != outputs.end(),
                        "a recurrent layer without its through-time norms: " + l.name);
        out.push_back(throughTime(l.name, cellDescription(g[l.value]), it->second.data));
    }
    return out;
}

} // namespace gradc
