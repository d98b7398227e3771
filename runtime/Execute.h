// Execute.h — the runtime's one way of calling an Executable (either backend, float or
// double) on the flat buffers its Layout describes: Program. Engine (training, evaluation)
// runs its programs through it; so do run(), which takes and gives named tensors the way the
// interpreter does (the backends are interchangeable, and comparable, for the caller), and
// the jobs that run one step (grads, bench).
#pragma once

#include "Backend.h"
#include "Codegen.h"
#include "Interpreter.h"

#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace gradc {

/// An array of an executable's element type: float or double, chosen when it is made.
class Values {
public:
    Values() = default;
    Values(bool f64, size_t n) : f64_(f64) { assign(n); }
    bool f64() const { return f64_; }
    size_t size() const { return f64_ ? d_.size() : f_.size(); }
    bool empty() const { return size() == 0; }
    /// n zeros (of the element type).
    void assign(size_t n) { f64_ ? d_.assign(n, 0.0) : f_.assign(n, 0.0f); }
    /// The elements; T must be the element type.
    template <typename T> T* data() { return const_cast<T*>(std::as_const(*this).data<T>()); }
    template <typename T> const T* data() const {
        static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
        internal_assert((std::is_same_v<T, double> == f64_), "an array read with the wrong element type");
        if constexpr (std::is_same_v<T, double>) return d_.data();
        else return f_.data();
    }
    /// Every element, as double.
    std::vector<double> values() const { return f64_ ? d_ : std::vector<double>(f_.begin(), f_.end()); }
    friend bool operator==(const Values&, const Values&) = default;

private:
    bool f64_ = false;
    std::vector<float> f_;
    std::vector<double> d_;
};

/// f(T{}) with T the element type: double when `f64`, float otherwise.
template <typename F> decltype(auto) typed(bool f64, F&& f) {
    if (f64) return f(double{});
    return f(float{});
}

/// Buffer `e` of an array as a tensor.
template <typename T> Tensor readBuffer(const T* array, const LayoutEntry& e) {
    Tensor t{e.shape, std::vector<double>(size_t(e.elements()))};
    for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = double(array[size_t(e.offset) + i]);
    return t;
}

/// Stores `values` (as many as e's shape holds) into buffer `e` of an array.
template <typename T> void writeBuffer(T* array, const LayoutEntry& e, const std::vector<double>& values) {
    internal_assert(int64_t(values.size()) == e.elements(), "a buffer written with the wrong size");
    for (size_t i = 0; i < values.size(); ++i) array[size_t(e.offset) + i] = T(values[i]);
}

/// Writes every Array::State buffer of `layout` into `state` from `bindings` by name:
/// parameters must be given (of their shape), running statistics default to their initial
/// values. Throws UserError for a missing or misshapen parameter.
void writeState(Values& state, const Layout& layout, const Bindings& bindings);

/// An Executable with the arrays its entry points write besides the state and the gradients
/// (the kept activations and the logits), and room for inputs in its element type. It does
/// not own the executable.
class Program {
public:
    explicit Program(Executable& exe);
    const Layout& layout() const { return exe_.layout(); }
    bool f64() const { return exe_.f64(); }
    /// The kept activations and the logits of the last call.
    const Values& acts() const { return acts_; }
    const Values& logits() const { return logits_; }

    /// Stores the inputs (x) and the target from `bindings` by name, in the element type, for
    /// run(state, grads).
    void setInputs(const Bindings& bindings);
    /// The backward entry point into `grads` when it is given, the forward one otherwise, on
    /// the stored inputs; the loss.
    double run(const Values& state, Values* grads);
    /// The same on the caller's inputs: `target` is int32 labels for cross_entropy, U values
    /// otherwise. U (the type of x, the targets and `logits`) is float or double; where it is
    /// not the element type, the values are converted on the way in and out (into `logits`
    /// when it is given, and logits() always).
    template <typename U>
    double run(const Values& state, Values* grads, const U* x, const void* target, U* logits);

    /// The results of the last call by outputLabel: "loss", "logits" (forward) or
    /// "grad:NAME" (backward, from `grads`), and the kept activations ("preact:NAME", ...).
    std::map<std::string, Tensor> outputs(const Values* grads, double loss) const;

private:
    template <typename T>
    double call(const Values& state, Values* grads, const T* x, const void* target, T* logits);

    Executable& exe_;
    Values acts_, logits_;
    Values x_, target_; // inputs in the element type: stored, or the caller's converted
    std::vector<int32_t> labels_; // stored class labels
};

/// Calls the forward entry point ("logits", "loss") or the backward one ("loss", "grad:NAME"
/// for every parameter); both also give the kept activations ("preact:NAME", ...). Results
/// are named by outputLabel. Inputs and parameters come from `bindings` by name, as for
/// `interpret` (running statistics default to their initial values), converted to the
/// executable's element type.
std::map<std::string, Tensor> run(Executable& e, const Bindings& bindings, bool backward);

/// The same for code compiled by compileModel from `forward`.
std::map<std::string, Tensor> runCompiled(const CompiledModel& model, const Graph& forward,
                                          const Bindings& bindings, bool backward);

} // namespace gradc
