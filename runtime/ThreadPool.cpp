// ThreadPool.cpp — a fixed set of workers woken per parallel loop. Workers spin briefly
// (a kernel follows a kernel within microseconds), then sleep. Each loop is shared out in
// chunks taken from a counter, so a thread that the machine slows (a shared core) does less
// of it instead of holding the others up; which thread runs a chunk never changes a result.
//
// Re-entrancy: a loop's counters live in a Loop on its caller's stack, never in the pool, so
// two callers share nothing but the workers. The workers serve one loop at a time; a caller
// that finds them serving another runs its own loop alone. A worker joins a loop only while
// its caller is still handing it out (under the pool's mutex), and the caller returns only
// after every worker that joined has left, so no worker touches a Loop that is gone.
#include "ThreadPool.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace gradc {
namespace {

using Body = void (*)(void*, int64_t, int64_t, int64_t);

/// One parallel loop and its own counters.
struct Loop {
    Body body;
    void* context;
    int64_t n, step;
    std::atomic<int64_t> next{0};
    std::atomic<int> active{0}; ///< workers that joined and have not left

    void chunks(int64_t thread) {
        for (;;) {
            const int64_t begin = next.fetch_add(step, std::memory_order_relaxed);
            if (begin >= n) return;
            body(context, begin, std::min(n, begin + step), thread);
        }
    }
};

class Pool {
public:
    explicit Pool(int threads) : threads_(threads) {
        for (int t = 1; t < threads_; ++t) workers_.emplace_back([this, t] { work(t); });
    }
    ~Pool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
            generation_.fetch_add(1);
        }
        wake_.notify_all();
        for (auto& w : workers_) w.join();
    }
    int threads() const { return threads_; }

    /// Runs `loop` on the calling thread (as thread 0) and workers 1 .. width-1; false, and
    /// nothing run, when the workers are serving another caller's loop.
    bool run(Loop& loop, int width) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (current_) return false;
            current_ = &loop;
            width_ = width;
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_.notify_all();
        loop.chunks(0);
        {
            std::lock_guard<std::mutex> lock(mutex_);
            current_ = nullptr; // from here on no worker joins this loop
        }
        while (loop.active.load(std::memory_order_acquire) != 0) std::this_thread::yield();
        return true;
    }

private:
    const int threads_;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::atomic<uint64_t> generation_{0}; // written under mutex_; read while spinning
    bool stop_ = false;                   // under mutex_
    Loop* current_ = nullptr;             // under mutex_: the loop being handed out
    int width_ = 0;                       // under mutex_: its threads, the caller included

    void work(int t) {
        uint64_t seen = 0;
        for (;;) {
            // Spin a little before sleeping: the next loop usually comes at once.
            for (int spin = 0; spin < 20000 && generation_.load(std::memory_order_acquire) == seen; ++spin)
                std::this_thread::yield();
            Loop* loop;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_.load() != seen; });
                seen = generation_.load();
                if (stop_) return;
                loop = current_;
                if (!loop || t >= width_) continue;
                loop->active.fetch_add(1, std::memory_order_relaxed);
            }
            loop->chunks(t);
            loop->active.fetch_sub(1, std::memory_order_release);
        }
    }
};

std::mutex poolMutex;
std::shared_ptr<Pool> pool; // under poolMutex; callers hold a copy while they use it

/// A pool with at least `threads` threads: the current one, or a larger one that replaces it
/// (a loop running on the old pool keeps it alive until it returns).
std::shared_ptr<Pool> poolFor(int threads) {
    std::lock_guard<std::mutex> lock(poolMutex);
    if (!pool || pool->threads() < threads) pool = std::make_shared<Pool>(std::max(threads, pool ? pool->threads() : 1));
    return pool;
}

} // namespace

int hardwareThreads() { return int(std::max(1u, std::thread::hardware_concurrency())); }

int resolveThreads(int requested) { return requested > 0 ? requested : hardwareThreads(); }

} // namespace gradc

extern "C" void gradc_parallel_for(void (*body)(void*, int64_t, int64_t, int64_t), void* context, int64_t n,
                                   int64_t threads) {
    if (n <= 0) return;
    if (threads > 1 && n > 1) {
        // More threads than any model is compiled for (kMaxThreads) are not started; such a
        // loop runs on the most there are.
        std::shared_ptr<gradc::Pool> pool = gradc::poolFor(int(std::min<int64_t>(threads, gradc::kMaxThreads)));
        const int width = int(std::min<int64_t>(threads, pool->threads()));
        if (width > 1) {
            gradc::Loop loop{body, context, n, std::max<int64_t>(1, n / (int64_t(width) * 8))};
            if (pool->run(loop, width)) return;
        }
    }
    body(context, 0, n, 0); // one thread: the pool's workers are busy, or there are none
}

namespace {
std::atomic<gradc::AllreduceHook> gAllreduce{nullptr};
} // namespace

void gradc::setAllreduce(AllreduceHook hook) { gAllreduce.store(hook); }

extern "C" void gradc_allreduce_sum(void* data, int64_t n, int32_t f64) {
    if (gradc::AllreduceHook hook = gAllreduce.load()) hook(data, n, f64 != 0);
}

namespace {
thread_local gradc::GradientsReadyHook tReady = nullptr;
thread_local void* tReadyContext = nullptr;
} // namespace

void gradc::setGradientsReady(GradientsReadyHook hook, void* context) { tReady = hook, tReadyContext = context; }

extern "C" void gradc_gradients_ready(int64_t offset, int64_t n) {
    if (tReady) tReady(tReadyContext, offset, n);
}
