// ThreadPool.h — the threads compiled code runs on. Compiled kernels call
// gradc_parallel_for, which splits [0, n) into one contiguous range per thread.
#pragma once

#include <cstdint>

extern "C" {
/// body(context, begin, end, thread) for consecutive ranges covering [0, n), one per thread;
/// returns when all have finished. thread < gradc_thread_count().
void gradc_parallel_for(void (*body)(void*, int64_t, int64_t, int64_t), void* context, int64_t n);
}

namespace gradc {

/// The number of threads parallel loops use (the calling thread included); default: all
/// cores. Set before compiling: compiled code reserves per-thread scratch for this many.
void setThreadCount(int n);
int threadCount();
int hardwareThreads();

} // namespace gradc
