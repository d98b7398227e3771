// Options.cpp — the option readers that several commands share.
#include "Options.h"

#include "Figure.h"

#include "Data.h"
#include "Jobs.h"
#include "Pipeline.h"

#include <fmt/format.h>

#include <algorithm>
#include <cfloat>
#include <cstdio>
#include <tuple>

namespace gradc::cli {

std::string thousands(int64_t v) {
    std::string digits = std::to_string(v < 0 ? -v : v), out;
    for (size_t i = 0; i < digits.size(); ++i) {
        if (i && (digits.size() - i) % 3 == 0) out += ',';
        out += digits[i];
    }
    return (v < 0 ? "-" : "") + out;
}

SemaOptions semaOptions(const po::variables_map& vm) {
    SemaOptions o;
    o.batch = vm["batch"].as<int64_t>();
    if (o.batch < 1 || o.batch > kMaxBatch)
        throw UsageError(fmt::format("--batch {} is out of range (1 to {})", o.batch, kMaxBatch));
    return o;
}

void addModelOptions(po::options_description& d) {
    d.add_options()("model", po::value<std::string>()->value_name("FILE")->required(), "model file (.nn)")(
        "batch", po::value<int64_t>()->default_value(256), "batch size the graph is built for");
}

void addCodegenOptions(po::options_description& d, bool cache) {
    d.add_options()("dtype", po::value<std::string>()->value_name("f32|f64")->default_value("f32"),
                    "element type of the computation: f32 | f64 (train, acts, dead: every array)")(
        "threads", po::value<int>()->default_value(0), "threads for compiled code (0: all cores)");
    if (cache) d.add_options()("no-cache", "compile afresh: neither read nor write the cache of compiled code");
    d.add_options()(
        "isa", po::value<std::string>()->value_name("native|avx2|avx512")->default_value(std::string(), "GRADC_ISA, else native"),
        "instruction set of the compiled code: native (every feature of this CPU) | avx2 (AVX2 and FMA, no "
        "AVX-512) | avx512");
}

void addDataOptions(po::options_description& d) {
    d.add_options()("data", po::value<std::string>()->value_name("DIR")->default_value(kDefaultDataDir),
                    "directory of IDX files (train-images-idx3-ubyte[.gz], ...)")(
        "normalize", po::value<std::string>()->value_name("MEAN,STD")->default_value("0.5,0.5"), "MEAN,STD: inputs are (pixel/255 - MEAN) / STD")(
        "seed", po::value<std::string>()->value_name("N")->default_value("42"), "parameter initialisation seed (train: and the shuffling of every epoch)")(
        "params", po::value<std::string>()->value_name("FILE"), "start from the parameters in FILE.safetensors")(
        "backend", po::value<std::string>()->value_name("jit|interp")->default_value("jit"), "jit | interp");
    addCodegenOptions(d);
}

uint64_t seedOption(const po::variables_map& vm) {
    const std::string text = vm["seed"].as<std::string>();
    uint64_t v = 0;
    bool ok = !text.empty() && text.size() <= 20;
    for (char c : text) {
        ok = ok && c >= '0' && c <= '9';
        if (!ok) break;
        const uint64_t digit = uint64_t(c - '0');
        ok = v <= (UINT64_MAX - digit) / 10;
        v = v * 10 + digit;
    }
    if (!ok) throw UsageError(fmt::format("--seed '{}' is not a whole number from 0 to {}", text, UINT64_MAX));
    return v;
}

CodegenOptions codegenOptions(const po::variables_map& vm) {
    CodegenOptions o;
    if (vm.count("threads")) {
        o.threads = vm["threads"].as<int>();
        checkThreads(o.threads);
    }
    o.cache = !vm.count("no-cache");
    const std::string dtype = vm["dtype"].as<std::string>();
    if (dtype != "f32" && dtype != "f64")
        throw UsageError(fmt::format("--dtype={} is not an element type (f32, f64)", dtype));
    o.f64 = dtype == "f64";
    // Checked here, so a bad name is a usage error: from --isa, or GRADC_ISA's default. The
    // interpreter has no instruction set and ignores both, as Session does (checkSession).
    const bool interp = vm.count("backend") && vm["backend"].as<std::string>() == "interp";
    if (vm.count("isa") && !interp) {
        try {
            o.isa = resolveIsa(vm["isa"].as<std::string>(), "--isa");
        } catch (const UserError& e) {
            throw UsageError(e.what());
        }
    }
    return o;
}

void declareDataInputs(OutputSet& outputs, const std::string& dir) {
    for (const char* name : {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                             "t10k-labels-idx1-ubyte"})
        for (const char* ext : {"", ".gz"}) outputs.input(fmt::format("{}/{}{}", dir, name, ext));
}

std::string fileOption(const po::variables_map& vm, const char* name) {
    return vm.count(name) ? vm[name].as<std::string>() : std::string();
}

std::string figureOption(const po::variables_map& vm, const char* name) {
    const std::string path = fileOption(vm, name);
    if (!path.empty()) figureFormat(path); // an unknown extension is refused before any work
    return path;
}

std::pair<double, double> parseNormalize(const std::string& text) {
    double mean = 0, std = 0;
    char comma = 0, extra = 0;
    if (std::sscanf(text.c_str(), "%lf %c %lf %c", &mean, &comma, &std, &extra) != 3 || comma != ',' ||
        !std::isfinite(mean) || !std::isnormal(std) || !(std > 0))
        throw UsageError(fmt::format("--normalize '{}' is not MEAN,STD with a finite MEAN and a normal STD > 0", text));
    if (std::max(std::fabs(mean), std::fabs(1 - mean)) / std > FLT_MAX)
        throw UsageError(fmt::format("--normalize '{}': (pixel/255 - MEAN) / STD overflows a float", text));
    return {mean, std};
}

DataOptions dataOptions(const po::variables_map& vm) {
    DataOptions o;
    o.dir = vm["data"].as<std::string>();
    std::tie(o.mean, o.std) = parseNormalize(vm["normalize"].as<std::string>());
    return o;
}

std::string backendOption(const po::variables_map& vm) {
    const std::string backend = vm["backend"].as<std::string>();
    if (backend != "interp" && backend != "jit")
        throw UsageError(fmt::format("--backend={} is not available (backends: jit, interp)", backend));
    return backend;
}

ClassifierOptions classifierOptions(const po::variables_map& vm) {
    ClassifierOptions o;
    o.model = vm["model"].as<std::string>();
    const CodegenOptions codegen = codegenOptions(vm);
    o.session = {backendOption(vm), codegen.cache, codegen.threads, codegen.isa, codegen.cacheDir};
    o.f64 = codegen.f64;
    o.data = dataOptions(vm);
    o.seed = seedOption(vm);
    o.params = fileOption(vm, "params");
    return o;
}

ActivationTable activationTable(const po::variables_map& vm) {
    ActivationTable table;
    if (vm.count("model")) {
        FrontEnd fe = compileFile(vm["model"].as<std::string>());
        for (auto& s : fe.ast.stmts)
            if (s->kind == Stmt::Kind::ActivationDef) table.define(*s);
    }
    return table;
}

std::optional<ActRef> activationUse(const ExprAST& e) {
    if (e.kind != ExprAST::Kind::Var && e.kind != ExprAST::Kind::Call) return std::nullopt;
    ActRef ref{e.name, {}, e.loc};
    for (auto& a : e.args) {
        if (a->kind == ExprAST::Kind::Number) ref.args.push_back(a->number);
        else if (a->kind == ExprAST::Kind::Neg && a->args[0]->kind == ExprAST::Kind::Number) ref.args.push_back(-a->args[0]->number);
        else return std::nullopt;
    }
    return ref;
}

} // namespace gradc::cli
