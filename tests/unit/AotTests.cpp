// AotTests.cpp — the default ahead-of-time object (--target-cpu portable): its ISA variants,
// their symbols and CPUs in the module, and a header that fits every variant. (That the
// object runs, chooses and computes the JIT's gradients: tests/aot/isa_test.py.)
#include "Aot.h"
#include "Pipeline.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

using namespace gradc;

namespace {

const char* kModel = "model m\ninput 40\ndense 70 sigmoid\ndense 30 relu\ndense 10\nloss cross_entropy\n";

/// kModel's module (LLVM IR) and header for --target-cpu `cpu`, compiled once per CPU for all
/// the tests of this file, which only read them.
const AotResult& compileFor(const std::string& cpu) {
    static std::map<std::string, AotResult> compiled;
    auto it = compiled.find(cpu);
    if (it == compiled.end()) {
        AotOptions o;
        o.targetCpu = cpu;
        o.emit = "llvm";
        o.source = "m.nn";
        it = compiled.emplace(cpu, compileAhead(compileSource("m.nn", kModel, {8}).graph, o)).first;
    }
    return it->second;
}

/// The header of model `text` (file `source`, prefix m) for a generic x86-64 at `batch`.
std::string headerOf(const char* text, const std::string& source, int64_t batch) {
    AotOptions o;
    o.targetCpu = "generic";
    o.emit = "llvm";
    o.source = source;
    o.prefix = "m";
    return compileAhead(compileSource(source, text, {batch}).graph, o).header;
}

int64_t define(const std::string& header, const std::string& name) {
    std::smatch m;
    REQUIRE(std::regex_search(header, m, std::regex("#define M_" + name + " ([0-9]+)")));
    return std::stoll(m[1]);
}

/// The functions the module defines: name -> the text of its `define` line.
std::map<std::string, std::string> definitions(const std::string& ir) {
    static const std::regex define("^define .*@([A-Za-z0-9_.]+)\\(");
    std::map<std::string, std::string> out;
    std::istringstream in(ir);
    std::smatch m;
    for (std::string line; std::getline(in, line);)
        if (line.rfind("define ", 0) == 0 && std::regex_search(line, m, define)) out[m[1]] = line;
    return out;
}

/// The module's attribute groups: "#N" -> the text of its line, `attributes #N = { ... }`.
std::map<std::string, std::string> attributeGroups(const std::string& ir) {
    static const std::regex group("^attributes (#[0-9]+) = \\{[^}]*\\}");
    std::map<std::string, std::string> out;
    std::istringstream in(ir);
    std::smatch m;
    for (std::string line; std::getline(in, line);)
        if (line.rfind("attributes #", 0) == 0 && std::regex_search(line, m, group)) out[m[1]] = m[0];
    return out;
}

} // namespace

TEST_CASE("portable is the default target and a known one", "[aot]") {
    CHECK(AotOptions{}.targetCpu == "portable");
    CHECK(isKnownCpu("portable"));
    const std::vector<std::string> names = knownCpus();
    REQUIRE(names.size() > 3);
    CHECK(std::vector<std::string>(names.begin(), names.begin() + 3) == std::vector<std::string>{"portable", "generic", "native"});
    CHECK(std::count(names.begin(), names.end(), "portable") == 1);
}

TEST_CASE("a portable module holds each level's code, local, for that level's CPU", "[aot]") {
    const AotResult& r = compileFor("portable");
    const auto defs = definitions(r.output);
    const std::set<std::string> publicNames = {"m_forward", "m_backward", "m_update", "m_abi_version",
                                               "m_isa", "m_isa_name", "m_select_isa"};
    for (const std::string& name : publicNames) {
        INFO(name);
        REQUIRE(defs.count(name));
        CHECK(defs.at(name).find("internal") == std::string::npos);
    }
    // Every other function is local and named after the prefix.
    for (auto& [name, line] : defs) {
        if (publicNames.count(name)) continue;
        INFO(line);
        CHECK(line.rfind("define internal ", 0) == 0);
        CHECK(name.rfind("m_", 0) == 0);
    }
    // Each level's entry points, and every function of a level marked with the attributes that
    // tell code generation its CPU: #N refers to an attribute group naming "target-cpu"="...".
    const std::map<std::string, std::string> cpus = {{"_v1", "x86-64"}, {"_v3", "x86-64-v3"}, {"_v4", "x86-64-v4"}};
    for (auto& [suffix, cpu] : cpus)
        for (const char* f : {"forward", "backward", "update"})
            CHECK(defs.count(std::string("m_") + f + suffix));
    const auto groups = attributeGroups(r.output);
    int marked = 0;
    for (auto& [name, line] : defs) {
        if (publicNames.count(name)) continue;
        INFO(line);
        const auto cpu = cpus.find(name.substr(name.size() - 3));
        if (cpu == cpus.end()) continue; // the code that chooses: the baseline's
        std::smatch m;
        REQUIRE(std::regex_search(line, m, std::regex("#[0-9]+")));
        REQUIRE(groups.count(m[0]));
        CHECK(groups.at(m[0]).find("\"target-cpu\"=\"" + cpu->second + "\"") != std::string::npos);
        ++marked;
    }
    CHECK(marked >= 9);
    CHECK(r.header.find("for CPU portable (1 (x86-64), 3 (x86-64-v3), 4 (x86-64-v4))") != std::string::npos);
    CHECK(r.header.find("#define M_ISA_VARIANTS 3\nstatic const int m_isa_levels[3] = {1, 3, 4};") != std::string::npos);
}

TEST_CASE("a portable header's workspace fits its largest variant", "[aot]") {
    // Each level's register tile packs B into panels of its own width, so the scratch differs.
    const int64_t v1 = define(compileFor("generic").header, "WORKSPACE_BYTES");
    const int64_t v3 = define(compileFor("x86-64-v3").header, "WORKSPACE_BYTES");
    const int64_t v4 = define(compileFor("x86-64-v4").header, "WORKSPACE_BYTES");
    CHECK(std::set<int64_t>{v1, v3, v4}.size() > 1);
    const std::string& portable = compileFor("portable").header;
    CHECK(define(portable, "WORKSPACE_BYTES") == std::max({v1, v3, v4}));
    // The arrays are the same whatever the variant.
    for (const char* name : {"PARAMETERS", "ACTIVATIONS", "BATCH", "INPUTS", "OUTPUTS"})
        CHECK(define(portable, name) == define(compileFor("x86-64-v4").header, name));
}

TEST_CASE("a one-CPU object keeps its entry points and has one level", "[aot]") {
    const AotResult& r = compileFor("x86-64-v3");
    const auto defs = definitions(r.output);
    CHECK(defs.count("m_forward"));
    CHECK(!defs.count("m_forward_v3"));
    CHECK(r.header.find("static const int m_isa_levels[1] = {3};") != std::string::npos);
    CHECK(compileFor("generic").header.find("static const int m_isa_levels[1] = {1};") != std::string::npos);
}

TEST_CASE("the options' errors are said in one place, for the command line and the library alike", "[aot]") {
    CHECK(aotOptionsError(AotOptions{}) == "");
    AotOptions o;
    o.targetCpu = "pentium9";
    CHECK(aotOptionsError(o) == "--target-cpu pentium9 is not a CPU LLVM knows (portable, generic, native, or a name "
                                "that 'gradc compile MODEL --target-cpu help' lists)");
    CHECK_THROWS_WITH(compileAhead(compileSource("m.nn", kModel, {8}).graph, o), aotOptionsError(o));
    o.targetCpu = "znver4";
    CHECK(aotOptionsError(o) == "");
    // A prefix given is checked, even an empty one; none given is the model's name.
    o.prefix = "";
    CHECK(aotOptionsError(o) == "--prefix '' is not a C identifier (letters, digits and _, not first a digit)");
    o.prefix = "9lives";
    CHECK(aotOptionsError(o).find("--prefix '9lives' is not a C identifier") == 0);
    o.prefix = "_net9";
    CHECK(aotOptionsError(o) == "");
    o.emit = "bc";
    CHECK(aotOptionsError(o) == "--emit=bc is not obj, asm or llvm");
}

TEST_CASE("a header describes images: x [B,C,H,W] in its macros and tables, conv weights' layout", "[aot]") {
    // Dense layers on images: the header is the same for any rank.
    const char* images = "model im\ninput 1x6x5\ndense 3 tanh\nflatten\ndense 4\nloss cross_entropy\n";
    const std::string h = headerOf(images, "im.nn", 2);
    CHECK(define(h, "INPUT_RANK") == 4);
    CHECK(define(h, "INPUTS") == 30);
    CHECK_THAT(h, Catch::Contains("#define M_INPUT_SHAPE {2, 1, 6, 5} /* x's shape: int64_t shape[] = M_INPUT_SHAPE; */\n"));
    CHECK_THAT(h, Catch::Contains(" * x holds [2][1][6][5] values (M_INPUT_SHAPE; images: batch, channels, height, width).\n"));
    CHECK_THAT(h, Catch::Contains("a conv weight [out, in, kh, kw]"));
    CHECK(define(h, "MAX_RANK") == 4);
    CHECK_THAT(h, Catch::Contains("{\"x\", \"input\", 4, {2, 1, 6, 5}, 0, 60},\n"));
    CHECK_THAT(h, Catch::Contains("{\"layers.1\", \"preact\", 4, {2, 1, 6, 3}, 0, 36},\n"));
    CHECK_THAT(h, Catch::Contains("{\"layers.0.weight\", \"parameter\", 2, {3, 5, 0, 0}, 0, 15},\n"));
    // A convolution's weight is [out, in, kh, kw], its bias [out].
    const char* conv = "model cv\ninput 2x6x5\nconv 3 3x2 padding=1 relu\nflatten\ndense 4\nloss cross_entropy\n";
    const std::string hc = headerOf(conv, "cv.nn", 2);
    CHECK_THAT(hc, Catch::Contains("{\"layers.0.weight\", \"parameter\", 4, {3, 2, 3, 2}, 0, 36},\n"));
    CHECK_THAT(hc, Catch::Contains("{\"layers.0.bias\", \"parameter\", 1, {3, 0, 0, 0}, 36, 3},\n"));
    // A vector input keeps its rank 2 and says nothing of images.
    const std::string& dense = compileFor("generic").header;
    CHECK(define(dense, "INPUT_RANK") == 2);
    CHECK_THAT(dense, Catch::Contains("#define M_INPUT_SHAPE {8, 40} "));
    CHECK_THAT(dense, !Catch::Contains("images:"));
}

TEST_CASE("the header states ABI version 3 and documents the update's gradient scale, hyper[11]", "[aot][abi][clip]") {
    STATIC_REQUIRE(kAbiVersion == 3);
    const std::string& h = compileFor("generic").header;
    CHECK(define(h, "ABI_VERSION") == 3);
    CHECK(h.find("sqrt(1 - beta2^t), gradient scale}") != std::string::npos);
    CHECK(h.find("hyper[11], the gradient scale, multiplies every gradient before the weight decay") != std::string::npos);
    CHECK(h.find("1 without clipping") != std::string::npos);
}

TEST_CASE("the AOT header's recurrent table: each layer's cell, steps and widths from the graph", "[aot][scan]") {
    // rnn's non-linearity in the cell column; the input width from the layer's input, which
    // bias=false and the stack do not change.
    const char* text = "model sq\ninput 5 steps 3\nrnn 4 relu\nrnn 2\ngru 3 bias=false\nlstm 2\nlast\ndense 2\n"
                       "loss cross_entropy\n";
    const std::string h = headerOf(text, "sq.nn", 2);
    CHECK(define(h, "RECURRENT_LAYERS") == 4);
    CHECK_THAT(h, Catch::Contains("{\"layers.0\", \"rnn_relu\", 5, 3, 4, "));
    CHECK_THAT(h, Catch::Contains("{\"layers.1\", \"rnn_tanh\", 5, 4, 2, "));
    CHECK_THAT(h, Catch::Contains("{\"layers.2\", \"gru\", 5, 2, 3, "));
    CHECK_THAT(h, Catch::Contains("{\"layers.3\", \"lstm\", 5, 3, 2, "));
}
