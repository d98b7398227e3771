// ThroughTimeTests.cpp — the gradient through time in the runtime's reports (issue 17): each
// recurrent layer's ‖dL/dh_t‖ and its vanishing factor in grads' table, JSON and figure, and
// in train's log, on the interpreter (the JIT does not compile recurrent layers yet).
#include "Engine.h"
#include "Execute.h"
#include "Init.h"
#include "Jobs.h"
#include "Json.h"
#include "Pipeline.h"
#include "Report.h"
#include "Stats.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

using namespace gradc;

namespace {

/// A folder of its own (TempDir) for the test's files.
struct Scratch : TempDir {
    Scratch() : TempDir("through_time") {}
};

std::pair<int, std::string> command(const std::string& args) {
    return gradcCommand(args, true);
}

const std::string kTinyRnn = GRADC_SOURCE_DIR "/tests/golden/report/tiny_rnn.nn";

/// The code points of a UTF-8 string (the sparkline's block characters are three bytes each).
std::vector<std::string> characters(const std::string& s) {
    std::vector<std::string> out;
    for (size_t i = 0; i < s.size();) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        const size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        out.push_back(s.substr(i, n));
        i += n;
    }
    return out;
}

} // namespace

TEST_CASE("the vanishing factor through time is the first step's norm over the last's",
          "[through-time]") {
    const ThroughTime t = throughTime("layers.0", "lstm", {1e-4, 1e-3, 2e-2});
    CHECK(t.norms.size() == 3);
    CHECK(t.vanishingFactor == 1e-4 / 2e-2);
    // Exploding: above 1.
    CHECK(throughTime("layers.0", "rnn relu", {8, 4, 2}).vanishingFactor == 4);
    // No gradient at the last step (or one that is not a number): no factor, null in JSON.
    for (double last : {0.0, std::nan(""), std::numeric_limits<double>::infinity()}) {
        const ThroughTime z = throughTime("layers.1", "gru", {1, 2, last});
        CHECK(std::isnan(z.vanishingFactor));
        const nlohmann::json j = jsonThroughTime({z});
        CHECK(j[0]["vanishing_factor"].is_null());
        CHECK(j[0]["grad_norm"].size() == 3);
        CHECK(j[0]["grad_norm"][0] == 1.0);
        CHECK(j[0]["grad_norm"][2].is_null() == !std::isfinite(last));
    }
    CHECK(std::isnan(throughTime("layers.0", "gru", {}).vanishingFactor));
    // A first norm that is Inf gives an Inf factor: JSON null too, as every figure that is not
    // finite.
    const ThroughTime inf =
        throughTime("layers.0", "gru", {std::numeric_limits<double>::infinity(), 1});
    CHECK(std::isinf(inf.vanishingFactor));
    CHECK(jsonThroughTime({inf})[0]["vanishing_factor"].is_null());
    // The table spells no factor "nan", as it spells every NaN.
    GradReport r;
    r.model = "m";
    r.throughTime = {throughTime("layers.0", "gru", {1, 2, 0})};
    const std::string table = formatTable(r);
    CHECK_THAT(table, Catch::Contains(fmt::format(" {:>10}\n", "nan")) && !Catch::Contains("n/a"));
}

TEST_CASE("scan layers name their cell: lstm, gru, rnn tanh, rnn relu", "[through-time]") {
    const Graph g = compileSource("m.nn",
                                  "input 5 steps 3\nrnn 4 relu\nrnn 4\ngru 3\nlstm 2\nlast\ndense "
                                  "2\nloss cross_entropy\n",
                                  {2})
                        .graph;
    std::vector<std::string> cells;
    for (const LayerInfo& l : g.layers)
        if (g[l.value].op == Op::Scan) cells.push_back(cellDescription(g[l.value]));
    CHECK(cells == std::vector<std::string>{"rnn relu", "rnn tanh", "gru", "lstm"});
}

TEST_CASE("the sparkline: a column a step up to 40, log scale, geometric means of buckets",
          "[through-time]") {
    // Five steps decaying by a decade each: five columns from █ down to ▁ (7 levels over 4
    // decades, rounded: steps of 2, 1, 2 and 2 levels).
    CHECK(sparkline({1, 1e-1, 1e-2, 1e-3, 1e-4}).text == "█▆▅▃▁");
    CHECK(sparkline({1e-4, 1e-3, 1e-2, 1e-1, 1}).text == "▁▃▅▆█");
    // Constant: every column full. A zero is a space, a NaN or Inf '?'.
    CHECK(sparkline({2, 2, 2}).text == "███");
    CHECK(sparkline({1, 0, 1e-2, std::nan("")}).text == "█ ▁?");
    // 784 steps in 40 columns, each bucket's geometric mean: a straight decay on the log scale
    // stays monotone and spans ▁ to █.
    std::vector<double> norms;
    for (int t = 0; t < 784; ++t)
        norms.push_back(std::pow(10.0, -8.0 * t / 783));
    const std::vector<std::string> c = characters(sparkline(norms).text);
    REQUIRE(c.size() == 40);
    CHECK(c.front() == "█");
    CHECK(c.back() == "▁");
    for (size_t k = 1; k < c.size(); ++k)
        CHECK(c[k] <= c[k - 1]); // the blocks' UTF-8 bytes sort as their heights
    // Buckets average on the log scale: 1e-6 and 1e-2 make 1e-4, a third of the way up from
    // 1e-6 to 1 (▃); their arithmetic mean, 5e-3, would be well above the middle.
    CHECK(characters(sparkline({1e-6, 1e-2, 1e-6, 1e-6, 1, 1}, 3).text) ==
          std::vector<std::string>{"▃", "▁", "█"});
    CHECK(characters(sparkline(norms, 7).text).size() == 7);
}

TEST_CASE("the sparkline's range is its own scale: the bucket means ▁ and █ stand for",
          "[through-time]") {
    // 1e-6 and 1e-2 share a bucket: ▁ stands for their geometric mean 1e-4, not for 1e-6.
    Sparkline s = sparkline({1e-6, 1e-2, 1, 1}, 2);
    CHECK(characters(s.text) == std::vector<std::string>{"▁", "█"});
    CHECK(s.lo == Approx(1e-4).epsilon(1e-12));
    CHECK(s.hi == 1);
    // A zero is a space, not the bottom of a log scale; neither is a NaN part of it.
    s = sparkline({0, 1e-3, 1e-1, std::nan("")});
    CHECK(s.lo == 1e-3);
    CHECK(s.hi == 1e-1);
    // No positive norm: no scale.
    s = sparkline({0, 0});
    CHECK(s.text == "  ");
    CHECK(s.lo > s.hi);
    // The table prints that scale after the sparkline.
    GradReport r;
    r.model = "m", r.loss = 1;
    r.throughTime = {throughTime("layers.0", "gru", {1e-6, 1e-2, 1e-3, 0})};
    const std::string table = formatTable(r);
    CHECK_THAT(table, Catch::Contains("1.0e-06 .. 1.0e-02"));
    // 80 steps in 40 buckets of two: 1e-9 shares the first with 1e-3, so ▁ stands for 1e-6.
    std::vector<double> norms(80, 1e-3);
    norms[0] = 1e-9;
    r.throughTime = {throughTime("layers.0", "gru", norms)};
    CHECK_THAT(formatTable(r), Catch::Contains("1.0e-06 .. 1.0e-03"));
}

TEST_CASE(
    "gradc grads on a recurrent model: through_time in JSON, the table's section and the figure",
    "[through-time]") {
    Scratch s;
    auto [rc, text] =
        command(fmt::format("grads {} --batch 4 --backend interp --format json", kTinyRnn));
    INFO(text);
    REQUIRE(rc == 0);
    const nlohmann::json j = nlohmann::json::parse(text);
    REQUIRE(j.contains("through_time"));
    const nlohmann::json& tt = j["through_time"];
    REQUIRE(tt.size() == 2);
    CHECK(tt[0]["layer"] == "layers.0");
    CHECK(tt[0]["cell"] == "rnn tanh");
    CHECK(tt[1]["layer"] == "layers.1");
    CHECK(tt[1]["cell"] == "lstm");
    for (const nlohmann::json& l : tt) {
        CHECK(l.size() == 4); // layer, cell, grad_norm, vanishing_factor
        REQUIRE(l["grad_norm"].size() == 28);
        std::vector<double> norms = l["grad_norm"].get<std::vector<double>>();
        for (double v : norms)
            CHECK((std::isfinite(v) && v > 0));
        CHECK(l["vanishing_factor"].get<double>() ==
              Approx(norms.front() / norms.back()).epsilon(1e-15));
    }
    // The public API (gradc/Jobs.h) reports the same numbers.
    GradsOptions api;
    api.models = {kTinyRnn};
    api.batch = 4;
    api.session.backend = "interp";
    const std::vector<GradsReport> reports = grads(api);
    REQUIRE(reports.size() == 1);
    REQUIRE(reports[0].throughTime.size() == 2);
    for (size_t k = 0; k < 2; ++k) {
        const ThroughTimeStatistics& t = reports[0].throughTime[k];
        CHECK(t.layer == tt[k]["layer"].get<std::string>());
        CHECK(t.cell == tt[k]["cell"].get<std::string>());
        CHECK(t.gradNorm == tt[k]["grad_norm"].get<std::vector<double>>());
        CHECK(t.vanishingFactor == tt[k]["vanishing_factor"].get<double>());
    }
    // The lstm's last step gets the head's gradient alone; earlier steps only what the
    // recurrence passes back, so through 27 steps of random weights the first is far weaker.
    CHECK(tt[1]["vanishing_factor"].get<double>() < 1e-2);

    // The table: a section with a line per layer, the same numbers as the JSON, and under it
    // a sparkline of 28 columns (28 steps), ▁ where the norm is smallest and █ where largest.
    auto [rc2, table] = command(
        fmt::format("grads {} --batch 4 --backend interp --plot {}", kTinyRnn, s.file("g.svg")));
    INFO(table);
    REQUIRE(rc2 == 0);
    // The name column is as wide as the longest name (layers.0.weight_ih_l0, 21 characters).
    CHECK_THAT(
        table,
        Catch::Contains(
            "\n  through time          cell       steps      first       last     factor\n"));
    for (const nlohmann::json& l : tt) {
        const std::vector<double> norms = l["grad_norm"].get<std::vector<double>>();
        const std::string line =
            fmt::format("\n  {:<21} {:<9} {:>6} {:>10.3e} {:>10.3e} {:>10.3e}\n    ||dL/dh_t|| ",
                        l["layer"].get<std::string>(), l["cell"].get<std::string>(), 28,
                        norms.front(), norms.back(), l["vanishing_factor"].get<double>());
        const size_t at = table.find(line);
        REQUIRE(at != std::string::npos);
        const size_t from = at + line.size();
        const std::vector<std::string> blocks =
            characters(table.substr(from, table.find("  ", from) - from));
        REQUIRE(blocks.size() == 28);
        const auto [least, most] = std::minmax_element(norms.begin(), norms.end());
        CHECK(blocks[size_t(least - norms.begin())] == "▁");
        CHECK(blocks[size_t(most - norms.begin())] == "█");
    }
    // Readable at 100 columns.
    for (size_t begin = 0, end; begin < table.size(); begin = end + 1) {
        end = table.find('\n', begin);
        if (end == std::string::npos) end = table.size();
        CHECK(characters(table.substr(begin, end - begin)).size() <= 100);
    }
    // The figure: one line per layer (one model with two layers: the legend names both).
    const std::string svg = s.read("g.svg");
    size_t lines = 0;
    for (size_t at = svg.find("<polyline class=\"through-time-line\""); at != std::string::npos;
         at = svg.find("<polyline class=\"through-time-line\"", at + 1))
        ++lines;
    CHECK(lines == 2);
    CHECK_THAT(svg, Catch::Contains(">tiny_rnn layers.0 (rnn tanh)</text>"));
    CHECK_THAT(svg, Catch::Contains(">tiny_rnn layers.1 (lstm)</text>"));

    // A model without recurrent layers: no such key, no such section, no chart.
    const std::string dense =
        s.write("dense.nn", "model dense\ninput 784\ndense 8 tanh\ndense 10\nloss cross_entropy\n");
    auto [rc3, plain] =
        command(fmt::format("grads {} --batch 4 --backend interp --format json", dense));
    REQUIRE(rc3 == 0);
    CHECK_FALSE(nlohmann::json::parse(plain).contains("through_time"));
    auto [rc4, plainTable] = command(
        fmt::format("grads {} --batch 4 --backend interp --plot {}", dense, s.file("d.svg")));
    REQUIRE(rc4 == 0);
    CHECK_THAT(plainTable, !Catch::Contains("through time"));
    CHECK_THAT(s.read("d.svg"), !Catch::Contains("through-time"));
}

TEST_CASE("the engine reads each recurrent layer's norms from its own place in acts",
          "[through-time]") {
    // Two layers: layers.1's norms lie after layers.0's in acts. The engine (what train logs)
    // must give each layer its own, as the backward entry's named outputs do.
    const std::string text = "input 6 steps 3\nrnn 5\nlstm 4\nlast\ndense 3\nloss cross_entropy\n";
    const int64_t batch = 4;
    Graph fwd = compileSource("m.nn", text, {batch, false, false, false}).graph;
    SessionOptions session;
    session.backend = "interp", session.cache = false;
    Engine engine(fwd, compileSource("m.nn", text, {batch, true}).graph, session, /*f64=*/true);
    CHECK(engine.throughTime().empty()); // before any backward pass

    std::mt19937 rng(5);
    Bindings b =
        initialiseParameters(fwd, 0); // the engine's parameters (it initialises with seed 0)
    std::normal_distribution<double> normal(0, 1);
    std::vector<double> x(size_t(batch * 6 * 3));
    for (double& v : x)
        v = normal(rng);
    const std::vector<int32_t> labels = {2, 0, 1, 2};
    engine.backward(x.data(), labels.data());
    for (const Node& n : fwd.nodes) {
        if (n.op != Op::Input) continue;
        b[n.name] = n.name == "x" ? Tensor{n.shape, x} : Tensor{n.shape, {2, 0, 1, 2}};
    }
    BackendOptions o;
    o.backend = "interp", o.f64 = true, o.cache = false;
    const auto want = run(*compile(fwd, o), b, /*backward=*/true);
    CHECK(want.at("loss").data[0] ==
          Approx(engine.backward(x.data(), labels.data())).epsilon(1e-12));

    const std::vector<ThroughTime> got = engine.throughTime();
    REQUIRE(got.size() == 2);
    for (size_t k = 0; k < 2; ++k) {
        const std::string layer = fmt::format("layers.{}", k);
        CHECK(got[k].layer == layer);
        const std::vector<double>& norms = want.at("through:" + layer).data;
        REQUIRE(got[k].norms.size() == 6);
        for (size_t t = 0; t < 6; ++t)
            CHECK(got[k].norms[t] == Approx(norms[t]).epsilon(1e-12));
    }
    CHECK(got[0].norms != got[1].norms); // the layers differ: a swap would be seen
}

TEST_CASE(
    "gradc train --log records each recurrent layer's norms through time of the epoch's last step",
    "[through-time][train]") {
    Scratch s;
    TrainingOptions o;
    o.model = s.write("rnn.nn",
                      "model rnn\ninput 28 steps 28\nrnn 8\nlast\ndense 10\nloss cross_entropy\n");
    o.batch = 16, o.val = 32, o.limit = 96;
    o.epochs = 2, o.maxSteps = 5; // epoch 1: 4 steps, epoch 2: 1
    o.optimizer.method = "sgd", o.optimizer.lr = 0.1;
    o.session.backend = "interp";
    o.log = s.file("log.jsonl"), o.logdir = s.file("tb");
    TrainingRun run = runTraining(o, [](const std::string&) {});
    REQUIRE(run.result.epochs.size() == 2);
    std::ifstream in(o.log);
    std::vector<nlohmann::json> lines;
    for (std::string line; std::getline(in, line);)
        lines.push_back(nlohmann::json::parse(line));
    REQUIRE(lines.size() == 3); // two epochs and the end
    for (size_t e = 0; e < 2; ++e) {
        const nlohmann::json& l = lines[e];
        REQUIRE(l.contains("through_time"));
        REQUIRE(l["through_time"].size() == 1);
        const nlohmann::json& t = l["through_time"][0];
        CHECK(t["layer"] == "layers.0");
        CHECK(t["cell"] == "rnn tanh");
        const std::vector<double> norms = t["grad_norm"].get<std::vector<double>>();
        REQUIRE(norms.size() == 28);
        for (double v : norms)
            CHECK((std::isfinite(v) && v > 0));
        CHECK(t["vanishing_factor"].get<double>() ==
              Approx(norms.front() / norms.back()).epsilon(1e-15));
        // The record is the epoch's, as kept in the result.
        CHECK(run.result.epochs[e].throughTime.at(0).norms == norms);
    }
    // The epochs' last steps differ (the parameters moved), so their norms do.
    CHECK(lines[0]["through_time"][0]["grad_norm"] != lines[1]["through_time"][0]["grad_norm"]);
    // The second epoch's last step is the run's last: the engine still holds its norms.
    const std::vector<ThroughTime> last = run.engine->throughTime();
    REQUIRE(last.size() == 1);
    CHECK(last[0].norms == lines[1]["through_time"][0]["grad_norm"].get<std::vector<double>>());
    CHECK_FALSE(lines[2].contains("through_time")); // the end record
    // TensorBoard: the factor of each layer, a scalar per epoch.
    std::string events;
    for (auto& f : std::filesystem::directory_iterator(o.logdir))
        events += readFile(f.path());
    // TensorBoard's Summary.Value: the tag (field 1), then simple_value (field 2, a float: 0x15
    // and four bytes), one per epoch with the factor of its log line.
    const std::string tag = "vanishing_factor_through_time/layers.0";
    std::vector<float> values;
    for (size_t at = events.find(tag); at != std::string::npos; at = events.find(tag, at + 1)) {
        REQUIRE(at + tag.size() + 5 <= events.size());
        REQUIRE(events[at + tag.size()] == '\x15');
        float v;
        std::memcpy(&v, events.data() + at + tag.size() + 1, 4);
        values.push_back(v);
    }
    REQUIRE(values.size() == 2);
    for (size_t e = 0; e < 2; ++e)
        CHECK(values[e] == float(lines[e]["through_time"][0]["vanishing_factor"].get<double>()));

    // The public API's epochs carry the same records (the same run again: the same numbers).
    o.log = s.file("again.jsonl"), o.logdir = "";
    const TrainingResult pub = train(o);
    REQUIRE(pub.epochs.size() == 2);
    for (size_t e = 0; e < 2; ++e) {
        REQUIRE(pub.epochs[e].throughTime.size() == 1);
        CHECK(pub.epochs[e].throughTime[0].cell == "rnn tanh");
        CHECK(pub.epochs[e].throughTime[0].gradNorm ==
              lines[e]["through_time"][0]["grad_norm"].get<std::vector<double>>());
    }

    // The command: `gradc train --steps 2 --log`.
    auto [rc, text] = command(
        fmt::format("train {} --backend interp --batch 16 --val 32 --limit 96 --epochs 1 --steps 2 "
                    "--log {}",
                    s.file("rnn.nn"), s.file("cli.jsonl")));
    INFO(text);
    REQUIRE(rc == 0);
    std::ifstream cli(s.file("cli.jsonl"));
    std::string epoch;
    REQUIRE(std::getline(cli, epoch));
    const nlohmann::json e = nlohmann::json::parse(epoch);
    REQUIRE(e["through_time"].size() == 1);
    CHECK(e["through_time"][0]["layer"] == "layers.0");
    CHECK(e["through_time"][0]["grad_norm"].size() == 28);

    // A model without recurrent layers logs no through_time.
    o.model =
        s.write("dense.nn", "model dense\ninput 784\ndense 8 tanh\ndense 10\nloss cross_entropy\n");
    o.log = s.file("dense.jsonl"), o.logdir = "", o.epochs = 1, o.maxSteps = 2;
    runTraining(o, [](const std::string&) {});
    std::ifstream dense(o.log);
    std::string first;
    REQUIRE(std::getline(dense, first));
    CHECK_FALSE(nlohmann::json::parse(first).contains("through_time"));
    CHECK(nlohmann::json::parse(first).contains("grads"));
}
