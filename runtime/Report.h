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
};

/// Fills the vanishing factor and its weights' names from `params` (Stats.h's vanishingFactor).
void computeVanishingFactor(GradReport& r);

/// A terminal table, one row per tensor, readable at 100 columns.
std::string formatTable(const GradReport& r);
/// The documented JSON object (one model); several models: a JSON array of them.
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
