// Activations.cpp — built-in activations as formulas, and binding of user definitions.
#include "Activations.h"

#include "Parser.h"

#include <fmt/format.h>

#include <cmath>

namespace gradc {

namespace {
struct Builtin {
    const char* name;
    const char* params; // after x, comma separated, with defaults
    const char* formula;
};
// PyTorch's definitions and defaults, at NaN and +-Inf too, forward and backward (tested
// against PyTorch by tests/torch_activations.py): a NaN fails every comparison, so it takes
// the arm PyTorch's kernels give it (relu: x; leaky_relu, elu: the negative arm, NaN).
// relu'(0) = 0 and leaky_relu'(0) = alpha follow from the comparisons, as in PyTorch. gelu is the exact (erf) form, PyTorch's default.
const Builtin kBuiltins[] = {
    {"identity", "", "x"},
    {"sigmoid", "", "sigmoid(x)"},
    {"tanh", "", "tanh(x)"},
    {"relu", "", "select(x <= 0, 0, x)"}, // NaN stays NaN; relu'(NaN) = 1 as PyTorch's
    {"leaky_relu", "alpha=0.01", "select(x > 0, x, alpha * x)"},
    {"elu", "alpha=1", "select(x > 0, x, alpha * (exp(x) - 1))"},
    {"swish", "", "x * sigmoid(x)"},
    {"silu", "", "x * sigmoid(x)"},
    {"gelu", "", "0.5 * x * (1 + erf(x / sqrt(2)))"},
    {"softplus", "", "softplus(x)"},
};
} // namespace

ActivationTable::ActivationTable() {
    for (const Builtin& b : kBuiltins) {
        std::string src = fmt::format("activation {}(x{}{}) = {}\n", b.name, *b.params ? ", " : "",
                                      b.params, b.formula);
        ModuleAST m = parse(makeSourceFile(fmt::format("<builtin {}>", b.name), src));
        internal_assert(m.stmts.size() == 1, b.name);
        define(*m.stmts[0]);
        defs_[b.name].builtin = true;
        defs_[b.name].formula = b.formula;
    }
}

std::vector<std::string> ActivationTable::builtinNames() const {
    std::vector<std::string> out;
    for (auto& n : order_)
        if (defs_.at(n).builtin) out.push_back(n);
    return out;
}

void ActivationTable::add(Def d) {
    order_.push_back(d.name);
    std::string name = d.name;
    defs_.emplace(std::move(name), std::move(d));
}

void ActivationTable::define(const Stmt& s) {
    auto it = defs_.find(s.defName);
    if (it != defs_.end())
        throw UserError(s.nameLoc, it->second.builtin
                                       ? fmt::format("'{}' is a built-in activation and cannot be "
                                                     "redefined", s.defName)
                                       : fmt::format("activation '{}' is defined twice", s.defName));
    scalar::Kind fn;
    if (scalar::lookupFunction(s.defName, &fn) && s.defName != "sigmoid" && s.defName != "tanh" &&
        s.defName != "softplus")
        throw UserError(s.nameLoc, fmt::format("'{}' is a built-in function and cannot be "
                                               "redefined", s.defName));
    Def d;
    d.name = s.defName;
    d.params = s.params;
    d.defaults = s.defaults;
    std::map<std::string, scalar::Expr> env;
    env[s.params[0]] = scalar::var();
    // A parameter is a placeholder leaf until a use binds it.
    for (size_t i = 1; i < s.params.size(); ++i) env[s.params[i]] = scalar::param(int(i - 1));
    try {
        d.body = toScalar(*s.expr, env);
    } catch (const scalar::WorkLimit&) { // stopped at the limit, not after it
        throw UserError(s.nameLoc, fmt::format("activation '{}' is too large: expanding the "
                                               "activations defined so far takes more than {} "
                                               "steps", s.defName, kMaxExpansionWork));
    }
    add(std::move(d));
}

scalar::Expr ActivationTable::bind(const Def& d, const std::vector<scalar::Expr>& args,
                                const SourceLoc& loc) const {
    size_t nparams = d.params.size() - 1;
    if (args.size() > nparams)
        throw UserError(loc, nparams == 0
                                 ? fmt::format("activation '{}' takes no parameters", d.name)
                                 : fmt::format("activation '{}' takes at most {} parameter{}, "
                                               "got {}", d.name, nparams, nparams == 1 ? "" : "s",
                                               args.size()));
    std::vector<scalar::Expr> values;
    for (size_t i = 0; i < nparams; ++i) {
        if (i < args.size()) values.push_back(args[i]);
        else if (d.defaults[i]) values.push_back(scalar::constant(*d.defaults[i]));
        else
            throw UserError(loc, fmt::format("activation '{}' needs a value for its parameter "
                                             "'{}'", d.name, d.params[i + 1]));
    }
    return scalar::substituteParams(d.body, values, &work_, kMaxExpansionWork);
}

Activation ActivationTable::instantiate(const ActRef& use) const {
    auto it = defs_.find(use.name);
    if (it == defs_.end()) {
        std::string known;
        for (auto& n : order_) known += (known.empty() ? "" : ", ") + n;
        throw UserError(use.loc, fmt::format("unknown activation '{}' (known: {})", use.name, known));
    }
    Activation a;
    a.name = use.name;
    if (!use.args.empty()) {
        a.name += "(";
        for (size_t i = 0; i < use.args.size(); ++i)
            a.name += fmt::format("{}{}", i ? ", " : "", use.args[i]);
        a.name += ")";
    }
    auto [bound, fresh] = instances_.try_emplace(a.name);
    if (fresh) { // each distinct use is bound and measured once, however many layers use it
        std::vector<scalar::Expr> values;
        for (double v : use.args) values.push_back(scalar::constant(v));
        try {
            bound->second.first = bind(it->second, values, use.loc);
        } catch (const scalar::WorkLimit&) {
            instances_.erase(bound);
            throw UserError(use.loc, fmt::format("activation '{}' is too large: expanding it takes more than {} "
                                                 "steps", use.name, kMaxExpansionWork));
        } catch (...) {
            instances_.erase(bound);
            throw;
        }
        bound->second.second = scalar::dagSize(bound->second.first);
    }
    if (bound->second.second > kMaxOperations)
        throw UserError(use.loc, fmt::format("activation '{}' has {} operations once its calls "
                                             "are expanded; the limit is {}", use.name,
                                             bound->second.second, kMaxOperations));
    a.formula = bound->second.first;
    return a;
}

scalar::Expr ActivationTable::convert(const ExprAST& e) const {
    try {
        return toScalar(e, {{"x", scalar::var()}});
    } catch (const scalar::WorkLimit&) {
        throw UserError(e.loc, fmt::format("the expression is too large: expanding its calls takes more than {} steps",
                                           kMaxExpansionWork));
    }
}

scalar::Expr ActivationTable::toScalar(const ExprAST& e,
                                    const std::map<std::string, scalar::Expr>& env) const {
    using scalar::Kind;
    switch (e.kind) {
    case ExprAST::Kind::Number: return scalar::constant(e.number);
    case ExprAST::Kind::Var: {
        auto it = env.find(e.name);
        if (it != env.end()) return it->second;
        if (e.name == "pi") return scalar::constant(M_PI);
        std::string vars;
        for (auto& [n, _] : env) vars += (vars.empty() ? "'" : ", '") + n + "'";
        throw UserError(e.loc, fmt::format("unknown name '{}' in the formula (it may use {} and "
                                           "numbers)", e.name, vars));
    }
    case ExprAST::Kind::Neg: return scalar::make(Kind::Neg, {toScalar(*e.args[0], env)});
    case ExprAST::Kind::Binary: {
        static const std::pair<const char*, Kind> ops[] = {
            {"+", Kind::Add}, {"-", Kind::Sub}, {"*", Kind::Mul},  {"/", Kind::Div},  {"^", Kind::Pow},
            {"<", Kind::Lt},  {"<=", Kind::Le}, {">", Kind::Gt},   {">=", Kind::Ge},  {"==", Kind::Eq},
            {"!=", Kind::Ne}};
        for (auto& [sp, op] : ops)
            if (e.name == sp)
                return scalar::make(op, {toScalar(*e.args[0], env), toScalar(*e.args[1], env)});
        internal_assert(false, e.name);
        return nullptr;
    }
    case ExprAST::Kind::Call: {
        std::vector<scalar::Expr> args;
        for (auto& a : e.args) args.push_back(toScalar(*a, env));
        scalar::Kind fn;
        if (scalar::lookupFunction(e.name, &fn)) {
            int arity = scalar::info(fn).arity;
            if (int(args.size()) != arity)
                throw UserError(e.loc, fmt::format("'{}' takes {} argument{}, got {}", e.name,
                                                   arity, arity == 1 ? "" : "s", args.size()));
            return scalar::make(fn, std::move(args));
        }
        auto it = defs_.find(e.name);
        if (it == defs_.end())
            throw UserError(e.loc, fmt::format("unknown function '{}' (functions: select exp log "
                                               "sqrt abs tanh sigmoid softplus erf min max, and "
                                               "activations defined before this one)", e.name));
        // Another activation: its input may be any expression, its parameters must not
        // depend on the input (they may use the calling activation's own parameters).
        std::vector<scalar::Expr> params(args.begin() + 1, args.end());
        for (size_t i = 0; i < params.size(); ++i)
            if (scalar::usesVar(params[i]))
                throw UserError(e.args[i + 1]->loc, fmt::format("parameter {} of '{}' must not "
                                                                "depend on the input", i + 1,
                                                                e.name));
        scalar::Expr body = bind(it->second, params, e.loc);
        return scalar::substitute(body, args[0], &work_, kMaxExpansionWork);
    }
    }
    internal_assert(false, "unknown expression kind");
}

} // namespace gradc
