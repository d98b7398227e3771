// OpTableTests.cpp — the op table (Ops.def): attributes reach the printer, the verifier and
// the CSE key; the map op's shape rule, broadcasting, operand pruning and gradients.
#include "Autodiff.h"
#include "Kernels.h"
#include "Layout.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>

using namespace gradc;

namespace {

scalar::Expr a(int i) { return scalar::arg(i); }
scalar::Expr binary(scalar::Kind op, scalar::Expr l, scalar::Expr r) { return scalar::make(op, {std::move(l), std::move(r)}); }

struct Builder {
    Graph g;
    Builder() { g.model = "t", g.batch = 4; }
    ValueId leaf(Op op, const std::string& name, const Shape& shape) { return addLeaf(g, op, name, shape); }
    ValueId batchnorm(ValueId x, ValueId w, ValueId b, double eps) {
        Node n = makeNode(Op::BatchNorm, {}, {x, w, b});
        n.eps = eps;
        return g.add(std::move(n));
    }
    KernelProgram program() { return buildKernels(g, "forward", g.outputs, computeLayout(g), 8, {}); }
    std::string kernels() { return printKernels(program()); }
    size_t count(Op op) {
        size_t k = 0;
        for (auto& kernel : program().kernels) k += kernel.kind == Kernel::Kind::Op && kernel.op == op;
        return k;
    }
};

/// The line that prints node v in printGraph.
std::string line(const Graph& g, ValueId v) {
    std::string text = printGraph(g), start = "  %" + std::to_string(v) + " = ";
    size_t at = text.find(start);
    REQUIRE(at != std::string::npos);
    return text.substr(at + start.size(), text.find('\n', at) - at - start.size());
}

} // namespace

TEST_CASE("two nodes that differ only in an attribute are neither merged nor printed alike",
          "[ir][cse]") {
    for (double eps2 : {1e-5, 1e-3}) {
        Builder b;
        ValueId x = b.leaf(Op::Input, "x", {4, 3});
        ValueId w = b.leaf(Op::Param, "w", {3}), beta = b.leaf(Op::Param, "beta", {3});
        ValueId n1 = b.batchnorm(x, w, beta, 1e-5), n2 = b.batchnorm(x, w, beta, eps2);
        b.g.outputs = {{OutputRole::LayerOutput, "a", n1}, {OutputRole::LayerOutput, "b", n2}};
        INFO(printGraph(b.g));
        CHECK(line(b.g, n1) == "batchnorm[eps=1e-05] %0, %1, %2 : real[4,3]");
        // Equal attributes: one kernel (common subexpression); different ones: two.
        CHECK((line(b.g, n1) == line(b.g, n2)) == (eps2 == 1e-5));
        CHECK(b.count(Op::BatchNorm) == (eps2 == 1e-5 ? 1 : 2));
    }
    // Maps: the expression and the activation index are attributes too.
    Builder b;
    ValueId x = b.leaf(Op::Input, "x", {4, 3}), y = b.leaf(Op::Param, "y", {4, 3});
    ValueId sum = addMap(b.g, binary(scalar::Kind::Add, a(0), a(1)), {x, y}, {});
    ValueId product = addMap(b.g, binary(scalar::Kind::Mul, a(0), a(1)), {x, y}, {});
    CHECK(line(b.g, sum) == "map[expr=a0 + a1] %0, %1 : real[4,3]");
    CHECK(line(b.g, product) == "map[expr=a0 * a1] %0, %1 : real[4,3]");
    b.g.outputs = {{OutputRole::LayerOutput, "a", sum}, {OutputRole::LayerOutput, "b", product}};
    std::string k = b.kernels();
    CHECK_THAT(k, Catch::Contains("layer:a[r,c] = a0 + a1") && Catch::Contains("layer:b[r,c] = a0 * a1"));
    b.g.activations.push_back(ActivationTable().instantiate({"tanh", {}, {}}));
    b.g.activations.push_back(ActivationTable().instantiate({"tanh", {}, {}}));
    ValueId t0 = addActivation(b.g, 0, x, {}), t1 = addActivation(b.g, 1, x, {});
    CHECK(line(b.g, t0) == "map[fn=0, expr=tanh(a0)] %0 : real[4,3]");
    CHECK(line(b.g, t0) != line(b.g, t1));
    CHECK_FALSE(sameAttrs(b.g[t0], b.g[t1]));
    CHECK(sameAttrs(b.g[sum], b.g[addAdd(b.g, y, x, {})]));
    CHECK(hashAttrs(b.g[sum]) != hashAttrs(b.g[product]));
}

TEST_CASE("the verifier rejects attributes an op does not declare and maps that do not fit",
          "[ir][verify]") {
    Builder b;
    ValueId x = b.leaf(Op::Input, "x", {4, 3});
    ValueId w = b.leaf(Op::Param, "w", {2, 3});
    b.g.add(makeNode(Op::MatMulNT, {}, {x, w}));
    REQUIRE(verify(b.g).empty());
    b.g.nodes.back().eps = 0.5;
    CHECK(verify(b.g) == "%2: matmul_nt has attribute eps, which it does not declare");
    b.g.nodes.back().eps = 0;
    b.g.nodes.back().fn = 3;
    CHECK_THAT(verify(b.g), Catch::Contains("attribute fn"));
    b.g.nodes.back().fn = -1;

    ValueId m = addMap(b.g, binary(scalar::Kind::Mul, a(0), a(1)), {x, x}, {});
    b.g.nodes[m].expr = binary(scalar::Kind::Mul, a(0), a(2));
    CHECK(verify(b.g) == "%3: map: expression uses a2 but has 2 operands");
    b.g.nodes[m].expr = scalar::make(scalar::Kind::Exp, {scalar::var()});
    CHECK_THAT(verify(b.g), Catch::Contains("must be in operands a0, a1, ... only"));
    b.g.nodes[m].expr = nullptr;
    CHECK(verify(b.g) == "%3: map: has no expression");
}

TEST_CASE("map broadcasts an operand whose shape is a suffix of the result's", "[ir][map]") {
    Builder b;
    ValueId x = b.leaf(Op::Input, "x", {2, 3}), s = b.leaf(Op::Param, "s", {3});
    ValueId wrong = b.leaf(Op::Param, "wrong", {2});
    // a1 * a0 + a2 with the [3] operand first: the result takes the widest operand's shape.
    ValueId m = addMap(b.g, binary(scalar::Kind::Add, binary(scalar::Kind::Mul, a(1), a(0)), a(2)), {s, x, s}, {});
    CHECK(b.g[m].shape == Shape{2, 3});
    CHECK(b.g[m].in.size() == 3);
    Bindings bind{{"x", {{2, 3}, {1, 2, 3, 4, 5, 6}}}, {"s", {{3}, {10, 20, 30}}}, {"wrong", {{2}, {0, 0}}}};
    CHECK(interpret(b.g, bind)[m].data == std::vector<double>{20, 60, 120, 50, 120, 210});
    CHECK_THAT(errorOf([&] { addMap(b.g, binary(scalar::Kind::Add, a(0), a(1)), {x, wrong}, {}); }),
               Catch::Contains("map: operand 1 has shape [2], which does not broadcast with [2,3]"));
    CHECK_THAT(errorOf([&] { addMul(b.g, x, s, {}); }),
               Catch::Contains("mul: operands have different shapes [2,3] and [3]"));
    // Operands the expression does not use are dropped and the rest renumbered.
    ValueId pruned = addMap(b.g, binary(scalar::Kind::Mul, a(2), scalar::constant(2)), {x, wrong, s}, {});
    CHECK(b.g[pruned].in == std::vector<ValueId>{s});
    CHECK(scalar::print(b.g[pruned].expr) == "a0 * 2");
}

TEST_CASE("mul's gradients are g * b and g * a, and a bias add's is summed over the batch",
          "[autodiff][map]") {
    Builder b;
    b.g.lossKind = "mse";
    ValueId x = b.leaf(Op::Input, "x", {4, 3});
    ValueId p = b.leaf(Op::Param, "p", {4, 3}), q = b.leaf(Op::Param, "q", {4, 3}), bias = b.leaf(Op::Param, "bias", {3});
    ValueId prod = addMul(b.g, p, q, {});
    ValueId z = addBiasAdd(b.g, addAdd(b.g, prod, x, {}), bias, {});
    ValueId loss = b.g.add(makeNode(Op::MSE, {}, {z, b.leaf(Op::Input, "target", {4, 3})}));
    b.g.outputs = {{OutputRole::Logits, "", z}, {OutputRole::Loss, "", loss}};
    Graph grad = differentiate(b.g);
    const Node &dp = grad[grad.output(OutputRole::Grad, "p")], &dq = grad[grad.output(OutputRole::Grad, "q")];
    const Node& dbias = grad[grad.output(OutputRole::Grad, "bias")];
    REQUIRE(dp.op == Op::Map);
    REQUIRE(dq.op == Op::Map);
    // d/dp (p * q) = g * q, d/dq = g * p: each reads the other factor and the incoming gradient.
    CHECK(dp.in[0] == q);
    CHECK(dq.in[0] == p);
    CHECK(dp.in[1] == dq.in[1]);
    CHECK(grad[dp.in[1]].op == Op::MSEGrad); // the add and the bias add pass g through unchanged
    CHECK(scalar::print(dp.expr) == scalar::print(dq.expr));
    CHECK(dbias.op == Op::SumRows);
    CHECK(dbias.in[0] == dp.in[1]);
    std::mt19937 rng(9);
    Bindings bind = randomBindings(b.g, rng);
    auto out = interpretOutputs(grad, bind);
    std::vector<Tensor> values = interpret(grad, bind);
    const Tensor &pv = bind.at("p"), &qv = bind.at("q"), &dzv = values[dp.in[1]];
    for (size_t i = 0; i < pv.data.size(); ++i) {
        CHECK(out.at("grad:p").data[i] == Approx(dzv.data[i] * qv.data[i]).epsilon(1e-12));
        CHECK(out.at("grad:q").data[i] == Approx(dzv.data[i] * pv.data[i]).epsilon(1e-12));
    }
}

TEST_CASE("an operand a map only compares gets a zero gradient of its own shape", "[autodiff][map]") {
    Builder b;
    b.g.lossKind = "mse";
    ValueId x = b.leaf(Op::Input, "x", {4, 3}), gate = b.leaf(Op::Param, "gate", {3});
    using scalar::Kind;
    // select(gate > 0, x, 0): the gate, broadcast over the batch, only decides.
    scalar::Expr e = scalar::make(Kind::Select, {scalar::make(Kind::Gt, {a(0), scalar::constant(0)}), a(1), scalar::constant(0)});
    ValueId z = addMap(b.g, e, {gate, x}, {});
    ValueId loss = b.g.add(makeNode(gradc::Op::MSE, {}, {z, b.leaf(gradc::Op::Input, "target", {4, 3})}));
    b.g.outputs = {{OutputRole::Logits, "", z}, {OutputRole::Loss, "", loss}};
    Graph grad = differentiate(b.g, {/*inputGradient=*/true});
    REQUIRE(verify(grad).empty());
    const Node& dgate = grad[grad.output(OutputRole::Grad, "gate")];
    CHECK(dgate.op == gradc::Op::Zeros);
    CHECK(dgate.shape == Shape{3});
    std::mt19937 rng(10);
    Bindings bind = randomBindings(b.g, rng);
    bind.at("gate").data = {1, -1, 2};
    auto out = interpretOutputs(grad, bind);
    const std::vector<double>& dx = out.at("grad:x").data;
    for (size_t i = 0; i < dx.size(); ++i) CHECK((dx[i] == 0) == (i % 3 == 1)); // where the gate is shut
}

TEST_CASE("map broadcasts as numpy: dimensions of 1 repeat, and the result is the operands' broadcast",
          "[ir][map]") {
    Builder b;
    ValueId x = b.leaf(Op::Input, "x", {2, 3, 1, 2}), c = b.leaf(Op::Param, "c", {3, 1, 1});
    ValueId row = b.leaf(Op::Param, "row", {1, 4, 1}), bad = b.leaf(Op::Param, "bad", {2, 1, 1});
    ValueId m = addMap(b.g, binary(scalar::Kind::Add, binary(scalar::Kind::Mul, a(0), a(1)), a(2)), {x, c, row}, {});
    CHECK(b.g[m].shape == Shape{2, 3, 4, 2}); // neither operand's own shape
    CHECK(line(b.g, m) == "map[expr=a0 * a1 + a2] %0, %1, %2 : real[2,3,4,2]");
    CHECK_THAT(errorOf([&] { addMap(b.g, binary(scalar::Kind::Add, a(0), a(1)), {x, bad}, {}); }),
               Catch::Contains("map: operand 1 has shape [2,1,1], which does not broadcast with [2,3,1,2]"));
    // sum_to: the target must broadcast to the operand; the shape rule names both.
    Node s = makeNode(Op::SumTo, {}, {m});
    s.shape = {3, 1, 1};
    ValueId summed = b.g.add(s);
    CHECK(line(b.g, summed) == "sum_to %4 : real[3,1,1]");
    s.shape = {3, 2};
    CHECK_THAT(errorOf([&] { b.g.add(s); }), Catch::Contains("sum_to: cannot sum [2,3,4,2] to [3,2]"));
    Bindings bind{{"x", {{2, 3, 1, 2}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}}}, {"c", {{3, 1, 1}, {1, 10, 100}}},
                  {"row", {{1, 4, 1}, {0, 1, 2, 3}}}, {"bad", {{2, 1, 1}, {0, 0}}}};
    std::vector<Tensor> v = interpret(b.g, bind);
    CHECK(v[m].data[0] == 1);                  // x[0,0,0,0] c[0] + row[0]
    CHECK(v[m].data[7] == 2 + 3);              // [0,0,3,1]: x[0,0,0,1] c[0] + row[3]
    CHECK(v[m].data[(1 * 3 + 2) * 8 + 5] == 12 * 100 + 2); // [1,2,2,1]: x[1,2,0,1] c[2] + row[2]
    std::vector<double> totals(3); // per channel, over the batch and the positions
    for (size_t i = 0; i < v[m].data.size(); ++i) totals[(i / 8) % 3] += v[m].data[i];
    CHECK(v[summed].data == totals);
}

TEST_CASE("the window attribute is printed, compared and hashed: two convolutions that differ only in "
          "stride are not merged", "[ir][cse][conv]") {
    Builder b;
    ValueId x = b.leaf(Op::Input, "x", {2, 3, 8, 8}), w = b.leaf(Op::Param, "w", {4, 3, 3, 3});
    auto conv = [&](int32_t stride, int32_t pad) {
        Node n = makeNode(Op::Conv2d, {}, {x, w});
        n.window = {3, 3, stride, stride, pad, pad};
        return b.g.add(std::move(n));
    };
    ValueId c1 = conv(1, 1), c2 = conv(2, 1), c3 = conv(1, 1);
    CHECK(line(b.g, c1) == "conv2d[window=3x3/s1x1/p1x1] %0, %1 : real[2,4,8,8]");
    CHECK(line(b.g, c2) == "conv2d[window=3x3/s2x2/p1x1] %0, %1 : real[2,4,4,4]");
    CHECK_FALSE(sameAttrs(b.g[c1], b.g[c2]));
    CHECK(hashAttrs(b.g[c1]) != hashAttrs(b.g[c2]));
    CHECK(sameAttrs(b.g[c1], b.g[c3]));
    CHECK(hashAttrs(b.g[c1]) == hashAttrs(b.g[c3]));
    // The window is an attribute of the ops that declare it only.
    REQUIRE(verify(b.g).empty());
    Node mm = makeNode(Op::Reshape, {}, {x});
    mm.shape = {2, 192};
    mm.window = {1, 1, 1, 1, 0, 0};
    b.g.nodes.push_back(mm);
    CHECK_THAT(verify(b.g), Catch::Contains("reshape has attribute window, which it does not declare"));
    b.g.nodes.pop_back();
    // Shape rules name both shapes.
    ValueId w5 = b.leaf(Op::Param, "w5", {4, 2, 3, 3});
    Node bad = makeNode(Op::Conv2d, {}, {x, w5});
    bad.window = {3, 3, 1, 1, 0, 0};
    CHECK_THAT(errorOf([&] { b.g.add(bad); }), Catch::Contains("conv2d: weight [4,2,3,3] does not fit 3 input channels"));
    bad.in = {x, w};
    bad.window = {3, 3, 1, 1, 0, 0};
    bad.window.kh = 9; // the weight is 3x3
    CHECK_THAT(errorOf([&] { b.g.add(bad); }), Catch::Contains("weight [4,3,3,3] does not fit 3 input channels and a 9x3 kernel"));
    Node pool = makeNode(Op::MaxPool2d, {}, {x});
    pool.window = {9, 9, 1, 1, 0, 0};
    CHECK_THAT(errorOf([&] { b.g.add(pool); }),
               Catch::Contains("maxpool2d: the 9x9 window is larger than the input [2,3,8,8] padded to 8x8"));
    pool.window = {2, 2, 2, 2, 2, 0};
    CHECK_THAT(errorOf([&] { b.g.add(pool); }), Catch::Contains("padding 2x0 is more than half the 2x2 window"));
    // Gradients of a strided convolution: the input's shape is the node's own, and checked.
    Node gx = makeNode(Op::Conv2dGradX, {}, {c2, w});
    gx.window = b.g[c2].window;
    gx.shape = {2, 3, 8, 8};
    CHECK(b.g[b.g.add(gx)].shape == Shape{2, 3, 8, 8});
    gx.shape = {2, 3, 8, 7}; // (7 + 2 - 3) / 2 + 1 = 4 too: a stride hides a column
    CHECK(b.g[b.g.add(gx)].shape == Shape{2, 3, 8, 7});
    gx.shape = {2, 3, 8, 10};
    CHECK_THAT(errorOf([&] { b.g.add(gx); }), Catch::Contains("gradient [2,4,4,4] is not the convolution's output for input [2,3,8,10]"));
}
