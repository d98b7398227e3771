// AST.h — the syntax tree of a model file, as written (repeat not yet unrolled, names not
// yet resolved). Sema turns it into the Graph IR.
#pragma once

#include "Source.h"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace gradc {

struct LayerDef;

/// An expression in an `activation NAME(x) = EXPR` definition.
struct ExprAST {
    enum class Kind { Number, Var, Neg, Binary, Call };
    Kind kind;
    double number = 0;           // Number
    std::string name;            // Var, Call: the identifier; Binary: the operator spelling
    std::vector<std::unique_ptr<ExprAST>> args; // Neg: 1, Binary: 2, Call: n
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

/// A size written `K` or `KHxKW`: a window (`conv 16 3x3`, `maxpool 2`), or the value of a
/// stride= or padding= option. `given` is false when the statement does not write it.
struct Size2 {
    int64_t h = 0, w = 0;
    SourceLoc loc;
    bool given = false;
};

/// One statement. Fields not used by a kind stay empty. Every layer is a `Layer` statement
/// whose entry in the layer table (Layers.h) says which of the layer fields it uses.
struct Stmt {
    enum class Kind { Model, Input, Layer, Repeat, From, ActivationDef, Loss };
    Kind kind;
    SourceLoc loc;      // the statement's keyword
    std::string name;   // `NAME = ...` (empty if unnamed); Model: the model name
    SourceLoc nameLoc;
    std::string from;   // `... from NAME` (From: the name itself)
    SourceLoc fromLoc;

    const LayerDef* layer = nullptr; // Layer: its entry in the layer table
    int64_t size = 0;   // Input, a layer's width operand; Repeat: count
    SourceLoc sizeLoc;
    std::vector<int64_t> dims; // Input: the sizes of one example (`input 28x28`: 28, 28)
    bool steps = false; // Input: a sequence `input T steps N` (dims T, N)
    SourceLoc featuresLoc; // Input: N of `input T steps N`
    std::vector<std::pair<std::string, SourceLoc>> operands; // a layer's value-name operands
    std::optional<ActRef> act;    // a layer's activation (a bare activation statement's own)
    std::optional<InitSpec> init; // a layer's init= option
    std::vector<std::pair<std::string, double>> options; // the other options given (bools as 0/1)
    Size2 window;       // a layer's window operand (`conv 16 3x3`: 3x3), if its entry takes one
    std::vector<std::pair<std::string, Size2>> sizes; // the size options given (stride=2x1)
    std::vector<std::unique_ptr<Stmt>> body;                 // Repeat

    // ActivationDef: `activation NAME(x, p=1.0) = EXPR`
    std::string defName;
    std::vector<std::string> params;              // params[0] is the input variable
    std::vector<std::optional<double>> defaults;  // one per params[1..]
    std::unique_ptr<ExprAST> expr;

    std::string loss; // Loss: cross_entropy | bce | mse
};

struct ModuleAST {
    std::shared_ptr<const SourceFile> file;
    std::vector<std::unique_ptr<Stmt>> stmts;
};

/// Stable text form of the tree, for `gradc dump --emit=ast` and golden tests.
std::string printAST(const ModuleAST& m);
std::string printExpr(const ExprAST& e);

} // namespace gradc
