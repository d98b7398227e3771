// Files.cpp — atomic writes and whole-file reads.
#include "Files.h"

#include "Source.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sys/stat.h>
#include <unistd.h>

namespace gradc {

static UserError fileError(const std::string& path, const std::string& msg) {
    return UserError({makeSourceFile(path, ""), 0, 0}, msg);
}

void writeFileAtomically(const std::string& path, const std::string& bytes) {
    const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (!f) throw fileError(path, fmt::format("cannot write: {}", std::strerror(errno)));
    bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
    ok = (std::fflush(f) == 0) && ok;
    int err = errno;
    ok = (std::fclose(f) == 0) && ok;
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
        if (ok) err = errno;
        std::remove(tmp.c_str());
        throw fileError(path, fmt::format("cannot write: {}", std::strerror(err)));
    }
}

std::string readWholeFile(const std::string& path, const char* what) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw fileError(path, fmt::format("cannot open {}: {}", what, std::strerror(errno)));
    if (S_ISDIR(st.st_mode)) throw fileError(path, fmt::format("cannot read {}: it is a directory", what));
    std::ifstream in(path, std::ios::binary);
    if (!in) throw fileError(path, fmt::format("cannot open {}: {}", what, std::strerror(errno)));
    std::string data((std::istreambuf_iterator<char>(in)), {});
    if (in.bad()) throw fileError(path, fmt::format("error while reading {}", what));
    return data;
}

} // namespace gradc
