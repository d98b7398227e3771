// Init.cpp — deterministic initialisation: splitmix64 and Box-Muller.
#include "Init.h"

#include <cmath>

namespace gradc {
namespace {

struct Rng {
    uint64_t state;
    uint64_t next() { // splitmix64
        uint64_t z = (state += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    double uniform() { return double(next() >> 11) * 0x1.0p-53; } // [0, 1)
    double normal() {
        double u1 = 1 - uniform(), u2 = uniform();
        return std::sqrt(-2 * std::log(u1)) * std::cos(2 * M_PI * u2);
    }
};

} // namespace

Bindings initialiseParameters(const Graph& g, uint64_t seed) {
    Rng rng{seed};
    Bindings out;
    bool firstWeight = true;
    for (const ParamInfo& p : g.params) {
        const Shape& shape = g[p.node].shape;
        Tensor t{shape, std::vector<double>(size_t(elementCount(shape)))};
        const std::string& s = p.init.scheme;
        double fanIn = double(p.fanIn), fanOut = double(p.fanOut);
        const bool weight = isWeight(shape);
        for (double& v : t.data) {
            if (s == "pytorch") v = (2 * rng.uniform() - 1) / std::sqrt(fanIn);
            else if (s == "xavier") v = rng.normal() * std::sqrt(2 / (fanIn + fanOut));
            else if (s == "kaiming") v = rng.normal() * std::sqrt((firstWeight ? 1 : 2) / fanIn);
            else if (s == "normal") v = rng.normal() * p.init.args[0];
            else if (s == "constant") v = p.init.args[0];
            else internal_assert(false, "unknown init scheme " + s);
        }
        if (weight) firstWeight = false;
        out[p.name] = std::move(t);
    }
    for (const BufferInfo& b : g.buffers) out[b.name] = Tensor{{b.size}, std::vector<double>(size_t(b.size), b.initial)};
    return out;
}

} // namespace gradc
