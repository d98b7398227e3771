// LowerScalar.cpp — scalar expressions (scalar::Expr, the element-wise algebra of fused
// kernels) to LLVM values, each distinct node once: arithmetic, comparisons and selects,
// math intrinsics and libm calls, the inline float exp and sigmoid that the losses also use;
// and the element-wise loop kernels that evaluate them at every [r, c] (also the epilogue
// of a matrix product, LowerGemm.cpp), with their column sums.
#include "Lowering.h"

namespace gradc {

namespace {

bool comparison(scalar::Kind op) {
    using scalar::Kind;
    return op == Kind::Lt || op == Kind::Le || op == Kind::Gt || op == Kind::Ge || op == Kind::Eq || op == Kind::Ne;
}

} // namespace

/// e^x. In double, the library's. In float, inline, so loops that use it vectorise at the
/// full width with no calls: x = n ln2 + r with |r| <= ln2/2 (ln2 in two parts, by exact
/// FMAs), e^r by a degree-7 polynomial (Cephes' expf coefficients, within about 1 ulp), and
/// 2^n from exponent bits in two halves, so that subnormal results come out right. Past
/// the float range: +Inf and 0; NaN stays NaN. No fast-math flags here: reassociating the
/// reduction would undo it.
llvm::Value* Lowering::exp(llvm::Value* x) {
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

llvm::Value* Lowering::sigmoid(llvm::Value* x) {
    // 1 / (1 + exp(-x)): exp overflows to +Inf for very negative x, giving exactly 0.
    return b_.CreateFDiv(fp(1), b_.CreateFAdd(fp(1), exp(b_.CreateFNeg(x))));
}

/// Lowers `e`, each distinct node once, operands first, without recursion (a DAG of
/// activation calls may be deep).
llvm::Value* Lowering::expr(const scalar::Expr& e, const std::vector<llvm::Value*>& args, Memo& memo) {
    scalar::postOrder(e, [&](const scalar::ExprNode& n) {
        if (!memo.value.count(&n)) memo.value[&n] = node(n, args, memo);
    });
    return memo.value.at(e.get());
}

llvm::Value* Lowering::node(const scalar::ExprNode& n, const std::vector<llvm::Value*>& args, Memo& memo) {
    using scalar::Kind;
    const scalar::ExprNode* e = &n;
    auto a = [&](size_t i) { return memo.value.at(e->args[i].get()); };
    if (comparison(e->op)) {
        static const std::pair<Kind, llvm::CmpInst::Predicate> preds[] = {
            {Kind::Lt, llvm::CmpInst::FCMP_OLT}, {Kind::Le, llvm::CmpInst::FCMP_OLE},
            {Kind::Gt, llvm::CmpInst::FCMP_OGT}, {Kind::Ge, llvm::CmpInst::FCMP_OGE},
            {Kind::Eq, llvm::CmpInst::FCMP_OEQ}, {Kind::Ne, llvm::CmpInst::FCMP_UNE}};
        for (auto [op, p] : preds)
            if (op == e->op) memo.cond[e] = b_.CreateFCmp(p, a(0), a(1));
        return b_.CreateUIToFP(memo.cond.at(e), T_);
    }
    llvm::Value* v = nullptr;
    switch (e->op) {
    case Kind::Const: v = fp(e->value); break;
    case Kind::Arg: v = args.at(size_t(e->value)); break;
    case Kind::Var: case Kind::Out: case Kind::Grad: case Kind::Param:
        internal_assert(false, "unbound variable in a kernel");
        break;
    case Kind::Add: v = b_.CreateFAdd(a(0), a(1)); break;
    case Kind::Sub: v = b_.CreateFSub(a(0), a(1)); break;
    case Kind::Mul: v = b_.CreateFMul(a(0), a(1)); break;
    case Kind::Div: v = b_.CreateFDiv(a(0), a(1)); break;
    case Kind::Neg: v = b_.CreateFNeg(a(0)); break;
    case Kind::Pow:
        if (e->args[1]->op == Kind::Const && e->args[1]->value == 2) {
            llvm::Value* x = a(0);
            v = b_.CreateFMul(x, x);
        } else {
            v = intrinsic(llvm::Intrinsic::pow, {a(0), a(1)});
        }
        break;
    case Kind::Lt: case Kind::Le: case Kind::Gt: case Kind::Ge: case Kind::Eq: case Kind::Ne: break;
    case Kind::Select: {
        const scalar::ExprNode* c = e->args[0].get();
        llvm::Value* cond = comparison(c->op) ? memo.cond.at(c)
                                              : b_.CreateFCmpUNE(a(0), fp(0)); // NaN counts as true
        v = b_.CreateSelect(cond, a(1), a(2));
        break;
    }
    case Kind::Exp: v = exp(a(0)); break;
    case Kind::Log: v = intrinsic(llvm::Intrinsic::log, {a(0)}); break;
    case Kind::Sqrt: v = intrinsic(llvm::Intrinsic::sqrt, {a(0)}); break;
    case Kind::Abs: v = intrinsic(llvm::Intrinsic::fabs, {a(0)}); break;
    // PyTorch's minimum and maximum: NaN if either operand is (minnum/maxnum drop it).
    case Kind::Min: v = intrinsic(llvm::Intrinsic::minimum, {a(0), a(1)}); break;
    case Kind::Max: v = intrinsic(llvm::Intrinsic::maximum, {a(0), a(1)}); break;
    case Kind::Tanh: v = libm("tanh", a(0)); break;
    case Kind::Erf: v = libm("erf", a(0)); break;
    case Kind::Sigmoid: v = sigmoid(a(0)); break;
    case Kind::Softplus: { // max(x, 0) + log1p(exp(-|x|))
        llvm::Value* x = a(0);
        llvm::Value* t = exp(b_.CreateFNeg(intrinsic(llvm::Intrinsic::fabs, {x})));
        v = b_.CreateFAdd(intrinsic(llvm::Intrinsic::maxnum, {x, fp(0)}), libm("log1p", t));
        break;
    }
    }
    return v;
}

Lowering::LoopBases Lowering::loopBases(const Kernel& k) {
    LoopBases lb;
    for (auto& a : k.args) lb.args.push_back(base(a.buffer)); // null for the accumulator
    for (auto& s : k.stores) lb.stores.push_back(base(s.buffer));
    for (auto& s : k.columnSums) lb.sums.push_back(base(s.buffer));
    for (auto& s : k.rowSums) lb.rowSums.push_back(base(s.buffer));
    return lb;
}

/// The element-wise part of a loop kernel at [o, r, c] (o null: a kernel without an outer
/// extent), the accumulator (if any) given.
void Lowering::element(const Kernel& k, const LoopBases& lb, llvm::Value* r, llvm::Value* c, llvm::Value* acc,
                       llvm::Value* o, const std::vector<llvm::Value*>* rowAcc) {
    llvm::Value* row = o ? b_.CreateAdd(b_.CreateMul(o, i64(k.rows)), r) : r; // of [outer rows, cols]
    llvm::Value* elem = b_.CreateAdd(b_.CreateMul(row, i64(k.cols)), c);
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
    for (size_t i = 0; i < k.rowSums.size(); ++i) {
        llvm::Value* v = expr(k.rowSums[i].expr, args, memo);
        if (rowAcc) {
            llvm::Value* slot = (*rowAcc)[i];
            b_.CreateStore(b_.CreateFAdd(b_.CreateLoad(T_, slot), v), slot);
        } else {
            store(b_.CreateFAdd(load(lb.rowSums[i], r), v), lb.rowSums[i], r);
        }
    }
}

void Lowering::loopKernel(const Kernel& k) {
    // [outer, rows, cols] (images): on the threads when there are several and the kernel is
    // large, in units of whole rows, so that no two threads write one element: a unit is one
    // row of one outer index, or with row sums one row of every outer index (its sum is the
    // unit's own). Column sums would be shared by every unit: such kernels run on one thread.
    // A unit's row sums add up in registers and are stored once at its end: in the outlined
    // loop the bases come from the context array, so the optimiser cannot tell the sums from
    // the stores and would keep them in memory, one load and store per element, unvectorised
    // (cnn_relu's relu-gradient masks ran 4-6x slower on two threads than on one).
    const bool threaded = k.a < 0 && k.outer != 1 && p_->blocking.threads > 1 && k.columnSums.empty() &&
                          k.outer * k.rows * k.cols >= (1 << 14);
    for (auto& s : k.columnSums) {
        llvm::Value* out = base(s.buffer);
        loop(k.cols, "zero", [&](llvm::Value* c) { store(fp(0), out, c); });
    }
    if (!threaded) // (threaded, each unit stores its row sums whole)
        for (auto& s : k.rowSums) {
            llvm::Value* out = base(s.buffer);
            loop(k.rows, "zero", [&](llvm::Value* r) { store(fp(0), out, r); });
        }
    if (k.a >= 0) {
        internal_assert(k.outer == 1 && k.rowSums.empty(), "a matrix product with an outer extent or row sums");
        return matrixProduct(k);
    }
    LoopBases lb = loopBases(k);
    if (k.outer == 1) {
        loop(k.rows, "r", [&](llvm::Value* r) { loop(k.cols, "c", [&](llvm::Value* c) { element(k, lb, r, c, nullptr); }); });
        return;
    }
    if (!threaded) {
        loop(k.outer, "o", [&](llvm::Value* o) {
            loop(k.rows, "r", [&](llvm::Value* r) { loop(k.cols, "c", [&](llvm::Value* c) { element(k, lb, r, c, nullptr, o); }); });
        });
        return;
    }
    const bool perRow = !k.rowSums.empty();
    parallel("gradc_rows", contextArray(), perRow ? k.rows : k.outer * k.rows,
             [&](llvm::Value* context, llvm::Value* begin, llvm::Value* end, llvm::Value*) {
                 loadContext(context);
                 LoopBases bases = loopBases(k);
                 loopTo(b_.CreateSub(end, begin), "u", [&](llvm::Value* u0) {
                     llvm::Value* u = b_.CreateAdd(begin, u0);
                     if (perRow) {
                         std::vector<llvm::Value*> accs;
                         for (size_t i = 0; i < k.rowSums.size(); ++i) accs.push_back(variable(T_, fp(0)));
                         loop(k.outer, "o", [&](llvm::Value* o) {
                             loop(k.cols, "c", [&](llvm::Value* c) { element(k, bases, u, c, nullptr, o, &accs); });
                         });
                         for (size_t i = 0; i < k.rowSums.size(); ++i) store(b_.CreateLoad(T_, accs[i]), bases.rowSums[i], u);
                     } else {
                         llvm::Value *o = b_.CreateUDiv(u, i64(k.rows)), *r = b_.CreateURem(u, i64(k.rows));
                         loop(k.cols, "c", [&](llvm::Value* c) { element(k, bases, r, c, nullptr, o); });
                     }
                 });
             });
}

} // namespace gradc
