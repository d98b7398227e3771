// Backend.h — the backend interface: a forward graph compiled into an Executable with three
// entry points (forward, backward, the optimiser's update) and the Layout of their buffers.
//
// Two backends implement it: "jit" (compiler/backend/cpu: LLVM code, JIT-compiled) and
// "interp" (compiler/backend/interp: the reference interpreter on the same flat buffers).
// compile() is the one place a backend is chosen by name. The element type is the
// executable's (float or double); the interpreter converts from and to it.
#pragma once

#include "Graph.h"
#include "Layout.h"

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

namespace gradc {

/// The buffers one call of an entry point reads and writes, each as the layout places it
/// (see Layout.h for the arrays). forward writes logits, loss and acts; backward writes
/// loss, grads and acts (training mode only). T is the executable's element type.
template <typename T> struct EntryArgs {
    const T* state = nullptr;     ///< Array::State: parameters, then running statistics
    const T* x = nullptr;         ///< Array::X
    const void* target = nullptr; ///< Array::Target: int32 class labels, or T values
    T* logits = nullptr;          ///< Array::Logits (forward)
    T* loss = nullptr;            ///< Array::Loss: one element
    T* grads = nullptr;           ///< Array::Grads (backward)
    T* acts = nullptr;            ///< Array::Acts
};

/// The optimiser step's buffers over the flat parameters: params -= step(grads, m, v).
template <typename T> struct UpdateArgs {
    T* params = nullptr;      ///< the parameter part of Array::State
    const T* grads = nullptr; ///< Array::Grads
    T* m = nullptr;           ///< Array::Moment1 (null for plain SGD)
    T* v = nullptr;           ///< Array::Moment2 (Adam only)
};

struct BackendOptions {
    std::string backend = "jit"; ///< jit | interp
    bool f64 = false;            ///< element type: float (default) or double
    bool cache = true;           ///< jit: use the on-disk cache of compiled objects
    std::string cacheDir;        ///< jit: default defaultCacheDir()
    bool profile = false;        ///< jit: count each kernel's cycles
    int threads = 0;             ///< jit: threads its matrix products use (0: all cores)
    std::string isa;             ///< jit: instruction set (CodegenOptions::isa; "": GRADC_ISA, else native)
};

/// A compiled model. Not safe to call from two threads at once (it may own a workspace);
/// update() over disjoint ranges is.
class Executable {
public:
    virtual ~Executable() = default;
    const Layout& layout() const { return layout_; }
    bool f64() const { return f64_; }

    template <typename T> void forward(const EntryArgs<T>& a) { run(false, erase(a)); }
    template <typename T> void backward(const EntryArgs<T>& a) { run(true, erase(a)); }
    /// One optimiser step over the parameters [begin, end); `hyper` as hyperParameters()
    /// gives it (runtime/Optimizer.h).
    template <typename T> void update(const UpdateArgs<T>& a, const double* hyper, int64_t begin, int64_t end) {
        checkType<T>();
        // gradc_update counts end - begin as unsigned: a reversed range would run off the arrays.
        internal_assert(0 <= begin && begin <= end && end <= layout_.parameterCount(), "update range outside the parameters");
        update(RawUpdate{a.params, a.grads, a.m, a.v}, hyper, begin, end);
    }

    /// The backend and what compiling took: "jit f32, compiled in 12.3 ms", "interp".
    virtual std::string describe() const = 0;

protected:
    Executable(Layout layout, bool f64) : layout_(std::move(layout)), f64_(f64) {}
    struct RawArgs {
        const void* state;
        const void* x;
        const void* target;
        void *logits, *loss, *grads, *acts;
    };
    struct RawUpdate {
        void* params;
        const void* grads;
        void *m, *v;
    };
    virtual void run(bool backward, const RawArgs& a) = 0;
    virtual void update(const RawUpdate& a, const double* hyper, int64_t begin, int64_t end) = 0;

private:
    Layout layout_;
    bool f64_;
    template <typename T> void checkType() const {
        static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
        internal_assert((std::is_same_v<T, double> == f64_), "entry point called with the wrong element type");
    }
    template <typename T> RawArgs erase(const EntryArgs<T>& a) const {
        checkType<T>();
        return {a.state, a.x, a.target, a.logits, a.loss, a.grads, a.acts};
    }
};

/// Compiles `forward` (a training- or evaluation-mode forward graph) with the backend
/// `options.backend`. Throws UserError for an unknown backend or when code generation fails.
std::unique_ptr<Executable> compile(const Graph& forward, const BackendOptions& options);

/// The two implementations (compile() chooses between them).
std::unique_ptr<Executable> compileCpu(const Graph& forward, const BackendOptions& options);
std::unique_ptr<Executable> compileInterp(const Graph& forward, const BackendOptions& options);

} // namespace gradc
