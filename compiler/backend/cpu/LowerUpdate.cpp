// LowerUpdate.cpp — the optimiser step as gradc_update (arguments: UpdateArg, EntryAbi.h):
// one pass over every parameter in [begin, end): the gradient times hyper[GradScale] (the
// clip coefficient of gradient-norm clipping, 1 without) plus weight decay, then SGD, SGD with
// momentum (and Nesterov) or Adam, chosen at run time by hyper[Method]. The formulas are
// torch.optim's; the caller passes dampening 0 on the first momentum step, where PyTorch
// starts the buffer at the gradient. runtime/Optimizer.h has the same step in plain C++,
// the reference it is tested against.
#include "Lowering.h"

namespace gradc {

void Lowering::update() {
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* i64t = b_.getInt64Ty();
    // In UpdateArg order: five pointers, none aliasing another, then begin and end.
    auto* fnTy = llvm::FunctionType::get(b_.getVoidTy(), {ptr, ptr, ptr, ptr, ptr, i64t, i64t}, false);
    static_assert(kUpdateArgCount == 7 && unsigned(UpdateArg::Begin) == 5);
    fn_ = llvm::Function::Create(fnTy, llvm::Function::ExternalLinkage, kUpdateSymbol, m_);
    vectorWidth(fn_);
    for (unsigned i = 0; i < unsigned(UpdateArg::Begin); ++i) fn_->addParamAttr(i, llvm::Attribute::NoAlias);
    entryBlock_ = llvm::BasicBlock::Create(ctx_, "entry", fn_);
    b_.SetInsertPoint(entryBlock_);
    auto arg = [&](UpdateArg a) { return fn_->getArg(unsigned(a)); };
    llvm::Value *p = arg(UpdateArg::Params), *g = arg(UpdateArg::Grads);
    llvm::Value *mBuf = arg(UpdateArg::M), *vBuf = arg(UpdateArg::V);
    llvm::Value *begin = arg(UpdateArg::Begin), *end = arg(UpdateArg::End);
    auto hyper = [&](HyperSlot s) {
        llvm::Value* at = b_.CreateConstGEP1_64(b_.getDoubleTy(), arg(UpdateArg::Hyper), unsigned(s));
        llvm::Value* d = b_.CreateLoad(b_.getDoubleTy(), at);
        return f64_ ? d : b_.CreateFPTrunc(d, T_);
    };
    static_assert(unsigned(HyperSlot::Method) == 0); // read from the array's start
    llvm::Value* method = b_.CreateFPToSI(b_.CreateLoad(b_.getDoubleTy(), arg(UpdateArg::Hyper)), b_.getInt32Ty());
    llvm::Value *lr = hyper(HyperSlot::Lr), *wd = hyper(HyperSlot::WeightDecay), *mom = hyper(HyperSlot::Momentum),
                *damp = hyper(HyperSlot::Dampening), *b1 = hyper(HyperSlot::Beta1), *b2 = hyper(HyperSlot::Beta2),
                *eps = hyper(HyperSlot::Eps), *bc1 = hyper(HyperSlot::BiasCorrection1),
                *bc2sqrt = hyper(HyperSlot::BiasCorrection2Sqrt), *scale = hyper(HyperSlot::GradScale);
    llvm::Value* nesterov = b_.CreateFCmpONE(hyper(HyperSlot::Nesterov), fp(0));
    auto* sgd = llvm::BasicBlock::Create(ctx_, "sgd", fn_);
    auto* momentum = llvm::BasicBlock::Create(ctx_, "momentum", fn_);
    auto* adam = llvm::BasicBlock::Create(ctx_, "adam", fn_);
    auto* done = llvm::BasicBlock::Create(ctx_, "done", fn_);
    llvm::SwitchInst* sw = b_.CreateSwitch(method, done, 3);
    auto code = [&](OptimizerMethod m) { return b_.getInt32(uint32_t(m)); };
    sw->addCase(code(OptimizerMethod::Sgd), sgd), sw->addCase(code(OptimizerMethod::SgdMomentum), momentum),
        sw->addCase(code(OptimizerMethod::Adam), adam);
    auto each = [&](llvm::BasicBlock* bb, const std::function<llvm::Value*(llvm::Value* i, llvm::Value* grad)>& step) {
        b_.SetInsertPoint(bb);
        loopTo(b_.CreateSub(end, begin), "i", [&](llvm::Value* i0) {
            llvm::Value* i = b_.CreateAdd(begin, i0);
            llvm::Value* param = load(p, i);
            // clip_grad_norm_ scales the gradient in place, then the optimiser adds the weight decay
            llvm::Value* grad = b_.CreateFAdd(b_.CreateFMul(load(g, i), scale), b_.CreateFMul(wd, param));
            store(b_.CreateFSub(param, step(i, grad)), p, i);
        });
        b_.CreateBr(done);
    };
    each(sgd, [&](llvm::Value*, llvm::Value* grad) { return b_.CreateFMul(lr, grad); });
    each(momentum, [&](llvm::Value* i, llvm::Value* grad) {
        llvm::Value* buf = b_.CreateFAdd(b_.CreateFMul(mom, load(mBuf, i)), b_.CreateFMul(b_.CreateFSub(fp(1), damp), grad));
        store(buf, mBuf, i);
        llvm::Value* dir = b_.CreateSelect(nesterov, b_.CreateFAdd(grad, b_.CreateFMul(mom, buf)), buf);
        return b_.CreateFMul(lr, dir);
    });
    each(adam, [&](llvm::Value* i, llvm::Value* grad) {
        llvm::Value* m1 = b_.CreateFAdd(b_.CreateFMul(b1, load(mBuf, i)), b_.CreateFMul(b_.CreateFSub(fp(1), b1), grad));
        llvm::Value* v1 = b_.CreateFAdd(b_.CreateFMul(b2, load(vBuf, i)),
                                        b_.CreateFMul(b_.CreateFSub(fp(1), b2), b_.CreateFMul(grad, grad)));
        store(m1, mBuf, i), store(v1, vBuf, i);
        llvm::Value* denom = b_.CreateFAdd(b_.CreateFDiv(intrinsic(llvm::Intrinsic::sqrt, {v1}), bc2sqrt), eps);
        return b_.CreateFMul(b_.CreateFDiv(lr, bc1), b_.CreateFDiv(m1, denom));
    });
    b_.SetInsertPoint(done);
    b_.CreateRetVoid();
}

} // namespace gradc
