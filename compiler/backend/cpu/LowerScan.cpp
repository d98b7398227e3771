// LowerScan.cpp — the recurrent loops (the scan ops, Ops.def) as ONE loop over the steps
// around the cell body: a runtime loop with a constant bound, not unrolled, so code size and
// compile time do not depend on T (T appears in address arithmetic only). The cell's math is
// Cells.cpp's expressions lowered by expr(), the interpreter's definition.
//   forward  for t = 0..T-1, the threads sharing MR-row tiles of the batch: the recurrent
//            product h_{t-1} W_hhᵀ of the tile into the thread's sums block (gradc_tile over
//            W_hhᵀ packed once before the loop; zeros at t = 0), then the cell epilogue over
//            the tile's rows, which reads the sums + b_hh, xp, h_{t-1} and c_{t-1} and stores
//            h_t and the state slots while the block is in cache.
//   reverse  for t = T-1..0, in two parallel phases per step:
//            A (row tiles of the batch): dh = dy_t + carry, ‖dh‖² per row tile in double, the
//              cell's backward (dxp, dzhh_t, the direct carry, dc_{t-1}), h_{t-1} packed for
//              the dW product, then the carry product dzhh_t W_hh for the same rows;
//            B (row tiles of GH): dW_hh += dzhh_tᵀ h_{t-1} through gradc_tile, db_hh += the
//              column sums of dzhh_t in batch order.
//            Between them the norm's partial sums are added in tile order.
// Each phase is an outlined function over a range of row tiles, called directly on one
// thread and through the pool on more: the same code, and as every sum runs in a fixed
// order over fixed tiles, the same bits on any thread count.
// last_step and last_step_grad are plain copy loops.
#include "Lowering.h"

#include "Cells.h"

#include <algorithm>

namespace gradc {

void Lowering::tileProduct(llvm::Value* out, int64_t outStride,
                           const std::function<llvm::Value*(llvm::Value*)>& rowAt, int64_t M,
                           llvm::Value* r0, int64_t aStride, llvm::Value* packedB, int64_t panels,
                           int64_t K, bool add) {
    const int64_t MR = p_->blocking.mr, NR = p_->blocking.nr();
    // The last tile of M rows, when M is not a multiple of MR, runs the edge tile of M % MR
    // rows; its row pointers past M repeat row M - 1 (read by no tile).
    llvm::Function* edge = M % MR ? tileRows(M % MR) : tile_;
    llvm::Value* fn =
        edge == tile_ ? tile_
                      : b_.CreateSelect(b_.CreateICmpEQ(r0, i64((M - 1) / MR * MR)), edge, tile_);
    std::vector<llvm::Value*> rows;
    for (int64_t r = 0; r < MR; ++r) {
        llvm::Value* row = b_.CreateAdd(r0, i64(r));
        rows.push_back(rowAt(b_.CreateSelect(b_.CreateICmpULT(row, i64(M)), row, i64(M - 1))));
    }
    loop(
        panels, "jt",
        [&](llvm::Value* jt) {
            std::vector<llvm::Value*> callArgs = {b_.CreateGEP(T_, out, b_.CreateMul(jt, i64(NR))),
                                                  i64(outStride)};
            callArgs.insert(callArgs.end(), rows.begin(), rows.end());
            callArgs.push_back(i64(aStride));
            callArgs.push_back(b_.CreateGEP(T_, packedB, b_.CreateMul(jt, i64(K * NR))));
            for (llvm::Value* v : {i64(NR), i64(K), (llvm::Value*)b_.getInt1(add)})
                callArgs.push_back(v);
            b_.CreateCall(tile_->getFunctionType(), fn, callArgs);
        },
        /*vectorise=*/false);
}

void Lowering::steps(
    const char* name, llvm::Value* context, int64_t n,
    const std::function<void(llvm::Value*, llvm::Value*, llvm::Value*, llvm::Value*)>& body) {
    auto outlined = [&](llvm::Value* c, llvm::Value* begin, llvm::Value* end, llvm::Value* thread) {
        loadContext(c);
        body(c, begin, end, thread);
    };
    if (p_->blocking.threads > 1) return parallel(name, context, n, outlined);
    b_.CreateCall(outline(name, outlined), {context, i64(0), i64(n), i64(0)});
}

llvm::Value* Lowering::stepOf(llvm::Value* context) {
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    return b_.CreatePtrToInt(
        b_.CreateLoad(ptr, b_.CreateConstGEP1_64(ptr, context, bases_.size() + 1)),
        b_.getInt64Ty());
}

void Lowering::recurrent(const Kernel& k) {
    switch (k.op) {
    case Op::Scan:
        return scanForward(k);
    case Op::ScanGrad:
        return scanReverse(k);
    case Op::LastStep: { // y[b, :] = x[b, T-1, :]
        const int64_t T = k.outer, B = k.rows, K = k.cols;
        llvm::Value *x = base(k.in[0]), *y = base(k.out[0]);
        loop(B, "b", [&](llvm::Value* b) {
            llvm::Value* from =
                b_.CreateMul(b_.CreateAdd(b_.CreateMul(b, i64(T)), i64(T - 1)), i64(K));
            llvm::Value* to = b_.CreateMul(b, i64(K));
            loop(K, "c", [&](llvm::Value* c) {
                store(load(x, b_.CreateAdd(from, c)), y, b_.CreateAdd(to, c));
            });
        });
        return;
    }
    case Op::LastStepGrad: { // zeros but step T-1, which is g
        const int64_t T = k.outer, B = k.rows, K = k.cols;
        llvm::Value *g = base(k.in[0]), *y = base(k.out[0]);
        loop(B * T * K, "z", [&](llvm::Value* i) { store(fp(0), y, i); });
        loop(B, "b", [&](llvm::Value* b) {
            llvm::Value* to =
                b_.CreateMul(b_.CreateAdd(b_.CreateMul(b, i64(T)), i64(T - 1)), i64(K));
            llvm::Value* from = b_.CreateMul(b, i64(K));
            loop(K, "c", [&](llvm::Value* c) {
                store(load(g, b_.CreateAdd(from, c)), y, b_.CreateAdd(to, c));
            });
        });
        return;
    }
    default:
        internal_assert(false,
                        std::string("no recurrent kernel lowers ") + describe(k.op).spelling);
    }
}

void Lowering::scanForward(const Kernel& k) {
    declareGemmHelpers();
    const GemmBlocking& bl = p_->blocking;
    const ScanPlan plan = planScan(k, p_->buffers, bl, p_->elementBytes);
    const CellDef cell = cellDef(k.attrs.cell, k.attrs.expr);
    const int64_t B = plan.B, T = plan.T, H = plan.H, G = plan.G, S = plan.S, GH = plan.GH;
    const int64_t MR = bl.mr, NR = bl.nr(), sumsStride = plan.gatePanels * NR;
    const int cs = cell.cSlot; // the cell state c_t, in the scratch from step to step
    internal_assert(k.out[0] >= 0, "a scan kernel whose hidden sequence nobody reads");
    pack(packB_, at(scratchArea(), i64(plan.packedAt)), base(k.in[1]), GH, H, true, 0,
         plan.gatePanels);
    if (cs >= 0) { // c_{-1} = 0
        llvm::Value* c = at(scratchArea(), i64(plan.cAt));
        loop(B * H, "z", [&](llvm::Value* i) { store(fp(0), c, i); });
    }
    auto stateAt = [&](llvm::Value* row, int64_t slot, llvm::Value* j) { // state[row][slot H + j]
        return b_.CreateAdd(b_.CreateMul(row, i64(S * H)), b_.CreateAdd(i64(slot * H), j));
    };
    // One step for the row tiles [begin, end) of the batch, on `thread`.
    auto step = [&](llvm::Value* begin, llvm::Value* end, llvm::Value* thread, llvm::Value* t) {
        llvm::Value *xp = base(k.in[0]), *bias = base(k.in[2]), *h = base(k.out[0]),
                    *st = base(k.out[1]);
        llvm::Value* s = scratchArea();
        llvm::Value* packed = at(s, i64(plan.packedAt));
        llvm::Value* c = at(s, i64(plan.cAt));
        llvm::Value* sums =
            at(s, b_.CreateAdd(i64(plan.sumsAt), b_.CreateMul(thread, i64(plan.sumsBlock))));
        llvm::Value* hasPrev = b_.CreateICmpUGT(t, i64(0));
        llvm::Value* tPrev = b_.CreateSelect(hasPrev, b_.CreateSub(t, i64(1)), i64(0));
        loopTo(b_.CreateSub(end, begin), "bt", [&](llvm::Value* u) {
            llvm::Value* b0 = b_.CreateMul(b_.CreateAdd(begin, u), i64(MR));
            llvm::Value* rows = b_.CreateSelect(b_.CreateICmpULE(b_.CreateAdd(b0, i64(MR)), i64(B)),
                                                i64(MR), b_.CreateSub(i64(B), b0));
            ifElse(
                hasPrev,
                [&] {
                    tileProduct(
                        sums, sumsStride,
                        [&](llvm::Value* b) {
                            return at(h, b_.CreateMul(b_.CreateAdd(b_.CreateMul(b, i64(T)), tPrev),
                                                      i64(H)));
                        },
                        B, b0, 1, packed, plan.gatePanels, H, false);
                },
                [&] { loop(MR * sumsStride, "z", [&](llvm::Value* i) { store(fp(0), sums, i); }); },
                {"product", "first", "cell"});
            loopTo(rows, "r", [&](llvm::Value* r) {
                llvm::Value* b = b_.CreateAdd(b0, r);
                llvm::Value* row = b_.CreateAdd(b_.CreateMul(b, i64(T)), t);
                llvm::Value* prevRow = b_.CreateAdd(b_.CreateMul(b, i64(T)), tPrev);
                llvm::Value* sumRow = b_.CreateMul(r, i64(sumsStride));
                independentLoop(H, "j", [&](llvm::Value* j) {
                    std::vector<llvm::Value*> args(size_t(cell.forwardArgs()));
                    for (int64_t g = 0; g < G; ++g) {
                        llvm::Value* col = b_.CreateAdd(i64(g * H), j);
                        args[size_t(cell.xpArg(int(g)))] =
                            load(xp, b_.CreateAdd(b_.CreateMul(row, i64(GH)), col));
                        args[size_t(cell.zhArg(int(g)))] =
                            b_.CreateFAdd(load(sums, b_.CreateAdd(sumRow, col)), load(bias, col));
                    }
                    args[size_t(cell.hPrevArg())] = b_.CreateSelect(
                        hasPrev, load(h, b_.CreateAdd(b_.CreateMul(prevRow, i64(H)), j)), fp(0));
                    llvm::Value* cAt = b_.CreateAdd(b_.CreateMul(b, i64(H)), j);
                    args[size_t(cell.cPrevArg())] = cs >= 0 ? load(c, cAt) : fp(0);
                    Memo memo;
                    store(expr(cell.forward[0], args, memo), h,
                          b_.CreateAdd(b_.CreateMul(row, i64(H)), j));
                    if (cs >= 0)
                        store(expr(cell.forward[size_t(1 + cs)], args, memo), c,
                              cAt); // for step t+1
                    if (st)
                        for (int64_t sl = 0; sl < S; ++sl)
                            store(expr(cell.forward[size_t(1 + sl)], args, memo), st,
                                  stateAt(row, sl, j));
                });
            });
        });
    };
    llvm::Value* context = contextArray(1);
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    llvm::Value* tSlot = b_.CreateConstGEP1_64(ptr, context, bases_.size() + 1);
    loop(
        T, "t",
        [&](llvm::Value* t) {
            b_.CreateStore(b_.CreateIntToPtr(t, ptr), tSlot);
            steps("gradc_scan_step", context, plan.rowTiles,
                  [&](llvm::Value* c, llvm::Value* begin, llvm::Value* end, llvm::Value* thread) {
                      step(begin, end, thread, stepOf(c));
                  });
        },
        /*vectorise=*/false);
}

void Lowering::scanReverse(const Kernel& k) {
    declareGemmHelpers();
    const GemmBlocking& bl = p_->blocking;
    const ScanPlan plan = planScan(k, p_->buffers, bl, p_->elementBytes);
    const CellDef cell = cellDef(k.attrs.cell, k.attrs.expr);
    const int64_t B = plan.B, T = plan.T, H = plan.H, G = plan.G, S = plan.S, GH = plan.GH;
    const int64_t MR = bl.mr, NR = bl.nr(), HP = plan.hiddenPanels * NR;
    const int cs = cell.cSlot; // the cell state: dc flows back through dcPrev
    auto* dbl = b_.getDoubleTy();
    auto toDouble = [&](llvm::Value* v) { return f64_ ? v : b_.CreateFPExt(v, dbl); };
    auto part = [&](int64_t offset) { return at(scratchArea(), i64(offset)); };
    // Before the loop: W_hh packed (not transposed: the carry product's B is W_hh [GH][H]), and
    // zeros in the carries, the MR elements after dzhh_t (which db's sums of the last row read),
    // the sums of dW and db (db's padding too: it adds those reads) and h_{t-1}'s panels (their
    // columns past H).
    pack(packB_, part(plan.packedAt), base(k.in[3]), H, GH, false, 0, plan.hiddenPanels);
    for (auto [at0, n] : {std::pair{plan.carryAt, B * H}, std::pair{plan.dcAt, B * H},
                          std::pair{plan.dzhhAt + B * GH, MR},
                          std::pair{plan.hPackedAt, plan.hiddenPanels * B * NR},
                          std::pair{plan.dwAt, plan.gateTiles * MR * HP},
                          std::pair{plan.dbAt, plan.gateTiles * MR}}) {
        llvm::Value* dst = part(at0);
        loop(n, "z", [&](llvm::Value* i) { store(fp(0), dst, i); });
    }
    auto stateAt = [&](llvm::Value* row, int64_t slot, llvm::Value* j) { // state[row][slot H + j]
        return b_.CreateAdd(b_.CreateMul(row, i64(S * H)), b_.CreateAdd(i64(slot * H), j));
    };
    auto hasPrevOf = [&](llvm::Value* t) { return b_.CreateICmpUGT(t, i64(0)); };
    auto prevOf = [&](llvm::Value* t) {
        return b_.CreateSelect(hasPrevOf(t), b_.CreateSub(t, i64(1)), i64(0));
    };
    // Phase A over the row tiles [begin, end) of the batch.
    auto phaseA = [&](llvm::Value* begin, llvm::Value* end, llvm::Value* thread, llvm::Value* t) {
        llvm::Value *h = base(k.in[0]), *st = base(k.in[1]), *dy = base(k.in[2]),
                    *dxp = base(k.out[0]);
        llvm::Value *carry = part(plan.carryAt), *dc = part(plan.dcAt), *dzhh = part(plan.dzhhAt);
        llvm::Value *hPacked = part(plan.hPackedAt), *packedW = part(plan.packedAt),
                    *norms = part(plan.normAt);
        llvm::Value* sums =
            at(scratchArea(),
               b_.CreateAdd(i64(plan.sumsAt), b_.CreateMul(thread, i64(plan.sumsBlock))));
        llvm::Value *hasPrev = hasPrevOf(t), *tPrev = prevOf(t);
        llvm::Value* norm = variable(dbl, llvm::ConstantFP::get(dbl, 0.0));
        loopTo(b_.CreateSub(end, begin), "bt", [&](llvm::Value* u) {
            llvm::Value* tileIndex = b_.CreateAdd(begin, u);
            llvm::Value* b0 = b_.CreateMul(tileIndex, i64(MR));
            llvm::Value* rows = b_.CreateSelect(b_.CreateICmpULE(b_.CreateAdd(b0, i64(MR)), i64(B)),
                                                i64(MR), b_.CreateSub(i64(B), b0));
            b_.CreateStore(llvm::ConstantFP::get(dbl, 0.0), norm);
            loopTo(rows, "r", [&](llvm::Value* r) {
                llvm::Value* b = b_.CreateAdd(b0, r);
                llvm::Value* row = b_.CreateAdd(b_.CreateMul(b, i64(T)), t);
                llvm::Value* prevRow = b_.CreateAdd(b_.CreateMul(b, i64(T)), tPrev);
                independentLoop(H, "j", [&](llvm::Value* j) {
                    llvm::Value* bj = b_.CreateAdd(b_.CreateMul(b, i64(H)), j);
                    llvm::Value* dh = b_.CreateFAdd(
                        load(dy, b_.CreateAdd(b_.CreateMul(row, i64(H)), j)), load(carry, bj));
                    llvm::Value* d = toDouble(dh);
                    b_.CreateStore(b_.CreateFAdd(b_.CreateLoad(dbl, norm), b_.CreateFMul(d, d)),
                                   norm);
                    std::vector<llvm::Value*> args(size_t(cell.backwardArgs()));
                    args[CellDef::kDh] = dh;
                    args[CellDef::kDc] = cs >= 0 ? load(dc, bj) : fp(0);
                    args[CellDef::kHPrev] = b_.CreateSelect(
                        hasPrev, load(h, b_.CreateAdd(b_.CreateMul(prevRow, i64(H)), j)), fp(0));
                    args[CellDef::kCPrev] =
                        cs >= 0 ? b_.CreateSelect(hasPrev, load(st, stateAt(prevRow, cs, j)), fp(0))
                                : fp(0);
                    for (int64_t sl = 0; sl < S; ++sl)
                        args[size_t(CellDef::stateArg(int(sl)))] = load(st, stateAt(row, sl, j));
                    Memo memo;
                    for (int64_t g = 0; g < G; ++g) {
                        llvm::Value* col = b_.CreateAdd(i64(g * H), j);
                        if (dxp)
                            store(expr(cell.dxp[size_t(g)], args, memo), dxp,
                                  b_.CreateAdd(b_.CreateMul(row, i64(GH)), col));
                        store(expr(cell.dzhh[size_t(g)], args, memo), dzhh,
                              b_.CreateAdd(b_.CreateMul(b, i64(GH)), col));
                    }
                    store(expr(cell.direct, args, memo), carry, bj);
                    if (cs >= 0) store(expr(cell.dcPrev, args, memo), dc, bj);
                });
                // h_{t-1} (zeros at t = 0) into the dW product's panels [H / NR][B][NR], panel by
                // panel: contiguous copies (an index through j / NR would keep the loop above
                // scalar).
                for (int64_t jp = 0; jp < plan.hiddenPanels; ++jp) {
                    llvm::Value* from = b_.CreateAdd(b_.CreateMul(prevRow, i64(H)), i64(jp * NR));
                    llvm::Value* to = b_.CreateMul(b_.CreateAdd(i64(jp * B), b), i64(NR));
                    loop(std::min(NR, H - jp * NR), "hp", [&](llvm::Value* c) {
                        store(b_.CreateSelect(hasPrev, load(h, b_.CreateAdd(from, c)), fp(0)),
                              hPacked, b_.CreateAdd(to, c));
                    });
                }
            });
            // The carry to step t-1 through the product: carry[b] += dzhh_t[b] W_hh.
            ifElse(
                hasPrev,
                [&] {
                    tileProduct(
                        sums, HP,
                        [&](llvm::Value* b) { return at(dzhh, b_.CreateMul(b, i64(GH))); }, B, b0,
                        1, packedW, plan.hiddenPanels, GH, false);
                    loopTo(rows, "cr", [&](llvm::Value* r) {
                        llvm::Value* first = b_.CreateMul(b_.CreateAdd(b0, r), i64(H));
                        llvm::Value* from = b_.CreateMul(r, i64(HP));
                        loop(H, "cj", [&](llvm::Value* j) {
                            llvm::Value* at0 = b_.CreateAdd(first, j);
                            store(
                                b_.CreateFAdd(load(carry, at0), load(sums, b_.CreateAdd(from, j))),
                                carry, at0);
                        });
                    });
                },
                [] {}, {"carry", "nocarry", "carried"});
            b_.CreateStore(b_.CreateLoad(dbl, norm), b_.CreateGEP(dbl, norms, tileIndex));
        });
    };
    // Phase B over the row tiles [begin, end) of GH: dW_hh and db_hh.
    auto phaseB = [&](llvm::Value* begin, llvm::Value* end, llvm::Value*, llvm::Value* t) {
        llvm::Value *dzhh = part(plan.dzhhAt), *hPacked = part(plan.hPackedAt),
                    *dw = part(plan.dwAt), *db = part(plan.dbAt);
        loopTo(b_.CreateSub(end, begin), "gt", [&](llvm::Value* u) {
            llvm::Value* i0 = b_.CreateMul(b_.CreateAdd(begin, u), i64(MR));
            ifElse(
                hasPrevOf(t),
                [&] {
                    tileProduct(
                        at(dw, b_.CreateMul(i0, i64(HP))), HP,
                        [&](llvm::Value* i) { return at(dzhh, i); }, GH, i0, GH, hPacked,
                        plan.hiddenPanels, B, true);
                },
                [] {}, {"dw", "nodw", "dwdone"});
            // db's sums of the tile's MR rows in batch order (a constant-length loop, which
            // vectorises: rows past GH read the next row of dzhh, or the zeros after the last,
            // into db's padding, which nothing reads).
            loop(B, "db", [&](llvm::Value* b) {
                llvm::Value* from = b_.CreateAdd(b_.CreateMul(b, i64(GH)), i0);
                loop(MR, "dr", [&](llvm::Value* r) {
                    llvm::Value* at0 = b_.CreateAdd(i0, r);
                    store(b_.CreateFAdd(load(db, at0), load(dzhh, b_.CreateAdd(from, r))), db, at0);
                });
            });
        });
    };
    // After phase A: ‖dL/dh_t‖ from the row tiles' partial sums, in tile order.
    auto norm = [&](llvm::Value* t) {
        if (k.out[3] < 0) return;
        llvm::Value* parts = part(plan.normAt);
        llvm::Value* sum = variable(dbl, llvm::ConstantFP::get(dbl, 0.0));
        loop(
            plan.rowTiles, "nt",
            [&](llvm::Value* i) {
                b_.CreateStore(b_.CreateFAdd(b_.CreateLoad(dbl, sum),
                                             b_.CreateLoad(dbl, b_.CreateGEP(dbl, parts, i))),
                               sum);
            },
            /*vectorise=*/false);
        llvm::Function* sqrtFn = llvm::Intrinsic::getDeclaration(&m_, llvm::Intrinsic::sqrt, {dbl});
        llvm::Value* n = b_.CreateCall(sqrtFn, {b_.CreateLoad(dbl, sum)});
        store(f64_ ? n : b_.CreateFPTrunc(n, T_), base(k.out[3]), t);
    };
    llvm::Value* context = contextArray(1);
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    llvm::Value* tSlot = b_.CreateConstGEP1_64(ptr, context, bases_.size() + 1);
    loop(
        T, "t",
        [&](llvm::Value* tt) {
            llvm::Value* t = b_.CreateSub(i64(T - 1), tt);
            b_.CreateStore(b_.CreateIntToPtr(t, ptr), tSlot);
            steps("gradc_scan_back", context, plan.rowTiles,
                  [&](llvm::Value* c, llvm::Value* begin, llvm::Value* end, llvm::Value* thread) {
                      phaseA(begin, end, thread, stepOf(c));
                  });
            norm(t);
            steps("gradc_scan_dw", context, plan.gateTiles,
                  [&](llvm::Value* c, llvm::Value* begin, llvm::Value* end, llvm::Value* thread) {
                      phaseB(begin, end, thread, stepOf(c));
                  });
        },
        /*vectorise=*/false);
    // After the loop: dW_hh and db_hh from their sums.
    if (k.out[1] >= 0) {
        llvm::Value *dw = part(plan.dwAt), *out = base(k.out[1]);
        loop(GH, "wr", [&](llvm::Value* r) {
            loop(H, "wc", [&](llvm::Value* c) {
                store(load(dw, b_.CreateAdd(b_.CreateMul(r, i64(HP)), c)), out,
                      b_.CreateAdd(b_.CreateMul(r, i64(H)), c));
            });
        });
    }
    if (k.out[2] >= 0) {
        llvm::Value *db = part(plan.dbAt), *out = base(k.out[2]);
        loop(GH, "bc", [&](llvm::Value* c) { store(load(db, c), out, c); });
    }
}

} // namespace gradc
