// FusionTests.cpp — loop kernels over [outer, rows, cols]: maps whose operands broadcast as
// numpy's ([C,1,1], [1,H,1], [W] against [B,C,H,W]), sum_to, and batch normalisation per
// channel (BatchNorm2d in training and evaluation mode), compiled code against the
// interpreter in float and double on 1 and 2 threads; and the kernels Fusion makes of them.
#include "Autodiff.h"
#include "Codegen.h"
#include "Execute.h"
#include "CpuBackend.h"
#include "Pipeline.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>

using namespace gradc;

namespace {

/// Compiles `fwd` (f32 and f64, 1 and 2 threads) and checks the forward outputs and every
/// gradient against the interpreter: float within 1e-4 of the tensor's largest value, double
/// within 1e-6. A tensor zero in exact arithmetic is measured against the largest gradient.
void agreesWithInterpreter(const Graph& fwd, std::mt19937& rng, const Bindings& extra = {}) {
    Bindings b = randomBindings(fwd, rng);
    for (auto& [name, t] : extra) b[name] = t;
    const auto wantForward = interpretOutputs(fwd, b);
    const auto wantBackward = fwd.eval ? decltype(wantForward){} : interpretOutputs(differentiate(fwd), b);
    double gradScale = 0;
    for (auto& [name, want] : wantBackward)
        if (name.rfind("grad:", 0) == 0) gradScale = std::max(gradScale, largestAbs(want));
    for (bool f64 : {false, true})
        for (int threads : {1, 2}) {
            INFO(fwd.model << (f64 ? " f64, " : " f32, ") << threads << " threads");
            const double tol = f64 ? 1e-6 : 1e-4;
            CodegenOptions opts;
            opts.f64 = f64, opts.cache = false, opts.threads = threads;
            const CompiledModel cm = compileModel(fwd, opts);
            auto check = [&](const std::map<std::string, Tensor>& got, const std::map<std::string, Tensor>& want) {
                for (auto& [name, w] : want) {
                    INFO(name);
                    CHECK(relativeError(got.at(name), w, gradScale) <= tol);
                }
            };
            check(runCompiled(cm, fwd, b, false), wantForward);
            if (fwd.eval) continue;
            auto gotBackward = runCompiled(cm, fwd, b, true);
            gotBackward["logits"] = wantBackward.at("logits"); // the backward entry point has none
            check(gotBackward, wantBackward);
        }
}

Graph model(const std::string& text, int64_t batch, bool eval = false) {
    SemaOptions o;
    o.batch = batch, o.eval = eval;
    return compileSource("test.nn", text, o).graph;
}

scalar::Expr a(int i) { return scalar::arg(i); }
scalar::Expr op(scalar::Kind k, std::vector<scalar::Expr> args) { return scalar::make(k, std::move(args)); }

/// x[B,C,H,W] through `expr` over x and the parameters of `shapes` (a0 = x, a1.. = them),
/// then tanh, flattened into an MSE: a graph the model language cannot write.
Graph broadcastGraph(Shape x, const std::vector<Shape>& shapes, scalar::Expr expr, const std::string& name) {
    Graph g;
    g.model = name, g.batch = x[0], g.lossKind = "mse";
    std::vector<ValueId> ins = {addLeaf(g, Op::Input, "x", x)};
    for (size_t i = 0; i < shapes.size(); ++i) ins.push_back(addLeaf(g, Op::Param, "p" + std::to_string(i), shapes[i], 2));
    g.activations.push_back(ActivationTable().instantiate({"tanh", {}, {}}));
    ValueId m = addActivation(g, 0, addMap(g, expr, ins, {}), {});
    Node flat = makeNode(Op::Reshape, {}, {m});
    flat.shape = {x[0], elementCount(x) / x[0]};
    ValueId z = g.add(std::move(flat));
    ValueId loss = g.add(makeNode(Op::MSE, {}, {z, addLeaf(g, Op::Input, "target", g[z].shape)}));
    g.outputs = {{OutputRole::Logits, "", z}, {OutputRole::Loss, "", loss}};
    REQUIRE(verify(g).empty());
    return g;
}

} // namespace

TEST_CASE("maps broadcast [C,1,1], [1,H,1] and [W] operands in compiled code", "[jit][fusion]") {
    std::mt19937 rng(160);
    using scalar::Kind;
    // x s + u - t x²: the three broadcast patterns in one map (no split places them all: one
    // is expanded by a copy kernel), and each on its own.
    const scalar::Expr all = op(Kind::Sub, {op(Kind::Add, {op(Kind::Mul, {a(0), a(1)}), a(2)}),
                                            op(Kind::Mul, {a(3), op(Kind::Mul, {a(0), a(0)})})});
    const scalar::Expr mulAdd = op(Kind::Add, {op(Kind::Mul, {a(0), a(1)}), a(1)});
    // The last shape is large enough for its kernels to run on the threads (in rows).
    for (Shape x : {Shape{2, 3, 4, 5}, Shape{3, 1, 7, 2}, Shape{2, 5, 1, 3}, Shape{4, 2, 3, 1}, Shape{3, 8, 26, 27}}) {
        const int64_t C = x[1], H = x[2], W = x[3];
        INFO(shapeString(x));
        agreesWithInterpreter(broadcastGraph(x, {{C, 1, 1}, {1, H, 1}, {W}}, all, "all"), rng);
        agreesWithInterpreter(broadcastGraph(x, {{C, 1, 1}}, mulAdd, "channel"), rng);
        agreesWithInterpreter(broadcastGraph(x, {{1, H, 1}}, mulAdd, "height"), rng);
        agreesWithInterpreter(broadcastGraph(x, {{W}}, mulAdd, "width"), rng);
        agreesWithInterpreter(broadcastGraph(x, {{H, W}}, mulAdd, "image"), rng);
        agreesWithInterpreter(broadcastGraph(x, {{C, H, 1}}, mulAdd, "rows"), rng);
    }
}

TEST_CASE("a per-channel map is one loop kernel over [B, C, H W] reading its operand per row", "[fusion]") {
    using scalar::Kind;
    const Graph g = broadcastGraph({2, 3, 4, 5}, {{3, 1, 1}}, op(Kind::Add, {op(Kind::Mul, {a(0), a(1)}), a(1)}), "c");
    CodegenOptions opts;
    opts.cache = false;
    const std::string kernels = emitModule(g, opts, "kernels");
    INFO(kernels);
    CHECK_THAT(kernels, Catch::Contains("loop [2,3,20]"));
    CHECK_THAT(kernels, Catch::Contains("p0[r]"));
    // The gradient of p0 sums over the batch and the positions: row sums.
    CHECK_THAT(kernels, Catch::Contains("[r] = sum over o, c of"));
}

TEST_CASE("sum_to sums over the outer and column dimensions or the leading ones", "[jit][fusion]") {
    // The gradient of a parameter of the target's shape broadcast against x is a sum_to
    // (sum_rows where the target is a suffix of x's shape).
    std::mt19937 rng(161);
    using scalar::Kind;
    const scalar::Expr mulAdd = op(Kind::Add, {op(Kind::Mul, {a(0), a(1)}), a(1)});
    for (auto [x, target] : {std::pair{Shape{3, 4, 5, 2}, Shape{4, 1, 1}}, std::pair{Shape{2, 3, 5, 7}, Shape{5, 1}},
                             std::pair{Shape{3, 4, 5, 2}, Shape{3, 1, 1, 1}}, std::pair{Shape{2, 3, 4}, Shape{1, 1, 4}},
                             std::pair{Shape{2, 3, 4}, Shape{3, 1}}, std::pair{Shape{5, 3, 2}, Shape{1, 1}},
                             std::pair{Shape{2, 3, 4}, Shape{3, 4}}, std::pair{Shape{3, 8, 26, 27}, Shape{8, 1, 1}}}) {
        INFO(shapeString(x) << " -> " << shapeString(target));
        const Graph g = broadcastGraph(x, {target}, mulAdd, "sum_to");
        const Graph grad = differentiate(g);
        const bool suffix = target == Shape(x.end() - std::ptrdiff_t(target.size()), x.end());
        CHECK(grad[grad.output(OutputRole::Grad, "p0")].op == (suffix ? Op::SumRows : Op::SumTo));
        agreesWithInterpreter(g, rng);
    }
}

TEST_CASE("BatchNorm2d per channel in compiled code: training and evaluation mode", "[jit][fusion][bn2d]") {
    std::mt19937 rng(162);
    for (auto [image, batch] : {std::pair{std::string("3x5x7"), 2}, std::pair{std::string("2x1x1"), 3},
                                std::pair{std::string("4x3x2"), 5}, std::pair{std::string("1x4x3"), 2},
                                std::pair{std::string("8x26x27"), 3}}) { // the last: kernels on the threads
        INFO(image << ", batch " << batch);
        // A per-channel scale before the batchnorm gives it an input gradient; the dense layer
        // after it a weight that needs the normalised values.
        const std::string text = "input " + image + "\nbatchnorm\nrelu\nbatchnorm eps=0.01\ntanh\nflatten\ndense 3\n"
                                 "loss cross_entropy\n";
        agreesWithInterpreter(model(text, batch), rng);
        const Graph eval = model(text, batch, /*eval=*/true);
        Bindings running;
        std::uniform_real_distribution<double> u(0.2, 2);
        for (auto& b : eval.buffers) {
            Tensor t{{b.size}, std::vector<double>(size_t(b.size))};
            for (double& v : t.data) v = b.initial == 1 ? u(rng) : u(rng) - 1;
            running[b.name] = t;
        }
        agreesWithInterpreter(eval, rng, running);
    }
}

TEST_CASE("BatchNorm2d's batch statistics are kept per channel for the running statistics", "[jit][fusion][bn2d]") {
    std::mt19937 rng(163);
    const Graph g = model("input 3x4x5\nbatchnorm\nflatten\ndense 2\nloss mse\n", 3);
    Bindings b = randomBindings(g, rng);
    for (double& v : b.at("x").data) v = 3 * v + 1; // statistics far from 0 and 1
    for (bool f64 : {false, true}) {
        CodegenOptions opts;
        opts.cache = false, opts.f64 = f64;
        std::unique_ptr<Executable> exe = cpuExecutable(compileModel(g, opts));
        Values state(f64, size_t(exe->layout().size(Array::State)));
        writeState(state, exe->layout(), b);
        Program p(*exe);
        p.setInputs(b);
        p.run(state, nullptr);
        const Tensor& x = b.at("x");
        int found = 0;
        for (const LayoutEntry& e : exe->layout().entries) {
            if (e.role != Role::NormMean && e.role != Role::NormVar) continue;
            ++found;
            const std::vector<double> acts = p.acts().values();
            REQUIRE(e.elements() == 3);
            for (int c = 0; c < 3; ++c) {
                double sum = 0, sq = 0;
                for (int n = 0; n < 3; ++n)
                    for (int i = 0; i < 20; ++i) sum += x.data[size_t((n * 3 + c) * 20 + i)];
                const double mean = sum / 60;
                for (int n = 0; n < 3; ++n)
                    for (int i = 0; i < 20; ++i) sq += std::pow(x.data[size_t((n * 3 + c) * 20 + i)] - mean, 2);
                INFO((e.role == Role::NormMean ? "mean" : "var") << " channel " << c << (f64 ? " f64" : " f32"));
                CHECK(acts[size_t(e.offset + c)] == Approx(e.role == Role::NormMean ? mean : sq / 59).epsilon(f64 ? 1e-10 : 1e-5));
            }
        }
        CHECK(found == 2);
    }
}

TEST_CASE("a map operand that varies along two separate groups of dimensions is refused, not miscompiled",
          "[jit][fusion]") {
    // [3,1,5] against [2,3,4,5] varies along C and W but not H: no split [outer, rows, cols]
    // reads it, nor sums its gradient, in one pass. The interpreter computes it.
    using scalar::Kind;
    const Graph g = broadcastGraph({2, 3, 4, 5}, {{3, 1, 5}}, op(Kind::Add, {op(Kind::Mul, {a(0), a(1)}), a(1)}), "split");
    CodegenOptions opts;
    opts.cache = false;
    const std::string err = errorOf([&] { compileModel(g, opts); });
    CHECK_THAT(err, Catch::Contains("a map that broadcasts [3,1,5] to [2,3,4,5] along two separate groups of dimensions"));
    CHECK_THAT(err, Catch::Contains(kJitRefusal));
    std::mt19937 rng(164);
    CHECK(std::isfinite(interpretOutputs(g, randomBindings(g, rng)).at("loss").data[0]));
    CHECK(readsInOnePass({3, 1, 1}, {2, 3, 4, 5}));
    CHECK(readsInOnePass({4, 1}, {2, 3, 4, 5}));
    CHECK(readsInOnePass({3, 4, 5}, {2, 3, 4, 5}));
    CHECK(readsInOnePass({2, 1, 1, 1}, {2, 3, 4, 5}));
    CHECK_FALSE(readsInOnePass({2, 1, 1, 5}, {2, 3, 4, 5}));
}

TEST_CASE("per-channel sums on the threads add up in vector registers", "[fusion][threads]") {
    // The loop outlined onto the threads gets its buffers through a context array, where the
    // optimiser cannot tell the row sums from the stores: summed through memory, the loop was
    // not vectorised (4-6x slower on two threads than on one).
    using scalar::Kind;
    const Graph g = broadcastGraph({3, 8, 26, 27}, {{8, 1, 1}}, op(Kind::Add, {op(Kind::Mul, {a(0), a(1)}), a(1)}), "c");
    CodegenOptions opts;
    opts.cache = false, opts.threads = 2;
    const std::string llvm = emitModule(g, opts, "llvm");
    bool rows = false, reduced = false;
    const std::string head = "define internal void @gradc_rows";
    for (size_t at = llvm.find(head); at != std::string::npos; at = llvm.find(head, at + 1)) {
        rows = true;
        const std::string body = llvm.substr(at, llvm.find("\n}", at) - at);
        if (body.find("llvm.vector.reduce.fadd") != std::string::npos) reduced = true;
    }
    CHECK(rows);
    CHECK(reduced);
}

TEST_CASE("a flatten's copy is left out: the dense layer reads the pooled image's own buffer", "[jit][fusion]") {
    // A flatten after a maxpool (a kernel of its own), and after a dense layer over rows
    // (a loop kernel whose domain is not the flattened one): no copy into the workspace is
    // left (an output's copy, such as a bias's gradient summed as [C,1], stays), and
    // the compiled gradients agree with the interpreter.
    std::mt19937 rng(177);
    const char* models[] = {
        "input 2x6x6\nconv 3 3x3 padding=1 relu\nmaxpool 2\nflatten\ndense 4 relu\ndense 3\nloss cross_entropy\n",
        "input 5x4\ndense 6 relu\nflatten\ndense 3\nloss mse\n",
    };
    for (const char* text : models) {
        INFO(text);
        Graph g = compileSource("flat.nn", text, {.batch = 3, .statistics = false}).graph;
        Graph grad = differentiate(g);
        const KernelProgram p = buildKernels(grad, "backward", backwardOutputs(grad), computeLayout(g), 4, GemmBlocking{});
        for (const Kernel& k : p.kernels) {
            const bool copy = k.kind == Kernel::Kind::Loop && k.a < 0 && k.args.size() == 1 && k.stores.size() == 1 &&
                              k.args[0].mode == Access::Mode::Elem && k.stores[0].expr == scalar::arg(0);
            CHECK_FALSE((copy && p.buffers[size_t(k.stores[0].buffer)].kind == Buffer::Kind::Temp));
        }
        // The first dense layer's product reads, as its rows, the buffer the kernel before the
        // flatten wrote.
        bool readsSource = false;
        for (size_t i = 0; i < p.kernels.size(); ++i)
            for (size_t j = 0; j < i; ++j) {
                const std::vector<int32_t> w = p.kernels[j].writes();
                readsSource = readsSource || (p.kernels[i].a >= 0 && p.buffers[size_t(p.kernels[i].a)].shape.size() != 2 &&
                                              std::find(w.begin(), w.end(), p.kernels[i].a) != w.end());
            }
        CHECK(readsSource);
        agreesWithInterpreter(g, rng);
    }
}
