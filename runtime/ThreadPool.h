// ThreadPool.h — the threads compiled code runs on. Compiled kernels call
// gradc_parallel_for, which shares [0, n) out in ranges among the pool's threads.
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
}

namespace gradc {

/// The number of threads parallel loops use (the calling thread included); default: all
/// cores. Compiled code reserves per-thread scratch for the count at its compile time and
/// passes it to gradc_parallel_for, so changing it later (even while other threads run
/// compiled code) is safe: loops then use at most the smaller of the two.
void setThreadCount(int n);
int threadCount();
int hardwareThreads();

} // namespace gradc
