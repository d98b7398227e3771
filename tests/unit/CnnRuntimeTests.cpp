// CnnRuntimeTests.cpp — the runtime's jobs on convolutional networks (issue 16), on the
// interpreter: grads' statistics and vanishing factor with conv weights, the gradient figure of
// a 20-layer CNN, dead channels, acts' [B,C,H,W] outputs and train's logs, each through the
// public API (gradc/Jobs.h) and against what the gradc command prints.
#include <gradc/Jobs.h>

#include "Init.h"
#include "Plot.h"
#include "Report.h"
#include "SafeTensors.h"
#include "Stats.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace gradc;
namespace fs = std::filesystem;

namespace {

/// A tiny CNN: odd sizes, a strided convolution, a non-square kernel with padding, pooling.
/// [B,1,28,28] -> conv 4 3x3/s2 [B,4,13,13] -> relu -> conv 3 2x3/p1 [B,3,14,13] -> sigmoid
/// -> maxpool 2 [B,3,7,6] -> flatten [B,126] -> dense 10.
const char* kTinyCnn = "model tiny_cnn\n"
                       "input 1x28x28\n"
                       "conv 4 3x3 stride=2 relu\n"
                       "conv 3 2x3 padding=1 sigmoid\n"
                       "maxpool 2\n"
                       "flatten\n"
                       "dense 10\n"
                       "loss cross_entropy\n";

/// A folder of its own (TempDir) for the test's files.
struct Scratch : TempDir {
    Scratch() : TempDir("cnn_rt") {}
};

/// The output of `gradc ARGS` (with its standard error) and its exit status.
std::pair<int, std::string> command(const std::string& args) { return gradcCommand(args, true); }

int count(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

/// The number an attribute of the <svg> element holds.
double svgAttribute(const std::string& svg, const std::string& name) {
    std::smatch m;
    REQUIRE(std::regex_search(svg, m, std::regex("<svg [^>]*" + name + "=\"([0-9.]+)\"")));
    return std::stod(m[1]);
}

/// A report of `weights` conv weights [4,4,3,3] and their biases, as grads makes for a CNN.
GradReport convReport(const std::string& model, int weights) {
    GradReport r;
    r.model = model;
    std::vector<double> values(4 * 4 * 3 * 3);
    for (size_t i = 0; i < values.size(); ++i) values[i] = 1e-3 * double(int(i % 7) - 3);
    for (int w = 0; w < weights; ++w) {
        r.params.push_back(statistics(fmt::format("layers.{}.weight", 2 * w), Tensor{{4, 4, 3, 3}, values}));
        r.params.push_back(statistics(fmt::format("layers.{}.bias", 2 * w), Tensor{{4}, {1, 2, 3, 4}}));
    }
    return r;
}

} // namespace

TEST_CASE("a channel of images is dead when zero at every position for every image, a unit otherwise", "[cnn-rt]") {
    // [2 images, 3 channels, 2x2]: channel 0 is nonzero at one position of the second image
    // only, channel 1 is zero everywhere, channel 2 holds NaN (not a dead unit's output).
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const std::vector<double> values = {0, 0, 0, 0, /**/ 0, 0, 0, 0, /**/ 0, 0, 0, nan,
                                        0, 0, 0, 5, /**/ 0, 0, 0, 0, /**/ 0, 0, 0, 0};
    UnitMask channels(Shape{2, 3, 2, 2});
    CHECK(channels.channels());
    CHECK(channels.units() == 3);
    channels.add(values.data(), 1); // the first image: only channel 2 (NaN) is alive
    CHECK(channels.dead() == 2);
    channels.add(values.data() + 12, 1); // the second: channel 0 too
    CHECK(channels.dead() == 1);
    // Rows of a batch read in place: the same in one call.
    UnitMask once(Shape{2, 3, 2, 2});
    once.add(values.data(), 2);
    CHECK(once.dead() == 1);
    // Rank 2 and rank 3 values ([B,28,32] of a dense layer on rows) count every value.
    UnitMask units(Shape{2, 12});
    CHECK_FALSE(units.channels());
    CHECK(units.units() == 12);
    units.add(values.data(), 2);
    CHECK(units.dead() == 12 - 2); // values 3 and 11 of an example
    UnitMask rows(Shape{2, 3, 4});
    CHECK_FALSE(rows.channels());
    CHECK(rows.units() == 12);
    std::vector<float> f(values.begin(), values.end());
    rows.add(f.data(), 2);
    CHECK(rows.dead() == 12 - 2);
}

TEST_CASE("activation statistics of millions of values far from zero keep their digits", "[cnn-rt]") {
    // identity on 1e8 + {0, 1, 2, 3}: the sum of squares minus the squared mean loses every
    // digit of the variance (1.25); a running mean and squared deviation keep them.
    ActivationTable table;
    const Activation identity = table.instantiate({"identity", {}, {}});
    std::vector<double> x;
    for (int i = 0; i < 1 << 20; ++i) x.push_back(1e8 + double(i % 4));
    const ActivationStats s = activationStatistics("layers.1", identity, Tensor{{1 << 14, 4, 4, 4}, x});
    CHECK(s.mean == Approx(1e8 + 1.5).epsilon(1e-14));
    CHECK(s.std == Approx(std::sqrt(1.25)).epsilon(1e-9));
    CHECK(s.shape == Shape{1 << 14, 4, 4, 4});
    CHECK(s.lowGradientFraction == 0);
}

TEST_CASE("the gradients table keeps its columns for conv shapes and long names", "[cnn-rt]") {
    GradReport r = convReport("cnn", 2);
    r.params.push_back(statistics("shortcut2_bn.weight", Tensor{{4}, {1, 2, 3, 4}}));
    r.params.push_back(statistics("layers.9.weight", Tensor{{10, 128}, std::vector<double>(1280, 0.5)}));
    computeVanishingFactor(r);
    CHECK(r.firstWeight == "layers.0.weight"); // a conv weight is a weight
    CHECK(r.lastWeight == "layers.9.weight");
    const std::string table = formatTable(r);
    // Every row's abs_mean starts where the header's does.
    std::istringstream in(table);
    std::string line;
    size_t column = std::string::npos;
    int rows = 0;
    while (std::getline(in, line)) {
        if (line.find("abs_mean") != std::string::npos) column = line.find("abs_mean") + 8;
        else if (column != std::string::npos && line.rfind("  ", 0) == 0 && line.size() > column) {
            INFO(line);
            CHECK(line[column] == ' ');
            CHECK(line[column - 1] != ' '); // the number ends under the header's last letter
            ++rows;
        }
    }
    CHECK(rows == 6);
    CHECK_THAT(table, Catch::Contains("  shortcut2_bn.weight [4]         "));
    CHECK_THAT(table, Catch::Contains("  layers.0.weight     [4,4,3,3]  "));
}

TEST_CASE("the gradient figure of a 20-layer CNN wraps its panels in rows of eight", "[cnn-rt][plot]") {
    // cnn_plain_*.nn and cnn_resnet.nn have 20 and 22 weights: one row would be 6,600 pixels wide.
    const std::string svg = gradientFigure({convReport("plain", 20), convReport("resnet", 22)}, {"sigmoid", "relu"}).svg();
    CHECK(count(svg, "<g class=\"panel\"") == 42);
    CHECK(svgAttribute(svg, "width") == 8 * 300);
    CHECK(svgAttribute(svg, "height") == 360 + 2 * 34 + 3 * 210 + 3 * 210); // the flow, a title and three rows each
    CHECK(count(svg, "Gradient magnitude distribution for activation function") == 2);
    // The last panel of the second model (its 22nd) is in its third row, sixth column.
    CHECK_THAT(svg, Catch::Contains("<text x=\"1667.0\" y=\"1494.0\" text-anchor=\"middle\" font-size=\"12\" "
                                    "fill=\"black\">layers.42.weight</text>"));
    // The seed's networks (five weights) keep one row, as wide as their weights.
    const std::string seed = gradientFigure({convReport("seed", 5)}, {"sigmoid"}).svg();
    CHECK(svgAttribute(seed, "width") == 5 * 300);
    CHECK(svgAttribute(seed, "height") == 360 + 34 + 210);
}

TEST_CASE("gradc::grads on a CNN: conv weights' statistics, 4-D activations, the vanishing factor", "[cnn-rt]") {
    Scratch s;
    GradsOptions o;
    o.models = {s.write("tiny_cnn.nn", kTinyCnn)};
    o.batch = 6;
    o.session.backend = "interp";
    const std::vector<GradsReport> api = grads(o);
    REQUIRE(api.size() == 1);
    const GradsReport& r = api[0];
    REQUIRE(r.gradients.size() == 6);
    CHECK(r.gradients[0].name == "layers.0.weight");
    CHECK(r.gradients[0].shape == std::vector<int64_t>{4, 1, 3, 3});
    CHECK(r.gradients[2].shape == std::vector<int64_t>{3, 4, 2, 3});
    CHECK(r.gradients[4].shape == std::vector<int64_t>{10, 126});
    CHECK(r.gradients[0].histogramCounts.size() == 30);
    CHECK(r.firstWeight == "layers.0.weight");
    CHECK(r.lastWeight == "layers.6.weight");
    CHECK(r.vanishingFactor == r.gradients[0].absMean / r.gradients[4].absMean);
    REQUIRE(r.activations.size() == 2);
    CHECK(r.activations[0].name == "layers.1");
    CHECK(r.activations[0].function == "relu");
    CHECK(r.activations[1].function == "sigmoid");
    for (auto& a : r.activations) {
        CHECK(a.lowGradientFraction >= 0);
        CHECK(a.lowGradientFraction <= 1);
        CHECK(std::isfinite(a.std));
    }
    CHECK(r.activations[0].lowGradientFraction > 0.05); // a ReLU of random convolutions: some off
    auto [rc, text] = command(fmt::format("grads {} --batch 6 --backend interp --format json", o.models[0]));
    REQUIRE(rc == 0);
    const nlohmann::json cli = nlohmann::json::parse(text);
    CHECK(cli["vanishing_factor"].get<double>() == r.vanishingFactor);
    CHECK(cli["activations"][0]["shape"] == std::vector<int64_t>{6, 4, 13, 13});
    CHECK(cli["activations"][1]["shape"] == std::vector<int64_t>{6, 3, 14, 13});
    CHECK(cli["activations"][1]["low_gradient_fraction"].get<double>() == r.activations[1].lowGradientFraction);
    CHECK(cli["params"][2]["shape"] == std::vector<int64_t>{3, 4, 2, 3});
    // The table and the figure.
    const std::string svg = s.file("g.svg");
    auto [rc2, table] = command(fmt::format("grads {} --batch 6 --backend interp --plot {}", o.models[0], svg));
    REQUIRE(rc2 == 0);
    CHECK_THAT(table, Catch::Contains("  layers.2.weight    [3,4,2,3]   7"));
    CHECK_THAT(table, Catch::Contains("vanishing factor "));
    std::ifstream in(svg);
    const std::string figure((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(count(figure, "<g class=\"panel\"") == 3);
}

TEST_CASE("gradc::dead counts the channels of images: zero at every position for every image", "[cnn-rt]") {
    Scratch s;
    const std::string model = s.write("tiny_cnn.nn", kTinyCnn), params = s.file("p.safetensors");
    // The first convolution's weights all 0 and its biases -1, -1, -1, +1: after the ReLU,
    // channels 0 to 2 are zero everywhere and channel 3 is one everywhere.
    {
        const Graph g = compileSource("tiny_cnn.nn", kTinyCnn, {4}).graph;
        Bindings b = initialiseParameters(g, 3);
        std::fill(b.at("layers.0.weight").data.begin(), b.at("layers.0.weight").data.end(), 0.0);
        b.at("layers.0.bias").data = {-1, -1, -1, 1};
        std::set<std::string> integers;
        const auto state = stateDict(g, b, &integers);
        writeSafetensors(params, state, false, integers);
    }
    DeadOptions o;
    o.model = model, o.params = params;
    o.batch = 32, o.val = 40, o.limit = 100;
    o.session.backend = "interp";
    const DeadResult r = dead(o);
    CHECK(r.images == 60);
    REQUIRE(r.layers.size() == 2);
    CHECK(r.layers[0].name == "layers.1");
    CHECK(r.layers[0].unit == "channel");
    CHECK(r.layers[0].units == 4);
    CHECK(r.layers[0].dead == 3);
    CHECK(r.layers[0].shape == std::vector<int64_t>{4, 13, 13});
    CHECK(r.layers[1].unit == "channel");
    CHECK(r.layers[1].units == 3);
    CHECK(r.layers[1].dead == 0); // a sigmoid is never zero
    const std::string args = fmt::format("dead {} --params {} --batch 32 --val 40 --limit 100 --backend interp", model, params);
    auto [rc, text] = command(args);
    REQUIRE(rc == 0);
    CHECK_THAT(text, Catch::Contains("(in a layer of images a unit is a channel: dead when zero at every position)"));
    CHECK_THAT(text, Catch::Contains("  layers.1     relu                    4      3   75.00%  channel of [4,13,13]\n"));
    CHECK_THAT(text, Catch::Contains("  layers.3     sigmoid                 3      0    0.00%  channel of [3,14,13]\n"));
    CHECK_THAT(text, Catch::Contains("  total        channels                7      3   42.86%\n"));
    CHECK_THAT(text, !Catch::Contains("total        units"));
    auto [rc2, json] = command(args + " --format json");
    REQUIRE(rc2 == 0);
    const nlohmann::json cli = nlohmann::json::parse(json);
    CHECK(cli["model"] == "tiny_cnn");
    CHECK(cli["images"] == 60);
    CHECK(cli["layers"][0]["unit"] == "channel");
    CHECK(cli["layers"][0]["units"] == 4);
    CHECK(cli["layers"][0]["dead"] == 3);
    CHECK(cli["layers"][0]["dead_fraction"].get<double>() == 0.75);
    CHECK(cli["layers"][0]["shape"] == std::vector<int64_t>{4, 13, 13});
    auto [rc3, bad] = command(args + " --format xml");
    CHECK(rc3 == 2);
    CHECK_THAT(bad, Catch::Contains("gradc dead: error: --format=xml is not table or json"));
}

TEST_CASE("gradc dead on a dense model says units, as it always did", "[cnn-rt]") {
    auto [rc, text] = command(fmt::format("dead {}/tests/golden/report/tiny.nn --batch 32 --val 20 --limit 80 --backend interp",
                                          GRADC_SOURCE_DIR));
    REQUIRE(rc == 0);
    CHECK_THAT(text, !Catch::Contains("channel"));
    CHECK_THAT(text, Catch::Matches("(.|\n)*\n  total                             +[0-9]+ +[0-9]+ +[0-9.]+%\n$"));
    auto [rc2, json] = command(fmt::format("dead {}/tests/golden/report/tiny.nn --batch 32 --val 20 --limit 80 --backend "
                                           "interp --format json", GRADC_SOURCE_DIR));
    REQUIRE(rc2 == 0);
    const nlohmann::json cli = nlohmann::json::parse(json);
    CHECK(cli["layers"][0]["unit"] == "unit");
    CHECK(cli["layers"][0]["shape"] == std::vector<int64_t>{cli["layers"][0]["units"].get<int64_t>()});
}

TEST_CASE("gradc::acts gives every module's output of a CNN with its [B,C,H,W] shape", "[cnn-rt]") {
    Scratch s;
    ActsOptions o;
    o.model = s.write("tiny_cnn.nn", kTinyCnn);
    o.count = 5;
    o.session.backend = "interp";
    const ActsResult r = acts(o);
    REQUIRE(r.layers.size() == 6); // conv, relu, conv, sigmoid, maxpool, flatten
    const std::vector<std::vector<int64_t>> shapes = {{5, 4, 13, 13}, {5, 4, 13, 13}, {5, 3, 14, 13},
                                                      {5, 3, 14, 13}, {5, 3, 7, 6},   {5, 126}};
    for (size_t i = 0; i < shapes.size(); ++i) {
        INFO(r.layers[i].stats.name);
        CHECK(r.layers[i].stats.shape == shapes[i]);
        CHECK(r.layers[i].stats.count == shapes[i][0] * shapes[i][1] * (shapes[i].size() == 4 ? shapes[i][2] * shapes[i][3] : 1));
        CHECK(r.layers[i].stats.histogramCounts.size() == 50);
    }
    CHECK(r.layers[0].op == "conv 1 -> 4, 3x3, stride 2");
    CHECK(r.layers[1].stats.min >= 0);
    CHECK(r.layers[3].stats.min > 0);
    CHECK(r.layers[4].stats.max == r.layers[3].stats.max); // maxpool keeps the largest
    CHECK(r.layers[5].stats.mean == r.layers[4].stats.mean); // flatten moves nothing
    const std::string svg = s.file("a.svg");
    auto [rc, text] = command(fmt::format("acts {} --count 5 --backend interp --plot {}", o.model, svg));
    REQUIRE(rc == 0);
    CHECK_THAT(text, Catch::Contains("  layers.0     conv 1 -> 4, 3x3, stride 2  [5,4,13,13] "));
    CHECK_THAT(text, Catch::Contains("  layers.5     flatten                     [5,126]     "));
    CHECK(fs::exists(svg));
    auto [rc2, json] = command(fmt::format("acts {} --count 5 --backend interp --format json", o.model));
    REQUIRE(rc2 == 0);
    const nlohmann::json cli = nlohmann::json::parse(json);
    CHECK(cli["layers"][2]["shape"] == std::vector<int64_t>{5, 3, 14, 13});
    CHECK(cli["layers"][2]["mean"].get<double>() == r.layers[2].stats.mean);
}

TEST_CASE("gradc::train trains a CNN on the interpreter, with its log and TensorBoard events", "[cnn-rt][train]") {
    Scratch s;
    TrainingOptions o;
    o.model = s.write("tiny_cnn.nn", kTinyCnn);
    o.batch = 16, o.val = 32, o.limit = 96;
    o.epochs = 2, o.maxSteps = 5;
    o.optimizer.method = "adam", o.optimizer.lr = 1e-2;
    o.session.backend = "interp";
    o.log = s.file("log.jsonl"), o.logdir = s.file("tb"), o.save = s.file("best.safetensors");
    const TrainingResult r = train(o);
    CHECK(r.model == "tiny_cnn");
    CHECK(r.trainExamples == 64);
    CHECK(r.valExamples == 32);
    REQUIRE(r.epochs.size() == 2);
    CHECK(r.epochs[0].step == 4);
    CHECK(r.epochs[1].step == 5); // --steps stops the second epoch after one step
    for (auto& e : r.epochs) {
        CHECK(std::isfinite(e.trainLoss));
        CHECK(std::isfinite(e.valLoss));
        CHECK(e.vanishingFactor > 0); // the first conv weight's gradient over the dense one's
    }
    CHECK(r.testAccuracy >= 0);
    CHECK(r.testAccuracy <= 1);
    std::ifstream log(o.log);
    int lines = 0;
    for (std::string line; std::getline(log, line); ++lines) CHECK_NOTHROW(nlohmann::json::parse(line));
    CHECK(lines == 3); // one per epoch, one at the end
    REQUIRE(fs::is_directory(o.logdir));
    int events = 0;
    for (auto& f : fs::directory_iterator(o.logdir))
        events += f.path().filename().string().rfind("events.out.tfevents.", 0) == 0 && fs::file_size(f) > 0;
    CHECK(events == 1);
    CHECK(fs::file_size(o.save) > 4 * 9 * 4);
    // The command prints its progress and the test accuracy.
    auto [rc, text] = command(fmt::format("train {} --backend interp --batch 16 --val 32 --limit 96 --epochs 1 --steps 2",
                                          o.model));
    INFO(text);
    REQUIRE(rc == 0);
    CHECK_THAT(text, Catch::Contains("best epoch 1 of 1") && Catch::Contains("test accuracy"));
}
