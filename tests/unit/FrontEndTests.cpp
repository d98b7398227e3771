// FrontEndTests.cpp — lexer, parser and sema: what a model means, and what it is refused for.
#include "Layout.h"
#include "Lexer.h"
#include "Parser.h"
#include "Pipeline.h"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

using namespace gradc;

namespace {

Graph build(const std::string& text, int64_t batch = 256) {
    return compileSource("test.nn", text, {batch}).graph;
}

std::string errorOf(const std::string& text) {
    try {
        build(text);
    } catch (const UserError& e) {
        return e.format();
    }
    return "";
}

std::vector<std::string> paramNames(const Graph& g) {
    std::vector<std::string> out;
    for (auto& p : g.params) out.push_back(p.name);
    return out;
}

const char* kSeed = R"(model seed
input 784
dense 512 sigmoid
dense 256 sigmoid
dense 256 sigmoid
dense 128 sigmoid
dense 10
loss cross_entropy
)";

} // namespace

TEST_CASE("lexer splits statements, numbers, operators and comments", "[lexer]") {
    auto toks = lex(makeSourceFile("t.nn", "dense 1e-3 # comment\nx<=2 != .5\n"));
    std::vector<Tok> kinds;
    for (auto& t : toks) kinds.push_back(t.kind);
    CHECK(kinds == std::vector<Tok>{Tok::Ident, Tok::Number, Tok::Newline, Tok::Ident, Tok::Le,
                                    Tok::Number, Tok::NotEq, Tok::Number, Tok::Newline, Tok::End});
    CHECK(toks[1].number == Approx(1e-3));
    CHECK(toks[7].number == Approx(0.5));
    CHECK(toks[3].loc.line == 2);
    CHECK(toks[4].loc.col == 2);
}

TEST_CASE("the seed network has PyTorch's parameter names and 633,226 parameters", "[sema]") {
    Graph g = build(kSeed);
    CHECK(g.model == "seed");
    CHECK(g.parameterCount() == 633226);
    CHECK(paramNames(g) == std::vector<std::string>{
                               "layers.0.weight", "layers.0.bias", "layers.2.weight",
                               "layers.2.bias", "layers.4.weight", "layers.4.bias",
                               "layers.6.weight", "layers.6.bias", "layers.8.weight",
                               "layers.8.bias"});
    CHECK(g[g.params[0].node].shape == Shape{512, 784}); // PyTorch's [out, in]
    CHECK(g[g.output(OutputRole::Logits)].shape == Shape{256, 10});
    CHECK(g[g.output(OutputRole::Loss)].op == Op::CrossEntropy);
    CHECK(verify(g).empty());
    CHECK(g.layers.size() == 9);
    CHECK(g.layers[1].what == "sigmoid");
}

TEST_CASE("the batch size is a compile-time parameter of the graph", "[sema]") {
    Graph g = build(kSeed, 7);
    CHECK(g.batch == 7);
    CHECK(g[0].shape == Shape{7, 784});
    CHECK(g[g.output(OutputRole::Logits)].shape == Shape{7, 10});
}

TEST_CASE("repeat unrolls, continuing PyTorch's numbering, and named layers own their names",
          "[sema]") {
    Graph g = build("input 8\nrepeat 2 {\n  dense 8 relu\n}\nh = dense 4 tanh\nrepeat 2 { "
                    "r = dense 4\n }\ndense 2\nloss cross_entropy\n");
    CHECK(paramNames(g) == std::vector<std::string>{"layers.0.weight", "layers.0.bias",
                                                    "layers.2.weight", "layers.2.bias",
                                                    "h.weight", "h.bias", "r.0.weight",
                                                    "r.0.bias", "r.1.weight", "r.1.bias",
                                                    "layers.4.weight", "layers.4.bias"});
}

TEST_CASE("add with one or two operands, from, and names inside repeat blocks", "[sema]") {
    Graph g = build("input 16\na = dense 16 relu\nb = dense 16 relu\nadd a b\n"
                    "repeat 3 {\n  skip = identity\n  dense 16 relu\n  add skip\n}\n"
                    "dense 4 from a\nloss mse\n");
    int adds = 0;
    for (auto& n : g.nodes) // a map a0 + a1 of two equal shapes (a bias add broadcasts)
        adds += n.op == Op::Map && n.in.size() == 2 && g[n.in[1]].shape == n.shape &&
                n.expr == scalar::make(scalar::Kind::Add, {scalar::arg(0), scalar::arg(1)});
    CHECK(adds == 4);
    // `dense 4 from a` consumes a's value, not the residual chain's.
    const Node& mm = g[g[g.output(OutputRole::Logits)].in[0]];
    REQUIRE(mm.op == Op::MatMulNT);
    CHECK(isActivation(g[mm.in[0]]));
    CHECK(g[g.output(OutputRole::Loss)].op == Op::MSE);
}

TEST_CASE("each loss checks that it fits the output", "[sema]") {
    CHECK(build("input 4\ndense 1\nloss bce\n")[0].shape == Shape{256, 4});
    CHECK_THAT(errorOf("input 4\ndense 3\nloss bce\n"), Catch::Contains("bce needs one logit"));
    CHECK_THAT(errorOf("input 4\ndense 1\nloss cross_entropy\n"),
               Catch::Contains("at least 2 classes"));
    Graph g = build("input 4\ndense 3\nloss cross_entropy\n");
    const Node& target = g[g[g.output(OutputRole::Loss)].in[1]];
    CHECK(target.type == DType::Index);
    CHECK(target.shape == Shape{256});
}

TEST_CASE("batchnorm and init schemes", "[sema]") {
    Graph g = build("input 4\ndense 8 init=kaiming bias=false\nbatchnorm eps=0.001\nsigmoid\n"
                    "dense 2 init=normal(0.5)\nloss cross_entropy\n");
    CHECK(paramNames(g) == std::vector<std::string>{"layers.0.weight", "layers.1.weight",
                                                    "layers.1.bias", "layers.3.weight",
                                                    "layers.3.bias"});
    CHECK(g.params[0].init.scheme == "kaiming");
    CHECK(g.params[1].init.scheme == "constant"); // batchnorm weight starts at 1
    CHECK(g.params[1].init.args == std::vector<double>{1.0});
    CHECK(g.params[3].init.args == std::vector<double>{0.5});
    CHECK(g.params[4].init.scheme == "constant"); // bias of a normal-initialised layer is 0
    bool found = false;
    for (auto& n : g.nodes) {
        if (n.op != Op::BatchNorm) continue;
        found = true;
        CHECK(n.eps == 0.001);
    }
    CHECK(found);
}

TEST_CASE("activations are bound with their parameters", "[sema]") {
    Graph g = build("activation scaled(x, a=2) = a * x\ninput 4\ndense 4 leaky_relu(0.1)\n"
                    "dense 4 leaky_relu\ndense 4 scaled\ndense 4 scaled(3)\ndense 2 elu\n"
                    "loss cross_entropy\n");
    REQUIRE(g.activations.size() == 5);
    CHECK(g.activations[0].name == "leaky_relu(0.1)");
    CHECK(scalar::eval(g.activations[0].formula, -2) == Approx(-0.2));
    CHECK(scalar::eval(g.activations[1].formula, -2) == Approx(-0.02)); // PyTorch's default
    CHECK(scalar::eval(g.activations[2].formula, 5) == Approx(10));
    CHECK(scalar::eval(g.activations[3].formula, 5) == Approx(15));
    CHECK(scalar::eval(g.activations[4].formula, -1) == Approx(std::exp(-1.0) - 1));
}

TEST_CASE("errors point at the offending token", "[diagnostics]") {
    std::string e = errorOf("input 784\na = dense 256 relu\nb = dense 128 relu\nadd a b\n"
                            "dense 10\nloss cross_entropy\n");
    CHECK(e == "test.nn:4:1: error: add: operands have different shapes [256,256] and "
               "[256,128]\n  add a b\n  ^\n");
    e = errorOf("input 784\n\tdense 10 bogus\nloss cross_entropy\n");
    CHECK_THAT(e, Catch::StartsWith("test.nn:2:11: error: unknown activation 'bogus'"));
    CHECK_THAT(e, Catch::EndsWith("\n  \tdense 10 bogus\n  \t         ^\n")); // tabs kept
}

TEST_CASE("a value name is defined once per scope and visible in inner scopes", "[sema]") {
    CHECK_THAT(errorOf("input 4\nh = dense 4\nh = dense 4\ndense 2\nloss mse\n"),
               Catch::Contains("value 'h' is already defined at line 2"));
    CHECK_THAT(errorOf("input 4\nrepeat 2 {\n  inner = dense 4\n}\nadd inner\nloss mse\n"),
               Catch::Contains("unknown value 'inner'"));
}

TEST_CASE("dump --emit=ast prints every construct", "[parser]") {
    ModuleAST m = parse(makeSourceFile("t.nn", "activation f(x, a=1) = -x^2 + a * max(x, 0)\n"
                                            "input 4\nh = dense 4 f(2) init=xavier bias=false\n"
                                            "repeat 2 { batchnorm\n}\nadd h from h\nloss mse\n"));
    CHECK(printAST(m) == "module\n"
                         "  1:1 activation f(x, a=1) = (+ (neg (^ x 2)) (* a (max x 0)))\n"
                         "  2:1 input 4\n"
                         "  3:5 h = dense 4 act=f(2) init=xavier bias=false\n"
                         "  4:1 repeat 2\n"
                         "    4:12 batchnorm eps=1e-05 momentum=0.1\n"
                         "  end\n"
                         "  6:1 add h from h\n"
                         "  7:1 loss mse\n");
}

TEST_CASE("input AxB makes x of any rank, dense acts on the last dimension, flatten", "[frontend][rank]") {
    Graph g = build("input 28x28\ndense 32 relu\nflatten\ndense 10\nloss cross_entropy\n", 4);
    CHECK(g[0].shape == Shape{4, 28, 28});
    CHECK(perExample(g[0].shape) == 784);
    REQUIRE(g.layers.size() == 4);
    CHECK(g.layers[0].what == "linear 28 -> 32");
    CHECK(g.layers[0].out == Shape{4, 28, 32});
    CHECK(g.layers[1].out == Shape{4, 28, 32});
    CHECK(g.layers[2].name == "layers.2");
    CHECK(g.layers[2].in == Shape{4, 28, 32});
    CHECK(g.layers[2].out == Shape{4, 896});
    CHECK(g[g.output(OutputRole::Logits)].shape == Shape{4, 10});
    CHECK(paramNames(g) == std::vector<std::string>{"layers.0.weight", "layers.0.bias", "layers.3.weight", "layers.3.bias"});
    CHECK(build("input 1x28x28\nflatten\ndense 10\nloss cross_entropy\n", 2)[0].shape == Shape{2, 1, 28, 28});
    CHECK(build("input 784\nflatten\ndense 10\nloss cross_entropy\n", 2).layers[0].out == Shape{2, 784});
    // The printed model keeps the spelling.
    CHECK_THAT(printAST(parse(makeSourceFile("t.nn", "input 2x3x4\nflatten\n"))), Catch::Contains("input 2x3x4"));
}

TEST_CASE("tensors of rank 3 reaching the loss, and bad sizes, are the user's errors", "[frontend][rank]") {
    CHECK_THAT(errorOf("input 28x28\ndense 10\nloss cross_entropy\n"),
               Catch::Contains("the loss needs a [batch, outputs] value, got [256,28,10]; use flatten to make it [256,280]"));
    CHECK_THAT(errorOf("input 28x0\ndense 10\nloss cross_entropy\n"), Catch::Contains("input size 0 is out of range"));
    CHECK_THAT(errorOf("input 65536x65536\nflatten\ndense 10\nloss cross_entropy\n"), Catch::Contains("out of range"));
    CHECK_THAT(errorOf("input 28x\ndense 10\nloss cross_entropy\n"), Catch::Contains("28x"));
}

TEST_CASE("conv, pooling and global_avgpool: PyTorch's names, layouts, fans and module numbering",
          "[sema][conv]") {
    Graph g = build("input 3x32x24\nconv 8 5x3 stride=2x1 padding=2x1 relu\nmaxpool 2\nconv 4 3 padding=1 bias=false\n"
                    "avgpool 3x2 stride=1\nglobal_avgpool\ndense 10\nloss cross_entropy\n", 2);
    std::vector<std::string> names;
    for (auto& p : g.params) names.push_back(p.name + shapeString(g[p.node].shape));
    CHECK(names == std::vector<std::string>{"layers.0.weight[8,3,5,3]", "layers.0.bias[8]", "layers.3.weight[4,8,3,3]",
                                            "layers.7.weight[10,4]", "layers.7.bias[10]"});
    CHECK(g.params[0].fanIn == 3 * 5 * 3);  // nn.Conv2d's fans: channels times the kernel's area
    CHECK(g.params[0].fanOut == 8 * 5 * 3);
    CHECK(g.params[1].fanIn == 3 * 5 * 3);  // the bias's bound is the weight's
    std::vector<std::string> layers;
    for (auto& l : g.layers) layers.push_back(l.name + " " + shapeString(l.out));
    // conv, relu, maxpool (stride = window), conv, avgpool, AdaptiveAvgPool2d(1), Flatten, Linear
    CHECK(layers == std::vector<std::string>{"layers.0 [2,8,16,24]", "layers.1 [2,8,16,24]", "layers.2 [2,8,8,12]",
                                             "layers.3 [2,4,8,12]", "layers.4 [2,4,6,11]", "layers.5 [2,4,1,1]",
                                             "layers.6 [2,4]", "layers.7 [2,10]"});
    // The activation may come before, among or after the options; the options in any order.
    for (const char* conv : {"conv 2 3x3 relu padding=1 bias=false", "conv 2 3x3 padding=1 relu bias=false",
                             "conv 2 3x3 bias=false padding=1x1 relu"}) {
        INFO(conv);
        Graph c = build(std::string("input 1x4x4\n") + conv + "\nflatten\ndense 2\nloss mse\n", 2);
        CHECK(printGraph(c).find("conv2d[window=3x3/s1x1/p1x1]") != std::string::npos);
        CHECK(c.layers.at(1).what == "relu");
        CHECK(c.params.size() == 3);
    }
    CHECK_THAT(errorOf("input 1x4x4\nconv 2 3x3 relu relu\nflatten\ndense 2\nloss mse\n"),
               Catch::Contains("unexpected 'relu'; expected the end of the statement"));
    CHECK_THAT(errorOf("input 1x4x4\nconv 2 3x3 stride=1 stride=2\nflatten\ndense 2\nloss mse\n"),
               Catch::Contains("'stride' given twice"));
    CHECK_THAT(errorOf("input 1x4x4\nmaxpool 2 bias=false\nflatten\ndense 2\nloss mse\n"),
               Catch::Contains("unknown option 'bias' for maxpool (expected stride= or padding=)"));
}

TEST_CASE("batchnorm after a [B,C,H,W] value is BatchNorm2d: per-channel parameters and buffers",
          "[sema][conv]") {
    const char* text = "input 1x6x6\nconv 4 3x3\nbatchnorm momentum=0.2\nrelu\nflatten\ndense 2\nloss cross_entropy\n";
    Graph train = build(text, 2);
    CHECK(train[train.params.at(2).node].shape == Shape{4}); // layers.1.weight: one per channel
    REQUIRE(train.buffers.size() == 2);
    CHECK(train.buffers[0].name == "layers.1.running_mean");
    CHECK(train.buffers[0].size == 4);
    CHECK(train.buffers[1].momentum == 0.2);
    Layout l = computeLayout(train);
    CHECK(l.at(Role::NormMean, "layers.1").shape == Shape{4}); // the batch statistics per channel
    Graph eval = compileSource("t.nn", text, {2, /*eval=*/true}).graph;
    CHECK_THAT(printGraph(eval), Catch::Contains("param \"layers.1.running_var\" : real[4]") &&
                                     Catch::Contains("reshape %7 : real[4,1,1]"));
}

TEST_CASE("the limits of the model's text: 16 parameters of a definition, 16 arguments of a call, 16 MiB of file",
          "[sema]") {
    auto list = [](const char* first, int n, const char* each) {
        std::string s = first;
        for (int i = 1; i < n; ++i) s += fmt::format(", {}{}", each, i) + (each[0] == 'p' ? "=1" : "");
        return s;
    };
    const std::string tail = "input 4\ndense 2 f\nloss cross_entropy\n";
    CHECK(errorOf("activation f(" + list("x", 16, "p") + ") = x\n" + tail).empty());
    CHECK_THAT(errorOf("activation f(" + list("x", 17, "p") + ") = x\n" + tail),
               Catch::StartsWith("test.nn:1:") && Catch::Contains("error: too many parameters"));
    CHECK_THAT(errorOf("activation f(x) = max(" + list("x", 17, "") + ")\n" + tail),
               Catch::Contains("error: too many arguments"));
    CHECK_THAT(errorOf("input 4\ndense 2 leaky_relu(" + list("1", 17, "") + ")\nloss cross_entropy\n"),
               Catch::StartsWith("test.nn:2:") && Catch::Contains("error: too many arguments"));
    // A file over the limit is refused as it is read, naming the file.
    const std::string path = (std::filesystem::temp_directory_path() /
                              fmt::format("gradc-frontend-{}.nn", ::getpid())).string();
    {
        std::ofstream out(path);
        const std::string comment = "# " + std::string(1000, 'x') + "\n";
        for (size_t n = 0; n <= kMaxSourceBytes; n += comment.size()) out << comment;
    }
    std::string error;
    try {
        readSourceFile(path);
    } catch (const UserError& e) {
        error = e.format();
    }
    std::filesystem::remove(path);
    CHECK_THAT(error, Catch::StartsWith(path + ": error: model file is ") &&
                          Catch::Contains("bytes; the limit is 16777216 bytes"));
}
