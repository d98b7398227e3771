// LowerGemm.cpp — matrix products: acc = A · B by register tiles, each tile followed by its
// kernel's fused element-wise epilogue (LowerScalar.cpp) while it is in cache, on the
// thread pool when the blocking plans for more than one thread. Three helpers are shared by
// every product of the module (one copy of the code each, so compile time does not grow
// with the number of layers):
//   gradc_pack_b(dst, b, N, K, transB, first, end): B's panels into [K][NR], zero past column N
//   gradc_pack_a(dst, a, M, K, -, first, end): a transposed A's row tiles into [K][MR] panels
//   gradc_tile(out, a rows..., aStride, b, bStride, K, add): out[MR][NR] = (or +=) the
//   product, in registers
// Each product kernel packs what it must, then runs its tiles, in K blocks when it is deeper
// than the blocking's KC, and its own epilogue; in N blocks (planProduct's packByStrip) each
// thread packs a strip of B into its own panel right before the strip's tiles. The register tile and the cache blocking
// (GemmBlocking) are chosen by blockingFor and chooseTile (Codegen.cpp).
#include "Lowering.h"

#include <fmt/format.h>

namespace gradc {

void Lowering::declareGemmHelpers() {
    if (tile_) return;
    const GemmBlocking& bl = p_->blocking;
    const int64_t MR = bl.mr, NR = bl.nr(), VL = bl.vl;
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* i64t = b_.getInt64Ty();
    auto* i1t = b_.getInt1Ty();
    auto param = [&](unsigned i) { return fn_->getArg(i); }; // of the helper being emitted
    packB_ = helper("gradc_pack_b", {ptr, ptr, i64t, i64t, i1t, i64t, i64t}, [&] {
        llvm::Value *dst = param(0), *b = param(1), *N = param(2), *K = param(3), *trans = param(4);
        auto* vecTy = llvm::FixedVectorType::get(T_, unsigned(VL));
        // A transposed B's panel is a transpose: VL x VL blocks through registers (VL
        // rows loaded, transposed by shuffles, VL panel rows stored), the rest of K below.
        // The NV blocks of a panel's VL rows of K are a loop, not unrolled: one VL x VL
        // transpose's shuffles are most of this function's machine code time.
        auto blocks = [&](llvm::Value* jt) {
            loopTo(b_.CreateUDiv(K, i64(VL)), "kb", [&](llvm::Value* kb) {
                llvm::Value* k0 = b_.CreateMul(kb, i64(VL));
                loop(bl.nv, "v", [&](llvm::Value* v) {
                    llvm::Value* vAt = b_.CreateMul(v, i64(VL));
                    std::vector<llvm::Value*> rows;
                    for (int64_t jj = 0; jj < VL; ++jj) { // rows past N repeat the last one
                        llvm::Value* j = b_.CreateAdd(b_.CreateMul(jt, i64(NR)), b_.CreateAdd(vAt, i64(jj)));
                        j = b_.CreateSelect(b_.CreateICmpULT(j, N), j, b_.CreateSub(N, i64(1)));
                        rows.push_back(b_.CreateAlignedLoad(vecTy, at(b, b_.CreateAdd(b_.CreateMul(j, K), k0)),
                                                            llvm::Align(f64_ ? 8 : 4)));
                    }
                    transpose(rows);
                    for (int64_t kk = 0; kk < VL; ++kk) {
                        llvm::Value* row = b_.CreateAdd(b_.CreateMul(jt, K), b_.CreateAdd(k0, i64(kk)));
                        b_.CreateAlignedStore(rows[size_t(kk)], at(dst, b_.CreateAdd(b_.CreateMul(row, i64(NR)), vAt)),
                                              llvm::Align(size_t(VL) * (f64_ ? 8 : 4)));
                    }
                }, /*vectorise=*/false);
            });
        };
        // B's rows as they are: row by row, each row's panels in turn, so the reads run
        // along the rows (panel by panel, each step of K would touch another page).
        auto rows = [&] {
            loopTo(K, "k", [&](llvm::Value* kk) {
                loopTo(b_.CreateSub(param(6), param(5)), "jt", [&](llvm::Value* jt0) {
                    llvm::Value* jt = b_.CreateAdd(param(5), jt0);
                    llvm::Value* c0 = b_.CreateMul(jt, i64(NR));
                    llvm::Value* from = b_.CreateAdd(b_.CreateMul(kk, N), c0);
                    llvm::Value* to = b_.CreateMul(b_.CreateAdd(b_.CreateMul(jt, K), kk), i64(NR));
                    auto* whole = llvm::BasicBlock::Create(ctx_, "whole", fn_);
                    auto* part = llvm::BasicBlock::Create(ctx_, "part", fn_);
                    auto* next = llvm::BasicBlock::Create(ctx_, "next", fn_);
                    b_.CreateCondBr(b_.CreateICmpULE(b_.CreateAdd(c0, i64(NR)), N), whole, part);
                    b_.SetInsertPoint(whole); // a whole panel's row: NR contiguous elements
                    loop(NR, "c", [&](llvm::Value* c) { store(load(b, b_.CreateAdd(from, c)), dst, b_.CreateAdd(to, c)); });
                    b_.CreateBr(next);
                    b_.SetInsertPoint(part); // the last panel: zero past N
                    loop(NR, "c", [&](llvm::Value* c) {
                        llvm::Value* inside = b_.CreateICmpULT(b_.CreateAdd(c0, c), N);
                        llvm::Value* src = b_.CreateSelect(inside, b_.CreateAdd(from, c), i64(0));
                        store(b_.CreateSelect(inside, load(b, src), fp(0)), dst, b_.CreateAdd(to, c));
                    }, /*vectorise=*/false);
                    b_.CreateBr(next);
                    b_.SetInsertPoint(next);
                });
            });
        };
        // A transposed B: VL x VL blocks through registers, then the rest of K element by
        // element (rows past N zero).
        auto transposed = [&] {
            loopTo(b_.CreateSub(param(6), param(5)), "jt", [&](llvm::Value* jt0) {
                llvm::Value* jt = b_.CreateAdd(param(5), jt0);
                blocks(jt);
                llvm::Value* kFirst = b_.CreateMul(b_.CreateUDiv(K, i64(VL)), i64(VL));
                loopTo(b_.CreateSub(K, kFirst), "k", [&](llvm::Value* k0) {
                    llvm::Value* kk = b_.CreateAdd(kFirst, k0);
                    loop(NR, "c", [&](llvm::Value* c) {
                        llvm::Value* j = b_.CreateAdd(b_.CreateMul(jt, i64(NR)), c);
                        llvm::Value* inside = b_.CreateICmpULT(j, N);
                        llvm::Value* sj = b_.CreateSelect(inside, j, i64(0));
                        llvm::Value* d = b_.CreateAdd(b_.CreateMul(b_.CreateAdd(b_.CreateMul(jt, K), kk), i64(NR)), c);
                        store(b_.CreateSelect(inside, load(b, b_.CreateAdd(b_.CreateMul(sj, K), kk)), fp(0)), dst, d);
                    }, /*vectorise=*/false); // it would need gathers
                });
            });
        };
        ifElse(trans, transposed, rows, {"transposed", "rows", "done"});
    });
    // A transposed A's row tiles into [K][MR] panels, the rows past M repeating the last:
    // gradc_pack_a(dst, a, M, K, -, first, end), with `a` the [K][M] matrix.
    packA_ = helper("gradc_pack_a", {ptr, ptr, i64t, i64t, i1t, i64t, i64t}, [&] {
        llvm::Value *dst = param(0), *a = param(1), *M = param(2), *K = param(3);
        loopTo(b_.CreateSub(param(6), param(5)), "it", [&](llvm::Value* it0) {
            llvm::Value* it = b_.CreateAdd(param(5), it0);
            loopTo(K, "k", [&](llvm::Value* kk) {
                loop(MR, "r", [&](llvm::Value* r) {
                    llvm::Value* i = b_.CreateAdd(b_.CreateMul(it, i64(MR)), r);
                    i = b_.CreateSelect(b_.CreateICmpULT(i, M), i, b_.CreateSub(M, i64(1)));
                    llvm::Value* d = b_.CreateAdd(b_.CreateMul(b_.CreateAdd(b_.CreateMul(it, K), kk), i64(MR)), r);
                    store(load(a, b_.CreateAdd(b_.CreateMul(kk, M), i)), dst, d);
                });
            });
        });
    });
    tile_ = makeTile("gradc_tile", MR, MR, p_->blocking.nv);
}

// tile(out, outStride, a_0 .. a_{MR-1}, aStride, b, bStride, K, add): row r of A is
// a_r[k * aStride]; B's NR columns at step k start at b[k * bStride]; row r of the result
// goes to out[r * outStride], or is added to it when `add` (a later K block). A tile of
// `rows` < MR computes and stores only its first `rows` rows (the a_r past them unread).
llvm::Function* Lowering::makeTile(const char* name, int64_t rows, int64_t MR, int64_t NV) {
    const int64_t VL = p_->blocking.vl;
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* i64t = b_.getInt64Ty();
    auto* i1t = b_.getInt1Ty();
    auto param = [&](unsigned i) { return fn_->getArg(i); }; // of the helper being emitted
    std::vector<llvm::Type*> tileArgs = {ptr, i64t};
    for (int64_t r = 0; r < MR; ++r) tileArgs.push_back(ptr);
    for (llvm::Type* t : {(llvm::Type*)i64t, (llvm::Type*)ptr, (llvm::Type*)i64t, (llvm::Type*)i64t, (llvm::Type*)i1t})
        tileArgs.push_back(t);
    return helper(name, tileArgs, [&] {
        llvm::Value *out = param(0), *outStride = param(1);
        llvm::Value *aStride = param(unsigned(MR + 2)), *bPanel = param(unsigned(MR + 3)), *bStride = param(unsigned(MR + 4)),
                    *K = param(unsigned(MR + 5)), *add = param(unsigned(MR + 6));
        auto* vecTy = llvm::FixedVectorType::get(T_, unsigned(VL));
        const llvm::Align elementAlign(f64_ ? 8 : 4);
        llvm::Function* fma = llvm::Intrinsic::getDeclaration(&m_, llvm::Intrinsic::fmuladd, {vecTy});
        auto outAt = [&](int64_t r, int64_t v) {
            return b_.CreateGEP(T_, out, b_.CreateAdd(b_.CreateMul(i64(r), outStride), i64(v * VL)));
        };
        // MR x NV accumulators stay in vector registers over all of K; they start at zero,
        // or at the sums of the earlier K blocks.
        std::vector<llvm::Value*> acc;
        for (int64_t i = 0; i < rows * NV; ++i) acc.push_back(variable(vecTy, llvm::Constant::getNullValue(vecTy)));
        auto* addBlock = llvm::BasicBlock::Create(ctx_, "add", fn_);
        auto* start = llvm::BasicBlock::Create(ctx_, "start", fn_);
        b_.CreateCondBr(add, addBlock, start);
        b_.SetInsertPoint(addBlock);
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t v = 0; v < NV; ++v)
                b_.CreateStore(b_.CreateAlignedLoad(vecTy, outAt(r, v), elementAlign), acc[size_t(r * NV + v)]);
        b_.CreateBr(start);
        b_.SetInsertPoint(start);
        loopTo(K, "k", [&](llvm::Value* kk) {
            std::vector<llvm::Value*> bv;
            llvm::Value* bRow = b_.CreateMul(kk, bStride);
            for (int64_t v = 0; v < NV; ++v)
                bv.push_back(b_.CreateAlignedLoad(vecTy, b_.CreateGEP(T_, bPanel, b_.CreateAdd(bRow, i64(v * VL))),
                                                  elementAlign));
            llvm::Value* aAt = b_.CreateMul(kk, aStride);
            for (int64_t r = 0; r < rows; ++r) {
                llvm::Value* splat = b_.CreateVectorSplat(unsigned(VL), load(param(unsigned(2 + r)), aAt));
                for (int64_t v = 0; v < NV; ++v) {
                    llvm::Value* slot = acc[size_t(r * NV + v)];
                    b_.CreateStore(b_.CreateCall(fma, {splat, bv[size_t(v)], b_.CreateLoad(vecTy, slot)}), slot);
                }
            }
        });
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t v = 0; v < NV; ++v)
                b_.CreateAlignedStore(b_.CreateLoad(vecTy, acc[size_t(r * NV + v)]), outAt(r, v), elementAlign);
    });
}

llvm::Function* Lowering::tileRows(int64_t rows) { return tileOf(p_->blocking.mr, p_->blocking.nv, rows); }

llvm::Function* Lowering::tileOf(int64_t mr, int64_t nv, int64_t rows) {
    const GemmBlocking& bl = p_->blocking;
    if (mr == bl.mr && nv == bl.nv && rows == mr) return tile_;
    llvm::Function*& f = edgeTiles_[{mr, nv, rows}];
    if (!f) {
        const std::string name = mr == bl.mr && nv == bl.nv ? fmt::format("gradc_tile_{}", rows)
                                                            : fmt::format("gradc_tile_{}x{}_{}", mr, nv, rows);
        f = makeTile(name.c_str(), rows, mr, nv);
    }
    return f;
}

void Lowering::gemmProbe(const KernelProgram& p, const std::string& name) {
    p_ = &p;
    declareGemmHelpers();
    const int64_t MR = p.blocking.mr, NR = p.blocking.nr();
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* i64t = b_.getInt64Ty();
    fn_ = llvm::Function::Create(llvm::FunctionType::get(b_.getVoidTy(), {ptr, ptr, ptr, i64t, i64t}, false),
                                 llvm::Function::ExternalLinkage, name, m_);
    vectorWidth(fn_);
    entryBlock_ = llvm::BasicBlock::Create(ctx_, "entry", fn_);
    b_.SetInsertPoint(entryBlock_);
    llvm::Value *a = fn_->getArg(0), *bPanel = fn_->getArg(1), *out = fn_->getArg(2), *K = fn_->getArg(3);
    loopTo(fn_->getArg(4), "rep", [&](llvm::Value*) {
        std::vector<llvm::Value*> callArgs = {out, i64(NR)};
        for (int64_t r = 0; r < MR; ++r) callArgs.push_back(b_.CreateGEP(T_, a, b_.CreateMul(K, i64(r))));
        for (llvm::Value* v : {i64(1), bPanel, i64(NR), K, (llvm::Value*)b_.getFalse()}) callArgs.push_back(v);
        b_.CreateCall(tile_, callArgs);
    });
    b_.CreateRetVoid();
}

/// Transposes the square matrix whose rows are `r` (vectors as long as there are rows, a
/// power of two): log2(n) rounds, each swapping the off-diagonal blocks of size `step`.
void Lowering::transpose(std::vector<llvm::Value*>& r) {
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

/// acc = A · B by register tiles, then the element-wise epilogue on each tile while it is
/// in cache. A is read in place (each tile broadcasts from MR rows of it, the last rows
/// repeated past M). B is read in place where its NR columns are contiguous (B not
/// transposed, a whole panel, a product not blocked); otherwise its panels are packed
/// first: [K][NR], zero past N.
///
/// The work is split into units, each a block of up to MC rows of one strip of NR columns
/// (a product with column sums: a whole strip, its row blocks in turn). A product no
/// deeper than the blocking's kc has MC = MR: one tile over all of K, its epilogue right
/// after. A deeper one runs its K blocks in turn over every tile of the unit, the sums
/// kept in the thread's block in the scratch area (a plain product's whole tiles: in its
/// output), so the B micro-panel of a K block (KC x NR) stays in L2 across the unit's
/// tiles; the epilogue runs after the last K block.
void Lowering::matrixProduct(const Kernel& k) {
    declareGemmHelpers();
    const GemmBlocking& bl = p_->blocking;
    const ProductPlan plan = planProduct(k, bl);
    const int64_t M = k.rows, N = k.cols, K = k.depth, MR = bl.mr, NR = bl.nr();
    const int64_t mt = plan.rowTiles, nt = plan.colPanels;
    const int64_t KC = plan.kc, kBlocks = plan.kBlocks;
    const int64_t MC = plan.mc, perBlock = MC / MR, mBlocks = (mt + perBlock - 1) / perBlock;
    const int64_t packFrom = plan.packFrom;
    const bool packA = plan.packA;
    auto scratch = [&](llvm::Value*& bp, llvm::Value*& ap, llvm::Value*& tile) {
        bp = scratchArea(); // packed B first, then packed A, then the sums blocks
        ap = b_.CreateGEP(T_, bp, i64(plan.aAt));
        tile = b_.CreateGEP(T_, ap, i64(plan.sumsAt - plan.aAt));
    };
    llvm::Value *bp, *ap, *tile;
    scratch(bp, ap, tile);
    if (packFrom < nt && !plan.packByStrip) pack(packB_, bp, base(k.b), N, K, k.transB, packFrom, nt);
    if (packA) pack(packA_, ap, base(k.a), M, K, true, 0, mt);
    // The units, as a function of a range of unit numbers and a thread number, so threads
    // can share them: column sums accumulate across the rows of tiles, so a kernel with
    // any runs its column strips (whole jt) on one thread each.
    const bool byStrip = !k.columnSums.empty() || plan.packByStrip;
    const bool plain = k.columnSums.empty() && k.stores.size() == 1 && k.stores[0].expr->op == scalar::Kind::Arg &&
                       k.args[size_t(k.stores[0].expr->value)].mode == Access::Mode::Acc;
    const int64_t units = byStrip ? nt : nt * mBlocks;
    // The units of a shallow product whose B is small (it stays in L2 across the row blocks)
    // and whose output is not, in row-block order, every strip of one row block before the
    // next: the output is then written a block of whole rows at a time, not one strip of NR
    // columns down all M rows and then the next (seq_lstm's input projection, M 7168, N 512,
    // K 28: 8.8% -> 5.7% of the step, one thread, Zen 4).
    const bool rowsFirst = !byStrip && kBlocks == 1 && K * N * p_->elementBytes <= bl.smallB &&
                           M * N * p_->elementBytes >= bl.largeOutput;
    auto tiles = [&](llvm::Value* begin, llvm::Value* end, llvm::Value* thread) {
      llvm::Value* myBlock = b_.CreateGEP(T_, tile, b_.CreateMul(thread, i64(MC * NR)));
      // N blocked: this thread's panel of one strip, K x NR.
      llvm::Value* myPanel = plan.packByStrip ? b_.CreateGEP(T_, bp, b_.CreateMul(thread, i64(plan.stripAt))) : bp;
      llvm::Value* a = base(k.a);
      llvm::Value* b = base(k.b);
      loopTo(b_.CreateSub(end, begin), "u", [&](llvm::Value* u0) {
        llvm::Value* u = b_.CreateAdd(begin, u0);
        // Row block `ib` of strip `jt`: its tiles' sums over every K block, then their epilogues.
        auto unit = [&](llvm::Value* jt, llvm::Value* ib) {
            LoopBases lb = loopBases(k);
            llvm::Value* c0 = b_.CreateMul(jt, i64(NR));
            llvm::Value* cols = b_.CreateSelect(b_.CreateICmpULE(b_.CreateAdd(c0, i64(NR)), i64(N)), i64(NR),
                                                b_.CreateSub(i64(N), c0));
            llvm::Value* firstTile = b_.CreateMul(ib, i64(perBlock));
            llvm::Value* count = perBlock == 1 ? i64(1)
                                               : b_.CreateSelect(b_.CreateICmpULE(b_.CreateAdd(firstTile, i64(perBlock)), i64(mt)),
                                                                 i64(perBlock), b_.CreateSub(i64(mt), firstTile));
            // Tile t of the block: its first row, its rows, and whether it goes straight to
            // the output (a plain product's whole tile) rather than through the epilogue.
            struct Tile {
                llvm::Value *r0, *rows, *direct, *sums;
            };
            auto tileAt = [&](llvm::Value* t) {
                Tile x;
                x.r0 = b_.CreateMul(b_.CreateAdd(firstTile, t), i64(MR));
                x.rows = b_.CreateSelect(b_.CreateICmpULE(b_.CreateAdd(x.r0, i64(MR)), i64(M)), i64(MR),
                                         b_.CreateSub(i64(M), x.r0));
                x.direct = b_.getFalse();
                if (plain) x.direct = b_.CreateAnd(b_.CreateICmpEQ(x.rows, i64(MR)), b_.CreateICmpEQ(cols, i64(NR)));
                x.sums = b_.CreateGEP(T_, myBlock, b_.CreateMul(t, i64(MR * NR)));
                return x;
            };
            auto kBlock = [&](llvm::Value* kb) {
                llvm::Value* k0 = b_.CreateMul(kb, i64(KC));
                llvm::Value* depth = kBlocks == 1 ? i64(K)
                                                  : b_.CreateSelect(b_.CreateICmpULE(b_.CreateAdd(k0, i64(KC)), i64(K)),
                                                                    i64(KC), b_.CreateSub(i64(K), k0));
                llvm::Value* add = kBlocks == 1 ? b_.getFalse() : b_.CreateICmpNE(kb, i64(0));
                auto one = [&](llvm::Value* t) {
                    Tile x = tileAt(t);
                    std::vector<llvm::Value*> callArgs = {
                        plain ? b_.CreateSelect(x.direct, at(lb.stores[0], b_.CreateAdd(b_.CreateMul(x.r0, i64(N)), c0)), x.sums)
                              : x.sums,
                        b_.CreateSelect(x.direct, i64(N), i64(NR))};
                    for (int64_t r = 0; r < MR; ++r) { // row r0 + r, the last row past M
                        if (packA) { // the tile's panel: [K][MR]
                            llvm::Value* panel = b_.CreateAdd(b_.CreateMul(x.r0, i64(K)), b_.CreateMul(k0, i64(MR)));
                            callArgs.push_back(b_.CreateGEP(T_, ap, b_.CreateAdd(panel, i64(r))));
                            continue;
                        }
                        llvm::Value* i = b_.CreateAdd(x.r0, i64(r));
                        i = b_.CreateSelect(b_.CreateICmpULT(i, i64(M)), i, i64(M - 1));
                        llvm::Value* offset = k.transA ? b_.CreateAdd(i, b_.CreateMul(k0, i64(M)))
                                                       : b_.CreateAdd(b_.CreateMul(i, i64(K)), k0);
                        callArgs.push_back(b_.CreateGEP(T_, a, offset));
                    }
                    callArgs.push_back(i64(packA ? MR : k.transA ? M : 1));
                    llvm::Value* inPlace = b_.CreateICmpULT(jt, i64(packFrom));
                    llvm::Value* packed = b_.CreateAdd(b_.CreateMul(plan.packByStrip ? i64(0) : jt, i64(K * NR)),
                                                       b_.CreateMul(k0, i64(NR)));
                    callArgs.push_back(b_.CreateSelect(inPlace, b_.CreateGEP(T_, b, b_.CreateAdd(b_.CreateMul(k0, i64(N)), c0)),
                                                       b_.CreateGEP(T_, myPanel, packed)));
                    callArgs.push_back(b_.CreateSelect(inPlace, i64(N), i64(NR)));
                    callArgs.push_back(depth);
                    callArgs.push_back(add);
                    b_.CreateCall(tile_, callArgs);
                };
                if (perBlock == 1) one(i64(0));
                else loopTo(count, "t", one);
            };
            if (kBlocks == 1) kBlock(i64(0));
            else loop(kBlocks, "kb", kBlock);
            auto epilogue = [&](llvm::Value* t) {
                Tile x = tileAt(t);
                llvm::Value* rows = plain ? b_.CreateSelect(x.direct, i64(0), x.rows) : x.rows;
                loopTo(rows, "er", [&](llvm::Value* r) {
                    loopTo(cols, "ec", [&](llvm::Value* c) {
                        llvm::Value* accv = load(x.sums, b_.CreateAdd(b_.CreateMul(r, i64(NR)), c));
                        element(k, lb, b_.CreateAdd(x.r0, r), b_.CreateAdd(c0, c), accv);
                    });
                });
            };
            if (perBlock == 1) epilogue(i64(0));
            else loopTo(count, "et", epilogue);
        };
        if (plan.packByStrip) { // strip u into this thread's panel, addressed as if all of B were packed
            b_.CreateCall(packB_, {b_.CreateGEP(T_, myPanel, b_.CreateNeg(b_.CreateMul(u, i64(K * NR)))), b, i64(N), i64(K),
                                   b_.getInt1(k.transB), u, b_.CreateAdd(u, i64(1))});
        }
        if (byStrip) {
            loop(mBlocks, "ib", [&](llvm::Value* ib) { unit(u, ib); });
        } else {
            if (rowsFirst) unit(b_.CreateURem(u, i64(nt)), b_.CreateUDiv(u, i64(nt)));
            else unit(b_.CreateUDiv(u, i64(mBlocks)), b_.CreateURem(u, i64(mBlocks)));
        }
      });
    };
    if (bl.threads <= 1) {
        tiles(i64(0), i64(units), i64(0));
        return;
    }
    // Outlined: the kernel function's bases come through the context array.
    auto outlined = [&](llvm::Value* context, llvm::Value* begin, llvm::Value* end, llvm::Value* thread) {
        loadContext(context);
        scratch(bp, ap, tile); // the panel addresses, inside the outlined function
        tiles(begin, end, thread);
    };
    parallel("gradc_tiles", contextArray(), units, outlined);
}

/// Packs `tiles` panels with `packer`, on the thread pool when there is one.
void Lowering::pack(llvm::Function* packer, llvm::Value* dst, llvm::Value* src, int64_t dim, int64_t K, bool trans,
                    int64_t first, int64_t tiles) {
    if (p_->blocking.threads <= 1 || tiles - first < 2) {
        b_.CreateCall(packer, {dst, src, i64(dim), i64(K), b_.getInt1(trans), i64(first), i64(tiles)});
        return;
    }
    // context: {dst, src}; the packer and the sizes are constants of the body.
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* ctxTy = llvm::ArrayType::get(ptr, 2);
    llvm::IRBuilder<> eb(entryBlock_, entryBlock_->begin());
    llvm::Value* ctx = eb.CreateAlloca(ctxTy);
    b_.CreateStore(dst, b_.CreateConstGEP2_64(ctxTy, ctx, 0, 0));
    b_.CreateStore(src, b_.CreateConstGEP2_64(ctxTy, ctx, 0, 1));
    parallel("gradc_pack", ctx, tiles - first, [&](llvm::Value* c, llvm::Value* begin, llvm::Value* end, llvm::Value*) {
        llvm::Value* d = b_.CreateLoad(ptr, b_.CreateConstGEP2_64(ctxTy, c, 0, 0));
        llvm::Value* sv = b_.CreateLoad(ptr, b_.CreateConstGEP2_64(ctxTy, c, 0, 1));
        b_.CreateCall(packer, {d, sv, i64(dim), i64(K), b_.getInt1(trans), b_.CreateAdd(begin, i64(first)),
                               b_.CreateAdd(end, i64(first))});
    });
}

} // namespace gradc
