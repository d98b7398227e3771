// AST.h — the syntax tree of a model file, as written (repeat not yet unrolled, names not
// yet resolved). Sema turns it into the Graph IR.
#pragma once

#include "Source.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace gradc {

/// An expression in an `activation NAME(x) = EXPR` definition.
struct Expr {
    enum class Kind { Number, Var, Neg, Binary, Call };
    Kind kind;
    double number = 0;           // Number
    std::string name;            // Var, Call: the identifier; Binary: the operator spelling
    std::vector<std::unique_ptr<Expr>> args; // Neg: 1, Binary: 2, Call: n
    SourceLoc loc;
};

/// A use of an activation: `relu`, `leaky_relu(0.1)`.
struct ActRef {
    std::string name;
    std::vector<double> args;
    SourceLoc loc;
};

/// `init=SCHEME` or `init=SCHEME(ARG)`.
struct InitSpec {
    std::string scheme;
    std::vector<double> args;
    SourceLoc loc;
};

/// One statement. Fields not used by a kind stay empty.
struct Stmt {
    enum class Kind { Model, Input, Dense, Act, Add, BatchNorm, Repeat, From, ActivationDef, Loss };
    Kind kind;
    SourceLoc loc;      // the statement's keyword
    std::string name;   // `NAME = ...` (empty if unnamed); Model: the model name
    SourceLoc nameLoc;
    std::string from;   // `... from NAME` (From: the name itself)
    SourceLoc fromLoc;

    int64_t size = 0;   // Input, Dense: width; Repeat: count
    SourceLoc sizeLoc;
    std::optional<ActRef> act;   // Dense (optional), Act
    std::optional<InitSpec> init; // Dense
    bool bias = true;             // Dense
    double eps = 1e-5;            // BatchNorm
    double momentum = 0.1;        // BatchNorm (running statistics, used by training)
    std::vector<std::pair<std::string, SourceLoc>> operands; // Add
    std::vector<std::unique_ptr<Stmt>> body;                 // Repeat

    // ActivationDef: `activation NAME(x, p=1.0) = EXPR`
    std::string defName;
    std::vector<std::string> params;              // params[0] is the input variable
    std::vector<std::optional<double>> defaults;  // one per params[1..]
    std::unique_ptr<Expr> expr;

    std::string loss; // Loss: cross_entropy | bce | mse
};

struct Module {
    std::shared_ptr<const SourceFile> file;
    std::vector<std::unique_ptr<Stmt>> stmts;
};

/// Stable text form of the tree, for `gradc dump --emit=ast` and golden tests.
std::string printAST(const Module& m);
std::string printExpr(const Expr& e);

} // namespace gradc
