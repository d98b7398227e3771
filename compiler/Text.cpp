// Text.cpp — escaping names for JSON, CSV, SVG and C headers (see Text.h).
#include "Text.h"

#include <fmt/format.h>

#include <utility>

namespace gradc {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD"; // U+FFFD

/// The well-formed UTF-8 sequence at `s[i]` (Unicode's table 3-7): its length and true, or
/// the length of the longest start of one there (at least 1 byte) and false. That "maximal
/// subpart" becomes one U+FFFD, as Unicode recommends and Python and nlohmann do.
std::pair<size_t, bool> sequenceAt(std::string_view s, size_t i) {
    auto at = [&](size_t k) { return i + k < s.size() ? (unsigned char)s[i + k] : 0u; };
    const unsigned b = at(0);
    if (b < 0x80) return {1, true};
    size_t n = 0;
    unsigned lo = 0x80, hi = 0xBF; // the second byte's range
    if (b >= 0xC2 && b <= 0xDF) n = 2;
    else if (b >= 0xE0 && b <= 0xEF) n = 3, lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
    else if (b >= 0xF0 && b <= 0xF4) n = 4, lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
    else return {1, false};
    for (size_t k = 1; k < n; ++k) {
        const unsigned c = at(k);
        if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) return {k, false};
    }
    return {n, true};
}

} // namespace

std::string validUtf8(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        auto [n, ok] = sequenceAt(s, i);
        if (ok) out.append(s.substr(i, n));
        else out += kReplacement;
        i += n;
    }
    return out;
}

std::string xmlText(std::string_view s) {
    const std::string valid = validUtf8(s);
    std::string out;
    for (size_t i = 0; i < valid.size(); ++i) {
        const char c = valid[i];
        switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&quot;"; break;
        case '\'': out += "&apos;"; break;
        default:
            if ((unsigned char)c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
                out += kReplacement;
            } else if (valid.compare(i, 2, "\xEF\xBF") == 0 && i + 2 < valid.size() &&
                       ((unsigned char)valid[i + 2] == 0xBE || (unsigned char)valid[i + 2] == 0xBF)) {
                out += kReplacement; // U+FFFE and U+FFFF are not XML characters
                i += 2;
            } else {
                out += c;
            }
        }
    }
    return out;
}

std::string csvField(std::string_view s) {
    const std::string valid = validUtf8(s);
    if (valid.find_first_of(",\"\r\n") == std::string::npos) return valid;
    std::string out = "\"";
    for (char c : valid) out += c == '"' ? std::string("\"\"") : std::string(1, c);
    return out + "\"";
}

std::string cCommentText(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        const unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c > 0x7E || c == '\\') {
            out += fmt::format("\\x{:02x}", c);
            continue;
        }
        out += char(c);
        const char next = i + 1 < s.size() ? s[i + 1] : '\0';
        if ((c == '*' && next == '/') || (c == '/' && next == '*')) out += ' ';
    }
    return out;
}

std::string cStringText(std::string_view s) {
    std::string out;
    for (char ch : s) {
        const unsigned char c = (unsigned char)ch;
        if (c == '\\' || c == '"' || c == '?') out += '\\', out += ch;
        else if (c < 0x20 || c > 0x7E) out += fmt::format("\\{:03o}", c);
        else out += ch;
    }
    return out;
}

bool isCIdentifier(std::string_view s) {
    auto letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; };
    if (s.empty() || !letter(s[0])) return false;
    for (char c : s)
        if (!letter(c) && !(c >= '0' && c <= '9')) return false;
    return true;
}

} // namespace gradc
