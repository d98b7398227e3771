// main.cpp — the `gradc` command: the table of commands (one file each), option parsing with
// Boost.Program_options, usage and help texts, and the exit status: 0 success, 1 an error in
// the user's input (model, data, parameters), 2 a usage error (unknown command, option or
// value).
#include "Commands.h"
#include "Jobs.h"
#include "Pipeline.h"

#include <fmt/format.h>

#include <cstdio>
#include <new>
#include <sstream>
#include <string>
#include <vector>

using namespace gradc;
using namespace gradc::cli;

namespace {

struct Command {
    const char* name;
    const char* args;    // after the command name, for the usage line
    const char* summary;
    void (*options)(po::options_description&); // declares the command's options
    int (*run)(const po::variables_map&);        // runs it: the exit status
};

const std::vector<Command>& commands() {
    static const std::vector<Command> cmds = {
        {"check", "MODEL [--batch N]",
         "parse and verify a model; print its layers, shapes and parameters",
         checkOptions, runCheck},
        {"dump", "MODEL --emit=STAGE [--batch N]",
         "print a pipeline stage: ast, graph, grad, layout, kernels, memplan, llvm, asm",
         dumpOptions, runDump},
        {"grads", "MODEL... [--data DIR] [--batch N] [--seed N] [--format table|json|csv] [--backend jit|interp]",
         "one batch forward and backward; per-layer gradient statistics",
         gradsOptions, runGrads},
        {"bench", "MODEL [--batch N] [--steps N]",
         "time the compiled forward + backward step",
         benchOptions, runBench},
        {"train", "MODEL [--epochs 50] [--batch 256] [--optimizer sgd|adam] [--lr X] [--momentum X] [--save FILE] [--log FILE.jsonl] [--logdir DIR]",
         "train on FashionMNIST (50,000 images; 10,000 validate) with early stopping; report test accuracy",
         trainOptions, runTrain},
        {"acts", "MODEL [--params FILE] [--count 1024] [--plot FILE.svg] [--format table|json]",
         "each layer's output distribution over the first training images (evaluation mode)",
         actsOptions, runActs},
        {"dead", "MODEL [--params FILE]",
         "per activation layer, the units that output zero for every training image",
         deadOptions, runDead},
        {"compile", "MODEL -o FILE.o [--header FILE.h] [--target-cpu portable|generic|native|NAME] [--emit obj|asm|llvm]",
         "compile a model ahead of time: an object file and a C header, linkable without LLVM",
         compileOptions, runCompile},
        {"act", "NAME... [--plot FILE.svg] [--model FILE]",
         "each activation and its derivative on [-5, 5]: a table, or the seed's figure",
         actOptions, runAct},
        {"plot", "RUN.jsonl... -o FILE.svg|.pdf|.png",
         "training runs from their logs: loss, accuracy and the gradient flow over training",
         plotOptions, runPlot},
        {"derive", "EXPR|ACTIVATION [--model FILE]",
         "print an activation or a formula in x and its simplified symbolic derivative",
         deriveOptions, runDerive},
    };
    return cmds;
}

void printUsage(FILE* out) {
    fmt::print(out, "usage: gradc COMMAND [OPTIONS] ...\n       gradc --help | --version\n\ncommands:\n");
    for (auto& c : commands()) fmt::print(out, "  {:<8} {}\n", c.name, c.summary);
    fmt::print(out, "\n'gradc COMMAND --help' describes a command's options.\n");
}

std::string commandUsage(const Command& c, const po::options_description& d) {
    std::ostringstream os;
    os << d;
    return fmt::format("usage: gradc {} {}\n{}\n\noptions:\n{}", c.name, c.args, c.summary, os.str());
}

int runCommand(const Command& c, const std::vector<std::string>& args) {
    po::options_description visible;
    c.options(visible);
    visible.add_options()("help,h", "show this help");
    po::positional_options_description pos;
    const std::string name = c.name;
    pos.add(name == "derive" ? "expr" : name == "grads" ? "models" : name == "act" ? "names" : name == "plot" ? "runs" : "model",
            name == "grads" || name == "act" || name == "plot" ? -1 : 1);
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(visible).positional(pos).run(), vm);
        if (vm.count("help")) {
            fmt::print("{}", commandUsage(c, visible));
            return 0;
        }
        po::notify(vm);
    } catch (const po::error& e) {
        fmt::print(stderr, "gradc {}: error: {}\n{}", c.name, e.what(), commandUsage(c, visible));
        return 2;
    }
    try {
        return c.run(vm);
    } catch (const UsageError& e) {
        fmt::print(stderr, "gradc {}: error: {}\n{}", c.name, e.what(), commandUsage(c, visible));
        return 2;
    } catch (const OptionError& e) { // a job's option out of range: named as the command line spells it
        fmt::print(stderr, "gradc {}: error: {}\n{}", c.name, e.flag, commandUsage(c, visible));
        return 2;
    }
}

} // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    try {
        if (args.empty()) {
            printUsage(stderr);
            return 2;
        }
        const std::string& first = args[0];
        if (first == "--help" || first == "-h" || first == "help") {
            printUsage(stdout);
            return 0;
        }
        if (first == "--version") {
            fmt::print("{}\n", versionString());
            return 0;
        }
        for (auto& c : commands())
            if (first == c.name) return runCommand(c, {args.begin() + 1, args.end()});
        fmt::print(stderr, "gradc: error: {} '{}'\n",
                   first.rfind('-', 0) == 0 ? "unknown option" : "unknown command", first);
        printUsage(stderr);
        return 2;
    } catch (const UserError& e) {
        std::fflush(stdout);
        fmt::print(stderr, "{}", e.format());
        return 1;
    } catch (const std::bad_alloc&) {
        std::fflush(stdout);
        fmt::print(stderr, "gradc: error: out of memory\n");
        return 1;
    } catch (const std::exception& e) {
        // The last resort: every known cause is a UserError, but no input may end in abort().
        std::fflush(stdout);
        fmt::print(stderr, "gradc: error: {}\n", e.what());
        return 1;
    } catch (...) {
        std::fflush(stdout);
        fmt::print(stderr, "gradc: error: an unexpected failure (an exception of unknown type)\n");
        return 1;
    }
}
