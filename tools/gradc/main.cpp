// main.cpp — the `gradc` command: the table of commands (one file each), option parsing with
// Boost.Program_options, usage and help texts, and the exit status: 0 success, 1 an error in
// the user's input (model, data, parameters), 2 a usage error (unknown command, option or
// value).
#include "Cluster.h"
#include "Commands.h"
#include "Files.h"
#include "Jobs.h"
#include "Pipeline.h"

#include <fmt/format.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <new>
#include <regex>
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
    fmt::print(out, "usage: gradc COMMAND [OPTIONS] ...\n       gradc help [COMMAND] | --version\n\ncommands:\n");
    for (auto& c : commands()) fmt::print(out, "  {:<8} {}\n", c.name, c.summary);
    fmt::print(out, "\n'gradc help COMMAND' (or 'gradc COMMAND --help') describes a command's options.\n");
}

/// The command's positional option (its MODEL, MODEL..., NAME..., EXPR or RUN...).
const char* positionalOf(const Command& c) {
    const std::string name = c.name;
    return name == "derive" ? "expr" : name == "grads" ? "models" : name == "act" ? "names" : name == "plot" ? "runs"
                                                                                                       : "model";
}

/// The word an option's value is shown as: the value name its declaration gives (FILE, DIR,
/// MEAN,STD, jit|interp), else the choices its description starts with ("table | json | csv"),
/// N for a count, X for a number, or the option's name in capitals.
std::string placeholder(const po::option_description& o) {
    const auto* sem = o.semantic().get();
    // Boost's name(): the value name ("arg" when none is given), then " (=DEFAULT)".
    const std::string named = sem->name().substr(0, sem->name().find(" (="));
    if (named != "arg") return named;
    std::smatch m;
    const std::string& text = o.description();
    if (std::regex_search(text, m, std::regex("^([a-z0-9-]+(?: \\| [a-z0-9-]+)+)($|[ ;,(])"))) {
        std::string choices = m[1];
        choices.erase(std::remove(choices.begin(), choices.end(), ' '), choices.end());
        return choices;
    }
    if (dynamic_cast<const po::typed_value<int>*>(sem) || dynamic_cast<const po::typed_value<int64_t>*>(sem) ||
        dynamic_cast<const po::typed_value<uint64_t>*>(sem))
        return "N";
    if (dynamic_cast<const po::typed_value<double>*>(sem)) return "X";
    std::string upper = o.long_name();
    std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char ch) { return ch == '-' ? '_' : char(std::toupper(ch)); });
    return upper;
}

/// An option's default as the README writes it (0.9, not 0.90000000000000002); "" for none.
std::string defaultText(const po::option_description& o) {
    boost::any v;
    if (!o.semantic()->apply_default(v)) return "";
    if (auto* d = boost::any_cast<double>(&v)) return fmt::format("{:g}", *d);
    if (auto* i = boost::any_cast<int>(&v)) return std::to_string(*i);
    if (auto* i = boost::any_cast<int64_t>(&v)) return std::to_string(*i);
    if (auto* u = boost::any_cast<uint64_t>(&v)) return std::to_string(*u);
    if (auto* t = boost::any_cast<std::string>(&v)) return *t;
    return "";
}

/// The help of a command: its usage line and summary, then each option as it is typed, its
/// description wrapped to 80 columns and its default.
std::string commandUsage(const Command& c, const po::options_description& d) {
    struct Line {
        std::string left, text;
    };
    std::vector<Line> lines;
    size_t width = 0;
    for (const auto& o : d.options()) {
        if (o->long_name() == positionalOf(c)) continue; // in the usage line
        std::string left = "--" + o->long_name();
        const std::string shortName = o->canonical_display_name(po::command_line_style::allow_dash_for_short);
        if (shortName.size() == 2 && shortName[0] == '-') left = shortName + ", " + left;
        if (o->semantic()->max_tokens() > 0) left += " " + placeholder(*o);
        std::string text = o->description();
        const std::string def = defaultText(*o);
        if (!def.empty()) text += fmt::format(" (default: {})", def);
        width = std::max(width, left.size());
        lines.push_back({left, text});
    }
    width = std::min<size_t>(width, 30);
    std::string out = fmt::format("usage: gradc {} {}\n{}\n\noptions:\n", c.name, c.args, c.summary);
    for (auto& l : lines) {
        // Words wrapped at 80 columns, continued under the description's first column.
        std::string row = fmt::format("  {:<{}}  ", l.left, width);
        if (row.size() > width + 4) out += row + "\n", row = std::string(width + 4, ' ');
        const size_t indent = width + 4;
        std::istringstream words(l.text);
        size_t col = row.size();
        bool first = true;
        for (std::string w; words >> w;) {
            if (!first && col + 1 + w.size() > 80) out += row + "\n", row = std::string(indent, ' '), col = indent, first = true;
            if (!first) row += ' ', ++col;
            row += w, col += w.size(), first = false;
        }
        out += row + "\n";
    }
    return out;
}

/// Levenshtein distance, for suggestions.
size_t editDistance(const std::string& a, const std::string& b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); ++j)
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

/// "; did you mean 'X'?" for the nearest of `candidates` within a third of the word's length
/// (at least 2 edits, a swap of two letters being two; at most 3), or "".
std::string suggestion(const std::string& word, const std::vector<std::string>& candidates) {
    std::string best;
    size_t bestDistance = std::min<size_t>(3, std::max<size_t>(2, word.size() / 3)) + 1;
    for (auto& c : candidates) {
        const size_t dist = editDistance(word, c);
        if (dist < bestDistance) best = c, bestDistance = dist;
    }
    return best.empty() ? "" : fmt::format("; did you mean '{}'?", best);
}

int runCommand(const Command& c, const std::vector<std::string>& args) {
    po::options_description visible;
    c.options(visible);
    visible.add_options()("help,h", "show this help");
    po::positional_options_description pos;
    const std::string name = c.name;
    pos.add(positionalOf(c), name == "grads" || name == "act" || name == "plot" ? -1 : 1);
    po::variables_map vm;
    try {
        po::store(po::command_line_parser(args).options(visible).positional(pos).run(), vm);
        if (vm.count("help")) {
            fmt::print("{}", commandUsage(c, visible));
            return 0;
        }
        po::notify(vm);
    } catch (const po::required_option& e) {
        // The positional argument missing: named as the usage line names it.
        const std::string what = e.get_option_name() == std::string("--") + positionalOf(c)
                                     ? fmt::format("{} is missing (gradc {} {})", std::string(c.args).substr(0, std::string(c.args).find(' ')), c.name, c.args)
                                     : fmt::format("the option {} is required", e.get_option_name());
        fmt::print(stderr, "gradc {}: error: {}\n{}", c.name, what, commandUsage(c, visible));
        return 2;
    } catch (const po::unknown_option& e) {
        std::vector<std::string> names;
        for (const auto& o : visible.options())
            if (o->long_name() != positionalOf(c)) names.push_back("--" + o->long_name());
        fmt::print(stderr, "gradc {}: error: unknown option '{}'{}\n{}", c.name, e.get_option_name(),
                   suggestion(e.get_option_name(), names), commandUsage(c, visible));
        return 2;
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

/// gradc's command line, as one process runs it: the exit status.
int run(const std::vector<std::string>& args) {
    try {
        if (args.empty()) {
            printUsage(stderr);
            return 2;
        }
        const std::string& first = args[0];
        std::vector<std::string> names;
        for (auto& c : commands()) names.push_back(c.name);
        if (first == "help" && args.size() == 2) { // gradc help COMMAND
            for (auto& c : commands())
                if (args[1] == c.name) return runCommand(c, {"--help"});
            fmt::print(stderr, "gradc help: error: unknown command '{}'{}\n", args[1], suggestion(args[1], names));
            printUsage(stderr);
            return 2;
        }
        if (first == "help" && args.size() > 2) {
            fmt::print(stderr, "gradc help: error: one command at most, not '{}'\n", args[2]);
            printUsage(stderr);
            return 2;
        }
        if (first == "--help" || first == "-h" || first == "help") {
            printUsage(stdout);
            return 0;
        }
        if (first == "--version" || first == "-V") {
            fmt::print("{}\n", versionString());
            return 0;
        }
        for (auto& c : commands())
            if (first == c.name) return runCommand(c, {args.begin() + 1, args.end()});
        const bool option = first.rfind('-', 0) == 0;
        fmt::print(stderr, "gradc: error: {} '{}'{}\n", option ? "unknown option" : "unknown command", first,
                   option ? suggestion(first, {"--help", "--version"}) : suggestion(first, names));
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

namespace {

/// SIGTERM (mpirun ending a job, a scheduler's time limit, kill): no half-written output is
/// left, then the process ends as the signal would have ended it.
void onTerminate(int signal) {
    removeUnfinished();
    std::signal(signal, SIG_DFL);
    std::raise(signal);
}

/// A process other than rank 0 keeps what it prints (in a memory file on its stderr) to show
/// it only if it fails alone: on a crash too (abort, a fault), prefixed with its rank.
int gRealStderr = -1;
char gRankPrefix[64];

void showKept() { // async-signal-safe: lseek, read and write only
    if (gRealStderr < 0 || ::lseek(STDERR_FILENO, 0, SEEK_SET) != 0) return;
    if (::write(gRealStderr, gRankPrefix, std::strlen(gRankPrefix)) < 0) return;
    char buf[4096];
    for (ssize_t n; (n = ::read(STDERR_FILENO, buf, sizeof buf)) > 0;)
        if (::write(gRealStderr, buf, size_t(n)) < 0) return;
}

void onCrash(int signal) {
    showKept();
    removeUnfinished();
    std::signal(signal, SIG_DFL);
    std::raise(signal);
}

} // namespace

int main(int argc, char** argv) {
    std::signal(SIGTERM, onTerminate);
    int world = 1;
    try {
        world = cluster::init(&argc, &argv); // MPI's world under mpirun or srun; else 1
    } catch (const UserError& e) {
        fmt::print(stderr, "gradc: error: {}\n", e.what());
        return 1;
    }
    const std::vector<std::string> args(argv + 1, argv + argc);
    if (world == 1) {
        const int code = run(args);
        cluster::finalize();
        return code;
    }
    // A data-parallel run: rank 0 prints; the others keep what they print to show it only if
    // they fail alone (rank 0 failing too ends them first, so one message is printed).
    const bool root = cluster::root();
    if (!root) {
        std::fflush(stdout), std::fflush(stderr);
        const int quiet = ::open("/dev/null", O_WRONLY | O_CLOEXEC), kept = ::memfd_create("gradc-stderr", MFD_CLOEXEC);
        if (quiet >= 0) ::dup2(quiet, STDOUT_FILENO), ::close(quiet);
        if (kept >= 0) { // else its messages go out as they come, each process's
            gRealStderr = ::dup(STDERR_FILENO);
            ::dup2(kept, STDERR_FILENO), ::close(kept);
            std::snprintf(gRankPrefix, sizeof gRankPrefix, "%s", cluster::prefix().c_str());
            for (int s : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) std::signal(s, onCrash);
        }
    }
    const int code = run(args);
    if (code == 0 || code == 130) { // done, or stopped by Ctrl-C at the same step everywhere
        cluster::finalize();
        return code;
    }
    std::fflush(stdout), std::fflush(stderr);
    // mpirun forwards what the processes print as it comes: rank 0's message has a moment to
    // reach it before the abort's notice; another process waits longer, so that rank 0, if it
    // failed too, ends the run first and the message is printed once.
    ::usleep((root ? 200 : 500) * 1000);
    if (!root) showKept();
    removeUnfinished();
    cluster::abort(code); // every process of the run ends
}
