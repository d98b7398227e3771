// Pipeline.cpp — the stages of gradc, top to bottom.
#include "Pipeline.h"

#include "Parser.h"

#include <llvm/Config/llvm-config.h>

namespace gradc {

static FrontEnd run(std::shared_ptr<const SourceFile> file, const SemaOptions& opts) {
    FrontEnd fe;
    fe.ast = parse(file);                 // text -> tokens -> AST
    fe.graph = buildGraph(fe.ast, opts);  // AST -> Graph (names, repeat, shapes), verified
    return fe;
}

FrontEnd compileFile(const std::string& path, const SemaOptions& opts) {
    return run(readSourceFile(path), opts);
}

FrontEnd compileSource(const std::string& name, std::string text, const SemaOptions& opts) {
    return run(makeSourceFile(name, std::move(text)), opts);
}

std::string versionString() {
    return std::string("gradc ") + GRADC_VERSION + " (LLVM " + LLVM_VERSION_STRING + ")";
}

} // namespace gradc
