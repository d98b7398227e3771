// Lexer.h — stage 1: model text to tokens.
//
// Statements end at a newline, so newlines are tokens; `#` starts a comment that runs to
// the end of the line. Any byte the language has no use for is a diagnostic, never skipped.
#pragma once

#include "Source.h"

#include <string>
#include <vector>

namespace gradc {

enum class Tok {
    Ident,   // names and keywords: dense, relu, x, ...
    Number,  // 784, 0.1, 1e-5
    Newline, // end of a statement
    LParen, RParen, LBrace, RBrace, Comma, Assign, // ( ) { } , =
    Plus, Minus, Star, Slash, Caret,               // + - * / ^
    Lt, Le, Gt, Ge, EqEq, NotEq,                   // < <= > >= == !=
    End,
};

/// How a token kind reads in a diagnostic ("'('", "a number", "end of line").
const char* describe(Tok kind);

struct Token {
    Tok kind;
    std::string text; // the spelling as written
    double number = 0; // value of a Number
    SourceLoc loc;
};

/// The longest name or number the lexer accepts (so that no diagnostic quotes megabytes).
constexpr size_t kMaxNameLength = 256;

/// Splits the whole file into tokens (the last one is End). Throws UserError at the first
/// byte that cannot start a token.
std::vector<Token> lex(const std::shared_ptr<const SourceFile>& file);

} // namespace gradc
