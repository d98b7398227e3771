// compile.cpp — `gradc compile MODEL -o model.o --header model.h`: ahead-of-time compilation.
#include "Commands.h"

#include "Aot.h"
#include "Pipeline.h"

#include <fmt/format.h>

namespace gradc::cli {

void compileOptions(po::options_description& d) {
    addModelOptions(d);
    d.add_options()("output,o", po::value<std::string>()->value_name("FILE"), "the object file (or .s, .ll) to write")(
        "header", po::value<std::string>()->value_name("FILE"), "the C header to write")(
        "target-cpu", po::value<std::string>()->default_value(kPortableCpu),
        "portable (the x86-64 baseline, x86-64-v3 and x86-64-v4 in one object, chosen at run time), generic (the "
        "x86-64 baseline alone), native (this machine), or an LLVM CPU name such as x86-64-v3")(
        "emit", po::value<std::string>()->default_value("obj"), "obj | asm | llvm")(
        "prefix", po::value<std::string>(), "prefix of the C symbols (default: the model's name)")(
        "dtype", po::value<std::string>()->value_name("f32|f64")->default_value("f32"), "element type: f32 | f64");
}

/// `gradc compile MODEL -o model.o --header model.h`: ahead-of-time compilation.
int runCompile(const po::variables_map& vm) {
    AotOptions o;
    o.targetCpu = vm["target-cpu"].as<std::string>();
    if (o.targetCpu == "help") {
        for (auto& name : knownCpus()) fmt::print("{}\n", name);
        return 0;
    }
    if (!vm.count("output")) throw UsageError("-o FILE is required");
    o.f64 = codegenOptions(vm).f64;
    o.emit = vm["emit"].as<std::string>();
    if (vm.count("prefix")) o.prefix = vm["prefix"].as<std::string>();
    if (const std::string error = aotOptionsError(o); !error.empty()) throw UsageError(error);
    o.source = vm["model"].as<std::string>();
    OutputSet outputs;
    outputs.input(o.source);
    outputs.output(fileOption(vm, "output"));
    outputs.output(fileOption(vm, "header"), "the header");
    AotResult r = compileAhead(compileFile(o.source, semaOptions(vm)).graph, o);
    outputs.set(vm["output"].as<std::string>(), r.output);
    if (vm.count("header")) outputs.set(vm["header"].as<std::string>(), r.header);
    outputs.commit();
    return 0;
}

} // namespace gradc::cli
