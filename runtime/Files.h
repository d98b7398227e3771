// Files.h — output files are written whole or not at all.
#pragma once

#include <string>

namespace gradc {

/// Writes `bytes` to a temporary file beside `path`, then renames it into place: a failed or
/// interrupted run never leaves a half-written file. Throws UserError naming `path`.
void writeFileAtomically(const std::string& path, const std::string& bytes);

/// Reads a whole file; throws UserError naming it (`what` says what kind of file it is).
std::string readWholeFile(const std::string& path, const char* what);

} // namespace gradc
