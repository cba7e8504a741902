#pragma once
// A small fixed pool of worker threads that CPU kernels use to split one large loop across cores.
// Kernels run on a CPU stream's worker thread; that thread calls parallel_for, works on the loop
// itself and returns when every index is done. The pool knows nothing of streams and never calls
// back into them: it only runs the function it is handed.
//
// One loop at a time: a parallel_for issued while the pool is busy (by another stream's worker, or
// nested inside a body) runs every index on the calling thread instead of waiting for the pool, so
// callers never block each other and nesting cannot deadlock.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

namespace defer::kernels::cpu {

class ThreadPool {
 public:
  // Starts `workers` threads (0 is valid: every loop then runs on its caller).
  explicit ThreadPool(unsigned workers);
  // Stops and joins the workers. No parallel_for may be running.
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  unsigned num_workers() const noexcept { return static_cast<unsigned>(threads_.size()); }
  // Threads that can take part in one loop: the workers and the caller.
  unsigned num_slots() const noexcept { return num_workers() + 1; }

  // Calls fn(index, slot) once for every index in [0, n), spread over the workers and the calling
  // thread, and returns when all calls have returned. `slot` is in [0, num_slots()) and no two
  // concurrent calls of one loop share it (the caller is slot 0), so fn can index per-thread
  // scratch with it. Indices are handed out one at a time, in increasing order, to whichever thread
  // is free. If a call throws, the indices not yet started are skipped and the first exception is
  // rethrown here.
  template <class Fn>
  void parallel_for(std::int64_t n, Fn&& fn) {
    using F = std::remove_reference_t<Fn>;
    run(n, [](void* f, std::int64_t i, unsigned slot) { (*static_cast<F*>(f))(i, slot); },
        const_cast<void*>(static_cast<const void*>(std::addressof(fn))));
  }

  // The process-wide pool, with hardware_concurrency() - 1 workers (at least 0), started on first
  // use and never destroyed: the default CPU stream is never destroyed either, and its worker may
  // still be running a kernel while static destructors run at exit.
  static ThreadPool& shared();

 private:
  using Body = void (*)(void*, std::int64_t, unsigned);
  struct Job;

  void run(std::int64_t n, Body body, void* fn);
  void work_loop(unsigned slot);
  static void work(Job& job, unsigned slot) noexcept;

  std::mutex mutex_;
  std::condition_variable wake_;  // workers: a new job or stop
  std::condition_variable idle_;  // the caller: the last worker left the job
  std::uint64_t generation_ = 0;  // bumped per dispatched job
  Job* job_ = nullptr;            // the running job, null between jobs
  unsigned active_ = 0;           // workers inside job_
  bool stop_ = false;
  std::atomic<bool> busy_{false};  // a loop is being dispatched (one at a time)
  std::vector<std::thread> threads_;
};

}  // namespace defer::kernels::cpu
