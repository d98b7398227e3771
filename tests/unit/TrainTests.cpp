// TrainTests.cpp — the optimiser step, batchnorm's running statistics and evaluation mode,
// the Engine's training and evaluation, parameter files with buffers, TensorBoard records.
#include "Codegen.h"
#include "Engine.h"
#include "Events.h"
#include "Interpreter.h"
#include "Optimizer.h"
#include "Pipeline.h"
#include "SafeTensors.h"
#include "TestUtil.h"
#include "Train.h"

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

using namespace gradc;

namespace {

const char* kBatchnormModel = "model bn\ninput 5\ndense 7\nbatchnorm\ntanh\nh = identity\ndense 7 relu\nadd h\n"
                              "dense 4\nbatchnorm\nsigmoid\ndense 3\nloss cross_entropy\n";

std::unique_ptr<Engine> engine(const std::string& text, int64_t batch, const std::string& backend, bool f64 = false) {
    FrontEnd fe = compileSource("test.nn", text, {batch});
    Graph eval = compileSource("test.nn", text, {batch, true, true}).graph;
    SessionOptions o;
    o.backend = backend;
    o.cache = false;
    return std::make_unique<Engine>(std::move(fe.graph), std::move(eval), o, f64);
}

void randomBatch(std::mt19937& rng, int64_t batch, int64_t width, int64_t classes, std::vector<float>& x,
                 std::vector<int32_t>& labels) {
    std::normal_distribution<float> normal(0, 1);
    x.resize(size_t(batch * width));
    labels.resize(size_t(batch));
    for (float& v : x) v = normal(rng);
    for (int32_t& l : labels) l = int32_t(rng() % uint64_t(classes));
}

template <typename A, typename B> double maxRelativeDifference(const std::vector<A>& a, const std::vector<B>& b) {
    double worst = 0, scale = 1e-30;
    for (size_t i = 0; i < a.size(); ++i) {
        worst = std::max(worst, std::fabs(double(a[i]) - double(b[i])));
        scale = std::max(scale, std::fabs(double(b[i])));
    }
    return worst / scale;
}

} // namespace

TEST_CASE("the compiled optimiser step computes torch.optim's formulas", "[train]") {
    const CompiledModel cm = compiledUpdateStep();
    REQUIRE(cm.update);
    OptimizerOptions sgd, momentum, nesterov, damped, adam, adamw;
    momentum.momentum = 0.9;
    nesterov.momentum = 0.8, nesterov.nesterov = true, nesterov.weightDecay = 0.01;
    damped.momentum = 0.5, damped.dampening = 0.3;
    adam.method = "adam", adam.lr = 1e-3;
    adamw.method = "adam", adamw.lr = 3e-3, adamw.weightDecay = 0.1, adamw.beta1 = 0.8, adamw.beta2 = 0.99;
    for (const OptimizerOptions* o : {&sgd, &momentum, &nesterov, &damped, &adam, &adamw}) {
        CAPTURE(o->method, o->momentum, o->nesterov, o->weightDecay);
        std::mt19937 rng(7);
        std::normal_distribution<float> normal(0, 1);
        const int64_t n = 1000;
        std::vector<float> p(n), g1(n), m(n), v(n);
        for (float& x : p) x = normal(rng);
        std::vector<float> q = p, mq = m, vq = v;
        for (int64_t t = 1; t <= 4; ++t) {
            for (float& x : g1) x = normal(rng) * 0.1f;
            Hyper h = hyperParameters(*o, t);
            cm.update(p.data(), g1.data(), m.data(), v.data(), h.data(), 0, n / 2); // two ranges, as threads split it
            cm.update(p.data(), g1.data(), m.data(), v.data(), h.data(), n / 2, n);
            referenceUpdate(h, q.data(), g1.data(), mq.data(), vq.data(), 0, n);
        }
        CHECK(maxRelativeDifference(p, q) < 1e-6);
        CHECK(maxRelativeDifference(m, mq) < 1e-6);
        // The step moved the parameters (a no-op would pass the comparison too).
        std::mt19937 again(7);
        CHECK(std::fabs(p[0] - normal(again)) > 1e-5);
    }
}

TEST_CASE("PyTorch's first momentum step takes the gradient itself, then dampening applies", "[train]") {
    OptimizerOptions o;
    o.momentum = 0.9, o.dampening = 0.5;
    float p = 1, g = 2, m = 0, v = 0;
    referenceUpdate(hyperParameters(o, 1), &p, &g, &m, &v, 0, 1);
    CHECK(m == Approx(2));                 // buf = g
    CHECK(p == Approx(1 - 0.01 * 2));
    referenceUpdate(hyperParameters(o, 2), &p, &g, &m, &v, 0, 1);
    CHECK(m == Approx(0.9 * 2 + 0.5 * 2)); // buf = momentum buf + (1 - dampening) g
}

TEST_CASE("bad optimiser settings are errors naming the setting", "[train]") {
    auto fails = [](OptimizerOptions o, const char* what) {
        CAPTURE(what);
        try {
            hyperParameters(o, 1);
            FAIL("accepted");
        } catch (const UserError& e) {
            CHECK(std::string(e.what()).find(what) != std::string::npos);
        }
    };
    OptimizerOptions o;
    o.method = "rmsprop";
    fails(o, "rmsprop");
    o = {}, o.lr = -1;
    fails(o, "learning rate");
    o = {}, o.lr = std::nan("");
    fails(o, "learning rate");
    o = {}, o.nesterov = true;
    fails(o, "Nesterov");
    o = {}, o.method = "adam", o.beta2 = 1;
    fails(o, "betas");
    o = {}, o.weightDecay = -0.1;
    fails(o, "weight decay");
}

TEST_CASE("training steps agree between compiled code and the interpreter, batchnorm included", "[train]") {
    // Adam turns rounding noise into whole steps where a gradient is zero in exact arithmetic
    // (the bias of a layer followed by batchnorm), as PyTorch's does: its model has none.
    const char* adamModel = "input 5\ndense 7 tanh\nh = identity\ndense 7 relu\nadd h\ndense 3\nloss cross_entropy\n";
    for (const char* method : {"sgd", "adam"}) {
        CAPTURE(method);
        const char* text = std::string(method) == "sgd" ? kBatchnormModel : adamModel;
        auto jit = engine(text, 16, "jit"), interp = engine(text, 16, "interp");
        OptimizerOptions o;
        o.method = method, o.lr = std::string(method) == "adam" ? 1e-2 : 0.1, o.momentum = std::string(method) == "sgd" ? 0.9 : 0;
        jit->setOptimizer(o), interp->setOptimizer(o);
        jit->initialise(3), interp->initialise(3);
        const std::vector<double> before = jit->state().values();
        std::mt19937 rng(11);
        std::vector<float> x;
        std::vector<int32_t> labels;
        for (int step = 0; step < 4; ++step) {
            randomBatch(rng, 16, 5, 3, x, labels);
            float a = jit->trainStep(x.data(), labels.data()), b = interp->trainStep(x.data(), labels.data());
            CHECK(a == Approx(b).epsilon(1e-4));
        }
        CHECK(maxRelativeDifference(jit->state().values(), interp->state().values()) < 1e-4);
        CHECK(maxRelativeDifference(jit->state().values(), before) > 1e-3); // it trained
        CHECK(jit->steps() == 4);
        CHECK(jit->batchesTracked() == 4);
        CHECK(interp->batchesTracked() == 4);
        // Evaluation mode on both backends, with the running statistics they kept.
        std::vector<float> la(16 * 3), lb(16 * 3);
        randomBatch(rng, 16, 5, 3, x, labels);
        jit->evaluate(x.data(), labels.data(), la.data());
        interp->evaluate(x.data(), labels.data(), lb.data());
        CHECK(maxRelativeDifference(la, lb) < 1e-4);
    }
}

TEST_CASE("in double, training steps of compiled code and the interpreter agree to 1e-9", "[train][f64]") {
    const char* adamModel = "input 5\ndense 7 tanh\nh = identity\ndense 7 relu\nadd h\ndense 3\nloss cross_entropy\n";
    for (const char* method : {"sgd", "adam"}) {
        CAPTURE(method);
        const bool sgd = std::string(method) == "sgd";
        const char* text = sgd ? kBatchnormModel : adamModel;
        auto jit = engine(text, 16, "jit", true), interp = engine(text, 16, "interp", true);
        auto f32 = engine(text, 16, "jit");
        REQUIRE(jit->f64());
        REQUIRE(jit->state().f64());
        REQUIRE_FALSE(f32->f64());
        OptimizerOptions o;
        o.method = method, o.lr = sgd ? 0.1 : 1e-2, o.momentum = sgd ? 0.9 : 0;
        for (auto* e : {jit.get(), interp.get(), f32.get()}) e->setOptimizer(o), e->initialise(3);
        const std::vector<double> before = jit->state().values();
        std::mt19937 rng(11);
        std::vector<float> x;
        std::vector<double> x64;
        std::vector<int32_t> labels;
        for (int step = 0; step < 4; ++step) {
            randomBatch(rng, 16, 5, 3, x, labels);
            x64.assign(x.begin(), x.end());
            const double a = jit->trainStep(x64.data(), labels.data()), b = interp->trainStep(x64.data(), labels.data());
            const double c = f32->trainStep(x.data(), labels.data());
            CHECK(std::fabs(a - b) <= 1e-9 * std::fabs(b));
            CHECK(a == Approx(c).epsilon(1e-4));
        }
        CHECK(maxRelativeDifference(jit->state().values(), interp->state().values()) < 1e-9);
        CHECK(maxRelativeDifference(jit->gradients().values(), interp->gradients().values()) < 1e-9);
        CHECK(maxRelativeDifference(jit->state().values(), f32->state().values()) < 1e-4);
        CHECK(maxRelativeDifference(jit->state().values(), before) > 1e-3); // it trained
        CHECK(jit->batchesTracked() == 4);
        // Evaluation mode: double logits and layer outputs; float inputs are converted.
        std::vector<double> la(16 * 3), lb(16 * 3);
        std::vector<float> lf(16 * 3);
        randomBatch(rng, 16, 5, 3, x, labels);
        x64.assign(x.begin(), x.end());
        jit->evaluate(x64.data(), labels.data(), la.data());
        interp->evaluate(x64.data(), labels.data(), lb.data());
        CHECK(maxRelativeDifference(la, lb) < 1e-9);
        jit->evaluate(x.data(), labels.data(), lf.data()); // the same inputs given as float
        CHECK(maxRelativeDifference(lf, la) < 1e-6);
        const double* y = jit->layerOutput<double>(0);
        CHECK(std::isfinite(y[0]));
    }
}

TEST_CASE("batchnorm's running statistics follow PyTorch: momentum 0.1, unbiased variance", "[train]") {
    auto e = engine("input 3\nbatchnorm\ndense 2\nloss cross_entropy\n", 4, "jit");
    OptimizerOptions o;
    o.lr = 0; // the parameters stay; only the running statistics move
    e->setOptimizer(o);
    std::vector<float> x = {1, 2, 3, 3, 2, 1, 0, 0, 0, 4, 8, -4};
    std::vector<int32_t> labels = {0, 1, 0, 1};
    e->trainStep(x.data(), labels.data());
    const float* rm = e->state().data<float>() + e->parameterCount(); // running_mean[3], running_var[3]
    const float* rv = rm + 3;
    for (int j = 0; j < 3; ++j) {
        double mean = 0, sq = 0;
        for (int b = 0; b < 4; ++b) mean += x[size_t(b * 3 + j)] / 4.0;
        for (int b = 0; b < 4; ++b) sq += (x[size_t(b * 3 + j)] - mean) * (x[size_t(b * 3 + j)] - mean);
        CHECK(rm[j] == Approx(0.1 * mean));
        CHECK(rv[j] == Approx(0.9 + 0.1 * sq / 3));
    }
}

TEST_CASE("evaluation mode normalises with the running statistics", "[train]") {
    auto e = engine("input 2\nbatchnorm\ndense 2\nloss cross_entropy\n", 3, "jit");
    float* s = e->state().data<float>();
    // weight [2,2], bias [2] of the dense; γ, β of the batchnorm come first.
    const auto params = e->graph().params;
    REQUIRE(params[0].name == "layers.0.weight");
    s[0] = 2, s[1] = 3;   // γ
    s[2] = 0.5, s[3] = -1; // β
    s[4] = 1, s[5] = 0, s[6] = 0, s[7] = 1, s[8] = 0, s[9] = 0; // identity dense, no bias
    float* rm = s + e->parameterCount();
    rm[0] = 1, rm[1] = -2, rm[2] = 4, rm[3] = 0.25; // means, then variances
    std::vector<float> x = {1, 2, 3, 4, -1, 0}, logits(6);
    std::vector<int32_t> labels = {0, 1, 0};
    e->evaluate(x.data(), labels.data(), logits.data());
    for (int b = 0; b < 3; ++b) {
        CHECK(logits[size_t(b * 2)] == Approx((x[size_t(b * 2)] - 1) / std::sqrt(4 + 1e-5) * 2 + 0.5));
        CHECK(logits[size_t(b * 2 + 1)] == Approx((x[size_t(b * 2 + 1)] + 2) / std::sqrt(0.25 + 1e-5) * 3 - 1));
    }
    // The layer outputs: the batchnorm's output is the first module's.
    REQUIRE(e->layerCount() == 1);
    CHECK(e->layerOutput<float>(0)[0] == Approx(logits[0]));
}

TEST_CASE("a few hundred steps fit a small problem: the loss falls", "[train]") {
    auto e = engine("input 4\ndense 16 relu\ndense 16 tanh\ndense 3\nloss cross_entropy\n", 32, "jit");
    OptimizerOptions o;
    o.method = "adam", o.lr = 1e-2;
    e->setOptimizer(o);
    std::mt19937 rng(5);
    std::vector<float> x;
    std::vector<int32_t> labels;
    randomBatch(rng, 32, 4, 3, x, labels);
    for (int b = 0; b < 32; ++b) labels[size_t(b)] = x[size_t(b * 4)] > 0 ? (x[size_t(b * 4 + 1)] > 0 ? 2 : 1) : 0;
    float first = e->trainStep(x.data(), labels.data()), last = first;
    for (int i = 0; i < 300; ++i) last = e->trainStep(x.data(), labels.data());
    CHECK(last < 0.2f * first);
    CHECK(e->steps() == 301);
    std::vector<float> logits(32 * 3);
    e->evaluate(x.data(), labels.data(), logits.data());
    int correct = 0;
    for (int b = 0; b < 32; ++b) {
        const float* z = logits.data() + b * 3;
        correct += int(std::max_element(z, z + 3) - z) == labels[size_t(b)];
    }
    CHECK(correct >= 30);
    REQUIRE(e->layerCount() == 4); // linear, relu, linear, tanh
    CHECK(e->graph().layers[1].what == "relu");
    for (int i = 0; i < 32 * 16; ++i) CHECK(e->layerOutput<float>(1)[i] >= 0);
}

TEST_CASE("parameter files carry batchnorm's running statistics and batch count", "[train]") {
    TempDir folder("train");
    const std::string path = (folder.path / "params.safetensors").string();
    auto a = engine(kBatchnormModel, 8, "jit");
    std::mt19937 rng(2);
    std::vector<float> x;
    std::vector<int32_t> labels;
    for (int i = 0; i < 3; ++i) {
        randomBatch(rng, 8, 5, 3, x, labels);
        a->trainStep(x.data(), labels.data());
    }
    a->save(path);
    std::map<std::string, std::string> dtypes;
    auto file = readSafetensors(path, &dtypes);
    REQUIRE(file.count("layers.1.running_mean"));
    CHECK(dtypes["layers.1.num_batches_tracked"] == "I64");
    CHECK(file["layers.1.num_batches_tracked"].data[0] == 3);
    auto b = engine(kBatchnormModel, 8, "jit");
    b->load(path);
    CHECK(b->state() == a->state());
    CHECK(b->batchesTracked() == 3);
    // A file with a negative running variance is refused, naming the tensor.
    file["layers.1.running_var"].data[0] = -1;
    std::vector<std::pair<std::string, Tensor>> tensors(file.begin(), file.end());
    writeSafetensors(path, tensors, false, {"layers.1.num_batches_tracked", "layers.8.num_batches_tracked"});
    CHECK_THROWS_WITH(b->load(path), Catch::Contains("layers.1.running_var") && Catch::Contains("negative"));
}

TEST_CASE("CRC-32C and TensorBoard records", "[train]") {
    CHECK(crc32c("123456789", 9) == 0xE3069283u); // the check value of CRC-32C
    CHECK(proto::varint(300) == std::string("\xAC\x02", 2));
    TempDir folder("events");
    const std::string dir = (folder.path / "events").string();
    std::string path;
    {
        EventWriter w(dir);
        w.scalar("loss/train", 7, 0.5);
        TensorStats s = statistics("g", Tensor{{4}, {1, 2, 3, 4}});
        w.histogram("grad/g", 7, s);
        path = w.path();
    }
    std::ifstream in(path, std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), {});
    size_t pos = 0, records = 0;
    std::vector<std::string> events;
    while (pos < data.size()) {
        REQUIRE(pos + 12 <= data.size());
        uint64_t n;
        uint32_t lengthCrc, dataCrc;
        std::memcpy(&n, data.data() + pos, 8);
        std::memcpy(&lengthCrc, data.data() + pos + 8, 4);
        CHECK(lengthCrc == maskedCrc32c(data.data() + pos, 8));
        REQUIRE(pos + 12 + n + 4 <= data.size());
        std::memcpy(&dataCrc, data.data() + pos + 12 + n, 4);
        CHECK(dataCrc == maskedCrc32c(data.data() + pos + 12, n));
        events.push_back(data.substr(pos + 12, n));
        pos += 12 + n + 4, ++records;
    }
    CHECK(records == 3);
    CHECK(events[0].find("brain.Event:2") != std::string::npos);
    CHECK(events[1].find("loss/train") != std::string::npos);
    CHECK(events[2].find("grad/g") != std::string::npos);
}

TEST_CASE("the progress bar shows the elapsed time, the steps per second and the epoch's ETA", "[train]") {
    CHECK(progressLine(2, 10, 50, 200, 0.51234, 25) ==
          "epoch 2/10 [#######.......................] 50/200  loss 0.5123  0:25 elapsed, 2.0 steps/s, epoch ETA 1:15");
    CHECK_THAT(progressLine(1, 1, 1, 1000, 1, 4), Catch::EndsWith("0:04 elapsed, 0.2 steps/s, epoch ETA 1:06:36"));
    CHECK_THAT(progressLine(1, 1, 0, 10, 1, 0), Catch::EndsWith("0:00 elapsed, 0.0 steps/s, epoch ETA ?"));
}
