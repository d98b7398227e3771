// CpuBackend.cpp — the "jit" backend: LLVM-compiled entry points behind the Executable
// interface. The one place in the runtime's path that knows the order of the entry points'
// arguments (EntryAbi.h defines it).
#include "CpuBackend.h"
#include "Jit.h"

#include <fmt/format.h>

#include <cstdlib>
#include <new>

namespace gradc {
namespace {

class CpuExecutable final : public Executable {
public:
    explicit CpuExecutable(CompiledModel m) : Executable(m.layout, m.f64), m_(std::move(m)) {
        // The workspace is 64-byte aligned, as the memory plan assumes.
        ws_.reset(std::aligned_alloc(64, size_t((m_.workspaceBytes + 63) / 64 * 64 + 64)));
        if (!ws_) throw std::bad_alloc();
    }

    /// "jit f32, compiled in 80.1 ms"; code for another instruction set than the host's
    /// whole names it ("jit f32 avx2, ...").
    std::string describe() const override {
        const bool whole = Jit::hostFeatures(m_.isa) == Jit::hostFeatures("native");
        return fmt::format("jit {}{}, {} in {:.1f} ms", m_.f64 ? "f64" : "f32", whole ? "" : " " + m_.isa,
                           m_.cacheHit ? "loaded from the cache" : "compiled", m_.compileMs());
    }

private:
    CompiledModel m_;
    std::unique_ptr<void, decltype(&std::free)> ws_{nullptr, &std::free};

    void run(bool backward, const RawArgs& a) override {
        if (backward) m_.backward(a.state, a.x, a.target, a.loss, a.grads, a.acts, ws_.get());
        else m_.forward(a.state, a.x, a.target, a.logits, a.loss, a.acts, ws_.get());
    }
    void update(const RawUpdate& a, const double* hyper, int64_t begin, int64_t end) override {
        m_.update(a.params, a.grads, a.m, a.v, hyper, begin, end);
    }
};

} // namespace

std::unique_ptr<Executable> cpuExecutable(CompiledModel model) {
    return std::make_unique<CpuExecutable>(std::move(model));
}

std::unique_ptr<Executable> compileCpu(const Graph& forward, const BackendOptions& o) {
    CodegenOptions co;
    co.f64 = o.f64, co.cache = o.cache, co.cacheDir = o.cacheDir, co.profile = o.profile, co.threads = o.threads;
    co.isa = o.isa;
    return cpuExecutable(compileModel(forward, co));
}

} // namespace gradc
