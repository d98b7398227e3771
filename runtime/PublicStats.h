// PublicStats.h — the runtime's statistics in the public API's form (gradc/Session.h), for
// the two files behind libgradc's API: Session.cpp and JobsApi.cpp.
#pragma once

#include "Stats.h"

#include <gradc/Session.h>

namespace gradc {

inline TensorStatistics publicStatistics(const TensorStats& t) {
    return {t.name, t.shape, t.count, t.mean, t.std, t.absMean, t.min, t.max, t.l2, t.zeroFraction,
            t.nan, t.inf, t.edges, t.counts};
}

inline std::vector<ThroughTimeStatistics>
publicThroughTime(const std::vector<ThroughTime>& layers) {
    std::vector<ThroughTimeStatistics> out;
    for (const ThroughTime& t : layers)
        out.push_back({t.layer, t.cell, t.norms, t.vanishingFactor});
    return out;
}

} // namespace gradc
