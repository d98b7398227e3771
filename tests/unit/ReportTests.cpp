// ReportTests.cpp — parameter files (safetensors), the SVG figures, shuffled batches, and
// output files that are written whole or not at all.
#include "Data.h"
#include "TestUtil.h"
#include "Pipeline.h"
#include "Plot.h"
#include "SafeTensors.h"
#include "Stats.h"

#include <catch2/catch.hpp>

#include <regex>

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <sys/resource.h>
#include <unistd.h>

using namespace gradc;
namespace fs = std::filesystem;

namespace {

/// A folder of its own (two runs of the suite at once never share one), removed at the end.
struct Scratch : TempDir {
    explicit Scratch(const std::string& name) : TempDir("report_" + name) {}
};

std::string safetensorsBytes(const std::string& json, const std::string& data) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[size_t(i)] = char(uint64_t(json.size()) >> (8 * i));
    return out + json + data;
}

/// Well-formed XML, checked plainly (a scanner, not std::regex, whose recursion overflows
/// the stack on long documents): every tag closes in order, attribute values are quoted, and
/// no '<' or '&' stands loose in text.
bool wellFormed(const std::string& xml) {
    std::vector<std::string> open;
    size_t i = 0;
    auto isName = [](char c) { return std::isalnum((unsigned char)c) || c == '-' || c == '_' || c == ':' || c == '.'; };
    while (i < xml.size()) {
        if (xml[i] == '&') {
            size_t semi = xml.find(';', i);
            if (semi == std::string::npos || semi - i > 6) return false;
            i = semi + 1;
            continue;
        }
        if (xml[i] != '<') {
            if (xml[i] == '>') return false;
            ++i;
            continue;
        }
        size_t end = xml.find('>', i);
        if (end == std::string::npos) return false;
        std::string tag = xml.substr(i + 1, end - i - 1);
        i = end + 1;
        if (tag.size() >= 2 && tag.front() == '?' && tag.back() == '?') continue; // <?xml ...?>
        bool closing = !tag.empty() && tag[0] == '/';
        bool selfClosing = !tag.empty() && tag.back() == '/';
        if (closing) tag.erase(0, 1);
        if (selfClosing) tag.pop_back();
        size_t n = 0;
        while (n < tag.size() && isName(tag[n])) ++n;
        if (n == 0) return false;
        std::string name = tag.substr(0, n);
        // Attributes: name="value" pairs separated by white space.
        for (size_t p = n; p < tag.size();) {
            if (std::isspace((unsigned char)tag[p])) { ++p; continue; }
            if (closing) return false;
            size_t a = p;
            while (p < tag.size() && isName(tag[p])) ++p;
            if (p == a || p + 1 >= tag.size() || tag[p] != '=' || tag[p + 1] != '"') return false;
            size_t close = tag.find('"', p + 2);
            if (close == std::string::npos || tag.substr(p + 2, close - p - 2).find('<') != std::string::npos) return false;
            p = close + 1;
        }
        if (selfClosing) continue;
        if (closing) {
            if (open.empty() || open.back() != name) return false;
            open.pop_back();
        } else {
            open.push_back(name);
        }
    }
    return open.empty();
}

size_t count(const std::string& s, const std::string& what) {
    size_t n = 0;
    for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
    return n;
}

Graph smallModel() {
    return compileSource("small.nn", "input 3\ndense 4 relu\nbatchnorm\ndense 2\nloss cross_entropy\n", {4}).graph;
}

} // namespace

TEST_CASE("safetensors files round-trip with PyTorch's names", "[params]") {
    Scratch s("roundtrip");
    Tensor a{{2, 3}, {1, -2, 3.5, 4, 5e-8, -6}}, b{{3}, {0.25, 1e30, -1e-30}};
    for (bool f64 : {false, true}) {
        writeSafetensors(s.file("t.safetensors"), {{"layers.0.weight", a}, {"layers.0.bias", b}}, f64);
        std::map<std::string, std::string> dtypes;
        auto back = readSafetensors(s.file("t.safetensors"), &dtypes);
        CHECK(dtypes.at("layers.0.weight") == (f64 ? "F64" : "F32"));
        CHECK(back.at("layers.0.weight").shape == a.shape);
        for (size_t i = 0; i < a.data.size(); ++i)
            CHECK(back.at("layers.0.weight").data[i] == Approx(a.data[i]).epsilon(f64 ? 1e-15 : 1e-7));
        CHECK(back.at("layers.0.bias").data[1] == Approx(1e30).epsilon(1e-7));
    }
    // Half precision and integers are read too.
    s.write("h.safetensors", safetensorsBytes(R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
                                              R"("b":{"dtype":"BF16","shape":[1],"data_offsets":[4,6]},)"
                                              R"("c":{"dtype":"I64","shape":[1],"data_offsets":[6,14]}})",
                                              std::string("\x00\x3c\x00\xc0\x80\x3f", 6) + std::string("\x07\0\0\0\0\0\0\0", 8)));
    auto h = readSafetensors(s.file("h.safetensors"));
    CHECK(h.at("a").data == std::vector<double>{1.0, -2.0});
    CHECK(h.at("b").data == std::vector<double>{1.0});
    CHECK(h.at("c").data == std::vector<double>{7.0});
}

TEST_CASE("bad safetensors files are refused, naming the file and the tensor", "[params]") {
    Scratch s("bad");
    auto err = [&](const std::string& bytes) {
        s.write("bad.safetensors", bytes);
        return errorOf([&] { readSafetensors(s.file("bad.safetensors")); });
    };
    const std::string file = s.file("bad.safetensors") + ": error: ";
    CHECK_THAT(err("abc"), Catch::StartsWith(file + "not a safetensors file: 3 bytes"));
    CHECK_THAT(err(std::string("\xff\xff\0\0\0\0\0\0{}", 10)), Catch::Contains("header length 65535 exceeds the file"));
    CHECK_THAT(err(safetensorsBytes("{not json", "")), Catch::Contains("the header is not valid JSON"));
    CHECK_THAT(err(safetensorsBytes("[1,2]", "")), Catch::Contains("the header is not a JSON object"));
    CHECK_THAT(err(safetensorsBytes(R"({"w":{"dtype":"F32","shape":[2]}})", "")),
               Catch::Contains("tensor 'w': needs dtype, shape and data_offsets"));
    CHECK_THAT(err(safetensorsBytes(R"({"w":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", std::string(8, '\0'))),
               Catch::Contains("tensor 'w': dtype C64 is not one gradc reads"));
    CHECK_THAT(err(safetensorsBytes(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "abcd")),
               Catch::Contains("tensor 'w': data_offsets [0, 8] lie outside the 4 bytes of data"));
    CHECK_THAT(err(safetensorsBytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0'))),
               Catch::Contains("tensor 'w': 8 bytes of data for 3 elements of F32"));
    CHECK_THAT(err(safetensorsBytes(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", "")),
               Catch::Contains("tensor 'w': shape holds something other than sizes"));
    CHECK_THAT(errorOf([&] { readSafetensors(s.file("absent.safetensors")); }),
               Catch::Contains("absent.safetensors: error: cannot open parameter file"));
}

TEST_CASE("safetensors headers: the data is tiled exactly, the header bounded", "[params]") {
    Scratch s("tiling");
    auto err = [&](const std::string& bytes) {
        s.write("t.safetensors", bytes);
        return errorOf([&] { readSafetensors(s.file("t.safetensors")); });
    };
    const std::string eight(8, '\0');
    CHECK_THAT(err(safetensorsBytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight)),
               Catch::Contains("tensor 'a': data_offsets [4, 8] do not begin where the data before them ends (byte 0)"));
    CHECK_THAT(err(safetensorsBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                    R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight)),
               Catch::Contains("tensor 'b': data_offsets [4, 8] do not begin where the data before them ends (byte 8)"));
    CHECK_THAT(err(safetensorsBytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", eight)),
               Catch::Contains("the tensors take 4 bytes of data, but the file holds 8 after the header"));
    CHECK_THAT(err(safetensorsBytes(R"({"__metadata__":)" + std::string(100, '[') + std::string(100, ']') + "}", "")),
               Catch::Contains("not a safetensors file: the header nests deeper than 8 levels"));
    CHECK_THAT(err(safetensorsBytes(std::string(100, '[') + std::string(100, ']'), "")),
               Catch::Contains("not a safetensors file: the header is not a JSON object"));
    CHECK_THAT(err(safetensorsBytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                    R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", eight)),
               Catch::Contains("tensor 'a': appears twice in the header"));
    CHECK_THAT(err(safetensorsBytes(R"({"a":{"dtype":"F32","shape":[[1]],"data_offsets":[0,4]}})", "abcd")),
               Catch::Contains("tensor 'a': shape holds something other than sizes"));
    CHECK_THAT(err(safetensorsBytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,-4]}})", "abcd")),
               Catch::Contains("tensor 'a': data_offsets is not [begin, end]"));
    CHECK_THAT(err(safetensorsBytes(R"({"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", "abcd")),
               Catch::Contains("tensor 'a': dtype is not a string"));
    CHECK_THAT(err(safetensorsBytes(R"({"a":{"dtype":"F32","shape":1,"data_offsets":[0,4]}})", "abcd")),
               Catch::Contains("tensor 'a': shape is not a list"));
    CHECK_THAT(err(safetensorsBytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[[{}]]},"b":1})", "abcd")),
               Catch::Contains("tensor 'b': needs dtype, shape and data_offsets"));
    CHECK_THAT(err(safetensorsBytes("", "")), Catch::Contains("header length 0 is too short for a JSON object"));
    // A header longer than the limit, in a (sparse) file long enough to hold it.
    {
        std::string head(8, '\0');
        const uint64_t n = 101u << 20;
        for (int i = 0; i < 8; ++i) head[size_t(i)] = char(n >> (8 * i));
        s.write("long.safetensors", head);
        fs::resize_file(s.file("long.safetensors"), 8 + n);
    }
    CHECK_THAT(errorOf([&] { readSafetensors(s.file("long.safetensors")); }),
               Catch::Contains("header length 105906176 is over the limit of 104857600 bytes"));
    {
        // 64 MiB of empty lists: parsed as events, not as a document (which took 1.5 GB).
        std::string lists = R"({"__metadata__":[)";
        lists.reserve(64u << 20);
        while (lists.size() < (64u << 20)) lists += "[],";
        lists += "[]]}";
        s.write("lists.safetensors", safetensorsBytes(lists, ""));
        lists = std::string();
        struct rusage before {}, after {};
        getrusage(RUSAGE_SELF, &before);
        CHECK(readSafetensors(s.file("lists.safetensors")).empty()); // a valid file without tensors
        getrusage(RUSAGE_SELF, &after);
        CHECK(after.ru_maxrss - before.ru_maxrss < 160 * 1024 * kMemorySlack); // KiB: the header's bytes, not a document of them
    }
    // Bytes in memory read as a file does.
    const std::string good = safetensorsBytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                              std::string("\0\0\x80\x3f\0\0\0\xc0", 8));
    SafetensorsReader mem("mem", good);
    REQUIRE(mem.entries().size() == 1);
    CHECK(mem.read(mem.entries()[0]).data == std::vector<double>{1.0, -2.0});
    CHECK_THAT(errorOf([&] { SafetensorsReader("mem", good.substr(0, good.size() - 1)); }),
               Catch::Contains("mem: error: tensor 'a': data_offsets [0, 8] lie outside the 7 bytes of data"));
}

/// A pipe whose read end is named /dev/fd/N; `bytes` are written (then the write end is
/// closed, or kept open while `body` runs).
static void withPipe(const std::string& bytes, bool keepOpen, const std::function<void(const std::string&)>& body) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    REQUIRE(bytes.size() < 60000); // within the pipe's buffer
    REQUIRE(::write(fds[1], bytes.data(), bytes.size()) == ssize_t(bytes.size()));
    if (!keepOpen) ::close(fds[1]);
    body("/dev/fd/" + std::to_string(fds[0]));
    ::close(fds[0]);
    if (keepOpen) ::close(fds[1]);
}

TEST_CASE("parameters from pipes and devices are read in order and never without bound", "[params]") {
    Graph g = smallModel();
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (auto& p : g.params)
        tensors.emplace_back(p.name, Tensor{g[p.node].shape, std::vector<double>(size_t(elementCount(g[p.node].shape)), 0.5)});
    Scratch s("pipe");
    writeSafetensors(s.file("p.safetensors"), tensors);
    const std::string file = s.read("p.safetensors");
    withPipe(file, false, [&](const std::string& path) {
        Bindings b = loadParameters(g, path);
        CHECK(b.at("layers.0.weight").data == std::vector<double>(12, 0.5));
    });
    // The header alone, the pipe kept open: a missing tensor is found without waiting for data.
    auto missing = tensors;
    missing.erase(missing.begin());
    writeSafetensors(s.file("m.safetensors"), missing);
    const std::string mfile = s.read("m.safetensors");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = n << 8 | uint8_t(mfile[size_t(i)]);
    withPipe(mfile.substr(0, 8 + n), true, [&](const std::string& path) {
        CHECK_THAT(errorOf([&] { loadParameters(g, path); }),
                   Catch::Contains("error: tensor 'layers.0.weight' of the model is missing"));
    });
    withPipe(file.substr(0, file.size() - 3), false, [&](const std::string& path) {
        CHECK_THAT(errorOf([&] { loadParameters(g, path); }), Catch::Contains("the file ends after"));
    });
    CHECK_THAT(errorOf([&] { readSafetensors("/dev/zero"); }),
               Catch::StartsWith("/dev/zero: error: not a safetensors file: header length 0 is too short"));
    CHECK_THAT(errorOf([&] { readSafetensors("/dev/null"); }),
               Catch::StartsWith("/dev/null: error: not a safetensors file: 0 bytes, too short for a header"));
    CHECK_THAT(errorOf([&] { readSafetensors(s.path.string()); }), Catch::Contains("it is a directory"));
}

TEST_CASE("a 256 MiB F16 file whose tensor is missing is refused from its header alone", "[params]") {
    Scratch s("f16");
    Graph g = smallModel();
    const uint64_t elements = 128u << 20; // 256 MiB of F16, a hole in a sparse file
    std::string json = fmt::format(R"({{"big":{{"dtype":"F16","shape":[{}],"data_offsets":[0,{}]}}}})", elements, 2 * elements);
    s.write("f16.safetensors", safetensorsBytes(json, ""));
    fs::resize_file(s.file("f16.safetensors"), 8 + json.size() + 2 * elements);
    struct rusage before {}, after {};
    getrusage(RUSAGE_SELF, &before);
    CHECK_THAT(errorOf([&] { loadParameters(g, s.file("f16.safetensors")); }),
               Catch::Contains("f16.safetensors: error: tensor 'layers.0.weight' of the model is missing"));
    getrusage(RUSAGE_SELF, &after);
    CHECK(after.ru_maxrss - before.ru_maxrss < 32 * 1024 * kMemorySlack); // KiB: the old reader took 1.36 GB
}

TEST_CASE("the safetensors fuzzer's seeds load into its model (or fail as named)", "[params]") {
    Graph g = smallModel(); // the fuzzer's model
    int loaded = 0;
    for (auto& f : fs::directory_iterator(GRADC_SOURCE_DIR "/tests/fuzz/corpus/safetensors")) {
        const std::string name = f.path().filename().string(), e = errorOf([&] { loadParameters(g, f.path().string()); });
        INFO(name << ": " << e);
        if (name.rfind("model_", 0) == 0) CHECK((e.empty() && ++loaded));
        if (name == "missing_tensor.safetensors") CHECK_THAT(e, Catch::Contains("tensor 'layers.0.weight' of the model is missing"));
    }
    CHECK(loaded == 5);
}

TEST_CASE("a parameter file must fit the model exactly", "[params]") {
    Scratch s("fit");
    Graph g = smallModel();
    std::vector<std::pair<std::string, Tensor>> good;
    for (auto& p : g.params) good.emplace_back(p.name, Tensor{g[p.node].shape, std::vector<double>(size_t(elementCount(g[p.node].shape)), 0.5)});
    auto check = [&](std::vector<std::pair<std::string, Tensor>> tensors, const std::string& expect) {
        writeSafetensors(s.file("p.safetensors"), tensors);
        std::string e = errorOf([&] { loadParameters(g, s.file("p.safetensors")); });
        if (expect.empty()) CHECK(e.empty());
        else CHECK_THAT(e, Catch::Contains(expect));
    };
    check(good, "");
    auto missing = good;
    missing.erase(missing.begin() + 1);
    check(missing, "tensor 'layers.0.bias' of the model is missing");
    auto extra = good;
    extra.emplace_back("layers.9.weight", Tensor{{1}, {1}});
    check(extra, "tensor 'layers.9.weight' is not a parameter of model small");
    auto running = good; // PyTorch's batchnorm buffers are accepted and unused
    running.emplace_back("layers.2.running_mean", Tensor{{4}, {0, 0, 0, 0}});
    check(running, "");
    auto misshapen = good;
    misshapen[0].second.shape = {3, 4}; // [in, out] instead of PyTorch's [out, in]
    check(misshapen, "tensor 'layers.0.weight' has shape [3,4], the model needs [4,3]");
    s.write("int.safetensors", safetensorsBytes(R"({"layers.0.weight":{"dtype":"I32","shape":[4,3],"data_offsets":[0,48]}})",
                                                std::string(48, '\0')));
    CHECK_THAT(errorOf([&] { loadParameters(g, s.file("int.safetensors")); }),
               Catch::Contains("tensor 'layers.0.weight' has dtype I32; parameters are floating point"));
}

TEST_CASE("the gradient and activation figures are well-formed SVG with the expected panels", "[plot]") {
    GradReport r;
    r.model = "seed";
    for (const char* name : {"layers.0.weight", "layers.0.bias", "layers.2.weight"})
        r.params.push_back(statistics(name, Tensor{std::string(name).find("bias") != std::string::npos ? Shape{4} : Shape{2, 2},
                                                   {1e-6, -2e-6, 3e-6, 0}}));
    GradReport r2 = r;
    r2.model = "other & <more>";
    std::string svg = gradientFigure({r, r2}, {"sigmoid", "relu"}).svg();
    CHECK(wellFormed(svg));
    CHECK(count(svg, "<g class=\"panel\"") == 4); // weights only, one row per model
    CHECK(count(svg, ">layers.2.weight</text>") == 2);
    CHECK_THAT(svg, Catch::Contains("Gradient magnitude distribution for activation function sigmoid (seed)"));
    CHECK_THAT(svg, Catch::Contains("relu (other &amp; &lt;more&gt;)"));
    CHECK(count(svg, "fill-opacity=\"0.8\"") == 4 * 4); // a bar for each bin that is not empty
    // Nice ticks under [-2e-6, 3e-6] (steps of 2e-6), and the line at zero.
    CHECK_THAT(svg, Catch::Contains(">-2e-06</text>") && Catch::Contains(">0</text>") && Catch::Contains(">2e-06</text>"));
    CHECK(count(svg, "stroke=\"#888\" stroke-width=\"0.8\"") == 4);
    ActivationTable table;
    std::string acts = activationFigure({table.instantiate({"sigmoid", {}, {}}), table.instantiate({"elu", {0.5}, {}})}).svg();
    CHECK(wellFormed(acts));
    CHECK(count(acts, "<g class=\"panel\"") == 2);
    CHECK(count(acts, "<polyline") == 4); // the function and its derivative in each
    CHECK_THAT(acts, Catch::Contains(">elu(0.5)</text>"));
    CHECK_FALSE(wellFormed("<svg><g></svg></g>"));
    CHECK_FALSE(wellFormed("<svg><rect x=1/></svg>"));
}

TEST_CASE(
    "the gradient figure of recurrent models: a log-scale chart, one line per model and layer",
    "[plot][through-time]") {
    GradReport a;
    a.model = "stacked";
    a.params.push_back(statistics("layers.0.weight_hh_l0", Tensor{{2, 2}, {1e-3, -2e-3, 3e-3, 0}}));
    a.throughTime = {throughTime("layers.0", "gru", {1e-3, 1e-2, 1e-1, 0.5, 1}),
                     throughTime("layers.1", "lstm", {2e-3, 2e-2, 2e-1, 0.6, 0.9})};
    GradReport b = a;
    b.model = "tanh & <rnn>";
    b.throughTime = {
        throughTime("layers.0", "rnn tanh", {1e-6, 0, 1e-4})}; // a zero has no place on a log axis
    const std::string svg = gradientFigure({a, b}, {"gru", "tanh"}).svg();
    CHECK(wellFormed(svg));
    CHECK(count(svg, "<polyline class=\"through-time-line\"") == 3); // one per model and recurrent layer
    CHECK(count(svg, "<polyline class=\"through-time-line\" data-model=\"stacked\" "
                     "data-layer=\"layers.1\"") == 1);
    CHECK(count(svg, "data-model=\"tanh &amp; &lt;rnn&gt;\" data-layer=\"layers.0\"") == 1);
    // The legend: model and layer where a model has several, the model alone where it has one.
    CHECK_THAT(svg, Catch::Contains(">stacked layers.0 (gru)</text>") &&
                        Catch::Contains(">stacked layers.1 (lstm)</text>"));
    CHECK_THAT(svg, Catch::Contains(">tanh &amp; &lt;rnn&gt; (rnn tanh)</text>"));
    // The y axis in decades from 1e-6 to 1e0, each labelled; the x axis t = 0 .. 4 (in the
    // chart's group: a histogram's labels are numbers too).
    const size_t group = svg.find("<g class=\"through-time\">");
    REQUIRE(group != std::string::npos);
    const std::string chart = svg.substr(group, svg.find("</g>", group) - group);
    for (int d = -6; d <= 0; ++d)
        CHECK_THAT(chart, Catch::Contains(fmt::format(">1e{}</text>", d)));
    CHECK_THAT(chart, !Catch::Contains(">1e-7</text>") && !Catch::Contains(">1e1</text>"));
    CHECK_THAT(chart, Catch::Contains(">step t</text>") && Catch::Contains(">0</text>") &&
                          Catch::Contains(">4</text>"));
    // Log scale: the points of 1e-3, 1e-2, 1e-1 are evenly spaced in y; the zero is left out.
    auto points = [&](const std::string& model, const std::string& layer) {
        const std::string key = "data-model=\"" + model + "\" data-layer=\"" + layer + "\"";
        const size_t at = svg.find("points=\"", svg.find(key)) + 8;
        std::vector<std::pair<double, double>> out;
        std::istringstream in(svg.substr(at, svg.find('"', at) - at));
        for (std::string p; in >> p;)
            out.emplace_back(std::stod(p.substr(0, p.find(','))),
                             std::stod(p.substr(p.find(',') + 1)));
        return out;
    };
    const auto first = points("stacked", "layers.0");
    REQUIRE(first.size() == 5);
    CHECK(first[1].second - first[0].second ==
          Approx(first[2].second - first[1].second).epsilon(1e-3));
    CHECK(first[0].second > first[4].second); // SVG's y grows downwards: the small norm is lower
    CHECK(first[0].first < first[1].first);
    CHECK(points("tanh &amp; &lt;rnn&gt;", "layers.0").size() == 2);
    // Models without recurrent layers have no such chart: the gradient flow and one row of
    // histograms.
    GradReport plain = a;
    plain.throughTime.clear();
    const std::string before = gradientFigure({plain}, {"gru"}).svg();
    CHECK_THAT(before, !Catch::Contains("through-time"));
    CHECK(before.find("height=\"604\"") != std::string::npos); // 360 + a title and panels
}

TEST_CASE("the through-time chart of one step, or of one point among zeros, draws a dot where t = "
          "0 is labelled",
          "[plot][through-time]") {
    GradReport r;
    r.model = "one";
    r.params.push_back(statistics("layers.0.weight_hh_l0", Tensor{{2, 2}, {1e-3, -2e-3, 3e-3, 0}}));
    // The chart's group, and the x of an element's attribute in it.
    auto chart = [](const std::string& svg) {
        const size_t at = svg.find("<g class=\"through-time\">");
        REQUIRE(at != std::string::npos);
        return svg.substr(at, svg.find("</g>", at) - at);
    };
    auto attribute = [](const std::string& svg, size_t at, const std::string& name) {
        const size_t v = svg.find(name + "=\"", at) + name.size() + 2;
        return std::stod(svg.substr(v, svg.find('"', v) - v));
    };
    SECTION("one step: the dot sits over the label 0") {
        r.throughTime = {throughTime("layers.0", "rnn tanh", {0.5})};
        const std::string g = chart(gradientFigure({r}, {"tanh"}).svg());
        CHECK(count(g, "<circle") == 1);
        const size_t label = g.rfind("<text", g.find(">0</text>"));
        CHECK(attribute(g, label, "x") ==
              Approx(attribute(g, g.find("<circle"), "cx")).margin(0.1));
    }
    SECTION("zeros around one positive norm: a dot at its step, the middle of three") {
        r.throughTime = {throughTime("layers.0", "rnn relu", {0, 1e-2, 0})};
        const std::string g = chart(gradientFigure({r}, {"relu"}).svg());
        REQUIRE(count(g, "<circle") == 1);
        const double cx = attribute(g, g.find("<circle"), "cx");
        const double x0 = attribute(g, g.rfind("<text", g.find(">0</text>")), "x");
        const double x2 = attribute(g, g.rfind("<text", g.find(">2</text>")), "x");
        CHECK(cx == Approx((x0 + x2) / 2).margin(0.1));
    }
    SECTION("a line of several points has no dot") {
        r.throughTime = {throughTime("layers.0", "gru", {1e-3, 0, 1e-2})};
        CHECK(count(chart(gradientFigure({r}, {"gru"}).svg()), "<circle") == 0);
    }
}

TEST_CASE("a shuffled batch is a deterministic draw without repeats", "[data]") {
    Examples all;
    all.count = 1000, all.features = 1;
    for (int i = 0; i < 1000; ++i) all.pixels.push_back(uint8_t(i % 256)), all.labels.push_back(uint8_t(i % 10));
    Examples a = sample(all, 300, 7), b = sample(all, 300, 7), c = sample(all, 300, 8);
    CHECK(a.pixels == b.pixels);
    CHECK(a.pixels != c.pixels);
    CHECK(a.count == 300);
    // Each example is drawn once: pixel i%256 with label i%10 identifies i up to 1280 > 1000.
    std::set<std::pair<int, int>> seen;
    for (int i = 0; i < 300; ++i) seen.emplace(a.pixels[size_t(i)], a.labels[size_t(i)]);
    CHECK(seen.size() == 300);
}

TEST_CASE("gradc grads writes its files only when the whole run succeeds", "[params]") {
    Scratch s("cli");
    auto run = [&](const std::string& args) { return gradcCommand("grads " + args, true); };
    const std::string model = GRADC_SOURCE_DIR "/models/seed_sigmoid.nn";
    auto [rc, out] = run(model + " --batch 16 --save-params " + s.file("p.safetensors") + " --dump-grads " +
                         s.file("g.safetensors") + " --plot " + s.file("g.svg"));
    REQUIRE(rc == 0);
    CHECK(fs::exists(s.file("p.safetensors")));
    CHECK(fs::exists(s.file("g.safetensors")));
    CHECK(fs::exists(s.file("g.svg")));
    // The saved parameters reproduce the run: the same gradients, bit for bit.
    std::tie(rc, out) = run(model + " --batch 16 --params " + s.file("p.safetensors") + " --dump-grads " +
                            s.file("g2.safetensors"));
    REQUIRE(rc == 0);
    auto g1 = readSafetensors(s.file("g.safetensors")), g2 = readSafetensors(s.file("g2.safetensors"));
    for (auto& [name, t] : g1) CHECK(t.data == g2.at(name).data);
    // A bad parameter file: an error naming it, exit 1, and no output file.
    s.write("bad.safetensors", "garbage");
    std::tie(rc, out) = run(model + " --batch 16 --params " + s.file("bad.safetensors") + " --dump-grads " +
                            s.file("never.safetensors") + " --plot " + s.file("never.svg"));
    CHECK(rc == 1);
    CHECK_THAT(out, Catch::StartsWith(s.file("bad.safetensors") + ": error: not a safetensors file"));
    CHECK_FALSE(fs::exists(s.file("never.safetensors")));
    CHECK_FALSE(fs::exists(s.file("never.svg")));
    // An output path that cannot be written: an error naming it, and no temporary file left.
    std::tie(rc, out) = run(model + " --batch 16 --plot " + s.file("no/such/dir/g.svg"));
    CHECK(rc == 1);
    CHECK_THAT(out, Catch::Contains("no/such/dir/g.svg: error: cannot write"));
    std::tie(rc, out) = run(model + " " + model + " --params " + s.file("p.safetensors"));
    CHECK(rc == 2);
    CHECK_THAT(out, Catch::Contains("--params, --save-params and --dump-grads take exactly one model"));
    for (auto& e : fs::directory_iterator(s.path)) CHECK(e.path().filename().string()[0] != '.'); // no temporary
}

TEST_CASE("NaN and Inf in parameters are counted and reported, never turned into numbers", "[numerics]") {
    Scratch s("nan");
    Graph g = compileSource("m.nn", "input 784\ndense 8 tanh\ndense 10\nloss cross_entropy\n", {16}).graph;
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (auto& p : g.params) {
        const Shape& sh = g[p.node].shape;
        tensors.emplace_back(p.name, Tensor{sh, std::vector<double>(size_t(elementCount(sh)), 0.01)});
    }
    tensors[0].second.data[5] = std::nan(""); // one NaN weight in the first layer
    tensors[2].second.data[0] = INFINITY;     // one infinite weight in the last
    writeSafetensors(s.file("p.safetensors"), tensors);
    s.write("m.nn", "input 784\ndense 8 tanh\ndense 10\nloss cross_entropy\n");
    for (const char* backend : {"jit", "interp"}) {
        auto [rc, json] = gradcCommand("grads " + s.file("m.nn") + " --batch 16 --format json --backend " + backend +
                                           " --params " + s.file("p.safetensors"), true);
        REQUIRE(rc == 0);
        INFO(backend << ": " << json.substr(0, 400));
        CHECK_THAT(json, Catch::Contains("\"loss\": null")); // a NaN loss is shown as null, not a number
        bool counted = false; // some gradient entries are NaN, and counted: "nan": N with N > 0
        for (size_t p = json.find("\"nan\": "); p != std::string::npos; p = json.find("\"nan\": ", p + 1))
            counted = counted || (json[p + 7] >= '1' && json[p + 7] <= '9');
        CHECK(counted);
    }
}

namespace {

/// A model's report whose weights' gradients have mean |g| `means` ([2,2] of +-m each), with
/// biases of gradient 1 when `biases`.
GradReport flowReport(const std::string& name, const std::vector<double>& means, bool biases = false) {
    GradReport r;
    r.model = name;
    for (size_t i = 0; i < means.size(); ++i) {
        const double m = means[i];
        r.params.push_back(statistics(fmt::format("layers.{}.weight", 2 * i), Tensor{Shape{2, 2}, {m, -m, m, -m}}));
        if (biases) r.params.push_back(statistics(fmt::format("layers.{}.bias", 2 * i), Tensor{Shape{2}, {1, 1}}));
    }
    computeVanishingFactor(r);
    return r;
}

} // namespace

TEST_CASE("the gradient flow comes first: every model's mean |gradient| per weight on one log axis, coloured "
          "by its activation",
          "[plot]") {
    // Two models of three weights whose mean |gradient| is 1e-6, 1e-4, 1e-2 (vanishing) and
    // 1e-3 each (flat), and one whose middle weight's gradient is all zero.
    auto report = [](const std::string& name, std::vector<double> means) { return flowReport(name, means, true); };
    const std::string svg = gradientFigure({report("deep", {1e-6, 1e-4, 1e-2}), report("flat", {1e-3, 1e-3, 1e-3}),
                                            report("dead", {1e-3, 0, 1e-3})},
                                           {"sigmoid", "relu", "tanh"})
                                .svg();
    CHECK(wellFormed(svg));
    const size_t group = svg.find("<g class=\"gradient-flow\">");
    REQUIRE(group != std::string::npos);
    CHECK(group < svg.find("<g class=\"panel\""));
    const std::string chart = svg.substr(group, svg.find("</g>", group) - group);
    // Axes: decades 1e-6 .. 1e-2 labelled, the weights 1 .. 3, both axes named.
    for (int d = -6; d <= -2; ++d) CHECK_THAT(chart, Catch::Contains(fmt::format(">1e{}</text>", d)));
    for (int k = 1; k <= 3; ++k) CHECK_THAT(chart, Catch::Contains(fmt::format(">{}</text>", k)));
    CHECK_THAT(chart, Catch::Contains(">weight tensor, input to output</text>") &&
                          Catch::Contains(">mean |gradient|</text>"));
    // One line per model, its activation's colour, a marker per point; the zero left out.
    CHECK(count(chart, "class=\"flow-line\"") == 3);
    auto points = [&](const std::string& model) {
        const size_t at = chart.find("points=\"", chart.find("class=\"flow-line\" data-model=\"" + model + "\"")) + 8;
        std::vector<std::pair<double, double>> out;
        std::istringstream in(chart.substr(at, chart.find('"', at) - at));
        for (std::string p; in >> p;)
            out.emplace_back(std::stod(p.substr(0, p.find(','))), std::stod(p.substr(p.find(',') + 1)));
        return out;
    };
    const auto deep = points("deep"), flat = points("flat");
    REQUIRE(deep.size() == 3);
    REQUIRE(flat.size() == 3);
    CHECK(points("dead").size() == 2);
    CHECK(deep[0].second - deep[1].second == Approx(deep[1].second - deep[2].second)); // log scale
    CHECK(deep[0].second > deep[2].second); // 1e-6 below 1e-2 (SVG's y grows downwards)
    CHECK(flat[0].second == Approx(flat[2].second));
    CHECK(deep[0].second > flat[0].second);
    CHECK(deep[1].first == Approx(flat[1].first)); // the same depth on the same x
    CHECK(count(chart, "class=\"flow-point\" data-model=\"deep\"") == 3);
    CHECK(count(chart, "class=\"flow-point\" data-model=\"dead\"") == 2);
    CHECK_THAT(chart, Catch::Contains("class=\"flow-line\" data-model=\"deep\" fill=\"none\" stroke=\"#2ca02c\""));
    CHECK_THAT(chart, Catch::Contains("class=\"flow-line\" data-model=\"flat\" fill=\"none\" stroke=\"#1f77b4\""));
    // The legend names each model, its activation and its vanishing factor.
    CHECK_THAT(chart, Catch::Contains(">deep (sigmoid): vanishing factor 1.00e-04</text>"));
    CHECK_THAT(chart, Catch::Contains(">flat (relu): vanishing factor 1.00e+00</text>"));
    // The histograms take the same colour as the model's line.
    const std::string panels = svg.substr(svg.find("<g class=\"panel\""));
    CHECK_THAT(panels, Catch::Contains("fill=\"#2ca02c\"") && Catch::Contains("fill=\"#1f77b4\""));
}

TEST_CASE("the gradient flow alone for a paper: 520 wide, text readable at a column's width, the legend under "
          "the plot",
          "[plot]") {
    const Figure fig = flowFigure({flowReport("deep", {1e-6, 1e-4, 1e-2}), flowReport("flat", {1e-3, 1e-3, 1e-3})},
                                  {"sigmoid", "relu"});
    CHECK(fig.width() == 520);
    const std::string svg = fig.svg();
    CHECK(wellFormed(svg));
    CHECK(count(svg, "class=\"flow-line\"") == 2);
    CHECK(svg.find("Gradient flow:") == std::string::npos); // no title: the caption's
    // Every text at least 13.5 units: 6.5 pt when 520 units are scaled to 252 pt (3.5 in).
    double smallest = 1e9;
    const std::regex fontSize("<text [^>]*font-size=\"([0-9.]+)\"");
    for (auto it = std::sregex_iterator(svg.begin(), svg.end(), fontSize);
         it != std::sregex_iterator(); ++it)
        smallest = std::min(smallest, std::stod((*it)[1]));
    CHECK(smallest >= 13.5);
    CHECK(smallest * 252 / fig.width() >= 6.5);
    // The legend's rows under the plot area, inside the figure.
    const size_t legend = svg.find(">deep (sigmoid): vanishing factor 1.00e-04</text>");
    REQUIRE(legend != std::string::npos);
    const size_t y = svg.rfind(" y=\"", legend);
    const double ly = std::stod(svg.substr(y + 4));
    const size_t frame = svg.find("<rect", svg.find("<g class=\"gradient-flow\">"));
    const size_t fy = svg.find(" y=\"", frame), fh = svg.find(" height=\"", frame);
    CHECK(ly > std::stod(svg.substr(fy + 4)) + std::stod(svg.substr(fh + 9)));
    CHECK(ly < fig.height());
    CHECK_THAT(svg, Catch::Contains(">flat (relu): vanishing factor 1.00e+00</text>"));
}

TEST_CASE("plot-scale log: every histogram of log10 |g| over the same decades, a log count axis for a spike",
          "[plot]") {
    auto report = [](const std::string& name, double scale, int zeros) {
        GradReport r;
        r.model = name;
        std::vector<double> v;
        for (int i = 1; i <= 200; ++i) v.push_back((i % 2 ? 1 : -1) * scale * (1 + i % 7));
        v.insert(v.end(), size_t(zeros), 0.0);
        r.params.push_back(statistics("layers.0.weight", Tensor{Shape{1, int64_t(v.size())}, v}));
        r.params.push_back(statistics("layers.2.weight", Tensor{Shape{1, 200}, std::vector<double>(v.begin(), v.begin() + 200)}));
        computeVanishingFactor(r);
        return r;
    };
    // The first model's gradients are near 1e-7, the second's near 1e-3 (and it has 1000 zeros
    // in its first weight: a spike the linear histogram would draw as one bar).
    const GradReport small = report("small", 1e-7, 0), large = report("large", 1e-3, 1000);
    const std::string svg = gradientFigure({small, large}, {"sigmoid", "relu"}, true).svg();
    CHECK(wellFormed(svg));
    std::vector<std::string> panels;
    for (size_t at = svg.find("<g class=\"panel\""); at != std::string::npos; at = svg.find("<g class=\"panel\"", at + 1))
        panels.push_back(svg.substr(at, svg.find("</g>", at) - at));
    REQUIRE(panels.size() == 4);
    // The same decades under every panel: from 1e-7 to 1e-2.
    auto decades = [](const std::string& panel) {
        std::vector<std::string> out;
        std::smatch m;
        for (auto it = panel.cbegin(); std::regex_search(it, panel.cend(), m, std::regex(">(1e-?[0-9]+)</text>")); it = m.suffix().first)
            out.push_back(m[1]);
        return out;
    };
    CHECK(decades(panels[0]) == std::vector<std::string>{"1e-7", "1e-6", "1e-5", "1e-4", "1e-3", "1e-2"});
    for (auto& p : panels) CHECK(decades(p) == decades(panels[0]));
    // The small model's bars lie decades left of the large one's.
    auto firstBar = [](const std::string& panel) {
        std::smatch m;
        REQUIRE(std::regex_search(panel, m, std::regex("<rect x=\"([0-9.]+)\"[^>]*fill-opacity")));
        return std::stod(m[1]);
    };
    CHECK(firstBar(panels[0]) + 100 < firstBar(panels[2]) + 0);
    // The zeros are counted apart, and the spike in the linear figure gets a log count axis.
    CHECK_THAT(panels[2], Catch::Contains(">zeros: 1000</text>"));
    CHECK_THAT(panels[0], !Catch::Contains("zeros:"));
    const std::string linear = gradientFigure({large}, {"relu"}).svg();
    const std::string spike = linear.substr(linear.find("<g class=\"panel\""));
    CHECK_THAT(spike.substr(0, spike.find("</g>")), Catch::Contains(">1</text>") && Catch::Contains(">10</text>") &&
                                                      Catch::Contains(">100</text>") && Catch::Contains(">1000</text>"));
}
