// TextTests.cpp — names in the formats gradc writes: UTF-8 repair, XML, CSV (RFC 4180), C
// comments and strings; the reports, figures and AOT header that carry them; the state_dict
// order of parameter files.
#include "Aot.h"
#include "Pipeline.h"
#include "Plot.h"
#include "Report.h"
#include "SafeTensors.h"
#include "Text.h"
#include "Init.h"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace gradc;

namespace {

const std::string kFFFD = "\xEF\xBF\xBD";

/// A model with no `model` line, so its name is the file's.
Graph namedAfter(const std::string& file, const std::string& extra = "") {
    return compileSource(file, "input 4\ndense 3 tanh\n" + extra + "dense 2\nloss cross_entropy\n", {2}).graph;
}

GradReport reportOf(const std::string& model) {
    GradReport r;
    r.model = model, r.batch = 2, r.loss = std::nan("");
    TensorStats s = statistics("layers.0.weight", Tensor{{2, 2}, {1, std::nan(""), INFINITY, 2}});
    r.params = {s};
    computeVanishingFactor(r);
    return r;
}

} // namespace

TEST_CASE("validUtf8 keeps well-formed text and replaces each ill-formed part once", "[text]") {
    CHECK(validUtf8("plain ascii") == "plain ascii");
    CHECK(validUtf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80") == "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
    CHECK(validUtf8("a\xFF" "b") == "a" + kFFFD + "b");                 // never a UTF-8 byte
    CHECK(validUtf8("\x80") == kFFFD);                                 // a stray continuation byte
    CHECK(validUtf8("\xC0\xAF") == kFFFD + kFFFD);                     // an overlong '/'
    CHECK(validUtf8("\xED\xA0\x80") == kFFFD + kFFFD + kFFFD);         // a surrogate
    CHECK(validUtf8("\xF4\x90\x80\x80") == kFFFD + kFFFD + kFFFD + kFFFD); // past U+10FFFF
    CHECK(validUtf8("\xE2\x82" "x") == kFFFD + "x");                   // a truncated sequence: one
    CHECK(validUtf8("\xF0\x9F\x98") == kFFFD);                         // truncated at the end
    CHECK(validUtf8(std::string("a\0b", 3)) == std::string("a\0b", 3)); // NUL is UTF-8
}

TEST_CASE("xmlText escapes markup and drops what XML 1.0 forbids", "[text]") {
    CHECK(xmlText("a<b>&\"c'") == "a&lt;b&gt;&amp;&quot;c&apos;");
    CHECK(xmlText("tab\there\nand\rthere") == "tab\there\nand\rthere");
    CHECK(xmlText("\x01\x1F") == kFFFD + kFFFD);
    CHECK(xmlText(std::string("\0", 1)) == kFFFD);
    CHECK(xmlText("\xEF\xBF\xBE\xEF\xBF\xBF") == kFFFD + kFFFD); // U+FFFE, U+FFFF
    CHECK(xmlText("\xFE") == kFFFD);
}

TEST_CASE("csvField quotes as RFC 4180 asks", "[text]") {
    CHECK(csvField("layers.0.weight") == "layers.0.weight");
    CHECK(csvField("we\"ird,name") == "\"we\"\"ird,name\"");
    CHECK(csvField("two\nlines") == "\"two\nlines\"");
    CHECK(csvField("cr\r") == "\"cr\r\"");
    CHECK(csvField("\"") == "\"\"\"\"");
    CHECK(csvField("bad\xFF") == "bad" + kFFFD);
}

TEST_CASE("C comments and strings hold any name", "[text]") {
    CHECK(cCommentText("a*/b") == "a* /b");
    CHECK(cCommentText("a/*b") == "a/ *b");
    CHECK(cCommentText("*/*/") == "* / * /");
    CHECK(cCommentText("x\ny\\z\xFF") == "x\\x0ay\\x5cz\\xff");
    CHECK(cStringText("a\"b\\c?" "?/") == "a\\\"b\\\\c\\?\\?/"); // no trigraph either
    CHECK(cStringText("\n\xFF" "1") == "\\012\\3771");
    for (const char* yes : {"_a1", "A", "seed_sigmoid"}) CHECK(isCIdentifier(yes));
    for (const char* no : {"", "1a", "a-b", "a b", "caf\xC3\xA9"}) CHECK_FALSE(isCIdentifier(no));
}

TEST_CASE("reports carry a name that is not UTF-8 in valid JSON and CSV", "[text][report]") {
    const Graph g = namedAfter("dir/we\xFF\"ird,name.nn");
    CHECK(g.model == "we\xFF\"ird,name");
    std::string json;
    REQUIRE_NOTHROW(json = formatJson({reportOf(g.model)})); // nlohmann threw type_error 316
    CHECK(json.find("\"model\": \"we" + kFFFD + "\\\"ird,name\"") != std::string::npos);
    CHECK(json.find(": nan") == std::string::npos);
    CHECK(json.find(": inf") == std::string::npos);
    CHECK(json.find("\"nan\": 1") != std::string::npos);
    CHECK(json.find("\"loss\": null") != std::string::npos);
    const std::string csv = formatCsv({reportOf(g.model)});
    const std::string row = "\"we" + kFFFD + "\"\"ird,name\",layers.0.weight,2x2,";
    CHECK(csv.substr(csv.find('\n') + 1, row.size()) == row);
    std::vector<std::pair<std::string, TensorStats>> layers = {
        {"tanh", statistics("layers.1", Tensor{{1, 3}, {std::nan(""), 0.5, -INFINITY}})}};
    std::string acts;
    REQUIRE_NOTHROW(acts = formatLayersJson(g.model, 1, layers));
    CHECK(acts.find("\"nan\": 1") != std::string::npos);
    CHECK(acts.find("\"inf\": 1") != std::string::npos);
    CHECK(acts.find("\"model\": \"we" + kFFFD) != std::string::npos);
}

TEST_CASE("figures escape names and drop bytes XML cannot hold", "[text][plot]") {
    const std::string svg = gradientFigure({reportOf("a<b>&\x01\xFF")}, {"tanh"}).svg();
    CHECK(svg.find("a&lt;b&gt;&amp;" + kFFFD + kFFFD) != std::string::npos);
    CHECK(svg.find('\x01') == std::string::npos);
    CHECK(svg.find('\xFF') == std::string::npos);
}

TEST_CASE("the AOT header: file name only, comments intact, guards that keep the prefix's case", "[text][aot]") {
    const Graph g = namedAfter("/home/someone/private/we*/x.nn");
    AotOptions o;
    o.source = "/home/someone/private/we*/x.nn";
    o.emit = "llvm";
    o.prefix = "a";
    const std::string lower = compileAhead(g, o).header;
    CHECK(lower.find("/home/someone") == std::string::npos);
    CHECK(lower.find("from x.nn (model x)") != std::string::npos);
    CHECK(lower.find("#ifndef GRADC_a_H\n#define GRADC_a_H\n") != std::string::npos);
    o.prefix = "A";
    CHECK(compileAhead(g, o).header.find("#ifndef GRADC_A_H\n") != std::string::npos);
    // The folder held `*/`: gone with the folder, and the first comment ends where it should.
    CHECK(lower.find("*/") == lower.find("The functions keep no state. */") + 29);
    // A model named after a file with a newline and a backslash in its name.
    o.source = "odd*\n\\.nn";
    const std::string h = compileAhead(namedAfter(o.source), o).header;
    CHECK(h.substr(0, h.find('\n')).find("from odd*\\x0a\\x5c.nn (model odd*\\x0a\\x5c)") != std::string::npos);
    o.prefix = "not-an-identifier";
    CHECK_THROWS_WITH(compileAhead(g, o), Catch::Contains("is not a C identifier"));
}

TEST_CASE("unknown CPUs are refused before LLVM sees them", "[text][aot]") {
    CHECK(isKnownCpu("generic"));
    CHECK(isKnownCpu("native"));
    CHECK(isKnownCpu("x86-64-v3"));
    CHECK(!isKnownCpu("bogus"));
    CHECK(!isKnownCpu(""));
    const std::vector<std::string> names = knownCpus();
    CHECK(names.size() > 50);
    CHECK(std::count(names.begin(), names.end(), "generic") == 1);
    const Graph g = namedAfter("x.nn");
    AotOptions o;
    o.targetCpu = "bogus";
    CHECK_THROWS_WITH(compileAhead(g, o), Catch::Contains("--target-cpu bogus is not a CPU LLVM knows"));
}

TEST_CASE("stateDict follows PyTorch's order, batchnorm's buffers and counter included", "[text][safetensors]") {
    const Graph g = compileSource("bn.nn", "input 4\ndense 3\nbatchnorm\nsigmoid\ndense 2\nloss cross_entropy\n", {2}).graph;
    Bindings b = initialiseParameters(g, 1);
    b["layers.1.num_batches_tracked"] = Tensor{{}, {7}};
    std::set<std::string> integers;
    std::vector<std::string> names;
    for (auto& [name, t] : stateDict(g, b, &integers)) names.push_back(name);
    CHECK(names == std::vector<std::string>{"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
                                            "layers.1.running_mean", "layers.1.running_var",
                                            "layers.1.num_batches_tracked", "layers.3.weight", "layers.3.bias"});
    CHECK(integers == std::set<std::string>{"layers.1.num_batches_tracked"});
    CHECK(stateDict(g, b, &integers)[6].second.data == std::vector<double>{7});
    b.erase("layers.1.running_var");
    CHECK(stateDict(g, b, nullptr)[5].second.data == std::vector<double>(3, 1.0)); // as initialised
}
