// Backend.cpp — the one place a backend is chosen by name.
#include "Backend.h"

#include <fmt/format.h>

namespace gradc {

std::unique_ptr<Executable> compile(const Graph& forward, const BackendOptions& options) {
    if (options.backend == "jit") return compileCpu(forward, options);
    if (options.backend == "interp") return compileInterp(forward, options);
    throw UserError({}, fmt::format("backend '{}' is not one of jit, interp", options.backend));
}

} // namespace gradc
