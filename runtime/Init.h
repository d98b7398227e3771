// Init.h — deterministic parameter initialisation for every scheme of the model language.
#pragma once

#include "Graph.h"
#include "Interpreter.h"

#include <cstdint>

namespace gradc {

/// Fills every parameter of `g` from `seed`: the same seed gives the same numbers on every
/// machine (the generator and distributions are gradc's own, not the C++ library's).
///   pytorch   weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))  (nn.Linear's default)
///   xavier    N(0, 2/(fan_in+fan_out))
///   kaiming   N(0, 2/fan_in); the first layer N(0, 1/fan_in) (its input is not a ReLU
///             output), as in the UvA tutorial
///   normal(s) N(0, s^2); constant(v) all v
///   identity(gain)    a recurrent weight [G H, H]: gain I in each of its G gate blocks
///   orthogonal(gain)  gain Q, nn.init.orthogonal_'s construction (QR of a Gaussian draw)
Bindings initialiseParameters(const Graph& g, uint64_t seed);

} // namespace gradc
