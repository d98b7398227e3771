// GemmTests.cpp — the matrix-product kernels (LowerGemm.cpp) for every register-tile
// candidate and every way of blocking and packing: products whose M, N and K are not
// multiples of the tile or the blocks (K = KC + 1 and more, M = MR k + 1, N odd, A and B
// transposed and not), in f32 and f64, against the interpreter in double. And the lines
// `gradc bench --explain` prints.
#include "Autodiff.h"
#include "Codegen.h"
#include "Execute.h"
#include "Pipeline.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

using namespace gradc;

namespace {

/// The largest |got - want| over the largest |want|, for each output the backward pass gives.
double worstError(const std::map<std::string, Tensor>& got, const std::map<std::string, Tensor>& want) {
    double worst = 0;
    for (auto& [name, w] : want) {
        if (name == "logits") continue;
        const Tensor& g = got.at(name);
        REQUIRE(g.data.size() == w.data.size());
        double scale = 0, diff = 0;
        for (size_t i = 0; i < w.data.size(); ++i) {
            scale = std::max(scale, std::fabs(w.data[i]));
            diff = std::max(diff, std::fabs(g.data[i] - w.data[i]));
        }
        worst = std::max(worst, diff / std::max(scale, 1e-30));
    }
    return worst;
}

struct Config {
    const char* name;
    int64_t kc, mc, pageStride;
    bool packA, packB;
    int threads;
    int64_t l3Panel = GemmBlocking::kNoNBlocks; ///< 1: every packed B wider than one strip is blocked along N
    bool rowsFirst = false; ///< every product that is not K-blocked runs its row blocks outermost
};

} // namespace

TEST_CASE("matrix products match the interpreter for every register tile, blocked, packed or not", "[jit][gemm][heavy]") {
    // The candidates of blockingFor for AVX-512 and AVX2 (rows x vectors).
    const std::vector<std::pair<int, int>> tiles = {{6, 4}, {8, 3}, {12, 2}, {14, 2}, {4, 6}, {6, 2}, {4, 3}, {8, 1}};
    const std::vector<Config> configs = {
        {"unblocked, in place", int64_t(1) << 30, 192, int64_t(1) << 30, true, true, 1},
        {"K blocks of 8, all packed", 8, 0, 4, true, true, 1},
        {"K blocks of 8, one tile of rows, in place", 8, 0, int64_t(1) << 30, false, false, 1},
        {"unblocked, all packed, 2 threads", int64_t(1) << 30, 192, 4, true, true, 2},
        {"K blocks of 8, all packed, 2 threads", 8, 0, 4, true, true, 2},
        // N blocks (NC = NR; off by default, a knob for measuring): B packed a strip at a time
        // into each thread's panel. One configuration per element type, with the first tile.
        {"N blocks, K blocks of 8, all packed", 8, 0, 4, true, true, 1, 1},
        {"N blocks, K blocks of 8, all packed, 2 threads", 8, 0, 4, true, true, 2, 1},
        // Row blocks outermost (a small B, a large output), one tile of rows per block.
        {"row blocks first, in place", int64_t(1) << 30, 0, int64_t(1) << 30, true, true, 1,
         GemmBlocking::kNoNBlocks, true},
        {"row blocks first, all packed, 2 threads", int64_t(1) << 30, 0, 4, true, true, 2,
         GemmBlocking::kNoNBlocks, true},
    };
    for (bool f64 : {false, true}) {
        for (auto [mr, nv] : tiles) {
            GemmBlocking base;
            base.vl = f64 ? 8 : 16;
            base.mr = mr, base.nv = nv;
            const int64_t nr = base.nr();
            // x·W1ᵀ: M x H x K; h·W2ᵀ: M x 5 x H; dW2 = dyᵀ·h: 5 x H x M; dh = dy·W2: M x H x 5;
            // dW1 = dhᵀ·x: H x K x M. M = 2 MR + 1 (K blocks of 8 split it too), H and K
            // past one panel of NR and odd.
            const int64_t M = 2 * mr + 1, K = nr + 5, H = nr + 3;
            const std::string text = "input " + std::to_string(K) + "\ndense " + std::to_string(H) +
                                     " tanh\ndense 5\nloss mse\n";
            Graph fwd = compileSource("t.nn", text, {M}).graph;
            std::mt19937 rng(uint32_t(mr * 10 + nv));
            Bindings b = randomBindings(fwd, rng);
            auto want = interpretOutputs(differentiate(fwd), b);
            for (const Config& c : configs) {
                if (f64 && c.threads > 1) continue; // the threads do not depend on the element type
                if (c.l3Panel == 1 && (std::make_pair(mr, nv) != tiles[0] || c.threads != (f64 ? 1 : 2))) continue;
                GemmBlocking bl = base;
                bl.kc = c.kc;
                bl.mc = c.mc == 0 ? mr : c.mc; // one tile of rows per block: blocks of rows too
                if (c.kc == 8 && c.pageStride == 4) bl.mc = 2 * mr;
                bl.pageStride = c.pageStride;
                bl.packA = c.packA, bl.packB = c.packB;
                bl.l3Panel = c.l3Panel;
                if (c.rowsFirst) bl.smallB = int64_t(1) << 40, bl.largeOutput = 0;
                CodegenOptions opts;
                opts.cache = false;
                opts.f64 = f64;
                opts.threads = c.threads;
                opts.blocking = bl;
                CompiledModel cm = compileModel(fwd, opts);
                const double err = worstError(runCompiled(cm, fwd, b, true), want);
                INFO((f64 ? "f64 " : "f32 ") << mr << "x" << nv << ", " << c.name);
                CHECK(err <= (f64 ? 1e-12 : 2e-5));
            }
        }
    }
}

TEST_CASE("the blocking's decisions: K blocks, row blocks and what is packed", "[gemm]") {
    GemmBlocking b;
    b.mr = 6, b.nv = 4, b.vl = 16, b.kc = 1024, b.mc = 100, b.pageStride = 1024;
    CHECK_FALSE(b.blocked(1024));
    CHECK(b.kBlock(784) == 784);
    CHECK(b.blocked(1025));
    CHECK(b.kBlock(1025) == 513);  // two blocks as equal as can be
    CHECK(b.kBlock(4096) == 1024);
    CHECK(b.mBlock(256) == 96);    // a multiple of MR
    CHECK(b.mBlock(13) == 18);     // no more than the product's rows, rounded up to MR
    CHECK(b.packsB(true, 10, 10));
    CHECK_FALSE(b.packsB(false, 1000, 784));
    CHECK(b.packsB(false, 4096, 784));  // rows a page apart
    CHECK(b.packsB(false, 64, 4096));   // blocked
    CHECK(b.packsA(true, 4096, 4096));
    CHECK_FALSE(b.packsA(true, 4096, 64)); // one panel of B: nothing to share the packing
    CHECK_FALSE(b.packsA(false, 4096, 4096));
    CHECK_FALSE(b.packsA(true, 512, 4096));
}

TEST_CASE("planProduct: N blocks when packed B has more elements than l3Panel", "[gemm]") {
    GemmBlocking b;
    b.mr = 6, b.nv = 4, b.vl = 16, b.kc = 1024, b.mc = 258, b.pageStride = 1024, b.threads = 2;
    b.l3Panel = 2 << 20; // elements: 8 MB of floats
    Kernel k;
    k.rows = 256, k.cols = 4096, k.depth = 4096, k.transB = true; // 784-4096-4096-10's middle layer
    ProductPlan p = planProduct(k, b);
    CHECK(p.packByStrip);
    CHECK(p.aAt == 2 * 64 * 4096);                    // one K x NR panel per thread, not 64 MB of B
    CHECK(p.elements == p.aAt + 258 * 64 * 2);         // then the threads' sums blocks
    k.cols = 500;                                      // 512 x 4096 packed: 2M elements, fits
    p = planProduct(k, b);
    CHECK_FALSE(p.packByStrip);
    CHECK(p.aAt == 512 * 4096);
    k.cols = 10;                                       // one strip: nothing to block
    b.l3Panel = 1;
    CHECK_FALSE(planProduct(k, b).packByStrip);
    k.cols = 4096, k.depth = 784, k.transB = false;   // read in place: nothing packed
    b.pageStride = 1 << 30;
    CHECK_FALSE(planProduct(k, b).packByStrip);
    CHECK(planProduct(k, b).packFrom == 64);
}

TEST_CASE("explainProducts gives a line per matrix product with its tile and blocking", "[jit][gemm]") {
    Graph fwd = compileSource("t.nn", "input 784\ndense 64 relu\ndense 10\nloss cross_entropy\n", {32}).graph;
    CodegenOptions opts;
    opts.threads = 1;
    GemmBlocking bl;
    bl.mr = 8, bl.nv = 3, bl.vl = 16, bl.kc = 512, bl.source = "measured";
    opts.blocking = bl;
    std::vector<std::string> lines = explainProducts(fwd, opts);
    // forward: x·W1ᵀ, h·W2ᵀ; backward: the same two, dW2, dh, dW1.
    REQUIRE(lines.size() == 7);
    CHECK(lines[0].rfind("forward k0: 32 x 64 x 784 (A · Bᵀ): tile 8x48 (8x3 512-bit; measured), K blocks of 392 (2)", 0) == 0);
    for (auto& l : lines) {
        CAPTURE(l);
        CHECK(l.find("tile 8x48") != std::string::npos);
        CHECK(l.find("1 thread") != std::string::npos);
    }
    int backward = 0;
    for (auto& l : lines) backward += l.rfind("backward ", 0) == 0;
    CHECK(backward == 5);
}

namespace {

/// The register-tile speeds file in `dir` ("" when there is none).
std::string tilesIn(const std::filesystem::path& dir) { return readFile(dir / "gemm-tiles.txt"); }

std::string sourceOf(const std::vector<std::string>& lines) {
    REQUIRE_FALSE(lines.empty());
    const size_t at = lines[0].find("-bit; ");
    REQUIRE(at != std::string::npos);
    return lines[0].substr(at + 6, lines[0].find(')', at) - at - 6);
}

} // namespace

TEST_CASE("register-tile speeds are measured once per CPU and kept in the cache folder", "[jit][gemm][cache]") {
    TempDir dir("tiles");
    Graph fwd = compileSource("t.nn", "input 100\ndense 70 relu\ndense 10\nloss cross_entropy\n", {16}).graph;
    CodegenOptions opts;
    opts.cacheDir = dir.path.string();
    opts.cache = false; // the model decides, and nothing is written
    CHECK(sourceOf(explainProducts(fwd, opts)) == "model");
    CHECK(tilesIn(dir.path).empty());
    opts.cache = true;
    const std::string first = sourceOf(explainProducts(fwd, opts));
    CHECK((first == "measured" || first == "cached")); // another test of this process may have measured it
    const std::string tiles = tilesIn(dir.path);
    // One line per candidate: "CPU HASH f32 RxV GFLOPS".
    size_t lines = 0;
    for (char c : tiles) lines += c == '\n';
    CHECK(lines >= 3);
    CHECK(tiles.find(" f32 ") != std::string::npos);
    // Read back, not measured again: the file stays as it was.
    explainProducts(fwd, opts);
    CHECK(tilesIn(dir.path) == tiles);
    // A corrupt file is ignored (a warning) and rewritten with fresh measurements.
    {
        std::ofstream out(dir.path / "gemm-tiles.txt");
        out << tiles.substr(0, tiles.find(' ')) << " " << tiles.substr(tiles.find(' ') + 1, 16) << " f32 6x4 banana\n";
    }
    CompiledModel cm = compileModel(fwd, opts);
    std::mt19937 rng(5);
    Bindings b = randomBindings(fwd, rng);
    CHECK(runCompiled(cm, fwd, b, false).at("loss").data[0] ==
          Approx(interpretOutputs(fwd, b).at("loss").data[0]).epsilon(1e-4));
    CHECK(tilesIn(dir.path).find("banana") == std::string::npos);
    CHECK((tilesIn(dir.path).find(" f32 6x4 ") != std::string::npos || tilesIn(dir.path).find(" f32 6x2 ") != std::string::npos));
}

TEST_CASE("the register tile speeds file is never read or written through a symbolic link", "[jit][gemm][cache]") {
    TempDir dir("tiles");
    Graph fwd = compileSource("t.nn", "input 100\ndense 70 relu\ndense 10\nloss cross_entropy\n", {16}).graph;
    CodegenOptions opts;
    opts.cacheDir = dir.path.string();
    explainProducts(fwd, opts); // measured (or cached by this process) and written
    const std::string tiles = tilesIn(dir.path);
    REQUIRE_FALSE(tiles.empty());
    // gemm-tiles.txt becomes a link to a file elsewhere with the same speeds: refused (a
    // warning), measured again and written as a regular file of its own, the target untouched.
    const std::string other = dir.path / "elsewhere.txt", link = dir.path / "gemm-tiles.txt";
    { std::ofstream(other) << tiles; }
    std::remove(link.c_str());
    REQUIRE(::symlink(other.c_str(), link.c_str()) == 0);
    explainProducts(fwd, opts);
    struct stat st;
    REQUIRE(::lstat(link.c_str(), &st) == 0);
    CHECK(S_ISREG(st.st_mode));
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(readFile(other) == tiles);
}
