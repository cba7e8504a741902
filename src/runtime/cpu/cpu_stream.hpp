#pragma once
// The CPU backend's stream: an asynchronous in-order queue run by a worker thread of its own.
// An event is a queue position (the number of tasks queued before it), so recording one costs a
// lock and a counter read, and "complete" means the worker has finished that many tasks.
// A cross-stream wait is a task that blocks this queue's worker, never the host.
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "runtime/stream_impl.hpp"

namespace defer::detail {

struct CpuQueue {
  std::mutex mutex;
  std::condition_variable work_ready;  // the worker waits for tasks
  std::condition_variable progress;    // hosts and other queues wait for completions
  std::deque<std::function<void()>> tasks;
  std::uint64_t queued = 0;                // tasks ever queued
  std::atomic<std::uint64_t> completed{0};  // tasks ever finished
  std::exception_ptr failure;               // the first task that threw, reported at synchronize
  bool stopping = false;

  void wait_for(std::uint64_t position);
};

class CpuEvent final : public EventImpl {
 public:
  CpuEvent(std::shared_ptr<CpuQueue> queue, std::uint64_t position)
      : queue_(std::move(queue)), position_(position) {}
  bool query() const override { return queue_->completed.load(std::memory_order_acquire) >= position_; }
  void synchronize() const override { queue_->wait_for(position_); }

 private:
  std::shared_ptr<CpuQueue> queue_;  // shared, so an event outlives its stream
  std::uint64_t position_;
};

class CpuStream final : public StreamImpl {
 public:
  CpuStream();
  ~CpuStream() override;  // finishes the queued work, then joins the worker

  void enqueue(std::function<void()> task);
  void synchronize() override;
  bool query() override;
  std::shared_ptr<EventImpl> record() override;
  void wait(const std::shared_ptr<EventImpl>& e) override;
  void* native_handle() const noexcept override { return nullptr; }

 private:
  void run_worker();
  std::shared_ptr<CpuQueue> queue_;
  std::thread worker_;
};

// Queues `task` on a CPU stream: the CPU backend's "kernel launch".
void enqueue_cpu(StreamImpl& stream, std::function<void()> task);

}  // namespace defer::detail
