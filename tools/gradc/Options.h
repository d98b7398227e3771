// Options.h — what several gradc commands share: the usage error, the options they declare
// alike and their readers (each checks its value and throws UsageError) into the options of
// the runtime's jobs (gradc/Jobs.h), and the activation names of act and derive.
#pragma once

#include "Activations.h"
#include "Codegen.h"
#include "Files.h"
#include "Sema.h"

#include <gradc/Jobs.h>

#include <boost/program_options.hpp>

#include <cmath>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace gradc::cli {

namespace po = boost::program_options;

/// A usage mistake: printed as one line plus the relevant usage, exit status 2.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// 1234567 as "1,234,567".
std::string thousands(int64_t v);

/// MODEL and --batch, as most commands take them.
void addModelOptions(po::options_description& d);
/// --dtype, --threads, --no-cache (when `cache`: not for dump, which never uses the cache),
/// --isa: how code is compiled.
void addCodegenOptions(po::options_description& d, bool cache = true);
/// --data, --normalize, --seed, --params, --backend and the codegen options: the commands
/// that run a classifier on the data set (train, acts, dead).
void addDataOptions(po::options_description& d);

/// --batch, checked.
SemaOptions semaOptions(const po::variables_map& vm);
/// --seed: a whole number from 0 to 2^64 - 1. Read as text, because Boost reads "-1" as an
/// unsigned number (2^64 - 1) without a word.
uint64_t seedOption(const po::variables_map& vm);
/// --dtype, --threads (CodegenOptions::threads; 0: all cores), --no-cache, and --isa where the
/// command has it (resolveIsa, Codegen.h: a bad name, or one this CPU lacks, is a usage error).
CodegenOptions codegenOptions(const po::variables_map& vm);
/// The value of a file option, or "" when it is not given.
std::string fileOption(const po::variables_map& vm, const char* name);
/// A figure file's option: its path (empty when not given), its extension checked now
/// (figureFormat: .svg, .pdf or .png).
std::string figureOption(const po::variables_map& vm, const char* name);
/// --normalize MEAN,STD: a finite mean and a normal (not subnormal) positive std, such that
/// every normalised pixel (pixel/255 - MEAN) / STD is a finite float.
std::pair<double, double> parseNormalize(const std::string& text);
/// --data and --normalize.
DataOptions dataOptions(const po::variables_map& vm);
/// Declares the IDX files of a data folder as inputs of a run, so no output replaces them.
void declareDataInputs(OutputSet& outputs, const std::string& dir);

/// --backend, checked.
std::string backendOption(const po::variables_map& vm);
/// MODEL, --data, --normalize, --seed, --params, --backend and the codegen options of the
/// commands that run a classifier (train, acts, dead), checked: they run in f32.
ClassifierOptions classifierOptions(const po::variables_map& vm);

/// The activations `gradc act` and `gradc derive` may name: the built-in ones and those the
/// --model file defines.
ActivationTable activationTable(const po::variables_map& vm);
/// An activation named on the command line: `relu`, `elu(0.5)`, `leaky_relu(-0.1)` (a name,
/// or a call whose arguments are numbers, negated or not); nothing for any other expression.
std::optional<ActRef> activationUse(const ExprAST& e);

} // namespace gradc::cli
