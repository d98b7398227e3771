// FigureTests.cpp — one drawing, three formats (Figure.h): the SVG text, cairo's PDF and PNG
// (the PNG decoded here and its pixels read), the file name's extension choosing the format,
// and the commands that draw figures refusing any other before they do any work.
#include "Autodiff.h"
#include "Figure.h"
#include "Pipeline.h"
#include "Plot.h"
#include "RunLog.h"
#include "Source.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <zlib.h>

#include <cstdlib>
#include <regex>

using namespace gradc;

namespace {

/// A PNG of 8-bit RGB or RGBA (cairo's), decoded: its size and pixels as RGB.
struct Image {
    uint32_t width = 0, height = 0;
    std::vector<uint8_t> rgb;
    std::array<int, 3> at(uint32_t x, uint32_t y) const {
        const size_t i = (size_t(y) * width + x) * 3;
        return {rgb[i], rgb[i + 1], rgb[i + 2]};
    }
};

uint32_t bigEndian(const std::string& s, size_t at) {
    return uint32_t(uint8_t(s[at])) << 24 | uint32_t(uint8_t(s[at + 1])) << 16 | uint32_t(uint8_t(s[at + 2])) << 8 |
           uint32_t(uint8_t(s[at + 3]));
}

Image decodePng(const std::string& png) {
    REQUIRE(png.size() > 33);
    REQUIRE(png.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0);
    Image img;
    int channels = 0;
    std::string idat;
    for (size_t at = 8; at + 12 <= png.size();) {
        const uint32_t length = bigEndian(png, at);
        const std::string type = png.substr(at + 4, 4);
        if (type == "IHDR") {
            img.width = bigEndian(png, at + 8), img.height = bigEndian(png, at + 12);
            REQUIRE(int(png[at + 16]) == 8); // bits per channel
            const int colour = png[at + 17];
            REQUIRE((colour == 2 || colour == 6));
            channels = colour == 2 ? 3 : 4;
            REQUIRE(int(png[at + 20]) == 0); // not interlaced
        } else if (type == "IDAT") {
            idat += png.substr(at + 8, length);
        }
        at += 12 + length;
    }
    const size_t stride = size_t(img.width) * size_t(channels);
    std::vector<uint8_t> raw((stride + 1) * img.height);
    uLongf size = uLongf(raw.size());
    REQUIRE(uncompress(raw.data(), &size, reinterpret_cast<const Bytef*>(idat.data()), uLong(idat.size())) == Z_OK);
    REQUIRE(size == raw.size());
    // Undo each row's filter (none, sub, up, average, Paeth), in place.
    std::vector<uint8_t> prev(stride, 0), row(stride);
    img.rgb.reserve(size_t(img.width) * img.height * 3);
    for (uint32_t y = 0; y < img.height; ++y) {
        const uint8_t filter = raw[y * (stride + 1)];
        const uint8_t* in = &raw[y * (stride + 1) + 1];
        for (size_t i = 0; i < stride; ++i) {
            const int a = i >= size_t(channels) ? row[i - size_t(channels)] : 0, b = prev[i],
                      c = i >= size_t(channels) ? prev[i - size_t(channels)] : 0;
            int p = 0;
            switch (filter) {
            case 0: p = 0; break;
            case 1: p = a; break;
            case 2: p = b; break;
            case 3: p = (a + b) / 2; break;
            case 4: {
                const int e = a + b - c, pa = std::abs(e - a), pb = std::abs(e - b), pc = std::abs(e - c);
                p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
                break;
            }
            default: FAIL("a PNG row filter " << int(filter));
            }
            row[i] = uint8_t(in[i] + p);
        }
        for (uint32_t x = 0; x < img.width; ++x)
            for (int k = 0; k < 3; ++k) img.rgb.push_back(row[size_t(x) * size_t(channels) + size_t(k)]);
        prev = row;
    }
    return img;
}

size_t occurrences(const std::string& s, const std::string& what) {
    size_t n = 0;
    for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
    return n;
}

std::string errorOf(const std::function<void()>& f) {
    try {
        f();
    } catch (const UserError& e) {
        return e.format();
    }
    return "";
}

/// A figure of every kind of item: a black square at (10, 10), 20 wide, a red line, a blue
/// polyline, a green dot, text and turned text, one group.
Figure sample() {
    Figure f(120, 80);
    f.begin("class=\"panel\" data-tensor=\"w\"");
    f.rect(10, 10, 20, 20, "#000000");
    f.line(40, 10, 110, 10, "#ff0000", 3);
    f.polyline({{40, 40}, {70, 60}, {110, 40}}, "#00f", 2, "class=\"series\"");
    f.circle(100, 70, 4, "#00a000");
    f.text(60, 75, "x & y", Figure::Anchor::Middle, 9);
    f.text(8, 60, "count", Figure::Anchor::Middle, 9, "black", -90);
    f.end();
    return f;
}

} // namespace

TEST_CASE("a figure file's extension chooses its format, and any other is refused naming the file", "[figure]") {
    CHECK(figureFormat("g.svg") == FigureFormat::Svg);
    CHECK(figureFormat("out/g.PDF") == FigureFormat::Pdf);
    CHECK(figureFormat("a.b/g.Png") == FigureFormat::Png);
    CHECK_THAT(errorOf([] { figureFormat("g.jpg"); }),
               Catch::StartsWith("g.jpg: error: cannot draw a figure as '.jpg': the formats are .svg, .pdf and .png"));
    CHECK(figureFormat("a.d/figure") == FigureFormat::Svg); // no extension: /dev/stdout
    CHECK_THAT(errorOf([] { figureFormat("g.svg.gz"); }),
               Catch::StartsWith("g.svg.gz: error: cannot draw a figure as '.gz'"));
    CHECK_THAT(errorOf([] { Figure(20000, 100).write("wide.png"); }),
               Catch::StartsWith("wide.png: error: the figure is 40000 x 200 pixels, too large for a PNG"));
    CHECK(errorOf([] { Figure(20000, 100).write("wide.pdf"); }).empty());
}

TEST_CASE("one drawing, three formats: SVG by hand, PDF and PNG through cairo", "[figure]") {
    const Figure f = sample();
    const std::string svg = f.svg();
    CHECK_THAT(svg, Catch::Contains("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"120\" height=\"80\""));
    CHECK_THAT(svg, Catch::Contains("<g class=\"panel\" data-tensor=\"w\">"));
    CHECK_THAT(svg, Catch::Contains("<polyline class=\"series\" fill=\"none\" stroke=\"#00f\" stroke-width=\"2\" "
                                    "points=\"40.00,40.00 70.00,60.00 110.00,40.00 \"/>"));
    CHECK_THAT(svg, Catch::Contains(">x &amp; y</text>"));
    CHECK_THAT(svg, Catch::Contains("transform=\"rotate(-90 8.0 60.0)\">count</text>"));
    CHECK_THAT(svg, Catch::EndsWith("</g>\n</svg>\n"));

    // The PDF: one page of the figure's size in points.
    const std::string pdf = f.pdf();
    CHECK(pdf.rfind("%PDF-", 0) == 0);
    CHECK_THAT(pdf, Catch::Contains("%%EOF"));
    std::smatch m;
    REQUIRE(std::regex_search(pdf, m, std::regex("/MediaBox \\[ *0 0 ([0-9.]+) ([0-9.]+) *\\]")));
    CHECK(std::stod(m[1]) == 120);
    CHECK(std::stod(m[2]) == 80);
    CHECK(std::regex_search(pdf, std::regex("/Type */Pages[^>]*/Count 1\\b")));
    // A figure taller than PDF viewers allow (200 inches) is scaled down to fit, in proportion.
    const std::string tall = Figure(800, 36000).pdf();
    REQUIRE(std::regex_search(tall, m, std::regex("/MediaBox \\[ *0 0 ([0-9.]+) ([0-9.]+) *\\]")));
    CHECK(std::stod(m[1]) == Approx(320));
    CHECK(std::stod(m[2]) == Approx(14400));

    // The PNG at two pixels per unit, its items where they were drawn.
    const Image img = decodePng(f.png());
    REQUIRE(img.width == 240);
    REQUIRE(img.height == 160);
    CHECK(img.at(40, 40) == std::array<int, 3>{0, 0, 0});         // inside the black square
    CHECK(img.at(4, 4) == std::array<int, 3>{255, 255, 255});     // the white background
    CHECK(img.at(150, 20) == std::array<int, 3>{255, 0, 0});      // on the red line, 3 wide
    CHECK(img.at(150, 27) == std::array<int, 3>{255, 255, 255});  // beside it
    CHECK(img.at(200, 140) == std::array<int, 3>{0, 160, 0});     // the dot's centre
    CHECK(img.at(140, 120)[2] > 200);                             // on the blue polyline
    CHECK(img.at(140, 120)[0] < 60);
    int ink = 0; // the text under the polyline: dark pixels in its box
    for (uint32_t y = 134; y < 152; ++y)
        for (uint32_t x = 96; x < 144; ++x) ink += img.at(x, y)[0] < 128;
    CHECK(ink > 20);
    CHECK(decodePng(Figure(120, 80).png()).rgb != img.rgb);
}

TEST_CASE("the gradient figure as PDF and PNG from the command, and a figure format it cannot write refused "
          "before any work", "[figure]") {
    TempDir d("figure");
    const std::string model = std::string(GRADC_SOURCE_DIR) + "/models/seed_sigmoid.nn";
    const std::string svgPath = d.file("g.svg"), pngPath = d.file("g.png"), pdfPath = d.file("g.pdf");
    for (const std::string& p : {svgPath, pngPath, pdfPath}) {
        auto [rc, out] = gradcCommand(fmt::format("grads {} --batch 8 --backend interp --plot {}", model, p), true);
        INFO(out);
        REQUIRE(rc == 0);
    }
    const std::string svg = readFile(svgPath);
    std::smatch m;
    REQUIRE(std::regex_search(svg, m, std::regex("<svg [^>]*width=\"([0-9]+)\" height=\"([0-9]+)\"")));
    const uint32_t w = uint32_t(std::stoul(m[1])), h = uint32_t(std::stoul(m[2]));
    const Image img = decodePng(readFile(pngPath));
    CHECK(img.width == 2 * w);
    CHECK(img.height == 2 * h);
    const std::string pdf = readFile(pdfPath);
    CHECK(pdf.rfind("%PDF-", 0) == 0);
    CHECK_THAT(pdf, Catch::Contains(fmt::format("/MediaBox [ 0 0 {} {} ]", w, h)));
    // A .jpg is refused with the formats named, before the model is even read (it does not
    // exist), and nothing is written.
    const std::string jpg = d.file("g.jpg");
    auto [rc, out] = gradcCommand(fmt::format("grads {} --plot {}", d.file("missing.nn"), jpg), true);
    CHECK(rc != 0);
    CHECK_THAT(out, Catch::Contains(jpg + ": error: cannot draw a figure as '.jpg': the formats are .svg, .pdf and .png"));
    CHECK_FALSE(std::filesystem::exists(jpg));
    for (const char* command : {"act sigmoid --plot", "acts --model x.nn --plot"}) {
        auto [rc2, out2] = gradcCommand(fmt::format("{} {}", command, d.file("a.gif")), true);
        CHECK(rc2 != 0);
        CHECK_THAT(out2, Catch::Contains("a.gif: error: cannot draw a figure as '.gif'"));
    }
}

namespace {

/// A training log as gradc train --log writes it: `epochs` lines (two weights and a bias,
/// the first weight's mean |gradient| 10^(first - epoch)) and the end.
std::string trainingLog(int epochs, int first) {
    std::string log;
    for (int e = 1; e <= epochs; ++e)
        log += fmt::format(
            "{{\"epoch\":{0},\"step\":{1},\"train_loss\":{2},\"val_loss\":{3},\"val_accuracy\":{4},\"seconds\":1,"
            "\"vanishing_factor\":0.1,\"grads\":[{{\"name\":\"layers.0.weight\",\"shape\":[4,3],\"abs_mean\":{5}}},"
            "{{\"name\":\"layers.0.bias\",\"shape\":[4],\"abs_mean\":1}},"
            "{{\"name\":\"layers.2.weight\",\"shape\":[2,4],\"abs_mean\":{6}}}]}}\n",
            e, 100 * e, 2.0 / e, 2.2 / e, 0.5 + 0.1 * e, fmt::format("1e{}", first - e), e == 2 ? "null" : "0.01");
    return log + "{\"end\":true,\"best_epoch\":3,\"test_accuracy\":0.75}\n";
}

} // namespace

TEST_CASE("a training log read back: its epochs, its weights' mean |gradient| and its test accuracy, or an "
          "error naming the file and line",
          "[figure][plot]") {
    TempDir d("runlog");
    const RunLog r = readRunLog(d.write("sig.moid.jsonl", trainingLog(3, -3)));
    CHECK(r.name == "sig.moid");
    CHECK(r.steps == std::vector<double>{100, 200, 300});
    CHECK(r.valAccuracy[2] == Approx(0.8));
    CHECK(r.layers == std::vector<std::string>{"layers.0.weight", "layers.2.weight"}); // weights only
    REQUIRE(r.meanAbs.size() == 2);
    CHECK(r.meanAbs[0][1] == Approx(1e-5));
    CHECK(std::isnan(r.meanAbs[1][1])); // null: not finite when logged
    CHECK(r.testAccuracy == Approx(0.75));
    auto error = [&](const std::string& name, const std::string& text) {
        return errorOf([&] { readRunLog(d.write(name, text)); });
    };
    CHECK_THAT(error("a.jsonl", trainingLog(1, 0) + "not json\n"),
               Catch::StartsWith(d.file("a.jsonl") + ":3:1: error: not a JSON object"));
    std::string noLoss = trainingLog(2, 0);
    noLoss.replace(noLoss.find("\"val_loss\"", noLoss.find('\n')), 10, "\"val_lost\"");
    CHECK_THAT(error("b.jsonl", noLoss), Catch::StartsWith(d.file("b.jsonl") + ":2:1: error: an epoch without 'val_loss'"));
    CHECK_THAT(error("c.jsonl", "{\"end\":true}\n"),
               Catch::StartsWith(d.file("c.jsonl") + ": error: no epoch in the training log"));
    CHECK_THAT(errorOf([&] { readRunLog(d.file("none.jsonl")); }),
               Catch::StartsWith(d.file("none.jsonl") + ": error: cannot open the training log"));
    std::string other = trainingLog(2, 0);
    other.replace(other.rfind("layers.2.weight"), 15, "layers.4.weight");
    CHECK_THAT(error("e.jsonl", other), Catch::Contains(":2:1: error: the weights differ from the first line's"));
}

TEST_CASE("gradc plot: the runs' curves, each run's gradient flow over training and its heat map on shared "
          "decades",
          "[figure][plot]") {
    TempDir d("plot");
    const RunLog a = readRunLog(d.write("vanishing.jsonl", trainingLog(3, -3)));
    const RunLog b = readRunLog(d.write("healthy.jsonl", trainingLog(4, -1)));
    const std::string svg = trainingFigure({a, b}).svg();
    CHECK(occurrences(svg, "class=\"val-accuracy\"") == 2);
    CHECK(occurrences(svg, "class=\"train-loss\"") == 2);
    CHECK(occurrences(svg, "<g class=\"flow-over-training\"") == 2);
    CHECK(occurrences(svg, "class=\"layer-line\" data-layer=\"layers.0.weight\"") == 2);
    CHECK_THAT(svg, Catch::Contains(">vanishing (test 75.00%)</text>"));
    // The heat maps: a cell per layer and logged point, coloured on the decades both runs
    // share (1e-6 .. 1e-2: a's first layer at 1e-6 .. 1e-4 and b's at 1e-5 .. 1e-2).
    const size_t heat = svg.find("<g class=\"heat-map\" data-run=\"healthy\">");
    REQUIRE(heat != std::string::npos);
    const std::string map = svg.substr(heat, svg.find("</g>", heat) - heat);
    CHECK(occurrences(map, "<rect") == 1 + 2 * 4 + 50); // the frame, the cells, the colour bar
    CHECK(occurrences(map, "fill=\"#ffffff\"") == 1);   // the null
    CHECK_THAT(map, Catch::Contains(">1e-6</text>") && Catch::Contains(">1e-2</text>") &&
                        !Catch::Contains(">1e-7</text>") && !Catch::Contains(">1e-1</text>"));
    // From the command: PNG, and errors before any figure is written.
    const std::string png = d.file("t.png");
    auto [rc, out] = gradcCommand(fmt::format("plot {} {} -o {}", d.file("vanishing.jsonl"), d.file("healthy.jsonl"), png), true);
    INFO(out);
    REQUIRE(rc == 0);
    CHECK(decodePng(readFile(png)).width == 2400);
    const std::string bad = d.write("bad.jsonl", "{\"epoch\":1}\n"), out2 = d.file("u.svg");
    auto [rc2, err] = gradcCommand(fmt::format("plot {} -o {}", bad, out2), true);
    CHECK(rc2 != 0);
    CHECK_THAT(err, Catch::Contains(bad + ":1:1: error: an epoch without 'step'"));
    CHECK_FALSE(std::filesystem::exists(out2));
    auto [rc3, err3] = gradcCommand(fmt::format("plot {} -o {}", d.file("vanishing.jsonl"), d.file("t.tiff")), true);
    CHECK(rc3 != 0);
    CHECK_THAT(err3, Catch::Contains("cannot draw a figure as '.tiff'"));
}

TEST_CASE("gradc plot draws the log of a real gradc train run", "[figure][plot][train]") {
    TempDir d("plottrain");
    const std::string model = std::string(GRADC_SOURCE_DIR) + "/models/seed_sigmoid.nn", log = d.file("run.jsonl");
    auto [rc, out] = gradcCommand(fmt::format("train {} --epochs 2 --limit 12000 --batch 256 --log {}", model, log), true);
    INFO(out);
    REQUIRE(rc == 0);
    const RunLog r = readRunLog(log);
    CHECK(r.steps.size() == 2);
    CHECK(r.layers.size() == 5);
    CHECK(r.testAccuracy >= 0);
    CHECK(r.meanAbs[0][0] < r.meanAbs[4][0]); // sigmoid: the first layer's gradients are the smaller
    auto [rc2, out2] = gradcCommand(fmt::format("plot {} -o {}", log, d.file("run.pdf")), true);
    CHECK(rc2 == 0);
    CHECK(readFile(d.file("run.pdf")).rfind("%PDF-", 0) == 0);
}

TEST_CASE("gradc dump --emit=dot and grad-dot draw the graph for Graphviz, which renders it", "[figure][dot]") {
    TempDir d("dot");
    const std::string model = std::string(GRADC_SOURCE_DIR) + "/models/seed_relu.nn";
    for (const char* stage : {"dot", "grad-dot"}) {
        const std::string dot = d.file(std::string(stage) + ".gv"), svg = d.file(std::string(stage) + ".svg");
        auto [rc, out] = gradcCommand(fmt::format("dump '{}' --emit={} > {}", model, stage, dot), true);
        INFO(out);
        REQUIRE(rc == 0);
        const std::string text = readFile(dot);
        const Graph fwd = compileSource("seed_relu.nn", readFile(model), {256}).graph;
        const size_t nodes = std::string(stage) == "dot" ? fwd.nodes.size() : differentiate(fwd).nodes.size();
        CHECK(occurrences(text, " [label=") == nodes);
        CHECK_THAT(text, Catch::Contains("[label=\"layers.0.weight\\n[512,784]\", fillcolor=lightblue]"));
        CHECK_THAT(text, Catch::Contains("\\n-> loss\", fillcolor=darkolivegreen1]"));
        // Graphviz reads it: one SVG node group per graph node.
        REQUIRE(std::system(fmt::format("dot -Tsvg {} -o {}", dot, svg).c_str()) == 0);
        CHECK(occurrences(readFile(svg), "class=\"node\"") == nodes);
    }
    // The model's name as the graph's: a quote, a backslash and a byte that is not UTF-8 still
    // make one DOT string.
    Graph g = compileSource("seed_relu.nn", readFile(model), {2}).graph;
    g.model = "a\"b\\c\xff";
    CHECK_THAT(dotGraph(g), Catch::StartsWith("digraph \"a\\\"b\\\\c\xEF\xBF\xBD\" {"));
    auto [rc2, err] = gradcCommand(fmt::format("dump '{}' --emit=grad-dot --eval", model), true);
    CHECK(rc2 == 2);
    CHECK_THAT(err, Catch::Contains("--eval: evaluation mode has no backward pass to print"));
}

TEST_CASE("figures of odd data: step lines, a first line without weights, a null step, a range of one ulp, "
          "gradients of 1e-60, text that is not UTF-8",
          "[figure][plot]") {
    TempDir d("odd");
    // {"kind": "step"} lines give the gradient points; the epochs still give the curves.
    const std::string stepLine =
        "{\"kind\":\"step\",\"epoch\":1,\"step\":5,\"loss\":1,\"vanishing_factor\":0.1,\"grads\":[{\"name\":"
        "\"layers.0.weight\",\"shape\":[4,3],\"abs_mean\":0.5},{\"name\":\"layers.2.weight\",\"shape\":[2,4],"
        "\"abs_mean\":0.25}]}\n";
    const RunLog r = readRunLog(d.write("steps.jsonl", stepLine + trainingLog(1, -2)));
    CHECK(r.gradSteps == std::vector<double>{5});
    CHECK(r.steps == std::vector<double>{100});
    CHECK(r.meanAbs[1] == std::vector<double>{0.25});
    // A first line without weights fixes the weights: a later line with some differs.
    const std::string none = "{\"epoch\":1,\"step\":1,\"train_loss\":1,\"val_loss\":1,\"val_accuracy\":0,\"grads\":[]}\n";
    CHECK_THAT(errorOf([&] { readRunLog(d.write("none.jsonl", none + trainingLog(1, 0))); }),
               Catch::Contains(":2:1: error: the weights differ from the first line's"));
    std::string nullStep = trainingLog(1, 0);
    nullStep.replace(nullStep.find("\"step\":100"), 10, "\"step\":null");
    CHECK_THAT(errorOf([&] { readRunLog(d.write("null.jsonl", nullStep)); }),
               Catch::Contains(":1:1: error: 'step' is not a number of steps"));
    // A histogram over one ulp ends (its ticks are counted), with at most 11 ticks.
    GradReport g;
    g.model = "ulp";
    g.params.push_back(statistics("layers.0.weight", Tensor{Shape{1, 2}, {1.0, std::nextafter(1.0, 0.0)}}));
    const std::string svg = gradientFigure({g}, {"sigmoid"}).svg();
    const std::string panel = svg.substr(svg.find("<g class=\"panel\""));
    CHECK(occurrences(panel.substr(0, panel.find("</g>")), "<line") <= 2 * 11 + 4);
    // Gradients of 1e-60 (a deep f64 network) sit at 1e-60 on the log axis, not at a floor.
    GradReport tiny;
    tiny.model = "tiny";
    tiny.params.push_back(statistics("layers.0.weight", Tensor{Shape{1, 2}, {1e-60, -3e-60}}));
    tiny.params.push_back(statistics("layers.2.weight", Tensor{Shape{1, 2}, {1e-3, 2e-3}}));
    const std::string logSvg = gradientFigure({tiny}, {"sigmoid"}, true).svg();
    CHECK_THAT(logSvg, Catch::Contains(">1e-60</text>"));
    // Text that is not UTF-8 is drawn as U+FFFD, and what follows it is still drawn.
    Figure f(40, 20);
    f.text(20, 10, "caf\xe9", Figure::Anchor::Middle, 6);
    f.rect(30, 12, 8, 6, "#000000");
    const Image img = decodePng(f.png());
    CHECK(img.at(68, 30) == std::array<int, 3>{0, 0, 0});
    CHECK(f.pdf().rfind("%PDF-", 0) == 0);
}
