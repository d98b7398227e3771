// PoolTests.cpp — the compiled pooling kernels (LowerPool.cpp) against the reference
// interpreter: maxpool2d, avgpool2d and their gradients on random images and windows
// (windows 1-5, strides 1-3, padding up to half the window, odd and non-square sizes, batch
// 2 and more), with ties (many equal values: the first maximum takes the gradient), NaN
// inputs (NaN wins and carries the gradient), overlapping windows (the gradients add up), in
// float and double, on one thread and on two; and models of the language that pool.
#include "Autodiff.h"
#include "Codegen.h"
#include "Execute.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>

#include <cmath>

using namespace gradc;

namespace {

/// The image is a parameter, so the backward program's gradient of it is the pooling's
/// gradient itself: x[B,C,H,W] -> Σ over `windows` of pool(x, window) -> flatten -> mse.
Graph poolGraph(Op op, const Shape& xs, const std::vector<Window>& windows) {
    Graph g;
    g.model = "pool", g.batch = xs[0], g.lossKind = "mse";
    ValueId x = addLeaf(g, Op::Param, "x", xs);
    ValueId sum = ValueId(-1);
    for (const Window& w : windows) {
        Node n = makeNode(op, {}, {x});
        n.window = w;
        ValueId y = g.add(std::move(n));
        sum = sum == ValueId(-1) ? y : addAdd(g, sum, y, {});
    }
    Node flat = makeNode(Op::Reshape, {}, {sum});
    flat.shape = {xs[0], elementCount(g[sum].shape) / xs[0]};
    ValueId z = g.add(std::move(flat));
    ValueId t = addLeaf(g, Op::Input, "target", g[z].shape);
    ValueId loss = g.add(makeNode(Op::MSE, {}, {z, t}));
    g.outputs = {{OutputRole::Logits, "", z}, {OutputRole::Loss, "", loss}};
    return g;
}

enum class Fill { Normal, Ties, NaN, NegInf };

/// x: normal values; or ties: max(0, a multiple of 1/2), more than half of them 0; or normal
/// values with about one in eight NaN; or half of them -inf (windows of -inf only: their
/// first position inside the image takes the gradient).
Bindings poolBindings(const Graph& g, Fill kind, std::mt19937& rng) {
    Bindings b = randomBindings(g, rng);
    std::normal_distribution<double> normal(0, 1);
    for (double& v : b.at("x").data) {
        v = normal(rng);
        if (kind == Fill::Ties) v = std::max(0.0, std::round(v * 2) / 2);
        if (kind == Fill::NaN && rng() % 8 == 0) v = std::nan("");
        if (kind == Fill::NegInf && rng() % 2 == 0) v = -INFINITY;
    }
    return b;
}

/// The compiled forward and backward programs of `g` against the interpreter on `b`, in
/// float (within 1e-4 of each tensor's largest value) and double (1e-6), on `threads`, for
/// the instruction set `isa` ("": the default, this CPU's).
void agree(const Graph& g, const Bindings& b, int threads, const std::string& isa = "") {
    auto wantForward = interpretOutputs(g, b);
    auto wantBackward = interpretOutputs(differentiate(g), b);
    for (bool f64 : {false, true}) {
        CodegenOptions opts;
        opts.f64 = f64, opts.cache = false, opts.threads = threads, opts.isa = isa;
        CompiledModel cm = compileModel(g, opts);
        auto gotForward = runCompiled(cm, g, b, false);
        auto gotBackward = runCompiled(cm, g, b, true);
        const double tol = f64 ? 1e-6 : 1e-4;
        INFO((f64 ? "f64" : "f32") << ", " << threads << " thread(s) " << isa);
        for (auto& [name, want] : wantForward) {
            INFO(name);
            CHECK(relativeError(gotForward.at(name), want) <= tol);
        }
        int grads = 0;
        for (auto& [name, want] : wantBackward) {
            if (name.rfind("grad:", 0) != 0) continue;
            INFO(name);
            CHECK(relativeError(gotBackward.at(name), want) <= tol);
            ++grads;
        }
        CHECK(grads >= 1);
    }
}

/// A random window over a random image: kernel 1-5, stride 1-3, padding up to half the
/// kernel, the image at least the kernel (less its padding) and odd as often as not.
std::pair<Shape, Window> randomCase(std::mt19937& rng) {
    auto pick = [&](int lo, int hi) { return lo + int(rng() % unsigned(hi - lo + 1)); };
    Window w;
    w.kh = pick(1, 5), w.kw = pick(1, 5), w.sh = pick(1, 3), w.sw = pick(1, 3);
    w.ph = pick(0, w.kh / 2), w.pw = pick(0, w.kw / 2);
    const int64_t H = std::max<int64_t>(pick(1, 13), w.kh - 2 * w.ph);
    const int64_t W = std::max<int64_t>(pick(1, 13), w.kw - 2 * w.pw);
    return {Shape{pick(2, 3), pick(1, 3), H, W}, w};
}

std::string describeCase(const Shape& xs, const Window& w) { return shapeString(xs) + " " + printWindow(w); }

} // namespace

TEST_CASE("compiled max pooling and its gradient agree with the interpreter on random windows, ties, NaN and -inf",
          "[jit][pool]") {
    std::mt19937 rng(1601);
    for (int n = 0; n < 40; ++n) {
        auto [xs, w] = randomCase(rng);
        const Fill kind = Fill(n % 4);
        const char* fills[] = {"", " ties", " NaN", " -inf"};
        INFO("case " << n << ": " << describeCase(xs, w) << fills[int(kind)]);
        Graph g = poolGraph(Op::MaxPool2d, xs, {w});
        agree(g, poolBindings(g, kind, rng), 1 + n % 2);
    }
}

TEST_CASE("compiled average pooling and its gradient agree with the interpreter on random windows", "[jit][pool]") {
    std::mt19937 rng(1602);
    for (int n = 0; n < 30; ++n) {
        auto [xs, w] = randomCase(rng);
        const Fill kind = n % 3 == 2 ? Fill::NaN : Fill::Normal;
        INFO("case " << n << ": " << describeCase(xs, w) << (kind == Fill::NaN ? " NaN" : ""));
        Graph g = poolGraph(Op::AvgPool2d, xs, {w});
        agree(g, poolBindings(g, kind, rng), 1 + n % 2);
    }
}

TEST_CASE("compiled pooling: tiles, overlapping windows, wide rows, global averages", "[jit][pool]") {
    std::mt19937 rng(1603);
    struct Case {
        Shape x;
        Window w;
    };
    const std::vector<Case> cases = {
        {{2, 3, 8, 8}, {2, 2, 2, 2, 0, 0}},     // cnn_relu's maxpool 2: tiles
        {{3, 2, 9, 7}, {3, 3, 1, 1, 1, 1}},     // every input in up to nine windows
        {{2, 1, 5, 41}, {1, 5, 1, 1, 0, 2}},    // rows wider than a vector, stride 1
        {{2, 2, 6, 40}, {3, 3, 2, 2, 1, 1}},    // stride 2
        {{2, 2, 4, 37}, {2, 4, 1, 3, 1, 2}},    // stride 3
        {{2, 4, 7, 7}, {7, 7, 7, 7, 0, 0}},     // global_avgpool of cnn_plain's last stage
        {{2, 3, 1, 1}, {1, 1, 1, 1, 0, 0}},     // one pixel
        {{4, 1, 3, 2}, {3, 2, 3, 2, 1, 1}},     // padding all around a small image
        {{2, 1, 3, 4200}, {2, 3, 1, 1, 1, 1}},  // rows longer than the maximum's gradient keeps in its frame
    };
    for (const Case& c : cases)
        for (Op op : {Op::MaxPool2d, Op::AvgPool2d})
            for (int threads : {1, 2}) {
                INFO(describe(op).spelling << " " << describeCase(c.x, c.w));
                Graph g = poolGraph(op, c.x, {c.w});
                agree(g, poolBindings(g, op == Op::MaxPool2d ? Fill::Ties : Fill::Normal, rng), threads);
            }
}

TEST_CASE("two pools of one image with different windows are different compiled functions", "[jit][pool]") {
    // Both give [2,3,3,3] from [2,3,6,6]: the same op over the same rows and columns, which
    // alone once keyed an op kernel's function.
    std::mt19937 rng(1604);
    for (Op op : {Op::MaxPool2d, Op::AvgPool2d}) {
        INFO(describe(op).spelling);
        Graph g = poolGraph(op, {2, 3, 6, 6}, {Window{2, 2, 2, 2, 0, 0}, Window{3, 3, 2, 2, 1, 1}});
        agree(g, poolBindings(g, Fill::Normal, rng), 1);
    }
}

TEST_CASE("models that pool compile and agree with the interpreter", "[jit][pool]") {
    std::mt19937 rng(1605);
    const char* models[] = {
        // relu's zeros tie in most windows; the gradient reaches the dense layers before.
        "input 2x9x7\ndense 7 relu\nmaxpool 3 stride=2 padding=1\nflatten\ndense 3\nloss cross_entropy\n",
        "input 3x7x5\ndense 5 tanh\nglobal_avgpool\ndense 3\nloss cross_entropy\n",
        "input 1x11x10\ndense 10 sigmoid\navgpool 3x2 stride=2x1 padding=1\nmaxpool 2\nflatten\ndense 2\nloss mse\n",
        "input 2x8x8\ndense 8 relu\nmaxpool 2 stride=1\ndense 7 tanh\navgpool 2 stride=1\nflatten\ndense 1\nloss bce\n",
    };
    for (const char* text : models)
        for (int64_t batch : {2, 5})
            for (int threads : {1, 2}) {
                INFO(text << "batch " << batch);
                Graph g = compileSource("pool.nn", text, {batch}).graph;
                agree(g, randomBindings(g, rng), threads);
            }
}

TEST_CASE("compiled pooling agrees with the interpreter in AVX2 code too (vectors of 8 and 4 lanes)", "[jit][pool][isa]") {
    std::mt19937 rng(1606);
    const std::vector<std::pair<Shape, Window>> cases = {
        {{2, 2, 8, 29}, {2, 2, 2, 2, 0, 0}}, {{2, 1, 7, 19}, {3, 3, 1, 1, 1, 1}}, {{3, 1, 6, 23}, {3, 2, 2, 2, 1, 1}}};
    for (auto& [xs, w] : cases)
        for (Op op : {Op::MaxPool2d, Op::AvgPool2d}) {
            INFO(describe(op).spelling << " " << describeCase(xs, w));
            Graph g = poolGraph(op, xs, {w});
            agree(g, poolBindings(g, op == Op::MaxPool2d ? Fill::Ties : Fill::Normal, rng), 1, "avx2");
        }
}
