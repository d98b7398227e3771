// LowerConv.cpp — conv2d and its two gradients as implicit GEMMs through the matrix-product
// register tile (gradc_tile, LowerGemm.cpp), never materialising the batch's im2col matrix
// (ConvPlan in Kernels.h says what each op multiplies):
//   conv2d   the positions of all images are the product's columns: each thread packs one
//            panel of them (K x NR, K = C KH KW, zero for padding and past the last
//            position) from x, then runs every MR-row tile of W, read in place, over it;
//            whole tiles store straight into y, the others (the last rows, a panel that
//            spans images) through the thread's tile.
//   grad_x   the same over dx's positions with the transposed weights W' (copied once into
//            the scratch) and the transposed view of g: the row of (o, kh, kw) holds
//            g[o, (h + PH - kh) / SH, (w + PW - kw) / SW] where the division is exact and in
//            range, else 0.
//   grad_w   per image, col(x_b) packed whole as A (one image's, C KH KW x OH OW) and g_b
//            transposed into panels by gradc_pack_b: dWᵀ += col(x_b) · g_bᵀ into the block of
//            sums of the image's slice of the batch (fixed slices, one per planned thread);
//            after the images, the slices' blocks are added into dW in order.
// Packing walks the positions one image row at a time, VL at a time: along a row, the
// source columns of one kernel tap are an arithmetic progression, read by a masked load
// (stride 1) or a masked gather, the lanes in the padding (or, for grad_x, at an inexact
// division) left out and stored as zeros; where the grid is the source's (stride 1, "same"
// padding) a row of VL positions is instead one masked load of the shifted source (two across
// an image boundary) and one whole store. Every sum runs in one order whatever thread runs
// what: the results do not vary from run to run. A maxpool after a conv2d, or a maxpool's
// gradient before a grad_w or grad_x, may be folded into the kernel (Kernel::pool): it then
// runs on each image's planes while they are in the thread's buffer (a conv2d through the
// tile: in cache, once the image's last panel is done; a grad_x expands g into a ring of
// the images its panels span, each once per thread).
#include "Lowering.h"

#include <algorithm>

namespace gradc {

void Lowering::convolution(const Kernel& k) {
    declareGemmHelpers();
    const GemmBlocking& bl = p_->blocking;
    const ConvPlan plan = planConv(k, p_->buffers, bl);
    const Window& win = plan.win;
    const int64_t MR = plan.mr, NR = plan.nv * bl.vl; // the product's own tile (ConvPlan)
    const int64_t M = plan.M, K = plan.K, mt = plan.rowTiles, nt = plan.colPanels;
    const int64_t KH = win.kh, KW = win.kw;
    const bool gradX = k.op == Op::Conv2dGradX, gradW = k.op == Op::Conv2dGradW;
    // The front end gives every dimension at least 1 (Sema; windowOutput refuses a window
    // that does not fit): every product has work.
    internal_assert(std::min({plan.B, plan.C, plan.H, plan.W, plan.O, plan.OH, plan.OW}) > 0, "a convolution of an empty tensor");
    auto smax = [&](llvm::Value* a, llvm::Value* b) { return b_.CreateSelect(b_.CreateICmpSGT(a, b), a, b); };
    auto smin = [&](llvm::Value* a, llvm::Value* b) { return b_.CreateSelect(b_.CreateICmpSLT(a, b), a, b); };
    auto zeros = [&](llvm::Value* dst, llvm::Value* from, llvm::Value* to) { // dst[from, to) = 0
        loopTo(b_.CreateSub(to, from), "z", [&](llvm::Value* i) { store(fp(0), dst, b_.CreateAdd(from, i)); });
    };

    // The column view the product reads as B (conv2d, grad_x) or A (grad_w): rows (ch, kh, kw)
    // over a source image of CS x HS x WS per batch element, columns the positions (b, i, j)
    // of a grid of HO x WO per image. conv2d: the source is x, the grid y's, source row
    // i SH + kh - PH; grad_x: the source is g, the grid dx's, source row (i + PH - kh) / SH
    // when exact (for stride 1: i + PH - kh, an affine map like conv2d's).
    const int64_t CS = gradX ? plan.O : plan.C, HS = gradX ? plan.OH : plan.H, WS = gradX ? plan.OW : plan.W;
    const int64_t HO = gradX ? plan.H : plan.OH, WO = gradX ? plan.W : plan.OW, perImage = HO * WO;
    const int64_t total = plan.B * perImage;
    const bool rowDivides = gradX && win.sh > 1, colDivides = gradX && win.sw > 1;
    // Affine maps: source = position * step + offset(tap).
    const int64_t rowStep = gradX ? 1 : win.sh, colStep = gradX ? 1 : win.sw;
    auto rowOffset = [&](llvm::Value* kh) { return gradX ? b_.CreateSub(i64(win.ph), kh) : b_.CreateSub(kh, i64(win.ph)); };

    // The view is packed VL positions at a time (masked loads of a source row's contiguous
    // columns, or masked gathers for strides; masked lanes are never read), each chunk of
    // one grid row for every row of the view: per tap column kw, which lanes have a source
    // (in the padding, or an inexact division: zero) is the same for every channel and
    // kernel row, so it is computed once per chunk.
    const int64_t VL = bl.vl;
    auto* vecTy = llvm::FixedVectorType::get(T_, unsigned(VL));
    std::vector<llvm::Constant*> iota;
    for (int64_t l = 0; l < VL; ++l) iota.push_back(b_.getInt32(uint32_t(l)));
    llvm::Constant* lanes = llvm::ConstantVector::get(iota);
    const llvm::Align elementAlign(f64_ ? 8 : 4);
    auto splat = [&](int64_t v) { return b_.CreateVectorSplat(unsigned(VL), b_.getInt32(uint32_t(int32_t(v)))); };
    const bool contiguous = !colDivides && colStep == 1;

    // When the grid is the source's (stride 1, HO = HS, WO = WS: "same" padding), a tap's
    // source for position q of image b is q itself shifted by a constant: the view's row
    // for VL positions is one masked load (two where they span two images), stored whole.
    const bool linear = contiguous && !rowDivides && rowStep == 1 && HO == HS && WO == WS && perImage >= VL && total + VL < (int64_t(1) << 31);
    // The source's images: image b's CS x HS x WS values from imageAt(b).
    using Images = std::function<llvm::Value*(llvm::Value*)>;
    auto packLinear = [&](llvm::Value* dst, int64_t ld, const Images& imageAt, llvm::Value* q0, int64_t width) {
        auto splat32 = [&](llvm::Value* v) { return b_.CreateVectorSplat(unsigned(VL), b_.CreateTrunc(v, b_.getInt32Ty())); };
        loop((width + VL - 1) / VL, "pv", [&](llvm::Value* v) {
            llvm::Value* qv = b_.CreateAdd(q0, b_.CreateMul(v, i64(VL)));
            llvm::Value* q = b_.CreateAdd(splat32(qv), lanes);
            llvm::Value* inWidth = b_.CreateICmpSLT(b_.CreateAdd(splat32(b_.CreateMul(v, i64(VL))), lanes), splat(width));
            llvm::Value* keep = b_.CreateAnd(inWidth, b_.CreateICmpSLT(q, splat(total)));
            llvm::Value* rem = b_.CreateURem(q, splat(perImage));
            llvm::Value* i = b_.CreateUDiv(rem, splat(WO));
            llvm::Value* j = b_.CreateURem(rem, splat(WO));
            llvm::Value* imgA = b_.CreateUDiv(qv, i64(perImage)); // the first lane's image; the others' is it or the next
            llvm::Value* inA = b_.CreateICmpEQ(b_.CreateUDiv(q, splat(perImage)), splat32(imgA));
            llvm::Value* spans = b_.CreateICmpNE(b_.CreateUDiv(b_.CreateAdd(qv, i64(VL - 1)), i64(perImage)), imgA);
            // Where position q's source is (of image A, or of the next): q from its image's start.
            llvm::Value* imgB = b_.CreateAdd(imgA, i64(1));
            llvm::Value* baseA = at(imageAt(imgA), b_.CreateSub(qv, b_.CreateMul(imgA, i64(perImage))));
            llvm::Value* baseB = at(imageAt(imgB), b_.CreateSub(qv, b_.CreateMul(imgB, i64(perImage))));
            llvm::Value* to = at(dst, b_.CreateMul(v, i64(VL)));
            // Whole vectors where the rows have room (the lanes past `width` are zeros).
            const bool whole = (width + VL - 1) / VL * VL <= ld;
            auto taps = [&](bool two) {
                for (int64_t kh = 0; kh < KH; ++kh) {
                    const int64_t roff = gradX ? win.ph - kh : kh - win.ph;
                    llvm::Value* rowOk = b_.CreateICmpULT(b_.CreateAdd(i, splat(roff)), splat(HS)); // negative rows wrap
                    for (int64_t kw = 0; kw < KW; ++kw) {
                        const int64_t coff = gradX ? win.pw - kw : kw - win.pw, shift = roff * WS + coff;
                        llvm::Value* ok = b_.CreateAnd(keep, b_.CreateAnd(rowOk, b_.CreateICmpULT(b_.CreateAdd(j, splat(coff)), splat(WS))));
                        llvm::Value* okA = b_.CreateAnd(ok, inA);
                        llvm::Value* okB = two ? b_.CreateAnd(ok, b_.CreateNot(inA)) : nullptr;
                        llvm::Value* row0 = at(to, i64((kh * KW + kw) * ld));
                        loop(CS, "ch", [&](llvm::Value* ch) {
                            llvm::Value* from = b_.CreateAdd(b_.CreateMul(ch, i64(HS * WS)), i64(shift));
                            llvm::Value* x = b_.CreateMaskedLoad(vecTy, at(baseA, from), elementAlign, okA, llvm::Constant::getNullValue(vecTy));
                            if (two) x = b_.CreateMaskedLoad(vecTy, at(baseB, from), elementAlign, okB, x);
                            llvm::Value* out = at(row0, b_.CreateMul(ch, i64(KH * KW * ld)));
                            if (whole) b_.CreateAlignedStore(x, out, elementAlign);
                            else b_.CreateMaskedStore(x, out, elementAlign, inWidth);
                        }, /*vectorise=*/false);
                    }
                }
            };
            ifElse(spans, [&] { taps(true); }, [&] { taps(false); });
        }, /*vectorise=*/false);
    };

    // dst[k ld + (q - q0)] = view[k][q] for the positions q in [q0, q0 + width) (all of
    // them, over every image), zero past the last position.
    auto packView = [&](llvm::Value* dst, int64_t ld, const Images& imageAt, llvm::Value* q0, int64_t width) {
        if (linear) return packLinear(dst, ld, imageAt, q0, width);
        llvm::Value* qEnd = smin(b_.CreateAdd(q0, i64(width)), i64(total));
        llvm::Value* firstRow = b_.CreateUDiv(q0, i64(WO));
        llvm::Value* lastRow = b_.CreateUDiv(b_.CreateSub(qEnd, i64(1)), i64(WO));
        // One grid row (b, i) at a time: its positions [ja, jb) in this range.
        loopTo(b_.CreateAdd(b_.CreateSub(lastRow, firstRow), i64(1)), "gr", [&](llvm::Value* r) {
            llvm::Value* gr = b_.CreateAdd(firstRow, r);
            llvm::Value* img = b_.CreateUDiv(gr, i64(HO));
            llvm::Value* i = b_.CreateURem(gr, i64(HO));
            llvm::Value* rowStart = b_.CreateMul(gr, i64(WO));
            llvm::Value* ja = b_.CreateSub(smax(q0, rowStart), rowStart);
            llvm::Value* jb = b_.CreateSub(smin(qEnd, b_.CreateAdd(rowStart, i64(WO))), rowStart);
            llvm::Value* dstAt = b_.CreateSub(rowStart, q0); // dst column of position j: dstAt + j
            llvm::Value* image = imageAt(img);
            llvm::Value* chunks = b_.CreateUDiv(b_.CreateAdd(b_.CreateSub(jb, ja), i64(VL - 1)), i64(VL));
            loopTo(chunks, "v", [&](llvm::Value* v) {
                llvm::Value* j0 = b_.CreateAdd(ja, b_.CreateMul(v, i64(VL)));
                llvm::Value* j = b_.CreateAdd(b_.CreateVectorSplat(unsigned(VL), b_.CreateTrunc(j0, b_.getInt32Ty())), lanes);
                llvm::Value* keep = b_.CreateICmpSLT(j, b_.CreateVectorSplat(unsigned(VL), b_.CreateTrunc(jb, b_.getInt32Ty())));
                // Per tap column: the lanes with a source column, and (gathers) its index.
                std::vector<llvm::Value*> ok(static_cast<size_t>(KW)), index(static_cast<size_t>(KW));
                for (int64_t kw = 0; kw < KW; ++kw) {
                    const int64_t off = gradX ? win.pw - kw : kw - win.pw;
                    if (contiguous) {
                        ok[size_t(kw)] = b_.CreateAnd(keep, b_.CreateAnd(b_.CreateICmpSGE(j, splat(-off)),
                                                                          b_.CreateICmpSLT(j, splat(WS - off))));
                    } else if (colDivides) { // column (j + PW - kw) / SW when exact
                        llvm::Value* t = b_.CreateAdd(j, splat(off));
                        llvm::Value* tc = b_.CreateSelect(b_.CreateICmpSGT(t, splat(0)), t, splat(0));
                        llvm::Value* col = b_.CreateUDiv(tc, splat(win.sw));
                        ok[size_t(kw)] = b_.CreateAnd(
                            keep, b_.CreateAnd(b_.CreateICmpSGE(t, splat(0)),
                                               b_.CreateAnd(b_.CreateICmpEQ(b_.CreateURem(tc, splat(win.sw)), splat(0)),
                                                            b_.CreateICmpULT(col, splat(WS)))));
                        index[size_t(kw)] = b_.CreateSelect(ok[size_t(kw)], col, splat(0));
                    } else { // column j SW + kw - PW
                        llvm::Value* col = b_.CreateAdd(b_.CreateMul(j, splat(colStep)), splat(off));
                        ok[size_t(kw)] = b_.CreateAnd(keep, b_.CreateAnd(b_.CreateICmpSGE(col, splat(0)),
                                                                          b_.CreateICmpSLT(col, splat(WS))));
                        index[size_t(kw)] = b_.CreateSelect(ok[size_t(kw)], col, splat(0));
                    }
                }
                llvm::Value* none = llvm::Constant::getNullValue(keep->getType());
                loop(KH, "kh", [&](llvm::Value* kh) {
                    // The source row and whether it exists (zero padding, or an inexact division).
                    llvm::Value *srcRow, *rowOk;
                    if (rowDivides) {
                        llvm::Value* t = b_.CreateAdd(i, rowOffset(kh));
                        llvm::Value* tc = smax(t, i64(0));
                        srcRow = b_.CreateUDiv(tc, i64(win.sh));
                        rowOk = b_.CreateAnd(b_.CreateICmpSGE(t, i64(0)),
                                             b_.CreateAnd(b_.CreateICmpEQ(b_.CreateURem(tc, i64(win.sh)), i64(0)),
                                                          b_.CreateICmpULT(srcRow, i64(HS))));
                    } else {
                        srcRow = b_.CreateAdd(b_.CreateMul(i, i64(rowStep)), rowOffset(kh));
                        rowOk = b_.CreateICmpULT(srcRow, i64(HS)); // negative rows wrap past HS
                    }
                    llvm::Value* line0 = at(image, b_.CreateMul(b_.CreateSelect(rowOk, srcRow, i64(0)), i64(WS)));
                    for (int64_t kw = 0; kw < KW; ++kw) {
                        const int64_t off = gradX ? win.pw - kw : kw - win.pw;
                        llvm::Value* mask = b_.CreateSelect(rowOk, ok[size_t(kw)], none);
                        llvm::Value* row0 = at(dst, b_.CreateAdd(b_.CreateMul(b_.CreateAdd(b_.CreateMul(kh, i64(KW)), i64(kw)), i64(ld)),
                                                                 b_.CreateAdd(dstAt, j0)));
                        loop(CS, "ch", [&](llvm::Value* ch) {
                            llvm::Value* line = at(line0, b_.CreateMul(ch, i64(HS * WS)));
                            llvm::Value* x =
                                contiguous
                                    ? b_.CreateMaskedLoad(vecTy, at(line, b_.CreateAdd(j0, i64(off))), elementAlign, mask,
                                                          llvm::Constant::getNullValue(vecTy))
                                    : b_.CreateMaskedGather(vecTy, b_.CreateGEP(T_, line, index[size_t(kw)]), elementAlign,
                                                            mask, llvm::Constant::getNullValue(vecTy));
                            b_.CreateMaskedStore(x, at(row0, b_.CreateMul(ch, i64(KH * KW * ld))), elementAlign, keep);
                        }, /*vectorise=*/false);
                    }
                });
            });
        });
        // Past the last position (the last panel): zero columns.
        llvm::Value* filled = b_.CreateSub(qEnd, q0);
        ifElse(b_.CreateICmpSLT(filled, i64(width)), [&] {
            loop(CS * KH * KW, "kz", [&](llvm::Value* kk) { zeros(at(dst, b_.CreateMul(kk, i64(ld))), filled, i64(width)); });
        }, [] {});
    };

    // One tile: out[MR][NR] (rows outStride apart) = A's rows r0.. (clamped to M - 1, each
    // rowStride apart, K deep) times the panel, or added to it. The last row tile, when M is
    // not a multiple of MR, runs the edge tile of M % MR rows: no work on rows past M.
    llvm::Function* wholeTile = plan.direct ? nullptr : tileOf(MR, plan.nv, MR);
    llvm::Function* edgeTile = M % MR && !plan.direct ? tileOf(MR, plan.nv, M % MR) : wholeTile;
    auto tile = [&](llvm::Value* out, llvm::Value* outStride, llvm::Value* a, int64_t rowStride, llvm::Value* r0,
                    llvm::Value* panel, int64_t depth, bool add) {
        std::vector<llvm::Value*> args = {out, outStride};
        for (int64_t r = 0; r < MR; ++r) {
            llvm::Value* m = smin(b_.CreateAdd(r0, i64(r)), i64(M - 1));
            args.push_back(at(a, b_.CreateMul(m, i64(rowStride))));
        }
        for (llvm::Value* v : {i64(1), panel, i64(NR), i64(depth), (llvm::Value*)b_.getInt1(add)}) args.push_back(v);
        llvm::Value* fn = edgeTile == wholeTile ? wholeTile : b_.CreateSelect(b_.CreateICmpEQ(r0, i64((mt - 1) * MR)), edgeTile, wholeTile);
        b_.CreateCall(wholeTile->getFunctionType(), fn, args);
    };

    // The units [begin, end) of thread `thread`, with the kernel's bases as seen where they run.
    auto run = [&](const char* name, const std::function<void(llvm::Value*, llvm::Value*, llvm::Value*)>& body) {
        if (bl.threads <= 1) return body(i64(0), i64(plan.units), i64(0));
        parallel(name, contextArray(), plan.units, [&](llvm::Value* context, llvm::Value* begin, llvm::Value* end, llvm::Value* thread) {
            loadContext(context);
            body(begin, end, thread);
        });
    };
    auto threadPart = [&](llvm::Value* thread) {
        return at(scratchArea(), b_.CreateAdd(i64(plan.threadAt), b_.CreateMul(thread, i64(plan.perThread))));
    };

    // A maxpool folded in (Kernel::pool), through the pooling's plane function: a conv2d
    // pools its epilogue's values (poolsOutput); a grad_w or grad_x computes g's planes
    // [o0, o0 + n) of image img from the pool's operands into dst, in the thread's part
    // (poolsGradient, expandGradient).
    llvm::Function* poolPlane = nullptr;
    int64_t pooledPlane = 0;
    // The maxima's positions are a byte each (Kernel::maxPositions): element e of them.
    auto byteAt = [&](llvm::Value* positions, llvm::Value* e) { return b_.CreateGEP(b_.getInt8Ty(), positions, e); };
    const bool pooled = k.poolsOutput(); // a direct conv2d that pools its epilogue's values
    if (pooled) {
        const Shape& y = p_->buffers[size_t(k.out[1])].shape;
        poolPlane = this->poolPlane({Op::MaxPool2d, k.pool, {plan.B, plan.O, plan.OH, plan.OW}, y, k.maxPositions});
        pooledPlane = y[2] * y[3];
    }
    if (k.poolsGradient()) {
        const Shape& pooled = p_->buffers[size_t(k.in[k.gradientAt() + 1])].shape;
        poolPlane = this->poolPlane({Op::MaxPool2dGrad, k.pool, {plan.B, plan.O, plan.OH, plan.OW}, pooled, k.maxPositions});
        pooledPlane = pooled[2] * pooled[3];
    }
    auto expandGradient = [&](llvm::Value* dst, llvm::Value* img, llvm::Value* o0, int64_t n) {
        llvm::Value *x = base(k.in[k.gradientAt()]), *g = base(k.in[k.gradientAt() + 1]);
        loop(n, "eo", [&](llvm::Value* q) {
            llvm::Value* plane = b_.CreateAdd(b_.CreateMul(img, i64(plan.O)), b_.CreateAdd(o0, q));
            llvm::Value* xAt = b_.CreateMul(plane, i64(k.maxPositions ? pooledPlane : plan.OH * plan.OW));
            b_.CreateCall(poolPlane, {k.maxPositions ? byteAt(x, xAt) : at(x, xAt), at(g, b_.CreateMul(plane, i64(pooledPlane))),
                                      at(dst, b_.CreateMul(q, i64(plan.OH * plan.OW)))});
        }, /*vectorise=*/false);
    };

    if (plan.direct) { // conv2d or grad_w with few taps (ConvPlan): the taps in registers
        const int64_t O = plan.O, C = plan.C, H = plan.H, W = plan.W, OH = plan.OH, OW = plan.OW;
        const int64_t D = C * KH * KW, chunks = (OW + VL - 1) / VL;
        // The taps (c, kh, kw) of the chunk of positions j0 + lane of row i of y's grid, in
        // image `image` of x: one masked load (or gather, for strides) each, zero in the
        // padding and past the row's end; and which lanes are positions.
        auto taps = [&](llvm::Value* image, llvm::Value* i, llvm::Value* j0, llvm::Value*& keep) {
            llvm::Value* j = b_.CreateAdd(b_.CreateVectorSplat(unsigned(VL), b_.CreateTrunc(j0, b_.getInt32Ty())), lanes);
            keep = b_.CreateICmpSLT(j, splat(OW));
            std::vector<llvm::Value*> ok(static_cast<size_t>(KW)), index(static_cast<size_t>(KW));
            for (int64_t kw = 0; kw < KW; ++kw) {
                const int64_t off = kw - win.pw;
                llvm::Value* col = b_.CreateAdd(b_.CreateMul(j, splat(win.sw)), splat(off));
                ok[size_t(kw)] = b_.CreateAnd(keep, b_.CreateAnd(b_.CreateICmpSGE(col, splat(0)), b_.CreateICmpSLT(col, splat(W))));
                index[size_t(kw)] = b_.CreateSelect(ok[size_t(kw)], col, splat(0));
            }
            llvm::Value* none = llvm::Constant::getNullValue(keep->getType());
            std::vector<llvm::Value*> xv;
            for (int64_t c = 0; c < C; ++c)
                for (int64_t kh = 0; kh < KH; ++kh) {
                    llvm::Value* srcRow = b_.CreateAdd(b_.CreateMul(i, i64(win.sh)), i64(kh - win.ph));
                    llvm::Value* rowOk = b_.CreateICmpULT(srcRow, i64(H)); // negative rows wrap past H
                    llvm::Value* line = at(image, b_.CreateAdd(i64(c * H * W), b_.CreateMul(b_.CreateSelect(rowOk, srcRow, i64(0)), i64(W))));
                    for (int64_t kw = 0; kw < KW; ++kw) {
                        llvm::Value* mask = b_.CreateSelect(rowOk, ok[size_t(kw)], none);
                        xv.push_back(win.sw == 1 ? b_.CreateMaskedLoad(vecTy, at(line, b_.CreateAdd(j0, i64(kw - win.pw))), elementAlign,
                                                                       mask, llvm::Constant::getNullValue(vecTy))
                                                 : b_.CreateMaskedGather(vecTy, b_.CreateGEP(T_, line, index[size_t(kw)]), elementAlign,
                                                                         mask, llvm::Constant::getNullValue(vecTy)));
                    }
                }
            return xv;
        };
        auto fma = [&](llvm::Value* a, llvm::Value* b, llvm::Value* c) {
            return b_.CreateIntrinsic(llvm::Intrinsic::fmuladd, {vecTy}, {a, b, c});
        };
        if (gradW) { // sums[o][d][lane] += g[img, o, i, j0 + lane] · tap d, per slice of the batch
            // Channel by channel (two at a time where the registers allow), so that g is read in
            // order (a channel's plane is contiguous) and each tap's sum stays in a register
            // over the plane; x's image is in L1.
            const int64_t slices = plan.units;
            run("gradc_conv_images", [&](llvm::Value* begin, llvm::Value* end, llvm::Value* thread) {
                llvm::Value *x = base(k.in[0]), *g = poolPlane ? nullptr : base(k.in[1]);
                llvm::Value* expanded = poolPlane ? at(threadPart(thread), i64(plan.expandAt)) : nullptr;
                loopTo(b_.CreateSub(end, begin), "slice", [&](llvm::Value* u) {
                    llvm::Value* s = b_.CreateAdd(begin, u);
                    llvm::Value* sums = at(scratchArea(), b_.CreateMul(s, i64(plan.sumsBlock)));
                    loop(O * D * VL, "z", [&](llvm::Value* e) { store(fp(0), sums, e); });
                    llvm::Value* first = b_.CreateUDiv(b_.CreateMul(s, i64(plan.B)), i64(slices));
                    llvm::Value* last = b_.CreateUDiv(b_.CreateMul(b_.CreateAdd(s, i64(1)), i64(plan.B)), i64(slices));
                    // OB channels at a time: two where 32 vector registers (AVX-512) hold their
                    // 2 D sums, the D taps and 2 rows of g.
                    const bool avx512 = VL * (f64_ ? 64 : 32) == 512;
                    const int64_t OB = avx512 && O % 2 == 0 && 3 * D + 2 <= 32 ? 2 : 1;
                    std::vector<llvm::Value*> acc;
                    for (int64_t t = 0; t < OB * D; ++t) acc.push_back(variable(vecTy, llvm::Constant::getNullValue(vecTy)));
                    loopTo(b_.CreateSub(last, first), "img", [&](llvm::Value* d) {
                        llvm::Value* img = b_.CreateAdd(first, d);
                        llvm::Value* image = at(x, b_.CreateMul(img, i64(C * H * W)));
                        loop(O / OB, "ob", [&](llvm::Value* ob) {
                            llvm::Value* o0 = b_.CreateMul(ob, i64(OB));
                            llvm::Value* plane; // g's OB planes: in place, or expanded from the pool's
                            if (poolPlane) expandGradient(expanded, img, o0, OB), plane = expanded;
                            else plane = at(g, b_.CreateMul(b_.CreateAdd(b_.CreateMul(img, i64(O)), o0), i64(OH * OW)));
                            for (llvm::Value* a : acc) b_.CreateStore(llvm::Constant::getNullValue(vecTy), a);
                            // Chunks outermost: the lanes inside the image, per tap column, are
                            // then the same for every row.
                            loop(chunks, "v", [&](llvm::Value* v) {
                                loop(OH, "i", [&](llvm::Value* i) {
                                    llvm::Value* j0 = b_.CreateMul(v, i64(VL));
                                    llvm::Value* keep;
                                    const std::vector<llvm::Value*> xv = taps(image, i, j0, keep);
                                    for (int64_t q = 0; q < OB; ++q) {
                                        llvm::Value* gv = b_.CreateMaskedLoad(
                                            vecTy, at(plane, b_.CreateAdd(i64(q * OH * OW), b_.CreateAdd(b_.CreateMul(i, i64(OW)), j0))),
                                            elementAlign, keep, llvm::Constant::getNullValue(vecTy));
                                        for (int64_t t = 0; t < D; ++t) {
                                            llvm::Value* a = acc[size_t(q * D + t)];
                                            b_.CreateStore(fma(gv, xv[size_t(t)], b_.CreateLoad(vecTy, a)), a);
                                        }
                                    }
                                }, /*vectorise=*/false);
                            }, /*vectorise=*/false);
                            llvm::Value* row = at(sums, b_.CreateMul(o0, i64(D * VL))); // OB channels' sums, one after another
                            for (int64_t t = 0; t < OB * D; ++t) {
                                llvm::Value* p = at(row, i64(t * VL));
                                b_.CreateAlignedStore(b_.CreateFAdd(b_.CreateAlignedLoad(vecTy, p, elementAlign),
                                                                    b_.CreateLoad(vecTy, acc[size_t(t)])),
                                                      p, elementAlign);
                            }
                        }, /*vectorise=*/false);
                    });
                });
            });
            // dW[o][d] = Σ over the slices, in order, of their lanes' sums, in order.
            llvm::Value* dw = base(k.out[0]);
            loop(O * D, "od", [&](llvm::Value* od) {
                llvm::Value* sum = fp(0);
                for (int64_t t = 0; t < slices; ++t)
                    for (int64_t l = 0; l < VL; ++l)
                        sum = b_.CreateFAdd(sum, load(scratchArea(), b_.CreateAdd(i64(t * plan.sumsBlock + l), b_.CreateMul(od, i64(VL)))));
                store(sum, dw, od);
            }, /*vectorise=*/false);
            return;
        }
        // conv2d: per band of rows of an image, per row i and chunk, y[img, o, i, chunk] = Σ_d W[o][d] tap d.
        const bool epilogue = k.hasEpilogue();
        const int64_t band = plan.band, bands = (OH + band - 1) / band;
        Kernel epi;
        if (epilogue) epi = k, epi.kind = Kernel::Kind::Loop, epi.outer = plan.B, epi.rows = O, epi.cols = OH * OW;
        run("gradc_conv_rows", [&](llvm::Value* begin, llvm::Value* end, llvm::Value* thread) {
            llvm::Value* buf = threadPart(thread); // with an epilogue: the band's results [O][band OW]
            llvm::Value *x = base(k.in[0]), *w = base(k.in[1]);
            llvm::Value* y = epilogue ? nullptr : base(k.out[0]);
            LoopBases lb = epilogue ? loopBases(epi) : LoopBases{};
            if (pooled) lb.stores[0] = buf; // the epilogue's one store, kept in the buffer
            loopTo(b_.CreateSub(end, begin), "unit", [&](llvm::Value* u) {
                llvm::Value* unit = b_.CreateAdd(begin, u);
                llvm::Value* img = b_.CreateUDiv(unit, i64(bands));
                llvm::Value* i0 = b_.CreateMul(b_.CreateURem(unit, i64(bands)), i64(band));
                llvm::Value* rows = smin(i64(band), b_.CreateSub(i64(OH), i0));
                llvm::Value* image = at(x, b_.CreateMul(img, i64(C * H * W)));
                loopTo(rows, "i", [&](llvm::Value* di) {
                    llvm::Value* i = b_.CreateAdd(i0, di);
                    loop(chunks, "v", [&](llvm::Value* v) {
                        llvm::Value* j0 = b_.CreateMul(v, i64(VL));
                        llvm::Value* keep;
                        const std::vector<llvm::Value*> xv = taps(image, i, j0, keep);
                        // Where channel o's chunk goes: the band's buffer, or y itself.
                        llvm::Value* to = epilogue ? at(buf, b_.CreateAdd(b_.CreateMul(di, i64(OW)), j0))
                                                   : at(y, b_.CreateAdd(b_.CreateMul(img, i64(O * OH * OW)),
                                                                        b_.CreateAdd(b_.CreateMul(i, i64(OW)), j0)));
                        const int64_t channelStride = epilogue ? band * OW : OH * OW;
                        // OB channels at a time: their sums are chains of D dependent FMAs,
                        // which OB side by side keep the FMA units busy.
                        const int64_t OB = O % 4 == 0 ? 4 : O % 2 == 0 ? 2 : 1;
                        loop(O / OB, "o", [&](llvm::Value* ob) {
                            std::vector<llvm::Value*> acc(size_t(OB), llvm::Constant::getNullValue(vecTy));
                            llvm::Value* w0 = at(w, b_.CreateMul(ob, i64(OB * D)));
                            for (int64_t t = 0; t < D; ++t)
                                for (int64_t q = 0; q < OB; ++q)
                                    acc[size_t(q)] = fma(b_.CreateVectorSplat(unsigned(VL), load(w0, i64(q * D + t))), xv[size_t(t)], acc[size_t(q)]);
                            for (int64_t q = 0; q < OB; ++q) {
                                llvm::Value* o = b_.CreateAdd(b_.CreateMul(ob, i64(OB)), i64(q));
                                b_.CreateMaskedStore(acc[size_t(q)], at(to, b_.CreateMul(o, i64(channelStride))), elementAlign, keep);
                            }
                        }, /*vectorise=*/false);
                    }, /*vectorise=*/false);
                });
                if (epilogue && !pooled) // the band's bias and activation (and y, when something reads it), channel by channel
                    loop(O, "o", [&](llvm::Value* o) {
                        llvm::Value* from = at(buf, b_.CreateMul(o, i64(band * OW)));
                        llvm::Value* pos0 = b_.CreateMul(i0, i64(OW));
                        loopTo(b_.CreateMul(rows, i64(OW)), "c", [&](llvm::Value* c) {
                            element(epi, lb, o, b_.CreateAdd(pos0, c), load(from, c), img);
                        });
                    });
                if (pooled) // the image's epilogue in place in the buffer (at image 0's index), then its pool, channel by channel
                    loop(O, "o", [&](llvm::Value* o) {
                        llvm::Value* from = at(buf, b_.CreateMul(o, i64(OH * OW)));
                        loop(OH * OW, "c", [&](llvm::Value* c) { element(epi, lb, o, c, load(from, c), i64(0)); });
                        llvm::Value* plane = b_.CreateMul(b_.CreateAdd(b_.CreateMul(img, i64(O)), o), i64(pooledPlane));
                        std::vector<llvm::Value*> args = {from};
                        args.push_back(at(base(k.out[1]), plane));
                        if (k.maxPositions) args.push_back(byteAt(base(k.out[2]), plane));
                        b_.CreateCall(poolPlane, args);
                    }, /*vectorise=*/false);
            });
        });
        return;
    }

    if (gradW) {
        const int64_t O = plan.O, P = plan.K, ld = nt * NR, slices = plan.units;
        llvm::Value* sumsArea = at(scratchArea(), i64(plan.sumsAt));
        loop(slices * plan.sumsBlock, "z", [&](llvm::Value* i) { store(fp(0), sumsArea, i); });
        run("gradc_conv_images", [&](llvm::Value* begin, llvm::Value* end, llvm::Value* thread) {
            llvm::Value* part = threadPart(thread);
            llvm::Value* packed = at(part, i64(plan.packedAt));
            llvm::Value *x = base(k.in[0]), *g = poolPlane ? nullptr : base(k.in[1]);
            llvm::Value* expanded = poolPlane ? at(part, i64(plan.expandAt)) : nullptr;
            loopTo(b_.CreateSub(end, begin), "slice", [&](llvm::Value* u) {
                // Slice s: images [s B / slices, (s + 1) B / slices), summed into its block.
                llvm::Value* s = b_.CreateAdd(begin, u);
                llvm::Value* sums = at(scratchArea(), b_.CreateAdd(i64(plan.sumsAt), b_.CreateMul(s, i64(plan.sumsBlock))));
                llvm::Value* first = b_.CreateUDiv(b_.CreateMul(s, i64(plan.B)), i64(slices));
                llvm::Value* last = b_.CreateUDiv(b_.CreateMul(b_.CreateAdd(s, i64(1)), i64(plan.B)), i64(slices));
                loopTo(b_.CreateSub(last, first), "img", [&](llvm::Value* d) {
                    llvm::Value* img = b_.CreateAdd(first, d);
                    packView(part, plan.aStride, [&](llvm::Value* b) { return at(x, b_.CreateMul(b, i64(plan.C * plan.H * plan.W))); },
                             b_.CreateMul(img, i64(P)), P);
                    llvm::Value* gb = expanded; // g_b: in place, or expanded from the pool's
                    if (poolPlane) expandGradient(expanded, img, i64(0), O);
                    else gb = at(g, b_.CreateMul(img, i64(O * P)));
                    b_.CreateCall(packB_, {packed, gb, i64(O), i64(P), b_.getTrue(), i64(0), i64(nt)});
                    loop(nt, "jt", [&](llvm::Value* jt) {
                        llvm::Value* panel = at(packed, b_.CreateMul(jt, i64(P * NR)));
                        loop(mt, "it", [&](llvm::Value* it) {
                            llvm::Value* r0 = b_.CreateMul(it, i64(MR));
                            llvm::Value* out = at(sums, b_.CreateAdd(b_.CreateMul(r0, i64(ld)), b_.CreateMul(jt, i64(NR))));
                            tile(out, i64(ld), part, plan.aStride, r0, panel, P, true);
                        });
                    });
                });
            });
        });
        // dW[o][m] = Σ over the slices, in order, of their sums [m][o].
        llvm::Value* dw = base(k.out[0]);
        loop(O, "o", [&](llvm::Value* o) {
            loop(M, "m", [&](llvm::Value* m) {
                llvm::Value* s = fp(0);
                for (int64_t t = 0; t < slices; ++t)
                    s = b_.CreateFAdd(s, load(sumsArea, b_.CreateAdd(i64(t * plan.sumsBlock), b_.CreateAdd(b_.CreateMul(m, i64(ld)), o))));
                store(s, dw, b_.CreateAdd(b_.CreateMul(o, i64(M)), m));
            }, /*vectorise=*/false);
        });
        return;
    }

    // conv2d and grad_x: A is W ([O][C KH KW], read in place) or W' ([C][O KH KW], copied).
    const int64_t outImage = M * perImage; // elements of one image of the result
    if (gradX) {
        llvm::Value* w = base(k.in.back()); // after g, or the pool's two operands that give it
        llvm::Value* wt = at(scratchArea(), i64(plan.weightsAt));
        const int64_t O = plan.O, C = plan.C, taps = KH * KW;
        loop(O, "o", [&](llvm::Value* o) {
            loop(C, "c", [&](llvm::Value* c) {
                llvm::Value* from = at(w, b_.CreateMul(b_.CreateAdd(b_.CreateMul(o, i64(C)), c), i64(taps)));
                llvm::Value* to = at(wt, b_.CreateAdd(b_.CreateMul(c, i64(K)), b_.CreateMul(o, i64(taps))));
                loop(taps, "t", [&](llvm::Value* t) { store(load(from, t), to, t); });
            });
        });
    }
    // A pooled conv pools an image's channels from its stored values (planes of OH OW).
    auto poolImage = [&](llvm::Value* img) {
        llvm::Value *y = base(k.stores[0].buffer), *pooledY = base(k.out[1]);
        loop(M, "po", [&](llvm::Value* o) {
            llvm::Value* plane = b_.CreateAdd(b_.CreateMul(img, i64(M)), o);
            std::vector<llvm::Value*> args = {at(y, b_.CreateMul(plane, i64(perImage))), at(pooledY, b_.CreateMul(plane, i64(pooledPlane)))};
            if (k.maxPositions) args.push_back(byteAt(base(k.out[2]), b_.CreateMul(plane, i64(pooledPlane))));
            b_.CreateCall(poolPlane, args);
        }, /*vectorise=*/false);
    };
    // Several threads: whether image img has been pooled (a byte each in the scratch).
    auto pooledFlag = [&](llvm::Value* img) { return b_.CreateGEP(b_.getInt8Ty(), at(scratchArea(), i64(plan.pooledAt)), img); };
    if (pooled && bl.threads > 1) // no image pooled yet
        loop(plan.B, "pz", [&](llvm::Value* img) {
            b_.CreateStore(b_.getInt8(0), pooledFlag(img));
        });
    run("gradc_conv_panels", [&](llvm::Value* begin, llvm::Value* end, llvm::Value* thread) {
        llvm::Value* panel = threadPart(thread);
        llvm::Value* tileBuf = at(panel, i64(plan.tileAt));
        // The view's source: x, g, or (Kernel::poolsGradient) the ring of the images of g this
        // thread expanded last, image b in slot b % ring; `ready` is the next to expand.
        llvm::Value* ring = k.poolsGradient() ? at(panel, i64(plan.expandAt)) : nullptr;
        llvm::Value* src = ring ? nullptr : base(k.in[0]);
        llvm::Value* ready = ring ? variable(b_.getInt64Ty(), b_.CreateUDiv(b_.CreateMul(begin, i64(NR)), i64(perImage))) : nullptr;
        const Images images = [&](llvm::Value* img) {
            if (ring) return at(ring, b_.CreateMul(b_.CreateURem(img, i64(plan.ring)), i64(plan.expanded)));
            return at(src, b_.CreateMul(img, i64(CS * HS * WS)));
        };
        llvm::Value* a = gradX ? at(scratchArea(), i64(plan.weightsAt)) : base(k.in[1]);
        // With an epilogue (conv2d's bias and activation, Kernel::hasEpilogue) every tile goes
        // through the thread's tile and the epilogue stores its values; y is not written.
        const bool epilogue = k.hasEpilogue();
        llvm::Value* out = epilogue ? nullptr : base(k.out[0]);
        Kernel epi;
        LoopBases lb;
        if (epilogue) {
            epi = k;
            epi.kind = Kernel::Kind::Loop, epi.outer = plan.B, epi.rows = M, epi.cols = perImage;
            lb = loopBases(epi);
        }
        loopTo(b_.CreateSub(end, begin), "jt", [&](llvm::Value* u) {
            llvm::Value* jt = b_.CreateAdd(begin, u);
            llvm::Value* q0 = b_.CreateMul(jt, i64(NR));
            llvm::Value* cols = smin(i64(NR), b_.CreateSub(i64(total), q0));
            llvm::Value* img0 = b_.CreateUDiv(q0, i64(perImage));
            llvm::Value* lastImage = b_.CreateUDiv(b_.CreateSub(b_.CreateAdd(q0, cols), i64(1)), i64(perImage));
            if (ring) { // the panel's images not yet in the ring
                llvm::Value* next = b_.CreateLoad(b_.getInt64Ty(), ready);
                loopTo(b_.CreateSub(smax(b_.CreateAdd(lastImage, i64(1)), next), next), "ex", [&](llvm::Value* d) {
                    llvm::Value* img = b_.CreateAdd(next, d);
                    expandGradient(images(img), img, i64(0), CS);
                });
                b_.CreateStore(smax(b_.CreateAdd(lastImage, i64(1)), next), ready);
            }
            packView(panel, NR, images, q0, NR);
            llvm::Value* at0 = b_.CreateSub(q0, b_.CreateMul(img0, i64(perImage)));
            // The panel lies whole in one image: its whole tiles store straight into the result.
            llvm::Value* oneImage = b_.CreateICmpSLE(b_.CreateAdd(at0, i64(NR)), i64(perImage));
            loop(mt, "it", [&](llvm::Value* it) {
                llvm::Value* r0 = b_.CreateMul(it, i64(MR));
                llvm::Value* rows = smin(i64(MR), b_.CreateSub(i64(M), r0));
                // A whole tile in one image: without an epilogue it is stored straight into the
                // result; with one, the epilogue runs over MR x NR, bounds known.
                llvm::Value* whole = b_.CreateAnd(oneImage, b_.CreateICmpEQ(rows, i64(MR)));
                if (epilogue) {
                    tile(tileBuf, i64(NR), a, K, r0, panel, K, false);
                } else {
                    llvm::Value* straight = at(out, b_.CreateAdd(b_.CreateMul(img0, i64(outImage)),
                                                                 b_.CreateAdd(b_.CreateMul(r0, i64(perImage)), at0)));
                    tile(b_.CreateSelect(whole, straight, tileBuf), b_.CreateSelect(whole, i64(perImage), i64(NR)), a, K,
                         r0, panel, K, false);
                }
                ifElse(whole, [&] {
                    if (!epilogue) return;
                    loop(MR, "r", [&](llvm::Value* r) {
                        llvm::Value* m = b_.CreateAdd(r0, r);
                        loop(NR, "c", [&](llvm::Value* c) {
                            element(epi, lb, m, b_.CreateAdd(at0, c), load(tileBuf, b_.CreateAdd(b_.CreateMul(r, i64(NR)), c)), img0);
                        });
                    });
                }, [&] { // the tile's rows, image by image
                    loopTo(b_.CreateAdd(b_.CreateSub(lastImage, img0), i64(1)), "im", [&](llvm::Value* d) {
                        llvm::Value* img = b_.CreateAdd(img0, d);
                        llvm::Value* imgStart = b_.CreateMul(img, i64(perImage));
                        llvm::Value* c0 = b_.CreateSub(smax(q0, imgStart), q0); // the panel's columns [c0, c1)
                        llvm::Value* c1 = b_.CreateSub(smin(b_.CreateAdd(q0, cols), b_.CreateAdd(imgStart, i64(perImage))), q0);
                        if (epilogue) { // the epilogue at [img, r0 + r, position]
                            llvm::Value* pos0 = b_.CreateSub(b_.CreateAdd(q0, c0), imgStart);
                            loopTo(rows, "r", [&](llvm::Value* r) {
                                llvm::Value* from = at(tileBuf, b_.CreateAdd(b_.CreateMul(r, i64(NR)), c0));
                                llvm::Value* m = b_.CreateAdd(r0, r);
                                loopTo(b_.CreateSub(c1, c0), "c", [&](llvm::Value* c) {
                                    element(epi, lb, m, b_.CreateAdd(pos0, c), load(from, c), img);
                                });
                            });
                            return;
                        }
                        llvm::Value* dst = at(out, b_.CreateAdd(b_.CreateMul(img, i64(outImage)),
                                                                b_.CreateSub(b_.CreateAdd(q0, c0), imgStart)));
                        loopTo(rows, "r", [&](llvm::Value* r) {
                            llvm::Value* to = at(dst, b_.CreateMul(b_.CreateAdd(r0, r), i64(perImage)));
                            llvm::Value* from = at(tileBuf, b_.CreateAdd(b_.CreateMul(r, i64(NR)), c0));
                            loopTo(b_.CreateSub(c1, c0), "c", [&](llvm::Value* c) { store(load(from, c), to, c); });
                        });
                    });
                });
            });
            // Pooled (Kernel::poolsOutput): the images that end in this panel and began in this
            // run of panels are complete; they are pooled now, while their values are in cache.
            if (!pooled) return;
            llvm::Value* firstImage = b_.CreateUDiv(b_.CreateAdd(b_.CreateMul(begin, i64(NR)), i64(perImage - 1)), i64(perImage));
            llvm::Value* from = smax(img0, firstImage), *to = b_.CreateUDiv(b_.CreateAdd(q0, cols), i64(perImage));
            loopTo(b_.CreateSub(smax(to, from), from), "pi", [&](llvm::Value* d) {
                llvm::Value* img = b_.CreateAdd(from, d);
                poolImage(img);
                if (bl.threads > 1) b_.CreateStore(b_.getInt8(1), pooledFlag(img));
            });
        });
    });
    // Several threads: an image whose panels two runs shared is pooled here, after both.
    if (pooled && bl.threads > 1)
        loop(plan.B, "pi", [&](llvm::Value* img) {
            ifElse(b_.CreateICmpEQ(b_.CreateLoad(b_.getInt8Ty(), pooledFlag(img)), b_.getInt8(0)), [&] { poolImage(img); }, [] {});
        }, /*vectorise=*/false);
}

} // namespace gradc
