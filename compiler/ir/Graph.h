// Graph.h — the tensor IR: a static-shape dataflow graph of one model at one batch size.
//
// The Graph owns its nodes in a vector; a node is its one output value, referred to by
// ValueId (its index). Nodes are appended in topological order: a node's inputs always have
// smaller ids. Tensors are real-valued (the element type is chosen by the backend) except
// class labels, which are indices. Shapes are fully static: the batch size is part of the
// graph. What each op computes is written once, in Ops.def.
#pragma once

#include "Activations.h"
#include "Source.h"

#include <cstdint>
#include <string>
#include <vector>

namespace gradc {

enum class Op : uint8_t {
#define GRADC_OP(name, spelling, arity, shape, grad) name,
#include "Ops.def"
};

struct OpDesc {
    const char* spelling;
    int arity;
};
const OpDesc& describe(Op op);

using ValueId = uint32_t;
using Shape = std::vector<int64_t>;
enum class DType : uint8_t { Real, Index };

std::string shapeString(const Shape& s); // "[256,784]"
int64_t elementCount(const Shape& s);

/// How a parameter is initialised: a scheme of the model language and its arguments.
struct Init {
    std::string scheme = "pytorch"; // pytorch | xavier | kaiming | normal | constant | ones | zeros
    std::vector<double> args;
};

struct Node {
    Op op = Op::Input;
    DType type = DType::Real;
    std::vector<ValueId> in;
    Shape shape;
    std::string name;   // Input, Param: the tensor's name
    int32_t fn = -1;    // Act, ActGrad: index into Graph::activations
    bool byOutput = false; // ActGrad: operand 0 is f's output y (else its input x)
    double eps = 0;     // BatchNorm
    SourceLoc loc;
};

inline Node makeNode(Op op, SourceLoc loc, std::vector<ValueId> in = {}) {
    Node n;
    n.op = op, n.loc = std::move(loc), n.in = std::move(in);
    return n;
}

/// A parameter tensor: its node, how to initialise it, and the layer it belongs to.
struct ParamInfo {
    ValueId node;
    std::string name;    // PyTorch's name: layers.0.weight
    Init init;
    int64_t fanIn = 0, fanOut = 0;
};

/// A tensor a model keeps but does not train (PyTorch's buffers): batchnorm's running mean
/// and variance. Buffers follow the parameters in the flat state array; training updates them
/// from the batch statistics, and evaluation mode normalises with them.
struct BufferInfo {
    std::string name;     // layers.1.running_mean
    std::string layer;    // layers.1
    int64_t size = 0;
    double initial = 0;   // 0 for a mean, 1 for a variance
    double momentum = 0.1;
};

/// One row of `gradc check`: a module in PyTorch's sense.
struct LayerInfo {
    std::string name;  // layers.0, h, ...
    std::string what;  // "linear 784 -> 512", "sigmoid", ...
    Shape in, out;
    SourceLoc loc;
    ValueId value = 0; // the module's output
};

/// What a graph output is. Logits and Loss are the model's results; Preact (the input of
/// a hidden activation layer, for activation statistics), NormInput (the input of a
/// batchnorm, for its running statistics; training mode) and LayerOutput (a module's output,
/// when asked for) are values the forward pass keeps; Grad is the loss's gradient with
/// respect to a parameter (or the input x), added by autodiff.
enum class OutputRole : uint8_t { Logits, Loss, Preact, NormInput, LayerOutput, Grad };

/// A graph output: its role, the layer or tensor it belongs to ("" for logits and loss) and
/// its value.
struct Output {
    OutputRole role;
    std::string name;
    ValueId value;
};

/// Whether the forward pass keeps outputs of this role in the `acts` array.
inline bool isKeptActivation(OutputRole r) {
    return r == OutputRole::Preact || r == OutputRole::NormInput || r == OutputRole::LayerOutput;
}

/// The printed form of an output: "logits", "loss", "preact:NAME", "bnin:LAYER",
/// "layer:NAME", "grad:NAME" (`gradc dump` and the keys of named results).
std::string outputLabel(const Output& o);

class Graph {
public:
    std::string model;
    int64_t batch = 0;
    std::vector<Node> nodes;
    std::vector<Activation> activations;
    std::vector<ParamInfo> params;
    std::vector<BufferInfo> buffers;
    std::vector<LayerInfo> layers;
    bool eval = false; ///< evaluation mode: batchnorm uses the running statistics
    /// Logits, Loss, then a Preact for each hidden activation layer, a NormInput for each
    /// batchnorm (training mode) and a LayerOutput for every module but the last (when asked
    /// for); the differentiated graph adds a Grad for each parameter.
    std::vector<Output> outputs;
    std::string lossKind;

    /// Appends a node after checking its operands with the op's shape rule. A mismatch is
    /// the user's (a UserError at `loc`).
    ValueId add(Node n);
    const Node& operator[](ValueId v) const { return nodes[v]; }

    /// The output of `role` (and `name`, for the roles that have one); internal error if absent.
    ValueId output(OutputRole role, const std::string& name = "") const;
    int64_t parameterCount() const;
    int64_t bufferCount() const;
};

/// Stable text form: `gradc dump --emit=graph` and the golden tests.
std::string printGraph(const Graph& g);

/// Checks every structural invariant; returns a description of the first broken one ("" if
/// none). Run after every stage in debug builds and by tests.
std::string verify(const Graph& g);

/// Hard limits that keep a model in memory: no tensor over 2^31 elements.
constexpr int64_t kMaxTensorElements = int64_t(1) << 31;

} // namespace gradc
