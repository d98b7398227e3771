// Cells.h — the one table of recurrent cells (PyTorch's nn.RNN, nn.LSTM, nn.GRU): each cell's
// forward step and its backward step written once, as scalar expressions in Arg slots. The
// interpreter evaluates them (scalar::Evaluator) and the code generator lowers them: one
// definition of the math for both backends, as Activations.cpp is for activations.
//
// A step works on one (example b, hidden unit j) at a time: every gate of unit j reads column
// g H + j of the input projection xp = x W_ihᵀ + b_ih and of the recurrent product
// zh = h_{t-1} W_hhᵀ + b_hh, so a cell is element-wise once those two products are made.
#pragma once

#include "Scalar.h"

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string_view>
#include <vector>

namespace gradc {

/// The recurrent cell of a scan op (the `cell` attribute; printed rnn, lstm, gru).
enum class Cell : uint8_t { None, Rnn, Lstm, Gru };

/// The table of cells, indexed by Cell: the name, the number of gates G (blocks of H rows of
/// W_ih and W_hh, in PyTorch's order), of state slots S that the forward step saves for the
/// backward one, and the slot of the cell state c_t that step t+1 reads as c_{t-1} (-1: the
/// cell has none). Everything else about a cell is its CellDef's expressions.
struct CellInfo {
    const char* name;
    int gates, states, cSlot;
};
inline constexpr CellInfo kCells[] = {
    {"none", 0, 0, -1},
    {"rnn", 1, 1, -1}, // the pre-activation
    {"lstm", 4, 5, 4}, // i, f, g, o (activated), c
    {"gru", 3, 4, -1}, // r, z, n, hn = W_hn h_{t-1} + b_hn
};
static_assert(std::size(kCells) == size_t(Cell::Gru) + 1, "one row per Cell");
inline constexpr const CellInfo& cellInfo(Cell c) {
    return kCells[size_t(c)];
}
inline const char* cellName(Cell c) {
    return cellInfo(c).name;
}
/// The cell called `name` (a layer's keyword: rnn, lstm, gru); Cell::None for any other word.
inline Cell cellNamed(std::string_view name) {
    for (size_t c = 1; c < std::size(kCells); ++c)
        if (name == kCells[c].name) return Cell(c);
    return Cell::None;
}
/// The number of gates G of a cell (1, 4, 3), and of state slots S (1, 5, 4).
inline int cellGates(Cell c) {
    return cellInfo(c).gates;
}
inline int cellStates(Cell c) {
    return cellInfo(c).states;
}

/// One cell's step, forward and backward, in documented Arg slots.
///
/// Forward arguments: Arg(g) = xp of gate g, Arg(G + g) = zh of gate g (g < G), Arg(2G) =
/// h_{t-1}, Arg(2G + 1) = c_{t-1} (the LSTM's cell state; 0 for the others). Results:
/// `forward[0]` = h_t, `forward[1 + s]` = state slot s (s < S): what the backward step reads.
///
/// Backward arguments: Arg(0) = dh (the total derivative of the loss with respect to h_t:
/// the consumers' gradient plus the carry from step t+1), Arg(1) = dc (the LSTM's cell-state
/// gradient from step t+1; 0 at the last step), Arg(2) = h_{t-1}, Arg(3) = c_{t-1}, Arg(4 + s)
/// = state slot s of step t. Results: `dxp[g]` the gradient of xp's gate g (also b_ih's and,
/// through the input projection, x's and W_ih's), `dzhh[g]` the gradient of zh's gate g (what
/// W_hh, b_hh and h_{t-1} receive through the recurrent product), `direct` the part of
/// dL/dh_{t-1} that does not pass through the product (GRU: dh z), `dcPrev` dL/dc_{t-1}.
struct CellDef {
    int gates = 1; ///< G, S and the slot of c_t as kCells gives them: the state slot whose value
    int states = 1; ///< step t+1 reads as c_{t-1} (cPrevArg, kCPrev) and whose gradient flows
    int cSlot = -1; ///< back through dcPrev (the LSTM's c, 4; -1 for a cell without one)
    std::vector<scalar::Expr> forward;   ///< 1 + S
    std::vector<scalar::Expr> dxp, dzhh; ///< G each
    scalar::Expr direct, dcPrev;

    int xpArg(int g) const { return g; }
    int zhArg(int g) const { return gates + g; }
    int hPrevArg() const { return 2 * gates; }
    int cPrevArg() const { return 2 * gates + 1; }
    int forwardArgs() const { return 2 * gates + 2; }
    static constexpr int kDh = 0, kDc = 1, kHPrev = 2, kCPrev = 3;
    static int stateArg(int s) { return 4 + s; }
    int backwardArgs() const { return 4 + states; }
};

/// The cell `c`; `activation` is the rnn's non-linearity in Arg(0) (tanh or relu; ignored for
/// lstm and gru).
CellDef cellDef(Cell c, const scalar::Expr& activation);

} // namespace gradc
