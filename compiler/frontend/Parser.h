// Parser.h — stage 2: tokens to AST (recursive descent, one function per grammar rule).
#pragma once

#include "AST.h"

namespace gradc {

/// Parses a whole model file. Throws UserError at the first syntax error.
ModuleAST parse(const std::shared_ptr<const SourceFile>& file);

/// Parses a lone activation expression in the variable `x` (for `gradc derive EXPR`).
std::unique_ptr<ExprAST> parseExpression(const std::shared_ptr<const SourceFile>& file);

/// Nesting limits: deeper input is a diagnostic, never a stack overflow.
constexpr int kMaxRepeatDepth = 32;
constexpr int kMaxExprDepth = 200;

} // namespace gradc
