// InterpBackend.cpp — the "interp" backend: the reference interpreter behind the Executable
// interface, reading and writing the same flat buffers as compiled code (converted from and
// to the element type), so the runtime has one path for both backends.
#include "Autodiff.h"
#include "Backend.h"
#include "Interpreter.h"
#include "ReferenceUpdate.h"

namespace gradc {
namespace {

class InterpExecutable final : public Executable {
public:
    InterpExecutable(const Graph& forward, bool f64)
        : Executable(computeLayout(forward), f64), forward_(forward) {
        if (!forward.eval) grad_ = differentiate(forward, {.gradNorm = forward.gradNorm});
    }

    std::string describe() const override { return "interp"; }

private:
    Graph forward_, grad_;

    void run(bool backward, const RawArgs& a) override {
        if (f64()) call<double>(backward, a);
        else call<float>(backward, a);
    }

    template <typename T> void call(bool backward, const RawArgs& a) {
        internal_assert(!backward || !forward_.eval, "evaluation mode has no backward pass");
        const Layout& l = layout();
        auto read = [](const auto* p, const LayoutEntry& e) {
            Tensor t{e.shape, std::vector<double>(size_t(e.elements()))};
            for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = double(p[size_t(e.offset) + i]);
            return t;
        };
        Bindings b;
        for (auto& e : l.entries) {
            const T* state = static_cast<const T*>(a.state);
            switch (e.role) {
            case Role::Parameter:
            case Role::RunningStat: b[e.name] = read(state, e); break;
            case Role::Input: b[e.name] = read(static_cast<const T*>(a.x), e); break;
            case Role::Target:
                b[e.name] = e.type == DType::Index ? read(static_cast<const int32_t*>(a.target), e)
                                                   : read(static_cast<const T*>(a.target), e);
                break;
            default: break;
            }
        }
        const Graph& g = backward ? grad_ : forward_;
        std::vector<Tensor> val = interpret(g, b);
        auto write = [](T* p, const LayoutEntry& e, const Tensor& t) {
            if (!p) return;
            for (size_t i = 0; i < t.data.size(); ++i) p[size_t(e.offset) + i] = T(t.data[i]);
        };
        for (auto& o : g.outputs) {
            const LayoutEntry* e = l.find(roleOf(o.role), o.name);
            if (!e) continue; // the input's gradient
            const Tensor& t = val[o.value];
            switch (e->array) {
            case Array::Logits: if (!backward) write(static_cast<T*>(a.logits), *e, t); break;
            case Array::Loss: write(static_cast<T*>(a.loss), *e, t); break;
            case Array::Grads: write(static_cast<T*>(a.grads), *e, t); break;
            case Array::Acts: write(static_cast<T*>(a.acts), *e, t); break;
            default: break;
            }
        }
        // The batch statistics a training-mode batchnorm's kernel leaves in acts (the
        // interpreter's batchnorm computes them the same way, per channel j over the M values
        // of the batch and the positions: x[B,N,S...]).
        for (const LayoutEntry* e : l.all(Role::NormMean)) {
            const Tensor& x = val[e->value];
            T* mean = static_cast<T*>(a.acts) + e->offset;
            T* var = static_cast<T*>(a.acts) + l.at(Role::NormVar, e->name).offset;
            for (int64_t j = 0; j < x.shape[1]; ++j) {
                const ChannelMoments m = channelMoments(x, j);
                mean[j] = T(m.mean), var[j] = T(m.sumSq / double(m.count - 1)); // unbiased, as PyTorch's running_var
            }
        }
    }

    void update(const RawUpdate& a, const double* hyper, int64_t begin, int64_t end) override {
        if (f64())
            referenceUpdate(hyper, static_cast<double*>(a.params), static_cast<const double*>(a.grads),
                            static_cast<double*>(a.m), static_cast<double*>(a.v), begin, end);
        else
            referenceUpdate(hyper, static_cast<float*>(a.params), static_cast<const float*>(a.grads),
                            static_cast<float*>(a.m), static_cast<float*>(a.v), begin, end);
    }
};

} // namespace

std::unique_ptr<Executable> compileInterp(const Graph& forward, const BackendOptions& o) {
    return std::make_unique<InterpExecutable>(forward, o.f64);
}

} // namespace gradc
