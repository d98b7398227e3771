// Report.h — the results of `gradc grads` for one model, and their three formats.
#pragma once

#include "Stats.h"

#include <gradc/Jobs.h>

#include <string>
#include <vector>

namespace gradc {

struct GradReport {
    std::string model;
    int64_t batch = 0;
    double loss = 0;
    std::vector<TensorStats> params; ///< gradient statistics, in parameter order
    std::vector<ActivationStats> activations;
    double vanishingFactor = 0;      ///< abs_mean(first weight grad) / abs_mean(last); NaN if < 2 weights
    std::string firstWeight, lastWeight;
    std::vector<ThroughTime> throughTime; ///< one per recurrent layer, in layer order
};

/// Fills the vanishing factor and its weights' names from `params` (Stats.h's vanishingFactor).
void computeVanishingFactor(GradReport& r);

/// At most `columns` block characters (▁ to █) drawing `norms` on a log scale: t in equal
/// buckets (one step a column when there are few), each bucket's geometric mean, the
/// smallest positive bucket ▁ and the largest █. A bucket with a zero is a space, one with a
/// NaN or Inf '?'.
struct Sparkline {
    std::string text;
    /// The scale: the bucket means that ▁ and █ stand for (with more steps than columns, not
    /// the smallest and largest norm); lo > hi when no bucket is positive.
    double lo = 0, hi = -1;
};
Sparkline sparkline(const std::vector<double>& norms, size_t columns = 40);

/// A terminal table, one row per tensor, readable at 100 columns; a recurrent model's has a
/// section "through time", one line per recurrent layer.
std::string formatTable(const GradReport& r);
/// The documented JSON object (one model); several models: a JSON array of them. A recurrent
/// model's has "through_time": [{"layer", "cell", "grad_norm": [T numbers],
/// "vanishing_factor"}] (a figure that is not finite as null); other models' have no such key.
std::string formatJson(const std::vector<GradReport>& reports);
/// `gradc acts --format json`: {"model", "examples", "layers": [{"name", "op", "shape",
/// "count", "mean", "variance", "std", "min", "max", "zero_fraction", "nan", "inf",
/// "histogram": {"edges", "counts"}}]}, a figure that is not finite as null.
std::string formatLayersJson(const std::string& model, int64_t examples,
                             const std::vector<std::pair<std::string, TensorStats>>& layers);
/// `gradc dead --format json`: {"model", "images", "layers": [{"name", "activation", "shape"
/// (one example's: [32,28,28]), "unit" ("unit" or "channel"), "units", "dead", "dead_fraction"}]}.
std::string formatDeadJson(const DeadResult& r);
/// One CSV header line (RFC 4180: a name holding a comma, quote, CR or LF is quoted), then one row per tensor of every model.
std::string formatCsv(const std::vector<GradReport>& reports);

} // namespace gradc
