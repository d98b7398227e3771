// LowerPool.cpp — the pooling kernels: maxpool2d, avgpool2d and their gradients, each a
// kernel of its own over the planes (image, channel) of x[B,C,H,W]. Their semantics are
// Ops.def's and the interpreter's (PyTorch's): -inf padding for the maximum, NaN wins, the
// FIRST maximum of a window in row-major window order takes the gradient, the average
// divides by the whole window (count_include_pad), and overlapping windows add up.
//
// One plane is one call of a plane function (its pointers `noalias`); the planes are spread
// over the thread pool, so a thread owns whole planes and the gradients, which add into
// their plane, never race. Within a plane, the outputs whose window lies inside the image
// (most of them) compute the whole window in registers, KH x KW unrolled, VL outputs of a
// row at a time: for strides 1 and 2 in vectors written out (one masked load per window
// row and column; stride 2: one load of 2 VL lanes, its even ones, where the optimiser alone
// would gather), for larger strides a loop the optimiser vectorises. The outputs whose
// window the image clips (the border) take the window's rows inside the image and, for each
// column q, run along the row over exactly the outputs whose column j SW + q - PW is inside
// it (validRange), the result kept in memory between. Either way each output's window is
// taken in row-major order, so the first maximum and the sums' order are the interpreter's.
// A global average pool (the window the whole image) is a plane sum, and its gradient a
// fill. The maximum's gradient finds a row's maxima first (their positions in the plane
// function's frame) and then adds g at them one by one, since windows that overlap may
// share one; windows that do not overlap along the row add g in the same pass (windows that
// share no position at all store it, unread, and when they tile the plane exactly the plane
// is not zeroed first). Rows longer than kFrameRow outputs take each window's maximum on its
// own instead. When the maxpool of the same program stored the positions of its maxima
// (Kernel::maxPositions: a byte per output, the place in its window, found in the same pass
// as the maxima), the gradient reads them instead of finding the maxima again: it never
// reads x. The plane function also serves convolutions that pool their output or expand a
// pool's gradient (LowerConv.cpp), on planes of their own buffers.
#include "Lowering.h"

#include <fmt/format.h>

#include <limits>
#include <tuple>

namespace gradc {
namespace {

/// The outputs j of a row of `out` whose input column j * stride + q - pad lies in
/// [0, size): [first, end), possibly empty.
std::pair<int64_t, int64_t> validRange(int64_t out, int64_t size, int64_t q, int64_t stride, int64_t pad) {
    int64_t first = 0;
    if (pad - q > 0) first = (pad - q + stride - 1) / stride;
    const int64_t end = size - 1 + pad - q < 0 ? 0 : std::min(out, (size - 1 + pad - q) / stride + 1);
    return {first, std::max(first, end)};
}

constexpr int64_t kFrameRow = 4096;

} // namespace

Lowering::PoolPlane Lowering::poolPlaneOf(const Kernel& k) const {
    const bool grad = k.op == Op::MaxPool2dGrad || k.op == Op::AvgPool2dGrad;
    const Shape& xs = p_->buffers[size_t(grad ? k.out[0] : k.in[0])].shape;
    const Shape& ys = p_->buffers[size_t(grad ? k.in[k.op == Op::MaxPool2dGrad ? 1 : 0] : k.out[0])].shape;
    internal_assert(xs.size() == 4 && ys.size() == 4, "pooling of a tensor that is not an image");
    return {k.op, k.attrs.window, xs, ys, k.maxPositions};
}

llvm::Function* Lowering::poolPlane(const PoolPlane& pp) {
    const Op op = pp.op;
    const Window& w = pp.window;
    const bool max = op == Op::MaxPool2d || op == Op::MaxPool2dGrad;
    const bool grad = op == Op::MaxPool2dGrad || op == Op::AvgPool2dGrad;
    internal_assert(max || op == Op::AvgPool2d || op == Op::AvgPool2dGrad,
                    fmt::format("op '{}' has no pooling kernel", describe(op).spelling));
    internal_assert(!pp.positions || max, "positions of an average pool");
    const int64_t H = pp.x[2], W = pp.x[3], OH = pp.y[2], OW = pp.y[3], xPlane = H * W;
    const double invArea = 1.0 / (double(w.kh) * double(w.kw));
    const bool global = OH == 1 && OW == 1 && w.kh == H && w.kw == W && w.ph == 0 && w.pw == 0;
    // The maximum's gradient keeps a row of best values and their positions (i32) in the
    // plane function's frame: up to kFrameRow outputs, of planes i32 can index.
    const bool rowsInFrame = OW <= kFrameRow && xPlane < (int64_t(1) << 31);
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* i32 = b_.getInt32Ty();

    // The plane function: (each operand's plane, the result's plane[, the maxima's positions]).
    const unsigned operands = op == Op::MaxPool2dGrad ? 2 : 1, params = operands + 1 + (pp.positions && !grad);
    llvm::Function* plane = helper("gradc_pool_plane", std::vector<llvm::Type*>(params, ptr), [&] {
        // MaxPool2dGrad from positions: x is the positions' plane (bytes).
        llvm::Value* x = op == Op::AvgPool2dGrad ? nullptr : fn_->getArg(0);
        llvm::Value* g = op == Op::MaxPool2dGrad ? fn_->getArg(1) : op == Op::AvgPool2dGrad ? fn_->getArg(0) : nullptr;
        llvm::Value* out = fn_->getArg(operands);
        llvm::Value* positions = pp.positions ? (grad ? x : fn_->getArg(operands + 1)) : nullptr;
        if (global && !max) {
            if (grad) {
                llvm::Value* share = b_.CreateFMul(load(g, i64(0)), fp(invArea));
                loop(xPlane, "e", [&](llvm::Value* e) { store(share, out, e); });
            } else {
                llvm::Value* sum = variable(T_, fp(0));
                loop(xPlane, "e", [&](llvm::Value* e) { b_.CreateStore(b_.CreateFAdd(b_.CreateLoad(T_, sum), load(x, e)), sum); });
                store(b_.CreateFMul(b_.CreateLoad(T_, sum), fp(invArea)), out, i64(0));
            }
            return;
        }
        // Windows that share no position (apart along both rows and columns) give each of
        // theirs one value, stored rather than added (a masked store read back at once would
        // wait for it: the loads cannot take the value from a masked store); where they also
        // cover the plane exactly, there is nothing to zero first.
        const bool disjoint = w.sw >= w.kw && w.sh >= w.kh;
        const bool tiles = disjoint && w.sw == w.kw && w.sh == w.kh && w.ph == 0 && w.pw == 0 && OH * w.sh == H &&
                           OW * w.sw == W && w.sw <= 2 && rowsInFrame && !(global && !max);
        if (grad && !(op == Op::MaxPool2dGrad && tiles)) loop(xPlane, "zero", [&](llvm::Value* e) { store(fp(0), out, e); });
        // The forward maxpool stores, per output, its maximum's place in the window: a byte,
        // p KW + q for window row p and column q. storedAt gives output (i, j)'s as a position
        // in the plane (i32), indexOf the byte of the position at window row r, column q.
        auto* i8 = b_.getInt8Ty();
        auto windowTop = [&](llvm::Value* i) { return b_.CreateSub(b_.CreateMul(i, i64(w.sh)), i64(w.ph)); }; // output row i's first row
        auto storedAt = [&](llvm::Value* i, llvm::Value* j) {
            llvm::Value* t = b_.CreateZExt(b_.CreateLoad(i8, b_.CreateGEP(i8, positions, b_.CreateAdd(b_.CreateMul(i, i64(OW)), j))),
                                           b_.getInt64Ty());
            llvm::Value* row = b_.CreateAdd(windowTop(i), b_.CreateUDiv(t, i64(w.kw)));
            llvm::Value* col = b_.CreateAdd(b_.CreateSub(b_.CreateMul(j, i64(w.sw)), i64(w.pw)), b_.CreateURem(t, i64(w.kw)));
            return b_.CreateTrunc(b_.CreateAdd(b_.CreateMul(row, i64(W)), col), i32);
        };
        auto indexOf = [&](llvm::Value* r, int64_t q) { return b_.CreateTrunc(b_.CreateAdd(b_.CreateMul(r, i64(w.kw)), i64(q)), i8); };
        if (op == Op::MaxPool2dGrad && positions && !rowsInFrame) { // g to each output's maximum, in order
            loop(OH * OW, "yi", [&](llvm::Value* yi) {
                llvm::Value* at = b_.CreateZExt(storedAt(b_.CreateUDiv(yi, i64(OW)), b_.CreateURem(yi, i64(OW))), b_.getInt64Ty());
                store(b_.CreateFAdd(load(out, at), load(g, yi)), out, at);
            }, /*vectorise=*/false);
            return;
        }
        if (op == Op::MaxPool2dGrad && !rowsInFrame) {
            // Rows too long for the frame (or planes too large for i32 positions): each
            // window's maximum on its own, in registers.
            const double inf = std::numeric_limits<double>::infinity();
            auto clip = [&](llvm::Value* from, int64_t k, int64_t size) { // [max(0, from), min(size, from + k))
                llvm::Value* lo = b_.CreateSelect(b_.CreateICmpSLT(from, i64(0)), i64(0), from);
                llvm::Value* end = b_.CreateAdd(from, i64(k));
                return std::pair{lo, b_.CreateSelect(b_.CreateICmpSGT(end, i64(size)), i64(size), end)};
            };
            loop(OH, "i", [&](llvm::Value* i) {
                llvm::Value *r0, *r1; // not structured bindings: clang 14 cannot capture those
                std::tie(r0, r1) = clip(windowTop(i), w.kh, H);
                loop(OW, "j", [&](llvm::Value* j) {
                    llvm::Value *c0, *c1;
                    std::tie(c0, c1) = clip(b_.CreateSub(b_.CreateMul(j, i64(w.sw)), i64(w.pw)), w.kw, W);
                    llvm::Value* bestV = variable(T_, fp(-inf));
                    llvm::Value* argV = variable(b_.getInt64Ty(), b_.CreateAdd(b_.CreateMul(r0, i64(W)), c0));
                    loopTo(b_.CreateSub(r1, r0), "r", [&](llvm::Value* rr) {
                        llvm::Value* row = b_.CreateMul(b_.CreateAdd(r0, rr), i64(W));
                        loopTo(b_.CreateSub(c1, c0), "c", [&](llvm::Value* cc) {
                            llvm::Value* pos = b_.CreateAdd(row, b_.CreateAdd(c0, cc));
                            llvm::Value *v = load(x, pos), *m = b_.CreateLoad(T_, bestV);
                            llvm::Value* take = b_.CreateOr(b_.CreateFCmpOGT(v, m), b_.CreateFCmpUNO(v, v));
                            b_.CreateStore(b_.CreateSelect(take, v, m), bestV);
                            b_.CreateStore(b_.CreateSelect(take, pos, b_.CreateLoad(b_.getInt64Ty(), argV)), argV);
                        });
                    });
                    llvm::Value* at = b_.CreateLoad(b_.getInt64Ty(), argV);
                    store(b_.CreateFAdd(load(out, at), load(g, b_.CreateAdd(b_.CreateMul(i, i64(OW)), j))), out, at);
                }, /*vectorise=*/false);
            });
            return;
        }
        // The maximum's gradient keeps, per output of the row, the best value so far and
        // its position in the plane: in this call's frame, so each thread has its own.
        llvm::Value *best = nullptr, *arg = nullptr;
        if (op == Op::MaxPool2dGrad) {
            llvm::IRBuilder<> eb(entryBlock_, entryBlock_->begin());
            best = eb.CreateAlloca(llvm::ArrayType::get(T_, uint64_t(OW)));
            arg = eb.CreateAlloca(llvm::ArrayType::get(i32, uint64_t(OW)));
        }
        auto bestAt = [&](llvm::Value* j) { return b_.CreateGEP(T_, best, j); };
        auto argAt = [&](llvm::Value* j) { return b_.CreateGEP(i32, arg, j); };
        const double inf = std::numeric_limits<double>::infinity();
        // A larger value or a NaN takes the place (the last NaN of a window wins, as in PyTorch and
        // the interpreter); an equal value does not: the first maximum stays.
        auto takes = [&](llvm::Value* v, llvm::Value* best) {
            return b_.CreateOr(b_.CreateFCmpOGT(v, best), b_.CreateFCmpUNO(v, v));
        };
        // The position in the plane of row r's column j SW + q - PW.
        auto position = [&](llvm::Value* r, llvm::Value* j, int64_t q) {
            return b_.CreateAdd(b_.CreateMul(r, i64(W)), b_.CreateAdd(b_.CreateMul(j, i64(w.sw)), i64(q - w.pw)));
        };
        // The gradient of the maximum goes where arg[j] says, for outputs [from, to): one by
        // one, since windows that overlap may share their maximum.
        auto scatter = [&](llvm::Value* yRow, int64_t from, int64_t to) {
            loop(to - from, "j", [&](llvm::Value* jj) {
                llvm::Value* j = b_.CreateAdd(jj, i64(from));
                llvm::Value* at = b_.CreateZExt(b_.CreateLoad(i32, argAt(j)), b_.getInt64Ty());
                store(b_.CreateFAdd(load(out, at), load(g, b_.CreateAdd(yRow, j))), out, at);
            }, /*vectorise=*/false);
        };

        // Outputs [from, to) of row i whose window rows inside the image are [r0, r0 + rows):
        // the window's positions one (r, q) at a time for all of them, the result (or the best
        // so far) kept in memory between. Serves every output whose window the image clips.
        auto clipped = [&](llvm::Value* i, llvm::Value* r0, llvm::Value* rows, int64_t from, int64_t to) {
            llvm::Value* yRow = b_.CreateMul(i, i64(OW));
            if (op == Op::MaxPool2dGrad && positions) { // the maxima as the forward pass found them
                loop(to - from, "j", [&](llvm::Value* jj) {
                    llvm::Value* j = b_.CreateAdd(jj, i64(from));
                    b_.CreateStore(storedAt(i, j), argAt(j));
                });
                return scatter(yRow, from, to);
            }
            if (op != Op::AvgPool2dGrad) loop(to - from, "j", [&](llvm::Value* jj) {
                llvm::Value* j = b_.CreateAdd(jj, i64(from));
                // A window of -inf only: its first position inside.
                llvm::Value* left = b_.CreateSub(b_.CreateMul(j, i64(w.sw)), i64(w.pw));
                llvm::Value* c0 = b_.CreateSelect(b_.CreateICmpSLT(left, i64(0)), i64(0), left);
                auto first = [&] { return b_.CreateTrunc(b_.CreateAdd(b_.CreateMul(r0, i64(W)), c0), i32); };
                if (op == Op::MaxPool2dGrad) {
                    b_.CreateStore(fp(-inf), bestAt(j));
                    b_.CreateStore(first(), argAt(j));
                } else {
                    store(fp(max ? -inf : 0.0), out, b_.CreateAdd(yRow, j));
                    if (positions) { // the window's row r0 - top, column c0 - left
                        llvm::Value* p = b_.CreateSub(r0, windowTop(i));
                        b_.CreateStore(b_.CreateTrunc(b_.CreateAdd(b_.CreateMul(p, i64(w.kw)), b_.CreateSub(c0, left)), i8),
                                       b_.CreateGEP(i8, positions, b_.CreateAdd(yRow, j)));
                    }
                }
            });
            loopTo(rows, "r", [&](llvm::Value* rr) {
                llvm::Value* r = b_.CreateAdd(r0, rr);
                for (int64_t q = 0; q < w.kw; ++q) {
                    int64_t first, end;
                    std::tie(first, end) = validRange(OW, W, q, w.sw, w.pw);
                    first = std::max(first, from), end = std::min(end, to);
                    if (first >= end) continue;
                    loop(end - first, "j", [&](llvm::Value* jj) {
                        llvm::Value* j = b_.CreateAdd(jj, i64(first));
                        llvm::Value* pos = position(r, j, q);
                        llvm::Value* yi = b_.CreateAdd(yRow, j);
                        switch (op) {
                        case Op::MaxPool2d: {
                            llvm::Value *v = load(x, pos), *m = load(out, yi);
                            llvm::Value* take = takes(v, m);
                            store(b_.CreateSelect(take, v, m), out, yi);
                            if (positions) { // window row r - top, column q
                                llvm::Value* p = b_.CreateGEP(i8, positions, yi);
                                llvm::Value* wr = b_.CreateSub(r, windowTop(i));
                                b_.CreateStore(b_.CreateSelect(take, indexOf(wr, q), b_.CreateLoad(i8, p)), p);
                            }
                            break;
                        }
                        case Op::AvgPool2d: store(b_.CreateFAdd(load(out, yi), load(x, pos)), out, yi); break;
                        case Op::MaxPool2dGrad: {
                            llvm::Value *v = load(x, pos), *m = b_.CreateLoad(T_, bestAt(j));
                            llvm::Value* take = takes(v, m);
                            b_.CreateStore(b_.CreateSelect(take, v, m), bestAt(j));
                            b_.CreateStore(b_.CreateSelect(take, b_.CreateTrunc(pos, i32), b_.CreateLoad(i32, argAt(j))),
                                           argAt(j));
                            break;
                        }
                        case Op::AvgPool2dGrad:
                            store(b_.CreateFAdd(load(out, pos), b_.CreateFMul(load(g, yi), fp(invArea))), out, pos);
                            break;
                        default: break;
                        }
                    });
                }
            });
            if (op == Op::AvgPool2d)
                loop(to - from, "j", [&](llvm::Value* jj) {
                    llvm::Value* yi = b_.CreateAdd(yRow, b_.CreateAdd(jj, i64(from)));
                    store(b_.CreateFMul(load(out, yi), fp(invArea)), out, yi);
                });
            if (op == Op::MaxPool2dGrad) scatter(yRow, from, to);
        };

        // Outputs [from, to) of row i whose whole window is inside the image, its top row
        // `top`: each output's window, all KH x KW of it unrolled, in registers; the optimiser
        // vectorises the loop along the row (strides 3 and more: insideVectors below writes
        // the vectors out for strides 1 and 2).
        // The maximum's gradient adds g at its maximum in the same pass when the windows of a
        // row do not overlap (SW >= KW), else scatters after it.
        const bool apart = w.sw >= w.kw;
        auto inside = [&](llvm::Value* i, llvm::Value* top, int64_t from, int64_t to) {
            llvm::Value* yRow = b_.CreateMul(i, i64(OW));
            loop(to - from, "j", [&](llvm::Value* jj) {
                llvm::Value* j = b_.CreateAdd(jj, i64(from));
                llvm::Value* yi = b_.CreateAdd(yRow, j);
                llvm::Value* acc = fp(max ? -inf : 0.0);
                llvm::Value* argv = b_.CreateTrunc(position(top, j, 0), i32);
                llvm::Value* index = llvm::ConstantInt::get(i8, 0); // its place in the window
                llvm::Value* share = op == Op::AvgPool2dGrad ? b_.CreateFMul(load(g, yi), fp(invArea)) : nullptr;
                const bool found = grad && positions; // the maximum as the forward pass found it
                if (found) argv = storedAt(i, j);
                for (int64_t p = 0; p < (found ? 0 : w.kh); ++p) // found: no window to scan
                    for (int64_t q = 0; q < w.kw; ++q) {
                        llvm::Value* pos = position(b_.CreateAdd(top, i64(p)), j, q);
                        if (share) {
                            store(b_.CreateFAdd(load(out, pos), share), out, pos);
                            continue;
                        }
                        llvm::Value* v = load(x, pos);
                        if (!max) {
                            acc = b_.CreateFAdd(acc, v);
                            continue;
                        }
                        llvm::Value* take = takes(v, acc);
                        acc = b_.CreateSelect(take, v, acc);
                        if (grad) argv = b_.CreateSelect(take, b_.CreateTrunc(pos, i32), argv);
                        if (positions) index = b_.CreateSelect(take, indexOf(i64(p), q), index);
                    }
                switch (op) {
                case Op::MaxPool2d:
                    store(acc, out, yi);
                    if (positions) b_.CreateStore(index, b_.CreateGEP(i8, positions, yi));
                    break;
                case Op::AvgPool2d: store(b_.CreateFMul(acc, fp(invArea)), out, yi); break;
                case Op::MaxPool2dGrad:
                    if (!apart) {
                        b_.CreateStore(argv, argAt(j));
                        break;
                    }
                    for (int64_t p = 0; p < w.kh; ++p)
                        for (int64_t q = 0; q < w.kw; ++q) {
                            llvm::Value* pos = position(b_.CreateAdd(top, i64(p)), j, q);
                            llvm::Value* hit = b_.CreateICmpEQ(b_.CreateTrunc(pos, i32), argv);
                            store(b_.CreateFAdd(load(out, pos), b_.CreateSelect(hit, load(g, yi), fp(0))), out, pos);
                        }
                    break;
                default: break;
                }
            });
            if (op == Op::MaxPool2dGrad && !apart) scatter(yRow, from, to);
        };

        // The same for strides 1 and 2 in vectors of VL outputs written out: a row's inputs
        // for VL outputs are one load (stride 2: one load of 2 VL, its even lanes), masked to
        // the outputs [j0, to) and to the inputs they read, so nothing outside is touched.
        // (The optimiser alone masks a row shorter than a vector with gathers.)
        const unsigned VL = unsigned(p_->blocking.vl);
        auto* vec = llvm::FixedVectorType::get(T_, VL);
        const llvm::Align align(f64_ ? 8 : 4);
        auto iota = [&](unsigned n, llvm::Type* ty, int64_t step) {
            std::vector<llvm::Constant*> c;
            for (unsigned l = 0; l < n; ++l) c.push_back(llvm::ConstantInt::get(ty, uint64_t(int64_t(l) * step)));
            return llvm::ConstantVector::get(c);
        };
        // The first `count` lanes of n (a vector of i1).
        auto prefix = [&](unsigned n, llvm::Value* count) {
            return b_.CreateICmpSLT(iota(n, b_.getInt64Ty(), 1), b_.CreateVectorSplat(n, count));
        };
        // Lanes t < count of the vector of buf[at + t s] (s is 1 or 2; the other lanes 0).
        auto rowLoad = [&](llvm::Value* buf, llvm::Value* at, llvm::Value* count, int64_t s) -> llvm::Value* {
            if (s == 1) return b_.CreateMaskedLoad(vec, this->at(buf, at), align, prefix(VL, count), llvm::Constant::getNullValue(vec));
            auto* wide = llvm::FixedVectorType::get(T_, 2 * VL);
            llvm::Value* lanes = b_.CreateSub(b_.CreateMul(count, i64(2)), i64(1));
            llvm::Value* v = b_.CreateMaskedLoad(wide, this->at(buf, at), align, prefix(2 * VL, lanes),
                                                 llvm::Constant::getNullValue(wide));
            std::vector<int> even;
            for (unsigned l = 0; l < VL; ++l) even.push_back(int(2 * l));
            return b_.CreateShuffleVector(v, even);
        };
        // buf[at + t s] += v[t] for lanes t < count; with s = 2, buf[at + 2t + 1] += odd[t]
        // too when `odd` is given (the next column of a window, in the same pass).
        // With `overwrite`, buf[...] = v: nothing else adds there.
        auto rowAdd = [&](llvm::Value* buf, llvm::Value* at, llvm::Value* count, int64_t s, llvm::Value* v,
                          llvm::Value* odd = nullptr, bool overwrite = false) {
            llvm::Value* to = this->at(buf, at);
            if (s == 1) {
                llvm::Value* mask = prefix(VL, count);
                if (overwrite) return (void)b_.CreateMaskedStore(v, to, align, mask);
                llvm::Value* old = b_.CreateMaskedLoad(vec, to, align, mask, llvm::Constant::getNullValue(vec));
                b_.CreateMaskedStore(b_.CreateFAdd(old, v), to, align, mask);
                return;
            }
            auto* wide = llvm::FixedVectorType::get(T_, 2 * VL);
            std::vector<int> spread; // v[t] to lane 2t, odd[t] (or 0) to lane 2t + 1
            for (unsigned l = 0; l < VL; ++l) spread.push_back(int(l)), spread.push_back(int(VL + l));
            llvm::Value* add = b_.CreateShuffleVector(v, odd ? odd : llvm::Constant::getNullValue(vec), spread);
            llvm::Value* lanes = b_.CreateMul(count, i64(2));
            llvm::Value* mask = prefix(2 * VL, odd ? lanes : b_.CreateSub(lanes, i64(1)));
            if (overwrite) return (void)b_.CreateMaskedStore(add, to, align, mask);
            llvm::Value* old = b_.CreateMaskedLoad(wide, to, align, mask, llvm::Constant::getNullValue(wide));
            b_.CreateMaskedStore(b_.CreateFAdd(old, add), to, align, mask);
        };
        auto insideVectors = [&](llvm::Value* i, llvm::Value* top, int64_t from, int64_t to) {
            llvm::Value* yRow = b_.CreateMul(i, i64(OW));
            const int64_t s = w.sw;
            loop((to - from + VL - 1) / VL, "jv", [&](llvm::Value* jb) {
                llvm::Value* j0 = b_.CreateAdd(b_.CreateMul(jb, i64(VL)), i64(from));
                llvm::Value* left = b_.CreateSub(i64(to), j0);
                llvm::Value* count = b_.CreateSelect(b_.CreateICmpSLT(left, i64(VL)), left, i64(VL));
                llvm::Value* y0 = b_.CreateAdd(yRow, j0);
                // The positions in the plane of the VL outputs' column q in row r, as i32.
                auto positionsOf = [&](llvm::Value* at) {
                    return b_.CreateAdd(b_.CreateVectorSplat(VL, b_.CreateTrunc(at, i32)), iota(VL, i32, s));
                };
                llvm::Value* gv = grad ? rowLoad(g, y0, count, 1) : nullptr;
                llvm::Value* acc = b_.CreateVectorSplat(VL, fp(max ? -inf : 0.0));
                llvm::Value* argv = positionsOf(position(top, j0, 0));
                llvm::Value* share = op == Op::AvgPool2dGrad ? b_.CreateFMul(gv, b_.CreateVectorSplat(VL, fp(invArea))) : nullptr;
                auto* indexTy = llvm::FixedVectorType::get(i8, VL);
                llvm::Value* index = llvm::Constant::getNullValue(indexTy); // the maxima's places in their windows
                const bool found = grad && positions; // the maxima as the forward pass found them
                if (found) { // window row t / KW, column t % KW
                    index = b_.CreateMaskedLoad(indexTy, b_.CreateGEP(i8, positions, y0), llvm::Align(1), prefix(VL, count), index);
                    llvm::Value* t = b_.CreateZExt(index, llvm::FixedVectorType::get(i32, VL));
                    auto splat32 = [&](int64_t v) { return b_.CreateVectorSplat(VL, b_.getInt32(uint32_t(v))); };
                    if (!apart)
                        argv = b_.CreateAdd(argv, b_.CreateAdd(b_.CreateMul(b_.CreateUDiv(t, splat32(w.kw)), splat32(W)),
                                                               b_.CreateURem(t, splat32(w.kw))));
                }
                for (int64_t p = 0; p < (found ? 0 : w.kh); ++p) // found: no window to scan
                    for (int64_t q = 0; q < w.kw; ++q) {
                        llvm::Value* at = position(b_.CreateAdd(top, i64(p)), j0, q);
                        if (share) {
                            rowAdd(out, at, count, s, share);
                            continue;
                        }
                        llvm::Value* v = rowLoad(x, at, count, s);
                        if (!max) {
                            acc = b_.CreateFAdd(acc, v);
                            continue;
                        }
                        llvm::Value* take = takes(v, acc);
                        acc = b_.CreateSelect(take, v, acc);
                        if (grad) argv = b_.CreateSelect(take, positionsOf(at), argv);
                        if (positions)
                            index = b_.CreateSelect(take, b_.CreateVectorSplat(VL, llvm::ConstantInt::get(i8, uint64_t(p * w.kw + q))), index);
                    }
                switch (op) {
                case Op::MaxPool2d:
                    b_.CreateMaskedStore(acc, this->at(out, y0), align, prefix(VL, count));
                    if (positions) b_.CreateMaskedStore(index, b_.CreateGEP(i8, positions, y0), llvm::Align(1), prefix(VL, count));
                    break;
                case Op::AvgPool2d:
                    b_.CreateMaskedStore(b_.CreateFMul(acc, b_.CreateVectorSplat(VL, fp(invArea))), at(out, y0), align,
                                         prefix(VL, count));
                    break;
                case Op::MaxPool2dGrad:
                    if (!apart) {
                        b_.CreateMaskedStore(argv, b_.CreateGEP(i32, arg, j0), llvm::Align(4), prefix(VL, count));
                        break;
                    }
                    for (int64_t p = 0; p < w.kh; ++p) {
                        auto share = [&](int64_t q) { // g for the outputs whose maximum is at column q
                            llvm::Value* hit =
                                found ? b_.CreateICmpEQ(index, b_.CreateVectorSplat(VL, llvm::ConstantInt::get(i8, uint64_t(p * w.kw + q))))
                                      : b_.CreateICmpEQ(positionsOf(position(b_.CreateAdd(top, i64(p)), j0, q)), argv);
                            return b_.CreateSelect(hit, gv, llvm::Constant::getNullValue(vec));
                        };
                        llvm::Value* at = position(b_.CreateAdd(top, i64(p)), j0, 0);
                        if (s == 2 && w.kw == 2) rowAdd(out, at, count, s, share(0), share(1), disjoint); // one pass per row
                        else rowAdd(out, at, count, s, share(0), nullptr, disjoint); // apart: KW <= SW, so KW is 1 here
                    }
                    break;
                default: break;
                }
            });
            if (op == Op::MaxPool2dGrad && !apart) scatter(yRow, from, to);
        };

        // Rows [ilo, ihi) and columns [jlo, jhi) of the output have windows inside the image.
        auto within = [](int64_t out, int64_t size, int64_t k, int64_t stride, int64_t pad) {
            const int64_t lo = std::min(out, (pad + stride - 1) / stride);
            const int64_t hi = size + pad - k < 0 ? 0 : std::min(out, (size + pad - k) / stride + 1);
            return std::pair{lo, std::max(lo, hi)};
        };
        int64_t ilo, ihi, jlo, jhi; // not structured bindings: clang 14 cannot capture those
        std::tie(ilo, ihi) = within(OH, H, w.kh, w.sh, w.ph);
        std::tie(jlo, jhi) = within(OW, W, w.kw, w.sw, w.pw);
        auto rowsOf = [&](int64_t from, int64_t to, bool whole) {
            if (from >= to) return;
            loop(to - from, "i", [&](llvm::Value* ii) {
                llvm::Value* i = b_.CreateAdd(ii, i64(from));
                llvm::Value* top = windowTop(i);
                if (!whole) { // the window's rows inside the image: never none (padding <= half the window)
                    llvm::Value* r0 = b_.CreateSelect(b_.CreateICmpSLT(top, i64(0)), i64(0), top);
                    llvm::Value* bottom = b_.CreateAdd(top, i64(w.kh));
                    llvm::Value* r1 = b_.CreateSelect(b_.CreateICmpSGT(bottom, i64(H)), i64(H), bottom);
                    clipped(i, r0, b_.CreateSub(r1, r0), 0, OW);
                    return;
                }
                if (jlo >= jhi) return clipped(i, top, i64(w.kh), 0, OW);
                if (jlo > 0) clipped(i, top, i64(w.kh), 0, jlo);
                if (w.sw <= 2) insideVectors(i, top, jlo, jhi);
                else inside(i, top, jlo, jhi);
                if (jhi < OW) clipped(i, top, i64(w.kh), jhi, OW);
            });
        };
        rowsOf(0, ilo, false);
        rowsOf(ilo, ihi, true);
        rowsOf(ihi, OH, false);
    });
    for (unsigned a = 0; a < params; ++a) plane->addParamAttr(a, llvm::Attribute::NoAlias);
    return plane;
}

void Lowering::pooling(const Kernel& k) {
    const PoolPlane pp = poolPlaneOf(k);
    llvm::Function* plane = poolPlane(pp);
    const int64_t planes = pp.x[0] * pp.x[1];

    // The plane function's arguments in call order (operands, then results: the positions
    // are the pooled image's shape) and their elements per plane.
    std::vector<int32_t> args = k.in;
    for (int32_t id : k.out)
        if (id >= 0) args.push_back(id);
    // The maxima's positions (a byte per pooled element): the gradient's first operand, the
    // maxpool's last result.
    const size_t positionsArg = !k.maxPositions ? args.size() : k.op == Op::MaxPool2dGrad ? 0 : args.size() - 1;
    std::vector<int64_t> strides;
    for (int32_t id : args) strides.push_back(elementCount(p_->buffers[size_t(id)].shape) / planes);
    auto planesFrom = [&](llvm::Value* begin, llvm::Value* end) {
        loopTo(b_.CreateSub(end, begin), "plane", [&](llvm::Value* n) {
            llvm::Value* index = b_.CreateAdd(begin, n);
            std::vector<llvm::Value*> values;
            for (size_t a = 0; a < args.size(); ++a) {
                llvm::Value* offset = b_.CreateMul(index, i64(strides[a]));
                values.push_back(a == positionsArg ? b_.CreateGEP(b_.getInt8Ty(), base(args[a]), offset) : at(base(args[a]), offset));
            }
            b_.CreateCall(plane, values);
        });
    };
    if (p_->blocking.threads <= 1 || planes < 2) return planesFrom(i64(0), i64(planes));
    parallel("gradc_pool_planes", contextArray(), planes,
             [&](llvm::Value* context, llvm::Value* begin, llvm::Value* end, llvm::Value*) {
                 loadContext(context);
                 planesFrom(begin, end);
             });
}

} // namespace gradc
