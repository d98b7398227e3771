// IsaTests.cpp — the instruction set of JIT code (CodegenOptions::isa, --isa): the names and
// GRADC_ISA's default, the errors that name where a bad name came from, AVX2 code that uses
// no AVX-512 register and computes what native code does, and cache entries (objects and
// measured tiles) kept apart per instruction set.
#include "Codegen.h"
#include "Execute.h"
#include "Pipeline.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <unistd.h>

using namespace gradc;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

TEST_CASE("isa names are native or avx2 or avx512 with GRADC_ISA as the default and bad names are errors naming their source",
          "[isa]") {
    EnvVar unset("GRADC_ISA", nullptr);
    CHECK(resolveIsa("") == "native");
    CHECK(resolveIsa("native") == "native");
    CHECK_THAT(errorOf([] { resolveIsa("avx3", "--isa"); }),
               Contains("--isa avx3 is not an instruction set gradc generates code for (native, avx2 or avx512)"));
    CHECK_THAT(errorOf([] { resolveIsa("AVX2"); }), Contains("isa AVX2 is not an instruction set"));
    {
        EnvVar bad("GRADC_ISA", "sse9");
        CHECK_THAT(errorOf([] { resolveIsa(""); }), Contains("GRADC_ISA=sse9 is not an instruction set"));
        CHECK(resolveIsa("native") == "native"); // a name given overrides the environment
    }
    {
        EnvVar empty("GRADC_ISA", "");
        CHECK(resolveIsa("") == "native");
    }
    if (hostHasAvx2()) {
        CHECK(resolveIsa("avx2") == "avx2");
        EnvVar avx2("GRADC_ISA", "avx2");
        CHECK(resolveIsa("") == "avx2");
        CHECK(isaTarget("avx2").vectorBits == 256);
    } else {
        CHECK_THAT(errorOf([] { resolveIsa("avx2", "--isa"); }), Contains("--isa avx2: this CPU"));
    }
    if (hostHasAvx512()) CHECK(resolveIsa("avx512") == "avx512");
    else CHECK_THAT(errorOf([] { resolveIsa("avx512", "--isa"); }), Contains("has no AVX-512"));
    CHECK(isaTarget("native").cpu == isaTarget("avx2").cpu);
}

TEST_CASE("code compiled for avx2 uses no AVX-512 register and computes what native code does", "[jit][isa]") {
    if (!hostHasAvx2()) { // nothing to force on this CPU (resolveIsa refuses it: tested above)
        WARN("skipped: the host has no AVX2");
        return;
    }
    const Graph fwd = compileFile(GRADC_SOURCE_DIR "/models/seed_sigmoid_bn.nn", {16}).graph;
    CodegenOptions native, avx2;
    native.cache = avx2.cache = false;
    native.isa = "native", avx2.isa = "avx2";
    const std::string asmAvx2 = emitModule(fwd, avx2, "asm"), asmNative = emitModule(fwd, native, "asm");
    CHECK(asmAvx2.find("%zmm") == std::string::npos);
    CHECK(asmAvx2.find("%ymm") != std::string::npos);
    if (hostHasAvx512()) CHECK(asmNative.find("%zmm") != std::string::npos); // the test would see a difference
    // The register tile and vector width follow the instruction set.
    const std::vector<std::string> lines = explainProducts(fwd, avx2);
    REQUIRE(!lines.empty());
    CHECK_THAT(lines[0], Contains("256-bit"));

    std::mt19937 rng(7);
    Bindings b = randomBindings(fwd, rng);
    const auto want = interpretOutputs(fwd, b);
    const CompiledModel a = compileModel(fwd, avx2), n = compileModel(fwd, native);
    const auto gotA = runCompiled(a, fwd, b, true), gotN = runCompiled(n, fwd, b, true);
    const double loss = want.at("loss").data[0];
    CHECK(gotA.at("loss").data[0] == Approx(loss).epsilon(1e-5));
    CHECK(gotA.at("loss").data[0] == Approx(gotN.at("loss").data[0]).epsilon(1e-5));
}

TEST_CASE("cached objects and measured tiles are kept apart per instruction set", "[jit][isa][cache]") {
    if (!hostHasAvx512()) { // without AVX-512, avx2 code is native code: one entry is right
        WARN("skipped: the host has no AVX-512");
        return;
    }
    TempDir dir;
    const Graph fwd = compileSource("t.nn", "input 30\ndense 20 relu\ndense 5\nloss cross_entropy\n", {8}).graph;
    CodegenOptions opts;
    opts.cacheDir = dir.path.string();
    opts.isa = "native";
    CHECK_FALSE(compileModel(fwd, opts).cacheHit);
    CHECK(compileModel(fwd, opts).cacheHit);
    opts.isa = "avx2";
    CHECK_FALSE(compileModel(fwd, opts).cacheHit); // not native's object
    CHECK(compileModel(fwd, opts).cacheHit);
    opts.isa = "native";
    CHECK(compileModel(fwd, opts).cacheHit);
    // gemm-tiles.txt: "CPU FEATURES-HASH TYPE RxV GFLOPS", one set of lines per instruction set.
    std::ifstream in(dir.path / "gemm-tiles.txt");
    std::set<std::string> keys;
    for (std::string line; std::getline(in, line);) {
        std::istringstream words(line);
        std::string cpu, hash;
        words >> cpu >> hash;
        keys.insert(cpu + " " + hash);
    }
    CHECK(keys.size() == 2);
}
