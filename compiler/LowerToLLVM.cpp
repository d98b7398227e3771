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

#include <functional>
#include <map>

namespace gradc {
namespace {

class Lowering {
public:
    Lowering(llvm::LLVMContext& ctx, llvm::Module& m, bool f64)
        : ctx_(ctx), m_(m), b_(ctx), T_(f64 ? llvm::Type::getDoubleTy(ctx) : llvm::Type::getFloatTy(ctx)),
          f64_(f64) {
        fmf_.setAllowReassoc();
        fmf_.setAllowContract();
        b_.setFastMathFlags(fmf_);
    }

    void entry(const KernelProgram& p, const char* symbol) {
        auto* ptr = llvm::PointerType::get(ctx_, 0);
        auto* fnTy = llvm::FunctionType::get(b_.getVoidTy(), {ptr, ptr, ptr, ptr, ptr, ptr, ptr}, false);
        fn_ = llvm::Function::Create(fnTy, llvm::Function::ExternalLinkage, symbol, m_);
        fn_->addFnAttr(llvm::Attribute::NoUnwind);
        for (unsigned i = 0; i < 7; ++i) fn_->addParamAttr(i, llvm::Attribute::NoAlias);
        const char* names[] = {"params", "x", "target", "out0", "out1", "acts", "ws"};
        for (unsigned i = 0; i < 7; ++i) fn_->getArg(i)->setName(names[i]);
        entryBlock_ = llvm::BasicBlock::Create(ctx_, "entry", fn_);
        b_.SetInsertPoint(entryBlock_);
        p_ = &p;
        backward_ = std::string(symbol).find("backward") != std::string::npos;
        for (const Kernel& k : p.kernels) kernel(k);
        b_.CreateRetVoid();
    }

private:
    llvm::LLVMContext& ctx_;
    llvm::Module& m_;
    llvm::IRBuilder<> b_;
    llvm::Type* T_;
    bool f64_;
    llvm::FastMathFlags fmf_;
    llvm::Function* fn_ = nullptr;
    llvm::BasicBlock* entryBlock_ = nullptr;
    const KernelProgram* p_ = nullptr;
    bool backward_ = false;

    llvm::Value* i64(int64_t v) { return b_.getInt64(uint64_t(v)); }
    llvm::Value* fp(double v) { return llvm::ConstantFP::get(T_, v); }

    /// The base address of a buffer.
    llvm::Value* base(int32_t id) {
        const Buffer& buf = p_->buffers[size_t(id)];
        llvm::Type* i8 = b_.getInt8Ty();
        switch (buf.kind) {
        case Buffer::Kind::Param: return b_.CreateGEP(T_, fn_->getArg(0), i64(buf.offset));
        case Buffer::Kind::Input: return fn_->getArg(1);
        case Buffer::Kind::Target: return fn_->getArg(2);
        case Buffer::Kind::Logits: return fn_->getArg(3);
        case Buffer::Kind::Loss: return fn_->getArg(backward_ ? 3 : 4);
        case Buffer::Kind::Grad: return b_.CreateGEP(T_, fn_->getArg(4), i64(buf.offset));
        case Buffer::Kind::Activation: return b_.CreateGEP(T_, fn_->getArg(5), i64(buf.offset));
        case Buffer::Kind::Temp: return b_.CreateGEP(i8, fn_->getArg(6), i64(buf.offset));
        }
        return nullptr;
    }
    llvm::Value* at(llvm::Value* basePtr, llvm::Value* index) { return b_.CreateGEP(T_, basePtr, index); }
    llvm::Value* load(llvm::Value* basePtr, llvm::Value* index) { return b_.CreateLoad(T_, at(basePtr, index)); }
    void store(llvm::Value* v, llvm::Value* basePtr, llvm::Value* index) { b_.CreateStore(v, at(basePtr, index)); }

    /// for (i = 0; i < n; ++i) body(i)
    void loop(int64_t n, const char* name, const std::function<void(llvm::Value*)>& body) {
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
        b_.CreateCondBr(b_.CreateICmpULT(next, i64(n)), header, exit);
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

    llvm::Value* sigmoid(llvm::Value* x) {
        // 1 / (1 + exp(-x)): exp overflows to +Inf for very negative x, giving exactly 0.
        return b_.CreateFDiv(fp(1), b_.CreateFAdd(fp(1), intrinsic(llvm::Intrinsic::exp, {b_.CreateFNeg(x)})));
    }

    using Memo = std::map<const scalar::Node*, llvm::Value*>;

    llvm::Value* condition(const scalar::E& e, const std::vector<llvm::Value*>& args, Memo& memo) {
        using scalar::Op;
        auto cmp = [&](llvm::CmpInst::Predicate p) {
            return b_.CreateFCmp(p, expr(e->args[0], args, memo), expr(e->args[1], args, memo));
        };
        switch (e->op) {
        case Op::Lt: return cmp(llvm::CmpInst::FCMP_OLT);
        case Op::Le: return cmp(llvm::CmpInst::FCMP_OLE);
        case Op::Gt: return cmp(llvm::CmpInst::FCMP_OGT);
        case Op::Ge: return cmp(llvm::CmpInst::FCMP_OGE);
        case Op::Eq: return cmp(llvm::CmpInst::FCMP_OEQ);
        case Op::Ne: return cmp(llvm::CmpInst::FCMP_UNE);
        default: return b_.CreateFCmpUNE(expr(e, args, memo), fp(0)); // NaN counts as true
        }
    }

    llvm::Value* expr(const scalar::E& e, const std::vector<llvm::Value*>& args, Memo& memo) {
        auto it = memo.find(e.get());
        if (it != memo.end()) return it->second;
        using scalar::Op;
        auto a = [&](size_t i) { return expr(e->args[i], args, memo); };
        llvm::Value* v = nullptr;
        switch (e->op) {
        case Op::Const: v = fp(e->value); break;
        case Op::Arg: v = args.at(size_t(e->value)); break;
        case Op::Var: case Op::Out: internal_assert(false, "unbound variable in a kernel"); break;
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
        case Op::Lt: case Op::Le: case Op::Gt: case Op::Ge: case Op::Eq: case Op::Ne:
            v = b_.CreateUIToFP(condition(e, args, memo), T_);
            break;
        case Op::Select: v = b_.CreateSelect(condition(e->args[0], args, memo), a(1), a(2)); break;
        case Op::Exp: v = intrinsic(llvm::Intrinsic::exp, {a(0)}); break;
        case Op::Log: v = intrinsic(llvm::Intrinsic::log, {a(0)}); break;
        case Op::Sqrt: v = intrinsic(llvm::Intrinsic::sqrt, {a(0)}); break;
        case Op::Abs: v = intrinsic(llvm::Intrinsic::fabs, {a(0)}); break;
        case Op::Min: v = intrinsic(llvm::Intrinsic::minnum, {a(0), a(1)}); break;
        case Op::Max: v = intrinsic(llvm::Intrinsic::maxnum, {a(0), a(1)}); break;
        case Op::Tanh: v = libm("tanh", a(0)); break;
        case Op::Erf: v = libm("erf", a(0)); break;
        case Op::Sigmoid: v = sigmoid(a(0)); break;
        case Op::Softplus: { // max(x, 0) + log1p(exp(-|x|))
            llvm::Value* x = a(0);
            llvm::Value* t = intrinsic(llvm::Intrinsic::exp, {b_.CreateFNeg(intrinsic(llvm::Intrinsic::fabs, {x}))});
            v = b_.CreateFAdd(intrinsic(llvm::Intrinsic::maxnum, {x, fp(0)}), libm("log1p", t));
            break;
        }
        }
        memo[e.get()] = v;
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

    void loopKernel(const Kernel& k) {
        std::vector<llvm::Value*> bases;
        for (auto& s : k.columnSums) {
            llvm::Value* out = base(s.buffer);
            loop(k.cols, "zero", [&](llvm::Value* c) { store(fp(0), out, c); });
        }
        llvm::Value* aBase = k.a >= 0 ? base(k.a) : nullptr;
        llvm::Value* bBase = k.b >= 0 ? base(k.b) : nullptr;
        llvm::Value* scratch = b_.CreateGEP(b_.getInt8Ty(), fn_->getArg(6), i64(p_->scratchOffset));
        std::vector<llvm::Value*> argBase;
        for (auto& a : k.args) argBase.push_back(a.buffer >= 0 ? base(a.buffer) : nullptr);
        std::vector<llvm::Value*> storeBase, sumBase;
        for (auto& s : k.stores) storeBase.push_back(base(s.buffer));
        for (auto& s : k.columnSums) sumBase.push_back(base(s.buffer));
        // A(r, k) of the product, for either layout.
        auto aAt = [&](llvm::Value* r, llvm::Value* kk) {
            return k.transA ? load(aBase, b_.CreateAdd(b_.CreateMul(kk, i64(k.rows)), r))
                            : load(aBase, b_.CreateAdd(b_.CreateMul(r, i64(k.depth)), kk));
        };
        loop(k.rows, "r", [&](llvm::Value* r) {
            if (k.a >= 0 && !k.transB) {
                // acc[r, :] = Σ_k A(r,k) B[k, :]: rows of B are contiguous, so the inner loop
                // runs along them.
                loop(k.cols, "z", [&](llvm::Value* c) { store(fp(0), scratch, c); });
                loop(k.depth, "k", [&](llvm::Value* kk) {
                    llvm::Value* av = aAt(r, kk);
                    llvm::Value* row = b_.CreateMul(kk, i64(k.cols));
                    loop(k.cols, "c", [&](llvm::Value* c) {
                        llvm::Value* s = load(scratch, c);
                        store(b_.CreateFAdd(s, b_.CreateFMul(av, load(bBase, b_.CreateAdd(row, c)))), scratch, c);
                    });
                });
            }
            loop(k.cols, "c", [&](llvm::Value* c) {
                llvm::Value* elem = b_.CreateAdd(b_.CreateMul(r, i64(k.cols)), c);
                llvm::Value* acc = nullptr;
                if (k.a >= 0 && k.transB) { // a dot product along contiguous rows of A and B
                    llvm::Value* sum = variable(T_, fp(0));
                    llvm::Value* brow = b_.CreateMul(c, i64(k.depth));
                    loop(k.depth, "k", [&](llvm::Value* kk) {
                        llvm::Value* prod = b_.CreateFMul(aAt(r, kk), load(bBase, b_.CreateAdd(brow, kk)));
                        b_.CreateStore(b_.CreateFAdd(b_.CreateLoad(T_, sum), prod), sum);
                    });
                    acc = b_.CreateLoad(T_, sum);
                } else if (k.a >= 0) {
                    acc = load(scratch, c);
                }
                std::vector<llvm::Value*> args;
                for (size_t i = 0; i < k.args.size(); ++i) {
                    switch (k.args[i].mode) {
                    case Access::Mode::Acc: args.push_back(acc); break;
                    case Access::Mode::Elem: args.push_back(load(argBase[i], elem)); break;
                    case Access::Mode::Col: args.push_back(load(argBase[i], c)); break;
                    case Access::Mode::Row: args.push_back(load(argBase[i], r)); break;
                    }
                }
                Memo memo;
                for (size_t i = 0; i < k.stores.size(); ++i)
                    store(expr(k.stores[i].expr, args, memo), storeBase[i], elem);
                for (size_t i = 0; i < k.columnSums.size(); ++i) {
                    llvm::Value* v = expr(k.columnSums[i].expr, args, memo);
                    store(b_.CreateFAdd(load(sumBase[i], c), v), sumBase[i], c);
                }
            });
        });
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
                llvm::Value* e = intrinsic(llvm::Intrinsic::exp, {b_.CreateFSub(load(z, b_.CreateAdd(row, c)), m)});
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
                    llvm::Value* p = b_.CreateFMul(intrinsic(llvm::Intrinsic::exp, {b_.CreateFSub(load(z, idx), m)}), inv);
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
                llvm::Value* e = intrinsic(llvm::Intrinsic::exp, {b_.CreateFNeg(intrinsic(llvm::Intrinsic::fabs, {z}))});
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

    void batchnorm(const Kernel& k) {
        llvm::Value* x = base(k.in[0]);
        llvm::Value* out = base(k.out[0]);
        const double invB = 1.0 / double(k.rows);
        loop(k.cols, "c", [&](llvm::Value* c) {
            auto xAt = [&](llvm::Value* r) { return load(x, b_.CreateAdd(b_.CreateMul(r, i64(k.cols)), c)); };
            llvm::Value* sum = variable(T_, fp(0));
            loop(k.rows, "r", [&](llvm::Value* r) { b_.CreateStore(b_.CreateFAdd(b_.CreateLoad(T_, sum), xAt(r)), sum); });
            llvm::Value* mean = b_.CreateFMul(b_.CreateLoad(T_, sum), fp(invB));
            llvm::Value* sq = variable(T_, fp(0));
            loop(k.rows, "r", [&](llvm::Value* r) {
                llvm::Value* d = b_.CreateFSub(xAt(r), mean);
                b_.CreateStore(b_.CreateFAdd(b_.CreateLoad(T_, sq), b_.CreateFMul(d, d)), sq);
            });
            llvm::Value* var = b_.CreateFMul(b_.CreateLoad(T_, sq), fp(invB)); // biased, as PyTorch
            llvm::Value* inv = b_.CreateFDiv(fp(1), intrinsic(llvm::Intrinsic::sqrt, {b_.CreateFAdd(var, fp(k.eps))}));
            auto xhat = [&](llvm::Value* r) { return b_.CreateFMul(b_.CreateFSub(xAt(r), mean), inv); };
            if (k.kind == Kernel::Kind::BatchNorm) {
                llvm::Value* gamma = load(base(k.in[1]), c);
                llvm::Value* beta = load(base(k.in[2]), c);
                loop(k.rows, "r", [&](llvm::Value* r) {
                    store(b_.CreateFAdd(b_.CreateFMul(xhat(r), gamma), beta), out,
                          b_.CreateAdd(b_.CreateMul(r, i64(k.cols)), c));
                });
                return;
            }
            llvm::Value* dy = base(k.in[k.kind == Kernel::Kind::BatchNormGradX ? 2 : 1]);
            auto dyAt = [&](llvm::Value* r) { return load(dy, b_.CreateAdd(b_.CreateMul(r, i64(k.cols)), c)); };
            llvm::Value* sg = variable(T_, fp(0));
            llvm::Value* sgx = variable(T_, fp(0));
            loop(k.rows, "r", [&](llvm::Value* r) {
                llvm::Value* g = dyAt(r);
                b_.CreateStore(b_.CreateFAdd(b_.CreateLoad(T_, sg), g), sg);
                b_.CreateStore(b_.CreateFAdd(b_.CreateLoad(T_, sgx), b_.CreateFMul(g, xhat(r))), sgx);
            });
            if (k.kind == Kernel::Kind::BatchNormGradGamma) {
                store(b_.CreateLoad(T_, sgx), out, c);
                return;
            }
            // dx = gamma / (B sigma) (B dy - Σdy - x̂ Σ(dy x̂))
            llvm::Value* scale = b_.CreateFMul(load(base(k.in[1]), c), b_.CreateFMul(inv, fp(invB)));
            llvm::Value* sumG = b_.CreateLoad(T_, sg);
            llvm::Value* sumGX = b_.CreateLoad(T_, sgx);
            loop(k.rows, "r", [&](llvm::Value* r) {
                llvm::Value* inner = b_.CreateFSub(b_.CreateFSub(b_.CreateFMul(fp(double(k.rows)), dyAt(r)), sumG),
                                                   b_.CreateFMul(xhat(r), sumGX));
                store(b_.CreateFMul(scale, inner), out, b_.CreateAdd(b_.CreateMul(r, i64(k.cols)), c));
            });
        });
    }
};

} // namespace

std::unique_ptr<llvm::Module> lowerToLLVM(llvm::LLVMContext& ctx, const KernelProgram& forward,
                                          const KernelProgram& backward, bool f64) {
    auto m = std::make_unique<llvm::Module>("gradc", ctx);
    Lowering lower(ctx, *m, f64);
    lower.entry(forward, "gradc_forward");
    lower.entry(backward, "gradc_backward");
    return m;
}

} // namespace gradc
