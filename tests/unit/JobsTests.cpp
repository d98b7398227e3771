// JobsTests.cpp — the jobs of gradc/Jobs.h called as a program embedding gradc calls them,
// compared with what the gradc command prints for the same options.
#include <gradc/Jobs.h>

#include "TestUtil.h"
#include "ThreadPool.h"

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

using namespace gradc;

namespace {

const std::string kTiny = GRADC_SOURCE_DIR "/tests/golden/report/tiny.nn";
const std::string kRelu = GRADC_SOURCE_DIR "/models/seed_relu.nn";

/// The standard output of `gradc ARGS`, and its exit status (-1 if a signal ended it).
std::pair<int, std::string> command(const std::string& args) { return gradcCommand(args, false); }

} // namespace

TEST_CASE("gradc::grads gives the numbers gradc grads prints", "[jobs]") {
    for (const char* backend : {"interp", "jit"}) {
        INFO(backend);
        GradsOptions o;
        o.models = {kTiny};
        o.batch = 4;
        o.session.backend = backend;
        o.session.cache = false;
        o.session.threads = 2;
        const std::vector<GradsReport> api = grads(o);
        REQUIRE(api.size() == 1);
        const GradsReport& r = api[0];
        CHECK(r.model == "tiny");
        CHECK(r.batch == 4);
        REQUIRE(r.gradients.size() == 4); // two weights, two biases
        CHECK(r.gradients[0].name == "layers.0.weight");
        CHECK(r.gradients[0].shape == std::vector<int64_t>{3, 784});
        CHECK(r.activations.size() == 1);
        CHECK(r.firstWeight == "layers.0.weight");
        CHECK(r.lastWeight == "layers.2.weight"); // nn.Sequential numbers the tanh module 1
        CHECK(r.vanishingFactor == r.gradients[0].absMean / r.gradients[2].absMean);

        // The command's JSON holds the same figures to the last bit (it prints doubles exactly).
        auto [rc, text] = command(fmt::format("grads {} --batch 4 --format json --no-cache --threads 2 --backend {}",
                                            kTiny, backend));
        REQUIRE(rc == 0);
        const nlohmann::json cli = nlohmann::json::parse(text);
        CHECK(cli["loss"].get<double>() == r.loss);
        CHECK(cli["vanishing_factor"].get<double>() == r.vanishingFactor);
        REQUIRE(cli["params"].size() == r.gradients.size());
        for (size_t i = 0; i < r.gradients.size(); ++i) {
            CHECK(cli["params"][i]["name"] == r.gradients[i].name);
            CHECK(cli["params"][i]["abs_mean"].get<double>() == r.gradients[i].absMean);
            CHECK(cli["params"][i]["l2"].get<double>() == r.gradients[i].l2);
            CHECK(cli["params"][i]["histogram"]["counts"].get<std::vector<int64_t>>() == r.gradients[i].histogramCounts);
        }
        CHECK(cli["activations"][0]["mean"].get<double>() == r.activations[0].mean);
    }
}

TEST_CASE("gradc::grads reports a mistake in its input as a gradc::Error naming the file", "[jobs]") {
    GradsOptions o;
    o.models = {GRADC_SOURCE_DIR "/no/such/model.nn"};
    CHECK_THAT(errorOf<Error>([&] { grads(o); }), Catch::Contains("no/such/model.nn"));
    o.models = {kTiny};
    o.batch = 4;
    o.data.dir = GRADC_SOURCE_DIR "/no/such/data";
    CHECK_THAT(errorOf<Error>([&] { grads(o); }), Catch::Contains("no/such/data"));
    o.data = {};
    o.session.backend = "gpu";
    CHECK_THAT(errorOf<Error>([&] { grads(o); }), Catch::Contains("backend 'gpu' is not one of jit, interp"));
    o.session.backend = "interp";
    o.models = {kTiny, kTiny};
    o.params = "p.safetensors";
    CHECK_THAT(errorOf<Error>([&] { grads(o); }), Catch::Contains("exactly one model"));
}

TEST_CASE("gradc::dead counts the units gradc dead prints", "[jobs]") {
    for (const char* backend : {"interp", "jit"}) {
        INFO(backend);
        DeadOptions o;
        o.model = kRelu;
        o.batch = 64;
        o.val = 100, o.limit = 300;
        o.session.backend = backend;
        o.session.cache = false;
        const DeadResult r = dead(o);
        CHECK(r.model == "seed_relu");
        CHECK(r.images == 200);
        REQUIRE(r.layers.size() == 4); // four ReLU layers
        CHECK(r.layers[0].units == 512);
        for (auto& l : r.layers) {
            CHECK(l.activation == "relu");
            CHECK(l.dead >= 0);
            CHECK(l.dead <= l.units);
        }
        auto [rc, text] = command(fmt::format("dead {} --batch 64 --val 100 --limit 300 --no-cache --backend {}", kRelu,
                                            backend));
        REQUIRE(rc == 0);
        for (auto& l : r.layers) {
            const std::string row = fmt::format("  {:<12} {:<18} {:>6} {:>6} ", l.name, l.activation, l.units, l.dead);
            CHECK_THAT(text, Catch::Contains(row));
        }
    }
    DeadOptions wrong;
    wrong.model = GRADC_SOURCE_DIR "/models/autoencoder_mse.nn";
    CHECK_THAT(errorOf<Error>([&] { dead(wrong); }), Catch::Contains("autoencoder_mse.nn"));
    CHECK_THAT(errorOf<Error>([&] { dead(wrong); }), Catch::Contains("needs a cross_entropy classifier"));
}

TEST_CASE("gradc::acts gives every module's output statistics", "[jobs]") {
    ActsOptions o;
    o.model = kRelu;
    o.count = 32;
    o.session.backend = "interp";
    const ActsResult r = acts(o);
    CHECK(r.examples == 32);
    REQUIRE(r.layers.size() == 8); // linear, relu four times (the last linear is the output)
    CHECK(r.layers[0].op == "linear 784 -> 512");
    CHECK(r.layers[1].op == "relu");
    CHECK(r.layers[1].stats.count == 32 * 512);
    CHECK(r.layers[1].stats.min >= 0); // a ReLU's output
    CHECK(r.layers[1].stats.histogramCounts.size() == 50);
    auto [rc, text] = command(fmt::format("acts {} --count 32 --backend interp --format json", kRelu));
    REQUIRE(rc == 0);
    const nlohmann::json cli = nlohmann::json::parse(text);
    REQUIRE(cli["layers"].size() == r.layers.size());
    for (size_t i = 0; i < r.layers.size(); ++i) CHECK(cli["layers"][i]["mean"].get<double>() == r.layers[i].stats.mean);
}

TEST_CASE("gradc::bench times the step with the threads it is given", "[jobs]") {
    BenchOptions o;
    o.model = kTiny;
    o.batch = 8;
    o.steps = 3;
    o.cache = false;
    o.threads = 1;
    const BenchResult r = bench(o);
    CHECK(r.threads == 1);
    CHECK(r.steps == 3);
    REQUIRE(r.roundMs.size() == 3);
    CHECK(r.roundMs.front() <= r.msPerStep);
    CHECK(r.msPerStep <= r.roundMs.back());
    CHECK(r.msPerStep > 0);
    // The matrix products at batch 8: forward x.W0^T (2*8*3*784) and h.W1^T (2*8*10*3);
    // backward dW1 (2*10*3*8), dh (2*8*3*10) and dW0 (2*3*784*8); the input's gradient is not
    // computed.
    CHECK(r.gflopPerStep == Approx((2 * 8 * 3 * 784 + 2 * 8 * 10 * 3 + 2 * 10 * 3 * 8 + 2 * 8 * 3 * 10 + 2 * 3 * 784 * 8) * 1e-9));
    CHECK(r.fmaPeak > 0);
    CHECK((r.isa == "native" || r.isa == "avx2" || r.isa == "avx512")); // native unless GRADC_ISA says otherwise
    CHECK(!r.cpu.empty());
    CHECK((r.vectorBits == 128 || r.vectorBits == 256 || r.vectorBits == 512));
    o.isa = "avx3";
    CHECK_THAT(errorOf<Error>([&] { bench(o); }), Catch::Contains("isa avx3 is not an instruction set"));
    o.isa = "";
    o.threads = 0;
    CHECK(bench(o).threads == hardwareThreads());
    o.steps = 0;
    CHECK_THAT(errorOf<Error>([&] { bench(o); }), Catch::Contains("0 steps is out of range"));
}

TEST_CASE("the jobs take the thread counts Session takes, and no more", "[jobs]") {
    // Compiled code reserves scratch per thread: ten million threads overflowed its size.
    BenchOptions b;
    b.model = kTiny;
    b.threads = 10000000;
    CHECK_THAT(errorOf<Error>([&] { bench(b); }), Catch::Contains("10000000 threads is out of range"));
    b.threads = -1;
    CHECK_THAT(errorOf<Error>([&] { bench(b); }), Catch::Contains("-1 threads is out of range"));
    GradsOptions g;
    g.models = {kTiny};
    g.session.threads = 10000000;
    CHECK_THAT(errorOf<Error>([&] { grads(g); }), Catch::Contains("10000000 threads is out of range"));
    ActsOptions a;
    a.model = kTiny;
    a.session.threads = 2000;
    CHECK_THAT(errorOf<Error>([&] { acts(a); }), Catch::Contains("2000 threads is out of range"));
    // The instruction set too, before the data is read (there is none here); the interpreter
    // has none and ignores it.
    a.session.threads = 1;
    a.session.isa = "avx3";
    a.data.dir = "/nonexistent";
    CHECK_THAT(errorOf<Error>([&] { acts(a); }), Catch::Contains("SessionOptions::isa avx3 is not an instruction set"));
    a.session.backend = "interp";
    CHECK_THAT(errorOf<Error>([&] { acts(a); }), Catch::Contains("/nonexistent"));
}

TEST_CASE("gradc::train trains as gradc train does", "[jobs]") {
    TrainingOptions o;
    o.model = kRelu;
    o.batch = 100;
    o.val = 100, o.limit = 600;
    o.epochs = 2;
    o.optimizer.method = "adam", o.optimizer.lr = 1e-3;
    o.session.cache = false;
    o.session.threads = 1;
    const TrainingResult r = train(o);
    CHECK(r.model == "seed_relu");
    CHECK(r.trainExamples == 500);
    CHECK(r.valExamples == 100);
    REQUIRE(r.epochs.size() == 2);
    CHECK(r.epochs[1].step == 10); // 500 images in batches of 100, twice
    CHECK(r.bestEpoch >= 1);
    CHECK(r.bestValAccuracy == r.epochs[size_t(r.bestEpoch - 1)].valAccuracy);
    CHECK(r.testAccuracy > 0.4); // far above chance (0.1) after 10 steps of Adam
    auto [rc, text] = command(fmt::format("train {} --batch 100 --val 100 --limit 600 --epochs 2 --no-cache "
                                          "--threads 1 --no-progress --optimizer adam", kRelu));
    REQUIRE(rc == 0);
    CHECK_THAT(text, Catch::StartsWith(fmt::format("seed_relu: best epoch {} of 2, validation accuracy {:.2f}%, test "
                                                   "accuracy {:.2f}%", r.bestEpoch, 100 * r.bestValAccuracy,
                                                   100 * r.testAccuracy)));
    o.optimizer.lr = -1;
    CHECK_THAT(errorOf<Error>([&] { train(o); }), Catch::Contains("learning rate"));
}
