// LowerEntry.cpp — the entry ABI (EntryAbi.h) in LLVM IR: gradc_forward and gradc_backward
// with their seven pointer arguments, and the kernels as functions they call one after
// another (with profiling, each call between two reads of the cycle counter). A kernel
// function takes the base addresses of the buffers its kernel reads and writes, then the
// scratch area; shapes are constants in its code. Kernels with the same structure (equal
// but for which buffers they use) share one function, so the code, and LLVM's work on it,
// grows with the distinct kernels of a model, not with its layers: a `repeat` block's
// layers call the same functions. Loops outlined onto the thread pool
// (gradc_parallel_for, the one runtime function compiled code calls) get the kernel
// function's bases through a context array.
#include "Lowering.h"

#include <fmt/format.h>

namespace gradc {

namespace {

/// The arguments' names in the IR, in EntryArg order.
constexpr const char* kArgNames[kEntryArgCount] = {"params", "x", "target", "out0", "out1", "acts", "ws"};

/// A kernel as its kernel function sees it: `key` describes everything the lowering reads
/// from the kernel, with its buffers renumbered by first use (so equal keys mean the same
/// code); `buffers` are the kernel's buffers in that order, its function's arguments.
struct KernelShape {
    std::string key;
    std::vector<int32_t> buffers;
};

KernelShape kernelShape(const Kernel& k, const std::vector<Buffer>& buffers) {
    KernelShape s;
    std::unordered_map<int32_t, int> slot;
    auto buf = [&](int32_t id) {
        if (id < 0) return std::string("-");
        auto [it, added] = slot.emplace(id, int(s.buffers.size()));
        if (added) s.buffers.push_back(id);
        return std::to_string(it->second);
    };
    // Scalar expressions are hash-consed: equal ones are the same node.
    auto expr = [](const scalar::Expr& e) { return fmt::format("{}", static_cast<const void*>(e.get())); };
    std::string& key = s.key;
    key = fmt::format("{} {}x{} ", int(k.kind), k.rows, k.cols);
    if (k.a >= 0) key += fmt::format("a{}{} b{}{} k{} ", buf(k.a), k.transA ? "t" : "", buf(k.b), k.transB ? "t" : "", k.depth);
    for (const Access& a : k.args) key += fmt::format("arg{}:{} ", int(a.mode), buf(a.buffer));
    for (const Store& st : k.stores) key += fmt::format("st{}={} ", buf(st.buffer), expr(st.expr));
    for (const Store& st : k.columnSums) key += fmt::format("sum{}={} ", buf(st.buffer), expr(st.expr));
    for (const Store& st : k.rowSums) key += fmt::format("rsum{}={} ", buf(st.buffer), expr(st.expr));
    if (k.outer != 1) key += fmt::format("outer{} ", k.outer);
    for (int32_t id : k.in) key += fmt::format("in{} ", buf(id));
    for (size_t i = 0; i < k.out.size(); ++i) key += fmt::format("out{} ", buf(k.writesOut(i) ? k.out[i] : -1));
    if (k.kind == Kernel::Kind::Op) key += fmt::format("op{} eps{}", int(k.op), k.attrs.eps);
    if (k.kind == Kernel::Kind::Op && describe(k.op).has(trait::Recurrent)) { // the cell and every shape
        key += fmt::format(" cell{} expr{} outer{}", int(k.attrs.cell), expr(k.attrs.expr), k.outer);
        for (int32_t id : k.in) key += " " + shapeString(buffers[size_t(id)].shape);
        for (int32_t id : k.out) key += " " + (id < 0 ? std::string("-") : shapeString(buffers[size_t(id)].shape));
    }
    if (k.kind == Kernel::Kind::Op && describe(k.op).has(trait::Spatial)) { // the window and every shape
        key += " " + printWindow(k.attrs.window);
        if (k.poolsGradient()) key += " pool" + printWindow(k.pool);
        if (k.maxPositions) key += " positions";
        for (int32_t id : k.in) key += " " + shapeString(buffers[size_t(id)].shape);
        for (int32_t id : k.out) key += " " + (id < 0 ? std::string("-") : shapeString(buffers[size_t(id)].shape));
    }
    return s;
}

/// Whether two distinct buffers of a kernel may share memory: then its function's
/// arguments are not `noalias`. The memory plan never overlaps the buffers of one kernel,
/// so this is a safeguard, not a case that happens.
bool overlap(const Buffer& x, const Buffer& y, int elementBytes) {
    if (x.kind != y.kind) return false; // different entry arguments, which never alias
    switch (x.kind) {
    case Buffer::Kind::Param: case Buffer::Kind::Grad: case Buffer::Kind::Activation: case Buffer::Kind::Temp: {
        const int64_t unit = x.kind == Buffer::Kind::Temp ? elementBytes : 1;
        return x.offset < y.offset + y.elements() * unit && y.offset < x.offset + x.elements() * unit;
    }
    default: return true; // the whole argument
    }
}

} // namespace

void Lowering::entry(const KernelProgram& p, EntryPoint which) {
    p_ = &p;
    backward_ = which == EntryPoint::Backward;
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* fnTy = llvm::FunctionType::get(b_.getVoidTy(), std::vector<llvm::Type*>(kEntryArgCount, ptr), false);
    llvm::Function* entryFn = llvm::Function::Create(fnTy, llvm::Function::ExternalLinkage, entrySymbol(which), m_);
    fn_ = entryFn;
    vectorWidth(fn_);
    // The entry point is a list of calls, each given the addresses it needs, computed right
    // before it: left unoptimised, nothing is shared between calls, so no address stays in
    // a register (or spills) across the calls between its uses. Optimised, a model of 1000
    // layers spent seconds allocating registers for such addresses in its backward entry.
    fn_->addFnAttr(llvm::Attribute::OptimizeNone);
    fn_->addFnAttr(llvm::Attribute::NoInline);
    for (unsigned i = 0; i < kEntryArgCount; ++i) fn_->addParamAttr(i, llvm::Attribute::NoAlias);
    for (unsigned i = 0; i < kEntryArgCount; ++i) fn_->getArg(i)->setName(kArgNames[i]);
    entryBlock_ = llvm::BasicBlock::Create(ctx_, "entry", fn_);
    b_.SetInsertPoint(entryBlock_);
    for (unsigned i = 0; i < kEntryArgCount; ++i) args_[i] = fn_->getArg(i);
    llvm::GlobalVariable* counters = nullptr;
    if (profile_) { // one cycle counter per kernel: gradc_profile_forward[k] += ticks
        auto* arrTy = llvm::ArrayType::get(b_.getInt64Ty(), p.kernels.size());
        counters = new llvm::GlobalVariable(m_, arrTy, false, llvm::GlobalValue::ExternalLinkage,
                                            llvm::Constant::getNullValue(arrTy), profileSymbol(which));
    }
    llvm::Function* clock = llvm::Intrinsic::getDeclaration(&m_, llvm::Intrinsic::readcyclecounter);
    llvm::Value* scratch = b_.CreateGEP(b_.getInt8Ty(), arg(EntryArg::Workspace), i64(p.scratchOffset), "scratch");
    // A data-parallel backward pass tells the runtime as each gradient becomes final (after
    // the last kernel that writes it), so that its allreduce overlaps the rest of the pass.
    std::vector<std::vector<int32_t>> finalAfter(p.kernels.size());
    if (backward_ && p.syncWorld > 1) {
        std::map<int32_t, size_t> last;
        for (size_t i = 0; i < p.kernels.size(); ++i)
            for (int32_t id : p.kernels[i].writes())
                if (id >= 0 && p.buffers[size_t(id)].kind == Buffer::Kind::Grad) last[id] = i;
        for (auto [id, i] : last) finalAfter[i].push_back(id);
    }
    llvm::FunctionCallee ready;
    if (backward_ && p.syncWorld > 1)
        ready = m_.getOrInsertFunction("gradc_gradients_ready",
                                       llvm::FunctionType::get(b_.getVoidTy(), {b_.getInt64Ty(), b_.getInt64Ty()}, false));
    for (size_t i = 0; i < p.kernels.size(); ++i) {
        const Kernel& k = p.kernels[i];
        KernelShape shape = kernelShape(k, p.buffers);
        bool noalias = true;
        for (size_t x = 0; x < shape.buffers.size(); ++x)
            for (size_t y = 0; y < x; ++y)
                if (overlap(p.buffers[size_t(shape.buffers[x])], p.buffers[size_t(shape.buffers[y])], p.elementBytes))
                    noalias = false;
        if (!noalias) shape.key += " aliased";
        if (k.kind == Kernel::Kind::Op && !describe(k.op).has(trait::Recurrent) &&
            perChannel(k.op, p.buffers[size_t(k.in[0])].shape))
            shape.key += " per channel";
        llvm::Function*& f = kernelFns_[shape.key];
        if (!f) f = kernelFunction(k, shape.buffers, noalias);
        std::vector<llvm::Value*> callArgs;
        for (int32_t id : shape.buffers) callArgs.push_back(entryBase(id));
        callArgs.push_back(scratch);
        llvm::Value* start = counters ? b_.CreateCall(clock) : nullptr;
        b_.CreateCall(f, callArgs);
        if (counters) {
            llvm::Value* slot = b_.CreateConstInBoundsGEP2_64(counters->getValueType(), counters, 0, i);
            llvm::Value* ticks = b_.CreateSub(b_.CreateCall(clock), start);
            b_.CreateStore(b_.CreateAdd(b_.CreateLoad(b_.getInt64Ty(), slot), ticks), slot);
        }
        for (int32_t id : finalAfter[i])
            b_.CreateCall(ready, {i64(p.buffers[size_t(id)].offset), i64(p.buffers[size_t(id)].elements())});
    }
    b_.CreateRetVoid();
}

llvm::Function* Lowering::kernelFunction(const Kernel& k, const std::vector<int32_t>& buffers, bool noalias) {
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    const unsigned n = unsigned(buffers.size());
    llvm::Function* f = helper("gradc_kernel", std::vector<llvm::Type*>(n + 1, ptr), [&] {
        slots_.clear();
        bases_.clear();
        for (unsigned i = 0; i < n; ++i) {
            slots_[buffers[i]] = i;
            bases_.push_back(fn_->getArg(i));
        }
        scratch_ = fn_->getArg(n);
        noalias_ = noalias;
        context_ = nullptr;
        kernel(k);
    });
    if (noalias)
        for (unsigned i = 0; i <= n; ++i) f->addParamAttr(i, llvm::Attribute::NoAlias);
    return f;
}

llvm::Value* Lowering::entryBase(int32_t id) {
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

llvm::Value* Lowering::base(int32_t id) {
    if (id < 0) return nullptr;
    return bases_[slots_.at(id)];
}

void Lowering::kernel(const Kernel& k) {
    switch (k.kind) {
    case Kernel::Kind::Loop: return loopKernel(k);
    case Kernel::Kind::SoftmaxCrossEntropy: return softmaxCrossEntropy(k);
    case Kernel::Kind::BCEWithLogits:
    case Kernel::Kind::MSE: return pairwiseLoss(k);
    case Kernel::Kind::Op: // an op with a kernel of its own (Ops.def's GRADC_KERNEL rows), by its family
        if (describe(k.op).has(trait::Normalisation)) return normalisation(k);
        if (k.op == Op::MaxPool2d || k.op == Op::MaxPool2dGrad || k.op == Op::AvgPool2d || k.op == Op::AvgPool2dGrad)
            return pooling(k);
        if (isConvolution(k.op)) return convolution(k);
        if (describe(k.op).has(trait::Recurrent)) return recurrent(k);
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

void Lowering::parallel(const char* name, llvm::Value* context, int64_t n,
                        const std::function<void(llvm::Value*, llvm::Value*, llvm::Value*, llvm::Value*)>& body) {
    b_.CreateCall(parallelFor(), {outline(name, body), context, i64(n), i64(p_->blocking.threads)});
}

llvm::Function* Lowering::outline(const char* name,
                                  const std::function<void(llvm::Value*, llvm::Value*, llvm::Value*, llvm::Value*)>& body) {
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* int64 = b_.getInt64Ty();
    return helper(name, {ptr, int64, int64, int64},
                  [&] { body(fn_->getArg(0), fn_->getArg(1), fn_->getArg(2), fn_->getArg(3)); });
}

llvm::Value* Lowering::contextArray(size_t extraSlots) {
    if (context_ && !extraSlots) return context_;
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* arrTy = llvm::ArrayType::get(ptr, bases_.size() + 1 + extraSlots);
    llvm::IRBuilder<> eb(entryBlock_, entryBlock_->begin());
    llvm::Value* context = eb.CreateAlloca(arrTy);
    for (size_t i = 0; i <= bases_.size(); ++i)
        eb.CreateStore(i < bases_.size() ? bases_[i] : scratch_, eb.CreateConstGEP2_64(arrTy, context, 0, i));
    if (!extraSlots) context_ = context;
    return context;
}

void Lowering::loadContext(llvm::Value* context) {
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    for (size_t i = 0; i < bases_.size(); ++i) bases_[i] = b_.CreateLoad(ptr, b_.CreateConstGEP1_64(ptr, context, i));
    scratch_ = b_.CreateLoad(ptr, b_.CreateConstGEP1_64(ptr, context, bases_.size()));
}

} // namespace gradc
