// CpuBackendTests.cpp — the CPU backend's contracts that the end-to-end tests do not name:
// the entry ABI (EntryAbi.h) as the lowered module has it and as the compiled update step
// reads it, and the kernel labels that `gradc bench --profile` prints.
#include "Autodiff.h"
#include "Codegen.h"
#include "Layout.h"
#include "EntryAbi.h"
#include "Execute.h"
#include "Kernels.h"
#include "Optimizer.h"
#include "Pipeline.h"
#include "TestUtil.h"

#include <catch2/catch.hpp>

#include <array>
#include <cstdlib>
#include <filesystem>
#include <sstream>

using namespace gradc;
namespace fs = std::filesystem;

namespace {

Graph modelFile(const std::string& name, int64_t batch) {
    return compileFile(std::string(GRADC_SOURCE_DIR "/models/") + name + ".nn", {batch}).graph;
}

/// The lines of printed kernel programs (printKernels, `gradc dump --emit=kernels`) that
/// start a kernel ("  k3: ..."), without the indentation.
std::vector<std::string> kernelHeadLines(const std::string& printed) {
    std::vector<std::string> lines;
    std::istringstream in(printed);
    for (std::string line; std::getline(in, line);)
        if (line.rfind("  k", 0) == 0) lines.push_back(line.substr(2));
    return lines;
}

std::vector<std::string> labels(const KernelProgram& p) {
    std::vector<std::string> v;
    for (size_t i = 0; i < p.kernels.size(); ++i) v.push_back(kernelLabel(p, i));
    return v;
}

} // namespace

TEST_CASE("the lowered entry points take the arguments EntryAbi.h lists", "[jit][abi]") {
    STATIC_REQUIRE(size_t(HyperSlot::Count) == std::tuple_size_v<Hyper>); // the runtime fills the same slots
    // The signatures as LLVM prints them: every pointer noalias, update's range two i64.
    Graph g = modelFile("seed_relu", 4);
    const std::string ir = emitModule(g, CodegenOptions{}, "llvm-unoptimised");
    auto arguments = [&](const std::string& symbol) {
        const std::string head = "define void @" + symbol + "(";
        size_t at = ir.find(head);
        REQUIRE(at != std::string::npos);
        at += head.size();
        std::vector<std::string> args;
        std::istringstream in(ir.substr(at, ir.find(')', at) - at));
        for (std::string a; std::getline(in, a, ',');) args.push_back(a.substr(a.find_first_not_of(' ')));
        return args;
    };
    for (EntryPoint e : {EntryPoint::Forward, EntryPoint::Backward}) {
        std::vector<std::string> args = arguments(entrySymbol(e));
        REQUIRE(args.size() == kEntryArgCount);
        for (auto& a : args) CHECK(a.rfind("ptr noalias ", 0) == 0);
    }
    std::vector<std::string> args = arguments(kUpdateSymbol);
    REQUIRE(args.size() == kUpdateArgCount);
    for (size_t i = 0; i < kUpdateArgCount; ++i)
        CHECK(args[i].rfind(i < size_t(UpdateArg::Begin) ? "ptr noalias " : "i64 ", 0) == 0);
}

TEST_CASE("buffers placed by EntryArg give the interpreter's logits, loss and gradients", "[jit][abi]") {
    // Cross-entropy, so the target is int32 labels, and one hidden activation, so acts is used.
    Graph g = compileSource("t.nn", "input 5\ndense 4\ntanh\ndense 3\nloss cross_entropy\n", {6}).graph;
    std::mt19937 rng(11);
    Bindings b = randomBindings(g, rng);
    auto wantForward = interpretOutputs(g, b);
    auto wantBackward = interpretOutputs(differentiate(g), b);
    CodegenOptions co;
    co.cache = false;
    co.f64 = true;
    CompiledModel cm = compileModel(g, co);
    std::vector<double> params, x, logits(size_t(elementCount(g[g.output(OutputRole::Logits)].shape))), loss(2, -1),
        grads(size_t(cm.layout.parameterCount())), acts(size_t(cm.layout.size(Array::Acts)));
    std::vector<int32_t> labels;
    for (auto& p : g.params)
        for (double v : b.at(p.name).data) params.push_back(v);
    for (auto& n : g.nodes)
        if (n.op == Op::Input)
            for (double v : b.at(n.name).data) n.name == "x" ? x.push_back(v) : labels.push_back(int32_t(v));
    REQUIRE(cm.layout.size(Array::Acts) > 0);
    REQUIRE(labels.size() == 6);
    void* ws = std::aligned_alloc(64, size_t((cm.workspaceBytes + 63) / 64 * 64 + 64));
    std::array<void*, kEntryArgCount> a{};
    a[size_t(EntryArg::Params)] = params.data();
    a[size_t(EntryArg::Input)] = x.data();
    a[size_t(EntryArg::Target)] = labels.data();
    a[size_t(EntryArg::Acts)] = acts.data();
    a[size_t(EntryArg::Workspace)] = ws;
    auto call = [&](CompiledModel::Entry f) { f(a[0], a[1], a[2], a[3], a[4], a[5], a[6]); };
    a[size_t(kLogitsArg)] = logits.data();
    a[size_t(lossArg(EntryPoint::Forward))] = &loss[0];
    call(cm.forward);
    a[size_t(lossArg(EntryPoint::Backward))] = &loss[1];
    a[size_t(kGradsArg)] = grads.data();
    call(cm.backward);
    std::free(ws);
    const Tensor& wantLogits = wantForward.at("logits");
    for (size_t i = 0; i < logits.size(); ++i) CHECK(logits[i] == Approx(wantLogits.data[i]).epsilon(1e-9));
    CHECK(loss[0] == Approx(wantForward.at("loss").data[0]).epsilon(1e-9));
    CHECK(loss[1] == Approx(wantForward.at("loss").data[0]).epsilon(1e-9));
    size_t offset = 0;
    for (auto& p : g.params) {
        const Tensor& want = wantBackward.at("grad:" + p.name);
        CAPTURE(p.name);
        for (size_t i = 0; i < want.data.size(); ++i)
            CHECK(grads[offset + i] == Approx(want.data[i]).margin(1e-12).epsilon(1e-8));
        offset += want.data.size();
    }
    CHECK(offset == grads.size());
    double actsMagnitude = 0;
    for (double v : acts) actsMagnitude += std::fabs(v);
    CHECK(actsMagnitude > 0); // the hidden activation's input was written where Acts points
}

TEST_CASE("the compiled update step reads its hyper-parameters from the HyperSlot places", "[jit][abi]") {
    const CompiledModel cm = compiledUpdateStep();
    REQUIRE(cm.update);
    const int64_t n = 8;
    std::vector<float> p(n, 1.0f), grad(n), m(n), v(n);
    for (int64_t i = 0; i < n; ++i) grad[size_t(i)] = float(i + 1);
    // Plain SGD with weight decay: p -= lr (g + wd p), on [Begin, End) only. Every other slot
    // holds a value that would show if the step read it in place of lr or wd.
    Hyper h;
    h.fill(1e6);
    h[size_t(HyperSlot::Method)] = double(OptimizerMethod::Sgd);
    h[size_t(HyperSlot::Lr)] = 0.25;
    h[size_t(HyperSlot::WeightDecay)] = 0.5;
    h[size_t(HyperSlot::GradScale)] = 1; // no clipping (ClipTests checks other scales)
    cm.update(p.data(), grad.data(), m.data(), v.data(), h.data(), 2, 6);
    for (int64_t i = 0; i < n; ++i) {
        CAPTURE(i);
        const float want = i >= 2 && i < 6 ? 1.0f - 0.25f * (float(i + 1) + 0.5f) : 1.0f;
        CHECK(p[size_t(i)] == Approx(want).epsilon(1e-6));
        CHECK(m[size_t(i)] == 0.0f); // SGD keeps no state
    }
}

namespace {

/// The forward and backward kernel programs of `fwd`, as code generation builds them.
std::vector<KernelProgram> programs(const Graph& fwd) {
    Layout layout = computeLayout(fwd);
    Graph grad = differentiate(fwd);
    return {buildKernels(fwd, "forward", fwd.outputs, layout, 4, GemmBlocking{}),
            buildKernels(grad, "backward", backwardOutputs(grad), layout, 4, GemmBlocking{})};
}

} // namespace

TEST_CASE("kernel labels are printKernels' first lines and the profile's names", "[jit][profile]") {
    for (auto& entry : fs::directory_iterator(GRADC_SOURCE_DIR "/models")) {
        Graph g = compileFile(entry.path().string(), {16}).graph;
        CAPTURE(entry.path().filename().string());
        for (const KernelProgram& prog : programs(g)) {
            std::vector<std::string> got = labels(prog);
            CHECK(got == kernelHeadLines(printKernels(prog)));
            for (size_t i = 0; i < got.size(); ++i) CHECK(got[i].rfind("k" + std::to_string(i) + ": ", 0) == 0);
        }
    }
    Graph g = modelFile("seed_relu", 16);
    const KernelProgram backward = programs(g)[1];
    CHECK(kernelLabel(backward, 0) == "k0: loop [16,512] acc = x · layers.0.weightᵀ (depth 784)");
    CHECK_THROWS(kernelLabel(backward, backward.kernels.size()));

    // The profile names each kernel of the compiled code by its label: the lines of
    // `gradc dump --emit=kernels` for the same code.
    CodegenOptions co;
    co.cache = false;
    co.profile = true;
    CompiledModel cm = compileModel(g, co);
    std::vector<std::string> profiled = cm.kernelsForward;
    profiled.insert(profiled.end(), cm.kernelsBackward.begin(), cm.kernelsBackward.end());
    CHECK(profiled == kernelHeadLines(emitModule(g, co, "kernels")));
    CHECK(cm.kernelsBackward.front() == kernelLabel(backward, 0));
    REQUIRE(cm.profileBackward);
    std::mt19937 rng(3);
    runCompiled(cm, g, randomBindings(g, rng), true);
    uint64_t cycles = 0;
    for (size_t i = 0; i < cm.kernelsBackward.size(); ++i) cycles += cm.profileBackward[i];
    CHECK(cycles > 0);
}

TEST_CASE("kernels that differ only in their buffers share one kernel function", "[jit][lowering]") {
    // The layers of a repeat block compute the same kernels on different buffers: the
    // module's kernel functions do not grow with the repeat count, only the calls do.
    auto module = [](int repeats) {
        const std::string text = "model r\ninput 32\ndense 16 relu\nrepeat " + std::to_string(repeats) +
                                 " {\n  dense 16 relu\n}\ndense 4\nloss cross_entropy\n";
        Graph g = compileSource("r.nn", text, {8}).graph;
        CodegenOptions co;
        co.threads = 2; // with loops outlined onto the thread pool
        return emitModule(g, co, "llvm-unoptimised");
    };
    auto count = [](const std::string& ir, const std::string& what) {
        size_t n = 0;
        for (size_t at = ir.find(what); at != std::string::npos; at = ir.find(what, at + 1)) ++n;
        return n;
    };
    const std::string two = module(2), six = module(6);
    const size_t functions = count(two, "define internal void @gradc_kernel");
    CHECK(functions > 0);
    CHECK(count(six, "define internal void @gradc_kernel") == functions);
    CHECK(count(six, "define internal void @gradc_tiles") == count(two, "define internal void @gradc_tiles"));
    CHECK(count(six, "call void @gradc_kernel") > count(two, "call void @gradc_kernel"));
}
