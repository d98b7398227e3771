// example.cpp — gradc embedded in a C++ program: compile a model, make a session for a batch,
// initialise the parameters, run forward and backward on our own buffers, read statistics,
// train a few steps and evaluate; real images through gradc/Data.h, the logits of inputs
// without labels, a session on one thread with a cache folder of its own; then one of the
// gradc command's jobs as a library call.
//   example MODEL.nn
// It checks itself: the compiled gradients equal the reference interpreter's, and the seed
// network with sigmoid shows vanishing gradients.
#include <gradc/Data.h>
#include <gradc/Jobs.h>
#include <gradc/Model.h>
#include <gradc/Session.h>
#include <gradc/Version.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <unistd.h>
#include <random>
#include <vector>

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: example MODEL.nn\n");
        return 2;
    }
    try {
        gradc::Model model = gradc::Model::fromFile(argv[1]);
        const int batch = 64;
        gradc::Session session(model, batch);               // native code (JIT)
        session.initialiseParameters(42);

        std::vector<float> x(size_t(batch * model.inputWidth()));
        std::vector<int32_t> labels(batch);
        std::mt19937 rng(1);
        for (float& v : x) v = std::uniform_real_distribution<float>(-1, 1)(rng);
        for (int32_t& l : labels) l = int32_t(rng() % uint32_t(model.outputWidth()));

        std::vector<float> logits(size_t(batch * model.outputWidth()));
        float loss = session.forward(x.data(), labels.data(), logits.data());
        float loss2 = session.backward(x.data(), labels.data());
        std::printf("%s: %lld parameters, loss %.6f\n", model.name().c_str(),
                    (long long)model.parameterCount(), loss);
        for (const gradc::GradientStatistics& s : session.gradientStatistics())
            std::printf("  %-16s abs_mean %.3e  l2 %.3e\n", s.name.c_str(), s.absMean, s.l2);
        for (const gradc::ActivationStatistics& a : session.activationStatistics())
            std::printf("  %-16s %-8s mean %.3f  |f'|<0.01 %.1f%%\n", a.name.c_str(), a.function.c_str(), a.mean,
                        100 * a.lowGradientFraction);
        std::printf("vanishing factor %.3e\n", session.vanishingFactor());

        // The same step in the reference interpreter, from the same parameters.
        gradc::SessionOptions reference;
        reference.backend = "interp";
        gradc::Session check(model, batch, reference);
        bool misuseReported = false;
        try { // a misuse is a gradc::Error, never an abort: no evaluate() has run
            check.layerOutputs();
        } catch (const gradc::Error& e) {
            std::printf("a misuse is reported: %s\n", e.what());
            misuseReported = true;
        }
        std::copy(session.parameters(), session.parameters() + model.parameterCount(), check.parameters());
        float loss3 = check.backward(x.data(), labels.data());
        double worst = 0, scale = 0;
        for (int64_t i = 0; i < model.parameterCount(); ++i) {
            worst = std::max(worst, double(std::fabs(session.gradients()[i] - check.gradients()[i])));
            scale = std::max(scale, double(std::fabs(check.gradients()[i])));
        }
        std::printf("largest difference from the interpreter: %.2e of the largest gradient\n", worst / scale);
        bool ok = misuseReported && std::fabs(loss - loss2) < 1e-6 && std::fabs(loss - loss3) < 1e-4 && worst / scale < 1e-4;
        if (model.name() == "seed_sigmoid") ok = ok && session.vanishingFactor() < 1e-2;
        // Training: SGD with momentum on one batch, then the same batch in evaluation mode.
        gradc::OptimizerOptions sgd;
        sgd.lr = 0.05, sgd.momentum = 0.9;
        session.setOptimizer(sgd);
        float first = session.trainStep(x.data(), labels.data()), last = first;
        for (int i = 0; i < 50; ++i) last = session.trainStep(x.data(), labels.data());
        float evalLoss = session.evaluate(x.data(), labels.data(), logits.data());
        std::printf("training: loss %.4f -> %.4f in %lld steps; evaluation-mode loss %.4f; %zu layer outputs\n", first,
                    last, (long long)session.steps(), evalLoss, session.layerOutputs().size());
        ok = ok && last < first && std::isfinite(evalLoss) && session.steps() == 51 &&
             session.layerOutputs().size() == 8;
        // Real images: the first batch of the test split, normalised as the commands do; the
        // logits of a session on one thread whose compiled code is cached in a folder of our own.
        std::printf("gradc %s (version number %d)\n", GRADC_VERSION, GRADC_VERSION_NUMBER);
        const gradc::ImageSet images = gradc::readImages(gradc::defaultDataDir(), /*train=*/false, batch);
        const std::filesystem::path cache =
            std::filesystem::temp_directory_path() / ("gradc-embed-cache-" + std::to_string(::getpid()));
        gradc::SessionOptions own;
        own.threads = 1, own.cacheDir = cache.string();
        gradc::Session one(model, batch, own);
        std::copy(session.parameters(), session.parameters() + model.parameterCount(), one.parameters());
        std::vector<float> unlabelled(logits.size()), labelled(logits.size());
        const float none = one.forward(images.pixels.data(), nullptr, unlabelled.data());
        const float withLabels = one.forward(images.pixels.data(), images.labels.data(), labelled.data());
        int correct = 0;
        for (int b = 0; b < batch; ++b) {
            const float* row = &labelled[size_t(b * model.outputWidth())];
            correct += std::max_element(row, row + model.outputWidth()) - row == images.labels[size_t(b)];
        }
        std::printf("%lld test images of %lld pixels: loss %.4f, %d of %d right after 51 steps on one batch\n",
                    (long long)images.count, (long long)images.features, withLabels, correct, batch);
        const bool cached = std::filesystem::exists(cache) && !std::filesystem::is_empty(cache);
        std::filesystem::remove_all(cache);
        ok = ok && GRADC_VERSION_MAJOR >= 0 && images.count == batch && images.features == model.inputWidth() &&
             std::isnan(none) && std::isfinite(withLabels) && unlabelled == labelled && cached;
        // The jobs of the gradc command are library calls too (gradc/Jobs.h): `gradc grads` on
        // the first 16 training images of the default data folder, in the interpreter.
        gradc::GradsOptions job;
        job.models = {argv[1]};
        job.batch = 16;
        job.session.backend = "interp";
        const std::vector<gradc::GradsReport> reports = gradc::grads(job);
        std::printf("grads job: %s, loss %.4f, %zu gradients, vanishing factor %.3e\n", reports.at(0).model.c_str(),
                    reports.at(0).loss, reports.at(0).gradients.size(), reports.at(0).vanishingFactor);
        ok = ok && reports.size() == 1 && reports[0].gradients.size() == model.parameters().size() &&
             std::isfinite(reports[0].loss);
        try {
            gradc::Model::fromString("bad.nn", "input 4\ndense 0\nloss mse\n");
            ok = false;
        } catch (const gradc::Error& e) {
            std::printf("a bad model is reported: %s\n", e.what());
        }
        std::printf(ok ? "ok\n" : "FAILED\n");
        return ok ? 0 : 1;
    } catch (const gradc::Error& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
