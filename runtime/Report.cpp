// Report.cpp — table, JSON and CSV renderings of gradient statistics.
#include "Report.h"

#include "Json.h"
#include "Text.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace gradc {

void computeVanishingFactor(GradReport& r) {
    VanishingFactor v = vanishingFactor(r.params);
    r.vanishingFactor = v.value, r.firstWeight = std::move(v.firstWeight), r.lastWeight = std::move(v.lastWeight);
}

Sparkline sparkline(const std::vector<double>& norms, size_t columns) {
    static const char* kBlocks[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
    const size_t T = norms.size(), n = std::min(T, std::max<size_t>(columns, 1));
    // Each bucket's geometric mean (the mean of the logarithms: a log-scale average), 0 when
    // it holds a zero, NaN when it holds a NaN or Inf.
    std::vector<double> bucket(n);
    for (size_t k = 0; k < n; ++k) {
        const size_t begin = k * T / n, end = (k + 1) * T / n;
        double logs = 0;
        bool zero = false, bad = false;
        for (size_t t = begin; t < end; ++t) {
            const double v = std::fabs(norms[t]);
            if (!std::isfinite(v))
                bad = true;
            else if (v == 0)
                zero = true;
            else
                logs += std::log(v);
        }
        // A bucket of one step is that step's norm, exactly (exp(log(v)) may differ in the last
        // bit).
        bucket[k] = bad                ? std::nan("")
                    : zero             ? 0.0
                    : end - begin == 1 ? std::fabs(norms[begin])
                                       : std::exp(logs / double(end - begin));
    }
    Sparkline out;
    const PositiveRange range = PositiveRange().add(bucket);
    if (!range.empty()) out.lo = range.lo, out.hi = range.hi;
    for (double v : bucket) {
        if (std::isnan(v)) {
            out.text += "?";
            continue;
        }
        if (v <= 0) {
            out.text += " ";
            continue;
        }
        const double span = std::log(range.hi) - std::log(range.lo);
        const int level =
            span > 0 ? int(std::lround((std::log(v) - std::log(range.lo)) / span * 7)) : 7;
        out.text += kBlocks[std::clamp(level, 0, 7)];
    }
    return out;
}

std::string formatTable(const GradReport& r) {
    std::string out = fmt::format("loss {:.6f}\n\n", r.loss);
    // The name and shape columns widen to their longest entry ([64,32,3,3], shortcut2_bn.weight).
    size_t wName = 18, wShape = 10;
    for (auto& st : r.params) {
        wName = std::max(wName, st.name.size());
        wShape = std::max(wShape, shapeString(st.shape).size());
    }
    for (auto& a : r.activations) wName = std::max(wName, a.name.size());
    for (auto& t : r.throughTime) wName = std::max(wName, t.layer.size());
    out += fmt::format("  {:<{}} {:<{}} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}\n", "gradient", wName,
                       "shape", wShape, "abs_mean", "std", "min", "max", "l2", "zero%");
    for (auto& st : r.params) {
        out += fmt::format("  {:<{}} {:<{}} {:>10.3e} {:>10.3e} {:>10.3e} {:>10.3e} {:>10.3e} {:>6.2f}%",
                           st.name, wName, shapeString(st.shape), wShape, st.absMean, st.std, st.min, st.max,
                           st.l2, 100 * st.zeroFraction);
        if (st.nan || st.inf) out += fmt::format("  nan {} inf {}", st.nan, st.inf);
        out += "\n";
    }
    if (!r.activations.empty()) {
        out += fmt::format("\n  {:<{}} {:<16} {:>10} {:>10} {:>10}\n", "activation", wName, "function", "mean", "std",
                           "|f'|<0.01");
        for (auto& a : r.activations) {
            out += fmt::format("  {:<{}} {:<16} {:>10.3e} {:>10.3e} {:>9.2f}%", a.name, wName, a.function, a.mean, a.std,
                               100 * a.lowGradientFraction);
            if (a.nan || a.inf) out += fmt::format("  nan {} inf {}", a.nan, a.inf);
            out += "\n";
        }
    }
    if (!r.throughTime.empty()) {
        // ‖dL/dh_t‖ at the first and last steps and their ratio; under them the whole curve in
        // small with its scale (on a line of its own: the table stays within 100 columns).
        out += fmt::format("\n  {:<{}} {:<9} {:>6} {:>10} {:>10} {:>10}\n", "through time", wName,
                           "cell", "steps", "first", "last", "factor");
        for (auto& t : r.throughTime) {
            const Sparkline line = sparkline(t.norms);
            // No factor is NaN, spelled "nan" as the rest of the table spells it.
            const double first = t.norms.empty() ? std::nan("") : t.norms.front();
            const double last = t.norms.empty() ? std::nan("") : t.norms.back();
            out += fmt::format("  {:<{}} {:<9} {:>6} {:>10.3e} {:>10.3e} {:>10.3e}\n", t.layer,
                               wName, t.cell, t.norms.size(), first, last, t.vanishingFactor);
            out += "    ||dL/dh_t|| " + line.text;
            if (line.lo <= line.hi)
                out += fmt::format("  {:.1e} .. {:.1e} (log scale)", line.lo, line.hi); // ▁ .. █
            out += "\n";
        }
    }
    if (!std::isnan(r.vanishingFactor))
        out += fmt::format("\nvanishing factor {:.3e}  (abs_mean of {} / abs_mean of {})\n",
                           r.vanishingFactor, r.firstWeight, r.lastWeight);
    return out;
}

std::string formatJson(const std::vector<GradReport>& reports) {
    nlohmann::json all = nlohmann::json::array();
    for (auto& r : reports) {
        nlohmann::json params = nlohmann::json::array();
        for (auto& s : r.params) params.push_back(jsonStatistics(s, /*full=*/true));
        nlohmann::json acts = nlohmann::json::array();
        for (auto& a : r.activations)
            acts.push_back({{"name", a.name}, {"function", a.function}, {"shape", a.shape},
                            {"mean", jsonNumber(a.mean)}, {"std", jsonNumber(a.std)},
                            {"low_gradient_fraction", jsonNumber(a.lowGradientFraction)}, {"nan", a.nan},
                            {"inf", a.inf}});
        nlohmann::json model = {
            {"model", r.model},           {"batch", r.batch},
            {"loss", jsonNumber(r.loss)}, {"params", params},
            {"activations", acts},        {"vanishing_factor", jsonNumber(r.vanishingFactor)}};
        if (!r.throughTime.empty()) model["through_time"] = jsonThroughTime(r.throughTime);
        all.push_back(std::move(model));
    }
    return jsonText(all.size() == 1 ? all[0] : all);
}

std::string formatLayersJson(const std::string& model, int64_t examples,
                             const std::vector<std::pair<std::string, TensorStats>>& layers) {
    nlohmann::json out = nlohmann::json::array();
    for (auto& [op, s] : layers)
        out.push_back({{"name", s.name}, {"op", op}, {"shape", s.shape}, {"count", s.count},
                       {"mean", jsonNumber(s.mean)}, {"variance", jsonNumber(s.std * s.std)}, {"std", jsonNumber(s.std)},
                       {"min", jsonNumber(s.min)}, {"max", jsonNumber(s.max)}, {"zero_fraction", jsonNumber(s.zeroFraction)},
                       {"nan", s.nan}, {"inf", s.inf}, {"histogram", jsonHistogram(s)}});
    return jsonText({{"model", model}, {"examples", examples}, {"layers", out}});
}

std::string formatDeadJson(const DeadResult& r) {
    nlohmann::json layers = nlohmann::json::array();
    for (const DeadLayer& l : r.layers)
        layers.push_back({{"name", l.name}, {"activation", l.activation}, {"shape", l.shape}, {"unit", l.unit},
                          {"units", l.units}, {"dead", l.dead},
                          {"dead_fraction", jsonNumber(l.units ? double(l.dead) / double(l.units) : 0.0)}});
    return jsonText({{"model", r.model}, {"images", r.images}, {"layers", layers}});
}

std::string formatCsv(const std::vector<GradReport>& reports) {
    std::string out = "model,tensor,shape,count,mean,std,abs_mean,min,max,l2,zero_fraction,nan,inf\n";
    for (auto& r : reports)
        for (auto& s : r.params) {
            std::string shape;
            for (size_t i = 0; i < s.shape.size(); ++i) shape += fmt::format("{}{}", i ? "x" : "", s.shape[i]);
            out += fmt::format("{},{},{},{},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6f},{},{}\n",
                               csvField(r.model), csvField(s.name), shape, s.count, s.mean, s.std, s.absMean, s.min,
                               s.max, s.l2, s.zeroFraction, s.nan, s.inf);
        }
    return out;
}

} // namespace gradc
