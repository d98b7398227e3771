// SplitCodegen.h — optimising and emitting one module's functions on several threads, and
// the container that carries the resulting objects as one (for the object cache).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace llvm {
class Module;
} // namespace llvm

namespace gradc {

class PhaseTimer;

/// The objects of `m` (lowered for the host), optimised and emitted for the host's `isa`
/// (resolveIsa) by `parts` threads (at most one per defined function; 1: the module as it
/// is, one object). With
/// several parts, the functions and mutable globals of `m` are made external (hidden) so that
/// each is defined in one part and called from the others; each part, in its own
/// LLVMContext, keeps the definitions given to it (by instruction count, largest first, to
/// the lightest part) and runs the same function pipeline and code generator as one part
/// would, so each function's code is the same. `timer` ends "LLVM optimisation" and "machine
/// code".
std::vector<std::string> compileObjects(llvm::Module& m, int parts, const std::string& isa,
                                        PhaseTimer* timer = nullptr);

/// The objects as one string: an object alone is itself; several are a container ("gradc
/// objects", their count and sizes, then their bytes).
std::string packObjects(const std::vector<std::string>& objects);
/// The objects of a packObjects string; nothing when it is a container that does not add up.
std::optional<std::vector<std::string>> unpackObjects(const std::string& packed);

} // namespace gradc
