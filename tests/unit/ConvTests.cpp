// ConvTests.cpp — the compiled convolutions (LowerConv.cpp: conv2d, conv2d_grad_x,
// conv2d_grad_w as implicit GEMMs through the register tile) against the interpreter on
// random shapes (strides 1-3, paddings 0-2, kernels 1-5 and not square, 1 to 20 channels in
// and out, odd image sizes, batches 1-3), in float and double, on one and two threads; the
// shapes that exercise the tile's and the panels' edges; and a compiled conv model's
// gradients against central differences in double.
#include "Autodiff.h"
#include "Codegen.h"
#include "Execute.h"
#include "Kernels.h"
#include "Layout.h"
#include "Pipeline.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <map>

using namespace gradc;

namespace {

CompiledModel compiled(const Graph& g, bool f64, int threads) {
    CodegenOptions opts;
    opts.cache = false;
    opts.f64 = f64;
    opts.threads = threads;
    return compileModel(g, opts);
}

/// The convolution kernels of the model's two programs, by op.
std::map<Op, int> convKernels(const Graph& g) {
    const Layout layout = computeLayout(g);
    Graph grad = differentiate(g);
    std::map<Op, int> n;
    for (const KernelProgram& p : {buildKernels(g, "forward", g.outputs, layout, 4, GemmBlocking{}),
                                   buildKernels(grad, "backward", backwardOutputs(grad), layout, 4, GemmBlocking{})})
        for (const Kernel& k : p.kernels)
            if (k.kind == Kernel::Kind::Op && isConvolution(k.op)) ++n[k.op];
    return n;
}

/// Forward (logits, loss) and backward (every gradient) of `g` compiled in float and double,
/// on one and two threads, against the interpreter: float within 1e-4 of each tensor's
/// largest value, double within 1e-9.
void agree(const Graph& g, std::mt19937& rng) { compiledAgrees(g, rng, {1, 2}); }

/// A convolution under test between a 1x1 convolution (so that its input has a gradient:
/// conv2d_grad_x runs) and a small dense head; no biases (their broadcast is another part's).
std::string convModel(int c0, int c, int h, int w, int o, int kh, int kw, int sh, int sw, int ph, int pw,
                      const char* act = "") {
    return "input " + std::to_string(c0) + "x" + std::to_string(h) + "x" + std::to_string(w) + "\nconv " +
           std::to_string(c) + " 1x1 bias=false\nconv " + std::to_string(o) + " " + std::to_string(kh) + "x" +
           std::to_string(kw) + " stride=" + std::to_string(sh) + "x" + std::to_string(sw) +
           " padding=" + std::to_string(ph) + "x" + std::to_string(pw) + " bias=false" + act +
           "\nflatten\ndense 3\nloss mse\n";
}

} // namespace

TEST_CASE("compiled convolutions and both gradients agree with the interpreter on random shapes", "[jit][conv]") {
    std::mt19937 rng(160);
    auto pick = [&](int lo, int hi) { return lo + int(rng() % unsigned(hi - lo + 1)); };
    for (int trial = 0; trial < 14; ++trial) {
        const int kh = pick(1, 5), kw = pick(1, 5), ph = pick(0, 2), pw = pick(0, 2);
        // Odd sizes that fit the window: H + 2 PH >= KH.
        const int h = std::max(kh - 2 * ph, 1) + 2 * pick(0, 4), w = std::max(kw - 2 * pw, 1) + 2 * pick(0, 3);
        const int c = pick(1, 20), o = pick(1, 20), batch = pick(1, 3);
        const std::string text = convModel(pick(1, 3), c, h | 1, w | 1, o, kh, kw, pick(1, 3), pick(1, 3), ph, pw,
                                           trial % 2 ? " tanh" : "");
        INFO(text << "batch " << batch);
        Graph g = compileSource("conv.nn", text, {batch}).graph;
        // Kernels of their own: the weight gradients of both convolutions, dx of the second.
        std::map<Op, int> kernels = convKernels(g);
        CHECK(kernels[Op::Conv2d] == 4); // each convolution in the forward program and again in the backward one
        CHECK(kernels[Op::Conv2dGradW] == 2);
        CHECK(kernels[Op::Conv2dGradX] == 1);
        agree(g, rng);
    }
}

TEST_CASE("compiled convolutions at the edges of tiles, panels and images", "[jit][conv]") {
    std::mt19937 rng(161);
    const std::vector<std::pair<std::string, int64_t>> cases = {
        // Positions per image (9) far fewer than a panel's: a panel spans many images.
        {convModel(2, 3, 3, 3, 5, 3, 3, 1, 1, 1, 1), 3},
        // A panel wider than an image row and a row of tiles past one panel (O = 20, 13 x 11).
        {convModel(1, 7, 13, 11, 20, 3, 3, 1, 1, 1, 1), 2},
        // Stride 3 both ways: dx's positions mostly have no source in g (the exact division).
        {convModel(2, 4, 11, 10, 3, 5, 4, 3, 3, 2, 1), 2},
        // Strides that differ by dimension, a window the size of the padded image.
        {convModel(1, 2, 5, 7, 4, 5, 3, 2, 1, 0, 2), 3},
        {convModel(1, 3, 4, 3, 2, 6, 7, 1, 1, 1, 2), 2},
        // 1x1 convolutions with and without stride.
        {convModel(3, 6, 9, 5, 7, 1, 1, 1, 1, 0, 0), 2},
        {convModel(3, 6, 9, 5, 7, 1, 1, 2, 3, 0, 0), 1},
        // Two convolutions whose kernels have equal operand domains but different windows and
        // weights: each has its own kernel function.
        {"input 4x6x6\nconv 4 3x3 padding=1 bias=false\nconv 4 1x1 bias=false relu\nconv 4 3x3 padding=1 bias=false\n"
         "flatten\ndense 2\nloss cross_entropy\n",
         3},
    };
    for (auto& [text, batch] : cases) {
        INFO(text << "batch " << batch);
        agree(compileSource("conv.nn", text, {batch}).graph, rng);
    }
}

TEST_CASE("a compiled conv model's gradients agree with central differences in double", "[jit][conv][autodiff]") {
    // eps 1e-6, atol 1e-5, rtol 1e-3 (torch.autograd.gradcheck's), the loss from compiled code.
    const Graph g = compileSource("conv.nn",
                                  "input 2x7x6\nconv 3 3x2 stride=2x1 padding=1 bias=false tanh\n"
                                  "conv 4 2x3 stride=1x2 padding=0x1 bias=false\nflatten\ndense 2\nloss mse\n",
                                  {3}).graph;
    std::mt19937 rng(162);
    Bindings b = randomBindings(g, rng);
    CompiledModel cm = compiled(g, true, 1);
    auto grads = runCompiled(cm, g, b, true);
    auto loss = [&] { return runCompiled(cm, g, b, false).at("loss").data[0]; };
    int checked = 0;
    for (auto& p : g.params) {
        Tensor& t = b.at(p.name);
        const Tensor& analytic = grads.at("grad:" + p.name);
        REQUIRE(analytic.data.size() == t.data.size());
        for (size_t i = 0; i < t.data.size(); ++i) {
            const double saved = t.data[i], eps = 1e-6;
            t.data[i] = saved + eps;
            const double up = loss();
            t.data[i] = saved - eps;
            const double down = loss();
            t.data[i] = saved;
            const double numeric = (up - down) / (2 * eps);
            INFO(p.name << "[" << i << "] analytic " << analytic.data[i] << " numeric " << numeric);
            CHECK(std::fabs(analytic.data[i] - numeric) <= 1e-5 + 1e-3 * std::fabs(numeric));
            ++checked;
        }
    }
    CHECK(checked == 3 * 2 * 3 * 2 + 4 * 3 * 2 * 3 + 2 * 4 * 4 * 3 + 2);
}

TEST_CASE("compiled convolution gradients on two threads are the same bits on every run", "[jit][conv][threads]") {
    // grad_w sums the batch in fixed slices, whichever thread runs each: no race, no run-to-run
    // rounding differences.
    const Graph g = compileSource("conv.nn", convModel(2, 5, 9, 7, 6, 3, 3, 1, 1, 1, 1), {7}).graph;
    std::mt19937 rng(163);
    Bindings b = randomBindings(g, rng);
    CompiledModel cm = compiled(g, false, 2);
    const auto first = runCompiled(cm, g, b, true);
    for (int run = 0; run < 5; ++run) {
        const auto again = runCompiled(cm, g, b, true);
        for (auto& [name, t] : first) {
            INFO(name << ", run " << run);
            CHECK(again.at(name).data == t.data);
        }
    }
}

TEST_CASE("convolutions with few taps run direct, the taps in registers, and agree with the interpreter", "[jit][conv][direct]") {
    // C KH KW <= 16 (ConvPlan::kDirectTaps) and rows of y at least VL long: conv2d and
    // conv2d_grad_w run direct. Random strides, paddings and odd sizes (rows of one to three
    // chunks of 16 positions), with and without an epilogue; then bands of rows: 64 channels
    // of 40 positions a row keep 12 rows (32768 / (64 x 40)) of the 30 in the thread's
    // buffer, the last band partial.
    std::mt19937 rng(164);
    auto pick = [&](int lo, int hi) { return lo + int(rng() % unsigned(hi - lo + 1)); };
    auto direct = [](const Graph& g) {
        CodegenOptions opts;
        opts.cache = false, opts.threads = 2;
        std::vector<std::string> lines;
        for (const std::string& line : explainProducts(g, opts))
            if (line.find("conv2d") != std::string::npos) lines.push_back(line);
        return lines;
    };
    const char* acts[] = {"", " relu", " tanh", " sigmoid"};
    for (int trial = 0; trial < 12; ++trial) {
        const int c = pick(1, 2), kh = pick(1, c == 1 ? 4 : 2), kw = pick(1, 4), ph = pick(0, 2), pw = pick(0, 2);
        const int sh = pick(1, 3), sw = pick(1, 3);
        // Rows of 16 to 32 positions (direct needs a vector's worth): W + 2 PW - KW >= 15 SW.
        const int h = (std::max(kh - 2 * ph, 1) + 2 * pick(0, 6)) | 1, w = (15 * sw + kw - 2 * pw + pick(0, 16 * sw)) | 1;
        const std::string text = "input " + std::to_string(c) + "x" + std::to_string(h) + "x" + std::to_string(w) + "\nconv " +
                                 std::to_string(pick(1, 20)) + " " + std::to_string(kh) + "x" + std::to_string(kw) +
                                 " stride=" + std::to_string(sh) + "x" + std::to_string(sw) +
                                 " padding=" + std::to_string(ph) + "x" + std::to_string(pw) + (trial % 3 ? "" : " bias=false") +
                                 acts[trial % 4] + "\nflatten\ndense 3\nloss mse\n";
        const int batch = pick(1, 3);
        INFO(text << "batch " << batch);
        Graph g = compileSource("conv.nn", text, {batch}).graph;
        const std::vector<std::string> lines = direct(g);
        REQUIRE(lines.size() == 3); // conv2d forward and backward, conv2d_grad_w (x needs no gradient)
        for (const std::string& line : lines) CHECK_THAT(line, Catch::Contains(": direct, the " + std::to_string(c * kh * kw) + " taps"));
        agree(g, rng);
    }
    Graph g = compileSource("conv.nn", "input 1x32x42\nconv 64 3x3 relu\nmaxpool 2\nflatten\ndense 3\nloss mse\n", {2}).graph;
    const std::vector<std::string> lines = direct(g);
    REQUIRE(lines.size() == 3);
    CHECK_THAT(lines[0], Catch::Contains("6 bands of 12 rows of y (2 images), 2 threads"));
    CHECK_THAT(lines[2], Catch::Contains("conv2d_grad_w 9 x 64 x 1200: direct"));
    agree(g, rng);
    // The same bands without an epilogue (y stored from the registers), and 40 channels (odd
    // pairs: 20 of two) with 5 x 3 taps.
    g = compileSource("conv.nn", "input 1x32x42\nconv 64 3x3 bias=false\nmaxpool 2\nflatten\ndense 3\nloss mse\n", {2}).graph;
    REQUIRE_THAT(direct(g)[0], Catch::Contains("6 bands of 12 rows of y (2 images)"));
    agree(g, rng);
    g = compileSource("conv.nn", "input 1x20x18\nconv 40 5x3 padding=2x1 tanh\nflatten\ndense 3\nloss mse\n", {3}).graph;
    REQUIRE_THAT(direct(g)[0], Catch::Contains("direct, the 15 taps"));
    agree(g, rng);
    // Rows shorter than a vector keep the register tile (most lanes would idle).
    CHECK_THAT(direct(compileSource("conv.nn", "input 1x7x7\nconv 4 3x3 padding=1\nflatten\ndense 3\nloss mse\n", {2}).graph)[0],
               Catch::Contains("(W · col(x)): tile"));
    // A convolution with more taps keeps the register tile.
    CHECK_THAT(direct(compileSource("conv.nn", "input 2x9x9\nconv 4 3x3\nflatten\ndense 3\nloss mse\n", {2}).graph)[0],
               Catch::Contains("(W · col(x)): tile"));
}

TEST_CASE("a convolution's last row tile of M % MR rows runs an edge tile of its own", "[jit][conv]") {
    // With the 6-row tile, conv2d's M (O = 8) and grad_x's (C = 8) leave 2 rows: the module
    // has an edge tile of 2 rows and chooses it for the last row tile.
    EnvVar tile("GRADC_GEMM", "tile=6x2");
    const Graph g = compileSource("conv.nn", "input 3x6x6\nconv 8 3x3 padding=1\nconv 8 3x3 relu\nflatten\ndense 3\nloss mse\n", {2}).graph;
    CodegenOptions opts;
    opts.cache = false, opts.threads = 1;
    const std::string ir = emitModule(g, opts, "llvm-unoptimised");
    CHECK(ir.find("define internal void @gradc_tile_2(") != std::string::npos);
    CHECK(ir.find("ptr @gradc_tile_2, ptr @gradc_tile") != std::string::npos); // the last row tile's choice
    std::mt19937 rng(165);
    agree(g, rng);
}

TEST_CASE("a convolution's forward and input-gradient products choose their own tile from the measured speeds", "[jit][conv]") {
    GemmBlocking bl;
    bl.mr = 6, bl.nv = 4, bl.vl = 16;
    // Without measured speeds (or without the program tile's), the program's tile.
    CHECK(convTile(bl, 32, 1000) == std::pair<int64_t, int64_t>(6, 4));
    bl.speeds = {{8, 3, 100}, {4, 6, 100}};
    CHECK(convTile(bl, 32, 1000) == std::pair<int64_t, int64_t>(6, 4));
    // M = 32 leaves 6x4 an edge tile of 2 rows (89% useful); 8x3 has none, and 4x6 wastes
    // more columns (1000 of 1056).
    bl.speeds = {{6, 4, 100}, {8, 3, 100}, {4, 6, 100}};
    CHECK(convTile(bl, 32, 1000) == std::pair<int64_t, int64_t>(8, 3));
    CHECK(convTile(bl, 36, 1024) == std::pair<int64_t, int64_t>(6, 4)); // no waste: the program's
    // 64 rows are 97% of 6x4's 66: 8x3 does 3% more useful work.
    CHECK(convTile(bl, 64, 1024 * 3) == std::pair<int64_t, int64_t>(8, 3));
    // Another tile must do more than 2% more useful work than the program's.
    bl.speeds = {{6, 4, 100}, {8, 3, 101.5}};
    CHECK(convTile(bl, 48, 1024 * 3) == std::pair<int64_t, int64_t>(6, 4));
    bl.speeds = {{6, 4, 100}, {8, 3, 103}};
    CHECK(convTile(bl, 48, 1024 * 3) == std::pair<int64_t, int64_t>(8, 3));
    bl.speeds = {{6, 4, 100}, {8, 3, 100}, {4, 6, 100}};

    // Compiled: the forward conv (M = O = 13) and the input gradient (M = C = 16) run 8x3
    // tiles, the first with an edge tile of 5 rows; the weight gradient keeps the program's
    // 6x4 (its panels are g_b's, packed by the program's helper). Against the interpreter.
    const Graph g = compileSource("conv.nn", "input 2x7x9\nconv 16 3x3 padding=1 relu\nconv 13 3x3 padding=1 tanh\n"
                                             "maxpool 2\nflatten\ndense 3\nloss cross_entropy\n", {3}).graph;
    std::mt19937 rng(167);
    Bindings b = randomBindings(g, rng);
    auto want = interpretOutputs(differentiate(g), b);
    for (bool f64 : {false, true}) {
        GemmBlocking tiles = bl;
        tiles.vl = f64 ? 8 : 16;
        for (int threads : {1, 2}) {
            CodegenOptions opts;
            opts.cache = false, opts.f64 = f64, opts.threads = threads, opts.blocking = tiles;
            INFO((f64 ? "f64, " : "f32, ") << threads << " thread(s)");
            if (!f64 && threads == 1) {
                const std::string ir = emitModule(g, opts, "llvm-unoptimised");
                CHECK(ir.find("define internal void @gradc_tile_8x3_8(") != std::string::npos);
                CHECK(ir.find("define internal void @gradc_tile_8x3_5(") != std::string::npos);
                CHECK(ir.find("define internal void @gradc_tile(") != std::string::npos);
            }
            const auto got = runCompiled(compileModel(g, opts), g, b, true);
            for (auto& [name, w] : want) {
                if (name == "logits") continue;
                INFO(name);
                REQUIRE(got.count(name) == 1);
                CHECK(relativeError(got.at(name), w) <= (f64 ? 1e-9 : 1e-4));
            }
        }
    }
}

TEST_CASE("gradc bench --explain gives a line per convolution with its implicit product", "[jit][conv]") {
    const Graph g = compileSource("conv.nn", convModel(2, 5, 9, 7, 6, 3, 3, 1, 1, 1, 1), {4}).graph;
    CodegenOptions opts;
    opts.cache = false;
    opts.threads = 1;
    std::vector<std::string> convs;
    for (const std::string& line : explainProducts(g, opts))
        if (line.find("conv2d") != std::string::npos) convs.push_back(line);
    // Forward: both convolutions; backward: both again, dx of the second, dW of both.
    REQUIRE(convs.size() == 7);
    CHECK_THAT(convs[1], Catch::Contains("forward k1: conv2d 6 x 252 x 45 (W · col(x)): tile"));
    CHECK_THAT(convs[1], Catch::Contains("panels of col(x) packed one at a time by each thread, W in place, 1 thread"));
    bool gradX = false, gradW = false;
    for (const std::string& line : convs) {
        gradX = gradX || line.find("conv2d_grad_x 5 x 252 x 54 (W' · colT(g))") != std::string::npos;
        gradW = gradW || line.find("conv2d_grad_w 45 x 6 x 63 per image, 4 images (col(x_b) · g_bᵀ)") != std::string::npos;
    }
    CHECK(gradX);
    CHECK(gradW);
}

TEST_CASE("conv2d's bias and activation are its epilogue, applied as its tiles are stored", "[jit][conv][epilogue]") {
    // The map after a convolution (bias, activation, or both, of its result alone) folds into
    // the conv kernel: the result itself is never written. Random shapes (strides 1-3,
    // paddings 0-2, kernels 1-5, odd sizes, batches 2-3: panels that span images, last tiles
    // of fewer rows), against the interpreter in float and double on one and two threads.
    std::mt19937 rng(162);
    auto pick = [&](int lo, int hi) { return lo + int(rng() % unsigned(hi - lo + 1)); };
    const char* acts[] = {"", " relu", " tanh", " sigmoid", " leaky_relu", " elu", " gelu", " softplus"};
    for (int trial = 0; trial < 16; ++trial) {
        const int kh = pick(1, 5), kw = pick(1, 5), ph = pick(0, 2), pw = pick(0, 2), sh = pick(1, 3), sw = pick(1, 3);
        const int h = (std::max(kh - 2 * ph, 1) + 2 * pick(0, 4)) | 1, w = (std::max(kw - 2 * pw, 1) + 2 * pick(0, 3)) | 1;
        const int c = pick(1, 9), o = pick(1, 20), batch = pick(2, 3);
        const bool bias = trial % 2 == 0 || trial % 8 == 1;
        const char* act = acts[size_t(trial) % 8];
        const std::string text = "input " + std::to_string(c) + "x" + std::to_string(h) + "x" + std::to_string(w) + "\nconv " +
                                 std::to_string(o) + " " + std::to_string(kh) + "x" + std::to_string(kw) +
                                 " stride=" + std::to_string(sh) + "x" + std::to_string(sw) + " padding=" + std::to_string(ph) +
                                 "x" + std::to_string(pw) + (bias ? "" : " bias=false") + act +
                                 "\nconv 2 1x1" + act + "\nflatten\ndense 3\nloss mse\n";
        INFO(text << "batch " << batch);
        Graph g = compileSource("conv.nn", text, {batch}).graph;
        // Both convolutions of the forward program carry their epilogue; no loop kernel
        // reads what a conv2d computes.
        const KernelProgram p = buildKernels(g, "forward", g.outputs, computeLayout(g), 4, GemmBlocking{});
        int fused = 0;
        for (const Kernel& k : p.kernels) {
            if (k.kind == Kernel::Kind::Op && k.op == Op::Conv2d) {
                fused += k.hasEpilogue();
                const Buffer& y = p.buffers[size_t(k.out[0])];
                const std::vector<int32_t> w = k.writes();
                // A result kept for the backward pass (no bias: the pre-activation) is one of
                // the epilogue's stores; else it is fused away, given no memory.
                if (y.kind == Buffer::Kind::Temp) CHECK(y.offset < 0);
                else CHECK(std::find(w.begin(), w.end(), k.out[0]) != w.end());
            }
        }
        CHECK(fused == 2);
        agree(g, rng);
    }
}

TEST_CASE("a maxpool's gradient that only convolution gradients read is expanded inside them, and a conv pools its epilogue's values", "[jit][conv][pool]") {
    // A first convolution (no input gradient) before a maxpool: its conv2d_grad_w reads the
    // pool's operands (the positions of the maxima and the pooled gradient) and expands g
    // image by image; no maxpool2d_grad kernel is left and the pool's gradient has no
    // memory. Direct (few taps, rows of at least VL) and through the register tile (whose
    // panels span images: on two threads some images are pooled after the threads' runs),
    // windows apart, overlapping and padded, against the interpreter in float and double on
    // one and two threads.
    std::mt19937 rng(163);
    const char* models[] = {
        "input 1x20x18\nconv 4 3x3 padding=1 relu\nmaxpool 2\nflatten\ndense 3\nloss cross_entropy\n",
        "input 1x10x24\nconv 3 3x3\nmaxpool 3 stride=2 padding=1\nflatten\ndense 2\nloss mse\n",
        "input 3x9x11\nconv 5 3x3 relu\nmaxpool 3 stride=2 padding=1\nflatten\ndense 3\nloss cross_entropy\n",
        "input 2x8x8\nconv 3 2x2 tanh\nmaxpool 2 stride=1\nflatten\ndense 2\nloss mse\n",
        // "Same" padding: the tile's panels packed a vector of positions at a time.
        "input 3x6x7\nconv 4 3x3 padding=1 relu\nmaxpool 2\nflatten\ndense 3\nloss cross_entropy\n",
    };
    for (const char* text : models) {
        INFO(text);
        // As training compiles it: no activation statistics (they would keep the conv's values).
        Graph g = compileSource("pooled.nn", text, {.batch = 3, .statistics = false}).graph;
        Graph grad = differentiate(g);
        const KernelProgram p = buildKernels(grad, "backward", backwardOutputs(grad), computeLayout(g), 4, GemmBlocking{});
        int fused = 0;
        for (const Kernel& k : p.kernels) {
            CHECK_FALSE((k.kind == Kernel::Kind::Op && k.op == Op::MaxPool2dGrad));
            if (!k.poolsGradient()) continue;
            ++fused;
            CHECK(k.in.size() == 3);
            // It reads the positions of the maxima that the maxpool2d before it stored (or the
            // conv2d that pools its epilogue's values), not x.
            CHECK(k.maxPositions);
            CHECK(std::any_of(p.kernels.begin(), p.kernels.end(), [&](const Kernel& f) {
                return (f.kind == Kernel::Kind::Op && f.op == Op::MaxPool2d && f.out.size() == 2 && f.out[1] == k.in[1]) ||
                       (f.poolsOutput() && f.out.size() == 3 && f.out[2] == k.in[1]);
            }));
        }
        CHECK(fused == 1);
        // Every conv pools its epilogue's values itself: no maxpool2d kernel is left. The
        // direct ones (one channel, rows of at least VL) give the values no memory; those
        // through the register tile store them and pool each image once it is complete.
        const bool direct = std::string(text).rfind("input 1x", 0) == 0;
        const int pooled = int(std::count_if(p.kernels.begin(), p.kernels.end(), [](const Kernel& k) { return k.poolsOutput(); }));
        const int pools = int(std::count_if(p.kernels.begin(), p.kernels.end(),
                                            [](const Kernel& k) { return k.kind == Kernel::Kind::Op && k.op == Op::MaxPool2d; }));
        CHECK(pooled == 1);
        CHECK(pools == 0);
        for (const Kernel& k : p.kernels)
            if (k.poolsOutput()) {
                CHECK(k.stores.size() == 1);
                if (direct) CHECK(k.stores[0].buffer == -1);
                else CHECK(p.buffers[size_t(k.stores[0].buffer)].kind == Buffer::Kind::Temp);
            }
        agree(g, rng);
        // AVX2: the direct weight gradient takes one channel at a time (16 registers), and the
        // tile's panels (positions 8 to a vector) span images at other places.
        if (hostHasAvx2()) compiledAgrees(g, rng, {1, 2}, nullptr, "avx2");
    }
    // With the input's gradient needed too (a second convolution), g has two readers, the
    // input's gradient and the weights': each expands it, the input's into a ring of as many
    // images as one panel of positions spans (here up to five: images of 16 to 120
    // positions). "Same" convolutions (packed a vector of positions at a time) and others,
    // strided ones (whose input gradient divides) among them.
    const char* twoConvs[] = {
        "input 1x8x8\nconv 2 3x3\nconv 3 3x3\nmaxpool 2\nflatten\ndense 2\nloss mse\n",
        "input 2x5x5\nconv 3 3x3 padding=1\nconv 4 3x3 padding=1 relu\nmaxpool 2\nflatten\ndense 3\nloss cross_entropy\n",
        "input 2x12x10\nconv 4 3x3 padding=1 relu\nconv 5 3x3 padding=1 relu\nmaxpool 2\nflatten\ndense 3\nloss cross_entropy\n",
        "input 2x9x9\nconv 3 3x3\nconv 4 3x3 stride=2 padding=1 tanh\nmaxpool 2 stride=1\nflatten\ndense 2\nloss mse\n",
        "input 1x4x4\nconv 2 1x1\nconv 3 3x3 padding=1 relu\nmaxpool 3 stride=2 padding=1\nflatten\ndense 2\nloss mse\n",
    };
    for (const char* text : twoConvs) {
        INFO(text);
        Graph two = compileSource("two.nn", text, {.batch = 5, .statistics = false}).graph;
        Graph grad = differentiate(two);
        const KernelProgram p = buildKernels(grad, "backward", backwardOutputs(grad), computeLayout(two), 4, GemmBlocking{});
        CHECK_FALSE(std::any_of(p.kernels.begin(), p.kernels.end(),
                                [](const Kernel& k) { return k.kind == Kernel::Kind::Op && k.op == Op::MaxPool2dGrad; }));
        int gradX = 0, gradW = 0;
        for (const Kernel& k : p.kernels) {
            if (!k.poolsGradient()) continue;
            CHECK(k.in.size() == 3);
            CHECK(k.maxPositions);
            (k.op == Op::Conv2dGradX ? gradX : gradW) += 1;
        }
        CHECK(gradX == 1);
        CHECK(gradW == 1);
        agree(two, rng);
        if (hostHasAvx2()) compiledAgrees(two, rng, {1, 2}, nullptr, "avx2");
    }
    // A reader that is not a convolution's gradient (the residual's sum) keeps the pool's
    // gradient a kernel of its own.
    Graph added = compileSource("added.nn", "input 1x8x8\nconv 2 3x3\nc = conv 3 3x3\nmaxpool 3 stride=1 padding=1\nadd c\n"
                                            "flatten\ndense 2\nloss mse\n", {.batch = 2, .statistics = false}).graph;
    Graph grad = differentiate(added);
    const KernelProgram p = buildKernels(grad, "backward", backwardOutputs(grad), computeLayout(added), 4, GemmBlocking{});
    CHECK(std::count_if(p.kernels.begin(), p.kernels.end(), [](const Kernel& k) { return k.poolsGradient(); }) == 0);
    CHECK(std::count_if(p.kernels.begin(), p.kernels.end(),
                        [](const Kernel& k) { return k.kind == Kernel::Kind::Op && k.op == Op::MaxPool2dGrad; }) == 1);
    agree(added, rng);
}
