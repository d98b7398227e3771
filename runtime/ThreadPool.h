// ThreadPool.h — the threads compiled code runs on, a service of the runtime that any number
// of Sessions share. Compiled kernels call gradc_parallel_for with the thread count they were
// compiled for; the pool grows to the largest count any caller asks for.
#pragma once

#include <cstdint>

extern "C" {
/// body(context, begin, end, thread) for ranges covering [0, n) exactly once; returns when
/// all have finished. `threads` is the number of threads the caller was compiled for (its
/// per-thread scratch): every `thread` passed to `body` is in [0, threads).
///
/// Re-entrant: any number of threads may call it at once (two Sessions on two threads). One
/// caller at a time shares its loop with the pool's workers; a caller that finds them busy
/// (or a worker calling from inside a loop) runs its loop alone, as thread 0. Which thread
/// runs a range never changes a result, so both give the same bits.
void gradc_parallel_for(void (*body)(void*, int64_t, int64_t, int64_t), void* context, int64_t n, int64_t threads);

/// Sums `n` values at `data` (double when `f64`, else float) in place over the processes of a
/// data-parallel run: a synchronised batchnorm's per-channel sums, which code compiled with
/// Graph::syncWorld > 1 calls on every process in the same order. It does what the hook set
/// by setAllreduce does (the MPI runtime's, Cluster.h); with none set, nothing.
void gradc_allreduce_sum(void* data, int64_t n, int32_t f64);

/// Tells the runtime that elements [offset, offset + n) of the gradients are final: the
/// backward pass of a data-parallel run (Graph::syncWorld > 1) calls it after the last kernel
/// writing each parameter's gradient, so their allreduce can start while the rest of the pass
/// runs. It does what the hook set by setGradientsReady does; with none set, nothing.
void gradc_gradients_ready(int64_t offset, int64_t n);
}

namespace gradc {

/// The most threads compiled code may be planned for (CodegenOptions::threads,
/// SessionOptions::threads, the jobs' and the command's --threads): the code reserves scratch
/// per thread, and the pool never starts more workers than this.
constexpr int kMaxThreads = 1024;

/// The machine's hardware threads (at least 1).
int hardwareThreads();
/// The thread count an option asks for: `requested` itself, or all cores when it is 0 (the
/// default of CodegenOptions::threads, SessionOptions::threads and the jobs' options).
/// There is no global count: each compiled model carries its own.
int resolveThreads(int requested);

/// What gradc_allreduce_sum does (null: nothing); set once, before compiled code runs.
using AllreduceHook = void (*)(void* data, int64_t n, bool f64);
void setAllreduce(AllreduceHook hook);
/// What gradc_gradients_ready does on this thread (null: nothing): set around a backward pass.
using GradientsReadyHook = void (*)(void* context, int64_t offset, int64_t n);
void setGradientsReady(GradientsReadyHook hook, void* context);

} // namespace gradc
