// Source.cpp — reading model files and formatting diagnostics.
#include "Source.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sys/stat.h>

namespace gradc {

std::string_view SourceFile::lineText(uint32_t line) const {
    if (line == 0) return {};
    size_t pos = 0;
    for (uint32_t l = 1; l < line; ++l) {
        pos = text.find('\n', pos);
        if (pos == std::string::npos) return {};
        ++pos;
    }
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view sv(text.data() + pos, end - pos);
    if (!sv.empty() && sv.back() == '\r') sv.remove_suffix(1);
    return sv;
}

// Shows one source line the way a terminal can: control bytes and non-ASCII bytes become
// '?', tabs stay tabs (so the caret line lines up), and very long lines are cut around the
// column so a diagnostic on a megabyte-long line is still one screen.
static std::string printable(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (unsigned char c : s) out += (c == '\t' || (c >= 0x20 && c < 0x7f)) ? char(c) : '?';
    return out;
}

std::string UserError::format() const {
    const std::string name = loc_.file ? loc_.file->name : std::string("gradc");
    if (!loc_.file || loc_.line == 0) return fmt::format("{}: error: {}\n", name, what());
    std::string out = fmt::format("{}:{}:{}: error: {}\n", name, loc_.line, loc_.col, what());
    std::string_view line = loc_.file->lineText(loc_.line);
    size_t col = loc_.col ? loc_.col - 1 : 0;
    constexpr size_t kWidth = 120;
    size_t start = 0;
    if (line.size() > kWidth) {
        start = col > kWidth / 2 ? col - kWidth / 2 : 0;
        line = line.substr(start, kWidth);
    }
    std::string shown = printable(line);
    std::string caret;
    for (size_t i = start; i < col && i - start < shown.size(); ++i)
        caret += shown[i - start] == '\t' ? '\t' : ' ';
    out += fmt::format("  {}\n  {}^\n", shown, caret);
    return out;
}

void internalError(const char* file, int line, const char* cond, std::string_view msg) {
    std::fprintf(stderr, "gradc: internal error at %s:%d: %s (%.*s)\nPlease report this bug.\n",
                 file, line, cond, int(msg.size()), msg.data());
    std::abort();
}

std::shared_ptr<const SourceFile> makeSourceFile(std::string name, std::string text) {
    auto f = std::make_shared<SourceFile>();
    f->name = std::move(name);
    f->text = std::move(text);
    return f;
}

std::shared_ptr<const SourceFile> readSourceFile(const std::string& path) {
    SourceLoc whole{makeSourceFile(path, ""), 0, 0};
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0)
        throw UserError(whole, fmt::format("cannot open model file: {}", std::strerror(errno)));
    if (S_ISDIR(st.st_mode)) throw UserError(whole, "cannot read model file: it is a directory");
    if (S_ISREG(st.st_mode) && size_t(st.st_size) > kMaxSourceBytes)
        throw UserError(whole, fmt::format("model file is {} bytes; the limit is {} bytes",
                                           st.st_size, kMaxSourceBytes));
    std::ifstream in(path, std::ios::binary);
    if (!in) throw UserError(whole, fmt::format("cannot open model file: {}", std::strerror(errno)));
    std::string text;
    char buf[1 << 16];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) {
        text.append(buf, size_t(in.gcount()));
        if (text.size() > kMaxSourceBytes)
            throw UserError(whole, fmt::format("model file is larger than the limit of {} bytes",
                                               kMaxSourceBytes));
    }
    if (in.bad()) throw UserError(whole, "error while reading model file");
    return makeSourceFile(path, std::move(text));
}

} // namespace gradc
