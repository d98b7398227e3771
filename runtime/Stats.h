// Stats.h — per-tensor statistics: the numbers behind the vanishing-gradient picture.
#pragma once

#include "Interpreter.h"
#include "Layout.h"

#include <limits>
#include <map>
#include <string>
#include <vector>

namespace gradc {

struct TensorStats {
    std::string name;
    Shape shape;
    int64_t count = 0;
    double mean = 0, std = 0, absMean = 0, min = 0, max = 0, l2 = 0;
    double zeroFraction = 0;   ///< share of entries with |g| < 1e-8
    int64_t nan = 0, inf = 0;  ///< counted, never folded into the other figures
    std::vector<double> edges;   ///< bins + 1 histogram edges over [min, max]
    std::vector<int64_t> counts; ///< bins counts of the finite entries
    /// log10|g| of the finite entries that are not zero, in bins a tenth of a decade wide,
    /// from the smallest |g| to the largest: logCounts[i] counts (logFirst + i) / 10 <=
    /// log10|g| < (logFirst + i + 1) / 10 (a double's 1e-320 as well as a float's 1e-45);
    /// `zeros` counts the entries that are exactly zero.
    std::vector<int64_t> logCounts;
    int logFirst = 0;
    int64_t zeros = 0;
    static constexpr int kLogPerDecade = 10;
};

/// Statistics of the finite entries of `t` (NaN and Inf are counted apart).
TensorStats statistics(const std::string& name, const Tensor& t, int bins = 30);
/// The same, read in place from a buffer of float or double (no copy of the tensor).
template <typename T>
TensorStats statistics(const std::string& name, const Shape& shape, const T* data, int bins = 30);

/// A hidden activation layer's output y = f(x) over the batch, and how much of it passes
/// almost no gradient: the share of units with |f'(x)| < 0.01 (saturated sigmoid/tanh
/// units, dead ReLU units).
struct ActivationStats {
    std::string name;     ///< the layer: layers.1
    std::string function; ///< sigmoid, leaky_relu(0.1), ...
    Shape shape;
    double mean = 0, std = 0;
    double lowGradientFraction = 0;
    int64_t nan = 0, inf = 0;
};

ActivationStats activationStatistics(const std::string& name, const Activation& f, const Tensor& preactivation);

/// Statistics of every parameter's gradient in the flat gradient array `grads`, in parameter
/// order, where `layout` places them (float or double).
template <typename T> std::vector<TensorStats> gradientStatistics(const Layout& layout, const T* grads);

/// How much weaker the first layer's gradient is than the last's: abs_mean of the first weight
/// gradient over the last one's (weights: isWeight, Graph.h), with their names; NaN
/// (and no names) with fewer than two weights.
struct VanishingFactor {
    double value = 0;
    std::string firstWeight, lastWeight;
};
VanishingFactor vanishingFactor(const std::vector<TensorStats>& gradients);

/// Which units of a layer were ever nonzero (`gradc dead`): a unit is one value of an example,
/// or for values of rank 4, [B,C,H,W], a channel, alive when nonzero at any position of any
/// image (a dead channel: zero at every position for every image).
class UnitMask {
public:
    /// For a layer whose values have `shape` ([batch, ...]).
    explicit UnitMask(const Shape& shape);
    /// Marks the units nonzero in the first `rows` examples of `values` (the layer's shape,
    /// row-major). NaN counts as nonzero: it is not a dead unit's output.
    template <typename T> void add(const T* values, int64_t rows);
    bool channels() const { return channels_; }
    int64_t units() const { return int64_t(alive_.size()); }
    int64_t dead() const;

private:
    std::vector<char> alive_;
    int64_t positions_ = 1; ///< values per unit in one example: H*W for a channel, else 1
    bool channels_ = false;
};

/// The activation statistics of every Preact output of graph `g`, from `outputs` (by outputLabel).
std::vector<ActivationStats> activationStatistics(const Graph& g, const std::map<std::string, Tensor>& outputs);

/// A recurrent layer's gradient through time: ‖dL/dh_t‖ for every step t (the Frobenius norm
/// over the batch of the total derivative of the loss with respect to the hidden state h_t,
/// through all later steps), and how much weaker the first step's is than the last's.
struct ThroughTime {
    std::string layer;         ///< the module: layers.0
    std::string cell;          ///< lstm, gru, rnn tanh, rnn relu
    std::vector<double> norms; ///< T norms, t = 0 .. T-1
    /// norms[0] / norms[T-1]; NaN when the last norm is 0 or not finite; JSON null whenever not
    /// finite.
    double vanishingFactor = 0;
};

/// The smallest and largest finite positive values: what a log scale can show (zeros, NaN and
/// Inf have no place on it).
struct PositiveRange {
    double lo = std::numeric_limits<double>::infinity(), hi = 0;
    /// Widens the range to the finite positive values among `values`.
    PositiveRange& add(const std::vector<double>& values);
    bool empty() const { return !(lo <= hi); }
};

/// The through-time figures of one layer from its norms.
ThroughTime throughTime(const std::string& layer, const std::string& cell,
                        std::vector<double> norms);
/// A scan node's cell as the reports name it: lstm, gru, rnn tanh, rnn relu.
std::string cellDescription(const Node& scan);
/// Every recurrent layer of graph `g` (the forward graph or its differentiated one), in layer
/// order, from the backward pass's `outputs` (by outputLabel: "through:LAYER"). A layer whose
/// output is missing is an internal error.
std::vector<ThroughTime> throughTimeStatistics(const Graph& g,
                                               const std::map<std::string, Tensor>& outputs);

} // namespace gradc
