// Train.cpp — the training loop (see Train.h).
#include "Train.h"

#include "Cluster.h"

#include "Events.h"
#include "Files.h"
#include "Json.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <memory>

namespace gradc {

volatile std::sig_atomic_t gInterrupted = 0;

DataSplit loadSplit(const std::string& dir, int64_t val, double mean, double std, int64_t limit) {
    DataSplit d;
    const int64_t all = -1; // readExamples: every example of the file
    d.train = readExamples(dir, true, limit > 0 ? std::min(limit, exampleCount(dir, true)) : all);
    d.test = readExamples(dir, false, limit > 0 ? std::min(limit, exampleCount(dir, false)) : all);
    d.mean = mean, d.std = std;
    auto fail = [](const std::string& file, const std::string& msg) {
        throw UserError({makeSourceFile(file, ""), 0, 0}, msg);
    };
    if (d.train.count == 0) fail(d.train.imageFile, "the training set is empty: the file holds no images");
    if (d.test.count == 0) fail(d.test.imageFile, "the test set is empty: the file holds no images");
    if (d.test.features != d.train.features)
        fail(d.test.imageFile, fmt::format("the test images have {} pixels, but the training images in {} have {}",
                                           d.test.features, d.train.imageFile, d.train.features));
    if (val < 0 || val >= d.train.count)
        throw UserError({}, fmt::format("--val {} leaves no training examples of the {} read: pass a smaller --val "
                                        "(with --limit and no --val, a sixth of the images read is held out)",
                                        val, d.train.count));
    std::vector<int64_t> order = permutation(d.train.count, 42);
    d.fit.assign(order.begin(), order.end() - val);
    d.val.assign(order.end() - val, order.end());
    return d;
}

void checkSplit(const Engine& engine, const DataSplit& data) {
    const Graph& g = engine.graph();
    const int64_t inputs = perExample(g[0].shape), classes = g[g.output(OutputRole::Logits)].shape[1];
    checkExamples(data.train, inputs, classes); // the training and validation examples
    checkExamples(data.test, inputs, classes);
    for (auto* part : {&data.fit, &data.val})
        for (int64_t i : *part)
            internal_assert(i >= 0 && i < data.train.count, "a split index outside the training examples");
    if (data.val.empty()) throw UserError({}, "no validation examples: --val must be at least 1");
    if (data.test.count == 0) throw UserError({makeSourceFile(data.test.imageFile, ""), 0, 0}, "the test set is empty");
}

template <typename T>
void gather(const Examples& e, const std::vector<int64_t>& indices, size_t begin, int64_t batch, double mean,
            double std, std::vector<T>& x, std::vector<int32_t>& labels) {
    const size_t F = size_t(e.features);
    T value[256]; // every pixel value, normalised once
    for (int p = 0; p < 256; ++p) value[p] = T((p / 255.0 - mean) / std);
    x.assign(size_t(batch) * F, T(0));
    labels.assign(size_t(batch), 0);
    for (size_t r = 0; r < size_t(batch) && begin + r < indices.size(); ++r) {
        const size_t k = size_t(indices[begin + r]);
        const uint8_t* p = e.pixels.data() + k * F;
        for (size_t i = 0; i < F; ++i) x[r * F + i] = value[p[i]];
        labels[r] = e.labels[k];
    }
}

template void gather(const Examples&, const std::vector<int64_t>&, size_t, int64_t, double, double,
                     std::vector<float>&, std::vector<int32_t>&);
template void gather(const Examples&, const std::vector<int64_t>&, size_t, int64_t, double, double,
                     std::vector<double>&, std::vector<int32_t>&);

namespace {

/// evaluate() with inputs and logits in T, the engine's element type.
template <typename T>
Accuracy evaluateAs(Engine& engine, const Examples& e, const std::vector<int64_t>& indices, double mean, double std) {
    const int64_t B = engine.batch();
    const int64_t C = engine.graph()[engine.graph().output(OutputRole::Logits)].shape[1];
    std::vector<T> x, logits(size_t(B * C));
    std::vector<int32_t> labels;
    double sums[2] = {0, 0}; // the loss and the correct answers
    double& loss = sums[0];
    int64_t correct = 0;
    // The batches shared among the processes of a data-parallel run, then the sums added up.
    const size_t first = size_t(cluster::rank()) * size_t(B), stride = size_t(B) * size_t(cluster::size());
    for (size_t begin = first; begin < indices.size(); begin += stride) {
        gather(e, indices, begin, B, mean, std, x, labels);
        engine.evaluate(x.data(), labels.data(), logits.data());
        const size_t rows = std::min(size_t(B), indices.size() - begin); // the rest is padding
        for (size_t r = 0; r < rows; ++r) {
            const T* z = logits.data() + r * size_t(C);
            int64_t best = 0;
            for (int64_t c = 1; c < C; ++c)
                if (z[c] > z[best]) best = c;
            const double m = z[best]; // the largest logit, for a stable log-sum-exp
            double s = 0;
            for (int64_t c = 0; c < C; ++c) s += std::exp(double(z[c]) - m);
            loss += m + std::log(s) - z[labels[r]];
            correct += best == labels[r];
        }
    }
    sums[1] = double(correct);
    if (engine.graph().syncWorld > 1) cluster::sum(sums, 2);
    const double n = double(indices.size());
    return {sums[0] / n, sums[1] / n};
}

} // namespace

Accuracy evaluate(Engine& engine, const Examples& e, const std::vector<int64_t>& indices, double mean, double std) {
    if (indices.empty()) throw UserError({makeSourceFile(e.imageFile, ""), 0, 0}, "no examples to evaluate");
    checkExamples(e, perExample(engine.graph()[0].shape), engine.graph()[engine.graph().output(OutputRole::Logits)].shape[1]);
    for (int64_t i : indices) internal_assert(i >= 0 && i < e.count, "an example index outside the data");
    return engine.f64() ? evaluateAs<double>(engine, e, indices, mean, std) : evaluateAs<float>(engine, e, indices, mean, std);
}

namespace {

using Json = nlohmann::ordered_json; // the log's fields in the order written

/// Each tensor's gradient statistics, without their histograms, as the log writes them.
Json gradsJson(const std::vector<TensorStats>& grads) {
    Json params = Json::array();
    for (auto& s : grads) params.push_back(jsonStatistics<Json>(s, /*full=*/false));
    return params;
}

Json epochJson(const EpochRecord& r) {
    Json j = {{"epoch", r.epoch},
              {"step", r.step},
              {"train_loss", jsonNumber<Json>(r.trainLoss)},
              {"val_loss", jsonNumber<Json>(r.valLoss)},
              {"val_accuracy", jsonNumber<Json>(r.valAccuracy)},
              {"seconds", r.seconds},
              {"vanishing_factor", jsonNumber<Json>(r.vanishingFactor)},
              {"steps_per_second", r.stepsPerSecond}};
    if (r.dataParallel) j["allreduce_ms_per_step"] = 1e3 * r.commSecondsPerStep;
    if (r.clipping) {
        j["grad_norm"] = jsonNumber<Json>(r.gradNorm);
        j["clipped"] = r.clipped;
        j["clipped_steps"] = r.clippedSteps;
    }
    j["grads"] = gradsJson(r.grads);
    if (!r.throughTime.empty())
        j["through_time"] = jsonThroughTime<Json>(r.throughTime); // recurrent models only
    return j;
}

/// Every `logEvery` steps: the step's gradient statistics (of the step just taken).
Json stepJson(int epoch, int64_t step, double loss, double vanishing, const std::vector<TensorStats>& grads) {
    Json j = {{"kind", "step"},
              {"epoch", epoch},
              {"step", step},
              {"loss", jsonNumber<Json>(loss)},
              {"vanishing_factor", jsonNumber<Json>(vanishing)}};
    j["grads"] = gradsJson(grads);
    return j;
}

/// TensorBoard's histogram and mean |gradient| of each gradient tensor at `step`.
void gradientEvents(EventWriter& events, int64_t step, const std::vector<TensorStats>& grads) {
    for (auto& s : grads) {
        events.histogram("grad/" + s.name, step, s);
        if (std::isfinite(s.absMean)) events.scalar("grad_abs_mean/" + s.name, step, s.absMean);
    }
}

} // namespace

std::string progressLine(int epoch, int epochs, int64_t step, int64_t steps, double loss, double seconds) {
    const int width = 30, filled = int(width * step / steps);
    auto clock = [](double t) { // m:ss, or h:mm:ss
        const int64_t s = int64_t(std::lround(std::max(0.0, t)));
        return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60) : fmt::format("{}:{:02}", s / 60, s % 60);
    };
    const double rate = seconds > 0 ? double(step) / seconds : 0;
    return fmt::format("epoch {}/{} [{}{}] {}/{}  loss {:.4f}  {} elapsed, {:.1f} steps/s, epoch ETA {}", epoch, epochs,
                       std::string(size_t(filled), '#'), std::string(size_t(width - filled), '.'), step, steps, loss,
                       clock(seconds), rate, rate > 0 ? clock(double(steps - step) / rate) : std::string("?"));
}

void declareTrainOutputs(OutputSet& outputs, const std::string& save, const std::string& log,
                         const std::string& logdir) {
    outputs.output(save, "the parameter file");
    outputs.output(log, "the log file");
    outputs.directory(logdir, "the log directory");
}

TrainResult train(Engine& engine, const DataSplit& data, const TrainOptions& o,
                  const std::function<void(const std::string&)>& say) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    // A data-parallel run: this process computes rows [rank b, (rank + 1) b) of every batch of
    // B = world b; only the first (rank 0) writes and says anything.
    const int world = engine.graph().syncWorld, rank = world > 1 ? cluster::rank() : 0;
    const bool root = rank == 0;
    const int64_t b = engine.batch(), B = b * world;
    auto tell = [&](const std::string& line) {
        if (root) say(line);
    };
    // Ctrl-C on any process stops them all after the same step: the flag is agreed on at each.
    bool interrupted = false;
    auto stopping = [&] {
        double any = gInterrupted != 0;
        if (world > 1) cluster::max(&any, 1);
        return interrupted = interrupted || any != 0;
    };
    checkSplit(engine, data); // before anything is computed or written
    const int64_t stepsPerEpoch = int64_t(data.fit.size()) / B; // the last partial batch is dropped
    if (stepsPerEpoch < 1)
        throw UserError({}, fmt::format("{} training examples make no batch of {}", data.fit.size(), B));
    OutputSet own;
    OutputSet& outputs = o.outputs ? *o.outputs : own;
    if (!o.outputs && root) declareTrainOutputs(own, o.save, o.log, o.logdir);
    PendingFile* log = o.log.empty() || !root ? nullptr : &outputs.stream(o.log);
    std::unique_ptr<EventWriter> events;
    if (!o.logdir.empty() && root) events = std::make_unique<EventWriter>(o.logdir);
    if (events && !o.hparams.empty())
        events->hparams(o.hparams, {"accuracy/test", "loss/test", "accuracy/val", "loss/val", "loss/train"});

    TrainResult result;
    Values best = engine.state();
    std::vector<float> x;
    std::vector<double> x64; // the inputs of an engine in double
    std::vector<int32_t> labels;
    int64_t step = 0;
    for (int epoch = 1; epoch <= o.epochs; ++epoch) {
        const auto epochStart = Clock::now();
        std::vector<int64_t> order = permutation(int64_t(data.fit.size()), o.seed * 1000003 + uint64_t(epoch));
        for (auto& i : order) i = data.fit[size_t(i)];
        double lossSum = 0;
        int64_t done = 0, clippedSteps = 0;
        const double commBefore = engine.communicationSeconds();
        double stepSeconds = 0; // the steps' time, from the first step's start to the last's end
        for (int64_t s = 0; s < stepsPerEpoch && !stopping() && !(o.maxSteps && step >= o.maxSteps); ++s) {
            double loss = 0;
            const size_t begin = size_t(s * B + rank * b);
            const auto stepStart = Clock::now();
            if (engine.f64()) {
                gather(data.train, order, begin, b, data.mean, data.std, x64, labels);
                loss = engine.trainStep(x64.data(), labels.data());
            } else {
                gather(data.train, order, begin, b, data.mean, data.std, x, labels);
                loss = engine.trainStep(x.data(), labels.data());
            }
            stepSeconds += std::chrono::duration<double>(Clock::now() - stepStart).count();
            lossSum += loss;
            ++done, ++step;
            if (o.logEvery > 0 && step % o.logEvery == 0 && (log || events)) {
                const std::vector<TensorStats> grads = engine.gradientStatistics();
                const double vf = vanishingFactor(grads).value;
                if (log) log->write(jsonLine(stepJson(epoch, step, loss, vf, grads)) + "\n");
                if (events) {
                    if (std::isfinite(vf)) events->scalar("vanishing_factor", step, vf);
                    gradientEvents(*events, step, grads);
                    events->flush();
                }
            }
            clippedSteps += engine.clipping() && engine.lastClip().clipped;
            if (o.progressBar && (s % 4 == 0 || s + 1 == stepsPerEpoch))
                tell("\r\033[K" + progressLine(epoch, o.epochs, s + 1, stepsPerEpoch, lossSum / double(done),
                                              std::chrono::duration<double>(Clock::now() - epochStart).count()));
        }
        if (done == 0) break;
        EpochRecord r;
        r.epoch = epoch, r.step = step, r.trainLoss = lossSum / double(done);
        r.stepsPerSecond = stepSeconds > 0 ? double(done) / stepSeconds : 0;
        r.dataParallel = world > 1;
        r.commSecondsPerStep = (engine.communicationSeconds() - commBefore) / double(done);
        Accuracy v = evaluate(engine, data.train, data.val, data.mean, data.std);
        r.valLoss = v.loss, r.valAccuracy = v.accuracy;
        r.grads = engine.gradientStatistics();
        r.vanishingFactor = vanishingFactor(r.grads).value;
        r.throughTime = engine.throughTime();
        if (engine.clipping()) {
            r.clipping = true, r.gradNorm = engine.lastClip().norm, r.clipped = engine.lastClip().clipped;
            r.clippedSteps = clippedSteps;
        }
        r.seconds = std::chrono::duration<double>(Clock::now() - epochStart).count();
        const bool improved = v.accuracy > result.bestValAccuracy;
        if (improved) {
            result.bestValAccuracy = v.accuracy, result.bestEpoch = epoch;
            best = engine.state();
            if (!o.save.empty() && root) engine.save(o.save);
        }
        tell(fmt::format("{}epoch {:>3}: train loss {:.4f}  val loss {:.4f}  val accuracy {:6.2f}%{}  ({:.1f} s{}{})\n",
                        o.progressBar ? "\r\033[K" : "", epoch, r.trainLoss, r.valLoss, 100 * r.valAccuracy,
                        improved ? " (best)" : "       ", r.seconds,
                        done < stepsPerEpoch ? fmt::format(", {} of {} steps", done, stepsPerEpoch) : "",
                        r.dataParallel ? fmt::format(", allreduce {:.2f} ms a step", 1e3 * r.commSecondsPerStep) : ""));
        if (log) log->write(jsonLine(epochJson(r)) + "\n");
        if (events) {
            events->scalar("loss/train", step, r.trainLoss);
            events->scalar("loss/val", step, r.valLoss);
            events->scalar("accuracy/val", step, r.valAccuracy);
            for (auto& t : r.throughTime)
                if (std::isfinite(t.vanishingFactor))
                    events->scalar("vanishing_factor_through_time/" + t.layer, step,
                                   t.vanishingFactor);
            if (o.logEvery == 0) { // else at every logEvery steps
                if (std::isfinite(r.vanishingFactor)) events->scalar("vanishing_factor", step, r.vanishingFactor);
                gradientEvents(*events, step, r.grads);
            }
            events->flush();
        }
        result.epochs.push_back(std::move(r));
        if (stopping() || (o.maxSteps && step >= o.maxSteps)) break;
        if (epoch - result.bestEpoch >= o.patience) {
            result.stoppedEarly = true;
            break;
        }
    }
    result.interrupted = interrupted;
    if (result.bestEpoch > 0) engine.state() = best;
    else if (!o.save.empty() && root) engine.save(o.save); // interrupted in the first epoch: what there is
    std::vector<int64_t> all(static_cast<size_t>(data.test.count));
    for (size_t i = 0; i < all.size(); ++i) all[i] = int64_t(i);
    Accuracy t = evaluate(engine, data.test, all, data.mean, data.std);
    result.testAccuracy = t.accuracy, result.testLoss = t.loss;
    result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (log)
        log->write(jsonLine(Json{{"end", true},
                                 {"best_epoch", result.bestEpoch},
                                 {"best_val_accuracy", jsonNumber<Json>(result.bestValAccuracy)},
                                 {"test_accuracy", jsonNumber<Json>(result.testAccuracy)},
                                 {"test_loss", jsonNumber<Json>(result.testLoss)},
                                 {"steps", step},
                                 {"seconds", result.seconds},
                                 {"stopped_early", result.stoppedEarly},
                                 {"interrupted", result.interrupted}}) +
                   "\n");
    if (events && result.bestEpoch > 0) {
        events->scalar("accuracy/test", step, result.testAccuracy);
        events->scalar("loss/test", step, result.testLoss);
    }
    if (events) {
        if (!o.hparams.empty()) events->sessionEnd(!result.interrupted);
        events->close();
    }
    if (!o.outputs && root) own.commit();
    return result;
}

} // namespace gradc
