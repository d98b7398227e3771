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
#include <random>

using namespace gradc;

namespace {

constexpr double kEps = 1e-6, kAtol = 1e-5, kRtol = 1e-3;

double lossOf(const Graph& fwd, const Bindings& b) {
    return interpret(fwd, b)[fwd.output(OutputRole::Loss)].data[0];
}

/// Compares the interpreter's gradient of every parameter (and the input) with central
/// differences, at every coordinate or `samples` random ones per tensor.
void gradcheck(const Graph& fwd, std::mt19937& rng, size_t samples = 0) {
    Graph grad = differentiate(fwd, {/*inputGradient=*/true});
    REQUIRE(verify(grad).empty());
    Bindings b = randomBindings(fwd, rng);
    auto out = interpretOutputs(grad, b);
    CHECK(out.at("loss").data[0] == Approx(lossOf(fwd, b)).epsilon(1e-12));
    std::vector<std::string> names;
    for (auto& p : fwd.params) names.push_back(p.name);
    names.push_back("x");
    for (const std::string& name : names) {
        Tensor& t = b.at(name);
        const Tensor& analytic = out.at("grad:" + name);
        REQUIRE(analytic.data.size() == t.data.size());
        size_t count = samples ? std::min(samples, t.data.size()) : t.data.size();
        for (size_t s = 0; s < count; ++s) {
            size_t i = samples ? rng() % t.data.size() : s;
            double saved = t.data[i];
            t.data[i] = saved + kEps;
            double up = lossOf(fwd, b);
            t.data[i] = saved - kEps;
            double down = lossOf(fwd, b);
            t.data[i] = saved;
            double numeric = (up - down) / (2 * kEps);
            INFO(fwd.model << ": d loss / d " << name << "[" << i << "] analytic "
                           << analytic.data[i] << " numeric " << numeric);
            CHECK(std::fabs(analytic.data[i] - numeric) <= kAtol + kRtol * std::fabs(numeric));
        }
    }
}

Graph model(const std::string& text, int64_t batch = 4) {
    return compileSource("test.nn", text, {batch}).graph;
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

TEST_CASE("every model in models/ differentiates, and its gradients check", "[autodiff]") {
    std::mt19937 rng(4);
    int checked = 0;
    for (auto& entry : std::filesystem::directory_iterator(GRADC_SOURCE_DIR "/models")) {
        // The benchmark networks add no construct (deep_relu's layers, 40 times; two 4096-wide
        // layers, 20M parameters) and would take 17 s of central differences in the interpreter.
        const std::string stem = entry.path().stem().string();
        if (stem == "deep40_relu" || stem == "wide_relu") continue;
        INFO(entry.path());
        Graph fwd = compileFile(entry.path().string(), {3}).graph;
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
