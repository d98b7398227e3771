// RunLog.cpp — reading a training log back: each line a JSON object, checked as it is read.
#include "RunLog.h"

#include "Files.h"
#include "Source.h"
#include "Stats.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <sstream>

namespace gradc {
namespace {

using File = std::shared_ptr<const SourceFile>;

UserError lineError(const File& file, uint32_t line, const std::string& message) {
    return UserError({file, line, 1}, message);
}

/// A figure of the log: a number, or NaN for null (JSON's stand-in for NaN and Inf).
double number(const nlohmann::json& j, const char* key, const File& file, uint32_t line) {
    if (!j.contains(key)) throw lineError(file, line, fmt::format("an epoch without '{}'", key));
    const nlohmann::json& v = j[key];
    if (v.is_null()) return std::nan("");
    if (!v.is_number()) throw lineError(file, line, fmt::format("'{}' is not a number", key));
    return v.get<double>();
}

} // namespace

RunLog readRunLog(const std::string& path) {
    RunLog run;
    const size_t slash = path.rfind('/');
    run.name = path.substr(slash == std::string::npos ? 0 : slash + 1);
    if (const size_t dot = run.name.rfind('.'); dot != std::string::npos && dot > 0) run.name.resize(dot);
    const File file = makeSourceFile(path, readWholeFile(path, "the training log"));
    struct Points { // the gradients of epoch lines, and of step lines
        std::vector<double> steps;
        std::vector<std::vector<double>> means;
    } epochs, everyN;
    std::istringstream in(file->text);
    uint32_t line = 0;
    bool haveLayers = false; // the weights of the first line with gradients: every line's
    for (std::string text; std::getline(in, text);) {
        ++line;
        if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
        const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
        if (!j.is_object()) throw lineError(file, line, "not a JSON object: a log of gradc train --log has one a line");
        if (j.contains("end")) {
            if (j.contains("test_accuracy") && j["test_accuracy"].is_number())
                run.testAccuracy = j["test_accuracy"].get<double>();
            continue;
        }
        if (!j.contains("epoch")) continue; // a line of another kind: not for the figure
        const bool stepLine = j.contains("kind") && j["kind"] == "step";
        const double step = number(j, "step", file, line);
        if (!(step >= 0) || !std::isfinite(step)) throw lineError(file, line, "'step' is not a number of steps");
        if (!stepLine) {
            run.steps.push_back(step);
            run.trainLoss.push_back(number(j, "train_loss", file, line));
            run.valLoss.push_back(number(j, "val_loss", file, line));
            run.valAccuracy.push_back(number(j, "val_accuracy", file, line));
        }
        if (!j.contains("grads") || !j["grads"].is_array()) throw lineError(file, line, "an epoch without 'grads'");
        std::vector<std::string> names;
        std::vector<double> means;
        for (const auto& g : j["grads"]) {
            if (!g.is_object() || !g.contains("name") || !g["name"].is_string() || !g.contains("shape") ||
                !g["shape"].is_array())
                throw lineError(file, line, "a gradient in 'grads' without its name and shape");
            Shape shape;
            for (const auto& d : g["shape"]) {
                if (!d.is_number_integer()) throw lineError(file, line, "a shape that is not a list of integers");
                shape.push_back(d.get<int64_t>());
            }
            if (!isWeight(shape)) continue;
            names.push_back(g["name"].get<std::string>());
            if (!g.contains("abs_mean"))
                throw lineError(file, line, fmt::format("the gradient of {} without 'abs_mean'", names.back()));
            means.push_back(number(g, "abs_mean", file, line));
        }
        if (!haveLayers) run.layers = names, haveLayers = true;
        else if (names != run.layers)
            throw lineError(file, line, "the weights differ from the first line's: a log of one run has the same ones");
        Points& p = stepLine ? everyN : epochs;
        p.steps.push_back(step);
        p.means.resize(names.size());
        for (size_t l = 0; l < means.size(); ++l) p.means[l].push_back(means[l]);
    }
    if (run.steps.empty()) throw UserError({file, 0, 0}, "no epoch in the training log");
    Points& p = everyN.steps.empty() ? epochs : everyN;
    run.gradSteps = std::move(p.steps), run.meanAbs = std::move(p.means);
    run.meanAbs.resize(run.layers.size());
    return run;
}

} // namespace gradc
