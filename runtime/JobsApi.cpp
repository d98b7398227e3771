// JobsApi.cpp — the public gradc/Jobs.h: the runtime's jobs (Jobs.h) with their results in
// the public types, and every internal error turned into gradc::Error.
#include "Jobs.h"
#include "PublicStats.h"
#include "ModelImpl.h"

#include <gradc/Jobs.h>

namespace gradc {
std::vector<GradsReport> grads(const GradsOptions& options) {
    return publicCall([&] {
        std::vector<GradsReport> out;
        for (const GradsModel& m : runGrads(options).models) {
            const GradReport& r = m.report;
            GradsReport p{r.model, r.batch, r.loss, m.backend, {}, {}, r.vanishingFactor, r.firstWeight, r.lastWeight, {}};
            p.throughTime = publicThroughTime(r.throughTime);
            for (auto& s : r.params) p.gradients.push_back(publicStatistics(s));
            for (auto& a : r.activations) p.activations.push_back({a.name, a.function, a.mean, a.std, a.lowGradientFraction});
            out.push_back(std::move(p));
        }
        return out;
    });
}

TrainingResult train(const TrainingOptions& options) {
    return publicCall([&] {
        TrainingRun run = runTraining(options, [](const std::string&) {});
        const TrainResult& r = run.result;
        TrainingResult out;
        out.model = run.engine->graph().model, out.parameters = run.engine->parameterCount();
        out.trainExamples = int64_t(run.data.fit.size()), out.valExamples = int64_t(run.data.val.size());
        for (const EpochRecord& e : r.epochs)
            out.epochs.push_back({e.epoch, e.step, e.trainLoss, e.valLoss, e.valAccuracy, e.seconds,
                                  e.vanishingFactor, publicThroughTime(e.throughTime)});
        out.bestEpoch = r.bestEpoch, out.bestValAccuracy = r.bestValAccuracy;
        out.testAccuracy = r.testAccuracy, out.testLoss = r.testLoss, out.seconds = r.seconds;
        out.stoppedEarly = r.stoppedEarly;
        return out;
    });
}

ActsResult acts(const ActsOptions& options) {
    return publicCall([&] {
        ActsRun run = runActs(options);
        ActsResult out{run.model, run.examples, {}};
        for (auto& [op, s] : run.layers) out.layers.push_back({op, publicStatistics(s)});
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
