// dead.cpp — `gradc dead MODEL`: per activation layer, the units (channels, for images) that
// output zero for every training image. The options and the printing; the job is runtime/Jobs.h's.
#include "Commands.h"

#include "Jobs.h"
#include "Report.h"

#include <fmt/format.h>

#include <algorithm>

namespace gradc::cli {

void deadOptions(po::options_description& d) {
    addModelOptions(d);
    d.add_options()("val", po::value<int64_t>()->default_value(10000), "training images held out, as gradc train (with --limit: a sixth of the images read)")(
        "limit", po::value<int64_t>()->default_value(0), "use only the first N images (0: all)")(
        "format", po::value<std::string>()->default_value("table"), "table | json");
    addDataOptions(d);
}

/// `gradc dead MODEL`: per activation layer, the units that output zero for every training
/// image of the split, as the tutorial counts dead neurons.
int runDead(const po::variables_map& vm) {
    DeadOptions o;
    o.batch = semaOptions(vm).batch;
    dataOptions(vm); // --normalize checked first
    o.val = vm["val"].as<int64_t>(), o.limit = vm["limit"].as<int64_t>();
    // As gradc train: a small run (--limit) holds out a sixth of the images it reads.
    if (vm["val"].defaulted() && o.limit > 0) o.val = std::clamp<int64_t>(o.limit / 6, 1, o.val);
    checkJobOptions(o);
    const std::string format = vm["format"].as<std::string>();
    if (format != "table" && format != "json") throw UsageError(fmt::format("--format={} is not table or json", format));
    static_cast<ClassifierOptions&>(o) = classifierOptions(vm);
    const DeadResult r = gradc::runDead(o);
    if (format == "json") {
        fmt::print("{}", formatDeadJson(r));
        return 0;
    }
    // Layers of images count channels (a channel is dead when zero at every position for every
    // image); a model with such layers says for each layer what its units are, and totals each kind.
    bool channels = false;
    size_t wName = 12;
    for (const DeadLayer& l : r.layers) channels |= l.unit == "channel", wName = std::max(wName, l.name.size());
    fmt::print("{}: units that output zero for all {} training images (evaluation mode)\n{}\n", r.model,
               thousands(r.images), channels ? "(in a layer of images a unit is a channel: dead when zero at every position)\n" : "");
    fmt::print("  {:<{}} {:<18} {:>6} {:>6} {:>8}{}\n", "layer", wName, "activation", "units", "dead", "dead %",
               channels ? "  unit" : "");
    for (const DeadLayer& l : r.layers)
        fmt::print("  {:<{}} {:<18} {:>6} {:>6} {:>7.2f}%{}\n", l.name, wName, l.activation, l.units, l.dead,
                   100.0 * double(l.dead) / double(l.units),
                   channels ? fmt::format("  {} of {}", l.unit, shapeString(l.shape)) : "");
    for (const char* unit : {"channel", "unit"}) {
        int64_t totalDead = 0, total = 0;
        bool any = false;
        for (const DeadLayer& l : r.layers)
            if (l.unit == unit) totalDead += l.dead, total += l.units, any = true;
        if (channels && !any) continue; // a model of units only prints the one total it always did
        if (!channels && std::string(unit) == "channel") continue;
        fmt::print("  {:<{}} {:<18} {:>6} {:>6} {:>7.2f}%\n", "total", wName, channels ? std::string(unit) + "s" : "",
                   total, totalDead, total ? 100.0 * double(totalDead) / double(total) : 0.0);
    }
    return 0;
}

} // namespace gradc::cli
