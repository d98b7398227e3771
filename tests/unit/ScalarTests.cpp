// ScalarTests.cpp — the activation table: every built-in's value, PyTorch's conventions,
// and printing that reparses to the same function.
#include "Activations.h"
#include "Parser.h"

#include <catch2/catch.hpp>

#include <cmath>

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
        scalar::E e = table.convert(*parseExpression(makeSourceFile("e", src)));
        std::string printed = scalar::print(e);
        scalar::E again = table.convert(*parseExpression(makeSourceFile("e", printed)));
        CHECK(scalar::print(again) == printed);
        for (double x : {-1.5, 0.5, 3.0}) CHECK(scalar::eval(again, x) == Approx(scalar::eval(e, x)));
    }
}

TEST_CASE("user activations may call earlier ones and pass their parameters on", "[scalar]") {
    ActivationTable table;
    Module m = parse(makeSourceFile("t.nn", "activation mish(x) = x * tanh(softplus(x))\n"
                                            "activation lr2(x, a=0.2) = 2 * leaky_relu(x, a)\n"));
    table.define(*m.stmts[0]);
    table.define(*m.stmts[1]);
    double x = -1.3;
    CHECK(scalar::eval(table.instantiate({"mish", {}, {}}).formula, x) ==
          Approx(x * std::tanh(std::log1p(std::exp(x)))));
    CHECK(scalar::eval(table.instantiate({"lr2", {}, {}}).formula, x) == Approx(2 * 0.2 * x));
    CHECK(scalar::eval(table.instantiate({"lr2", {0.5}, {}}).formula, x) == Approx(2 * 0.5 * x));
}
