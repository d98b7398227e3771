// LowerEntry.cpp — the entry ABI (EntryAbi.h) in LLVM IR: gradc_forward and gradc_backward
// with their seven pointer arguments, the buffers of a kernel program as addresses in those
// arguments, the kernels one after another (with profiling, each between two reads of the
// cycle counter), and the arguments packed into an array for loops outlined onto the thread
// pool (gradc_parallel_for, the one runtime function compiled code calls).
#include "Lowering.h"

namespace gradc {

namespace {

/// The arguments' names in the IR, in EntryArg order.
constexpr const char* kArgNames[kEntryArgCount] = {"params", "x", "target", "out0", "out1", "acts", "ws"};

} // namespace

void Lowering::entry(const KernelProgram& p, EntryPoint which) {
    p_ = &p;
    backward_ = which == EntryPoint::Backward;
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* fnTy = llvm::FunctionType::get(b_.getVoidTy(), std::vector<llvm::Type*>(kEntryArgCount, ptr), false);
    fn_ = llvm::Function::Create(fnTy, llvm::Function::ExternalLinkage, entrySymbol(which), m_);
    vectorWidth(fn_);
    for (unsigned i = 0; i < kEntryArgCount; ++i) fn_->addParamAttr(i, llvm::Attribute::NoAlias);
    for (unsigned i = 0; i < kEntryArgCount; ++i) fn_->getArg(i)->setName(kArgNames[i]);
    entryBlock_ = llvm::BasicBlock::Create(ctx_, "entry", fn_);
    b_.SetInsertPoint(entryBlock_);
    for (unsigned i = 0; i < kEntryArgCount; ++i) args_[i] = fn_->getArg(i);
    context_ = nullptr;
    llvm::GlobalVariable* counters = nullptr;
    if (profile_) { // one cycle counter per kernel: gradc_profile_forward[k] += ticks
        auto* arrTy = llvm::ArrayType::get(b_.getInt64Ty(), p.kernels.size());
        counters = new llvm::GlobalVariable(m_, arrTy, false, llvm::GlobalValue::ExternalLinkage,
                                            llvm::Constant::getNullValue(arrTy), profileSymbol(which));
    }
    llvm::Function* clock = llvm::Intrinsic::getDeclaration(&m_, llvm::Intrinsic::readcyclecounter);
    for (size_t i = 0; i < p.kernels.size(); ++i) {
        llvm::Value* start = counters ? b_.CreateCall(clock) : nullptr;
        kernel(p.kernels[i]);
        if (counters) {
            llvm::Value* slot = b_.CreateConstInBoundsGEP2_64(counters->getValueType(), counters, 0, i);
            llvm::Value* ticks = b_.CreateSub(b_.CreateCall(clock), start);
            b_.CreateStore(b_.CreateAdd(b_.CreateLoad(b_.getInt64Ty(), slot), ticks), slot);
        }
    }
    b_.CreateRetVoid();
}

llvm::Value* Lowering::base(int32_t id) {
    if (id < 0) return nullptr;
    const Buffer& buf = p_->buffers[size_t(id)];
    llvm::Type* i8 = b_.getInt8Ty();
    switch (buf.kind) {
    case Buffer::Kind::Param: return b_.CreateGEP(T_, arg(EntryArg::Params), i64(buf.offset));
    case Buffer::Kind::Input: return arg(EntryArg::Input);
    case Buffer::Kind::Target: return arg(EntryArg::Target);
    case Buffer::Kind::Logits: return arg(kLogitsArg);
    case Buffer::Kind::Loss: return arg(lossArg(backward_ ? EntryPoint::Backward : EntryPoint::Forward));
    case Buffer::Kind::Grad: return b_.CreateGEP(T_, arg(kGradsArg), i64(buf.offset));
    case Buffer::Kind::Activation: return b_.CreateGEP(T_, arg(EntryArg::Acts), i64(buf.offset));
    case Buffer::Kind::Temp: return b_.CreateGEP(i8, arg(EntryArg::Workspace), i64(buf.offset));
    }
    return nullptr;
}

void Lowering::kernel(const Kernel& k) {
    switch (k.kind) {
    case Kernel::Kind::Loop: return loopKernel(k);
    case Kernel::Kind::SoftmaxCrossEntropy: return softmaxCrossEntropy(k);
    case Kernel::Kind::BCEWithLogits:
    case Kernel::Kind::MSE: return pairwiseLoss(k);
    case Kernel::Kind::Op: // an op with a kernel of its own (Ops.def's GRADC_KERNEL rows), by its family
        if (describe(k.op).has(trait::Normalisation)) return normalisation(k);
        internal_assert(false, std::string("no kernel lowers ") + describe(k.op).spelling);
    }
}

/// `threads` is the count the per-thread tiles in the scratch area were planned for, so no
/// loop runs on more.
llvm::FunctionCallee Lowering::parallelFor() {
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* int64 = b_.getInt64Ty();
    return m_.getOrInsertFunction("gradc_parallel_for", llvm::FunctionType::get(b_.getVoidTy(), {ptr, ptr, int64, int64}, false));
}

llvm::Value* Lowering::scratchArea() {
    return b_.CreateGEP(b_.getInt8Ty(), arg(EntryArg::Workspace), i64(p_->scratchOffset));
}

void Lowering::parallel(const char* name, llvm::Value* context, int64_t n,
                        const std::function<void(llvm::Value*, llvm::Value*, llvm::Value*, llvm::Value*)>& body) {
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* int64 = b_.getInt64Ty();
    llvm::Function* f = helper(name, {ptr, int64, int64, int64},
                               [&] { body(fn_->getArg(0), fn_->getArg(1), fn_->getArg(2), fn_->getArg(3)); });
    b_.CreateCall(parallelFor(), {f, context, i64(n), i64(p_->blocking.threads)});
}

llvm::Value* Lowering::contextArray() {
    if (context_) return context_;
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* arrTy = llvm::ArrayType::get(ptr, kEntryArgCount);
    llvm::IRBuilder<> eb(entryBlock_, entryBlock_->begin());
    context_ = eb.CreateAlloca(arrTy);
    for (unsigned i = 0; i < kEntryArgCount; ++i)
        eb.CreateStore(fn_->getArg(i), eb.CreateConstGEP2_64(arrTy, context_, 0, i));
    return context_;
}

} // namespace gradc
