// ModelImpl.h — what a public gradc::Model holds, and the one place internal errors become
// gradc::Error for embedding programs.
#pragma once

#include "Parser.h"
#include "Sema.h"

#include <gradc/Model.h>

namespace gradc {

struct Model::Impl {
    std::shared_ptr<const SourceFile> file;
    std::shared_ptr<ModuleAST> ast;
    Graph graph; ///< at batch 2: names, shapes, loss
    void init();
};

/// Runs `f`, turning a UserError into gradc::Error with the diagnostic as its message, and
/// any other exception into gradc::Error too: nothing else reaches an embedding program.
template <typename F> auto publicCall(F&& f) -> decltype(f()) {
    try {
        return f();
    } catch (const UserError& e) {
        std::string msg = e.format();
        while (!msg.empty() && msg.back() == '\n') msg.pop_back();
        throw Error(msg);
    } catch (const Error&) {
        throw;
    } catch (const std::bad_alloc&) {
        throw Error("gradc: error: out of memory");
    } catch (const std::exception& e) {
        throw Error(std::string("gradc: internal error: ") + e.what());
    }
}

} // namespace gradc
