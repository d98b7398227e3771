// CpuBackend.h — the "jit" backend: a CompiledModel (Codegen.h) as an Executable.
#pragma once

#include "Backend.h"
#include "Codegen.h"

namespace gradc {

/// The executable that calls `model`'s entry points, with a workspace of its own.
std::unique_ptr<Executable> cpuExecutable(CompiledModel model);

} // namespace gradc
