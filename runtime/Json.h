// Json.h — the one JSON writer of gradc's outputs (grads and acts reports, the training log,
// the safetensors header): how a figure that may not be finite, a tensor's statistics and
// the text itself are written. Names that are not UTF-8 (a model named after its file may
// hold any bytes) become U+FFFD, never an exception.
#pragma once

#include "Stats.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <string>

namespace gradc {

/// A figure that may not be finite: JSON has no NaN or Inf, so those are null (the nan and
/// inf counts beside it say how many entries were left out).
template <typename J = nlohmann::json> J jsonNumber(double v) { return std::isfinite(v) ? J(v) : J(nullptr); }

/// {"edges", "counts"} of a statistics' histogram.
template <typename J = nlohmann::json> J jsonHistogram(const TensorStats& s) {
    J edges = J::array();
    for (double e : s.edges) edges.push_back(jsonNumber<J>(e));
    return {{"edges", edges}, {"counts", s.counts}};
}

/// A tensor's statistics: name, shape, [count,] mean, std, abs_mean, min, max, l2,
/// zero_fraction, nan, inf[, histogram] (with `full`, the bracketed ones too), in this order
/// for an ordered_json.
template <typename J = nlohmann::json> J jsonStatistics(const TensorStats& s, bool full) {
    J j;
    j["name"] = s.name, j["shape"] = s.shape;
    if (full) j["count"] = s.count;
    j["mean"] = jsonNumber<J>(s.mean), j["std"] = jsonNumber<J>(s.std), j["abs_mean"] = jsonNumber<J>(s.absMean);
    j["min"] = jsonNumber<J>(s.min), j["max"] = jsonNumber<J>(s.max), j["l2"] = jsonNumber<J>(s.l2);
    j["zero_fraction"] = jsonNumber<J>(s.zeroFraction), j["nan"] = s.nan, j["inf"] = s.inf;
    if (full) j["histogram"] = jsonHistogram<J>(s);
    return j;
}

/// Recurrent layers' gradients through time: [{"layer", "cell", "grad_norm": [T numbers],
/// "vanishing_factor"}], in this order for an ordered_json; a figure that is not finite as null.
template <typename J = nlohmann::json> J jsonThroughTime(const std::vector<ThroughTime>& layers) {
    J out = J::array();
    for (const ThroughTime& t : layers) {
        J norms = J::array();
        for (double v : t.norms)
            norms.push_back(jsonNumber<J>(v));
        J j;
        j["layer"] = t.layer, j["cell"] = t.cell, j["grad_norm"] = norms;
        j["vanishing_factor"] = jsonNumber<J>(t.vanishingFactor);
        out.push_back(j);
    }
    return out;
}

/// Indented by two spaces, with a final newline (the reports).
std::string jsonText(const nlohmann::json& j);
/// On one line, no final newline (a JSON-lines record gets its newline from the caller).
std::string jsonLine(const nlohmann::ordered_json& j);

} // namespace gradc
