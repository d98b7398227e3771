// LowerNorm.cpp — the normalisation kernels, by the op they compute: batch normalisation
// over the batch (training mode: the batch's own mean and biased variance, as PyTorch
// normalises) and its two gradient kernels, with respect to the input and to gamma; layer
// normalisation's x̂ over each row and its gradient. One
// lowering serves them all: the ops differ in what a group of statistics covers (a column
// over every row, a channel of [B,C,...] over the batch and the other dimensions, or one
// row) and in what they make of x̂.
#include "Lowering.h"

#include <fmt/format.h>

namespace gradc {
namespace {

/// What a normalisation op computes, for the lowering: whether each row or each column is
/// normalised, where gamma (scaling x̂ or dx; -1: none) and dy (-1: forward) are among its
/// operands, and its result.
struct NormForm {
    enum Result { Y, GradX, GradGamma };
    bool perRow;
    int gamma, dy;
    Result result;
};

NormForm formOf(Op op) {
    switch (op) {
    case Op::BatchNorm: return {false, 1, -1, NormForm::Y}; // beta follows gamma
    case Op::BatchNormGradX: return {false, 1, 2, NormForm::GradX};
    case Op::BatchNormGradGamma: return {false, -1, 1, NormForm::GradGamma};
    case Op::LayerNormNormalise: return {true, -1, -1, NormForm::Y};
    case Op::LayerNormNormaliseGrad: return {true, -1, 1, NormForm::GradX};
    default: internal_assert(false, fmt::format("op '{}' has no normalisation kernel", describe(op).spelling));
    }
    return {};
}

} // namespace

/// A normalisation and its gradients in passes over the elements of a group (the rows of a
/// column, vectorised across the columns; or a row's elements), keeping per group the mean,
/// 1/σ, Σg and Σg·x̂: per column in the scratch area, per row in registers. Every group's sums
/// run over its elements in order.
void Lowering::normalisation(const Kernel& k) {
    const NormForm f = formOf(k.op);
    llvm::Value* x = base(k.in[0]);
    llvm::Value* out = base(k.out[0]);
    // Per channel (batchnorm of [B,C,...]): the kernel's domain is [B, C, the rest], and
    // channel j's group is its B x rest values.
    const bool channels = perChannel(k.op, p_->buffers[size_t(k.in[0])].shape);
    const int64_t N = channels ? k.rows : k.cols;
    // A batchnorm of a data-parallel run (SyncBatchNorm): the group is the global batch's,
    // its sums summed over the processes (gradc_allreduce_sum) once every one has its own.
    const int world = f.perRow ? 1 : p_->syncWorld;
    const int64_t count = (f.perRow ? k.cols : channels ? k.outer * k.cols : k.rows) * world;
    auto allreduce = [&](llvm::Value* sums, int64_t n) {
        if (world == 1) return;
        auto* ptr = llvm::PointerType::get(ctx_, 0);
        llvm::FunctionCallee fn = m_.getOrInsertFunction(
            "gradc_allreduce_sum", llvm::FunctionType::get(b_.getVoidTy(), {ptr, b_.getInt64Ty(), b_.getInt32Ty()}, false));
        b_.CreateCall(fn, {sums, i64(n), b_.getInt32(f64_ ? 1 : 0)});
    };
    const double invCount = 1.0 / double(count);
    llvm::Value *mean, *inv, *sg, *sgx;
    if (f.perRow) {
        mean = variable(T_, fp(0)), inv = variable(T_, fp(0)), sg = variable(T_, fp(0)), sgx = variable(T_, fp(0));
    } else {
        llvm::Value* s = scratchArea();
        mean = s, inv = at(s, i64(N)), sg = at(s, i64(2 * N)), sgx = at(s, i64(3 * N));
    }
    // `row` is the row a per-row group normalises (null per column).
    auto body = [&](llvm::Value* row) {
        // The statistics' index of column c: c per column, 0 per row.
        auto slot = [&](llvm::Value* c) { return f.perRow ? i64(0) : c; };
        auto groups = [&](const std::function<void(llvm::Value*)>& fn) {
            if (f.perRow) fn(i64(0));
            else loop(N, "c", fn);
        };
        // f(statistics' index, column, element index) for every element of the group(s).
        auto each = [&](const std::function<void(llvm::Value*, llvm::Value*, llvm::Value*)>& fn) {
            auto columns = [&](llvm::Value* r) {
                loop(N, "c", [&](llvm::Value* c) { fn(slot(c), c, b_.CreateAdd(b_.CreateMul(r, i64(N)), c)); });
            };
            if (channels) {
                loop(k.outer, "o", [&](llvm::Value* o) {
                    loop(N, "ch", [&](llvm::Value* j) {
                        llvm::Value* first = b_.CreateMul(b_.CreateAdd(b_.CreateMul(o, i64(N)), j), i64(k.cols));
                        loop(k.cols, "s", [&](llvm::Value* e) { fn(j, j, b_.CreateAdd(first, e)); });
                    });
                });
            } else if (f.perRow) {
                columns(row);
            } else {
                loop(k.rows, "r", columns);
            }
        };
        auto accumulate = [&](llvm::Value* sums, llvm::Value* j, llvm::Value* v) {
            store(b_.CreateFAdd(load(sums, j), v), sums, j);
        };
        groups([&](llvm::Value* j) { store(fp(0), mean, j), store(fp(0), inv, j); });
        each([&](llvm::Value* j, llvm::Value*, llvm::Value* i) { accumulate(mean, j, load(x, i)); });
        allreduce(mean, N);
        groups([&](llvm::Value* j) { store(b_.CreateFMul(load(mean, j), fp(invCount)), mean, j); });
        each([&](llvm::Value* j, llvm::Value*, llvm::Value* i) {
            llvm::Value* d = b_.CreateFSub(load(x, i), load(mean, j));
            accumulate(inv, j, b_.CreateFMul(d, d));
        });
        allreduce(inv, N); // Σ (x - μ)² about the global mean: the global batch's
        // A batchnorm's statistics, when asked for: the mean and the unbiased variance.
        llvm::Value* meanOut = k.out.size() > 2 ? base(k.out[1]) : nullptr;
        llvm::Value* varOut = k.out.size() > 2 ? base(k.out[2]) : nullptr;
        groups([&](llvm::Value* j) { // the biased variance, as PyTorch normalises
            llvm::Value* var = b_.CreateFMul(load(inv, j), fp(invCount));
            if (meanOut) {
                store(load(mean, j), meanOut, j);
                store(b_.CreateFDiv(load(inv, j), fp(double(count - 1))), varOut, j);
            }
            store(b_.CreateFDiv(fp(1), intrinsic(llvm::Intrinsic::sqrt, {b_.CreateFAdd(var, fp(k.attrs.eps))})), inv, j);
        });
        auto xhat = [&](llvm::Value* j, llvm::Value* i) {
            return b_.CreateFMul(b_.CreateFSub(load(x, i), load(mean, j)), load(inv, j));
        };
        llvm::Value* gamma = f.gamma >= 0 ? base(k.in[size_t(f.gamma)]) : nullptr;
        if (f.result == NormForm::Y) {
            llvm::Value* beta = gamma ? base(k.in[size_t(f.gamma) + 1]) : nullptr;
            each([&](llvm::Value* j, llvm::Value* c, llvm::Value* i) {
                llvm::Value* y = xhat(j, i);
                if (gamma) y = b_.CreateFAdd(b_.CreateFMul(y, load(gamma, c)), load(beta, c));
                store(y, out, i);
            });
            return;
        }
        llvm::Value* dy = base(k.in[size_t(f.dy)]);
        groups([&](llvm::Value* j) { store(fp(0), sg, j), store(fp(0), sgx, j); });
        each([&](llvm::Value* j, llvm::Value*, llvm::Value* i) {
            llvm::Value* g = load(dy, i);
            accumulate(sg, j, g);
            accumulate(sgx, j, b_.CreateFMul(g, xhat(j, i)));
        });
        if (f.result == NormForm::GradGamma) { // this process's share: the gradients' sum adds the rest
            groups([&](llvm::Value* j) { store(load(sgx, j), out, j); });
            return;
        }
        allreduce(sg, 2 * N); // Σg and Σg·x̂ (adjacent in the scratch area) over the global batch
        // dx = gamma / (n sigma) (n dy - Σdy - x̂ Σ(dy x̂)), n the group's size
        each([&](llvm::Value* j, llvm::Value* c, llvm::Value* i) {
            llvm::Value* scale = b_.CreateFMul(load(inv, j), fp(invCount));
            if (gamma) scale = b_.CreateFMul(load(gamma, c), scale);
            llvm::Value* inner = b_.CreateFSub(b_.CreateFSub(b_.CreateFMul(fp(double(count)), load(dy, i)), load(sg, j)),
                                               b_.CreateFMul(xhat(j, i), load(sgx, j)));
            store(b_.CreateFMul(scale, inner), out, i);
        });
    };
    if (f.perRow) loop(k.rows, "row", body);
    else body(nullptr);
}

} // namespace gradc
