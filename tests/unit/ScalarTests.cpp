// ScalarTests.cpp — the activation table: every built-in's value, PyTorch's conventions,
// and printing that reparses to the same function.
#include "Activations.h"
#include "Parser.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <thread>

using namespace gradc;

static double act(const std::string& name, double x, std::vector<double> args = {}) {
    static ActivationTable table;
    return scalar::eval(table.instantiate({name, args, {}}).formula, x);
}

TEST_CASE("sigmoid is 1/(1+exp(-x)), not the seed post's 1/(1+exp(x))", "[scalar]") {
    CHECK(act("sigmoid", 2) == Approx(0.8807970779778823));
    CHECK(act("sigmoid", -2) == Approx(0.11920292202211755));
    CHECK(act("sigmoid", 0) == 0.5);
}

TEST_CASE("built-in activations match their closed forms", "[scalar]") {
    for (double x : {-3.0, -0.5, 0.25, 2.0}) {
        INFO("x = " << x);
        double s = 1 / (1 + std::exp(-x));
        CHECK(act("identity", x) == x);
        CHECK(act("tanh", x) == Approx(std::tanh(x)));
        CHECK(act("relu", x) == (x > 0 ? x : 0));
        CHECK(act("leaky_relu", x) == Approx(x > 0 ? x : 0.01 * x));
        CHECK(act("leaky_relu", x, {0.1}) == Approx(x > 0 ? x : 0.1 * x));
        CHECK(act("elu", x) == Approx(x > 0 ? x : std::exp(x) - 1));
        CHECK(act("elu", x, {0.5}) == Approx(x > 0 ? x : 0.5 * (std::exp(x) - 1)));
        CHECK(act("swish", x) == Approx(x * s));
        CHECK(act("silu", x) == Approx(x * s));
        CHECK(act("gelu", x) == Approx(0.5 * x * (1 + std::erf(x / std::sqrt(2.0)))));
        CHECK(act("softplus", x) == Approx(std::log1p(std::exp(x))));
    }
}

TEST_CASE("activations stay finite where their math is finite", "[scalar]") {
    CHECK(act("sigmoid", -800) == 0);
    CHECK(act("sigmoid", 800) == 1);
    CHECK(act("softplus", 800) == 800);
    CHECK(act("softplus", -800) == 0);
    CHECK(act("elu", -800) == -1);
    CHECK(act("swish", -800) == 0);
}

TEST_CASE("printed expressions reparse to the same function", "[scalar]") {
    ActivationTable table;
    for (const char* src : {"x - (x - 1)", "(x - 1) / (x * 2)", "2 ^ (x ^ 2)", "(2 ^ x) ^ 2",
                            "-x ^ 2", "(-x) ^ 2", "select(x > 0, x, 0.01 * x)",
                            "x / (1 + abs(x))", "min(x, 1) * max(x, -1) - exp(-x)",
                            "(x < 1) == (x < 2)", "x ^ -1"}) {
        INFO(src);
        scalar::Expr e = table.convert(*parseExpression(makeSourceFile("e", src)));
        std::string printed = scalar::print(e);
        scalar::Expr again = table.convert(*parseExpression(makeSourceFile("e", printed)));
        CHECK(scalar::print(again) == printed);
        for (double x : {-1.5, 0.5, 3.0}) CHECK(scalar::eval(again, x) == Approx(scalar::eval(e, x)));
    }
}

TEST_CASE("user activations may call earlier ones and pass their parameters on", "[scalar]") {
    ActivationTable table;
    ModuleAST m = parse(makeSourceFile("t.nn", "activation mish(x) = x * tanh(softplus(x))\n"
                                            "activation lr2(x, a=0.2) = 2 * leaky_relu(x, a)\n"));
    table.define(*m.stmts[0]);
    table.define(*m.stmts[1]);
    double x = -1.3;
    CHECK(scalar::eval(table.instantiate({"mish", {}, {}}).formula, x) ==
          Approx(x * std::tanh(std::log1p(std::exp(x)))));
    CHECK(scalar::eval(table.instantiate({"lr2", {}, {}}).formula, x) == Approx(2 * 0.2 * x));
    CHECK(scalar::eval(table.instantiate({"lr2", {0.5}, {}}).formula, x) == Approx(2 * 0.5 * x));
}

// ---- Expressions are DAGs (issue 13, item 4) and NaN is never hidden (items 6a, 6b).

namespace {

/// A model text defining f0 .. fN with `body` ("{p}" stands for the previous name), using
/// fN in a dense layer when `use` is set.
std::string chainModel(int n, const std::string& body, bool use) {
    std::string text = "activation f0(x) = x\n";
    for (int i = 1; i <= n; ++i) {
        std::string b = body, prev = "f" + std::to_string(i - 1);
        for (size_t at; (at = b.find("{p}")) != std::string::npos;) b.replace(at, 3, prev);
        text += "activation f" + std::to_string(i) + "(x) = " + b + "\n";
    }
    return text + "input 4\ndense 3" + (use ? " f" + std::to_string(n) : std::string()) + "\ndense 3\nloss cross_entropy\n";
}

ActivationTable tableOf(const std::string& text) {
    ActivationTable table;
    ModuleAST m = parse(makeSourceFile("chain.nn", text));
    for (auto& s : m.stmts)
        if (s->kind == Stmt::Kind::ActivationDef) table.define(*s);
    return table;
}

bool sameValue(double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

} // namespace

TEST_CASE("equal expressions are one node", "[scalar][dag]") {
    using scalar::Kind;
    scalar::Expr a = scalar::make(Kind::Add, {scalar::var(), scalar::constant(1)});
    scalar::Expr b = scalar::make(Kind::Add, {scalar::var(), scalar::constant(1)});
    CHECK(a == b);
    CHECK(scalar::constant(std::nan("")) == scalar::constant(std::nan("")));
    CHECK(scalar::constant(0.0) != scalar::constant(-0.0)); // 1/x tells them apart
    CHECK(scalar::make(Kind::Sub, {a, b}) != scalar::constant(0));
}

TEST_CASE("definitions that double the previous one stay linear", "[scalar][dag]") {
    // f_i = f_{i-1} + f_{i-1}, 25 times: a tree of 2^25 leaves, a DAG of 27 nodes.
    ActivationTable table = tableOf(chainModel(25, "{p}(x) + {p}(x)", false));
    scalar::Expr f = table.instantiate({"f25", {}, {}}).formula;
    CHECK(scalar::dagSize(f) == 26);
    CHECK(scalar::eval(f, 1.5) == 1.5 * 33554432);
    CHECK(scalar::print(scalar::simplify(f)) == "33554432 * x");
    CHECK(scalar::eval(scalar::derivative(f), 0.3) == 33554432);

    // f_i = f_{i-1} * sigmoid(f_{i-1}): nothing simplifies; printing names what is shared.
    ActivationTable t2 = tableOf(chainModel(25, "{p}(x) * sigmoid({p}(x))", false));
    scalar::Expr g = t2.instantiate({"f25", {}, {}}).formula;
    CHECK(scalar::dagSize(g) == 51);
    scalar::Expr dg = scalar::derivative(g);
    CHECK(scalar::dagSize(dg) < 600);
    std::string printed = scalar::print(dg);
    CHECK(printed.size() < 20000);
    CHECK(printed.find("  where t1 = ") != std::string::npos);
    // The derivative is right: central differences at a point where nothing saturates.
    double x = 0.7, h = 1e-6;
    CHECK(scalar::eval(dg, x) == Approx((scalar::eval(g, x + h) - scalar::eval(g, x - h)) / (2 * h)).epsilon(1e-5));
}

TEST_CASE("a chain of 20,000 definitions neither recurses nor goes quadratic", "[scalar][dag]") {
    ActivationTable table = tableOf(chainModel(20000, "{p}(x) + 1", false));
    CHECK_THROWS_WITH(table.instantiate({"f20000", {}, {}}),
                      Catch::Contains("has 20002 operations once its calls are expanded; the limit is 10000"));
    scalar::Expr f = table.instantiate({"f9000", {}, {}}).formula; // x, 1 and 9000 additions
    CHECK(scalar::dagSize(f) == 9002);
    CHECK(scalar::eval(f, 0.5) == 9000.5);
    CHECK(scalar::print(scalar::derivative(f)) == "1");
    CHECK(scalar::print(f).size() == std::string("x").size() + 9000 * std::string(" + 1").size());
    scalar::Expr g = scalar::vjp(f);
    CHECK(scalar::print(g) == "g");
}

TEST_CASE("definitions whose expansion grows without bound are refused at their line", "[scalar][dag]") {
    // f_i(x) = f_{i-1}(x + 1) copies f_{i-1} each time: quadratic in all.
    std::string text = chainModel(5000, "{p}(x + 1)", false);
    try {
        tableOf(text);
        FAIL("no error");
    } catch (const UserError& e) {
        std::string m = e.what();
        INFO(m);
        CHECK(m.find("is too large: expanding the activations defined so far takes more than 250000 steps") != std::string::npos);
    }
}

TEST_CASE("the simplifier never turns NaN or Inf into a number", "[scalar][nan]") {
    ActivationTable table;
    const double nan = std::nan(""), inf = INFINITY;
    for (const char* src : {"x + 0/0", "x - x", "x * 0", "0 * x", "x / x", "0 / x", "log(x) - log(x)",
                            "x * 0 + 1", "(x - x) * 2 + x / x", "select(x > 0, x - x, 0 * x)", "x ^ 0",
                            "x ^ 1", "x * 1", "x / 2", "--x", "-(x - 1)", "x + x", "0 - x", "x - 0",
                            "min(x, 1) + max(x, 0)", "x * x * 3 * 2", "abs(x) / abs(x)", "exp(x) - exp(x)",
                            "sqrt(x) * 0", "x / 0", "(x * 0) / (x * 0)"}) {
        scalar::Expr e = table.convert(*parseExpression(makeSourceFile("e", src)));
        scalar::Expr s = scalar::simplify(e);
        for (double x : {nan, inf, -inf, 0.0, -2.5, 3.0, 1e308}) {
            INFO(src << " -> " << scalar::print(s) << " at " << x);
            CHECK(sameValue(scalar::eval(s, x), scalar::eval(e, x)));
        }
    }
    // The example: the compiled function is NaN, as `gradc act` says.
    scalar::Expr bad = scalar::simplify(table.convert(*parseExpression(makeSourceFile("e", "x + 0/0"))));
    CHECK(std::isnan(scalar::eval(bad, 1)));
    CHECK(scalar::print(bad) == "x + 0 / 0");
}

TEST_CASE("built-ins and min/max propagate NaN, relu's backward masks as PyTorch's", "[scalar][nan]") {
    ActivationTable table;
    const double nan = std::nan("");
    for (const char* name : {"relu", "leaky_relu", "elu", "gelu", "silu", "swish", "softplus", "sigmoid", "tanh", "identity"}) {
        INFO(name);
        CHECK(std::isnan(scalar::eval(table.instantiate({name, {}, {}}).formula, nan)));
    }
    CHECK(std::isnan(scalar::eval(table.convert(*parseExpression(makeSourceFile("e", "max(x, 0)"))), nan)));
    CHECK(std::isnan(scalar::eval(table.convert(*parseExpression(makeSourceFile("e", "min(0, x)"))), nan)));
    scalar::Expr relu = scalar::vjp(table.instantiate({"relu", {}, {}}).formula);
    CHECK(scalar::print(relu) == "select(x <= 0, 0, g)");
    CHECK(scalar::eval(relu, -1, 0, nan) == 0);  // threshold_backward: 0 whatever the gradient
    CHECK(std::isnan(scalar::eval(relu, 2, 0, nan)));
    CHECK(scalar::eval(relu, nan, 0, 1) == 1);   // PyTorch's relu'(NaN) is 1
    scalar::Expr leaky = scalar::vjp(table.instantiate({"leaky_relu", {}, {}}).formula);
    CHECK(std::isnan(scalar::eval(leaky, -1, 0, nan))); // a product: NaN as in PyTorch
}

TEST_CASE("expressions are built, shared and released from several threads at once", "[scalar][dag][threads]") {
    // The hash-consing table is process-wide: Sessions compile on their own threads.
    auto build = [] {
        scalar::Expr f = scalar::var();
        for (int i = 0; i < 300; ++i)
            f = scalar::make(scalar::Kind::Add, {scalar::make(scalar::Kind::Mul, {f, scalar::constant(i % 5)}), scalar::var()});
        return scalar::print(scalar::derivative(f));
    };
    const std::string want = build();
    std::vector<std::string> got(4);
    std::vector<std::thread> threads;
    for (size_t t = 0; t < got.size(); ++t)
        threads.emplace_back([&, t] {
            for (int k = 0; k < 20; ++k) got[t] = build();
        });
    for (auto& t : threads) t.join();
    for (auto& g : got) CHECK(g == want);
}
