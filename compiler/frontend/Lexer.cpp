// Lexer.cpp — stage 1: model text to tokens.
#include "Lexer.h"

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <cstdlib>

namespace gradc {

const char* describe(Tok kind) {
    switch (kind) {
    case Tok::Ident: return "a name";
    case Tok::Number: return "a number";
    case Tok::Newline: return "end of line";
    case Tok::LParen: return "'('";
    case Tok::RParen: return "')'";
    case Tok::LBrace: return "'{'";
    case Tok::RBrace: return "'}'";
    case Tok::Comma: return "','";
    case Tok::Assign: return "'='";
    case Tok::Plus: return "'+'";
    case Tok::Minus: return "'-'";
    case Tok::Star: return "'*'";
    case Tok::Slash: return "'/'";
    case Tok::Caret: return "'^'";
    case Tok::Lt: return "'<'";
    case Tok::Le: return "'<='";
    case Tok::Gt: return "'>'";
    case Tok::Ge: return "'>='";
    case Tok::EqEq: return "'=='";
    case Tok::NotEq: return "'!='";
    case Tok::End: return "end of file";
    }
    return "?";
}

namespace {

struct Lexer {
    Lexer(std::shared_ptr<const SourceFile> f) : file(std::move(f)), s(file->text) {}
    std::shared_ptr<const SourceFile> file;
    const std::string& s;
    size_t pos = 0;
    uint32_t line = 1, col = 1;
    std::vector<Token> out;

    SourceLoc here() const { return {file, line, col}; }
    void advance(size_t n = 1) {
        for (size_t i = 0; i < n; ++i, ++pos) {
            if (s[pos] == '\n') ++line, col = 1;
            else ++col;
        }
    }
    void push(Tok kind, size_t len, SourceLoc loc) {
        out.push_back({kind, s.substr(pos, len), 0, std::move(loc)});
        advance(len);
    }

    void number() {
        SourceLoc loc = here();
        size_t start = pos, i = pos;
        auto digits = [&] {
            while (i < s.size() && std::isdigit((unsigned char)s[i])) ++i;
        };
        digits();
        if (i < s.size() && s[i] == '.') ++i, digits();
        if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
            size_t j = i + 1;
            if (j < s.size() && (s[j] == '+' || s[j] == '-')) ++j;
            if (j < s.size() && std::isdigit((unsigned char)s[j])) i = j, digits();
        }
        if (i - start > kMaxNameLength)
            throw UserError(loc, fmt::format("number is {} characters long; the limit is {}",
                                             i - start, kMaxNameLength));
        std::string text = s.substr(start, i - start);
        // Sizes: `28x28` is the number 28, an `x` and the number 28 (`input 28x28`).
        if (i + 1 < s.size() && s[i] == 'x' && std::isdigit((unsigned char)s[i + 1]) &&
            text.find_first_not_of("0123456789") == std::string::npos) {
            out.push_back({Tok::Number, text, std::strtod(text.c_str(), nullptr), loc});
            advance(i - start);
            push(Tok::Ident, 1, here());
            return;
        }
        if (i < s.size() && (std::isalnum((unsigned char)s[i]) || s[i] == '_')) {
            size_t j = i;
            while (j < s.size() && (std::isalnum((unsigned char)s[j]) || s[j] == '_' || s[j] == '.')) ++j;
            throw UserError(loc, fmt::format("malformed number '{}'", s.substr(start, j - start)));
        }
        double v = std::strtod(text.c_str(), nullptr);
        if (!std::isfinite(v)) throw UserError(loc, fmt::format("number '{}' is out of range", text));
        out.push_back({Tok::Number, text, v, loc});
        advance(i - start);
    }

    void run() {
        while (pos < s.size()) {
            unsigned char c = s[pos];
            char n = pos + 1 < s.size() ? s[pos + 1] : '\0';
            if (c == '#') {
                while (pos < s.size() && s[pos] != '\n') advance();
            } else if (c == '\n') {
                push(Tok::Newline, 1, here());
            } else if (c == ' ' || c == '\t' || c == '\r') {
                advance();
            } else if (std::isalpha(c) || c == '_') {
                size_t i = pos;
                while (i < s.size() && (std::isalnum((unsigned char)s[i]) || s[i] == '_'))
                    ++i;
                if (i - pos > kMaxNameLength)
                    throw UserError(here(), fmt::format("name is {} characters long; the limit is {}",
                                                        i - pos, kMaxNameLength));
                push(Tok::Ident, i - pos, here());
            } else if (std::isdigit(c) || (c == '.' && std::isdigit((unsigned char)n))) {
                number();
            } else {
                Tok k;
                size_t len = 1;
                switch (c) {
                case '(': k = Tok::LParen; break;
                case ')': k = Tok::RParen; break;
                case '{': k = Tok::LBrace; break;
                case '}': k = Tok::RBrace; break;
                case ',': k = Tok::Comma; break;
                case '+': k = Tok::Plus; break;
                case '-': k = Tok::Minus; break;
                case '*': k = Tok::Star; break;
                case '/': k = Tok::Slash; break;
                case '^': k = Tok::Caret; break;
                case '<': k = n == '=' ? (len = 2, Tok::Le) : Tok::Lt; break;
                case '>': k = n == '=' ? (len = 2, Tok::Ge) : Tok::Gt; break;
                case '=': k = n == '=' ? (len = 2, Tok::EqEq) : Tok::Assign; break;
                case '!':
                    if (n != '=') throw UserError(here(), "unexpected character '!' (did you mean '!='?)");
                    k = Tok::NotEq, len = 2;
                    break;
                default:
                    if (c >= 0x20 && c < 0x7f)
                        throw UserError(here(), fmt::format("unexpected character '{}'", char(c)));
                    throw UserError(here(), fmt::format("unexpected byte 0x{:02x}; model files are "
                                                        "plain ASCII text", c));
                }
                push(k, len, here());
            }
        }
        out.push_back({Tok::End, "", 0, here()});
    }
};

} // namespace

std::vector<Token> lex(const std::shared_ptr<const SourceFile>& file) {
    Lexer lx(file);
    lx.run();
    return std::move(lx.out);
}

} // namespace gradc
