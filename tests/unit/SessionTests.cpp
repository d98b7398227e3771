// SessionTests.cpp — the embedding API (gradc/Model.h, gradc/Session.h): Sessions on several
// threads at once give exactly the results each gives alone, the thread pool under them is
// re-entrant, and every misuse of the API throws gradc::Error with a message.
//
// The tests tagged [concurrency] are the ones `tools/test --tsan` runs under ThreadSanitizer.
// Catch2's assertions are not thread-safe: the threads only record, the test thread checks.
#include "TestUtil.h"
#include "ThreadPool.h"

#include <gradc/Model.h>
#include <gradc/Session.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <latch>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace gradc;

namespace {

/// A model, the batch it is run with, the backend and the threads it runs on (0: all cores).
struct Case {
    std::string name, text;
    int64_t batch;
    std::string backend;
    int threads = 3; ///< more than this machine may have cores: they interleave
};

const std::vector<Case>& cases() {
    static const std::vector<Case> all = {
        {"wide", "model wide\ninput 40\ndense 64 tanh\ndense 48 relu\ndense 10\nloss cross_entropy\n", 24, "jit"},
        {"bn",
         "model bn\ninput 30\ndense 40\nbatchnorm\nsigmoid\nh = identity\ndense 40 relu\nadd h\ndense 6\n"
         "loss cross_entropy\n",
         20, "jit", 2},
        {"regression", "model regression\ninput 20\ndense 56 gelu\ndense 20\nloss mse\n", 18, "jit", 1},
        {"small_interp", "model small_interp\ninput 6\ndense 8 tanh\ndense 1\nloss bce\n", 4, "interp"},
    };
    return all;
}

/// Everything a run computed, step by step, as bits.
struct Trace {
    std::vector<uint32_t> losses;
    std::vector<std::vector<uint32_t>> gradients;
    std::vector<uint32_t> logits; ///< one evaluate() after the last step
    std::string error;            ///< what a thread caught, if anything
};

uint32_t bits(float v) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    return b;
}

std::vector<uint32_t> bits(const float* v, size_t n) {
    std::vector<uint32_t> out(n);
    std::memcpy(out.data(), v, n * 4);
    return out;
}

/// `steps` SGD steps with momentum on batches drawn from a generator seeded by the case's
/// name, then one evaluate(). With `ready`, waits there after compiling, so that the threads'
/// steps overlap.
Trace train(const Case& c, const Model& model, int steps, std::latch* ready) {
    Trace t;
    bool arrived = false;
    try {
        SessionOptions o;
        o.backend = c.backend;
        o.cache = false;
        o.threads = c.threads;
        Session s(model, c.batch, o);
        s.initialiseParameters(7);
        OptimizerOptions sgd;
        sgd.lr = 0.05, sgd.momentum = 0.9;
        s.setOptimizer(sgd);
        if (ready) ready->arrive_and_wait();
        arrived = true;
        std::mt19937 rng(uint32_t(std::hash<std::string>()(c.name)));
        std::normal_distribution<float> normal(0, 1);
        const bool labels = model.loss() == "cross_entropy";
        std::vector<float> x(size_t(c.batch * model.inputWidth())), targets(size_t(c.batch * model.outputWidth()));
        std::vector<int32_t> classes(size_t(c.batch));
        for (int step = 0; step < steps; ++step) {
            for (float& v : x) v = normal(rng);
            for (int32_t& l : classes) l = int32_t(rng() % uint32_t(model.outputWidth()));
            for (float& v : targets) v = model.loss() == "bce" ? float(rng() % 2) : normal(rng);
            float loss = labels ? s.trainStep(x.data(), classes.data()) : s.trainStep(x.data(), targets.data());
            t.losses.push_back(bits(loss));
            t.gradients.push_back(bits(s.gradients(), size_t(model.parameterCount())));
        }
        std::vector<float> logits(size_t(c.batch * model.outputWidth()));
        if (labels) s.evaluate(x.data(), classes.data(), logits.data());
        else s.evaluate(x.data(), targets.data(), logits.data());
        t.logits = bits(logits.data(), logits.size());
    } catch (const std::exception& e) {
        t.error = e.what();
    }
    if (ready && !arrived) ready->arrive_and_wait();
    return t;
}

/// Steps whose loss or gradients differ from the reference's in any bit.
int differingSteps(const Trace& a, const Trace& reference) {
    int wrong = 0;
    for (size_t i = 0; i < reference.losses.size(); ++i)
        if (i >= a.losses.size() || a.losses[i] != reference.losses[i] || a.gradients[i] != reference.gradients[i])
            ++wrong;
    return wrong;
}

Model modelOf(const Case& c) { return Model::fromString(c.name + ".nn", c.text); }

} // namespace

TEST_CASE("gradc_parallel_for is re-entrant: loops from several threads at once each cover their range once, "
          "on threads below the count they were compiled for",
          "[concurrency]") {
    struct Counts {
        std::vector<std::atomic<int>> seen;
        std::atomic<int64_t> badThread{0};
        int64_t threads;
        explicit Counts(int64_t n, int64_t t) : seen(size_t(n)), threads(t) {}
    };
    auto body = [](void* context, int64_t begin, int64_t end, int64_t thread) {
        auto* c = static_cast<Counts*>(context);
        if (thread < 0 || thread >= c->threads) c->badThread.fetch_add(1);
        for (int64_t i = begin; i < end; ++i) c->seen[size_t(i)].fetch_add(1, std::memory_order_relaxed);
    };
    // A loop whose body runs a loop of its own (the workers are then busy: it runs alone).
    auto nested = [](void* context, int64_t begin, int64_t end, int64_t thread) {
        auto* c = static_cast<Counts*>(context);
        if (thread < 0 || thread >= c->threads) c->badThread.fetch_add(1);
        for (int64_t i = begin; i < end; ++i) {
            Counts inner(5, 2);
            gradc_parallel_for(
                [](void* ctx, int64_t b, int64_t e, int64_t th) {
                    auto* k = static_cast<Counts*>(ctx);
                    if (th < 0 || th >= k->threads) k->badThread.fetch_add(1);
                    for (int64_t j = b; j < e; ++j) k->seen[size_t(j)].fetch_add(1);
                },
                &inner, 5, 2);
            bool once = inner.badThread.load() == 0;
            for (auto& s : inner.seen) once = once && s.load() == 1;
            c->seen[size_t(i)].fetch_add(once ? 1 : 100, std::memory_order_relaxed);
        }
    };
    constexpr int kCallers = 4, kLoops = 2000;
    std::vector<int> failures(kCallers, 0);
    std::atomic<bool> done{false};
    std::vector<std::thread> callers;
    for (int k = 0; k < kCallers; ++k)
        callers.emplace_back([&, k] {
            std::mt19937 rng{uint32_t(k)};
            for (int loop = 0; loop < kLoops; ++loop) {
                const int64_t n = 1 + int64_t(rng() % 200), threads = 1 + int64_t(rng() % 4);
                Counts c(n, threads);
                gradc_parallel_for(k == 0 && loop % 10 == 0 ? +nested : +body, &c, n, threads);
                bool ok = c.badThread.load() == 0;
                for (auto& s : c.seen) ok = ok && s.load() == 1;
                if (!ok) ++failures[size_t(k)];
            }
        });
    // Meanwhile loops compiled for more threads grow the pool: each replaces it with a larger
    // one, and loops already running keep the pool they started on.
    std::atomic<int> changerFailures{0};
    std::thread changer([&] {
        for (int64_t threads = 2; !done.load(); threads = threads < 6 ? threads + 1 : 2) {
            Counts c(64, threads);
            gradc_parallel_for(+body, &c, 64, threads);
            bool ok = c.badThread.load() == 0;
            for (auto& s : c.seen) ok = ok && s.load() == 1;
            if (!ok) changerFailures.fetch_add(1);
            std::this_thread::yield();
        }
    });
    for (auto& t : callers) t.join();
    done = true;
    changer.join();
    CHECK(changerFailures.load() == 0);
    for (int k = 0; k < kCallers; ++k) {
        INFO("caller " << k);
        CHECK(failures[size_t(k)] == 0);
    }
}

TEST_CASE("Sessions on several threads at once give exactly the losses and gradients each gives alone",
          "[session][concurrency]") {
    // The cases run on 3, 2, 1 and 3 threads: Sessions with different counts share the pool.
    constexpr int kSteps = 200;
    // Each Session alone, one after another.
    std::vector<Trace> reference;
    for (const Case& c : cases()) {
        reference.push_back(train(c, modelOf(c), kSteps, nullptr));
        INFO(c.name << ": " << reference.back().error);
        REQUIRE(reference.back().error.empty());
        REQUIRE(reference.back().losses.size() == size_t(kSteps));
    }
    // Every case on a thread of its own, and the first case twice more from one shared Model:
    // all compile at once, then step at once.
    const Model shared = modelOf(cases()[0]);
    std::vector<size_t> which;
    for (size_t i = 0; i < cases().size(); ++i) which.push_back(i);
    which.push_back(0), which.push_back(0);
    std::vector<Trace> traces(which.size());
    std::latch ready(std::ptrdiff_t(which.size()));
    std::vector<std::thread> threads;
    for (size_t k = 0; k < which.size(); ++k)
        threads.emplace_back([&, k] {
            const Case& c = cases()[which[k]];
            traces[k] = train(c, k < cases().size() ? modelOf(c) : shared, kSteps, &ready);
        });
    for (auto& t : threads) t.join();
    for (size_t k = 0; k < which.size(); ++k) {
        const Case& c = cases()[which[k]];
        INFO("thread " << k << ": " << c.name << " (" << c.backend << ") " << traces[k].error);
        REQUIRE(traces[k].error.empty());
        CHECK(differingSteps(traces[k], reference[which[k]]) == 0);
        CHECK(traces[k].logits == reference[which[k]].logits);
    }
}

TEST_CASE("one Session called from two threads at once: the second call is an error, nothing is corrupted",
          "[session][concurrency]") {
    const Case& c = cases()[0];
    const Model model = modelOf(c);
    SessionOptions o;
    o.cache = false;
    o.threads = 2;
    const int64_t batch = 64;
    Session s(model, batch, o);
    s.initialiseParameters(3);
    std::vector<float> x(size_t(batch * model.inputWidth()), 0.5f);
    std::vector<int32_t> labels(size_t(batch), 1);
    std::vector<float> params(s.parameters(), s.parameters() + model.parameterCount());
    // The reference: the same steps with no one else calling.
    std::vector<uint32_t> expected;
    for (int i = 0; i < 50; ++i) expected.push_back(bits(s.trainStep(x.data(), labels.data())));
    std::copy(params.begin(), params.end(), s.parameters());
    s.setOptimizer({});

    // The owner trains while an intruder calls now and then, until calls have collided: the
    // one that finds the Session in use (either thread's) is refused, and the other runs.
    std::atomic<int> collisions{0}, otherErrors{0};
    std::atomic<bool> stop{false};
    std::string message;
    auto collided = [&](const Error& e) {
        if (std::string(e.what()).find("in use by another thread") == std::string::npos) {
            ++otherErrors;
        } else if (collisions.fetch_add(1) == 0) {
            message = e.what();
        }
    };
    auto retry = [&](auto f) {
        for (;;) {
            try {
                return f();
            } catch (const Error& e) {
                collided(e);
            }
        }
    };
    std::thread intruder([&] {
        while (!stop.load()) {
            try {
                (void)s.gradientStatistics();
            } catch (const Error& e) {
                collided(e);
            }
            std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
    });
    std::vector<uint32_t> got;
    for (int round = 0; round < 100000 && (got.size() < expected.size() || collisions.load() < 5); ++round) {
        if (got.size() == expected.size()) { // start over until calls have collided
            got.clear();
            std::copy(params.begin(), params.end(), retry([&] { return s.parameters(); }));
            retry([&] { return s.setOptimizer({}), 0; });
        }
        try {
            got.push_back(bits(s.trainStep(x.data(), labels.data())));
        } catch (const Error& e) {
            collided(e);
        }
    }
    stop = true;
    intruder.join();
    INFO(message);
    CHECK(collisions.load() >= 5);
    CHECK(otherErrors.load() == 0);
    CHECK(message.find("a Session is used by one thread at a time") != std::string::npos);
    // A colliding call changes nothing: the owner's steps are exactly those made alone.
    REQUIRE(got.size() == expected.size());
    CHECK(got == expected);
}

TEST_CASE("a Session reports each recurrent layer's gradient through time after a backward pass",
          "[session]") {
    const Model model =
        Model::fromString("r.nn", "model r\ninput 5 steps 3\nrnn 4 relu\ngru 3\nlast\ndense 2\n"
                                  "loss cross_entropy\n");
    SessionOptions o;
    o.backend = "interp", o.cache = false;
    Session s(model, 2, o);
    CHECK_THAT(errorOf<Error>([&] { (void)s.throughTime(); }),
               Catch::Contains("throughTime: no gradients yet"));
    std::vector<float> x(2 * 5 * 3);
    for (size_t i = 0; i < x.size(); ++i)
        x[i] = float(std::sin(double(i)));
    const std::vector<int32_t> labels = {1, 0};
    s.backward(x.data(), labels.data());
    const std::vector<ThroughTimeStatistics> t = s.throughTime();
    REQUIRE(t.size() == 2);
    CHECK(t[0].layer == "layers.0");
    CHECK(t[0].cell == "rnn relu");
    CHECK(t[1].layer == "layers.1");
    CHECK(t[1].cell == "gru");
    for (const ThroughTimeStatistics& l : t) {
        REQUIRE(l.gradNorm.size() == 5);
        CHECK(l.gradNorm.back() > 0);
        CHECK(l.vanishingFactor == l.gradNorm.front() / l.gradNorm.back());
    }
    CHECK(t[0].gradNorm != t[1].gradNorm);
    // A model without recurrent layers has none, once its gradients exist.
    Session dense(Model::fromString("m.nn", "model m\ninput 3\ndense 2\nloss cross_entropy\n"), 2,
                  o);
    const std::vector<float> x3 = {0.5f, -1, 2, 1, 0, -0.5f};
    dense.backward(x3.data(), labels.data());
    CHECK(dense.throughTime().empty());
}

TEST_CASE("every misuse of a Session or a Model throws gradc::Error with a message", "[session]") {
    const Model model = Model::fromString("m.nn", "model m\ninput 3\ndense 4 relu\ndense 5 tanh\ndense 3\n"
                                                  "loss cross_entropy\n");
    const Model regression = Model::fromString("r.nn", "model r\ninput 3\ndense 4 relu\ndense 2\nloss mse\n");
    for (const char* backend : {"jit", "interp"}) {
        INFO(backend);
        SessionOptions o;
        o.backend = backend;
        o.cache = false;
        Session s(model, 4, o);
        std::vector<float> x(12, 0.25f), logits(12), targets(8, 0.5f);
        std::vector<int32_t> labels = {0, 1, 2, 1};

        // Results asked for before the pass that makes them.
        CHECK_THAT(errorOf<Error>([&] { (void)s.layerOutputs(); }),
                   Catch::Contains("layerOutputs: no layer outputs yet: call evaluate() first"));
        CHECK_THAT(errorOf<Error>([&] { (void)s.gradientStatistics(); }),
                   Catch::Contains("gradientStatistics: no gradients yet: call backward() or trainStep() first"));
        CHECK_THAT(errorOf<Error>([&] { (void)s.vanishingFactor(); }),
                   Catch::Contains("vanishingFactor: no gradients yet"));
        CHECK_THAT(
            errorOf<Error>([&] { (void)s.throughTime(); }),
            Catch::Contains("throughTime: no gradients yet: call backward() or trainStep() first"));
        CHECK_THAT(errorOf<Error>([&] { (void)s.gradients(); }), Catch::Contains("gradients: no gradients yet"));
        CHECK_THAT(errorOf<Error>([&] { (void)s.activationStatistics(); }),
                   Catch::Contains("activationStatistics: no activations yet"));
        // A forward pass gives activations, not gradients.
        s.forward(x.data(), labels.data());
        CHECK(s.activationStatistics().size() == 2);
        CHECK_THAT(errorOf<Error>([&] { (void)s.gradientStatistics(); }), Catch::Contains("no gradients yet"));
        // Training-mode passes give no layer outputs.
        s.trainStep(x.data(), labels.data());
        CHECK_THAT(errorOf<Error>([&] { (void)s.layerOutputs(); }), Catch::Contains("call evaluate() first"));
        s.evaluate(x.data(), labels.data(), logits.data());
        CHECK(s.layerOutputs().size() == 4);
        CHECK(s.gradientStatistics().size() == 6);

        // Labels that are not classes: every call that takes them checks every one, before
        // anything runs.
        const int64_t steps = s.steps();
        for (int32_t bad : {-1, 3, 1 << 30}) {
            labels[2] = bad;
            const std::string expected = "labels[2] is " + std::to_string(bad) + ", not a class of model m (0 to 2)";
            CHECK_THAT(errorOf<Error>([&] { s.forward(x.data(), labels.data()); }), Catch::Contains("forward: " + expected));
            CHECK_THAT(errorOf<Error>([&] { s.backward(x.data(), labels.data()); }), Catch::Contains("backward: " + expected));
            CHECK_THAT(errorOf<Error>([&] { s.trainStep(x.data(), labels.data()); }),
                       Catch::Contains("trainStep: " + expected));
            CHECK_THAT(errorOf<Error>([&] { s.evaluate(x.data(), labels.data(), logits.data()); }),
                       Catch::Contains("evaluate: " + expected));
        }
        labels[2] = 2;
        CHECK(s.steps() == steps);

        // Null pointers (logits may be null: they are optional).
        CHECK_THAT(errorOf<Error>([&] { s.forward(nullptr, labels.data()); }), Catch::Contains("the input x is a null pointer"));
        CHECK_THAT(errorOf<Error>([&] { s.backward(x.data(), static_cast<const int32_t*>(nullptr)); }),
                   Catch::Contains("backward: the labels are a null pointer"));
        CHECK_THAT(errorOf<Error>([&] { s.trainStep(nullptr, labels.data()); }), Catch::Contains("trainStep: the input x"));
        CHECK_THAT(errorOf<Error>([&] { s.evaluate(x.data(), static_cast<const int32_t*>(nullptr)); }),
                   Catch::Contains("evaluate: the labels are a null pointer"));
        CHECK(errorOf<Error>([&] { s.evaluate(x.data(), labels.data(), nullptr); }).empty());

        // Targets of the wrong kind for the loss.
        CHECK_THAT(errorOf<Error>([&] { s.backward(x.data(), targets.data()); }),
                   Catch::Contains("model m has loss cross_entropy: pass int32 class labels"));
        Session r(regression, 4, o);
        CHECK_THAT(errorOf<Error>([&] { r.trainStep(x.data(), labels.data()); }),
                   Catch::Contains("model r has loss mse: pass float targets"));
        CHECK_THAT(errorOf<Error>([&] { r.forward(x.data(), static_cast<const float*>(nullptr)); }),
                   Catch::Contains("forward: the targets are a null pointer"));
        CHECK(errorOf<Error>([&] { r.backward(x.data(), targets.data()); }).empty());

        // The arrays stay in place: a pointer taken once stays valid.
        TempDir folder("session");
        const std::string saved = (folder.path / "params.safetensors").string();
        float* params = s.parameters();
        const float* grads = s.gradients();
        s.saveParameters(saved);
        const float first = params[0];
        params[0] += 1;
        s.loadParameters(saved);
        std::filesystem::remove(saved);
        CHECK(params[0] == first);
        s.initialiseParameters(5);
        s.backward(x.data(), labels.data());
        CHECK(s.parameters() == params);
        CHECK(s.gradients() == grads);

        // Bad optimiser settings and parameter files.
        OptimizerOptions adam;
        adam.method = "adamw";
        CHECK_THAT(errorOf<Error>([&] { s.setOptimizer(adam); }), Catch::Contains("adamw"));
        CHECK_THAT(errorOf<Error>([&] { s.loadParameters("/nonexistent/p.safetensors"); }),
                   Catch::Contains("/nonexistent/p.safetensors"));
        CHECK_THAT(errorOf<Error>([&] { s.saveParameters("/nonexistent/dir/p.safetensors"); }),
                   Catch::Contains("/nonexistent/dir/p.safetensors"));

        // A Session that was moved from: every call is an error; the one moved to works.
        Session moved(std::move(s));
        CHECK(moved.steps() == steps);
        const std::string gone = "this Session was moved from";
        CHECK_THAT(errorOf<Error>([&] { (void)s.batch(); }), Catch::Contains("Session::batch: " + gone));
        CHECK_THAT(errorOf<Error>([&] { (void)s.parameters(); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { (void)s.gradients(); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { s.initialiseParameters(1); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { s.loadParameters("p"); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { s.saveParameters("p"); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { s.forward(x.data(), labels.data()); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { s.forward(x.data(), targets.data()); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { s.backward(x.data(), labels.data()); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { s.backward(x.data(), targets.data()); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { s.setOptimizer({}); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { s.trainStep(x.data(), labels.data()); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { s.trainStep(x.data(), targets.data()); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { (void)s.steps(); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { s.evaluate(x.data(), labels.data()); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { s.evaluate(x.data(), targets.data()); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { (void)s.layerOutputs(); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { (void)s.gradientStatistics(); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { (void)s.activationStatistics(); }), Catch::Contains(gone));
        CHECK_THAT(errorOf<Error>([&] { (void)s.vanishingFactor(); }), Catch::Contains(gone));
        s = std::move(moved); // a moved-from Session may be assigned to, and then works
        CHECK(s.steps() == steps);
        CHECK_THAT(errorOf<Error>([&] { (void)moved.batch(); }), Catch::Contains(gone));
    }

    // Sessions that cannot be made.
    CHECK_THAT(errorOf<Error>([&] { Session(model, 0); }), Catch::Contains("batch size 0 is out of range"));
    CHECK_THAT(errorOf<Error>([&] { Session(model, -5); }), Catch::Contains("batch size -5 is out of range"));
    CHECK_THAT(errorOf<Error>([&] { Session(model, int64_t(1) << 40); }), Catch::Contains("is out of range"));
    SessionOptions gpu;
    gpu.backend = "gpu";
    CHECK_THAT(errorOf<Error>([&] { Session(model, 4, gpu); }), Catch::Contains("backend 'gpu' is not one of jit, interp"));
    SessionOptions negative;
    negative.threads = -1;
    CHECK_THAT(errorOf<Error>([&] { Session(model, 4, negative); }), Catch::Contains("-1 threads is out of range"));

    // A Model that was moved from.
    Model m = model, other = std::move(m);
    CHECK(other.name() == "m");
    const std::string gone = "this Model was moved from";
    CHECK_THAT(errorOf<Error>([&] { (void)m.name(); }), Catch::Contains(gone));
    CHECK_THAT(errorOf<Error>([&] { (void)m.inputWidth(); }), Catch::Contains(gone));
    CHECK_THAT(errorOf<Error>([&] { (void)m.outputWidth(); }), Catch::Contains(gone));
    CHECK_THAT(errorOf<Error>([&] { (void)m.loss(); }), Catch::Contains(gone));
    CHECK_THAT(errorOf<Error>([&] { (void)m.parameters(); }), Catch::Contains(gone));
    CHECK_THAT(errorOf<Error>([&] { (void)m.parameterCount(); }), Catch::Contains(gone));
    CHECK_THAT(errorOf<Error>([&] { (void)m.buffers(); }), Catch::Contains(gone));
    CHECK_THAT(errorOf<Error>([&] { Session(m, 4); }), Catch::Contains(gone));
    // Models that cannot be made.
    CHECK_THAT(errorOf<Error>([] { Model::fromFile("/nonexistent/m.nn"); }), Catch::Contains("/nonexistent/m.nn: error"));
    CHECK_THAT(errorOf<Error>([] { Model::fromString("bad.nn", "input 4\ndense 0\nloss mse\n"); }),
               Catch::Contains("bad.nn:2"));
}

TEST_CASE("a Session compiled for isa avx2 gives native's loss and a bad isa is an Error naming SessionOptions::isa",
          "[session][isa]") {
    // The seed network (models/seed_sigmoid.nn).
    const Model model = Model::fromString("seed_sigmoid.nn", "model seed_sigmoid\ninput 784\ndense 512 sigmoid\n"
                                                             "dense 256 sigmoid\ndense 256 sigmoid\ndense 128 sigmoid\n"
                                                             "dense 10\nloss cross_entropy\n");
    std::mt19937 rng(3);
    std::uniform_real_distribution<float> pixel(-1, 1);
    std::vector<float> x(size_t(32) * 784);
    for (float& v : x) v = pixel(rng);
    std::vector<int32_t> labels(32);
    for (size_t i = 0; i < labels.size(); ++i) labels[i] = int32_t(i % 10);
    std::string described;
    auto lossWith = [&](const char* isa) {
        SessionOptions o;
        o.cache = false;
        o.isa = isa;
        Session s(model, 32, o);
        described = s.describe();
        s.initialiseParameters(42);
        return s.backward(x.data(), labels.data());
    };
    const float native = lossWith("native");
    CHECK(std::isfinite(native));
    CHECK_THAT(described, Catch::StartsWith("jit f32, compiled in "));
    std::string avx2Error;
    float avx2 = 0;
    try {
        avx2 = lossWith("avx2");
    } catch (const Error& e) {
        avx2Error = e.what();
    }
    // describe() names the instruction set only when it is not the host's whole one.
    const bool avx512 = hostHasAvx512();
    if (avx2Error.empty()) {
        CHECK(std::fabs(avx2 - native) <= 1e-5 * std::max(1.0f, std::fabs(native)));
        CHECK_THAT(described, Catch::StartsWith(avx512 ? "jit f32 avx2, compiled in " // the isa reached the code
                                                       : "jit f32, compiled in "));
    }
    else CHECK_THAT(avx2Error, Catch::Contains("has no AVX2 and FMA")); // a CPU without AVX2
    if (avx512) {
        lossWith("avx512");
        CHECK_THAT(described, Catch::StartsWith("jit f32, compiled in "));
    }
    CHECK_THAT(errorOf<Error>([&] { lossWith("avx3"); }),
               Catch::Contains("SessionOptions::isa avx3 is not an instruction set gradc generates code for"));
    SessionOptions interp; // the interpreter has no instruction set: a bad name is ignored
    interp.backend = "interp";
    interp.isa = "avx3";
    CHECK(Session(model, 2, interp).describe() == "interp");
}

TEST_CASE("a Session on a CNN (interp) takes [B,1,28,28] images: forward, backward, steps, layer outputs", "[session][cnn]") {
    // A strided 5x5 convolution with padding, BatchNorm2d, average pooling, a 3x1 kernel
    // without bias, flatten, dense: layers.0 to layers.7 in nn.Sequential's numbering.
    const Model model = Model::fromString("cnn.nn", "model cnn\ninput 1x28x28\nconv 3 5x5 stride=3 padding=2 relu\n"
                                                    "batchnorm\navgpool 2\nconv 2 3x1 tanh bias=false\nflatten\n"
                                                    "dense 4\nloss cross_entropy\n");
    CHECK(model.inputShape() == std::vector<int64_t>{1, 28, 28});
    CHECK(model.inputWidth() == 784);
    CHECK(model.outputWidth() == 4);
    const std::vector<ParameterInfo> params = model.parameters();
    REQUIRE(params.size() == 7);
    CHECK(params[0].name == "layers.0.weight");
    CHECK(params[0].shape == std::vector<int64_t>{3, 1, 5, 5});
    CHECK(params[4].name == "layers.4.weight");
    CHECK(params[4].shape == std::vector<int64_t>{2, 3, 3, 1});
    CHECK(params[5].shape == std::vector<int64_t>{4, 30});
    CHECK(model.buffers().size() == 2); // BatchNorm2d's running_mean and running_var
    SessionOptions o;
    o.backend = "interp";
    const int64_t batch = 3;
    Session s(model, batch, o);
    s.initialiseParameters(11);
    std::mt19937 rng(5);
    std::uniform_real_distribution<float> pixel(-1, 1);
    std::vector<float> x(size_t(batch) * 784), logits(size_t(batch) * 4);
    for (float& v : x) v = pixel(rng);
    const std::vector<int32_t> labels = {0, 3, 1};

    const float loss = s.forward(x.data(), labels.data(), logits.data());
    CHECK(std::isfinite(loss));
    CHECK(std::all_of(logits.begin(), logits.end(), [](float v) { return std::isfinite(v); }));
    CHECK(s.backward(x.data(), labels.data()) == loss);
    // The gradients are the loss's slopes: central differences of forward() for a few entries
    // of the conv weights, the conv bias and the batchnorm scale.
    const std::vector<float> grads(s.gradients(), s.gradients() + model.parameterCount());
    float* state = s.parameters();
    for (int64_t at : {params[0].offset + 12, params[0].offset + 3, params[1].offset + 2, params[2].offset + 1,
                       params[4].offset + 5}) {
        INFO(at);
        const float keep = state[at];
        state[at] = keep + 1e-3f;
        const double up = s.forward(x.data(), labels.data()), h1 = state[at] - keep;
        state[at] = keep - 1e-3f;
        const double down = s.forward(x.data(), labels.data()), h2 = keep - state[at];
        state[at] = keep;
        CHECK(std::fabs((up - down) / (h1 + h2) - grads[size_t(at)]) <= 1e-3 * std::max(1.0f, std::fabs(grads[size_t(at)])));
    }
    const std::vector<GradientStatistics> stats = s.gradientStatistics();
    REQUIRE(stats.size() == 7);
    CHECK(stats[0].shape == std::vector<int64_t>{3, 1, 5, 5});
    CHECK(std::isfinite(s.vanishingFactor())); // layers.0.weight over layers.7.weight
    const std::vector<ActivationStatistics> acts = s.activationStatistics();
    REQUIRE(acts.size() == 2);
    CHECK(acts[0].function == "relu");
    CHECK(acts[1].function == "tanh");

    // Training steps on the one batch lower its loss; batchnorm's running statistics move.
    OptimizerOptions adam;
    adam.method = "adam", adam.lr = 1e-2;
    s.setOptimizer(adam);
    const float first = s.trainStep(x.data(), labels.data());
    float last = first;
    for (int i = 0; i < 15; ++i) last = s.trainStep(x.data(), labels.data());
    CHECK(s.steps() == 16);
    CHECK(last < first);
    const ParameterInfo runningMean = model.buffers()[0];
    CHECK(runningMean.shape == std::vector<int64_t>{3});
    CHECK(s.parameters()[runningMean.offset] != 0.0f);

    // Evaluation mode and every module's output, images as [B,C,H,W].
    CHECK(std::isfinite(s.evaluate(x.data(), labels.data(), logits.data())));
    const std::vector<LayerOutput> outs = s.layerOutputs();
    REQUIRE(outs.size() == 7);
    const std::vector<std::vector<int64_t>> shapes = {{3, 3, 10, 10}, {3, 3, 10, 10}, {3, 3, 10, 10}, {3, 3, 5, 5},
                                                      {3, 2, 3, 5},   {3, 2, 3, 5},   {3, 30}};
    for (size_t i = 0; i < outs.size(); ++i) {
        INFO(outs[i].name << " " << outs[i].what);
        CHECK(outs[i].shape == shapes[i]);
        CHECK(int64_t(outs[i].values.size()) == shapes[i][0] * shapes[i][1] * (shapes[i].size() == 4 ? shapes[i][2] * shapes[i][3] : 1));
    }
    // flatten is the NCHW order: the flattened values are the pooled conv's, unmoved.
    CHECK(outs[6].values == outs[5].values);
    // A 3x1 kernel over [5,5] gives 3 rows of 5: tanh bounds them.
    CHECK(std::all_of(outs[5].values.begin(), outs[5].values.end(), [](float v) { return v > -1 && v < 1; }));
}

TEST_CASE("Session::setOptimizer with clipGradNorm clips the gradients' total norm before the step", "[session][clip]") {
    const Model model = Model::fromString("c.nn", "model c\ninput 3\ndense 6 relu\ndense 4\nloss cross_entropy\n");
    for (const char* backend : {"jit", "interp"}) {
        CAPTURE(backend);
        SessionOptions o;
        o.backend = backend, o.cache = false, o.threads = 1;
        Session clipped(model, 5, o), plain(model, 5, o);
        clipped.initialiseParameters(3), plain.initialiseParameters(3);
        const int64_t n = model.parameterCount();
        const std::vector<float> before(plain.parameters(), plain.parameters() + n);
        std::vector<float> x = {0.5f, -1, 2, 1, 0, -0.5f, 3, 1, 1, -2, 0.5f, 0.5f, 1, 1, -1};
        std::vector<int32_t> labels = {0, 1, 2, 3, 1};
        OptimizerOptions sgd;
        sgd.lr = 0.1, sgd.clipGradNorm = 0.01; // far below this batch's norm
        clipped.setOptimizer(sgd); // the training code is compiled again with the norm
        clipped.trainStep(x.data(), labels.data());
        plain.backward(x.data(), labels.data());
        double sumSq = 0;
        for (int64_t i = 0; i < n; ++i) sumSq += double(plain.gradients()[i]) * plain.gradients()[i];
        const double norm = std::sqrt(sumSq), coefficient = 0.01 / (norm + 1e-6);
        REQUIRE(coefficient < 0.5);
        for (int64_t i = 0; i < n; ++i) {
            CAPTURE(i);
            CHECK(clipped.gradients()[i] == Approx(plain.gradients()[i]).margin(1e-6)); // kept unclipped
            CHECK(clipped.parameters()[i] ==
                  Approx(before[size_t(i)] - 0.1 * coefficient * plain.gradients()[i]).epsilon(1e-5).margin(1e-7));
        }
        sgd.clipGradNorm = -1;
        CHECK_THAT(errorOf<Error>([&] { clipped.setOptimizer(sgd); }), Catch::Contains("gradient norm's limit -1"));
    }
}
