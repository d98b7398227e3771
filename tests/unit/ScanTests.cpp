// ScanTests.cpp — recurrent layers (issue 17): the scan ops' gradients against central
// differences in double (eps 1e-6, atol 1e-5, rtol 1e-3, as GradCheckTests), dL/dh_t's norms
// through the interpreter's perturbation hook, each cell's forward against a loop written here
// from PyTorch's documented formulas, the parameters' names, shapes and init schemes, the
// diagnostics, the through-time outputs and their layout, grads --inputs, and the verifier.
// tests/torch/rnn_test.py compares the same gradients with PyTorch's.
#include "Autodiff.h"
#include "Backend.h"
#include "Codegen.h"
#include "Execute.h"
#include "Init.h"
#include "Interpreter.h"
#include "Jobs.h"
#include "Layout.h"
#include "Pipeline.h"
#include "SafeTensors.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <map>
#include <random>
#include <sstream>

#include <sys/resource.h>

using namespace gradc;

namespace {

Graph model(const std::string& text, int64_t batch, bool layerOutputs = false) {
    SemaOptions o;
    o.batch = batch, o.layerOutputs = layerOutputs;
    return compileSource("test.nn", text, o).graph;
}

/// TestUtil's gradcheck at every coordinate, and it saw a gradient in every tensor, but in
/// the recurrent weights of a one-step sequence, which multiply h_{-1} = 0 and get none.
void gradcheck(const Graph& fwd, const Bindings& b) {
    std::mt19937 unused;
    const std::map<std::string, double> largest = gradc::gradcheck(fwd, b, unused);
    const bool oneStep = fwd[0].shape.size() == 3 && fwd[0].shape[1] == 1;
    for (auto& [name, seen] : largest) {
        INFO(name);
        if (oneStep && name.find("weight_hh") != std::string::npos)
            CHECK(seen == 0);
        else
            CHECK(seen > 1e-6);
    }
}

/// gradcheck at random parameters and batch (randomBindings).
void gradcheck(const Graph& fwd, std::mt19937& rng) {
    gradcheck(fwd, randomBindings(fwd, rng));
}

/// The value of the graph's only node of op `op`.
const Tensor& valueOf(const Graph& g, const std::vector<Tensor>& vals, Op op) {
    const Node* found = nullptr;
    size_t at = 0;
    for (size_t i = 0; i < g.nodes.size(); ++i)
        if (g.nodes[i].op == op) {
            REQUIRE(found == nullptr);
            found = &g.nodes[i], at = i;
        }
    REQUIRE(found != nullptr);
    return vals[at];
}

double sigmoid(double v) {
    return 1 / (1 + std::exp(-v));
}

/// h [B,T,H] of one recurrent layer as PyTorch documents nn.RNN, nn.LSTM and nn.GRU, from the
/// input x [B,T,N] and the layer's four tensors (gate order i, f, g, o and r, z, n).
std::vector<double> referenceLayer(const std::string& cell, const Bindings& b,
                                   const std::string& mod, int64_t B, int64_t T, int64_t N,
                                   int64_t H, bool relu) {
    const int64_t G = cell == "lstm" ? 4 : cell == "gru" ? 3 : 1;
    const auto &x = b.at("x").data, &wih = b.at(mod + ".weight_ih_l0").data,
               &whh = b.at(mod + ".weight_hh_l0").data;
    const auto &bih = b.at(mod + ".bias_ih_l0").data, &bhh = b.at(mod + ".bias_hh_l0").data;
    std::vector<double> out(size_t(B * T * H));
    for (int64_t bb = 0; bb < B; ++bb) {
        std::vector<double> h(size_t(H), 0.0), c(size_t(H), 0.0);
        for (int64_t t = 0; t < T; ++t) {
            std::vector<double> gi(size_t(G * H)), gh(size_t(G * H));
            for (int64_t r = 0; r < G * H; ++r) {
                double si = bih[size_t(r)], sh = bhh[size_t(r)];
                for (int64_t k = 0; k < N; ++k)
                    si += wih[size_t(r * N + k)] * x[size_t((bb * T + t) * N + k)];
                for (int64_t k = 0; k < H; ++k) sh += whh[size_t(r * H + k)] * h[size_t(k)];
                gi[size_t(r)] = si, gh[size_t(r)] = sh;
            }
            std::vector<double> hn(static_cast<size_t>(H));
            for (int64_t j = 0; j < H; ++j) {
                auto at = [&](const std::vector<double>& v, int64_t g) {
                    return v[size_t(g * H + j)];
                };
                if (cell == "rnn") {
                    const double a = at(gi, 0) + at(gh, 0);
                    hn[size_t(j)] = relu ? std::max(a, 0.0) : std::tanh(a);
                } else if (cell == "lstm") {
                    const double i = sigmoid(at(gi, 0) + at(gh, 0)),
                                 f = sigmoid(at(gi, 1) + at(gh, 1));
                    const double g = std::tanh(at(gi, 2) + at(gh, 2)),
                                 o = sigmoid(at(gi, 3) + at(gh, 3));
                    c[size_t(j)] = f * c[size_t(j)] + i * g;
                    hn[size_t(j)] = o * std::tanh(c[size_t(j)]);
                } else {
                    const double r = sigmoid(at(gi, 0) + at(gh, 0)),
                                 z = sigmoid(at(gi, 1) + at(gh, 1));
                    const double n = std::tanh(at(gi, 2) + r * at(gh, 2));
                    hn[size_t(j)] = (1 - z) * n + z * h[size_t(j)];
                }
            }
            h = hn;
            for (int64_t j = 0; j < H; ++j) out[size_t((bb * T + t) * H + j)] = h[size_t(j)];
        }
    }
    return out;
}

const char* const kCellLayers[] = {"rnn 3", "rnn 3 relu", "lstm 3", "gru 3"};

} // namespace

TEST_CASE("each cell's forward loop is PyTorch's nn.RNN, nn.LSTM and nn.GRU", "[scan]") {
    std::mt19937 rng(5);
    for (const char* layer : kCellLayers)
        for (int64_t T : {1, 5}) {
            const std::string text =
                fmt::format("input {} steps 2\n{}\nlast\ndense 2\nloss cross_entropy\n", T, layer);
            INFO(text);
            Graph g = model(text, 3, /*layerOutputs=*/true);
            Bindings b = randomBindings(g, rng);
            for (auto& [name, t] : b) // gates away from 0: relu's kink and tanh's linear part
                if (name != "target")
                    for (double& v : t.data) v *= 3;
            auto out = interpretOutputs(g, b);
            const std::string cell = std::string(layer).substr(0, std::string(layer).find(' '));
            std::vector<double> want =
                referenceLayer(cell, b, "layers.0", 3, T, 2, 3,
                               std::string(layer).find("relu") != std::string::npos);
            const Tensor& got = out.at("layer:layers.0");
            REQUIRE(got.shape == Shape{3, T, 3});
            double err = 0, scale = 0;
            for (size_t i = 0; i < want.size(); ++i)
                err = std::max(err, std::fabs(got.data[i] - want[i])),
                scale = std::max(scale, std::fabs(want[i]));
            CHECK(scale > 0.1);
            CHECK(err <= 1e-12);
            // last: the final step of every example
            const Tensor& last = out.at("layer:layers.1");
            REQUIRE(last.shape == Shape{3, 3});
            for (int64_t bb = 0; bb < 3; ++bb)
                for (int64_t j = 0; j < 3; ++j)
                    CHECK(last.data[size_t(bb * 3 + j)] ==
                          Approx(want[size_t((bb * T + T - 1) * 3 + j)]).margin(1e-12));
        }
}

TEST_CASE("scan, scan_grad, its siblings and last_step agree with central differences", "[scan]") {
    std::mt19937 rng(11);
    for (const char* layer : kCellLayers)
        for (int64_t T : {1, 5}) {
            // flatten: every step reaches the loss; last: only the final one does
            for (const char* head :
                 {"flatten\ndense 3\nloss cross_entropy\n", "last\ndense 2\nloss mse\n"}) {
                const std::string text = fmt::format("input {} steps 3\n{}\n{}", T, layer, head);
                INFO(text);
                gradcheck(model(text, 2), rng);
            }
        }
}

TEST_CASE("stacked recurrent layers and bias=false gradient-check", "[scan]") {
    std::mt19937 rng(12);
    for (const char* text : {"input 4 steps 2\ngru 3\nlstm 2\nlast\ndense 2\nloss cross_entropy\n",
                             "input 4 steps 2\nlstm 3 bias=false\nrnn 2 relu "
                             "bias=false\nflatten\ndense 2\nloss mse\n"}) {
        INFO(text);
        gradcheck(model(text, 3), rng);
    }
}

TEST_CASE("recurrent layers gradient-check at the parameters their init schemes give", "[scan]") {
    std::mt19937 rng(14);
    for (const char* layer : {"h = rnn 3 init=identity", "h = rnn 3 relu init=identity(1.5)",
                              "h = gru 3 init=orthogonal", "h = lstm 3 init=orthogonal(2)",
                              "h = lstm 3 init=xavier", "h = rnn 3 init=kaiming"}) {
        const std::string text =
            fmt::format("input 3 steps 2\n{}\nlast from h\ndense 2\nloss cross_entropy\n", layer);
        INFO(text);
        const Graph fwd = model(text, 3);
        Bindings b = initialiseParameters(fwd, rng()); // the scheme's weights; x and targets random
        const Bindings random = randomBindings(fwd, rng);
        b["x"] = random.at("x"), b["target"] = random.at("target");
        REQUIRE(fwd.params[1].name.find("weight_hh") != std::string::npos);
        if (std::string(layer).find("identity") != std::string::npos) // the bindings are the init's
            CHECK(b.at(fwd.params[1].name).data[0] ==
                  (std::string(layer).find("1.5") != std::string::npos ? 1.5 : 1.0));
        gradcheck(fwd, b);
    }
}

TEST_CASE("scan_grad_norm is the norm of dL/dh_t through all later steps", "[scan]") {
    std::mt19937 rng(13);
    for (const char* layer : kCellLayers)
        for (int64_t T : {1, 5}) {
            const std::string text = fmt::format(
                "input {} steps 2\n{}\nflatten\ndense 3\nloss cross_entropy\n", T, layer);
            INFO(text);
            Graph fwd = model(text, 2);
            Graph grad = differentiate(fwd);
            Bindings b = randomBindings(fwd, rng);
            const Tensor norms = valueOf(grad, interpret(grad, b), Op::ScanGradNorm);
            REQUIRE(norms.shape == Shape{T});
            for (int64_t t = 0; t < T; ++t) {
                const double numeric = numericNormAt(fwd, b, t);
                INFO("t = " << t);
                CHECK(numeric > 1e-6);
                CHECK(std::fabs(norms.data[size_t(t)] - numeric) <= 1e-7 + 1e-5 * numeric);
            }
        }
}

TEST_CASE("recurrent parameters carry PyTorch's names, layouts and order", "[scan]") {
    struct Case {
        const char* layer;
        int64_t gates;
    };
    for (Case c : {Case{"rnn 8", 1}, Case{"rnn 8 relu", 1}, Case{"lstm 8", 4}, Case{"gru 8", 3}}) {
        INFO(c.layer);
        Graph g = model(
            fmt::format("input 7 steps 5\n{}\nlast\ndense 2\nloss cross_entropy\n", c.layer), 4);
        REQUIRE(g.params.size() == 6);
        const char* names[] = {"layers.0.weight_ih_l0", "layers.0.weight_hh_l0",
                               "layers.0.bias_ih_l0", "layers.0.bias_hh_l0"};
        const Shape shapes[] = {{8 * c.gates, 5}, {8 * c.gates, 8}, {8 * c.gates}, {8 * c.gates}};
        for (size_t i = 0; i < 4; ++i) {
            CHECK(g.params[i].name == names[i]);
            CHECK(g[g.params[i].node].shape == shapes[i]);
            CHECK(g.params[i].init.scheme == "pytorch");
            CHECK(g.params[i].fanIn == 8); // U(-1/sqrt(H), 1/sqrt(H)) for all four
        }
        CHECK(g.params[4].name == "layers.2.weight"); // last is module 1, the dense module 2
        CHECK(g.sequence);
        CHECK(g[g.output(OutputRole::Logits)].shape == Shape{4, 2});
        Bindings b = initialiseParameters(g, 1);
        for (size_t i = 0; i < 4; ++i) {
            double largest = largestAbs(b.at(names[i]));
            CHECK(largest <= 1 / std::sqrt(8.0));
            CHECK(largest > 0.5 / std::sqrt(8.0));
        }
    }
    // xavier and kaiming take each weight's own fans, as for dense: weight_ih's fan-in is N.
    for (const char* scheme : {"xavier", "kaiming"}) {
        INFO(scheme);
        Graph x = model(
            fmt::format("input 7 steps 5\ngru 8 init={}\nlast\ndense 2\nloss mse\n", scheme), 4);
        CHECK(x.params[0].fanIn == 5);
        CHECK(x.params[0].fanOut == 24);
        CHECK(x.params[1].fanIn == 8);
        CHECK(x.params[1].fanOut == 24);
        // N(0, std) with xavier's sqrt(2 / (fan_in + fan_out)), kaiming's sqrt(1 / fan_in) (the
        // first weight: gain 1); 120 draws measure it within 20% (3 standard errors).
        const double want =
            std::string(scheme) == "xavier" ? std::sqrt(2.0 / (5 + 24)) : std::sqrt(1.0 / 5);
        const Tensor w = initialiseParameters(x, 2).at("layers.0.weight_ih_l0");
        double sq = 0;
        for (double v : w.data) sq += v * v;
        CHECK(std::sqrt(sq / double(w.data.size())) == Approx(want).epsilon(0.2));
    }
    Graph nb = model("input 7 steps 5\nlstm 8 bias=false\nlast\ndense 2\nloss cross_entropy\n", 4);
    REQUIRE(nb.params.size() == 4);
    CHECK(nb.params[1].name == "layers.0.weight_hh_l0");
    CHECK(nb.params[2].name == "layers.2.weight");
}

TEST_CASE("identity and orthogonal init of the recurrent weights", "[scan]") {
    Graph g = model("input 3 steps 5\nrnn 6 relu init=identity(1.5)\ngru 4 init=orthogonal\nlstm 3 "
                    "init=orthogonal(2)\n"
                    "last\ndense 2\nloss cross_entropy\n",
                    2);
    Bindings b = initialiseParameters(g, 9);
    const Tensor& id = b.at("layers.0.weight_hh_l0");
    for (int64_t r = 0; r < 6; ++r)
        for (int64_t c = 0; c < 6; ++c) CHECK(id.data[size_t(r * 6 + c)] == (r == c ? 1.5 : 0.0));
    CHECK(largestAbs(b.at("layers.0.bias_ih_l0")) == 0); // the IRNN's biases are zero
    CHECK(largestAbs(b.at("layers.0.bias_hh_l0")) == 0);
    CHECK(largestAbs(b.at("layers.0.weight_ih_l0")) > 0); // PyTorch's default
    for (auto [name, rows, cols, gain] : {std::tuple{"layers.1.weight_hh_l0", 12, 4, 1.0},
                                          std::tuple{"layers.2.weight_hh_l0", 12, 3, 2.0}}) {
        INFO(name);
        const Tensor& q = b.at(name);
        REQUIRE(q.shape == Shape{rows, cols});
        for (int64_t i = 0; i < cols; ++i)
            for (int64_t j = 0; j < cols; ++j) {
                double dot = 0;
                for (int64_t r = 0; r < rows; ++r)
                    dot += q.data[size_t(r * cols + i)] * q.data[size_t(r * cols + j)];
                CHECK(dot == Approx(i == j ? gain * gain : 0.0).margin(1e-12));
            }
    }
    // An identity recurrent weight in every gate block of an lstm.
    Graph l =
        model("input 3 steps 2\nlstm 2 init=identity\nlast\ndense 2\nloss cross_entropy\n", 2);
    const Tensor w = initialiseParameters(l, 1).at("layers.0.weight_hh_l0");
    REQUIRE(w.shape == Shape{8, 2});
    for (int64_t r = 0; r < 8; ++r)
        for (int64_t c = 0; c < 2; ++c)
            CHECK(w.data[size_t(r * 2 + c)] == (r % 2 == c ? 1.0 : 0.0));
}

TEST_CASE("recurrent layers' misuse is diagnosed at the statement", "[scan]") {
    auto error = [](const std::string& text) { return errorOf([&] { model(text, 4); }); };
    CHECK_THAT(
        error("input 784\nlstm 64\nlast\ndense 2\nloss mse\n"),
        Catch::Contains(
            "test.nn:2:1: error: lstm needs a sequence [batch, steps, features]; its input is "
            "[4,784]; write 'input 28 steps 28' or 'input 784 steps 1'"));
    CHECK_THAT(error("input 5\nlast\nloss mse\n"),
               Catch::Contains("2:1: error: last needs a sequence"));
    // An image of rank 3 is not a sequence: Graph::sequence is false, gradc check would print it
    // as an image.
    CHECK_THAT(error("input 28x28\nlstm 4\nlast\nloss mse\n"),
               Catch::Contains("2:1: error: lstm needs a sequence [batch, steps, features]; its "
                               "input is [4,28,28]; an "
                               "image is not a sequence; write 'input 28 steps 28'"));
    CHECK_THAT(error("input 1x5x7\nlast\nloss mse\n"), Catch::Contains("write 'input 5 steps 7'"));
    CHECK_THAT(error("input 3x5x7\ngru 2\nlast\nloss mse\n"),
               Catch::Contains(
                   "its input is [4,3,5,7]; recurrent layers read 'input STEPS steps FEATURES'"));
    CHECK_THAT(error("input 5 steps 2\nrnn 4 sigmoid\nlast\nloss mse\n"),
               Catch::Contains(
                   "2:7: error: rnn takes tanh or relu (nn.RNN's nonlinearity), not 'sigmoid'"));
    CHECK_THAT(error("input 28 steps\nlstm 4\nlast\nloss mse\n"),
               Catch::Contains("1:15: error: expected the number of features"));
    CHECK_THAT(error("input 28x28 steps 1\nlstm 4\nlast\nloss mse\n"),
               Catch::Contains("1:13: error: a sequence input is 'input STEPS steps FEATURES'"));
    CHECK_THAT(error("input 28 steps 0\nlstm 4\nlast\nloss mse\n"),
               Catch::Contains("1:16: error: 0 features per step is out of range"));
    CHECK_THAT(error("input 784\ndense 4 init=identity\nloss mse\n"),
               Catch::Contains("2:14: error: init scheme 'identity' is for the recurrent weights "
                               "of rnn, lstm and gru"));
    CHECK_THAT(error("input 5 steps 2\ngru 4 relu\nlast\nloss mse\n"),
               Catch::Contains("2:7: error: gru takes no activation"));
    // The saved states [B,T,S H] are the largest tensor; the graph is refused at the layer,
    // before differentiate makes them. 256 784 (5 2140) > 2^31 >= 256 784 (5 2139).
    CHECK_THAT(
        errorOf([] { model("input 784 steps 1\nlstm 2140\nlast\ndense 2\nloss mse\n", 256); }),
        Catch::Contains(
            "2:6: error: hidden size 2140 is too large for 784 steps at batch 256: the lstm saves "
            "10700 values per step and example for the backward pass ([256,784,10700]"));
    CHECK_NOTHROW(model("input 784 steps 1\nlstm 2139\nlast\ndense 2\nloss mse\n", 256));
    CHECK_THAT(error("input 5 steps 2\nlstm 3\nlast\nlast\nloss mse\n"),
               Catch::Contains("4:1: error: last needs a sequence"));
}

namespace {

/// The recurrent layers of `g`.
int layersOf(const Graph& g) {
    return int(std::count_if(g.nodes.begin(), g.nodes.end(), [](const Node& n) { return n.op == Op::Scan; }));
}

/// The fewest row tiles of the batch (planScan) among the recurrent kernels of `g` compiled
/// in float or double: at 2 or more, the threads share the batch's rows inside a step.
int64_t fewestRowTiles(const Graph& g, bool f64, int threads) {
    CodegenOptions opts;
    opts.cache = false, opts.f64 = f64, opts.threads = threads;
    int64_t fewest = INT64_MAX;
    for (const ScanPlan& plan : scanPlans(g, opts)) fewest = std::min(fewest, plan.rowTiles);
    return fewest;
}

/// `g` compiled in float and double on one, two and three threads against the interpreter:
/// the forward's logits and loss, and every output of the backward (gradients within 1e-4 of
/// each tensor's largest value in float, 1e-9 in double; the through-time norms element by
/// element, so the small norms of early steps count as much as the large ones).
void jitAgrees(const Graph& g, std::mt19937& rng) {
    int through = 0;
    compiledAgrees(g, rng, {1, 2, 3}, [&](const std::string& name, const Tensor& got, const Tensor& want, double tol) {
        if (name.rfind("through:", 0) != 0) return;
        ++through;
        CHECK(largestAbs(want) > 0);
        REQUIRE(got.data.size() == want.data.size());
        for (size_t t = 0; t < want.data.size(); ++t) {
            INFO("step " << t << ": " << got.data[t] << " vs " << want.data[t]);
            CHECK(std::fabs(got.data[t] - want.data[t]) <= tol * std::fabs(want.data[t]));
        }
    });
    const int builds = 2 * 3; // float and double, on 1, 2 and 3 threads
    CHECK(through == builds * layersOf(g)); // every layer's norms in every build
}

} // namespace

TEST_CASE("the jit's recurrent forward and gradients equal the interpreter's", "[scan][jit]") {
    std::mt19937 rng(31);
    // Batch 31: at least two row tiles of the register tile in float and double (asserted from
    // the plan; MR is 4 to 14 on the targets), the last one partial, shared by the threads.
    for (const char* cell : {"rnn 5 tanh", "rnn 5 relu", "lstm 5", "gru 5"})
        for (int steps : {1, 5}) {
            INFO(cell << ", " << steps << " steps");
            const Graph g = model(fmt::format("input 3 steps {}\n{}\nlast\ndense 2\nloss cross_entropy\n", steps, cell), 31);
            for (bool f64 : {false, true}) CHECK(fewestRowTiles(g, f64, 2) >= 2);
            jitAgrees(g, rng);
        }
}

TEST_CASE("the jit's recurrent kernels give the same bits on 1, 2 and 3 threads and on every run", "[scan][jit][threads]") {
    // Each phase of a step is the same outlined function on any thread count, over fixed row
    // tiles, its sums in a fixed order: the threads change who runs a tile, not what it adds.
    // Batch 45 and a stack of lstm 40 under gru 20: at least two row tiles in float and double.
    const Graph g = model("input 6 steps 3\nlstm 40\ngru 20\nlast\ndense 3\nloss cross_entropy\n", 45);
    std::mt19937 rng(33);
    Bindings b = randomBindings(g, rng);
    for (bool f64 : {false, true}) {
        CHECK(fewestRowTiles(g, f64, 3) >= 2);
        std::map<std::string, Tensor> first;
        for (int threads : {1, 2, 3}) {
            CodegenOptions opts;
            opts.cache = false, opts.f64 = f64, opts.threads = threads;
            CompiledModel cm = compileModel(g, opts);
            for (int run = 0; run < 3; ++run) {
                auto got = runCompiled(cm, g, b, true);
                if (first.empty()) first = got;
                REQUIRE(got.size() == first.size());
                for (auto& [name, t] : first) {
                    INFO((f64 ? "f64 " : "f32 ") << name << ", " << threads << " thread(s), run " << run);
                    CHECK(got.at(name).data == t.data);
                }
            }
        }
    }
}

TEST_CASE("the jit's recurrent kernels on wide layers, stacks, bias=false and identity init", "[scan][jit][heavy]") {
    std::mt19937 rng(32);
    // The smallest: one example, one hidden unit (a gate block narrower than a vector).
    for (const char* cell : {"rnn 1", "lstm 1", "gru 1"}) {
        INFO(cell);
        jitAgrees(model(fmt::format("input 1 steps 3\n{}\nlast\ndense 2\nloss cross_entropy\n", cell), 1), rng);
    }
    // The golden stacked model (gru 32 under lstm 16, no biases, orthogonal init).
    jitAgrees(compileFile(GRADC_SOURCE_DIR "/tests/golden/seq/seq_stacked.nn", {5}).graph, rng);
    // lstm 40: 160 gate columns (more than one NR panel of the forward product); gru 70: more
    // than one panel of H in the carry and dW products.
    for (const char* text : {"input 4 steps 3\nlstm 40\nlast\ndense 3\nloss cross_entropy\n",
                             "input 2 steps 3\ngru 70\nlast\ndense 2\nloss mse\n",
                             "input 3 steps 4\ngru 6\nlstm 4 bias=false\nlast\ndense 2\nloss cross_entropy\n",
                             "input 1 steps 6\nrnn 8 relu init=identity\nlast\ndense 2\nloss cross_entropy\n"}) {
        INFO(text);
        jitAgrees(model(text, 9), rng);
    }
}

TEST_CASE("each recurrent layer's norms of dL/dh_t are an output, in the layout, written by the "
          "backward pass",
          "[scan]") {
    // layers.0 (the gru) does not reach the loss: its norms are zeros, still written.
    const char* text =
        "s = input 4 steps 2\ngru 3\nlstm 2 from s\nlast\ndense 2\nloss cross_entropy\n";
    Graph fwd = model(text, 3);
    Graph grad = differentiate(fwd);
    std::mt19937 rng(21);
    Bindings b = randomBindings(fwd, rng);
    const std::vector<Tensor> vals = interpret(grad, b);
    auto out = interpretOutputs(grad, b);
    REQUIRE(out.count("through:layers.0") == 1);
    REQUIRE(out.count("through:layers.1") == 1);
    CHECK(out.at("through:layers.0").shape == Shape{4});
    CHECK(largestAbs(out.at("through:layers.0")) == 0);
    CHECK(out.at("through:layers.1").data == valueOf(grad, vals, Op::ScanGradNorm).data);
    CHECK(largestAbs(out.at("through:layers.1")) > 0);

    const Layout l = computeLayout(fwd);
    const LayoutEntry& e = l.at(Role::ThroughTime, "layers.1");
    CHECK(e.array == Array::Acts);
    CHECK(e.shape == Shape{4});
    CHECK(std::string(roleName(e.role)) == "through_time");
    const std::vector<Output> outs = backwardOutputs(grad);
    size_t lastGrad = 0, firstThrough = outs.size();
    for (size_t i = 0; i < outs.size(); ++i) {
        if (outs[i].role == OutputRole::Grad) lastGrad = i;
        if (outs[i].role == OutputRole::ThroughTime) firstThrough = std::min(firstThrough, i);
    }
    CHECK(lastGrad < firstThrough);
    CHECK(firstThrough < outs.size());

    // The interpreter backend writes them where the layout says, in float and double.
    for (bool f64 : {true, false}) {
        BackendOptions o;
        o.backend = "interp", o.f64 = f64, o.cache = false;
        auto exe = compile(fwd, o);
        auto got = run(*exe, b, /*backward=*/true);
        REQUIRE(got.count("through:layers.1") == 1);
        const Tensor& want = out.at("through:layers.1");
        for (size_t t = 0; t < 4; ++t)
            CHECK(got.at("through:layers.1").data[t] ==
                  Approx(want.data[t]).epsilon(f64 ? 1e-12 : 1e-5));
        CHECK(run(*exe, b, /*backward=*/false).count("through:layers.1") == 0);
    }
}

TEST_CASE("grads --inputs takes the batch from a safetensors file: sequences that are not images",
          "[scan][jobs]") {
    TempDir dir("scan_inputs");
    const std::string text = "input 5 steps 2\ngru 3\nlast\ndense 4\nloss cross_entropy\n";
    const std::string modelPath = dir.write("m.nn", text);
    Tensor x{{3, 10}, {}}; // [B, T N]: any shape that holds the model's inputs per example
    for (int i = 0; i < 30; ++i) x.data.push_back(std::sin(0.7 * i));
    const Tensor target{{3}, {2, 0, 3}};
    const std::string inputs =
        dir.write("in.safetensors", encodeSafetensors({{"x", x}, {"target", target}}, true));
    GradsOptions o;
    o.models = {modelPath}, o.inputs = inputs, o.batch = 0, o.seed = 4;
    o.session.backend = "interp";
    o.data.dir = dir.file("no-data-here"); // never read
    GradsRun run = runGrads(o);
    REQUIRE(run.models.size() == 1);
    CHECK(run.models[0].report.batch == 3);
    // The same gradients as the interpreter's on the same bindings.
    Graph g = model(text, 3);
    Bindings b = initialiseParameters(g, 4);
    b["x"] = Tensor{{3, 5, 2}, x.data};
    b["target"] = target;
    auto want = interpretOutputs(differentiate(g), b);
    CHECK(run.models[0].report.loss == Approx(want.at("loss").data[0]).epsilon(1e-12));
    REQUIRE(run.grads.size() == g.params.size());
    for (auto& [name, t] : run.grads) {
        INFO(name);
        CHECK(relativeError(t, want.at("grad:" + name)) < 1e-12);
    }
    // The gru's norms of dL/dh_t too (--dump-grads writes them after the gradients).
    REQUIRE(run.throughTime.size() == 1);
    CHECK(run.throughTime[0].first == "through:layers.0");
    CHECK(run.throughTime[0].second.shape == Shape{5});
    CHECK(largestAbs(run.throughTime[0].second) > 0);
    CHECK(relativeError(run.throughTime[0].second, want.at("through:layers.0")) < 1e-12);
    // Mistakes name the file.
    o.batch = 4;
    CHECK_THAT(errorOf([&] { runGrads(o); }),
               Catch::Contains("'x' holds 3 examples, but the batch is 4"));
    o.batch = 0;
    o.inputs = dir.write("bad.safetensors",
                         encodeSafetensors({{"x", x}, {"target", Tensor{{3}, {2, 0, 4}}}}, true));
    CHECK_THAT(errorOf([&] { runGrads(o); }),
               Catch::Contains("bad.safetensors: error: label 4 of example 2 is out of range for "
                               "the model's 4 classes (0 to 3)"));
    o.inputs = dir.write("half.safetensors",
                         encodeSafetensors({{"x", x}, {"target", Tensor{{3}, {2, 0.5, 1}}}}, true));
    CHECK_THAT(errorOf([&] { runGrads(o); }),
               Catch::Contains("label 0.5 of example 1 is not a class index (a whole number)"));
    // x [3,2,5] holds 10 inputs per example, as the model's [3,5,2], but steps and features
    // swapped.
    o.inputs =
        dir.write("swapped.safetensors",
                  encodeSafetensors({{"x", Tensor{{3, 2, 5}, x.data}}, {"target", target}}, true));
    CHECK_THAT(errorOf([&] { runGrads(o); }),
               Catch::Contains(
                   "swapped.safetensors: error: 'x' [3,2,5] does not fit the model " + modelPath +
                   ", whose input is [5,2] per example: give x as [batch,5,2] or flat [batch,10]"));
    o.inputs =
        dir.write("same.safetensors",
                  encodeSafetensors({{"x", Tensor{{3, 5, 2}, x.data}}, {"target", target}}, true));
    const GradsRun same = runGrads(o); // [B,T,N] as the model's: the same batch as flat [B, T N]
    REQUIRE(same.grads.size() == run.grads.size());
    for (size_t i = 0; i < run.grads.size(); ++i)
        CHECK(same.grads[i].second.data == run.grads[i].second.data);

    o.inputs = dir.write("nox.safetensors", encodeSafetensors({{"target", target}}, true));
    CHECK_THAT(errorOf([&] { runGrads(o); }), Catch::Contains("needs a tensor 'x'"));
}

namespace {

/// Parameters and inputs under which dL/dh_t stays alive over 784 steps, so that the norm at
/// t = 0 is a number the check can get wrong, not 0.5^783 on both sides: the step's Jacobian
/// near the identity. tanh rnn: orthogonal W_hh, W_ih 1e-2 and zero biases (the linear part
/// of tanh); IRNN: W_hh = I, zero biases, positive W_ih and x (relu's input stays positive);
/// lstm: forget gate's bias +8 (f = 0.9997), a small candidate g from x and an antisymmetric
/// W_hh block for g (c neither drifts nor saturates); gru: update gate's bias +8 (h_t ≈ h_{t-1}).
Bindings longLived(const Graph& fwd, const std::string& cell, std::mt19937& rng) {
    Bindings b = cell == "rnn" || cell == "irnn" ? initialiseParameters(fwd, rng())
                                                 : randomBindings(fwd, rng);
    b["x"] = randomBindings(fwd, rng).at("x");
    b["target"] = Tensor{{2}, {0, 1}};
    const std::string m = "layers.0.";
    auto& wih = b.at(m + "weight_ih_l0").data;
    auto &whh = b.at(m + "weight_hh_l0").data, &bih = b.at(m + "bias_ih_l0").data,
         &bhh = b.at(m + "bias_hh_l0").data;
    const size_t H = 2; // the gate blocks' rows: [g H, (g + 1) H)
    if (cell == "rnn") {
        for (double& v : wih) v *= 1e-2;
        std::fill(bih.begin(), bih.end(), 0.0), std::fill(bhh.begin(), bhh.end(), 0.0);
    } else if (cell == "irnn") {
        for (double& v : wih) v = 1e-3 + 1e-2 * std::fabs(v);
        for (double& v : b.at("x").data) v = std::fabs(v);
    } else if (cell == "lstm") {
        for (size_t j = 0; j < H; ++j) {
            bih[H + j] += 8;
            wih[2 * H + j] *= 0.1, bih[2 * H + j] = 0, bhh[2 * H + j] = 0; // N = 1: one column
        }
        const double g[] = {0, 0.2, -0.2, 0};
        std::copy(g, g + 4, whh.begin() + long(2 * H * H));
    } else {
        for (size_t j = 0; j < H; ++j) bih[H + j] += 8;
    }
    return b;
}

} // namespace

TEST_CASE("long sequences (28 and 784 steps): sampled central differences and dL/dh_t norms",
          "[scan]") {
    std::mt19937 rng(28);
    struct Case {
        const char *layer, *cell;
    };
    for (Case c : {Case{"rnn 2 init=orthogonal", "rnn"}, Case{"rnn 2 relu init=identity", "irnn"},
                   Case{"lstm 2", "lstm"}, Case{"gru 2", "gru"}})
        for (int64_t T : {28, 784}) {
            const std::string text = fmt::format(
                "input {} steps 1\n{}\nlast\ndense 2\nloss cross_entropy\n", T, c.layer);
            INFO(text);
            Graph fwd = model(text, 2);
            Graph grad = differentiate(fwd, {/*inputGradient=*/true});
            Bindings b = longLived(fwd, c.cell, rng);
            gradc::gradcheck(fwd, b, rng, /*samples=*/4);
            const std::vector<Tensor> vals = interpret(grad, b);
            auto out = interpretOutputs(grad, b);
            const Tensor& norms = out.at("through:layers.0");
            REQUIRE(norms.shape == Shape{T});
            CHECK(norms.data == valueOf(grad, vals, Op::ScanGradNorm).data);
            for (int64_t t : {int64_t(0), T / 2, T - 2, T - 1}) {
                const double numeric = numericNormAt(fwd, b, t);
                INFO("t = " << t << " norm " << norms.data[size_t(t)] << " numeric " << numeric);
                CHECK(numeric > 1e-3); // alive at t = 0 too: the comparison below can fail
                CHECK(std::fabs(norms.data[size_t(t)] - numeric) <= 1e-6 * numeric);
            }
        }
}

TEST_CASE("the interpreter keeps one copy of each loop result: the saved states are not copied out "
          "of the memo",
          "[scan]") {
    // lstm 64 over 784 steps at batch 16: the saved states [16,784,320] are 31 MiB in double.
    const Graph fwd = model("input 784 steps 1\nlstm 64\nlast\ndense 2\nloss cross_entropy\n", 16);
    const Graph grad = differentiate(fwd);
    std::mt19937 rng(3);
    const Bindings b = randomBindings(fwd, rng);
    auto peakKiB = [] {
        struct rusage u {};
        getrusage(RUSAGE_SELF, &u);
        return double(u.ru_maxrss);
    };
    const double before = peakKiB();
    const std::vector<Tensor> vals = interpret(grad, b);
    const double grown = peakKiB() - before;
    double kept = 0; // KiB of every value, which interpret returns
    for (const Tensor& t : vals) kept += double(t.data.size()) * sizeof(double) / 1024;
    const double states =
        double(valueOf(grad, vals, Op::ScanState).data.size()) * sizeof(double) / 1024;
    REQUIRE(states > 30 * 1024);
    INFO("grew " << grown / 1024 << " MiB for " << kept / 1024 << " MiB of values, states "
                 << states / 1024 << " MiB");
    // A zero tensor of each loop result made and dropped, and a copy returned while the memo
    // keeps its own, took three times the states at the peak.
    CHECK(grown < kMemorySlack * (kept + states / 2));
}

TEST_CASE(
    "the verifier checks that a reverse loop reads its own scan, scan_state and recurrent weight",
    "[scan][verify]") {
    Graph g = differentiate(
        model("input 4 steps 3\nrnn 3\nrnn 3\nlast\ndense 2\nloss cross_entropy\n", 2));
    REQUIRE(verify(g).empty());
    // Both layers' w_hh are [3,3]: the shape rules cannot tell them apart, the verifier can.
    std::vector<ValueId> whh;
    for (const ParamInfo& p : g.params)
        if (p.name.find("weight_hh") != std::string::npos) whh.push_back(p.node);
    REQUIRE(whh.size() == 2);
    int changed = 0;
    for (Node& n : g.nodes)
        if (n.op == Op::ScanGradW && n.in[3] == whh[1]) n.in[3] = whh[0], ++changed;
    REQUIRE(changed == 1);
    CHECK_THAT(verify(g),
               Catch::Contains(
                   "scan_grad_w does not read a scan, its scan_state and its recurrent weight"));
    // A scan's cell is part of the node: printed, and checked against its operands' shapes.
    Graph f = model("input 4 steps 3\nlstm 2\nlast\ndense 2\nloss cross_entropy\n", 2);
    for (Node& n : f.nodes)
        if (n.op == Op::Scan) n.cell = Cell::Gru;
    CHECK_THAT(verify(f), Catch::Contains("do not fit a gru cell of 3 gates"));
    CHECK_THAT(printGraph(model("input 4 steps 3\ngru 2\nlast\ndense 2\nloss cross_entropy\n", 2)),
               Catch::Contains("= scan[cell=gru] %6, %2, %4 : real[2,4,2]"));
}

TEST_CASE("the compiled code of a recurrent layer does not grow with its steps", "[scan][jit]") {
    // seq_lstm (28 steps) and the same model read pixel by pixel (784 steps): one loop over t
    // around one cell body, so the same functions, and the scan's step functions (forward,
    // the forward of the backward program, its phases A and B) the same size, T being a
    // constant of their address arithmetic only. On pinned thread counts (the rest of the
    // module, the input projection's product, depends on them and on T's rows).
    struct Size {
        int functions = 0;
        std::vector<int> scan; ///< the instructions of each gradc_scan_* function, in order
    };
    auto size = [](const std::string& input, int threads) {
        Graph g = model(input + "\nlstm 128\nlast\ndense 10\nloss cross_entropy\n", 16);
        CodegenOptions co;
        co.cache = false, co.threads = threads;
        const std::string ir = emitModule(g, co, "llvm");
        Size s;
        std::istringstream lines(ir);
        int* count = nullptr;
        for (std::string line; std::getline(lines, line);) {
            if (line.rfind("define ", 0) == 0) {
                ++s.functions, count = nullptr;
                if (line.find("@gradc_scan_") != std::string::npos) count = &s.scan.emplace_back(0);
            } else if (line == "}") count = nullptr;
            else if (count && line.size() > 2 && line.rfind("  ", 0) == 0 && line[2] != ' ') ++*count;
        }
        return s;
    };
    for (int threads : {1, 2}) {
        const Size rows = size("input 28 steps 28", threads), pixels = size("input 784 steps 1", threads);
        INFO(threads << " thread(s): " << rows.functions << " functions at 28 steps, " << pixels.functions << " at 784");
        CHECK(rows.functions >= 10);
        CHECK(rows.functions == pixels.functions);
        REQUIRE(rows.scan.size() == 4);
        REQUIRE(pixels.scan.size() == rows.scan.size());
        for (size_t i = 0; i < rows.scan.size(); ++i) {
            INFO("step function " << i << ": " << rows.scan[i] << " instructions at 28 steps, " << pixels.scan[i] << " at 784");
            CHECK(rows.scan[i] > 50);
            CHECK(std::abs(rows.scan[i] - pixels.scan[i]) <= rows.scan[i] / 100);
        }
    }
}

TEST_CASE("the cell loops run at the vector width, with no scalar copy behind run-time alias checks",
          "[scan][jit]") {
    // The step functions read a dozen arrays through their context: without the loops'
    // parallel marking the vectoriser guarded its vector loop with run-time checks that failed,
    // and the cell ran element by element (seq_lstm's step 123 -> 71 ms with the marking). At a
    // hidden width that is a multiple of every vector length, a fully vectorised cell loop
    // leaves no scalar loop (its blocks are named j.loop) in any gradc_scan_* function.
    for (const char* cell : {"lstm 128", "gru 128", "rnn 128 tanh"})
        for (bool f64 : {false, true}) {
            Graph g = model(std::string("input 28 steps 28\n") + cell + "\nlast\ndense 10\nloss cross_entropy\n", 16);
            CodegenOptions co;
            co.cache = false, co.threads = 1, co.f64 = f64;
            const std::string ir = emitModule(g, co, "llvm");
            std::istringstream lines(ir);
            int scanFunctions = 0, scalarCells = 0, vectorOps = 0;
            bool inScan = false;
            for (std::string line; std::getline(lines, line);) {
                if (line.rfind("define ", 0) == 0) {
                    inScan = line.find("@gradc_scan_") != std::string::npos;
                    scanFunctions += inScan;
                } else if (inScan && line.rfind("j.loop", 0) == 0) ++scalarCells;
                else if (inScan && line.find(f64 ? "x double>" : "x float>") != std::string::npos) ++vectorOps;
            }
            INFO(cell << (f64 ? " f64" : " f32") << ": " << scanFunctions << " scan functions");
            CHECK(scanFunctions == 4);
            CHECK(scalarCells == 0);
            CHECK(vectorOps > 20);
        }
}
