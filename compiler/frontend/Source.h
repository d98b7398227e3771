// Source.h — source files, locations and diagnostics.
//
// Every token, AST node and graph node carries a SourceLoc. A user mistake is reported by
// throwing UserError (caught once, in the driver, and printed as
// `FILE:LINE:COL: error: MESSAGE` with the source line and a caret). An internal bug is an
// internal_assert: it names the broken invariant and aborts, so it never looks like a user
// error.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

namespace gradc {

/// A model file held in memory. Locations point into it by line and column.
struct SourceFile {
    std::string name; ///< as the user gave it, printed in diagnostics
    std::string text;

    /// The text of 1-based line `line`, without its newline ("" past the end).
    std::string_view lineText(uint32_t line) const;
};

/// A place in a source file; line and column are 1-based, 0 means "no location".
struct SourceLoc {
    std::shared_ptr<const SourceFile> file;
    uint32_t line = 0;
    uint32_t col = 0;
};

/// A mistake in the user's input. `what()` is the bare message; `format()` the full report.
class UserError : public std::runtime_error {
public:
    UserError(SourceLoc loc, std::string message)
        : std::runtime_error(std::move(message)), loc_(std::move(loc)) {}
    const SourceLoc& loc() const { return loc_; }

    /// `FILE:LINE:COL: error: MESSAGE`, then the source line and a caret under the column.
    std::string format() const;

private:
    SourceLoc loc_;
};

[[noreturn]] void internalError(const char* file, int line, const char* cond, std::string_view msg);

/// Load a model file. Throws UserError when it cannot be read, is too large or is not text.
std::shared_ptr<const SourceFile> readSourceFile(const std::string& path);

/// Wrap text held in memory (tests, embedding) as a source file.
std::shared_ptr<const SourceFile> makeSourceFile(std::string name, std::string text);

/// The largest model file gradc accepts; a real one is a few hundred bytes.
constexpr size_t kMaxSourceBytes = 16u << 20;

} // namespace gradc

#define internal_assert(cond, msg)                                                                 \
    do {                                                                                           \
        if (!(cond)) ::gradc::internalError(__FILE__, __LINE__, #cond, (msg));                     \
    } while (0)
