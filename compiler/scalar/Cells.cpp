// Cells.cpp — the recurrent cells (see Cells.h), as PyTorch's documentation writes them:
//   rnn:  h = f(xp + zh)
//   lstm: i = σ(xi + hi), f = σ(xf + hf), g = tanh(xg + hg), o = σ(xo + ho),
//         c = f c₋ + i g, h = o tanh(c)
//   gru:  r = σ(xr + hr), z = σ(xz + hz), n = tanh(xn + r hn), h = (1 - z) n + z h₋
//         (the reset gate multiplies W_hn h₋ + b_hn, as PyTorch's GRU does)
// The backward steps are the chain rule written out by hand through the saved states, so
// that neither backend recomputes a gate.
#include "Cells.h"

#include "Source.h"

namespace gradc {
namespace {

using scalar::Expr;
using scalar::Kind;

Expr a(int i) { return scalar::arg(i); }
Expr k(double v) { return scalar::constant(v); }
Expr add(Expr x, Expr y) { return scalar::make(Kind::Add, {std::move(x), std::move(y)}); }
Expr sub(Expr x, Expr y) { return scalar::make(Kind::Sub, {std::move(x), std::move(y)}); }
Expr mul(Expr x, Expr y) { return scalar::make(Kind::Mul, {std::move(x), std::move(y)}); }
Expr mul(Expr x, Expr y, Expr z) { return mul(mul(std::move(x), std::move(y)), std::move(z)); }
Expr sigmoid(Expr x) { return scalar::make(Kind::Sigmoid, {std::move(x)}); }
Expr tanh(Expr x) { return scalar::make(Kind::Tanh, {std::move(x)}); }
/// s (1 - s): σ'(x) through s = σ(x).
Expr dsigmoid(const Expr& s) { return mul(s, sub(k(1), s)); }
/// 1 - t²: tanh'(x) through t = tanh(x).
Expr dtanh(const Expr& t) { return sub(k(1), mul(t, t)); }

CellDef rnn(const Expr& activation) {
    CellDef d;
    d.gates = 1, d.states = 1;
    internal_assert(activation != nullptr, "an rnn cell needs its activation");
    const Expr pre = add(a(d.xpArg(0)), a(d.zhArg(0)));
    d.forward = {scalar::substituteArgs(activation, {pre}), pre};
    // g f'(x) as PyTorch's backward applies it (relu: 0 where x <= 0), at the saved x.
    const Expr vjp = scalar::vjp(scalar::substituteArgs(activation, {scalar::var()}));
    const Expr da = scalar::substituteGrad(scalar::substitute(vjp, a(CellDef::stateArg(0))), a(CellDef::kDh));
    d.dxp = d.dzhh = {da};
    d.direct = d.dcPrev = k(0);
    return d;
}

CellDef lstm() {
    CellDef d;
    d.gates = 4, d.states = 5;
    Expr gate[4];
    for (int g = 0; g < 4; ++g) gate[g] = add(a(d.xpArg(g)), a(d.zhArg(g)));
    const Expr i = sigmoid(gate[0]), f = sigmoid(gate[1]), g = tanh(gate[2]), o = sigmoid(gate[3]);
    const Expr c = add(mul(f, a(d.cPrevArg())), mul(i, g));
    d.forward = {mul(o, tanh(c)), i, f, g, o, c};
    d.cellStateSlot = 4;
    // Backward through the saved i, f, g, o, c.
    const Expr dh = a(CellDef::kDh), cp = a(CellDef::kCPrev);
    const Expr si = a(CellDef::stateArg(0)), sf = a(CellDef::stateArg(1)), sg = a(CellDef::stateArg(2)),
               so = a(CellDef::stateArg(3)), sc = a(CellDef::stateArg(4));
    const Expr tc = tanh(sc);
    const Expr dc = add(a(CellDef::kDc), mul(dh, so, dtanh(tc)));
    d.dxp = {mul(dc, sg, dsigmoid(si)), mul(dc, cp, dsigmoid(sf)), mul(dc, si, dtanh(sg)), mul(dh, tc, dsigmoid(so))};
    d.dzhh = d.dxp;
    d.direct = k(0);
    d.dcPrev = mul(dc, sf);
    return d;
}

CellDef gru() {
    CellDef d;
    d.gates = 3, d.states = 4;
    const Expr r = sigmoid(add(a(d.xpArg(0)), a(d.zhArg(0))));
    const Expr z = sigmoid(add(a(d.xpArg(1)), a(d.zhArg(1))));
    const Expr hn = a(d.zhArg(2));
    const Expr n = tanh(add(a(d.xpArg(2)), mul(r, hn)));
    const Expr hp = a(d.hPrevArg());
    d.forward = {add(mul(sub(k(1), z), n), mul(z, hp)), r, z, n, hn};
    const Expr dh = a(CellDef::kDh), hprev = a(CellDef::kHPrev);
    const Expr sr = a(CellDef::stateArg(0)), sz = a(CellDef::stateArg(1)), sn = a(CellDef::stateArg(2)),
               shn = a(CellDef::stateArg(3));
    const Expr dn = mul(dh, sub(k(1), sz), dtanh(sn));
    const Expr dz = mul(dh, sub(hprev, sn), dsigmoid(sz));
    const Expr dr = mul(dn, shn, dsigmoid(sr));
    d.dxp = {dr, dz, dn};
    d.dzhh = {dr, dz, mul(dn, sr)};
    d.direct = mul(dh, sz);
    d.dcPrev = k(0);
    return d;
}

} // namespace

const char* cellName(Cell c) {
    switch (c) {
    case Cell::None: return "none";
    case Cell::Rnn: return "rnn";
    case Cell::Lstm: return "lstm";
    case Cell::Gru: return "gru";
    }
    return "?";
}

int cellGates(Cell c) { return c == Cell::Lstm ? 4 : c == Cell::Gru ? 3 : 1; }
int cellStates(Cell c) { return c == Cell::Lstm ? 5 : c == Cell::Gru ? 4 : 1; }

CellDef cellDef(Cell c, const scalar::Expr& activation) {
    CellDef d;
    switch (c) {
    case Cell::Rnn: d = rnn(activation); break;
    case Cell::Lstm: d = lstm(); break;
    case Cell::Gru: d = gru(); break;
    case Cell::None: internal_assert(false, "a scan without a cell");
    }
    auto simplify = [](std::vector<Expr>& v) {
        for (Expr& e : v) e = scalar::simplify(e);
    };
    simplify(d.forward), simplify(d.dxp), simplify(d.dzhh);
    d.direct = scalar::simplify(d.direct), d.dcPrev = scalar::simplify(d.dcPrev);
    return d;
}

} // namespace gradc
