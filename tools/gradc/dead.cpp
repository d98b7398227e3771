// dead.cpp — `gradc dead MODEL`: per activation layer, the units that output zero for every
// training image. The options and the printing; the job is runtime/Jobs.h's.
#include "Commands.h"

#include "Jobs.h"

#include <fmt/format.h>

namespace gradc::cli {

void deadOptions(po::options_description& d) {
    addModelOptions(d);
    d.add_options()("val", po::value<int64_t>()->default_value(10000), "training images held out (as gradc train)")(
        "limit", po::value<int64_t>()->default_value(0), "use only the first N images (0: all)");
    addDataOptions(d);
}

/// `gradc dead MODEL`: per activation layer, the units that output zero for every training
/// image of the split, as the tutorial counts dead neurons.
int runDead(const po::variables_map& vm) {
    DeadOptions o;
    o.batch = semaOptions(vm).batch;
    dataOptions(vm); // --normalize checked first
    o.val = vm["val"].as<int64_t>(), o.limit = vm["limit"].as<int64_t>();
    checkJobOptions(o);
    static_cast<ClassifierOptions&>(o) = classifierOptions(vm);
    const DeadResult r = gradc::runDead(o);
    fmt::print("{}: units that output zero for all {} training images (evaluation mode)\n\n", r.model,
               thousands(r.images));
    fmt::print("  {:<12} {:<18} {:>6} {:>6} {:>8}\n", "layer", "activation", "units", "dead", "dead %");
    int64_t totalDead = 0, total = 0;
    for (const DeadLayer& l : r.layers) {
        totalDead += l.dead, total += l.units;
        fmt::print("  {:<12} {:<18} {:>6} {:>6} {:>7.2f}%\n", l.name, l.activation, l.units, l.dead,
                   100.0 * double(l.dead) / double(l.units));
    }
    fmt::print("  {:<12} {:<18} {:>6} {:>6} {:>7.2f}%\n", "total", "", total, totalDead,
               total ? 100.0 * double(totalDead) / double(total) : 0.0);
    return 0;
}

} // namespace gradc::cli
