// TestUtil.h — helpers shared by the tests.
#pragma once

#include "Interpreter.h"

#include <cmath>
#include <random>

namespace gradc {

/// Random parameters (nn.Linear-like scale, batchnorm weights around 1), a random input and
/// random targets that fit the loss.
inline Bindings randomBindings(const Graph& g, std::mt19937& rng) {
    Bindings b;
    std::normal_distribution<double> normal(0, 1);
    for (auto& p : g.params) {
        const Node& n = g[p.node];
        Tensor t{n.shape, std::vector<double>(size_t(elementCount(n.shape)))};
        double bound = 1 / std::sqrt(double(p.fanIn));
        bool bnWeight = p.init.scheme == "constant" && !p.init.args.empty() && p.init.args[0] == 1;
        std::uniform_real_distribution<double> u(-bound, bound);
        for (double& v : t.data) v = bnWeight ? 1 + 0.3 * normal(rng) : u(rng);
        b[p.name] = std::move(t);
    }
    for (auto& n : g.nodes) {
        if (n.op != Op::Input) continue;
        Tensor t{n.shape, std::vector<double>(size_t(elementCount(n.shape)))};
        if (n.name == "x") {
            for (double& v : t.data) v = normal(rng);
        } else if (g.lossKind == "cross_entropy") {
            int64_t classes = g[g.output("logits")].shape[1];
            for (double& v : t.data) v = double(rng() % uint64_t(classes));
        } else if (g.lossKind == "bce") {
            for (double& v : t.data) v = double(rng() % 2);
        } else {
            for (double& v : t.data) v = normal(rng);
        }
        b[n.name] = std::move(t);
    }
    return b;
}

} // namespace gradc
