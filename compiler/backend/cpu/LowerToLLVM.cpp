// LowerToLLVM.cpp — stage 6: kernel programs to LLVM IR. Loops are emitted plainly with
// static bounds; the optimiser (O3, the host's vector width) vectorises them. Floating-point
// operations carry only `reassoc contract` (and `afn` on math calls): never nnan/ninf, so
// NaN and Inf survive to be counted.
#include "LowerToLLVM.h"

#include <fmt/format.h>
#include <llvm/IR/IRBuilder.h>
#include <llvm/IR/Intrinsics.h>
#include <llvm/IR/LLVMContext.h>
#include <llvm/IR/Module.h>

#include <array>
#include <functional>
#include <map>
#include <unordered_map>

namespace gradc {
namespace {

class Lowering {
public:
    Lowering(llvm::LLVMContext& ctx, llvm::Module& m, bool f64, bool profile)
        : ctx_(ctx), m_(m), b_(ctx), T_(f64 ? llvm::Type::getDoubleTy(ctx) : llvm::Type::getFloatTy(ctx)),
          f64_(f64), profile_(profile) {
        fmf_.setAllowReassoc();
        fmf_.setAllowContract();
        b_.setFastMathFlags(fmf_);
    }

    void entry(const KernelProgram& p, const char* symbol) {
        p_ = &p;
        auto* ptr = llvm::PointerType::get(ctx_, 0);
        auto* fnTy = llvm::FunctionType::get(b_.getVoidTy(), {ptr, ptr, ptr, ptr, ptr, ptr, ptr}, false);
        fn_ = llvm::Function::Create(fnTy, llvm::Function::ExternalLinkage, symbol, m_);
        vectorWidth(fn_);
        for (unsigned i = 0; i < 7; ++i) fn_->addParamAttr(i, llvm::Attribute::NoAlias);
        const char* names[] = {"params", "x", "target", "out0", "out1", "acts", "ws"};
        for (unsigned i = 0; i < 7; ++i) fn_->getArg(i)->setName(names[i]);
        entryBlock_ = llvm::BasicBlock::Create(ctx_, "entry", fn_);
        b_.SetInsertPoint(entryBlock_);
        for (unsigned i = 0; i < 7; ++i) args_[i] = fn_->getArg(i);
        context_ = nullptr;
        p_ = &p;
        backward_ = std::string(symbol).find("backward") != std::string::npos;
        llvm::GlobalVariable* counters = nullptr;
        if (profile_) { // one cycle counter per kernel: gradc_profile_forward[k] += ticks
            auto* arrTy = llvm::ArrayType::get(b_.getInt64Ty(), p.kernels.size());
            counters = new llvm::GlobalVariable(m_, arrTy, false, llvm::GlobalValue::ExternalLinkage,
                                                llvm::Constant::getNullValue(arrTy),
                                                std::string("gradc_profile_") + (backward_ ? "backward" : "forward"));
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

    /// The optimiser step, one pass over every parameter in [begin, end):
    ///   void gradc_update(T* params, const T* grads, T* m, T* v, const double* hyper, i64 begin, i64 end)
    /// hyper: method (0 SGD, 1 SGD with momentum, 2 Adam), lr, weight decay, momentum,
    /// dampening, nesterov (0/1), beta1, beta2, eps, 1 - beta1^t, sqrt(1 - beta2^t). The
    /// formulas are torch.optim's; the caller passes dampening 0 on the first momentum step,
    /// where PyTorch starts the buffer at the gradient.
    void update() {
        auto* ptr = llvm::PointerType::get(ctx_, 0);
        auto* fnTy = llvm::FunctionType::get(b_.getVoidTy(), {ptr, ptr, ptr, ptr, ptr, b_.getInt64Ty(), b_.getInt64Ty()}, false);
        fn_ = llvm::Function::Create(fnTy, llvm::Function::ExternalLinkage, "gradc_update", m_);
        vectorWidth(fn_);
        for (unsigned i = 0; i < 5; ++i) fn_->addParamAttr(i, llvm::Attribute::NoAlias);
        entryBlock_ = llvm::BasicBlock::Create(ctx_, "entry", fn_);
        b_.SetInsertPoint(entryBlock_);
        llvm::Value *p = fn_->getArg(0), *g = fn_->getArg(1), *mBuf = fn_->getArg(2), *vBuf = fn_->getArg(3);
        llvm::Value *begin = fn_->getArg(5), *end = fn_->getArg(6);
        auto hyper = [&](int i) {
            llvm::Value* d = b_.CreateLoad(b_.getDoubleTy(), b_.CreateConstGEP1_64(b_.getDoubleTy(), fn_->getArg(4), unsigned(i)));
            return f64_ ? d : b_.CreateFPTrunc(d, T_);
        };
        llvm::Value* method = b_.CreateFPToSI(b_.CreateLoad(b_.getDoubleTy(), fn_->getArg(4)), b_.getInt32Ty());
        llvm::Value *lr = hyper(1), *wd = hyper(2), *mom = hyper(3), *damp = hyper(4), *b1 = hyper(6), *b2 = hyper(7),
                    *eps = hyper(8), *bc1 = hyper(9), *bc2sqrt = hyper(10);
        llvm::Value* nesterov = b_.CreateFCmpONE(hyper(5), fp(0));
        auto* sgd = llvm::BasicBlock::Create(ctx_, "sgd", fn_);
        auto* momentum = llvm::BasicBlock::Create(ctx_, "momentum", fn_);
        auto* adam = llvm::BasicBlock::Create(ctx_, "adam", fn_);
        auto* done = llvm::BasicBlock::Create(ctx_, "done", fn_);
        llvm::SwitchInst* sw = b_.CreateSwitch(method, done, 3);
        sw->addCase(b_.getInt32(0), sgd), sw->addCase(b_.getInt32(1), momentum), sw->addCase(b_.getInt32(2), adam);
        auto each = [&](llvm::BasicBlock* bb, const std::function<llvm::Value*(llvm::Value* i, llvm::Value* grad)>& step) {
            b_.SetInsertPoint(bb);
            loopTo(b_.CreateSub(end, begin), "i", [&](llvm::Value* i0) {
                llvm::Value* i = b_.CreateAdd(begin, i0);
                llvm::Value* param = load(p, i);
                llvm::Value* grad = b_.CreateFAdd(load(g, i), b_.CreateFMul(wd, param)); // weight decay
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

private:
    llvm::LLVMContext& ctx_;
    llvm::Module& m_;
    llvm::IRBuilder<> b_;
    llvm::Type* T_;
    bool f64_;
    bool profile_;
    llvm::FastMathFlags fmf_;
    llvm::Function* fn_ = nullptr;
    llvm::BasicBlock* entryBlock_ = nullptr;
    std::array<llvm::Value*, 7> args_{};  ///< the entry point's arguments, as seen in fn_
    llvm::Value* context_ = nullptr;        ///< the entry's arguments as an array, for outlined loops
    const KernelProgram* p_ = nullptr;
    bool backward_ = false;

    /// Every function: no exceptions, and loops vectorised at the register tile's width (the
    /// optimiser's default on AVX-512 machines is 256 bits, which halves the epilogues' speed).
    void vectorWidth(llvm::Function* f) {
        f->addFnAttr(llvm::Attribute::NoUnwind);
        if (p_) f->addFnAttr("prefer-vector-width", std::to_string(p_->blocking.vl * (f64_ ? 64 : 32)));
    }

    llvm::Value* i64(int64_t v) { return b_.getInt64(uint64_t(v)); }
    llvm::Value* fp(double v) { return llvm::ConstantFP::get(T_, v); }

    /// The base address of a buffer.
    llvm::Value* base(int32_t id) {
        const Buffer& buf = p_->buffers[size_t(id)];
        llvm::Type* i8 = b_.getInt8Ty();
        switch (buf.kind) {
        case Buffer::Kind::Param: return b_.CreateGEP(T_, args_[0], i64(buf.offset));
        case Buffer::Kind::Input: return args_[1];
        case Buffer::Kind::Target: return args_[2];
        case Buffer::Kind::Logits: return args_[3];
        case Buffer::Kind::Loss: return args_[backward_ ? 3 : 4];
        case Buffer::Kind::Grad: return b_.CreateGEP(T_, args_[4], i64(buf.offset));
        case Buffer::Kind::Activation: return b_.CreateGEP(T_, args_[5], i64(buf.offset));
        case Buffer::Kind::Temp: return b_.CreateGEP(i8, args_[6], i64(buf.offset));
        }
        return nullptr;
    }
    llvm::Value* at(llvm::Value* basePtr, llvm::Value* index) { return b_.CreateGEP(T_, basePtr, index); }
    llvm::Value* load(llvm::Value* basePtr, llvm::Value* index) { return b_.CreateLoad(T_, at(basePtr, index)); }
    void store(llvm::Value* v, llvm::Value* basePtr, llvm::Value* index) { b_.CreateStore(v, at(basePtr, index)); }

    /// for (i = 0; i < n; ++i) body(i); `vectorise` false keeps the optimiser from vectorising
    /// it (strided copies would become gathers and scatters).
    void loop(int64_t n, const char* name, const std::function<void(llvm::Value*)>& body, bool vectorise = true) {
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

    /// A scalar variable in the entry block (promoted to a register by the optimiser).
    llvm::Value* variable(llvm::Type* ty, llvm::Value* init) {
        llvm::IRBuilder<> eb(entryBlock_, entryBlock_->begin());
        llvm::Value* slot = eb.CreateAlloca(ty);
        b_.CreateStore(init, slot);
        return slot;
    }

    llvm::Value* intrinsic(llvm::Intrinsic::ID id, std::vector<llvm::Value*> args) {
        llvm::Function* f = llvm::Intrinsic::getDeclaration(&m_, id, {T_});
        return call(f, args);
    }
    llvm::Value* libm(const char* name, llvm::Value* x) {
        std::string n = f64_ ? name : std::string(name) + "f";
        llvm::FunctionCallee f = m_.getOrInsertFunction(n, T_, T_);
        if (auto* fn = llvm::dyn_cast<llvm::Function>(f.getCallee())) {
            fn->setDoesNotThrow();
            fn->setOnlyAccessesInaccessibleMemory(); // errno only: vectorisable, like clang's -fno-math-errno
        }
        return call(f, {x});
    }
    llvm::Value* call(llvm::FunctionCallee f, std::vector<llvm::Value*> args) {
        llvm::FastMathFlags withAfn = fmf_;
        withAfn.setApproxFunc();
        llvm::IRBuilder<>::FastMathFlagGuard guard(b_);
        b_.setFastMathFlags(withAfn);
        auto* c = b_.CreateCall(f, args);
        llvm::cast<llvm::CallInst>(c)->setDoesNotThrow();
        return c;
    }

    /// e^x. In double, the library's. In float, inline, so loops that use it vectorise at the
    /// full width with no calls: x = n ln2 + r with |r| <= ln2/2 (ln2 in two parts, by exact
    /// FMAs), e^r by a degree-7 polynomial (Cephes' expf coefficients, within about 1 ulp), and
    /// 2^n from exponent bits in two halves, so that subnormal results come out right. Past
    /// the float range: +Inf and 0; NaN stays NaN. No fast-math flags here: reassociating the
    /// reduction would undo it.
    llvm::Value* exp(llvm::Value* x) {
        if (f64_) return intrinsic(llvm::Intrinsic::exp, {x});
        llvm::IRBuilderBase::FastMathFlagGuard guard(b_);
        b_.clearFastMathFlags();
        auto* i32 = b_.getInt32Ty();
        llvm::Value* xc = b_.CreateSelect(b_.CreateFCmpOLT(x, fp(-105)), fp(-105), x);
        xc = b_.CreateSelect(b_.CreateFCmpOGT(xc, fp(89)), fp(89), xc);
        llvm::Value* n = intrinsic(llvm::Intrinsic::rint, {b_.CreateFMul(xc, fp(1.44269504088896341))});
        llvm::Value* r = intrinsic(llvm::Intrinsic::fma, {n, fp(-0.693359375), xc});
        r = intrinsic(llvm::Intrinsic::fma, {n, fp(2.12194440e-4), r});
        llvm::Value* p = fp(1.9875691500e-4);
        for (double c : {1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1})
            p = intrinsic(llvm::Intrinsic::fma, {p, r, fp(c)});
        p = intrinsic(llvm::Intrinsic::fma, {p, b_.CreateFMul(r, r), b_.CreateFAdd(r, fp(1))});
        llvm::Value* ni = b_.CreateFPToSI(n, i32);
        llvm::Value* half = b_.CreateAShr(ni, 1);
        auto pow2 = [&](llvm::Value* e) { // 2^e for e in [-126, 127]
            return b_.CreateBitCast(b_.CreateShl(b_.CreateAdd(e, b_.getInt32(127)), 23), T_);
        };
        llvm::Value* y = b_.CreateFMul(b_.CreateFMul(p, pow2(half)), pow2(b_.CreateSub(ni, half)));
        return b_.CreateSelect(b_.CreateFCmpUNO(x, x), x, y);
    }

    llvm::Value* sigmoid(llvm::Value* x) {
        // 1 / (1 + exp(-x)): exp overflows to +Inf for very negative x, giving exactly 0.
        return b_.CreateFDiv(fp(1), b_.CreateFAdd(fp(1), exp(b_.CreateFNeg(x))));
    }

    /// What the nodes lowered so far became: their values, and comparisons also as i1.
    struct Memo {
        std::unordered_map<const scalar::Node*, llvm::Value*> value, cond;
    };

    static bool comparison(scalar::Op op) {
        using scalar::Op;
        return op == Op::Lt || op == Op::Le || op == Op::Gt || op == Op::Ge || op == Op::Eq || op == Op::Ne;
    }

    /// Lowers `e`, each distinct node once, operands first, without recursion (a DAG of
    /// activation calls may be deep).
    llvm::Value* expr(const scalar::E& e, const std::vector<llvm::Value*>& args, Memo& memo) {
        scalar::postOrder(e, [&](const scalar::Node& n) {
            if (!memo.value.count(&n)) memo.value[&n] = node(n, args, memo);
        });
        return memo.value.at(e.get());
    }

    llvm::Value* node(const scalar::Node& n, const std::vector<llvm::Value*>& args, Memo& memo) {
        using scalar::Op;
        const scalar::Node* e = &n;
        auto a = [&](size_t i) { return memo.value.at(e->args[i].get()); };
        if (comparison(e->op)) {
            static const std::pair<Op, llvm::CmpInst::Predicate> preds[] = {
                {Op::Lt, llvm::CmpInst::FCMP_OLT}, {Op::Le, llvm::CmpInst::FCMP_OLE},
                {Op::Gt, llvm::CmpInst::FCMP_OGT}, {Op::Ge, llvm::CmpInst::FCMP_OGE},
                {Op::Eq, llvm::CmpInst::FCMP_OEQ}, {Op::Ne, llvm::CmpInst::FCMP_UNE}};
            for (auto [op, p] : preds)
                if (op == e->op) memo.cond[e] = b_.CreateFCmp(p, a(0), a(1));
            return b_.CreateUIToFP(memo.cond.at(e), T_);
        }
        llvm::Value* v = nullptr;
        switch (e->op) {
        case Op::Const: v = fp(e->value); break;
        case Op::Arg: v = args.at(size_t(e->value)); break;
        case Op::Var: case Op::Out: case Op::Grad: case Op::Param:
            internal_assert(false, "unbound variable in a kernel");
            break;
        case Op::Add: v = b_.CreateFAdd(a(0), a(1)); break;
        case Op::Sub: v = b_.CreateFSub(a(0), a(1)); break;
        case Op::Mul: v = b_.CreateFMul(a(0), a(1)); break;
        case Op::Div: v = b_.CreateFDiv(a(0), a(1)); break;
        case Op::Neg: v = b_.CreateFNeg(a(0)); break;
        case Op::Pow:
            if (e->args[1]->op == Op::Const && e->args[1]->value == 2) {
                llvm::Value* x = a(0);
                v = b_.CreateFMul(x, x);
            } else {
                v = intrinsic(llvm::Intrinsic::pow, {a(0), a(1)});
            }
            break;
        case Op::Lt: case Op::Le: case Op::Gt: case Op::Ge: case Op::Eq: case Op::Ne: break;
        case Op::Select: {
            const scalar::Node* c = e->args[0].get();
            llvm::Value* cond = comparison(c->op) ? memo.cond.at(c)
                                                  : b_.CreateFCmpUNE(a(0), fp(0)); // NaN counts as true
            v = b_.CreateSelect(cond, a(1), a(2));
            break;
        }
        case Op::Exp: v = exp(a(0)); break;
        case Op::Log: v = intrinsic(llvm::Intrinsic::log, {a(0)}); break;
        case Op::Sqrt: v = intrinsic(llvm::Intrinsic::sqrt, {a(0)}); break;
        case Op::Abs: v = intrinsic(llvm::Intrinsic::fabs, {a(0)}); break;
        // PyTorch's minimum and maximum: NaN if either operand is (minnum/maxnum drop it).
        case Op::Min: v = intrinsic(llvm::Intrinsic::minimum, {a(0), a(1)}); break;
        case Op::Max: v = intrinsic(llvm::Intrinsic::maximum, {a(0), a(1)}); break;
        case Op::Tanh: v = libm("tanh", a(0)); break;
        case Op::Erf: v = libm("erf", a(0)); break;
        case Op::Sigmoid: v = sigmoid(a(0)); break;
        case Op::Softplus: { // max(x, 0) + log1p(exp(-|x|))
            llvm::Value* x = a(0);
            llvm::Value* t = exp(b_.CreateFNeg(intrinsic(llvm::Intrinsic::fabs, {x})));
            v = b_.CreateFAdd(intrinsic(llvm::Intrinsic::maxnum, {x, fp(0)}), libm("log1p", t));
            break;
        }
        }
        return v;
    }

    void kernel(const Kernel& k) {
        switch (k.kind) {
        case Kernel::Kind::Loop: return loopKernel(k);
        case Kernel::Kind::SoftmaxCrossEntropy: return softmaxCrossEntropy(k);
        case Kernel::Kind::BCEWithLogits:
        case Kernel::Kind::MSE: return pairwiseLoss(k);
        case Kernel::Kind::BatchNorm:
        case Kernel::Kind::BatchNormGradX:
        case Kernel::Kind::BatchNormGradGamma: return batchnorm(k);
        }
    }

    /// for (i = 0; i < n; ++i) body(i), with a bound known only at run time.
    void loopTo(llvm::Value* n, const char* name, const std::function<void(llvm::Value*)>& body) {
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

    /// The element-wise part of a loop kernel at [r, c], the accumulator (if any) given.
    struct LoopBases {
        std::vector<llvm::Value*> args, stores, sums;
    };
    LoopBases loopBases(const Kernel& k) {
        LoopBases lb;
        for (auto& a : k.args) lb.args.push_back(a.buffer >= 0 ? base(a.buffer) : nullptr);
        for (auto& s : k.stores) lb.stores.push_back(base(s.buffer));
        for (auto& s : k.columnSums) lb.sums.push_back(base(s.buffer));
        return lb;
    }
    void element(const Kernel& k, const LoopBases& lb, llvm::Value* r, llvm::Value* c, llvm::Value* acc) {
        llvm::Value* elem = b_.CreateAdd(b_.CreateMul(r, i64(k.cols)), c);
        std::vector<llvm::Value*> args;
        for (size_t i = 0; i < k.args.size(); ++i) {
            switch (k.args[i].mode) {
            case Access::Mode::Acc: args.push_back(acc); break;
            case Access::Mode::Elem: args.push_back(load(lb.args[i], elem)); break;
            case Access::Mode::Col: args.push_back(load(lb.args[i], c)); break;
            case Access::Mode::Row: args.push_back(load(lb.args[i], r)); break;
            }
        }
        Memo memo;
        for (size_t i = 0; i < k.stores.size(); ++i) store(expr(k.stores[i].expr, args, memo), lb.stores[i], elem);
        for (size_t i = 0; i < k.columnSums.size(); ++i) {
            llvm::Value* v = expr(k.columnSums[i].expr, args, memo);
            store(b_.CreateFAdd(load(lb.sums[i], c), v), lb.sums[i], c);
        }
    }

    void loopKernel(const Kernel& k) {
        for (auto& s : k.columnSums) {
            llvm::Value* out = base(s.buffer);
            loop(k.cols, "zero", [&](llvm::Value* c) { store(fp(0), out, c); });
        }
        if (k.a >= 0) return matrixProduct(k);
        LoopBases lb = loopBases(k);
        loop(k.rows, "r", [&](llvm::Value* r) { loop(k.cols, "c", [&](llvm::Value* c) { element(k, lb, r, c, nullptr); }); });
    }

    // ---- Matrix products. Two helpers shared by every product of the module (one copy of
    // the code each, so compile time does not grow with the number of layers):
    //   pack_b(dst, b, N, K, transB, first, end): B's panels into [K][NR], zero past column N
    //   tile(out, a rows..., aStride, b, bStride, K): out[MR][NR] = the product, in registers
    // Each product kernel packs what it must, then for each tile runs `tile` and its own
    // fused element-wise epilogue while the tile is in cache.
    llvm::Function* packB_ = nullptr;
    llvm::Function* tile_ = nullptr;

    /// Emits a helper function; `body` runs with the builder inside it.
    llvm::Function* helper(const char* name, std::vector<llvm::Type*> params, const std::function<void()>& body) {
        auto* fnTy = llvm::FunctionType::get(b_.getVoidTy(), params, false);
        auto* f = llvm::Function::Create(fnTy, llvm::Function::InternalLinkage, name, m_);
        vectorWidth(f);
        f->addFnAttr(llvm::Attribute::NoInline);
        llvm::Function* savedFn = fn_;
        llvm::BasicBlock* savedEntry = entryBlock_;
        auto savedArgs = args_;
        llvm::IRBuilderBase::InsertPoint savedIp = b_.saveIP();
        fn_ = f;
        entryBlock_ = llvm::BasicBlock::Create(ctx_, "entry", f);
        b_.SetInsertPoint(entryBlock_);
        body();
        b_.CreateRetVoid();
        fn_ = savedFn, entryBlock_ = savedEntry, args_ = savedArgs;
        b_.restoreIP(savedIp);
        return f;
    }

    void declareGemmHelpers() {
        if (tile_) return;
        const GemmBlocking& bl = p_->blocking;
        const int64_t MR = bl.mr, NR = bl.nr(), VL = bl.vl;
        auto* ptr = llvm::PointerType::get(ctx_, 0);
        auto* i64t = b_.getInt64Ty();
        auto* i1t = b_.getInt1Ty();
        auto arg = [&](unsigned i) { return fn_->getArg(i); };
        packB_ = helper("gradc_pack_b", {ptr, ptr, i64t, i64t, i1t, i64t, i64t}, [&] {
            llvm::Value *dst = arg(0), *b = arg(1), *N = arg(2), *K = arg(3), *trans = arg(4);
            auto* vecTy = llvm::FixedVectorType::get(T_, unsigned(VL));
            // A transposed B's panel is a transpose: VL x VL blocks through registers (VL
            // rows loaded, transposed by shuffles, VL panel rows stored), the rest of K below.
            auto blocks = [&](llvm::Value* jt) {
                loopTo(b_.CreateUDiv(K, i64(VL)), "kb", [&](llvm::Value* kb) {
                    llvm::Value* k0 = b_.CreateMul(kb, i64(VL));
                    for (int64_t v = 0; v < bl.nv; ++v) {
                        std::vector<llvm::Value*> rows;
                        for (int64_t jj = 0; jj < VL; ++jj) { // rows past N repeat the last one
                            llvm::Value* j = b_.CreateAdd(b_.CreateMul(jt, i64(NR)), i64(v * VL + jj));
                            j = b_.CreateSelect(b_.CreateICmpULT(j, N), j, b_.CreateSub(N, i64(1)));
                            rows.push_back(b_.CreateAlignedLoad(vecTy, at(b, b_.CreateAdd(b_.CreateMul(j, K), k0)),
                                                                llvm::Align(f64_ ? 8 : 4)));
                        }
                        transpose(rows);
                        for (int64_t kk = 0; kk < VL; ++kk) {
                            llvm::Value* row = b_.CreateAdd(b_.CreateMul(jt, K), b_.CreateAdd(k0, i64(kk)));
                            b_.CreateAlignedStore(rows[size_t(kk)], at(dst, b_.CreateAdd(b_.CreateMul(row, i64(NR)), i64(v * VL))),
                                                  llvm::Align(size_t(VL) * (f64_ ? 8 : 4)));
                        }
                    }
                });
            };
            auto body = [&](bool transposed) {
                loopTo(b_.CreateSub(arg(6), arg(5)), "jt", [&](llvm::Value* jt0) {
                    llvm::Value* jt = b_.CreateAdd(arg(5), jt0);
                    llvm::Value* kFirst = i64(0);
                    if (transposed) {
                        blocks(jt);
                        kFirst = b_.CreateMul(b_.CreateUDiv(K, i64(VL)), i64(VL));
                    }
                    loopTo(b_.CreateSub(K, kFirst), "k", [&](llvm::Value* k0) {
                        llvm::Value* kk = b_.CreateAdd(kFirst, k0);
                        loop(NR, "c", [&](llvm::Value* c) {
                            llvm::Value* j = b_.CreateAdd(b_.CreateMul(jt, i64(NR)), c);
                            llvm::Value* inside = b_.CreateICmpULT(j, N);
                            llvm::Value* sj = b_.CreateSelect(inside, j, i64(0));
                            llvm::Value* src = transposed ? b_.CreateAdd(b_.CreateMul(sj, K), kk)
                                                          : b_.CreateAdd(b_.CreateMul(kk, N), sj);
                            llvm::Value* d = b_.CreateAdd(b_.CreateMul(b_.CreateAdd(b_.CreateMul(jt, K), kk), i64(NR)), c);
                            store(b_.CreateSelect(inside, load(b, src), fp(0)), dst, d);
                        }, /*vectorise=*/!transposed); // a transposed B would need gathers
                    });
                });
            };
            auto* yes = llvm::BasicBlock::Create(ctx_, "transposed", fn_);
            auto* no = llvm::BasicBlock::Create(ctx_, "rows", fn_);
            auto* done = llvm::BasicBlock::Create(ctx_, "done", fn_);
            b_.CreateCondBr(trans, yes, no);
            b_.SetInsertPoint(yes);
            body(true);
            b_.CreateBr(done);
            b_.SetInsertPoint(no);
            body(false);
            b_.CreateBr(done);
            b_.SetInsertPoint(done);
        });
        // tile(out, outStride, a_0 .. a_{MR-1}, aStride, b, bStride, K): row r of A is
        // a_r[k * aStride]; B's NR columns at step k start at b[k * bStride]; row r of the
        // result goes to out[r * outStride].
        std::vector<llvm::Type*> tileArgs = {ptr, i64t};
        for (int64_t r = 0; r < MR; ++r) tileArgs.push_back(ptr);
        for (llvm::Type* t : {(llvm::Type*)i64t, (llvm::Type*)ptr, (llvm::Type*)i64t, (llvm::Type*)i64t}) tileArgs.push_back(t);
        tile_ = helper("gradc_tile", tileArgs, [&] {
            llvm::Value *out = arg(0), *outStride = arg(1);
            llvm::Value *aStride = arg(unsigned(MR + 2)), *bPanel = arg(unsigned(MR + 3)), *bStride = arg(unsigned(MR + 4)),
                        *K = arg(unsigned(MR + 5));
            auto* vecTy = llvm::FixedVectorType::get(T_, unsigned(VL));
            const llvm::Align elementAlign(f64_ ? 8 : 4);
            llvm::Function* fma = llvm::Intrinsic::getDeclaration(&m_, llvm::Intrinsic::fmuladd, {vecTy});
            // MR x NV accumulators stay in vector registers over all of K.
            std::vector<llvm::Value*> acc;
            for (int64_t i = 0; i < MR * bl.nv; ++i) acc.push_back(variable(vecTy, llvm::Constant::getNullValue(vecTy)));
            loopTo(K, "k", [&](llvm::Value* kk) {
                std::vector<llvm::Value*> bv;
                llvm::Value* bRow = b_.CreateMul(kk, bStride);
                for (int64_t v = 0; v < bl.nv; ++v)
                    bv.push_back(b_.CreateAlignedLoad(vecTy, b_.CreateGEP(T_, bPanel, b_.CreateAdd(bRow, i64(v * VL))),
                                                      elementAlign));
                llvm::Value* aAt = b_.CreateMul(kk, aStride);
                for (int64_t r = 0; r < MR; ++r) {
                    llvm::Value* splat = b_.CreateVectorSplat(unsigned(VL), load(arg(unsigned(2 + r)), aAt));
                    for (int64_t v = 0; v < bl.nv; ++v) {
                        llvm::Value* slot = acc[size_t(r * bl.nv + v)];
                        b_.CreateStore(b_.CreateCall(fma, {splat, bv[size_t(v)], b_.CreateLoad(vecTy, slot)}), slot);
                    }
                }
            });
            for (int64_t r = 0; r < MR; ++r)
                for (int64_t v = 0; v < bl.nv; ++v)
                    b_.CreateAlignedStore(b_.CreateLoad(vecTy, acc[size_t(r * bl.nv + v)]),
                                          b_.CreateGEP(T_, out, b_.CreateAdd(b_.CreateMul(i64(r), outStride), i64(v * VL))),
                                          elementAlign);
        });
    }

    /// acc = A · B by register tiles, then the element-wise epilogue on each tile while it is
    /// in cache. A is read in place (each tile broadcasts from MR rows of it, the last rows
    /// repeated past M). B is read in place where its NR columns are contiguous (B not
    /// transposed, a whole panel); otherwise its panels are packed first: [K][NR], zero past N.
    /// Transposes the square matrix whose rows are `r` (vectors as long as there are rows, a
    /// power of two): log2(n) rounds, each swapping the off-diagonal blocks of size `step`.
    void transpose(std::vector<llvm::Value*>& r) {
        const int n = int(r.size());
        for (int step = 1; step < n; step *= 2)
            for (int i = 0; i < n; ++i) {
                if (i & step) continue;
                std::vector<int> lo(static_cast<size_t>(n)), hi(static_cast<size_t>(n));
                for (int e = 0; e < n; ++e) { // indices into the concatenation (r[i], r[i + step])
                    lo[size_t(e)] = e & step ? n + e - step : e;
                    hi[size_t(e)] = e & step ? n + e : e + step;
                }
                llvm::Value *a = r[size_t(i)], *b = r[size_t(i + step)];
                r[size_t(i)] = b_.CreateShuffleVector(a, b, lo);
                r[size_t(i + step)] = b_.CreateShuffleVector(a, b, hi);
            }
    }

    void matrixProduct(const Kernel& k) {
        declareGemmHelpers();
        const GemmBlocking& bl = p_->blocking;
        const int64_t M = k.rows, N = k.cols, K = k.depth, MR = bl.mr, NR = bl.nr();
        const int64_t mt = (M + MR - 1) / MR, nt = (N + NR - 1) / NR;
        auto up16 = [](int64_t v) { return (v + 15) / 16 * 16; };
        // Panels to pack: all of a transposed B, else only a last partial one.
        const int64_t packFrom = k.transB ? 0 : N / NR;
        auto scratch = [&](llvm::Value*& bp, llvm::Value*& tile) {
            bp = b_.CreateGEP(b_.getInt8Ty(), args_[6], i64(p_->scratchOffset));
            tile = b_.CreateGEP(T_, bp, i64(up16(nt * NR * K)));
        };
        llvm::Value *bp, *tile;
        scratch(bp, tile);
        if (packFrom < nt) pack(packB_, bp, base(k.b), N, K, k.transB, packFrom, nt);
        // The tiles, as a function of a range of tile numbers and a thread number, so threads
        // can share them: column sums accumulate across the rows of tiles, so a kernel with
        // any runs its column strips (whole jt) on one thread each.
        const bool byStrip = !k.columnSums.empty();
        const bool plain = k.columnSums.empty() && k.stores.size() == 1 && k.stores[0].expr->op == scalar::Op::Arg &&
                           k.args[size_t(k.stores[0].expr->value)].mode == Access::Mode::Acc;
        const int64_t units = byStrip ? nt : nt * mt;
        auto tiles = [&](llvm::Value* begin, llvm::Value* end, llvm::Value* thread) {
          llvm::Value* myTile = b_.CreateGEP(T_, tile, b_.CreateMul(thread, i64(MR * NR)));
          llvm::Value* a = base(k.a);
          llvm::Value* b = base(k.b);
          loopTo(b_.CreateSub(end, begin), "u", [&](llvm::Value* u0) {
            llvm::Value* u = b_.CreateAdd(begin, u0);
            auto one = [&](llvm::Value* jt, llvm::Value* it) {
                llvm::Value* tile = myTile;
                LoopBases lb = loopBases(k);
                llvm::Value* r0 = b_.CreateMul(it, i64(MR));
                llvm::Value* c0 = b_.CreateMul(jt, i64(NR));
                llvm::Value* rows = b_.CreateSelect(b_.CreateICmpULE(b_.CreateAdd(r0, i64(MR)), i64(M)), i64(MR),
                                                    b_.CreateSub(i64(M), r0));
                llvm::Value* cols = b_.CreateSelect(b_.CreateICmpULE(b_.CreateAdd(c0, i64(NR)), i64(N)), i64(NR),
                                                    b_.CreateSub(i64(N), c0));
                // A plain product (a weight gradient) writes whole tiles straight from the
                // registers to its output; other tiles go through the epilogue.
                llvm::Value* direct = b_.getFalse();
                if (plain) direct = b_.CreateAnd(b_.CreateICmpEQ(rows, i64(MR)), b_.CreateICmpEQ(cols, i64(NR)));
                std::vector<llvm::Value*> callArgs = {
                    plain ? b_.CreateSelect(direct, at(lb.stores[0], b_.CreateAdd(b_.CreateMul(r0, i64(N)), c0)), tile) : tile,
                    b_.CreateSelect(direct, i64(N), i64(NR))};
                for (int64_t r = 0; r < MR; ++r) { // row r0 + r, the last row past M
                    llvm::Value* i = b_.CreateAdd(r0, i64(r));
                    i = b_.CreateSelect(b_.CreateICmpULT(i, i64(M)), i, i64(M - 1));
                    callArgs.push_back(b_.CreateGEP(T_, a, k.transA ? i : b_.CreateMul(i, i64(K))));
                }
                callArgs.push_back(i64(k.transA ? M : 1));
                llvm::Value* inPlace = b_.CreateICmpULT(jt, i64(packFrom));
                callArgs.push_back(b_.CreateSelect(inPlace, b_.CreateGEP(T_, b, c0),
                                                   b_.CreateGEP(T_, bp, b_.CreateMul(jt, i64(K * NR)))));
                callArgs.push_back(b_.CreateSelect(inPlace, i64(N), i64(NR)));
                callArgs.push_back(i64(K));
                b_.CreateCall(tile_, callArgs);
                if (plain) rows = b_.CreateSelect(direct, i64(0), rows);
                loopTo(rows, "er", [&](llvm::Value* r) {
                    loopTo(cols, "ec", [&](llvm::Value* c) {
                        llvm::Value* accv = load(tile, b_.CreateAdd(b_.CreateMul(r, i64(NR)), c));
                        element(k, lb, b_.CreateAdd(r0, r), b_.CreateAdd(c0, c), accv);
                    });
                });
            };
            if (byStrip) {
                loop(mt, "it", [&](llvm::Value* it) { one(u, it); });
            } else {
                one(b_.CreateUDiv(u, i64(mt)), b_.CreateURem(u, i64(mt)));
            }
          });
        };
        if (bl.threads <= 1) {
            tiles(i64(0), i64(units), i64(0));
            return;
        }
        // Outlined: body(context, begin, end, thread), run by gradc_parallel_for.
        auto* ptr = llvm::PointerType::get(ctx_, 0);
        llvm::Value* ctxArray = contextArray();
        llvm::Function* body = helper("gradc_tiles", {ptr, b_.getInt64Ty(), b_.getInt64Ty(), b_.getInt64Ty()}, [&] {
            for (unsigned i = 0; i < 7; ++i)
                args_[i] = b_.CreateLoad(ptr, b_.CreateConstGEP1_64(ptr, fn_->getArg(0), i));
            scratch(bp, tile); // the panel addresses, inside the outlined function
            tiles(fn_->getArg(1), fn_->getArg(2), fn_->getArg(3));
        });
        b_.CreateCall(parallelFor(), {body, ctxArray, i64(units), i64(bl.threads)});
    }

    /// Packs `tiles` panels with `packer`, on the thread pool when there is one.
    void pack(llvm::Function* packer, llvm::Value* dst, llvm::Value* src, int64_t dim, int64_t K, bool trans,
              int64_t first, int64_t tiles) {
        if (p_->blocking.threads <= 1 || tiles - first < 2) {
            b_.CreateCall(packer, {dst, src, i64(dim), i64(K), b_.getInt1(trans), i64(first), i64(tiles)});
            return;
        }
        // context: {dst, src, packer}; the sizes are constants of the body.
        auto* ptr = llvm::PointerType::get(ctx_, 0);
        auto* ctxTy = llvm::ArrayType::get(ptr, 2);
        llvm::IRBuilder<> eb(entryBlock_, entryBlock_->begin());
        llvm::Value* ctx = eb.CreateAlloca(ctxTy);
        b_.CreateStore(dst, b_.CreateConstGEP2_64(ctxTy, ctx, 0, 0));
        b_.CreateStore(src, b_.CreateConstGEP2_64(ctxTy, ctx, 0, 1));
        llvm::Function* body = helper("gradc_pack", {ptr, b_.getInt64Ty(), b_.getInt64Ty(), b_.getInt64Ty()}, [&] {
            llvm::Value* c = fn_->getArg(0);
            llvm::Value* d = b_.CreateLoad(ptr, b_.CreateConstGEP2_64(ctxTy, c, 0, 0));
            llvm::Value* sv = b_.CreateLoad(ptr, b_.CreateConstGEP2_64(ctxTy, c, 0, 1));
            b_.CreateCall(packer, {d, sv, i64(dim), i64(K), b_.getInt1(trans), b_.CreateAdd(fn_->getArg(1), i64(first)),
                                   b_.CreateAdd(fn_->getArg(2), i64(first))});
        });
        b_.CreateCall(parallelFor(), {body, ctx, i64(tiles - first), i64(p_->blocking.threads)});
    }

    /// gradc_parallel_for(body, context, n, threads): `threads` is the count the per-thread
    /// tiles in the scratch area were planned for, so no loop runs on more.
    llvm::FunctionCallee parallelFor() {
        auto* ptr = llvm::PointerType::get(ctx_, 0);
        auto* int64 = b_.getInt64Ty();
        return m_.getOrInsertFunction("gradc_parallel_for", llvm::FunctionType::get(b_.getVoidTy(), {ptr, ptr, int64, int64}, false));
    }

    /// The entry point's seven arguments in an array in its frame, for outlined loops.
    llvm::Value* contextArray() {
        if (context_) return context_;
        auto* ptr = llvm::PointerType::get(ctx_, 0);
        llvm::IRBuilder<> eb(entryBlock_, entryBlock_->begin());
        context_ = eb.CreateAlloca(llvm::ArrayType::get(ptr, 7));
        for (unsigned i = 0; i < 7; ++i) eb.CreateStore(fn_->getArg(i), eb.CreateConstGEP2_64(llvm::ArrayType::get(ptr, 7), context_, 0, i));
        return context_;
    }

    void softmaxCrossEntropy(const Kernel& k) {
        llvm::Value* z = base(k.in[0]);
        llvm::Value* labels = base(k.in[1]);
        llvm::Value* lossOut = k.out[0] >= 0 ? base(k.out[0]) : nullptr;
        llvm::Value* grad = k.out[1] >= 0 ? base(k.out[1]) : nullptr;
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

    void pairwiseLoss(const Kernel& k) {
        const bool bce = k.kind == Kernel::Kind::BCEWithLogits;
        llvm::Value* pred = base(k.in[0]);
        llvm::Value* target = base(k.in[1]);
        llvm::Value* lossOut = k.out[0] >= 0 ? base(k.out[0]) : nullptr;
        llvm::Value* grad = k.out[1] >= 0 ? base(k.out[1]) : nullptr;
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

    /// Batch normalisation and its gradients in passes over the rows, each vectorised across
    /// the columns; the per-column mean, 1/σ, Σg and Σg·x̂ live in the scratch area. Every
    /// column's sums run over the rows in order.
    void batchnorm(const Kernel& k) {
        llvm::Value* x = base(k.in[0]);
        llvm::Value* out = base(k.out[0]);
        const int64_t B = k.rows, N = k.cols;
        const double invB = 1.0 / double(B);
        llvm::Value* s = b_.CreateGEP(b_.getInt8Ty(), args_[6], i64(p_->scratchOffset));
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
};

} // namespace

std::unique_ptr<llvm::Module> lowerToLLVM(llvm::LLVMContext& ctx, const KernelProgram& forward,
                                          const KernelProgram& backward, bool f64, bool profile) {
    auto m = std::make_unique<llvm::Module>("gradc", ctx);
    Lowering lower(ctx, *m, f64, profile);
    lower.entry(forward, "gradc_forward");
    lower.entry(backward, "gradc_backward");
    lower.update();
    return m;
}

} // namespace gradc
