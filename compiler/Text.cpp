// Text.cpp — escaping names for JSON, CSV, SVG and C headers (see Text.h).
#include "Text.h"

#include <fmt/format.h>

namespace gradc {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD"; // U+FFFD

/// The length of the well-formed UTF-8 sequence at `s[i]` (Unicode's table 3-7), 0 if the
/// byte there does not start one.
size_t sequenceLength(std::string_view s, size_t i) {
    auto at = [&](size_t k) { return i + k < s.size() ? (unsigned char)s[i + k] : 0u; };
    const unsigned b = at(0);
    auto cont = [&](size_t k, unsigned lo = 0x80, unsigned hi = 0xBF) { return at(k) >= lo && at(k) <= hi; };
    if (b < 0x80) return 1;
    if (b >= 0xC2 && b <= 0xDF) return cont(1) ? 2 : 0;
    if (b == 0xE0) return cont(1, 0xA0) && cont(2) ? 3 : 0;
    if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) return cont(1) && cont(2) ? 3 : 0;
    if (b == 0xED) return cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0; // no surrogates
    if (b == 0xF0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
    if (b >= 0xF1 && b <= 0xF3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
    if (b == 0xF4) return cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0;
    return 0;
}

} // namespace

std::string validUtf8(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
        if (size_t n = sequenceLength(s, i)) {
            out.append(s.substr(i, n));
            i += n;
        } else {
            out += kReplacement;
            ++i;
        }
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
