// RobustnessTests.cpp — whatever bytes a model file holds, the front end ends in a graph or
// a diagnostic: never a crash, a hang or a stack overflow.
#include "Autodiff.h"
#include "Kernels.h"
#include "Pipeline.h"
#include "Source.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

using namespace gradc;

namespace {

/// Compiles `text`; returns "" for a verified graph, the diagnostic otherwise.
std::string outcome(const std::string& text) {
    try {
        FrontEnd fe = compileSource("fuzz.nn", text);
        std::string err = verify(fe.graph);
        REQUIRE(err.empty());
        return "";
    } catch (const UserError& e) {
        std::string msg = e.format();
        REQUIRE_THAT(msg, Catch::StartsWith("fuzz.nn:"));
        REQUIRE(e.loc().line >= 1);
        return msg;
    }
}

} // namespace

TEST_CASE("a 100 MB model file is refused at once, naming the file", "[robustness]") {
    TempDir folder("robustness");
    auto path = folder.path / "huge_model.nn";
    {
        std::ofstream out(path, std::ios::binary);
        std::string chunk(1 << 20, '#');
        for (int i = 0; i < 100; ++i) out << chunk;
    }
    try {
        readSourceFile(path.string());
        FAIL("accepted a 100 MB file");
    } catch (const UserError& e) {
        CHECK_THAT(e.format(), Catch::StartsWith(path.string() + ": error: model file is 104857600 bytes"));
    }
}

TEST_CASE("megabytes of text on one line or in one comment stay linear", "[robustness]") {
    CHECK_THAT(outcome("# " + std::string(8 << 20, 'x') + "\n"), Catch::Contains("no 'input"));
    std::string longName = "input 4\ndense 4 " + std::string(4 << 20, 'a') + "\nloss mse\n";
    std::string msg = outcome(longName);
    CHECK_THAT(msg, Catch::Contains("name is 4194304 characters long"));
    CHECK(msg.size() < 1000); // the source line is cut around the caret
    msg = outcome("input 4\ndense 4 relu " + std::string(4 << 20, ' ') + "bogus\nloss mse\n");
    CHECK_THAT(msg, Catch::Contains("fuzz.nn:2:4194318: error: unexpected 'bogus'"));
    CHECK(msg.size() < 1000);
}

TEST_CASE("deep nesting is a diagnostic, not a stack overflow", "[robustness]") {
    std::string parens = "activation f(x) = " + std::string(100000, '(') + "x" +
                         std::string(100000, ')') + "\ninput 4\ndense 2 f\nloss mse\n";
    CHECK_THAT(outcome(parens), Catch::Contains("nested more than"));
    std::string minus = "activation f(x) = " + std::string(100000, '-') + "x\n";
    CHECK_THAT(outcome(minus), Catch::Contains("nested more than"));
    std::string chain = "activation f(x) = x";
    for (int i = 0; i < 100000; ++i) chain += " + x";
    CHECK_THAT(outcome(chain + "\n"), Catch::Contains("nested more than"));
    std::string repeats = "input 4\n";
    for (int i = 0; i < 10000; ++i) repeats += "repeat 1 {\n";
    CHECK_THAT(outcome(repeats), Catch::Contains("nested more than"));
    CHECK_THAT(outcome("input 4\nrepeat 100000 { repeat 100000 { repeat 100000 { } } }\n"
                       "repeat 100000 { repeat 100000 { dense 4 } }\nloss mse\n"),
               Catch::Contains("more than 100000 layers (or repeat iterations)"));
}

TEST_CASE("a model of 100000 layers builds in linear time", "[robustness]") {
    // Regression: parameter names were checked for clashes by a linear scan per parameter,
    // which made this model take minutes.
    FrontEnd fe = compileSource("big.nn", "input 4\nrepeat 99990 {\n  dense 4\n}\ndense 2\nloss mse\n");
    CHECK(fe.graph.params.size() == 2 * 99991);
    CHECK(fe.graph.parameterCount() == 99990 * 20 + 10);
}

TEST_CASE("random bytes and mutated models end in a graph or a diagnostic", "[robustness]") {
    std::mt19937 rng(12345);
    std::vector<std::string> seeds;
    for (auto& entry : std::filesystem::directory_iterator(GRADC_SOURCE_DIR "/models"))
        seeds.push_back(readFile(entry.path()));
    REQUIRE(seeds.size() >= 9);
    const std::string alphabet = "\n\n {}()=,+-*/^<>!#.0123456789xdenserpatmodloc_";
    const char* words[] = {"dense", "repeat", "{", "}", "add", "from", "batchnorm", "loss",
                           "input", "activation", "=", "(", ")", "relu", "99999999", "-1",
                           "0", "1e308", "x", "\n", "select(", "sigmoid"};
    int graphs = 0, diagnostics = 0;
    for (int iter = 0; iter < 3000; ++iter) {
        std::string text = seeds[rng() % seeds.size()];
        int edits = 1 + int(rng() % 6);
        for (int k = 0; k < edits && !text.empty(); ++k) {
            size_t at = rng() % text.size();
            switch (rng() % 5) {
            case 0: text[at] = char(rng() % 256); break;
            case 1: text.erase(at, 1 + rng() % 20); break;
            case 2: text.insert(at, 1, alphabet[rng() % alphabet.size()]); break;
            case 3: text.insert(at, std::string(" ") + words[rng() % std::size(words)] + " "); break;
            case 4: text.insert(at, text.substr(rng() % text.size(), rng() % 200)); break;
            }
        }
        (outcome(text).empty() ? graphs : diagnostics)++;
    }
    for (int iter = 0; iter < 300; ++iter) {
        std::string bytes(rng() % 512, '\0');
        for (char& c : bytes) c = char(rng() % 256);
        CHECK_FALSE(outcome(bytes).empty());
    }
    CHECK(graphs > 0);       // the mutations are not all fatal...
    CHECK(diagnostics > 0);  // ...nor all harmless
}

TEST_CASE("deeply shared activation definitions and their mutations compile in linear time", "[robustness][dag]") {
    // The fuzz corpus's seeds (tests/fuzz/corpus/frontend): what the fuzzer does with them,
    // differentiation and fusion included, must end in kernels or a diagnostic.
    std::vector<std::string> seeds;
    for (auto& entry : std::filesystem::directory_iterator(GRADC_SOURCE_DIR "/tests/fuzz/corpus/frontend"))
        if (entry.path().string().find("shared_") != std::string::npos) seeds.push_back(readFile(entry.path()));
    REQUIRE(seeds.size() >= 5);
    auto compile = [](const std::string& text) {
        if (!outcome(text).empty()) return false;
        FrontEnd fe = compileSource("fuzz.nn", text, {4});
        Graph grad = differentiate(fe.graph);
        buildKernels(grad, "backward", backwardOutputs(grad), computeLayout(fe.graph), 4, GemmBlocking{});
        return true;
    };
    for (auto& seed : seeds) CHECK(compile(seed));
    std::mt19937 rng(7);
    for (int iter = 0; iter < 300; ++iter) {
        std::string text = seeds[rng() % seeds.size()];
        for (int k = 0, edits = 1 + int(rng() % 4); k < edits && !text.empty(); ++k) {
            size_t at = rng() % text.size();
            switch (rng() % 3) {
            case 0: text.erase(at, 1 + rng() % 20); break;
            case 1: text.insert(at, text.substr(rng() % text.size(), rng() % 200)); break;
            case 2: text.insert(at, rng() % 2 ? " + f0(x)" : " * sigmoid(x)"); break;
            }
        }
        compile(text);
    }
}
