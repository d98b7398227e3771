// JobsApi.cpp — the public gradc/Jobs.h: the runtime's jobs (Jobs.h) with their results in
// the public types, and every internal error turned into gradc::Error.
#include "Jobs.h"
#include "ModelImpl.h"

#include <gradc/Jobs.h>

namespace gradc {
namespace {

template <typename Out> Out publicStatistics(const TensorStats& t) {
    return {t.name, t.shape, t.count, t.mean, t.std, t.absMean, t.min, t.max, t.l2, t.zeroFraction,
            t.nan, t.inf, t.edges, t.counts};
}

} // namespace

std::vector<GradsReport> grads(const GradsOptions& options) {
    return publicCall([&] {
        std::vector<GradsReport> out;
        for (const GradsModel& m : runGrads(options).models) {
            const GradReport& r = m.report;
            GradsReport p{r.model, r.batch, r.loss, m.backend, {}, {}, r.vanishingFactor, r.firstWeight, r.lastWeight};
            for (auto& s : r.params) p.gradients.push_back(publicStatistics<GradientStatistics>(s));
            for (auto& a : r.activations) p.activations.push_back({a.name, a.function, a.mean, a.std, a.lowGradientFraction});
            out.push_back(std::move(p));
        }
        return out;
    });
}

ActsResult acts(const ActsOptions& options) {
    return publicCall([&] {
        ActsRun run = runActs(options);
        ActsResult out{run.model, run.examples, {}};
        for (auto& [op, s] : run.layers) out.layers.push_back({op, publicStatistics<TensorStatistics>(s)});
        return out;
    });
}

DeadResult dead(const DeadOptions& options) {
    return publicCall([&] { return runDead(options); });
}

BenchResult bench(const BenchOptions& options) {
    return publicCall([&] { return runBench(options); });
}

} // namespace gradc
