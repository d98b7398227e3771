// ThreadPool.cpp — a fixed set of workers woken per parallel loop. Workers spin briefly
// (a kernel follows a kernel within microseconds), then sleep. Each loop is shared out in
// chunks taken from a counter, so a thread that the machine slows (a shared core) does less
// of it instead of holding the others up; which thread runs a chunk never changes a result.
#include "ThreadPool.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace gradc {
namespace {

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

    void run(void (*body)(void*, int64_t, int64_t, int64_t), void* context, int64_t n) {
        if (threads_ == 1 || n <= 1) {
            body(context, 0, n, 0);
            return;
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            body_ = body, context_ = context, n_ = n;
            step_ = std::max<int64_t>(1, n / (int64_t(threads_) * 8));
            next_.store(0, std::memory_order_relaxed);
            pending_.store(threads_ - 1);
            generation_.fetch_add(1);
        }
        wake_.notify_all();
        chunk(0);
        while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    }

private:
    int threads_;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    bool stop_ = false;
    void (*body_)(void*, int64_t, int64_t, int64_t) = nullptr;
    void* context_ = nullptr;
    int64_t n_ = 0, step_ = 1;
    std::atomic<int64_t> next_{0};

    void chunk(int t) {
        for (;;) {
            const int64_t begin = next_.fetch_add(step_, std::memory_order_relaxed);
            if (begin >= n_) return;
            body_(context_, begin, std::min(n_, begin + step_), t);
        }
    }

    void work(int t) {
        uint64_t seen = 0;
        for (;;) {
            // Spin a little before sleeping: the next loop usually comes at once.
            for (int spin = 0; spin < 20000 && generation_.load(std::memory_order_acquire) == seen; ++spin)
                std::this_thread::yield();
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_.load() != seen; });
                seen = generation_.load();
                if (stop_) return;
            }
            chunk(t);
            pending_.fetch_sub(1, std::memory_order_release);
        }
    }
};

int requested = 0;
std::mutex poolMutex;
std::unique_ptr<Pool> pool;

Pool& thePool() {
    std::lock_guard<std::mutex> lock(poolMutex);
    if (!pool) pool = std::make_unique<Pool>(threadCount());
    return *pool;
}

} // namespace

int hardwareThreads() { return std::max(1u, std::thread::hardware_concurrency()); }

void setThreadCount(int n) {
    std::lock_guard<std::mutex> lock(poolMutex);
    requested = std::max(1, n);
    if (pool && pool->threads() != requested) pool.reset();
}

int threadCount() { return requested > 0 ? requested : hardwareThreads(); }

} // namespace gradc

extern "C" void gradc_parallel_for(void (*body)(void*, int64_t, int64_t, int64_t), void* context, int64_t n) {
    gradc::thePool().run(body, context, n);
}
