// JitTests.cpp — the compiled code against the reference interpreter: every model in
// models/, random models of every construct and odd shapes, in float and double; and the
// object cache's hit, miss and corruption paths.
#include "Autodiff.h"
#include "Codegen.h"
#include "Execute.h"
#include "Pipeline.h"
#include "SplitCodegen.h"
#include "TestUtil.h"
#include "ThreadPool.h"

#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

using namespace gradc;
namespace fs = std::filesystem;

namespace {

/// Compiles `fwd` in f64 (and f32 unless `f32` is false) and checks forward and backward
/// against the interpreter.
void agree(const Graph& fwd, std::mt19937& rng, bool f32 = true, int threads = 0) {
    Bindings b = randomBindings(fwd, rng);
    auto wantForward = interpretOutputs(fwd, b);
    auto wantBackward = interpretOutputs(differentiate(fwd), b);
    for (bool f64 : {false, true}) {
        if (!f64 && !f32) continue;
        const double tol = f64 ? 1e-8 : 1e-4;
        CodegenOptions opts;
        opts.f64 = f64;
        opts.cache = false;
        opts.threads = threads;
        CompiledModel cm = compileModel(fwd, opts);
        auto gotForward = runCompiled(cm, fwd, b, false);
        auto gotBackward = runCompiled(cm, fwd, b, true);
        INFO(fwd.model << (f64 ? " f64" : " f32"));
        for (const char* name : {"logits", "loss"}) {
            INFO(name);
            CHECK(relativeError(gotForward.at(name), wantForward.at(name), 0) <= tol);
        }
        double gradScale = 0;
        for (auto& [name, want] : wantBackward)
            if (name.rfind("grad:", 0) == 0) gradScale = std::max(gradScale, largestAbs(want));
        for (auto& [name, want] : wantBackward) {
            if (name == "logits") continue;
            INFO(name);
            CHECK(relativeError(gotBackward.at(name), want, gradScale) <= tol);
        }
    }
}

Graph model(const std::string& text, int64_t batch) {
    return compileSource("test.nn", text, {batch}).graph;
}

} // namespace

TEST_CASE("the JIT agrees with the interpreter on every model in models/", "[jit][heavy]") {
    std::mt19937 rng(11);
    int checked = 0;
    for (auto& entry : fs::directory_iterator(GRADC_SOURCE_DIR "/models")) {
        // wide_relu (784-4096-4096-10, the 29 GFLOP step benchmark) adds no construct; its 20M
        // parameters in the double interpreter would take 1 GB and seconds. deep40_relu stays:
        // 40 identical layers are what compiled code shares between products.
        if (entry.path().stem() == "wide_relu") continue;
        INFO(entry.path());
        Graph g = compileFile(entry.path().string(), {5}).graph;
        agree(g, rng);
        ++checked;
    }
    CHECK(checked >= 21);
}

TEST_CASE("the JIT agrees with the interpreter on odd shapes", "[jit][heavy]") {
    std::mt19937 rng(12);
    for (int64_t batch : {1, 2, 7}) {
        for (int64_t w : {1, 3, 17, 129}) {
            std::string n = std::to_string(w);
            INFO("batch " << batch << " width " << w);
            agree(model("input " + n + "\ndense " + n + " tanh\ndense " + n + " relu bias=false\n"
                        "dense 3\nloss cross_entropy\n", batch), rng);
            agree(model("input 5\ndense " + n + " sigmoid\ndense 1\nloss bce\n", batch), rng);
            agree(model("input " + n + "\na = dense " + n + " elu\ndense " + n + " gelu\nadd a\n"
                        "dense " + n + "\nloss mse\n", batch), rng);
            // Training-mode batchnorm of a batch of 2 has an input gradient that is zero in exact
            // arithmetic (x̂ = ±1): in float it is pure rounding noise, so it starts at 7 here
            // (the double-precision build checks every batch size above).
            if (batch >= 7)
                agree(model("input 4\ndense " + n + "\nbatchnorm\nswish\ndense 2\nloss cross_entropy\n", batch), rng);
        }
    }
}

TEST_CASE("the JIT agrees with the interpreter on random models of every construct", "[jit]") {
    std::mt19937 rng(13);
    const std::vector<const char*> acts = {"relu", "tanh", "sigmoid", "elu", "gelu", "swish", "softplus",
                                           "leaky_relu(0.2)", "sq", "hard"};
    for (int trial = 0; trial < 25; ++trial) {
        int width = 1 + int(rng() % 9);
        std::string text = randomModel(rng,
                                       "activation sq(x) = x * x / 4 + x\n"
                                       "activation hard(x, a=0.1) = select(abs(x) < 1, x, a * x) + min(x, 0.5) * max(x, -2)\n",
                                       acts, width, 9, 6);
        INFO(text);
        // Batchnorm of a feature that is nearly constant over the batch (a saturated
        // activation, a 1-wide layer, a small batch) divides rounding noise by a tiny
        // deviation: in float that is ill-conditioned, as it is in any float framework. Random
        // models with batchnorm are therefore checked in double only; the models in models/
        // and the odd shapes above check batchnorm in float too.
        bool bn = text.find("batchnorm") != std::string::npos;
        agree(model(text, 1 + int(rng() % 8) + (bn ? 1 : 0)), rng, /*f32=*/!bn);
    }
}

TEST_CASE("a label out of range makes the compiled loss NaN, never a stray read", "[jit]") {
    Graph fwd = model("input 3\ndense 4\nloss cross_entropy\n", 2);
    std::mt19937 rng(14);
    Bindings b = randomBindings(fwd, rng);
    b["target"].data = {1, 7};
    CodegenOptions opts;
    opts.cache = false;
    CompiledModel cm = compileModel(fwd, opts);
    CHECK(std::isnan(runCompiled(cm, fwd, b, true).at("loss").data[0]));
    b["target"].data = {1, -1};
    CHECK(std::isnan(runCompiled(cm, fwd, b, false).at("loss").data[0]));
}

TEST_CASE("compiled objects are cached, corrupt, truncated and stale entries are rebuilt", "[jit][cache]") {
    TempDir dir("cache");
    Graph fwd = model("input 6\ndense 5 tanh\ndense 3\nloss cross_entropy\n", 4);
    std::mt19937 rng(15);
    Bindings b = randomBindings(fwd, rng);
    const double want = interpretOutputs(fwd, b).at("loss").data[0];
    CodegenOptions opts;
    opts.cacheDir = dir.path.string();
    auto compile = [&] {
        CompiledModel cm = compileModel(fwd, opts);
        CHECK(runCompiled(cm, fwd, b, false).at("loss").data[0] == Approx(want).epsilon(1e-5));
        return cm.cacheHit;
    };
    CHECK_FALSE(compile()); // miss: compiled and stored
    CHECK(compile());       // hit
    std::vector<fs::path> entries;
    for (auto& e : fs::directory_iterator(dir.path))
        if (e.path().extension() == ".o") entries.push_back(e.path()); // not gemm-tiles.txt beside them
    REQUIRE(entries.size() == 1);
    const fs::path entry = entries[0];
    std::string good;
    {
        std::ifstream in(entry, std::ios::binary);
        good.assign(std::istreambuf_iterator<char>(in), {});
    }
    auto rewrite = [&](const std::string& bytes) { std::ofstream(entry, std::ios::binary | std::ios::trunc) << bytes; };

    std::string flipped = good;
    flipped[flipped.size() / 2] ^= 0x5a; // a flipped byte in the object code
    rewrite(flipped);
    CHECK_FALSE(compile());
    CHECK(compile()); // rebuilt and stored again

    rewrite(good.substr(0, good.size() - 100)); // truncated
    CHECK_FALSE(compile());

    std::string stale = good;
    stale[40] = stale[40] == 'a' ? 'b' : 'a'; // an entry whose recorded key differs (it starts at byte 36)
    rewrite(stale);
    CHECK_FALSE(compile());

    rewrite("not an object file"); // garbage
    CHECK_FALSE(compile());
    CHECK(compile());

    opts.cache = false; // --no-cache neither reads nor writes
    CHECK_FALSE(compile());
}

TEST_CASE("threaded code agrees with the interpreter for 1, 2 and 3 threads", "[jit][threads]") {
    std::mt19937 rng(16);
    for (int threads : {1, 2, 3}) {
        INFO(threads << " threads");
        for (const char* name : {"seed_relu", "seed_sigmoid_bn", "resnet_sigmoid_bn", "binary_bce"})
            agree(compileFile(std::string(GRADC_SOURCE_DIR "/models/") + name + ".nn", {13}).graph, rng, true,
                  threads);
        agree(model("input 7\ndense 129 tanh\ndense 3\nloss cross_entropy\n", 3), rng, true, threads);
    }
}

TEST_CASE("the thread count is an option of each compiled model, not a setting shared by all", "[jit][threads]") {
    // Two models compiled with different counts, alternately: each keeps the scratch of its
    // own count (one matrix-product tile buffer per thread).
    const Graph g = compileFile(GRADC_SOURCE_DIR "/models/seed_relu.nn", {16}).graph;
    CodegenOptions one, four;
    one.cache = four.cache = false;
    one.threads = 1, four.threads = 4;
    const CompiledModel a = compileModel(g, one), b = compileModel(g, four), c = compileModel(g, one);
    CHECK(b.workspaceBytes > a.workspaceBytes);
    CHECK(c.workspaceBytes == a.workspaceBytes);
    CHECK(resolveThreads(0) == hardwareThreads());
    CHECK(resolveThreads(5) == 5);
}

TEST_CASE("compiled activations and losses stay finite where their math is finite", "[jit][numerics]") {
    // Pre-activations of +-100 and +-1000 and logits of +-1e4: saturated, never NaN or Inf.
    for (const char* act : {"sigmoid", "tanh", "softplus", "elu", "swish", "gelu", "leaky_relu", "relu"}) {
        for (const char* loss : {"dense 3\nloss cross_entropy\n", "dense 1\nloss bce\n"}) {
            Graph g = model(std::string("input 4\ndense 4 ") + act + "\n" + loss, 4);
            Bindings b;
            for (auto& p : g.params) {
                const Shape& s = g[p.node].shape;
                Tensor t{s, std::vector<double>(size_t(elementCount(s)), 0.0)};
                if (p.name == "layers.0.weight")
                    for (int i = 0; i < 4; ++i) t.data[size_t(i * 4 + i)] = 1; // identity: preact = x
                if (p.name.find("weight") != std::string::npos && p.name != "layers.0.weight")
                    for (double& v : t.data) v = 10; // logits of +-1e4 from activations of 1e3
                b[p.name] = t;
            }
            b["x"] = Tensor{{4, 4}, {100, -100, 1000, -1000, -100, 100, -1000, 1000, 0, 1e-30, -1e-30, 50,
                                     -50, 88, -88, 89}};
            b["target"] = Tensor{g[g[g.output(OutputRole::Loss)].in[1]].shape,
                                 std::vector<double>(size_t(elementCount(g[g[g.output(OutputRole::Loss)].in[1]].shape)), 1.0)};
            CodegenOptions opts;
            opts.cache = false;
            for (bool f64 : {false, true}) {
                opts.f64 = f64;
                INFO(act << ", " << loss << (f64 ? " f64" : " f32"));
                auto out = runCompiled(compileModel(g, opts), g, b, true);
                for (auto& [name, t] : out)
                    for (double v : t.data) {
                        INFO(name);
                        REQUIRE(std::isfinite(v));
                    }
            }
        }
    }
}

TEST_CASE("compiled float exp is within 2 ulp of the library's, with its overflow, underflow and NaN", "[jit][numerics]") {
    std::vector<double> xs = {-1e30, -200, -105, -104, -103.9, -103, -100, -95, -90, -87.5, -87, -50, -10, -1, -0.5,
                              -1e-8, 0, 1e-8, 0.25, 0.5, 0.6931, 1, 2, 10, 50, 80, 88, 88.7, 88.72, 88.73, 89, 100, 1e30,
                              std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(), std::nan("")};
    for (double x = -104; x <= 89; x += 0.37) xs.push_back(x);
    while (xs.size() % 8) xs.push_back(0.125);
    const int64_t rows = int64_t(xs.size() / 8);
    Graph g = compileSource("exp.nn", "activation e(x) = exp(x)\ninput 8\ne\nloss mse\n", {rows}).graph;
    Bindings b;
    b["x"] = Tensor{{rows, 8}, xs};
    b["target"] = Tensor{{rows, 8}, std::vector<double>(xs.size(), 0.0)};
    CodegenOptions opts;
    opts.cache = false;
    auto out = runCompiled(compileModel(g, opts), g, b, false);
    const std::vector<double>& got = out.at("logits").data;
    for (size_t i = 0; i < xs.size(); ++i) {
        const float want = std::exp(float(xs[i]));
        const float y = float(got[i]);
        INFO("exp(" << xs[i] << ") = " << y << ", library " << want);
        if (std::isnan(want)) {
            CHECK(std::isnan(y));
        } else if (std::isinf(want) || want == 0) {
            CHECK(y == want);
        } else if (want < std::numeric_limits<float>::min()) { // subnormal: an absolute error of 2 units
            CHECK(std::fabs(y - want) <= 2 * std::numeric_limits<float>::denorm_min());
        } else {
            CHECK(std::fabs(y - want) <= 2 * std::numeric_limits<float>::epsilon() * want);
        }
    }
}

TEST_CASE("compiled min and max keep NaN as the interpreter and PyTorch do", "[jit][numerics]") {
    // layers.0 is the identity, so the activation sees the input; logits = its output.
    Graph g = model("activation mm(x) = max(x, 0) + min(x, 1)\ninput 4\ndense 4 mm\nrelu\ndense 4\nloss mse\n", 2);
    Bindings b;
    for (auto& p : g.params) {
        const Shape& s = g[p.node].shape;
        Tensor t{s, std::vector<double>(size_t(elementCount(s)), 0.0)};
        if (p.name.find("weight") != std::string::npos)
            for (int i = 0; i < 4; ++i) t.data[size_t(i * 4 + i)] = 1;
        b[p.name] = t;
    }
    const double nan = std::nan("");
    b["x"] = Tensor{{2, 4}, {nan, -2, 0.5, 3, -nan, INFINITY, -INFINITY, -0.5}};
    b["target"] = Tensor{{2, 4}, std::vector<double>(8, 0.0)};
    auto want = interpretOutputs(g, b);
    CodegenOptions opts;
    opts.cache = false;
    for (bool f64 : {false, true}) {
        opts.f64 = f64;
        auto got = runCompiled(compileModel(g, opts), g, b, false);
        const Tensor& logits = got.at("logits");
        for (size_t i = 0; i < 8; ++i) {
            INFO((f64 ? "f64 " : "f32 ") << i);
            double w = want.at("logits").data[i];
            CHECK(std::isnan(logits.data[i]) == std::isnan(w));
            if (!std::isnan(w)) CHECK(logits.data[i] == Approx(w));
        }
        CHECK(std::isnan(logits.data[0]));
        CHECK(std::isnan(logits.data[4]));
    }
}

TEST_CASE("the JIT agrees with the interpreter on mul and broadcast maps", "[jit][map]") {
    std::mt19937 rng(14);
    for (int64_t batch : {1, 4, 9}) {
        INFO("batch " << batch);
        Graph g = gatedGraph(batch);
        REQUIRE(verify(g).empty());
        agree(g, rng);
    }
}

TEST_CASE("the JIT agrees with the interpreter on tensors of rank 3 and 4", "[jit][rank]") {
    std::mt19937 rng(13);
    for (int64_t batch : {1, 2, 7}) {
        for (int64_t w : {1, 3, 17}) {
            std::string n = std::to_string(w);
            INFO("batch " << batch << " width " << w);
            // [B,5,W] -> [B,5,W] (a bias broadcast over two leading dimensions) -> [B,5W].
            agree(model("input 5x" + n + "\ndense " + n + " relu\nflatten\ndense 3\nloss cross_entropy\n", batch), rng);
            agree(model("input 2x" + n + "x3\na = dense " + n + " tanh\ndense " + n + " sigmoid bias=false\nadd a\n"
                        "flatten\ndense 1\nloss bce\n", batch), rng);
        }
        // The products spread over threads; the weight gradient sums over B*28 rows.
        agree(model("input 28x28\ndense 32 relu\nflatten\ndense 10\nloss cross_entropy\n", batch), rng, true, 2);
    }
}

TEST_CASE("a model compiled in parts on threads runs bitwise as compiled in one part", "[jit][split]") {
    // The same kernels (the code planned for 2 threads), optimised and emitted as one module
    // and as 3 parts on threads: every output and gradient is the same to the bit.
    std::mt19937 rng(17);
    for (const char* name : {"seed_sigmoid", "seed_sigmoid_bn", "resnet_sigmoid_bn"}) {
        const Graph fwd = compileFile(std::string(GRADC_SOURCE_DIR "/models/") + name + ".nn", {13}).graph;
        const Bindings b = randomBindings(fwd, rng);
        for (bool f64 : {false, true}) {
            INFO(name << (f64 ? " f64" : " f32"));
            CodegenOptions opts;
            opts.f64 = f64;
            opts.cache = false;
            opts.threads = 2;
            opts.compileThreads = 1;
            const CompiledModel one = compileModel(fwd, opts);
            opts.compileThreads = 3;
            const CompiledModel split = compileModel(fwd, opts);
            CHECK(one.objects == 1);
            CHECK(split.objects == 3);
            for (bool backward : {false, true}) {
                auto want = runCompiled(one, fwd, b, backward), got = runCompiled(split, fwd, b, backward);
                REQUIRE(got.size() == want.size());
                for (auto& [tensor, values] : want) {
                    INFO(tensor);
                    CHECK(got.at(tensor).data == values.data);
                }
            }
        }
    }
}

TEST_CASE("the object cache round-trips a model compiled in parts", "[jit][split][cache]") {
    TempDir dir("split_cache");
    const Graph fwd = compileFile(GRADC_SOURCE_DIR "/models/seed_relu.nn", {8}).graph;
    std::mt19937 rng(18);
    const Bindings b = randomBindings(fwd, rng);
    CodegenOptions opts;
    opts.cacheDir = dir.path.string();
    opts.threads = 2;
    opts.compileThreads = 2;
    const CompiledModel built = compileModel(fwd, opts);
    CHECK_FALSE(built.cacheHit);
    CHECK(built.objects == 2);
    opts.compileThreads = 1; // the key is the code's, not how it was compiled: the parts load
    const CompiledModel loaded = compileModel(fwd, opts);
    CHECK(loaded.cacheHit);
    CHECK(loaded.objects == 2);
    for (bool backward : {false, true}) {
        auto want = runCompiled(built, fwd, b, backward), got = runCompiled(loaded, fwd, b, backward);
        for (auto& [tensor, values] : want) {
            INFO(tensor);
            CHECK(got.at(tensor).data == values.data);
        }
    }
}

TEST_CASE("the objects of a split compilation pack into one cache entry and unpack checked", "[split][cache]") {
    const std::string a = "\x7f" "ELF first object", b = "second", c(3, '\0');
    CHECK(packObjects({a}) == a); // one object is stored as itself
    CHECK(unpackObjects(a) == std::vector<std::string>{a});
    const std::string packed = packObjects({a, b, c});
    CHECK(unpackObjects(packed) == std::vector<std::string>{a, b, c});
    const std::string body = a + b + c;
    for (const std::string& bad : {"gradc objects 3 17 6\n" + body,       // fewer sizes than objects
                                   "gradc objects 2 17 6 3\n" + body,     // more
                                   "gradc objects 3 17 6 4\n" + body,     // past the end
                                   "gradc objects 3 17 6 2\n" + body,     // bytes left over
                                   "gradc objects 1 26\n" + body,         // a container of one
                                   "gradc objects 3 17 x 3\n" + body,     // not a number
                                   "gradc objects 3 17 6 3" + body,       // no end of header
                                   "gradc objects 3 17 -6 3\n" + body,    // a sign
                                   "gradc objects 2 0 26\n" + body}) {    // an empty object
        INFO(bad.substr(0, bad.find('\n')));
        CHECK_FALSE(unpackObjects(bad).has_value());
    }
}
