// AST.cpp — the printer behind `gradc dump --emit=ast`.
#include "AST.h"

#include "Layers.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace gradc {

static std::string num(double v) { return fmt::format("{}", v); }

std::string printExpr(const ExprAST& e) {
    switch (e.kind) {
    case ExprAST::Kind::Number: return num(e.number);
    case ExprAST::Kind::Var: return e.name;
    case ExprAST::Kind::Neg: return fmt::format("(neg {})", printExpr(*e.args[0]));
    case ExprAST::Kind::Binary:
        return fmt::format("({} {} {})", e.name, printExpr(*e.args[0]), printExpr(*e.args[1]));
    case ExprAST::Kind::Call: {
        std::string s = "(" + e.name;
        for (auto& a : e.args) s += " " + printExpr(*a);
        return s + ")";
    }
    }
    return "?";
}

static std::string args(const std::vector<double>& a) {
    if (a.empty()) return "";
    std::string s = "(";
    for (size_t i = 0; i < a.size(); ++i) s += (i ? ", " : "") + num(a[i]);
    return s + ")";
}

static void printStmt(const Stmt& s, int indent, std::string& out) {
    std::string pad(size_t(indent) * 2, ' ');
    std::string head = fmt::format("{}{}:{} ", pad, s.loc.line, s.loc.col);
    if (!s.name.empty() && s.kind != Stmt::Kind::Model) head += s.name + " = ";
    std::string from = s.from.empty() || s.kind == Stmt::Kind::From ? "" : " from " + s.from;
    switch (s.kind) {
    case Stmt::Kind::Model: out += head + "model " + s.name + "\n"; return;
    case Stmt::Kind::Input:
        if (s.steps) {
            out += head + fmt::format("input {} steps {}{}\n", s.dims[0], s.dims[1], from);
            return;
        }
        out += head +
               fmt::format("input {}{}\n",
                           fmt::join(s.dims.empty() ? std::vector<int64_t>{s.size} : s.dims, "x"),
                           from);
        return;
    case Stmt::Kind::Layer: {
        const LayerDef& d = *s.layer;
        if (&d == &activationLayer()) {
            out += head + "act " + s.act->name + args(s.act->args) + from + "\n";
            return;
        }
        out += head + d.keyword;
        if (d.operands == LayerDef::Operands::Width) out += fmt::format(" {}", s.size);
        if (d.window) out += fmt::format(" {}x{}", s.window.h, s.window.w);
        for (auto& [n, _] : s.operands) out += " " + n;
        if (s.act) out += " act=" + s.act->name + args(s.act->args);
        for (const LayerOptionDef& o : d.options) {
            if (o.kind == LayerOptionDef::Kind::Init) {
                if (s.init) out += " init=" + s.init->scheme + args(s.init->args);
            } else if (o.kind == LayerOptionDef::Kind::Size) {
                Size2 v = sizeOption(s, o.name);
                if (v.given) out += fmt::format(" {}={}x{}", o.name, v.h, v.w);
            } else if (o.kind == LayerOptionDef::Kind::Bool) {
                out += fmt::format(" {}={}", o.name, optionValue(s, o.name) != 0);
            } else {
                out += fmt::format(" {}={}", o.name, optionValue(s, o.name));
            }
        }
        out += from + "\n";
        return;
    }
    case Stmt::Kind::Repeat:
        out += head + fmt::format("repeat {}{}\n", s.size, from);
        for (auto& b : s.body) printStmt(*b, indent + 1, out);
        out += pad + "end\n";
        return;
    case Stmt::Kind::From: out += head + "from " + s.from + "\n"; return;
    case Stmt::Kind::ActivationDef: {
        out += head + "activation " + s.defName + "(" + s.params[0];
        for (size_t i = 1; i < s.params.size(); ++i) {
            out += ", " + s.params[i];
            if (s.defaults[i - 1]) out += "=" + num(*s.defaults[i - 1]);
        }
        out += ") = " + printExpr(*s.expr) + "\n";
        return;
    }
    case Stmt::Kind::Loss: out += head + "loss " + s.loss + "\n"; return;
    }
}

std::string printAST(const ModuleAST& m) {
    std::string out = "module\n";
    for (auto& s : m.stmts) printStmt(*s, 1, out);
    return out;
}

} // namespace gradc
