// Text.h — names carried into other formats. A model's name comes from its file name, which
// may hold any bytes; every format gradc writes gets it in a form that format allows.
//
// The rule: machine-readable outputs (JSON, CSV, SVG, C headers) are valid UTF-8, so a byte
// that is not part of a well-formed UTF-8 sequence becomes U+FFFD (the replacement
// character, as nlohmann's error_handler_t::replace does); then each format's own escaping.
// Terminal tables and diagnostics print names as they are.
#pragma once

#include <string>
#include <string_view>

namespace gradc {

/// `s` with each ill-formed UTF-8 sequence (overlong forms, surrogates, code points past
/// U+10FFFF, stray or missing continuation bytes) replaced by U+FFFD: one for each maximal
/// start of a sequence, else one a byte, as Unicode recommends.
std::string validUtf8(std::string_view s);

/// Character data or an attribute value of XML 1.0: valid UTF-8, `& < > " '` escaped, and
/// the characters XML forbids (control characters other than tab, LF and CR; U+FFFE,
/// U+FFFF) replaced by U+FFFD.
std::string xmlText(std::string_view s);

/// One field of an RFC 4180 CSV record: valid UTF-8, quoted when it holds a comma, a
/// double quote, CR or LF, with its double quotes doubled.
std::string csvField(std::string_view s);

/// Text for the inside of a C comment: printable ASCII as it is (with `*/` and `/*` broken
/// up by a space), every other byte as `\xNN`.
std::string cCommentText(std::string_view s);

/// The inside of a C string literal: printable ASCII as it is except `\`, `"` and `?`
/// (trigraphs), which are escaped, and every other byte as a three-digit octal escape.
std::string cStringText(std::string_view s);

/// Whether `s` is a C identifier: a letter or `_`, then letters, digits and `_`.
bool isCIdentifier(std::string_view s);

} // namespace gradc
