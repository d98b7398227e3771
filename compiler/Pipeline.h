// Pipeline.h — the list of stages, in order. Each stage's output can be printed
// (`gradc dump --emit=STAGE`).
#pragma once

#include "AST.h"
#include "Graph.h"
#include "Sema.h"

#include <string>

namespace gradc {

/// Everything the front end produced for one model.
struct FrontEnd {
    ModuleAST ast;
    Graph graph;
};

/// Reads, lexes, parses and checks a model file. Throws UserError on any mistake.
FrontEnd compileFile(const std::string& path, const SemaOptions& opts = {});
/// The same for model text held in memory; `name` is used in diagnostics.
FrontEnd compileSource(const std::string& name, std::string text, const SemaOptions& opts = {});

} // namespace gradc

namespace gradc {
/// "gradc 0.1.0 (LLVM 19.1.7)": the program's version line, also part of cache keys.
std::string versionString();
} // namespace gradc
