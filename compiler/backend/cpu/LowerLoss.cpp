// LowerLoss.cpp — the loss kernels, each the loss (a mean over the batch) and, in the
// backward program, its gradient in one pass: softmax cross-entropy over int32 labels
// (stable: the row's maximum is subtracted before exp; a label outside [0, C) makes the
// row NaN without reading out of bounds), binary cross-entropy with logits (stable:
// max(z, 0) - z t + log1p(exp(-|z|))) and mean squared error.
#include "Lowering.h"

#include <cmath>

namespace gradc {

void Lowering::softmaxCrossEntropy(const Kernel& k) {
    llvm::Value* z = base(k.in[0]);
    llvm::Value* labels = base(k.in[1]);
    llvm::Value* lossOut = base(k.out[0]);
    llvm::Value* grad = base(k.out[1]);
    llvm::Value* total = variable(T_, fp(0));
    const double invB = 1.0 / double(k.rows);
    loop(k.rows, "r", [&](llvm::Value* r) {
        llvm::Value* row = b_.CreateMul(r, i64(k.cols));
        llvm::Value* mx = variable(T_, load(z, row));
        loop(k.cols, "c", [&](llvm::Value* c) {
            llvm::Value* v = load(z, b_.CreateAdd(row, c));
            b_.CreateStore(intrinsic(llvm::Intrinsic::maxnum, {b_.CreateLoad(T_, mx), v}), mx);
        });
        llvm::Value* m = b_.CreateLoad(T_, mx);
        llvm::Value* sum = variable(T_, fp(0));
        loop(k.cols, "c", [&](llvm::Value* c) {
            llvm::Value* e = exp(b_.CreateFSub(load(z, b_.CreateAdd(row, c)), m));
            b_.CreateStore(b_.CreateFAdd(b_.CreateLoad(T_, sum), e), sum);
        });
        llvm::Value* s = b_.CreateLoad(T_, sum);
        // A label outside [0, C) reads nothing and makes this row's loss NaN.
        llvm::Value* label = b_.CreateSExt(b_.CreateLoad(b_.getInt32Ty(), b_.CreateGEP(b_.getInt32Ty(), labels, r)),
                                           b_.getInt64Ty());
        llvm::Value* valid = b_.CreateICmpULT(label, i64(k.cols));
        llvm::Value* safe = b_.CreateSelect(valid, label, i64(0));
        llvm::Value* zl = b_.CreateSelect(valid, load(z, b_.CreateAdd(row, safe)), fp(std::nan("")));
        llvm::Value* rowLoss = b_.CreateFSub(b_.CreateFAdd(m, intrinsic(llvm::Intrinsic::log, {s})), zl);
        b_.CreateStore(b_.CreateFAdd(b_.CreateLoad(T_, total), rowLoss), total);
        if (grad) {
            llvm::Value* inv = b_.CreateFDiv(fp(1), s);
            loop(k.cols, "c", [&](llvm::Value* c) {
                llvm::Value* idx = b_.CreateAdd(row, c);
                llvm::Value* p = b_.CreateFMul(exp(b_.CreateFSub(load(z, idx), m)), inv);
                llvm::Value* onehot = b_.CreateUIToFP(b_.CreateICmpEQ(c, label), T_);
                llvm::Value* g = b_.CreateFMul(b_.CreateFSub(p, onehot), fp(invB));
                store(b_.CreateSelect(valid, g, fp(std::nan(""))), grad, idx);
            });
        }
    });
    if (lossOut) store(b_.CreateFMul(b_.CreateLoad(T_, total), fp(invB)), lossOut, i64(0));
}

void Lowering::pairwiseLoss(const Kernel& k) {
    const bool bce = k.kind == Kernel::Kind::BCEWithLogits;
    llvm::Value* pred = base(k.in[0]);
    llvm::Value* target = base(k.in[1]);
    llvm::Value* lossOut = base(k.out[0]);
    llvm::Value* grad = base(k.out[1]);
    const int64_t n = k.rows * k.cols;
    const double invN = 1.0 / double(n);
    llvm::Value* total = variable(T_, fp(0));
    loop(n, "i", [&](llvm::Value* i) {
        llvm::Value* z = load(pred, i);
        llvm::Value* t = load(target, i);
        llvm::Value *l, *g;
        if (bce) { // max(z,0) - z t + log1p(exp(-|z|)); d/dz = sigmoid(z) - t
            llvm::Value* e = exp(b_.CreateFNeg(intrinsic(llvm::Intrinsic::fabs, {z})));
            l = b_.CreateFAdd(b_.CreateFSub(intrinsic(llvm::Intrinsic::maxnum, {z, fp(0)}), b_.CreateFMul(z, t)),
                              libm("log1p", e));
            g = b_.CreateFMul(b_.CreateFSub(sigmoid(z), t), fp(invN));
        } else { // (p - t)^2; d/dp = 2 (p - t)
            llvm::Value* d = b_.CreateFSub(z, t);
            l = b_.CreateFMul(d, d);
            g = b_.CreateFMul(d, fp(2 * invN));
        }
        b_.CreateStore(b_.CreateFAdd(b_.CreateLoad(T_, total), l), total);
        if (grad) store(g, grad, i);
    });
    if (lossOut) store(b_.CreateFMul(b_.CreateLoad(T_, total), fp(invN)), lossOut, i64(0));
}

} // namespace gradc
