// Layout.h — the contract between compiled code and the runtime: every buffer an entry point
// reads or writes, with its role, name, layer, shape, element type and place in its array.
//
// Computed once from a forward graph (computeLayout). The code generator places parameters,
// gradients and kept activations where the layout says; the runtime, statistics, the AOT
// header, parameter files and reports find them there. Nobody else walks the parameters or
// the outputs adding up offsets, and nobody parses output names.
//
// The arrays (the arguments of the entry points, see Backend.h):
//   State    the parameters in PyTorch's order and layout, then the running statistics
//   Grads    one gradient per parameter, at the parameter's offset
//   Moment1  Moment2   the optimiser's state per parameter (momentum or Adam's m; Adam's v)
//   Acts     the values the forward pass keeps, in output order, then each training-mode
//            batchnorm's batch mean and variance (for its running statistics)
//   X Target Logits Loss   the input, the target (int32 class labels or real values), the
//            logits and the loss
#pragma once

#include "Graph.h"

#include <array>
#include <string>
#include <unordered_map>
#include <vector>

namespace gradc {

enum class Array : uint8_t { State, Grads, Moment1, Moment2, Acts, X, Target, Logits, Loss };
constexpr size_t kArrayCount = 9;

enum class Role : uint8_t {
    Parameter,   ///< State: a trainable tensor
    RunningStat, ///< State, after the parameters: batchnorm's running mean or variance
    Gradient,    ///< Grads: d loss / d parameter
    Moment1,     ///< Moment1: the optimiser's first moment (or momentum buffer) of a parameter
    Moment2,     ///< Moment2: Adam's second moment of a parameter
    Preact,      ///< Acts: the input of a hidden activation layer (activation statistics)
    NormInput,   ///< Acts: the input of a training-mode batchnorm
    NormMean,    ///< Acts: a training-mode batchnorm's batch mean [N], as its kernel computed it
    NormVar,     ///< Acts: its batch variance [N], unbiased (what the running variance tracks)
    LayerOutput, ///< Acts: a module's output (evaluation mode, when asked for)
    Input,       ///< X
    Target,      ///< Target
    Logits,      ///< Logits
    Loss,        ///< Loss: one element
    ThroughTime, ///< Acts: a recurrent layer's ‖dL/dh_t‖ per step [T], written by the backward pass only
    GradNormSq,  ///< Acts: Σ g² over every parameter's gradient [1] (Graph::gradNorm), written by the backward pass only
};

/// One buffer.
struct LayoutEntry {
    Role role;
    Array array;
    std::string name;  ///< the tensor (layers.0.weight, layers.1.running_mean, x, target) or,
                       ///< for a kept activation, its layer; "" for the logits and the loss
    std::string layer; ///< the module it belongs to (layers.0); "" for inputs and results
    Shape shape;       ///< any rank; the batch is dimension 0 where there is one
    DType type = DType::Real;
    int64_t offset = 0; ///< elements into its array
    ValueId value = 0;  ///< its node in the forward graph
    double initial = 0; ///< RunningStat: the value it starts at
    int64_t elements() const { return elementCount(shape); }
};

class Layout {
public:
    std::vector<LayoutEntry> entries; ///< State, Grads, Moment1, Moment2, Acts, then the rest

    /// Elements of an array.
    int64_t size(Array a) const { return sizes_[size_t(a)]; }
    int64_t parameterCount() const { return size(Array::Grads); }
    // The lookups point into the Layout: they are refused on a temporary one, whose entries
    // would be gone before the caller reads them.
    /// The entry of `role` named `name`, or null.
    const LayoutEntry* find(Role role, const std::string& name = "") const&;
    const LayoutEntry* find(Role role, const std::string& name = "") const&& = delete;
    /// The same; an internal error if there is none.
    const LayoutEntry& at(Role role, const std::string& name = "") const&;
    const LayoutEntry& at(Role role, const std::string& name = "") const&& = delete;
    /// Every entry of `role`, in array order.
    std::vector<const LayoutEntry*> all(Role role) const&;
    std::vector<const LayoutEntry*> all(Role role) const&& = delete;
    /// A parameter or running statistic by name (both live in State).
    const LayoutEntry& state(const std::string& name) const&;
    const LayoutEntry& state(const std::string& name) const&& = delete;

    void add(LayoutEntry e); ///< appends `e` at the end of its array

private:
    std::array<int64_t, kArrayCount> sizes_{};
    /// Where each (role, name) is among the entries that add() appended, so lookups take
    /// constant time (the fusion of a 1000-layer model looks up thousands of names).
    std::unordered_map<std::string, size_t> index_;
    size_t added_ = 0; ///< entries.size() after the last add()
    static std::string key(Role role, const std::string& name) { return std::to_string(int(role)) + ':' + name; }
};

/// The layout of the entry points compiled from `forward` (a training- or evaluation-mode
/// forward graph).
Layout computeLayout(const Graph& forward);

/// The outputs the backward entry point writes, from the differentiated graph `grad`: the
/// loss, every gradient, each recurrent layer's through-time norms, the gradients' sum of
/// squares (with Graph::gradNorm), then the kept activations (in the forward pass's order).
std::vector<Output> backwardOutputs(const Graph& grad);

/// The layout role of a graph output.
Role roleOf(OutputRole r);
const char* roleName(Role r);
const char* arrayName(Array a);

/// One line per entry: `gradc dump --emit=layout`.
std::string printLayout(const Layout& l);

} // namespace gradc
