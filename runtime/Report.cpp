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

std::string formatTable(const GradReport& r) {
    std::string out = fmt::format("loss {:.6f}\n\n", r.loss);
    // The name and shape columns widen to their longest entry ([64,32,3,3], shortcut2_bn.weight).
    size_t wName = 18, wShape = 10;
    for (auto& st : r.params) {
        wName = std::max(wName, st.name.size());
        wShape = std::max(wShape, shapeString(st.shape).size());
    }
    for (auto& a : r.activations) wName = std::max(wName, a.name.size());
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
        all.push_back({{"model", r.model}, {"batch", r.batch}, {"loss", jsonNumber(r.loss)},
                       {"params", params}, {"activations", acts},
                       {"vanishing_factor", jsonNumber(r.vanishingFactor)}});
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
