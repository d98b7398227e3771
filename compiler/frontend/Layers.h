// Layers.h — the layer table: every layer of the model language, declared once with its
// syntax (operands, whether an activation may follow, options and their defaults) and the
// graph it builds. The parser reads any layer statement from its entry, the AST printer
// prints it from its entry, and Sema calls its build function. A new layer is one entry in
// Layers.cpp (and, if the graph has no op for it yet, the ops it needs).
#pragma once

#include "AST.h"
#include "Graph.h"

#include <string>
#include <vector>

namespace gradc {

class LayerBuilder;

struct LayerOptionDef {
    enum class Kind { Number, Bool, Init, Size }; ///< Size: `S` or `SHxSW` (stride=, padding=)
    const char* name;
    Kind kind;
    double initial = 0; ///< Number, Bool (0 or 1): the value when the option is not given
};

struct LayerDef {
    enum class Operands { None, Width, Names };
    const char* keyword;
    Operands operands = Operands::None;
    const char* operandWhat = "";  ///< Width: "the layer width"; Names: the usage shown on a miscount
    int minNames = 0, maxNames = 0; ///< Names: how many value names it takes
    bool activation = false;        ///< an activation may follow the operands (`dense 512 relu`)
    std::vector<LayerOptionDef> options;
    /// Builds the layer's nodes on `x` (the value it consumes) and returns its output. Called
    /// after the operands were checked by the parser; the rest of the checking is its own.
    ValueId (*build)(LayerBuilder& b, const Stmt& s, ValueId x);
    /// A window size `K` or `KHxKW` follows the operands (`conv 16 3x3`, `maxpool 2`): what
    /// it is, for diagnostics ("the kernel size"); null if the layer takes none.
    const char* window = nullptr;
};

/// The entry for `keyword`, or null if no layer is spelt so.
const LayerDef* findLayer(const std::string& keyword);
/// The entry a bare activation statement (`relu`, `leaky_relu(0.1)`) uses.
const LayerDef& activationLayer();
/// Every entry, in table order.
const std::vector<LayerDef>& layerTable();

/// An option's value in `s`: as given, or its default.
double optionValue(const Stmt& s, const char* name);
/// A size option's value in `s` (stride=, padding=); `given` false if the statement has none.
Size2 sizeOption(const Stmt& s, const char* name);

/// What a layer's build function may do to the graph under construction. Sema implements it
/// (it owns names, scopes and the numbering of modules).
class LayerBuilder {
public:
    virtual ~LayerBuilder() = default;
    virtual Graph& graph() = 0;
    /// Evaluation mode: normalisation uses its running statistics.
    virtual bool evalMode() const = 0;
    /// The module's name: "layers.K" (the next index) for an unnamed module, NAME plus the
    /// repeat iterations for a named one.
    virtual std::string moduleName(const Stmt& s) = 0;
    /// The name of a second module made by the same statement (the activation after `dense`):
    /// the next index if unnamed, else the module's own name.
    virtual std::string extraModuleName(const Stmt& s, const std::string& module) = 0;
    /// The value a name refers to in the current scope.
    virtual ValueId lookup(const std::string& name, const SourceLoc& loc) = 0;
    virtual ValueId param(const std::string& name, Shape shape, Init init, int64_t fanIn,
                          int64_t fanOut, const SourceLoc& loc) = 0;
    /// A running statistic (PyTorch's buffer) of `module`; in evaluation mode it is returned
    /// as a graph value (an input of the evaluation-mode op), otherwise nothing is returned.
    virtual std::optional<ValueId> buffer(const std::string& module, const char* field, int64_t size,
                                          double initial, double momentum, const SourceLoc& loc) = 0;
    /// Keeps `x` (a normalisation layer's input) as an output, for its running statistics.
    virtual void keepNormInput(const std::string& module, ValueId x) = 0;
    /// `f(x)` as its own module.
    virtual ValueId applyActivation(const ActRef& ref, ValueId x, const std::string& module) = 0;
    /// Records a module for `gradc check` and the statistics.
    void record(const std::string& module, std::string what, ValueId in, ValueId out, const SourceLoc& loc);
    /// The init scheme a layer's weight uses (`init=` or PyTorch's default). `recurrent`: the
    /// layer is rnn, lstm or gru, whose recurrent weights may also take identity(GAIN) and
    /// orthogonal(GAIN) (GAIN 1 when not written; the Init carries it).
    static Init initOf(const Stmt& s, bool recurrent = false);
};

} // namespace gradc
