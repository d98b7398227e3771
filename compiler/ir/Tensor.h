// Tensor.h — a tensor's values on the host: what backends, the runtime, data loading and the
// tests pass around (inputs, parameters, outputs), always in double precision.
#pragma once

#include "Graph.h"

#include <map>
#include <string>
#include <vector>

namespace gradc {

struct Tensor {
    Shape shape;
    std::vector<double> data; ///< row-major; class labels are stored as whole numbers
};

/// Input and parameter values by name ("x", "target", "layers.0.weight", ...).
using Bindings = std::map<std::string, Tensor>;

} // namespace gradc
