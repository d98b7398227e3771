// LowerToLLVM.cpp — stage 6: kernel programs to one LLVM module with three entry points
// (see EntryAbi.h). Here: the order in which the module is built, and the building blocks
// every part of the lowering uses: counted loops, variables, math calls with their
// fast-math flags, internal helper functions. What each kernel kind becomes is in the
// Lower*.cpp files that Lowering.h lists.
#include "LowerToLLVM.h"

#include "Lowering.h"

#include <llvm/Analysis/ValueTracking.h>

namespace gradc {

Lowering::Lowering(llvm::LLVMContext& ctx, llvm::Module& m, bool f64, bool profile)
    : ctx_(ctx), m_(m), b_(ctx), T_(f64 ? llvm::Type::getDoubleTy(ctx) : llvm::Type::getFloatTy(ctx)), f64_(f64),
      profile_(profile) {
    fmf_.setAllowReassoc();
    fmf_.setAllowContract();
    b_.setFastMathFlags(fmf_);
}

void Lowering::vectorWidth(llvm::Function* f) {
    f->addFnAttr(llvm::Attribute::NoUnwind);
    if (p_) f->addFnAttr("prefer-vector-width", std::to_string(p_->blocking.vl * (f64_ ? 64 : 32)));
}

void Lowering::loop(int64_t n, const char* name, const std::function<void(llvm::Value*)>& body, bool vectorise) {
    internal_assert(n >= 1, "a counted loop without iterations"); // the body would run once
    llvm::BasicBlock* pre = b_.GetInsertBlock();
    auto* header = llvm::BasicBlock::Create(ctx_, std::string(name) + ".loop", fn_);
    auto* exit = llvm::BasicBlock::Create(ctx_, std::string(name) + ".end", fn_);
    b_.CreateBr(header);
    b_.SetInsertPoint(header);
    llvm::PHINode* i = b_.CreatePHI(b_.getInt64Ty(), 2, name);
    i->addIncoming(i64(0), pre);
    body(i);
    llvm::Value* next = b_.CreateAdd(i, i64(1), "", /*HasNUW=*/true, /*HasNSW=*/true);
    i->addIncoming(next, b_.GetInsertBlock());
    llvm::BranchInst* br = b_.CreateCondBr(b_.CreateICmpULT(next, i64(n)), header, exit);
    if (!vectorise) {
        llvm::Metadata* off[] = {llvm::MDString::get(ctx_, "llvm.loop.vectorize.enable"),
                                 llvm::ConstantAsMetadata::get(b_.getFalse())};
        llvm::MDNode* loopId = llvm::MDNode::getDistinct(ctx_, {nullptr, llvm::MDNode::get(ctx_, off)});
        loopId->replaceOperandWith(0, loopId);
        br->setMetadata(llvm::LLVMContext::MD_loop, loopId);
    }
    b_.SetInsertPoint(exit);
}

void Lowering::independentLoop(int64_t n, const char* name, const std::function<void(llvm::Value*)>& body) {
    if (!noalias_) return loop(n, name, body);
    const size_t first = fn_->size();
    loop(n, name, body);
    // The loop's blocks are those `loop` and its body appended to the function: its header,
    // its exit (where the builder now stands, outside the loop) and the body's own blocks.
    llvm::BasicBlock* exit = b_.GetInsertBlock();
    llvm::BasicBlock* header = &*std::next(fn_->begin(), long(first));
    llvm::MDNode* group = llvm::MDNode::getDistinct(ctx_, {});
    llvm::BranchInst* latch = nullptr;
    for (llvm::BasicBlock& bb : llvm::make_range(header->getIterator(), fn_->end())) {
        if (&bb == exit) continue;
        for (llvm::Instruction& in : bb) {
            if (!in.mayReadOrWriteMemory()) continue;
            // A variable (an alloca, a register after sroa) may carry a sum from one
            // iteration to the next: not marked.
            llvm::Value* ptr = llvm::getLoadStorePointerOperand(&in);
            if (ptr && llvm::isa<llvm::AllocaInst>(llvm::getUnderlyingObject(ptr))) continue;
            in.setMetadata(llvm::LLVMContext::MD_access_group, group);
        }
        auto* br = llvm::dyn_cast_or_null<llvm::BranchInst>(bb.getTerminator());
        if (br && br->isConditional() && br->getSuccessor(0) == header) latch = br;
    }
    internal_assert(latch != nullptr, "a loop without its back edge");
    llvm::Metadata* parallel[] = {llvm::MDString::get(ctx_, "llvm.loop.parallel_accesses"), group};
    llvm::MDNode* loopId = llvm::MDNode::getDistinct(ctx_, {nullptr, llvm::MDNode::get(ctx_, parallel)});
    loopId->replaceOperandWith(0, loopId);
    latch->setMetadata(llvm::LLVMContext::MD_loop, loopId);
}

void Lowering::ifElse(llvm::Value* cond, const std::function<void()>& then, const std::function<void()>& otherwise,
                      std::array<const char*, 3> names) {
    auto* yes = llvm::BasicBlock::Create(ctx_, names[0], fn_);
    auto* no = llvm::BasicBlock::Create(ctx_, names[1], fn_);
    auto* done = llvm::BasicBlock::Create(ctx_, names[2], fn_);
    b_.CreateCondBr(cond, yes, no);
    b_.SetInsertPoint(yes);
    then();
    b_.CreateBr(done);
    b_.SetInsertPoint(no);
    otherwise();
    b_.CreateBr(done);
    b_.SetInsertPoint(done);
}

void Lowering::loopTo(llvm::Value* n, const char* name, const std::function<void(llvm::Value*)>& body) {
    llvm::BasicBlock* pre = b_.GetInsertBlock();
    auto* header = llvm::BasicBlock::Create(ctx_, std::string(name) + ".loop", fn_);
    auto* bodyBlock = llvm::BasicBlock::Create(ctx_, std::string(name) + ".body", fn_);
    auto* exit = llvm::BasicBlock::Create(ctx_, std::string(name) + ".end", fn_);
    b_.CreateBr(header);
    b_.SetInsertPoint(header);
    llvm::PHINode* i = b_.CreatePHI(b_.getInt64Ty(), 2, name);
    i->addIncoming(i64(0), pre);
    b_.CreateCondBr(b_.CreateICmpULT(i, n), bodyBlock, exit);
    b_.SetInsertPoint(bodyBlock);
    body(i);
    i->addIncoming(b_.CreateAdd(i, i64(1), "", true, true), b_.GetInsertBlock());
    b_.CreateBr(header);
    b_.SetInsertPoint(exit);
}

llvm::Value* Lowering::variable(llvm::Type* ty, llvm::Value* init) {
    llvm::IRBuilder<> eb(entryBlock_, entryBlock_->begin());
    llvm::Value* slot = eb.CreateAlloca(ty);
    b_.CreateStore(init, slot);
    return slot;
}

llvm::Value* Lowering::intrinsic(llvm::Intrinsic::ID id, std::vector<llvm::Value*> args) {
    llvm::Function* f = llvm::Intrinsic::getDeclaration(&m_, id, {T_});
    return call(f, args);
}
llvm::Value* Lowering::libm(const char* name, llvm::Value* x) {
    std::string n = f64_ ? name : std::string(name) + "f";
    llvm::FunctionCallee f = m_.getOrInsertFunction(n, T_, T_);
    if (auto* fn = llvm::dyn_cast<llvm::Function>(f.getCallee())) {
        fn->setDoesNotThrow();
        fn->setOnlyAccessesInaccessibleMemory(); // errno only: vectorisable, like clang's -fno-math-errno
    }
    return call(f, {x});
}
llvm::Value* Lowering::call(llvm::FunctionCallee f, std::vector<llvm::Value*> args) {
    llvm::FastMathFlags withAfn = fmf_;
    withAfn.setApproxFunc();
    llvm::IRBuilder<>::FastMathFlagGuard guard(b_);
    b_.setFastMathFlags(withAfn);
    auto* c = b_.CreateCall(f, args);
    llvm::cast<llvm::CallInst>(c)->setDoesNotThrow();
    return c;
}

llvm::Function* Lowering::helper(const char* name, std::vector<llvm::Type*> params, const std::function<void()>& body) {
    auto* fnTy = llvm::FunctionType::get(b_.getVoidTy(), params, false);
    auto* f = llvm::Function::Create(fnTy, llvm::Function::InternalLinkage, name, m_);
    vectorWidth(f);
    f->addFnAttr(llvm::Attribute::NoInline);
    llvm::Function* savedFn = fn_;
    llvm::BasicBlock* savedEntry = entryBlock_;
    auto savedBases = bases_;
    llvm::Value *savedScratch = scratch_, *savedContext = context_;
    llvm::IRBuilderBase::InsertPoint savedIp = b_.saveIP();
    fn_ = f;
    entryBlock_ = llvm::BasicBlock::Create(ctx_, "entry", f);
    b_.SetInsertPoint(entryBlock_);
    body();
    b_.CreateRetVoid();
    fn_ = savedFn, entryBlock_ = savedEntry;
    bases_ = std::move(savedBases), scratch_ = savedScratch, context_ = savedContext;
    b_.restoreIP(savedIp);
    return f;
}

std::unique_ptr<llvm::Module> lowerToLLVM(llvm::LLVMContext& ctx, const KernelProgram& forward,
                                          const KernelProgram& backward, bool f64, bool profile) {
    auto m = std::make_unique<llvm::Module>("gradc", ctx);
    Lowering lower(ctx, *m, f64, profile);
    lower.entry(forward, EntryPoint::Forward);
    lower.entry(backward, EntryPoint::Backward);
    lower.update();
    return m;
}

} // namespace gradc
