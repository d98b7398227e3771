// TestUtil.h — helpers shared by the tests.
#pragma once

#include "Autodiff.h"
#include "Codegen.h"
#include "Execute.h"
#include "Interpreter.h"
#include "Pipeline.h"
#include "Source.h"

#include <catch2/catch.hpp>

#include <functional>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

namespace gradc {

/// The largest magnitude in `t` (0 for an empty tensor).
inline double largestAbs(const Tensor& t) {
    double m = 0;
    for (double v : t.data) m = std::max(m, std::fabs(v));
    return m;
}

/// Largest |got - want| relative to want's largest finite magnitude; where want is NaN (or
/// infinite) got must be the same (else, or when their sizes differ, the error is infinite). A tensor that is zero in
/// exact arithmetic (the bias gradient of a layer that batchnorm follows) holds only rounding
/// noise: when its scale is below 1e-9 of `modelScale` (the largest magnitude among the
/// model's tensors of its kind), it is measured against `modelScale`.
inline double relativeError(const Tensor& got, const Tensor& want, double modelScale = 0) {
    if (got.data.size() != want.data.size()) return INFINITY; // not the same tensor
    double scale = 0, err = 0;
    for (double v : want.data)
        if (std::isfinite(v)) scale = std::max(scale, std::fabs(v));
    for (size_t i = 0; i < want.data.size(); ++i) {
        const double a = got.data[i], e = want.data[i];
        if (!std::isfinite(e)) {
            if (!(std::isnan(e) ? std::isnan(a) : a == e)) return INFINITY;
            continue;
        }
        if (!std::isfinite(a)) return INFINITY;
        err = std::max(err, std::fabs(a - e));
    }
    if (scale < 1e-9 * modelScale) scale = modelScale;
    return scale > 0 ? err / scale : err;
}

/// Memory bounds in tests are multiplied by this: AddressSanitizer keeps freed memory in its
/// quarantine (256 MiB by default) and pads every allocation, so peak RSS grows by what the
/// test freed. The bounds stay far below what the faults they catch would take (gigabytes).
#if defined(__SANITIZE_ADDRESS__) // GCC's
#define GRADC_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) // clang's
#define GRADC_TEST_ASAN 1
#endif
#endif
#ifdef GRADC_TEST_ASAN
constexpr long kMemorySlack = 4;
#else
constexpr long kMemorySlack = 1;
#endif

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
            int64_t classes = g[g.output(OutputRole::Logits)].shape[1];
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

/// A random model built from every construct: dense layers with activations, activation
/// layers, batchnorm, layernorm, named values and residual adds, repeat blocks, and one of the losses.
/// `width` is the hidden width; the input is 1..inputMax wide; 2..layerSpan+1 statements.
inline std::string randomModel(std::mt19937& rng, const std::string& prelude, const std::vector<const char*>& acts,
                               int width, int inputMax, int layerSpan) {
    std::string text = prelude + "input " + std::to_string(1 + rng() % unsigned(inputMax)) + "\ndense " +
                       std::to_string(width) + "\n";
    int names = 0;
    for (int k = 0, n = 2 + int(rng() % unsigned(layerSpan)); k < n; ++k) {
        switch (rng() % 6) {
        case 0: text += "dense " + std::to_string(width) + " " + acts[rng() % acts.size()] + "\n"; break;
        case 1: text += std::string(acts[rng() % acts.size()]) + "\n"; break;
        case 2: text += rng() % 2 ? "batchnorm\n" : "layernorm\n"; break;
        case 3: text += "v" + std::to_string(names++) + " = identity\n"; break;
        case 4:
            if (names) text += (rng() % 2 ? "add v" : "mul v") + std::to_string(rng() % unsigned(names)) + "\n";
            break;
        case 5:
            text += "repeat 2 {\n  r = identity\n  dense " + std::to_string(width) + " " + acts[rng() % acts.size()] +
                    "\n  add r\n}\n";
            break;
        }
    }
    const char* losses[] = {"dense 3\nloss cross_entropy\n", "dense 1\nloss bce\n", "dense 2\nloss mse\n"};
    return text + losses[rng() % 3];
}

/// The jit backend's refusal of what its kernels cannot compute yet (a map that broadcasts
/// along two separate groups of dimensions).
constexpr const char* kJitRefusal = "is not compiled by the jit backend yet; use --backend interp";

/// What `f` reports when it throws an E: a UserError's diagnostic as gradc prints it
/// (format()), the message of any other exception type, such as the public API's
/// gradc::Error (`errorOf<Error>`). Empty when `f` throws nothing; any other exception
/// passes through, and fails the test.
template <typename E = UserError> std::string errorOf(const std::function<void()>& f) {
    try {
        f();
    } catch (const E& e) {
        if constexpr (std::is_same_v<E, UserError>) return e.format();
        else return e.what();
    }
    return "";
}

/// The smallest trainable model (input 3, dense 2, mse; batch 4) compiled without the
/// cache, for the tests of the compiled optimiser step (`update`).
inline CompiledModel compiledUpdateStep() {
    CodegenOptions co;
    co.cache = false;
    return compileModel(compileSource("t.nn", "input 3\ndense 2\nloss mse\n", {4}).graph, co);
}

/// Adds an input or a parameter node to a graph built by hand. A parameter is registered in
/// g.params with `fanIn` (its initial scale in randomBindings; 0: its last dimension).
inline ValueId addLeaf(Graph& g, Op op, const std::string& name, const Shape& shape, int64_t fanIn = 0) {
    Node n = makeNode(op, {});
    n.name = name, n.shape = shape;
    ValueId v = g.add(std::move(n));
    if (op == Op::Param) g.params.push_back({v, name, {}, fanIn ? fanIn : shape.back(), shape[0]});
    return v;
}

/// A graph the model language cannot write yet, built with the IR's builders: gating by
/// element-wise products and a broadcast per-feature scale.
///   h = tanh(x·aᵀ + a.bias);  u = x·bᵀ;  m = mul(h, u) + mul(u, u) * scale;  z = m·cᵀ;  mse(z, t)
inline Graph gatedGraph(int64_t batch) {
    Graph g;
    g.model = "gated", g.batch = batch, g.lossKind = "mse";
    auto matmul = [&](ValueId a, ValueId b) { return g.add(makeNode(Op::MatMulNT, {}, {a, b})); };
    ValueId x = addLeaf(g, Op::Input, "x", {batch, 5});
    ValueId aw = addLeaf(g, Op::Param, "a.weight", {4, 5}), ab = addLeaf(g, Op::Param, "a.bias", {4}, 5);
    ValueId bw = addLeaf(g, Op::Param, "b.weight", {4, 5}), scale = addLeaf(g, Op::Param, "scale", {4}, 1);
    ValueId cw = addLeaf(g, Op::Param, "c.weight", {3, 4});
    g.activations.push_back(ActivationTable().instantiate({"tanh", {}, {}}));
    ValueId h = addActivation(g, 0, addBiasAdd(g, matmul(x, aw), ab, {}), {});
    ValueId u = matmul(x, bw);
    ValueId m = addMul(g, h, u, {});
    ValueId scaled = addMap(g, scalar::make(scalar::Kind::Mul, {scalar::arg(0), scalar::arg(1)}),
                            {addMul(g, u, u, {}), scale}, {});
    ValueId z = matmul(addAdd(g, m, scaled, {}), cw);
    ValueId loss = g.add(makeNode(Op::MSE, {}, {z, addLeaf(g, Op::Input, "target", {batch, 3})}));
    g.outputs = {{OutputRole::Logits, "", z}, {OutputRole::Loss, "", loss}};
    return g;
}

/// What this CPU's own code uses (isaTarget("native")): 512-bit vectors, or AVX2 and FMA at least.
inline bool hostHasAvx512() { return isaTarget("native").vectorBits == 512; }
inline bool hostHasAvx2() { return isaTarget("native").vectorBits >= 256; }

/// A file's bytes ("" when it cannot be read).
inline std::string readFile(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

/// A fresh folder of its own (mkdtemp: /tmp/gradc_NAME_test.XXXXXX), removed with everything
/// in it.
struct TempDir {
    std::filesystem::path path;
    explicit TempDir(const std::string& name = "unit") {
        std::string pattern = (std::filesystem::temp_directory_path() / ("gradc_" + name + "_test.XXXXXX")).string();
        if (!::mkdtemp(pattern.data())) throw std::runtime_error("cannot make a temporary folder " + pattern);
        path = pattern;
    }
    /// The path of file NAME in the folder.
    std::string file(const std::string& name) const { return (path / name).string(); }
    /// Writes BYTES to file NAME in the folder; its path.
    std::string write(const std::string& name, const std::string& bytes) const {
        std::ofstream(path / name, std::ios::binary) << bytes;
        return file(name);
    }
    std::string read(const std::string& name) const { return readFile(path / name); }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
};

#ifdef GRADC_EXE
/// The standard output of `gradc ARGS` (and its standard error with `withStderr`; else that
/// is dropped), and its exit status (-1 if a signal ended it).
inline std::pair<int, std::string> gradcCommand(const std::string& args, bool withStderr) {
    const std::string cmd = std::string(GRADC_EXE) + " " + args + (withStderr ? " 2>&1" : " 2>/dev/null");
    FILE* p = ::popen(cmd.c_str(), "r");
    if (!p) throw std::runtime_error("cannot run " + cmd);
    std::string out;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
    const int rc = ::pclose(p);
    return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, out};
}
#endif

/// Central differences in double, as torch.autograd.gradcheck: eps 1e-6, atol 1e-5, rtol 1e-3.
constexpr double kGradEps = 1e-6, kGradAtol = 1e-5, kGradRtol = 1e-3;

/// The interpreter's loss of the forward graph `fwd` at `b`.
/// `g` compiled in float and double on each of `threads` against the interpreter: the
/// forward's logits and loss, and every output of the backward but the logits, float within
/// 1e-4 of each tensor's largest value and double within 1e-9. `each` also sees every
/// backward output (name, got, want, tolerance), for checks of its own. `isa`: the
/// instruction set of the compiled code ("": this CPU's).
using EachOutput = std::function<void(const std::string&, const Tensor&, const Tensor&, double)>;
inline void compiledAgrees(const Graph& g, std::mt19937& rng, std::initializer_list<int> threads,
                           const EachOutput& each = nullptr, const std::string& isa = "") {
    Bindings b = randomBindings(g, rng);
    auto wantForward = interpretOutputs(g, b);
    auto wantBackward = interpretOutputs(differentiate(g), b);
    for (bool f64 : {false, true})
        for (int n : threads) {
            CodegenOptions opts;
            opts.cache = false, opts.f64 = f64, opts.threads = n, opts.isa = isa;
            CompiledModel cm = compileModel(g, opts);
            const double tol = f64 ? 1e-9 : 1e-4;
            INFO(g.model << (f64 ? " f64, " : " f32, ") << n << " thread(s) " << isa);
            auto gotForward = runCompiled(cm, g, b, false);
            for (const char* name : {"logits", "loss"}) {
                INFO(name);
                CHECK(relativeError(gotForward.at(name), wantForward.at(name)) <= tol);
            }
            auto gotBackward = runCompiled(cm, g, b, true);
            for (auto& [name, want] : wantBackward) {
                if (name == "logits") continue;
                INFO(name);
                REQUIRE(gotBackward.count(name) == 1);
                const Tensor& got = gotBackward.at(name);
                CHECK(relativeError(got, want) <= tol);
                if (each) each(name, got, want, tol);
            }
        }
}

inline double lossOf(const Graph& fwd, const Bindings& b) {
    return interpret(fwd, b)[fwd.output(OutputRole::Loss)].data[0];
}

/// Checks the interpreter's gradient of every parameter and of x at `b` against central
/// differences, at every coordinate or at `samples` random ones per tensor (drawn from `rng`).
/// Returns the largest |numeric derivative| of each tensor: a check that saw only zeros on both
/// sides checked nothing, and the caller can say where that is expected.
inline std::map<std::string, double> gradcheck(const Graph& fwd, Bindings b, std::mt19937& rng,
                                               size_t samples = 0) {
    Graph grad = differentiate(fwd, {/*inputGradient=*/true});
    REQUIRE(verify(grad).empty());
    auto out = interpretOutputs(grad, b);
    CHECK(out.at("loss").data[0] == Approx(lossOf(fwd, b)).epsilon(1e-12));
    std::vector<std::string> names;
    for (auto& p : fwd.params) names.push_back(p.name);
    names.push_back("x");
    std::map<std::string, double> largest;
    for (const std::string& name : names) {
        Tensor& t = b.at(name);
        const Tensor& analytic = out.at("grad:" + name);
        REQUIRE(analytic.data.size() == t.data.size());
        const size_t count = samples ? std::min(samples, t.data.size()) : t.data.size();
        double& seen = largest[name];
        for (size_t s = 0; s < count; ++s) {
            const size_t i = samples ? rng() % t.data.size() : s;
            const double saved = t.data[i];
            t.data[i] = saved + kGradEps;
            const double up = lossOf(fwd, b);
            t.data[i] = saved - kGradEps;
            const double down = lossOf(fwd, b);
            t.data[i] = saved;
            const double numeric = (up - down) / (2 * kGradEps);
            seen = std::max(seen, std::fabs(numeric));
            INFO(fwd.model << ": d loss / d " << name << "[" << i << "] analytic "
                           << analytic.data[i] << " numeric " << numeric);
            CHECK(std::fabs(analytic.data[i] - numeric) <=
                  kGradAtol + kGradRtol * std::fabs(numeric));
        }
    }
    return largest;
}

/// The interpreter's scan perturbation (setScanPerturbation) for the life of the object; none
/// again after it, whatever the test does in between.
struct ScopedScanPerturbation {
    explicit ScopedScanPerturbation(const ScanPerturbation& p) { setScanPerturbation(p); }
    ~ScopedScanPerturbation() { setScanPerturbation({}); }
    ScopedScanPerturbation(const ScopedScanPerturbation&) = delete;
    ScopedScanPerturbation& operator=(const ScopedScanPerturbation&) = delete;
};

/// ‖dL/dh_t‖ of the model's first layer (a recurrent one) by central differences at `b`: each
/// h_t[b, j] moved by ±kGradEps through the interpreter's perturbation hook.
inline double numericNormAt(const Graph& fwd, const Bindings& b, int64_t t) {
    const Shape& h = fwd[fwd.layers.at(0).value].shape; // [B,T,H]
    double sum = 0;
    for (int64_t bb = 0; bb < h[0]; ++bb)
        for (int64_t j = 0; j < h[2]; ++j) {
            double loss[2];
            for (int side = 0; side < 2; ++side) {
                ScopedScanPerturbation p({t, bb, j, side ? -kGradEps : kGradEps});
                loss[side] = lossOf(fwd, b);
            }
            sum += std::pow((loss[0] - loss[1]) / (2 * kGradEps), 2);
        }
    return std::sqrt(sum);
}

/// Sets (or with nullptr unsets) an environment variable for the life of the object.
struct EnvVar {
    std::string name;
    std::optional<std::string> saved;
    EnvVar(const char* n, const char* value) : name(n) {
        if (const char* old = std::getenv(n)) saved = old;
        value ? ::setenv(n, value, 1) : ::unsetenv(n);
    }
    ~EnvVar() { saved ? ::setenv(name.c_str(), saved->c_str(), 1) : ::unsetenv(name.c_str()); }
    EnvVar(const EnvVar&) = delete;
    EnvVar& operator=(const EnvVar&) = delete;
};

} // namespace gradc
