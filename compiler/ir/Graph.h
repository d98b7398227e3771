// Graph.h — the tensor IR: a static-shape dataflow graph of one model at one batch size.
//
// The Graph owns its nodes in a vector; a node is its one output value, referred to by
// ValueId (its index). Nodes are appended in topological order: a node's inputs always have
// smaller ids. Tensors are real-valued (the element type is chosen by the backend) except
// class labels, which are indices. Shapes are fully static: the batch size is part of the
// graph. What each op computes is written once, in Ops.def, with the attributes it carries
// (typed fields of `Attrs`: a tensor's name, an activation index, eps, an element function)
// and its traits. Printer, verifier, CSE key and autodiff's attribute copy walk an op's
// attributes through the table (forEachAttr), never by hand. Element-wise computation is one
// op, `map`: a scalar expression (scalar::Expr in Arg(i) leaves) over its operands, which
// broadcast as numpy's (right-aligned; each dimension the result's size or 1: [N] against
// [B,N] reads operand[n] at [b,n], a conv bias [O,1,1] against [B,O,H,W] reads [o]);
// activations, their gradients, add, bias add, mul and evaluation-mode batchnorm are maps
// built by the functions at the end of this file. Images are NCHW, as PyTorch's.
#pragma once

#include "Activations.h"
#include "Cells.h"
#include "Source.h"

#include <cstdint>
#include <string>
#include <vector>

namespace gradc {

enum class Op : uint8_t {
#define GRADC_OP(name, spelling, arity, traits, attrs, shape, grad) name,
#include "Ops.def"
};

/// What kind of computation an op is (Ops.def's traits column): passes ask the table, not
/// lists of ops.
namespace trait {
enum : uint32_t {
    Leaf = 1,          ///< no operands: a tensor of the entry point or a constant
    ElementWise = 2,   ///< result[i] depends on operand elements at i only (fusible)
    MatMul = 4,        ///< a matrix product (one per fused kernel)
    Reduction = 8,     ///< sums over a dimension
    Normalisation = 16,
    Loss = 32,         ///< a scalar loss
    LossGrad = 64,     ///< a loss's gradient for d(loss) = 1
    Spatial = 128,     ///< a convolution or pooling over windows of [B,C,H,W] (or a gradient)
    Recurrent = 256,   ///< reads or writes a sequence [B,T,...] by step: the scan loops and their
                       ///< siblings, last_step and its gradient (copies, not loops)
};
} // namespace trait

/// The attribute kinds (Ops.def's GRADC_ATTR rows).
enum class AttrKind : uint8_t {
#define GRADC_ATTR(kind, field, type, init) kind,
#include "Ops.def"
};

/// Attribute sets, as Ops.def's attributes column writes them: attr::Fn | attr::Expr.
namespace attr {
enum : uint32_t {
#define GRADC_ATTR(kind, field, type, init) kind = 1u << unsigned(AttrKind::kind),
#include "Ops.def"
};
} // namespace attr

struct OpDesc {
    const char* spelling;
    int arity;       ///< -1: variadic (at least one operand)
    uint32_t traits; ///< trait:: bits
    uint32_t attrs;  ///< attr:: bits: the attributes the op carries
    bool has(uint32_t t) const { return (traits & t) != 0; }
};
const OpDesc& describe(Op op);

/// The spelling of an attribute kind ("eps").
const char* attrName(AttrKind k);

using ValueId = uint32_t;
using Shape = std::vector<int64_t>;
enum class DType : uint8_t { Real, Index };

std::string shapeString(const Shape& s); // "[256,784]"
/// Whether a parameter of this shape is a weight (rank 2 or more: a dense layer's [out, in], a
/// conv's [out, in, kh, kw]), not a bias or a normalisation's scale or shift (rank 1). Weights are what the vanishing
/// factor compares, the figures draw and the init schemes scale.
inline bool isWeight(const Shape& s) { return s.size() >= 2; }
int64_t elementCount(const Shape& s);
/// The values of one example of a [B, ...] tensor (the batch is dimension 0): 784 for x of
/// [B,784], [B,28,28] or [B,1,28,28].
inline int64_t perExample(const Shape& s) { return s.empty() || s[0] == 0 ? 0 : elementCount(s) / s[0]; }
/// True if `s` is a suffix of `of` ([N] of [B,N]; equal shapes too).
bool isSuffix(const Shape& s, const Shape& of);

/// How a parameter is initialised: a scheme of the model language and its arguments.
struct Init {
    // pytorch | xavier | kaiming | normal | constant | ones | zeros; identity and orthogonal
    // for the recurrent weights of rnn, lstm and gru (args: the gain)
    std::string scheme = "pytorch";
    std::vector<double> args;
};

/// A sliding window over the last two dimensions of [B,C,H,W]: its size (a convolution's
/// kernel, a pooling window), stride and zero (or -inf) padding on each side. Printed
/// `3x3/s1x1/p1x1`.
struct Window {
    int32_t kh = 0, kw = 0, sh = 0, sw = 0, ph = 0, pw = 0;
    bool operator==(const Window&) const = default;
    /// The output size along one dimension of `in` values: (in + 2 pad - k) / stride + 1,
    /// floored; 0 when the window does not fit in the padded input.
    static int64_t outSize(int64_t in, int32_t k, int32_t stride, int32_t pad) {
        const int64_t span = in + 2 * int64_t(pad) - k;
        return span < 0 ? 0 : span / stride + 1;
    }
};
std::string printWindow(const Window& w); // "3x3/s1x1/p1x1"

/// Every attribute a node may carry, one field each (Ops.def's GRADC_ATTR rows); an op uses
/// the ones its row declares and leaves the others at their defaults.
struct Attrs {
#define GRADC_ATTR(kind, field, type, init) type field = init;
#include "Ops.def"
};

struct Node : Attrs {
    Op op = Op::Input;
    DType type = DType::Real;
    std::vector<ValueId> in;
    Shape shape;
    SourceLoc loc;
};

/// Calls f(AttrKind, const T& value) for each attribute `op` declares, in Ops.def's order.
template <typename F> void forEachAttr(Op op, const Attrs& a, F&& f) {
    [[maybe_unused]] const uint32_t declared = describe(op).attrs;
#define GRADC_ATTR(kind, field, type, init) \
    if (declared & attr::kind) f(AttrKind::kind, a.field);
#include "Ops.def"
}

/// The attributes `n` declares as text, "fn0, a0 + a1" (empty if none), and the CSE key's
/// parts: equality and hash over the attributes of the op (scalar expressions compare by
/// identity, as they are hash-consed).
std::string printAttrs(const Node& n);
std::string printAttrs(Op op, const Attrs& a);
bool sameAttrs(const Node& a, const Node& b);
size_t hashAttrs(const Node& n);
/// Copies to `to` each attribute that both its op and `from`'s op declare.
void copyAttrs(const Node& from, Node& to);

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
/// respect to a parameter (or the input x), added by autodiff; ThroughTime is a recurrent
/// layer's ‖dL/dh_t‖ for every step t ([T], named after the layer), added by autodiff too;
/// GradNormSq is the sum of the squares of every parameter's gradient ([1], unnamed), added by
/// autodiff for gradient-norm clipping (AutodiffOptions::gradNorm).
enum class OutputRole : uint8_t { Logits, Loss, Preact, NormInput, LayerOutput, Grad, ThroughTime, GradNormSq };

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
/// "layer:NAME", "grad:NAME", "through:LAYER", "grad_norm_sq" (`gradc dump` and the keys of
/// named results).
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
    bool sequence = false; ///< the input is a sequence [B,T,N] (`input T steps N`)
    /// Training with gradient-norm clipping: the backends differentiate with
    /// AutodiffOptions::gradNorm, and the layout has a GradNormSq entry in Acts.
    bool gradNorm = false;
    /// Data-parallel training on this many processes (SyncBatchNorm): a training-mode
    /// batchnorm's per-channel sums are summed over them (gradc_allreduce_sum) so that its
    /// statistics are the global batch's, `batch` times syncWorld examples. 1: one process.
    int syncWorld = 1;
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

/// Builds `map[expr]` over `ins` (see Ops.def): operands the expression does not use are
/// dropped and its Arg leaves renumbered. Shape errors are the user's, at `loc`.
ValueId addMap(Graph& g, scalar::Expr expr, std::vector<ValueId> ins, SourceLoc loc, int32_t fn = -1);
/// The activation `fn` (an index into g.activations) applied to x: a map that keeps `fn`.
ValueId addActivation(Graph& g, int32_t fn, ValueId x, SourceLoc loc);
/// a + b: b broadcast against a (a bias: [N] against [B,N], [O,1,1] against [B,O,H,W]).
ValueId addBiasAdd(Graph& g, ValueId a, ValueId b, SourceLoc loc);
/// a + b and a * b element-wise, of equal shapes ("add: operands have different shapes").
ValueId addAdd(Graph& g, ValueId a, ValueId b, SourceLoc loc);
ValueId addMul(Graph& g, ValueId a, ValueId b, SourceLoc loc);
/// Evaluation-mode BatchNorm1d of x[B,N] with γ, β, running mean μ and variance v (each [N],
/// in that order in `ins`): (x - μ) γ / sqrt(v + eps) + β, per feature. On x[B,C,H,W]
/// (BatchNorm2d) the four are [C,1,1]: per channel.
ValueId addBatchNormEval(Graph& g, const std::vector<ValueId>& ins, double eps, SourceLoc loc);
/// A map that applies an activation (the node a layer's activation builds).
inline bool isActivation(const Node& n) { return n.op == Op::Map && n.fn >= 0; }

/// Stable text form: `gradc dump --emit=graph` and the golden tests.
std::string printGraph(const Graph& g);
/// The graph for Graphviz (`dot -Tsvg`), as torchviz draws PyTorch's: a node per value, its op
/// (with its attributes) and shape; parameters blue, inputs grey, outputs green; an edge from
/// each operand to its user.
std::string dotGraph(const Graph& g);

/// Checks every structural invariant; returns a description of the first broken one ("" if
/// none). Run after every stage in debug builds and by tests.
std::string verify(const Graph& g);

/// Hard limits that keep a model in memory: no tensor over 2^31 elements.
constexpr int64_t kMaxTensorElements = int64_t(1) << 31;

} // namespace gradc
