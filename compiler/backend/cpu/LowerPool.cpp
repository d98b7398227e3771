// LowerPool.cpp — the pooling kernels: maxpool2d, avgpool2d and their gradients, each a
// kernel of its own over the planes (image, channel) of x[B,C,H,W]. Their semantics are
// Ops.def's and the interpreter's (PyTorch's): -inf padding for the maximum, NaN wins, the
// FIRST maximum of a window in row-major window order takes the gradient, the average
// divides by the whole window (count_include_pad), and overlapping windows add up.
//
// One plane is one call of a plane function (its pointers `noalias`); the planes are spread
// over the thread pool, so a thread owns whole planes and the gradients, which add into
// their plane, never race. Within a plane, for each output row i, the window's rows r (only
// those inside the image: padding rows hold nothing to read) and columns q (a constant each,
// unrolled) run outside the innermost loop, which runs along the output row j over exactly
// the outputs whose column j SW + q - PW is inside the image (validRange): no bounds test
// inside it, consecutive for stride 1, and the optimiser vectorises it (stride 2: an
// interleaved load). The window order per output stays row-major, so the first maximum and
// the sums' order are the interpreter's. A global average pool (the window the whole image)
// is a plane sum, and its gradient a fill.
#include "Lowering.h"

#include <fmt/format.h>

#include <limits>

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

} // namespace

void Lowering::pooling(const Kernel& k) {
    const Window& w = k.attrs.window;
    const bool max = k.op == Op::MaxPool2d || k.op == Op::MaxPool2dGrad;
    const bool grad = k.op == Op::MaxPool2dGrad || k.op == Op::AvgPool2dGrad;
    internal_assert(max || k.op == Op::AvgPool2d || k.op == Op::AvgPool2dGrad,
                    fmt::format("op '{}' has no pooling kernel", describe(k.op).spelling));
    // The image x [B,C,H,W] and the pooled [B,C,OH,OW]: operands or result, by the op.
    const Shape& xs = p_->buffers[size_t(k.op == Op::AvgPool2dGrad ? k.out[0] : k.in[0])].shape;
    const Shape& ys = p_->buffers[size_t(grad ? k.in[k.op == Op::MaxPool2dGrad ? 1 : 0] : k.out[0])].shape;
    internal_assert(xs.size() == 4 && ys.size() == 4, "pooling of a tensor that is not an image");
    const int64_t planes = xs[0] * xs[1], H = xs[2], W = xs[3], OH = ys[2], OW = ys[3];
    const int64_t xPlane = H * W, yPlane = OH * OW;
    const double invArea = 1.0 / (double(w.kh) * double(w.kw));
    const bool global = OH == 1 && OW == 1 && w.kh == H && w.kw == W && w.ph == 0 && w.pw == 0;
    auto* ptr = llvm::PointerType::get(ctx_, 0);
    auto* i32 = b_.getInt32Ty();

    // The plane function: (each operand's plane, the result's plane).
    const unsigned operands = unsigned(k.in.size());
    llvm::Function* plane = helper("gradc_pool_plane", std::vector<llvm::Type*>(operands + 1, ptr), [&] {
        llvm::Value* x = k.op == Op::AvgPool2dGrad ? nullptr : fn_->getArg(0);
        llvm::Value* g = k.op == Op::MaxPool2dGrad ? fn_->getArg(1) : k.op == Op::AvgPool2dGrad ? fn_->getArg(0) : nullptr;
        llvm::Value* out = fn_->getArg(operands);
        if (grad) loop(xPlane, "zero", [&](llvm::Value* e) { store(fp(0), out, e); });
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
        // The maximum's gradient keeps, per output of the row, the best value so far and
        // its position in the plane: in this call's frame, so each thread has its own.
        llvm::Value *best = nullptr, *arg = nullptr;
        if (k.op == Op::MaxPool2dGrad) {
            llvm::IRBuilder<> eb(entryBlock_, entryBlock_->begin());
            best = eb.CreateAlloca(llvm::ArrayType::get(T_, uint64_t(OW)));
            arg = eb.CreateAlloca(llvm::ArrayType::get(i32, uint64_t(OW)));
        }
        auto bestAt = [&](llvm::Value* j) { return b_.CreateGEP(T_, best, j); };
        auto argAt = [&](llvm::Value* j) { return b_.CreateGEP(i32, arg, j); };
        const double inf = std::numeric_limits<double>::infinity();
        loop(OH, "i", [&](llvm::Value* i) {
            // The window's rows inside the image: [r0, r1), never empty (padding is at most
            // half the window).
            llvm::Value* top = b_.CreateSub(b_.CreateMul(i, i64(w.sh)), i64(w.ph));
            llvm::Value* r0 = b_.CreateSelect(b_.CreateICmpSLT(top, i64(0)), i64(0), top);
            llvm::Value* bottom = b_.CreateAdd(top, i64(w.kh));
            llvm::Value* r1 = b_.CreateSelect(b_.CreateICmpSGT(bottom, i64(H)), i64(H), bottom);
            llvm::Value* yRow = b_.CreateMul(i, i64(OW));
            // Before the window: the maximum starts at -inf (at the window's first position
            // inside the image: a window of -inf only gives it the gradient), the sum at 0.
            switch (k.op) {
            case Op::MaxPool2d:
            case Op::AvgPool2d:
                loop(OW, "j", [&](llvm::Value* j) { store(fp(max ? -inf : 0.0), out, b_.CreateAdd(yRow, j)); });
                break;
            case Op::MaxPool2dGrad:
                loop(OW, "j", [&](llvm::Value* j) {
                    llvm::Value* left = b_.CreateSub(b_.CreateMul(j, i64(w.sw)), i64(w.pw));
                    llvm::Value* c0 = b_.CreateSelect(b_.CreateICmpSLT(left, i64(0)), i64(0), left);
                    b_.CreateStore(fp(-inf), bestAt(j));
                    b_.CreateStore(b_.CreateTrunc(b_.CreateAdd(b_.CreateMul(r0, i64(W)), c0), i32), argAt(j));
                });
                break;
            default: break;
            }
            loopTo(b_.CreateSub(r1, r0), "r", [&](llvm::Value* rr) {
                llvm::Value* xRow = b_.CreateMul(b_.CreateAdd(r0, rr), i64(W));
                for (int64_t q = 0; q < w.kw; ++q) {
                    auto [first, end] = validRange(OW, W, q, w.sw, w.pw);
                    if (first >= end) continue;
                    loop(end - first, "j", [&](llvm::Value* jj) {
                        llvm::Value* j = b_.CreateAdd(jj, i64(first));
                        llvm::Value* pos = b_.CreateAdd(xRow, b_.CreateAdd(b_.CreateMul(j, i64(w.sw)), i64(q - w.pw)));
                        llvm::Value* yi = b_.CreateAdd(yRow, j);
                        switch (k.op) {
                        case Op::MaxPool2d: { // NaN wins, and a later value never displaces it
                            llvm::Value *v = load(x, pos), *m = load(out, yi);
                            llvm::Value* take = b_.CreateOr(b_.CreateFCmpOGT(v, m), b_.CreateFCmpUNO(v, v));
                            store(b_.CreateSelect(take, v, m), out, yi);
                            break;
                        }
                        case Op::AvgPool2d: store(b_.CreateFAdd(load(out, yi), load(x, pos)), out, yi); break;
                        case Op::MaxPool2dGrad: {
                            llvm::Value *v = load(x, pos), *m = b_.CreateLoad(T_, bestAt(j));
                            llvm::Value* take = b_.CreateOr(b_.CreateFCmpOGT(v, m), b_.CreateFCmpUNO(v, v));
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
            if (k.op == Op::AvgPool2d)
                loop(OW, "j", [&](llvm::Value* j) {
                    llvm::Value* yi = b_.CreateAdd(yRow, j);
                    store(b_.CreateFMul(load(out, yi), fp(invArea)), out, yi);
                });
            if (k.op == Op::MaxPool2dGrad) // windows that overlap may share a maximum: one by one
                loop(OW, "j", [&](llvm::Value* j) {
                    llvm::Value* at = b_.CreateZExt(b_.CreateLoad(i32, argAt(j)), b_.getInt64Ty());
                    store(b_.CreateFAdd(load(out, at), load(g, b_.CreateAdd(yRow, j))), out, at);
                }, /*vectorise=*/false);
        });
    });
    for (unsigned a = 0; a <= operands; ++a) plane->addParamAttr(a, llvm::Attribute::NoAlias);

    // Each operand's and the result's elements per plane, in call order.
    std::vector<int64_t> strides;
    for (int32_t id : k.in) strides.push_back(elementCount(p_->buffers[size_t(id)].shape) / planes);
    strides.push_back(grad ? xPlane : yPlane);
    auto planesFrom = [&](llvm::Value* begin, llvm::Value* end) {
        loopTo(b_.CreateSub(end, begin), "plane", [&](llvm::Value* n) {
            llvm::Value* index = b_.CreateAdd(begin, n);
            std::vector<llvm::Value*> args;
            for (unsigned a = 0; a <= operands; ++a)
                args.push_back(at(base(a < operands ? k.in[a] : k.out[0]), b_.CreateMul(index, i64(strides[a]))));
            b_.CreateCall(plane, args);
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
