// GradCheckTests.cpp — the interpreter's gradients against central differences in double
// (eps 1e-6, atol 1e-5, rtol 1e-3, as torch.autograd.gradcheck), for every op, activation,
// loss, every model in models/ and random models built from every construct.
#include "Autodiff.h"
#include "Interpreter.h"
#include "Parser.h"
#include "Pipeline.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

using namespace gradc;

namespace {

/// TestUtil's gradcheck at random parameters and batch (randomBindings).
void gradcheck(const Graph& fwd, std::mt19937& rng, size_t samples = 0) {
    gradc::gradcheck(fwd, randomBindings(fwd, rng), rng, samples);
}

Graph model(const std::string& text, int64_t batch = 4) {
    return compileSource("test.nn", text, {batch}).graph;
}

/// The model gradient-checked at batch 2 and at batch 3.
void gradcheckBatches(const std::string& text, std::mt19937& rng) {
    for (int64_t batch : {2, 3}) {
        INFO(text << "batch " << batch);
        gradcheck(model(text, batch), rng);
    }
}

} // namespace

TEST_CASE("gradients of every op and loss agree with central differences", "[autodiff]") {
    std::mt19937 rng(1);
    const char* models[] = {
        "input 5\ndense 4\nloss mse\n",                                   // matmul, bias, mse
        "input 5\ndense 3 tanh\ndense 1\nloss bce\n",                     // bce with logits
        "input 5\ndense 4 sigmoid\ndense 3\nloss cross_entropy\n",        // softmax + CE
        "input 5\ndense 4 bias=false\nrelu\ndense 3 bias=false\nloss cross_entropy\n",
        "input 5\ndense 4\nbatchnorm\ntanh\ndense 3\nloss cross_entropy\n",
        "input 5\ndense 4\nbatchnorm eps=0.1\ndense 2\nbatchnorm\nloss mse\n",
        "input 5\ndense 4\nlayernorm\ntanh\ndense 3\nloss cross_entropy\n",
        "input 5\ndense 4\nlayernorm eps=0.1\ndense 2\nlayernorm\nloss mse\n", // right before the loss
        "input 5\na = dense 4\nlayernorm\nmul a\ndense 1\nlayernorm\nloss mse\n", // one feature: x̂ = 0
        "input 5\na = dense 4 tanh\ndense 4 sigmoid\nadd a\nadd a\ndense 3\nloss cross_entropy\n",
        "input 5\na = dense 4 tanh\nb = dense 4 elu from a\nadd a b\nadd b a\ndense 2\nloss mse\n",
        "input 5\na = dense 4 tanh\nb = dense 4 sigmoid from a\nmul a b\nmul a\ndense 3\nloss cross_entropy\n",
        "input 5\na = dense 4\nmul a a\nmul a\ndense 2\nloss mse\n",             // a value times itself
    };
    for (const char* text : models) {
        INFO(text);
        gradcheck(model(text), rng);
    }
}

TEST_CASE("a parameter the loss does not use has a zero gradient", "[autodiff]") {
    Graph fwd = model("input 5\na = dense 4 tanh\nunused = dense 4 from a\ndense 3 from a\n"
                      "loss cross_entropy\n");
    std::mt19937 rng(2);
    gradcheck(fwd, rng);
    auto out = interpretOutputs(differentiate(fwd), randomBindings(fwd, rng));
    for (double v : out.at("grad:unused.weight").data) CHECK(v == 0);
}

TEST_CASE("every activation, built-in and user-defined, differentiates correctly", "[autodiff]") {
    std::mt19937 rng(3);
    const char* defs = "activation softsign(x) = x / (1 + abs(x))\n"
                       "activation mish(x) = x * tanh(softplus(x))\n"
                       "activation bent(x) = (sqrt(x^2 + 1) - 1) / 2 + x\n"
                       "activation scaled(x, a=1.5, b=0.5) = a * tanh(b * x) + min(x, 0.2) + max(x, -0.3)\n"
                       "activation powish(x) = exp(-x^2) + log(1 + x^2) + erf(x) + 2^x\n"
                       "activation cmp(x) = select(x >= 0.3, x^3, select(x < -0.2, sigmoid(x), -x))\n";
    for (const char* act : {"identity", "sigmoid", "tanh", "relu", "leaky_relu", "leaky_relu(0.1)",
                            "elu", "elu(0.3)", "swish", "silu", "gelu", "softplus", "softsign",
                            "mish", "bent", "scaled", "scaled(2, 3)", "powish", "cmp"}) {
        INFO(act);
        gradcheck(model(std::string(defs) + "input 3\ndense 6 " + act + "\ndense 3\nloss cross_entropy\n"), rng);
    }
}

TEST_CASE("symbolic derivatives match central differences at many points", "[scalar]") {
    ActivationTable table;
    ModuleAST m = parse(makeSourceFile("t.nn", "activation softsign(x) = x / (1 + abs(x))\n"
                                            "activation mish(x) = x * tanh(softplus(x))\n"));
    for (auto& s : m.stmts) table.define(*s);
    std::vector<std::string> names = table.builtinNames();
    names.push_back("softsign");
    names.push_back("mish");
    for (const std::string& name : names) {
        for (std::vector<double> args : {std::vector<double>{}, std::vector<double>{0.3}}) {
            if (!args.empty() && name != "leaky_relu" && name != "elu") continue;
            Activation a = table.instantiate({name, args, {}});
            scalar::Expr df = scalar::derivative(a.formula);
            scalar::Expr byOut = scalar::derivativeByOutput(a.formula, df);
            for (double x = -6.05; x < 6; x += 0.1) {
                double h = 1e-6;
                double numeric = (scalar::eval(a.formula, x + h) - scalar::eval(a.formula, x - h)) / (2 * h);
                INFO(name << "'(" << x << ") = " << scalar::print(df));
                CHECK(scalar::eval(df, x) == Approx(numeric).margin(1e-6).epsilon(1e-5));
                if (byOut) CHECK(scalar::eval(byOut, 0, scalar::eval(a.formula, x)) == Approx(numeric).margin(1e-6).epsilon(1e-5));
            }
        }
    }
}

TEST_CASE("derivatives follow PyTorch at kinks and use the output where they can", "[scalar]") {
    ActivationTable table;
    auto d = [&](const char* name, double x, std::vector<double> args = {}) {
        return scalar::eval(scalar::derivative(table.instantiate({name, args, {}}).formula), x);
    };
    CHECK(d("relu", 0) == 0);
    CHECK(d("leaky_relu", 0, {0.1}) == Approx(0.1));
    CHECK(d("elu", 0) == 1);
    CHECK(d("sigmoid", 2) == Approx(0.10499358540350662)); // sigmoid(2) (1 - sigmoid(2))
    auto byOut = [&](const char* name) {
        scalar::Expr f = table.instantiate({name, {}, {}}).formula;
        scalar::Expr r = scalar::derivativeByOutput(f, scalar::derivative(f));
        return r ? scalar::print(r) : std::string("(needs x)");
    };
    CHECK(byOut("sigmoid") == "y * (1 - y)");
    CHECK(byOut("tanh") == "1 - y ^ 2");
    CHECK(byOut("swish") == "(needs x)");
    // A comparison of x that the select's constant arm keeps on its side reads y: relu's
    // x <= 0 is y <= 0 (so the backward pass needs no pre-activation), at 0, -0 and NaN too.
    CHECK(byOut("relu") == "select(y <= 0, 0, 1)");
    CHECK(byOut("leaky_relu") == "(needs x)"); // alpha x is not a constant
    auto byOutOf = [&](const char* text) {
        scalar::Expr f = table.convert(*parseExpression(makeSourceFile("e", text)));
        scalar::Expr r = scalar::derivativeByOutput(f, scalar::derivative(f));
        return r ? scalar::print(r) : std::string("(needs x)");
    };
    CHECK(byOutOf("select(x > 0, x, 0)") == "select(y > 0, 1, 0)");
    CHECK(byOutOf("select(x <= 0, 1, x)") == "(needs x)"); // 1 <= 0 is false: y <= 0 is not x <= 0
    CHECK(byOutOf("select(x < 2, 0, x)") == "select(y < 2, 0, 1)");
    CHECK(byOutOf("select(x < 2, 3, x)") == "(needs x)"); // x = 1 gives y = 3, not below 2
    // In float the constants are one number: y = 0.1f is not below 0.1f, though x = 0 is.
    CHECK(byOutOf("select(x < 0.1, 0.09999999999, x)") == "(needs x)");
    const scalar::Expr relu = table.instantiate({"relu", {}, {}}).formula;
    const scalar::Expr dRelu = scalar::derivative(relu), dReluByOut = scalar::derivativeByOutput(relu, dRelu);
    REQUIRE(dReluByOut);
    for (double x : {-1.0, -0.0, 0.0, 1e-30, 2.0, std::nan("")})
        CHECK(scalar::eval(dReluByOut, 0, scalar::eval(relu, x)) == scalar::eval(dRelu, x));
}

TEST_CASE("the printed derivative of x*sigmoid(x) is the true derivative", "[scalar]") {
    ActivationTable table;
    scalar::Expr f = table.convert(*parseExpression(makeSourceFile("e", "x*sigmoid(x)")));
    std::string printed = scalar::print(scalar::derivative(f));
    // Read the printed text back, as a user would, and compare it with the function's slope.
    scalar::Expr df = table.convert(*parseExpression(makeSourceFile("d", printed)));
    for (double x = -8; x <= 8; x += 0.037) {
        double numeric = (scalar::eval(f, x + 1e-6) - scalar::eval(f, x - 1e-6)) / 2e-6;
        double exact = 1 / (1 + std::exp(-x)) * (1 + x * (1 - 1 / (1 + std::exp(-x))));
        CHECK(scalar::eval(df, x) == Approx(exact).epsilon(1e-12));
        CHECK(scalar::eval(df, x) == Approx(numeric).margin(1e-7));
    }
}

TEST_CASE("every model in models/ differentiates, and its gradients check", "[autodiff][heavy]") {
    std::mt19937 rng(4);
    int checked = 0;
    for (auto& entry : std::filesystem::directory_iterator(GRADC_SOURCE_DIR "/models")) {
        // The benchmark networks add no construct (deep_relu's layers, 40 times; two 4096-wide
        // layers, 20M parameters) and would take 17 s of central differences in the interpreter.
        const std::string stem = entry.path().stem().string();
        if (stem == "deep40_relu" || stem == "wide_relu") continue;
        // The deep CNNs (19 convolutions on 28x28 images) add no construct either: the tests
        // of small images below check each, and tests/torch/cnn_test.py compares their gradients
        // with PyTorch's in double. Central differences would take minutes here, and cross
        // the kinks of some of the 10^5 batch-normalised ReLU inputs a step of eps moves.
        if (stem == "cnn_plain_sigmoid" || stem == "cnn_plain_relu" || stem == "cnn_resnet") continue;
        // The recurrent models (28 or 784 steps of 128 units): ScanTests checks every cell by
        // central differences at small sizes, and samples 28 and 784 steps.
        INFO(entry.path());
        Graph fwd = compileFile(entry.path().string(), {3}).graph;
        if (fwd.sequence) continue;
        gradcheck(fwd, rng, 6);
        ++checked;
    }
    CHECK(checked >= 9);
}

TEST_CASE("the seed network's gradients on a fixed batch agree with central differences",
          "[autodiff]") {
    std::mt19937 rng(5);
    std::ifstream in(GRADC_SOURCE_DIR "/models/seed_sigmoid.nn");
    std::string text((std::istreambuf_iterator<char>(in)), {});
    gradcheck(model(text, 8), rng, 12);
}

TEST_CASE("random models built from every construct differentiate correctly", "[autodiff]") {
    std::mt19937 rng(6);
    const std::vector<const char*> acts = {"relu", "tanh", "sigmoid", "elu", "gelu", "swish", "softplus",
                                           "leaky_relu(0.2)", "sq"};
    for (int trial = 0; trial < 40; ++trial) {
        int width = 2 + int(rng() % 5);
        std::string text = randomModel(rng, "activation sq(x) = x * x / 4 + x\n", acts, width, 5, 5);
        INFO(text);
        gradcheck(model(text, 2 + int(rng() % 4)), rng);
    }
}

TEST_CASE("mul, broadcast maps and a value used twice in one product differentiate correctly",
          "[autodiff][map]") {
    std::mt19937 rng(7);
    for (int64_t batch : {1, 3, 6}) {
        INFO("batch " << batch);
        gradcheck(gatedGraph(batch), rng);
    }
}

TEST_CASE("dense on rank-3 and rank-4 values, flatten and their gradients check", "[autodiff][rank]") {
    std::mt19937 rng(8);
    for (int64_t batch : {1, 3}) {
        INFO("batch " << batch);
        // nn.Linear on the last dimension of [B,4,5], then nn.Flatten: the rows model in small.
        gradcheck(model("input 4x5\ndense 3 relu\nflatten\ndense 3\nloss cross_entropy\n", batch), rng);
        // Rank 4, a bias-free layer, a residual sum of rank 3 and mse on the flattened value.
        gradcheck(model("input 2x3x4\na = dense 4 tanh bias=false\ndense 4 sigmoid\nadd a\nflatten\n"
                        "dense 2\nloss mse\n", batch), rng);
        // Flatten straight after the input; the input's gradient goes through the reshape back.
        gradcheck(model("input 3x2\nflatten\ndense 2 gelu\ndense 1\nloss bce\n", batch), rng);
    }
}

TEST_CASE("a broadcast operand's gradient sums over several dimensions while the graph grows",
          "[autodiff][rank]") {
    // The bias of a dense layer on [B,5,3] is summed over two dimensions; the gates make the
    // backward pass add enough nodes that one of these sums moves the graph's nodes (under
    // ASan, a reference held across it was a use after free).
    std::mt19937 rng(9);
    for (int gates = 0; gates < 8; ++gates) {
        std::string text = "input 5x4\nh = dense 3\n";
        for (int i = 0; i < gates; ++i) text += "mul h\n";
        INFO(text);
        gradcheck(model(text + "flatten\ndense 2\nloss mse\n", 2), rng);
    }
}

// ---- Convolutional networks: conv2d, pooling, batchnorm per channel, broadcast maps.

namespace {

/// `input CxHxW` and a conv of random kernel (1-5, not square), stride (1-3) and padding
/// (0-2) that fits the image, followed by `tail`.
std::string randomConv(std::mt19937& rng, const std::string& tail) {
    auto pick = [&](int lo, int hi) { return lo + int(rng() % unsigned(hi - lo + 1)); };
    int kh = pick(1, 5), kw = pick(1, 5), ph = pick(0, 2), pw = pick(0, 2);
    int h = std::max(1, kh - 2 * ph + pick(0, 4)), w = std::max(1, kw - 2 * pw + pick(0, 4));
    std::string text = "input " + std::to_string(pick(1, 3)) + "x" + std::to_string(h) + "x" + std::to_string(w) +
                       "\nconv " + std::to_string(pick(1, 3)) + " " + std::to_string(kh) + "x" + std::to_string(kw) +
                       " stride=" + std::to_string(pick(1, 3)) + "x" + std::to_string(pick(1, 3)) +
                       " padding=" + std::to_string(ph) + "x" + std::to_string(pw);
    const char* extras[] = {"", " tanh", " bias=false", " sigmoid bias=false"};
    return text + extras[rng() % 4] + "\n" + tail;
}

} // namespace

TEST_CASE("random small convolutions differentiate correctly", "[autodiff][conv]") {
    std::mt19937 rng(20);
    for (int trial = 0; trial < 40; ++trial) {
        std::string text = randomConv(rng, "flatten\ndense 3\nloss cross_entropy\n");
        INFO(text);
        Graph g = model(text, 2 + trial % 2);
        // The model is what it says: a conv node with the window written.
        bool conv = false;
        for (const Node& n : g.nodes) conv = conv || n.op == Op::Conv2d;
        REQUIRE(conv);
        gradcheck(g, rng);
    }
}

TEST_CASE("two convolutions, strided and padded, on several channels", "[autodiff][conv]") {
    std::mt19937 rng(21);
    gradcheckBatches("input 3x7x6\nconv 4 3x2 stride=2x1 padding=1x0 tanh\nconv 2 2x3 stride=1x2 padding=2x1 elu\n"
                     "flatten\ndense 2\nloss mse\n", rng);
}

TEST_CASE("max and average pooling differentiate correctly, overlapping or not", "[autodiff][pool]") {
    std::mt19937 rng(22);
    const char* models[] = {
        "input 2x6x6\nconv 3 3x3 padding=1\nmaxpool 2\nflatten\ndense 3\nloss cross_entropy\n",            // tiles
        "input 2x7x5\nconv 2 2x2\nmaxpool 3 stride=1\nflatten\ndense 3\nloss cross_entropy\n",             // overlapping
        "input 1x7x8\nmaxpool 3x2 stride=2x1 padding=1\nconv 2 2x2\nflatten\ndense 2\nloss mse\n",          // -inf padding
        "input 2x6x6\nconv 3 3x3 padding=1 tanh\navgpool 2\nflatten\ndense 3\nloss cross_entropy\n",
        "input 2x7x5\navgpool 3x2 stride=2x1 padding=1x1\nconv 2 2x2 sigmoid\nflatten\ndense 2\nloss mse\n",
        "input 3x5x4\nconv 4 3x3 padding=1 relu\nglobal_avgpool\ndense 3\nloss cross_entropy\n",
    };
    for (const char* text : models) gradcheckBatches(text, rng);
}

TEST_CASE("an activation pooled by its maximum: its gradient is taken on the pooled image, then routed",
          "[autodiff][pool]") {
    std::mt19937 rng(25);
    const char* models[] = {
        "input 2x6x6\nconv 3 3x3 padding=1 relu\nmaxpool 2\nflatten\ndense 3\nloss cross_entropy\n",
        "input 2x7x5\nconv 2 2x2 sigmoid\nmaxpool 3 stride=1 padding=1\nflatten\ndense 3\nloss cross_entropy\n",
        "input 1x7x8\nconv 2 2x2 tanh\nmaxpool 3x2 stride=2x1 padding=1\nflatten\ndense 2\nloss mse\n",
    };
    for (const char* text : models) {
        INFO(text);
        const Graph fwd = model(text, 3);
        const Graph g = differentiate(fwd, {});
        auto gradient = [&](const std::string& name) {
            for (const Output& o : g.outputs)
                if (o.role == OutputRole::Grad && o.name == name) return o.value;
            FAIL("no gradient of " << name);
            return ValueId(0);
        };
        // The conv weight's gradient reads maxpool2d_grad(y, f'(maxpool2d(y)) g): the
        // activation's vjp on the pooled shape, and the bias sums it there too.
        const Node& route = g[g[gradient("layers.0.weight")].in[1]];
        REQUIRE(route.op == Op::MaxPool2dGrad);
        const Node& vjp = g[route.in[1]];
        CHECK(vjp.op == Op::Map);
        CHECK(g[vjp.in[0]].op == Op::MaxPool2d);
        CHECK(g[vjp.in[0]].in[0] == route.in[0]);
        CHECK(vjp.shape == g[vjp.in[0]].shape);
        const Node& bias = g[g[gradient("layers.0.bias")].in[0]]; // reshape(sum_to(...))
        REQUIRE(bias.op == Op::SumTo);
        CHECK(bias.in[0] == route.in[1]);
        gradcheckBatches(text, rng);
    }
}

TEST_CASE("batchnorm on [B,C,H,W] normalises per channel and differentiates correctly", "[autodiff][bn2d]") {
    std::mt19937 rng(23);
    gradcheckBatches("input 2x4x5\nconv 3 3x3 padding=1\nbatchnorm\ntanh\nconv 2 2x2 stride=2\n"
                     "batchnorm eps=0.1\nflatten\ndense 2\nloss mse\n", rng);
    // A 1x1 image: the statistics run over the batch alone, as BatchNorm1d's.
    gradcheck(model("input 3x1x1\nbatchnorm\nsigmoid\nflatten\ndense 2\nloss cross_entropy\n", 4), rng);
    // Per channel: each channel of the output has mean 0 and (biased) variance 1 / (1 + eps)
    // with γ = 1, β = 0, over the batch and the positions together.
    Graph g = model("input 3x4x5\nbatchnorm\nflatten\ndense 2\nloss mse\n", 2);
    Bindings b = randomBindings(g, rng);
    b.at("layers.0.weight").data.assign(3, 1.0);
    b.at("layers.0.bias").data.assign(3, 0.0);
    for (double& v : b.at("x").data) v = v * 3 + 2;
    ValueId bn = 0;
    for (ValueId v = 0; v < g.nodes.size(); ++v)
        if (g[v].op == Op::BatchNorm) bn = v;
    REQUIRE(g[bn].shape == Shape{2, 3, 4, 5});
    const Tensor y = interpret(g, b)[bn];
    for (int c = 0; c < 3; ++c) {
        double sum = 0, sq = 0;
        for (int n = 0; n < 2; ++n)
            for (int i = 0; i < 20; ++i) sum += y.data[size_t((n * 3 + c) * 20 + i)], sq += std::pow(y.data[size_t((n * 3 + c) * 20 + i)], 2);
        CHECK(sum / 40 == Approx(0).margin(1e-12));
        CHECK(sq / 40 == Approx(1).epsilon(1e-4));
    }
}

TEST_CASE("residual blocks of images: names, repeat, add and mul on [B,C,H,W]", "[autodiff][conv]") {
    std::mt19937 rng(24);
    gradcheck(model("input 2x5x5\nconv 2 3x3 padding=1 elu\nrepeat 2 {\n  r = identity\n  conv 2 3x3 padding=1 bias=false\n"
                    "  batchnorm\n  add r\n  tanh\n}\nq = identity\ns = conv 3 1x1 stride=2 from q\n"
                    "m = conv 3 3x3 stride=2 padding=1 from q\nmul s m\nglobal_avgpool\ndense 3\nloss cross_entropy\n", 2), rng);
}

TEST_CASE("map broadcasts [C,1,1], [1,H,1] and [W] operands, whose gradients are sum_to and sum_rows",
          "[autodiff][map]") {
    Graph g;
    g.model = "broadcast", g.batch = 2, g.lossKind = "mse";
    ValueId x = addLeaf(g, Op::Input, "x", {2, 3, 4, 5});
    ValueId s = addLeaf(g, Op::Param, "s", {3, 1, 1}, 2), u = addLeaf(g, Op::Param, "u", {1, 4, 1}, 2);
    ValueId t = addLeaf(g, Op::Param, "t", {5}, 2);
    using scalar::Kind;
    auto a = [](int i) { return scalar::arg(i); };
    // x s + u - t x²: each operand broadcast along other dimensions.
    scalar::Expr e = scalar::make(Kind::Sub, {scalar::make(Kind::Add, {scalar::make(Kind::Mul, {a(0), a(1)}), a(2)}),
                                              scalar::make(Kind::Mul, {a(3), scalar::make(Kind::Mul, {a(0), a(0)})})});
    ValueId m = addMap(g, e, {x, s, u, t}, {});
    REQUIRE(g[m].shape == Shape{2, 3, 4, 5});
    Node flat = makeNode(Op::Reshape, {}, {m});
    flat.shape = {2, 60};
    ValueId z = g.add(std::move(flat));
    ValueId loss = g.add(makeNode(Op::MSE, {}, {z, addLeaf(g, Op::Input, "target", {2, 60})}));
    g.outputs = {{OutputRole::Logits, "", z}, {OutputRole::Loss, "", loss}};
    Graph grad = differentiate(g);
    CHECK(grad[grad.output(OutputRole::Grad, "s")].op == Op::SumTo);
    CHECK(grad[grad.output(OutputRole::Grad, "u")].op == Op::SumTo);
    CHECK(grad[grad.output(OutputRole::Grad, "t")].op == Op::SumRows); // a suffix: leading sums, as before
    std::mt19937 rng(25);
    // The interpreter reads each operand where it broadcasts from.
    Bindings b = randomBindings(g, rng);
    const Tensor y = interpret(g, b)[m];
    for (int n = 0; n < 2; ++n)
        for (int c = 0; c < 3; ++c)
            for (int h = 0; h < 4; ++h)
                for (int w = 0; w < 5; ++w) {
                    const double xv = b.at("x").data[size_t(((n * 3 + c) * 4 + h) * 5 + w)];
                    const double want = xv * b.at("s").data[size_t(c)] + b.at("u").data[size_t(h)] -
                                        b.at("t").data[size_t(w)] * xv * xv;
                    CHECK(y.data[size_t(((n * 3 + c) * 4 + h) * 5 + w)] == Approx(want).epsilon(1e-14));
                }
    gradcheck(g, rng);
}

TEST_CASE("maxpool's gradient goes to the first maximum of each window, as PyTorch's", "[autodiff][pool]") {
    auto pooled = [](Shape shape, std::vector<double> x, Window w) {
        Graph g;
        g.model = "ties", g.batch = shape[0];
        ValueId in = addLeaf(g, Op::Input, "x", shape);
        Node n = makeNode(Op::MaxPool2d, {}, {in});
        n.window = w;
        ValueId y = g.add(std::move(n));
        ValueId gy = addLeaf(g, Op::Input, "g", g[y].shape);
        Node d = makeNode(Op::MaxPool2dGrad, {}, {in, gy});
        d.window = w;
        ValueId dx = g.add(std::move(d));
        std::vector<double> ones(size_t(elementCount(g[y].shape)));
        for (size_t i = 0; i < ones.size(); ++i) ones[i] = double(i + 1); // g = 1, 2, 3, ...
        std::vector<Tensor> v = interpret(g, {{"x", {shape, x}}, {"g", {g[y].shape, ones}}});
        return std::pair{v[y].data, v[dx].data};
    };
    Window tiles{2, 2, 2, 2, 0, 0}, slide{1, 2, 1, 1, 0, 0}, whole{1, 4, 1, 1, 0, 0};
    // Ties within a window: the first in row-major order ((0,0); then (1,2) before (1,3)).
    auto [y1, dx1] = pooled({1, 1, 2, 4}, {1, 1, 0, 0, 1, 0, 3, 3}, tiles);
    CHECK(y1 == std::vector<double>{1, 3});
    CHECK(dx1 == std::vector<double>{1, 0, 0, 0, 0, 0, 2, 0});
    // Overlapping windows of equal values: each takes its own first; the gradients add up.
    auto [y2, dx2] = pooled({1, 1, 1, 4}, {2, 2, 2, 1}, slide);
    CHECK(y2 == std::vector<double>{2, 2, 2});
    CHECK(dx2 == std::vector<double>{1, 2, 3, 0});
    // NaN wins and propagates (the first NaN, and no later value displaces it).
    auto [y3, dx3] = pooled({1, 1, 1, 4}, {1, std::nan(""), 5, 3}, whole);
    CHECK(std::isnan(y3[0]));
    CHECK(dx3 == std::vector<double>{0, 1, 0, 0});
    // A window of -inf only: its first position (PyTorch's initial index).
    const double inf = std::numeric_limits<double>::infinity();
    auto [y4, dx4] = pooled({1, 1, 1, 4}, {-inf, -inf, 0, 1}, Window{1, 2, 1, 2, 0, 0});
    CHECK(y4 == std::vector<double>{-inf, 1});
    CHECK(dx4 == std::vector<double>{1, 0, 0, 2});
}

TEST_CASE("evaluation-mode BatchNorm2d normalises each channel with its running statistics", "[bn2d]") {
    Graph g = compileSource("t.nn", "input 2x3x2\nbatchnorm eps=0.01\nflatten\ndense 2\nloss mse\n", {2, /*eval=*/true}).graph;
    std::mt19937 rng(26);
    Bindings b = randomBindings(g, rng);
    b["layers.0.running_mean"] = Tensor{{2}, {0.5, -1}};
    b["layers.0.running_var"] = Tensor{{2}, {4, 0.25}};
    b.at("layers.0.weight").data = {2, -1};
    b.at("layers.0.bias").data = {0.1, 0.2};
    const Tensor y = interpret(g, b)[g.layers.at(0).value];
    REQUIRE(y.shape == Shape{2, 2, 3, 2});
    for (size_t i = 0; i < y.data.size(); ++i) {
        const size_t c = (i / 6) % 2;
        const double mean[] = {0.5, -1}, var[] = {4, 0.25}, w[] = {2, -1}, beta[] = {0.1, 0.2};
        CHECK(y.data[i] == Approx((b.at("x").data[i] - mean[c]) * w[c] / std::sqrt(var[c] + 0.01) + beta[c]).epsilon(1e-14));
    }
}
