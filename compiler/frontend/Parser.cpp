// Parser.cpp — stage 2: tokens to AST.
//
// The grammar, one rule per function below:
//   file     ::= { [stmt] NEWLINE } END
//   stmt     ::= 'model' NAME | 'loss' NAME | 'from' NAME | actdef | [NAME '='] layer ['from' NAME]
//   layer    ::= 'input' INT ('steps' INT | {'x' INT}) | 'repeat' INT '{' {[stmt] NEWLINE} '}' |
//   actref
//              | KEYWORD [INT | NAME {NAME}] [size2] {NAME '=' value} [actref] {NAME '=' value}
//                (a layer of the layer table, Layers.cpp: `dense 512 relu init=xavier`,
//                 `add a b`, `batchnorm eps=1e-3`, `conv 16 3x3 stride=2 relu`; the entry
//                 says which parts it takes)
//   size2    ::= INT ['x' INT]                       (a window, stride= or padding=)
//   actref   ::= NAME ['(' signed {',' signed} ')']
//   actdef   ::= 'activation' NAME '(' NAME {',' NAME ['=' signed]} ')' '=' expr
//   expr     ::= sum [('<'|'<='|'>'|'>='|'=='|'!=') sum]
//   sum      ::= term {('+'|'-') term}
//   term     ::= unary {('*'|'/') unary}
//   unary    ::= '-' unary | power
//   power    ::= primary ['^' unary]
//   primary  ::= NUMBER | NAME | NAME '(' expr {',' expr} ')' | '(' expr ')'
#include "Parser.h"

#include "Layers.h"
#include "Lexer.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <set>

namespace gradc {
namespace {

class Parser {
public:
    explicit Parser(std::vector<Token> toks) : toks_(std::move(toks)) {}

    ModuleAST parseFile(const std::shared_ptr<const SourceFile>& file) {
        ModuleAST m;
        m.file = file;
        m.stmts = stmtList(nullptr, 0);
        return m;
    }

    std::unique_ptr<ExprAST> parseLoneExpr() {
        skipNewlines();
        auto e = expr(0);
        skipNewlines();
        if (peek().kind != Tok::End) fail(peek(), "unexpected {} after the expression", what(peek()));
        return e;
    }

private:
    std::vector<Token> toks_;
    size_t pos_ = 0;

    const Token& peek(size_t ahead = 0) const {
        return toks_[std::min(pos_ + ahead, toks_.size() - 1)];
    }
    const Token& next() {
        const Token& t = toks_[pos_];
        if (pos_ + 1 < toks_.size()) ++pos_;
        return t;
    }
    bool accept(Tok k) {
        if (peek().kind != k) return false;
        next();
        return true;
    }
    bool isWord(const char* w, size_t ahead = 0) const {
        return peek(ahead).kind == Tok::Ident && peek(ahead).text == w;
    }
    static std::string what(const Token& t) {
        if (t.kind == Tok::Ident || t.kind == Tok::Number) return fmt::format("'{}'", t.text);
        return describe(t.kind);
    }
    template <typename... A>
    [[noreturn]] void fail(const Token& at, fmt::format_string<A...> f, A&&... a) {
        throw UserError(at.loc, fmt::format(f, std::forward<A>(a)...));
    }
    const Token& expect(Tok k, const char* context) {
        if (peek().kind != k) fail(peek(), "expected {} {}, found {}", describe(k), context, what(peek()));
        return next();
    }
    const Token& expectName(const char* context) {
        if (peek().kind != Tok::Ident) fail(peek(), "expected {}, found {}", context, what(peek()));
        return next();
    }
    void skipNewlines() {
        while (accept(Tok::Newline)) {}
    }

    /// INT: a whole, non-negative number (signs and fractions are diagnosed here).
    int64_t integer(const char* context, SourceLoc* loc = nullptr) {
        const Token& t = peek();
        if (t.kind == Tok::Minus && peek(1).kind == Tok::Number)
            fail(t, "{} must be a positive whole number, not '-{}'", context, peek(1).text);
        if (t.kind != Tok::Number) fail(t, "expected {} (a whole number), found {}", context, what(t));
        for (char c : t.text)
            if (c < '0' || c > '9') fail(t, "{} must be a whole number, not '{}'", context, t.text);
        if (t.text.size() > 15) fail(t, "{} '{}' is too large", context, t.text);
        if (loc) *loc = t.loc;
        next();
        return int64_t(t.number);
    }

    /// signed ::= ['-'] NUMBER
    double signedNumber(const char* context) {
        bool neg = accept(Tok::Minus);
        const Token& t = peek();
        if (t.kind != Tok::Number) fail(t, "expected {} (a number), found {}", context, what(t));
        next();
        return neg ? -t.number : t.number;
    }

    /// The end of a statement: a newline, the end of the file, or a closing brace.
    void endOfStatement() {
        Tok k = peek().kind;
        if (k == Tok::Newline || k == Tok::End || k == Tok::RBrace) return;
        fail(peek(), "unexpected {}; expected the end of the statement", what(peek()));
    }

    /// The statements of the file, or of a repeat block (`open` is its 'repeat' token).
    std::vector<std::unique_ptr<Stmt>> stmtList(const Token* open, int depth) {
        std::vector<std::unique_ptr<Stmt>> out;
        for (;;) {
            skipNewlines();
            if (peek().kind == Tok::End) {
                if (open) fail(*open, "unterminated 'repeat' block: no '}}' closes it before the end of the file");
                return out;
            }
            if (peek().kind == Tok::RBrace) {
                if (!open) fail(peek(), "'}}' without a matching 'repeat {{'");
                return out;
            }
            out.push_back(stmt(depth));
            endOfStatement();
        }
    }

    std::unique_ptr<Stmt> make(Stmt::Kind k, const Token& at) {
        auto s = std::make_unique<Stmt>();
        s->kind = k;
        s->loc = at.loc;
        return s;
    }

    std::unique_ptr<Stmt> stmt(int depth) {
        const Token& t = peek();
        if (t.kind != Tok::Ident) fail(t, "expected a statement, found {}", what(t));
        if (isWord("model")) {
            auto s = make(Stmt::Kind::Model, next());
            const Token& n = expectName("a model name after 'model'");
            s->name = n.text, s->nameLoc = n.loc;
            return s;
        }
        if (isWord("loss")) {
            auto s = make(Stmt::Kind::Loss, next());
            const Token& n = expectName("a loss (cross_entropy, bce or mse) after 'loss'");
            s->loss = n.text, s->sizeLoc = n.loc;
            return s;
        }
        if (isWord("from") && peek(1).kind != Tok::Assign) {
            auto s = make(Stmt::Kind::From, next());
            const Token& n = expectName("a value name after 'from'");
            s->from = n.text, s->fromLoc = n.loc;
            return s;
        }
        if (isWord("activation") && peek(1).kind == Tok::Ident) return activationDef();

        std::string name;
        SourceLoc nameLoc;
        if (peek(1).kind == Tok::Assign) {
            static const std::set<std::string> keywords = {"model", "input", "repeat", "from",
                                                           "loss", "activation"};
            if (keywords.count(t.text) || findLayer(t.text))
                fail(t, "'{}' is a keyword and cannot name a value", t.text);
            name = t.text, nameLoc = t.loc;
            next(), next();
        }
        auto s = layer(depth);
        s->name = std::move(name), s->nameLoc = std::move(nameLoc);
        if (isWord("from")) {
            next();
            const Token& n = expectName("a value name after 'from'");
            s->from = n.text, s->fromLoc = n.loc;
        }
        return s;
    }

    std::unique_ptr<Stmt> layer(int depth) {
        const Token& t = peek();
        if (t.kind != Tok::Ident) fail(t, "expected a layer, found {}", what(t));
        if (isWord("input")) {
            auto s = make(Stmt::Kind::Input, next());
            s->size = integer("the input width", &s->sizeLoc);
            s->dims = {s->size};
            if (isWord("steps")) { // `input 28 steps 28`: a sequence of 28 steps of 28 features
                next();
                s->steps = true;
                s->dims.push_back(integer(
                    "the number of features per step after 'steps' (input STEPS steps FEATURES)",
                    &s->featuresLoc));
                return s;
            }
            while (isWord("x") && peek(1).kind == Tok::Number) { // `input 1x28x28`
                next();
                s->dims.push_back(integer("an input size"));
            }
            if (isWord("steps"))
                fail(peek(),
                     "a sequence input is 'input STEPS steps FEATURES' (one size each), not {} "
                     "steps",
                     fmt::join(s->dims, "x"));
            return s;
        }
        if (isWord("repeat")) {
            auto s = make(Stmt::Kind::Repeat, next());
            if (depth + 1 > kMaxRepeatDepth)
                fail(t, "'repeat' blocks nested more than {} deep", kMaxRepeatDepth);
            s->size = integer("the repeat count", &s->sizeLoc);
            expect(Tok::LBrace, "after the repeat count");
            s->body = stmtList(&t, depth + 1);
            expect(Tok::RBrace, "to close the repeat block");
            return s;
        }
        static const std::set<std::string> misplaced = {"model", "loss", "activation"};
        if (misplaced.count(t.text)) fail(t, "'{}' cannot be named or used as a layer", t.text);
        const LayerDef* def = findLayer(t.text);
        if (!def) { // a bare activation: `relu`, `leaky_relu(0.1)`
            auto s = make(Stmt::Kind::Layer, t);
            s->layer = &activationLayer();
            s->act = actRef();
            return s;
        }
        return layerOf(*def);
    }

    /// A layer statement read from its entry in the layer table:
    ///   KEYWORD [INT | NAME {NAME}] [size2] {NAME '=' value} [actref] {NAME '=' value}
    std::unique_ptr<Stmt> layerOf(const LayerDef& def) {
        const Token& t = peek();
        auto s = make(Stmt::Kind::Layer, next());
        s->layer = &def;
        auto startsOption = [&] { return peek().kind == Tok::Ident && peek(1).kind == Tok::Assign; };
        if (def.operands == LayerDef::Operands::Width) {
            s->size = integer(def.operandWhat, &s->sizeLoc);
        } else if (def.operands == LayerDef::Operands::Names) {
            while (peek().kind == Tok::Ident && !isWord("from") && !startsOption()) {
                const Token& n = next();
                s->operands.emplace_back(n.text, n.loc);
            }
            int n = int(s->operands.size());
            if (n < def.minNames || n > def.maxNames) fail(n == 0 ? peek() : t, "{}", def.operandWhat);
        }
        if (def.window) s->window = size2(def.window, 1);
        // The activation comes after the operands, before or among the options
        // (`dense 512 relu init=xavier`, `conv 16 3x3 padding=1 relu bias=false`).
        auto activation = [&] {
            if (def.activation && !s->act && peek().kind == Tok::Ident && !startsOption() && !isWord("from"))
                s->act = actRef();
        };
        activation();
        for (; startsOption(); activation()) {
            const Token& opt = next();
            next();
            const LayerOptionDef* o = nullptr;
            for (const LayerOptionDef& c : def.options)
                if (opt.text == c.name) o = &c;
            if (!o) fail(opt, "unknown option '{}' for {} ({})", opt.text, def.keyword, optionList(def));
            bool given = o->kind == LayerOptionDef::Kind::Init ? s->init.has_value() : false;
            for (auto& [name, _] : s->options) given |= name == o->name;
            for (auto& [name, _] : s->sizes) given |= name == o->name;
            if (given) fail(opt, "'{}' given twice", opt.text);
            switch (o->kind) {
            case LayerOptionDef::Kind::Init: {
                InitSpec spec;
                const Token& n = expectName("an init scheme after 'init='");
                spec.scheme = n.text, spec.loc = n.loc;
                spec.args = numberArgs("init scheme argument");
                s->init = std::move(spec);
                break;
            }
            case LayerOptionDef::Kind::Bool: {
                std::string context = fmt::format("'true' or 'false' after '{}='", o->name);
                const Token& v = expectName(context.c_str());
                if (v.text != "true" && v.text != "false")
                    fail(v, "expected {}, found '{}'", context, v.text);
                s->options.emplace_back(o->name, v.text == "true" ? 1.0 : 0.0);
                break;
            }
            case LayerOptionDef::Kind::Number:
                s->options.emplace_back(o->name, signedNumber(o->name));
                break;
            case LayerOptionDef::Kind::Size: {
                const int64_t least = std::string(o->name) == "padding" ? 0 : 1;
                s->sizes.emplace_back(o->name, size2(o->name, least));
                break;
            }
            }
        }
        return s;
    }

    /// size2 ::= INT ['x' INT]: a window or a stride= or padding= value (`3`, `3x3`, `2x1`),
    /// each a whole number of at least `least`; `3` is `3x3`. Values too large for the
    /// layer are its own to diagnose.
    Size2 size2(const char* name, int64_t least) {
        Size2 v;
        v.loc = peek().loc, v.given = true;
        auto one = [&]() -> int64_t {
            const Token& t = peek();
            if (t.kind == Tok::Minus && peek(1).kind == Tok::Number)
                fail(t, "{} must be a whole number of at least {}, not '-{}'", name, least, peek(1).text);
            if (t.kind != Tok::Number) fail(t, "expected {} (a whole number, or two as HxW), found {}", name, what(t));
            for (char c : t.text)
                if (c < '0' || c > '9') fail(t, "{} must be a whole number, not '{}'", name, t.text);
            if (t.text.size() > 9) fail(t, "{} '{}' is too large", name, t.text);
            if (int64_t(t.number) < least) fail(t, "{} must be at least {}, not {}", name, least, t.text);
            next();
            return int64_t(t.number);
        };
        v.h = v.w = one();
        if (isWord("x") && peek(1).kind == Tok::Number) {
            next();
            v.w = one();
        }
        return v;
    }

    /// "expected init= or bias=", "takes no options".
    static std::string optionList(const LayerDef& def) {
        if (def.options.empty()) return "it takes no options";
        std::string out = "expected ";
        for (size_t i = 0; i < def.options.size(); ++i) {
            if (i) out += i + 1 == def.options.size() ? " or " : ", ";
            out += std::string(def.options[i].name) + "=";
        }
        return out;
    }

    /// actref ::= NAME ['(' signed {',' signed} ')']
    ActRef actRef() {
        const Token& n = expectName("an activation");
        ActRef a{n.text, {}, n.loc};
        a.args = numberArgs("activation argument");
        return a;
    }

    std::vector<double> numberArgs(const char* context) {
        std::vector<double> args;
        if (!accept(Tok::LParen)) return args;
        do {
            if (args.size() >= 16) fail(peek(), "too many arguments");
            args.push_back(signedNumber(context));
        } while (accept(Tok::Comma));
        expect(Tok::RParen, "to close the argument list");
        return args;
    }

    /// actdef ::= 'activation' NAME '(' NAME {',' NAME ['=' signed]} ')' '=' expr
    std::unique_ptr<Stmt> activationDef() {
        auto s = make(Stmt::Kind::ActivationDef, next());
        const Token& n = expectName("the activation's name");
        s->defName = n.text, s->nameLoc = n.loc;
        expect(Tok::LParen, "after the activation's name");
        std::set<std::string> seen;
        do {
            const Token& p = expectName("a parameter name");
            if (!seen.insert(p.text).second) fail(p, "parameter '{}' appears twice", p.text);
            if (s->params.size() >= 16) fail(p, "too many parameters");
            s->params.push_back(p.text);
            if (s->params.size() == 1) {
                if (peek().kind == Tok::Assign) fail(peek(), "the input variable '{}' cannot have a default", p.text);
                continue;
            }
            std::optional<double> def;
            if (accept(Tok::Assign)) def = signedNumber("a default value");
            s->defaults.push_back(def);
        } while (accept(Tok::Comma));
        expect(Tok::RParen, "to close the parameter list");
        expect(Tok::Assign, "before the activation's formula");
        s->expr = expr(0);
        return s;
    }

    std::unique_ptr<ExprAST> node(ExprAST::Kind k, const SourceLoc& loc, std::string name = {}) {
        auto e = std::make_unique<ExprAST>();
        e->kind = k, e->loc = loc, e->name = std::move(name);
        return e;
    }
    void checkDepth(int depth) {
        if (depth > kMaxExprDepth) fail(peek(), "expression nested more than {} deep", kMaxExprDepth);
    }

    std::unique_ptr<ExprAST> expr(int depth) {
        checkDepth(depth);
        auto lhs = sum(depth + 1);
        switch (peek().kind) {
        case Tok::Lt: case Tok::Le: case Tok::Gt: case Tok::Ge: case Tok::EqEq: case Tok::NotEq: {
            const Token& op = next();
            auto e = node(ExprAST::Kind::Binary, op.loc, op.text);
            e->args.push_back(std::move(lhs));
            e->args.push_back(sum(depth + 1));
            switch (peek().kind) {
            case Tok::Lt: case Tok::Le: case Tok::Gt: case Tok::Ge: case Tok::EqEq: case Tok::NotEq:
                fail(peek(), "comparisons do not chain; use parentheses");
            default: break;
            }
            return e;
        }
        default: return lhs;
        }
    }

    std::unique_ptr<ExprAST> binaryChain(int depth, Tok a, Tok b,
                                      std::unique_ptr<ExprAST> (Parser::*sub)(int)) {
        auto lhs = (this->*sub)(depth + 1);
        int length = 0; // a long chain is a deep left-leaning tree: it counts as depth
        while (peek().kind == a || peek().kind == b) {
            checkDepth(depth + ++length);
            const Token& op = next();
            auto e = node(ExprAST::Kind::Binary, op.loc, op.text);
            e->args.push_back(std::move(lhs));
            e->args.push_back((this->*sub)(depth + 1));
            lhs = std::move(e);
        }
        return lhs;
    }
    std::unique_ptr<ExprAST> sum(int depth) { return binaryChain(depth, Tok::Plus, Tok::Minus, &Parser::term); }
    std::unique_ptr<ExprAST> term(int depth) { return binaryChain(depth, Tok::Star, Tok::Slash, &Parser::unary); }

    std::unique_ptr<ExprAST> unary(int depth) {
        checkDepth(depth);
        if (peek().kind == Tok::Minus) {
            const Token& op = next();
            auto e = node(ExprAST::Kind::Neg, op.loc, "-");
            e->args.push_back(unary(depth + 1));
            return e;
        }
        return power(depth + 1);
    }

    std::unique_ptr<ExprAST> power(int depth) {
        auto base = primary(depth + 1);
        if (peek().kind != Tok::Caret) return base;
        const Token& op = next();
        auto e = node(ExprAST::Kind::Binary, op.loc, "^");
        e->args.push_back(std::move(base));
        e->args.push_back(unary(depth + 1));
        return e;
    }

    std::unique_ptr<ExprAST> primary(int depth) {
        checkDepth(depth);
        const Token& t = peek();
        if (t.kind == Tok::Number) {
            next();
            auto e = node(ExprAST::Kind::Number, t.loc, t.text);
            e->number = t.number;
            return e;
        }
        if (t.kind == Tok::LParen) {
            next();
            auto e = expr(depth + 1);
            expect(Tok::RParen, "to close '('");
            return e;
        }
        if (t.kind == Tok::Ident) {
            next();
            if (!accept(Tok::LParen)) return node(ExprAST::Kind::Var, t.loc, t.text);
            auto e = node(ExprAST::Kind::Call, t.loc, t.text);
            do {
                if (e->args.size() >= 16) fail(peek(), "too many arguments");
                e->args.push_back(expr(depth + 1));
            } while (accept(Tok::Comma));
            expect(Tok::RParen, "to close the argument list");
            return e;
        }
        fail(t, "expected an expression, found {}", what(t));
    }
};

} // namespace

ModuleAST parse(const std::shared_ptr<const SourceFile>& file) {
    return Parser(lex(file)).parseFile(file);
}

std::unique_ptr<ExprAST> parseExpression(const std::shared_ptr<const SourceFile>& file) {
    return Parser(lex(file)).parseLoneExpr();
}

} // namespace gradc
