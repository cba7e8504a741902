#include "cpu/thread_pool.hpp"

#include <exception>

namespace defer::kernels::cpu {

struct ThreadPool::Job {
  Job(Body b, void* f, std::int64_t count) : body(b), fn(f), n(count) {}
  Body body;
  void* fn;
  std::int64_t n;
  std::atomic<std::int64_t> next{0};
  std::mutex error_mutex;
  std::exception_ptr error;
};

ThreadPool::ThreadPool(unsigned workers) {
  threads_.reserve(workers);
  try {
    for (unsigned w = 0; w < workers; ++w) threads_.emplace_back([this, w] { work_loop(w + 1); });
  } catch (...) {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
    throw;
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

ThreadPool& ThreadPool::shared() {
  // Leaked on purpose (see the header): joining at exit could pull the pool from under a kernel.
  static ThreadPool* const pool = [] {
    const unsigned hw = std::thread::hardware_concurrency();
    return new ThreadPool(hw > 1 ? hw - 1 : 0);
  }();
  return *pool;
}

void ThreadPool::work(Job& job, unsigned slot) noexcept {
  for (;;) {
    const std::int64_t i = job.next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job.n) return;
    try {
      job.body(job.fn, i, slot);
    } catch (...) {
      std::lock_guard lock(job.error_mutex);
      if (!job.error) job.error = std::current_exception();
      job.next.store(job.n, std::memory_order_relaxed);  // skip what has not started
    }
  }
}

void ThreadPool::run(std::int64_t n, Body body, void* fn) {
  if (n <= 0) return;
  // Inline when there is nobody to share with, or when another loop holds the pool (a second
  // stream, or a nested call): waiting for the pool could take longer than doing the work.
  if (threads_.empty() || n == 1 || busy_.exchange(true, std::memory_order_acquire)) {
    for (std::int64_t i = 0; i < n; ++i) body(fn, i, 0);
    return;
  }
  struct Release {
    std::atomic<bool>& busy;
    ~Release() { busy.store(false, std::memory_order_release); }
  } release{busy_};

  Job job(body, fn, n);
  {
    std::lock_guard lock(mutex_);
    job_ = &job;
    ++generation_;
  }
  wake_.notify_all();
  work(job, 0);
  {
    // Every index has been handed out; wait for the workers still inside the job. A worker that
    // wakes after job_ is cleared finds nothing to do, so the job (on this stack) is never touched
    // after we return. Worker writes are visible here through the mutex.
    std::unique_lock lock(mutex_);
    idle_.wait(lock, [&] { return active_ == 0; });
    job_ = nullptr;
  }
  if (job.error) std::rethrow_exception(job.error);
}

void ThreadPool::work_loop(unsigned slot) {
  std::uint64_t seen = 0;
  std::unique_lock lock(mutex_);
  for (;;) {
    wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    Job* job = job_;
    if (job == nullptr) continue;  // woke after that job had finished
    ++active_;
    lock.unlock();
    work(*job, slot);
    lock.lock();
    if (--active_ == 0) idle_.notify_one();
  }
}

}  // namespace defer::kernels::cpu
