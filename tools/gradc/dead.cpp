// dead.cpp — `gradc dead MODEL`: per activation layer, the units that output zero for every
// training image.
#include "Commands.h"

#include "Train.h"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

namespace gradc::cli {

void deadOptions(po::options_description& d) {
    addModelOptions(d);
    d.add_options()("val", po::value<int64_t>()->default_value(10000), "training images held out (as gradc train)")(
        "limit", po::value<int64_t>()->default_value(0), "use only the first N images (0: all)");
    addDataOptions(d);
}

namespace {

/// The activation layers of a graph: the modules whose output is an activation function's.
bool isActivationLayer(const Graph& g, const LayerInfo& l) { return isActivation(g[l.value]); }

} // namespace

/// `gradc dead MODEL`: per activation layer, the units that output zero for every training
/// image of the split, as the tutorial counts dead neurons.
int runDead(const po::variables_map& vm) {
    const int64_t batch = semaOptions(vm).batch;
    const std::string dir = vm["data"].as<std::string>(), path = vm["model"].as<std::string>();
    auto [mean, std] = parseNormalize(vm["normalize"].as<std::string>());
    const int64_t val = vm["val"].as<int64_t>(), limit = vm["limit"].as<int64_t>();
    if (val < 0) throw UsageError(fmt::format("--val {} must not be negative", val));
    if (limit < 0) throw UsageError(fmt::format("--limit {} must not be negative", limit));
    std::unique_ptr<Engine> engine = makeEngine(vm, batch, /*classes=*/2);
    DataSplit data = loadSplit(dir, val, mean, std, limit);
    const Graph& g = engine->graph();
    std::vector<size_t> layers;
    std::vector<std::vector<char>> alive;
    for (size_t i = 0; i < engine->layerCount(); ++i)
        if (isActivationLayer(g, g.layers[i])) {
            layers.push_back(i);
            alive.emplace_back(size_t(g.layers[i].out[1]), 0);
        }
    std::vector<float> x;
    std::vector<int32_t> labels;
    for (size_t begin = 0; begin < data.fit.size(); begin += size_t(batch)) {
        gather(data.train, data.fit, begin, batch, mean, std, x, labels);
        onlyImages(labels);
        engine->evaluate(x.data(), labels.data(), nullptr);
        const size_t rows = std::min(size_t(batch), data.fit.size() - begin);
        for (size_t k = 0; k < layers.size(); ++k) {
            const float* y = engine->layerOutput(layers[k]);
            const size_t N = alive[k].size();
            for (size_t r = 0; r < rows; ++r)
                for (size_t j = 0; j < N; ++j) alive[k][j] |= y[r * N + j] != 0.0f;
        }
    }
    fmt::print("{}: units that output zero for all {} training images (evaluation mode)\n\n", g.model,
               thousands(int64_t(data.fit.size())));
    fmt::print("  {:<12} {:<18} {:>6} {:>6} {:>8}\n", "layer", "activation", "units", "dead", "dead %");
    int64_t totalDead = 0, total = 0;
    for (size_t k = 0; k < layers.size(); ++k) {
        int64_t dead = 0;
        for (char a : alive[k]) dead += !a;
        totalDead += dead, total += int64_t(alive[k].size());
        const LayerInfo& l = g.layers[layers[k]];
        fmt::print("  {:<12} {:<18} {:>6} {:>6} {:>7.2f}%\n", l.name, l.what, alive[k].size(), dead,
                   100.0 * double(dead) / double(alive[k].size()));
    }
    fmt::print("  {:<12} {:<18} {:>6} {:>6} {:>7.2f}%\n", "total", "", total, totalDead,
               total ? 100.0 * double(totalDead) / double(total) : 0.0);
    return 0;
}

} // namespace gradc::cli
