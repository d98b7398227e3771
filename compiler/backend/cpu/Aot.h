// Aot.h — ahead-of-time compilation: a model's forward and backward functions as a native
// object file and a C header describing them, linkable by a C or C++ program without LLVM.
// By default the object holds code for several x86-64 ISA levels and picks one at run time.
#pragma once

#include "Graph.h"

#include <optional>
#include <string>
#include <vector>

namespace gradc {

/// The ABI of the entry points (arguments, layouts); a header records it and the object
/// returns it from PREFIX_abi_version() so a caller can assert they match.
constexpr unsigned kAbiVersion = 3; // 3: HyperSlot::GradScale

/// --target-cpu's default: the code for the x86-64 baseline, x86-64-v3 and x86-64-v4 in one
/// object, which chooses at the first call the best this CPU runs.
constexpr const char* kPortableCpu = "portable";

struct AotOptions {
    bool f64 = false;
    /// portable (kPortableCpu: several ISA levels, chosen at run time); generic (the x86-64
    /// baseline alone), native, or an LLVM CPU name: that one CPU's code.
    std::string targetCpu = kPortableCpu;
    std::optional<std::string> prefix; ///< symbol prefix (a C identifier); default: the model's name
    std::string emit = "obj";          ///< obj | asm | llvm
    std::string source;                ///< the model file, named in the header
};

struct AotResult {
    std::string output; ///< the object file (or assembly, or LLVM IR)
    std::string header; ///< the C header
};

/// Whether --target-cpu NAME names a CPU: portable, generic, native, or one of the host target's CPUs.
bool isKnownCpu(const std::string& name);
/// portable, generic, native and every CPU name of the host target, for `--target-cpu help`.
std::vector<std::string> knownCpus();

/// What is wrong with `opts` (an unknown CPU, a prefix that is not a C identifier, an --emit
/// that is not obj, asm or llvm), as the command line's error says it; "" when nothing.
std::string aotOptionsError(const AotOptions& opts);

/// Throws UserError with aotOptionsError's message for bad options.
AotResult compileAhead(const Graph& forward, const AotOptions& opts);

} // namespace gradc
