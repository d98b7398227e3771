// LowerNorm.cpp — batch normalisation over the batch (training mode: the batch's own mean
// and biased variance, as PyTorch normalises) and its two gradient kernels, with respect to
// the input and to gamma. The per-column statistics live in the workspace's scratch area.
#include "Lowering.h"

namespace gradc {

/// Batch normalisation and its gradients in passes over the rows, each vectorised across
/// the columns; the per-column mean, 1/σ, Σg and Σg·x̂ live in the scratch area. Every
/// column's sums run over the rows in order.
void Lowering::batchnorm(const Kernel& k) {
    llvm::Value* x = base(k.in[0]);
    llvm::Value* out = base(k.out[0]);
    const int64_t B = k.rows, N = k.cols;
    const double invB = 1.0 / double(B);
    llvm::Value* s = scratchArea();
    llvm::Value *mean = s, *inv = at(s, i64(N)), *sg = at(s, i64(2 * N)), *sgx = at(s, i64(3 * N));
    auto columns = [&](const std::function<void(llvm::Value*)>& f) { loop(N, "c", f); };
    auto each = [&](const std::function<void(llvm::Value*, llvm::Value*, llvm::Value*)>& f) {
        loop(B, "r", [&](llvm::Value* r) {
            loop(N, "c", [&](llvm::Value* c) { f(r, c, b_.CreateAdd(b_.CreateMul(r, i64(N)), c)); });
        });
    };
    auto accumulate = [&](llvm::Value* sums, llvm::Value* c, llvm::Value* v) {
        store(b_.CreateFAdd(load(sums, c), v), sums, c);
    };
    columns([&](llvm::Value* c) { store(fp(0), mean, c), store(fp(0), inv, c); });
    each([&](llvm::Value*, llvm::Value* c, llvm::Value* i) { accumulate(mean, c, load(x, i)); });
    columns([&](llvm::Value* c) { store(b_.CreateFMul(load(mean, c), fp(invB)), mean, c); });
    each([&](llvm::Value*, llvm::Value* c, llvm::Value* i) {
        llvm::Value* d = b_.CreateFSub(load(x, i), load(mean, c));
        accumulate(inv, c, b_.CreateFMul(d, d));
    });
    // The batch statistics, when asked for: the mean and the unbiased variance.
    llvm::Value* meanOut = k.out.size() > 2 ? base(k.out[1]) : nullptr;
    llvm::Value* varOut = k.out.size() > 2 ? base(k.out[2]) : nullptr;
    columns([&](llvm::Value* c) { // the biased variance, as PyTorch normalises
        llvm::Value* var = b_.CreateFMul(load(inv, c), fp(invB));
        if (meanOut) {
            store(load(mean, c), meanOut, c);
            store(b_.CreateFDiv(load(inv, c), fp(double(B - 1))), varOut, c);
        }
        store(b_.CreateFDiv(fp(1), intrinsic(llvm::Intrinsic::sqrt, {b_.CreateFAdd(var, fp(k.eps))})), inv, c);
    });
    auto xhat = [&](llvm::Value* c, llvm::Value* i) {
        return b_.CreateFMul(b_.CreateFSub(load(x, i), load(mean, c)), load(inv, c));
    };
    if (k.kind == Kernel::Kind::BatchNorm) {
        llvm::Value *gamma = base(k.in[1]), *beta = base(k.in[2]);
        each([&](llvm::Value*, llvm::Value* c, llvm::Value* i) {
            store(b_.CreateFAdd(b_.CreateFMul(xhat(c, i), load(gamma, c)), load(beta, c)), out, i);
        });
        return;
    }
    llvm::Value* dy = base(k.in[k.kind == Kernel::Kind::BatchNormGradX ? 2 : 1]);
    columns([&](llvm::Value* c) { store(fp(0), sg, c), store(fp(0), sgx, c); });
    each([&](llvm::Value*, llvm::Value* c, llvm::Value* i) {
        llvm::Value* g = load(dy, i);
        accumulate(sg, c, g);
        accumulate(sgx, c, b_.CreateFMul(g, xhat(c, i)));
    });
    if (k.kind == Kernel::Kind::BatchNormGradGamma) {
        columns([&](llvm::Value* c) { store(load(sgx, c), out, c); });
        return;
    }
    // dx = gamma / (B sigma) (B dy - Σdy - x̂ Σ(dy x̂))
    llvm::Value* gamma = base(k.in[1]);
    each([&](llvm::Value*, llvm::Value* c, llvm::Value* i) {
        llvm::Value* scale = b_.CreateFMul(load(gamma, c), b_.CreateFMul(load(inv, c), fp(invB)));
        llvm::Value* inner = b_.CreateFSub(b_.CreateFSub(b_.CreateFMul(fp(double(B)), load(dy, i)), load(sg, c)),
                                           b_.CreateFMul(xhat(c, i), load(sgx, c)));
        store(b_.CreateFMul(scale, inner), out, i);
    });
}

} // namespace gradc
