#include "runtime/cpu/cpu_stream.hpp"

#include <utility>

#include <defer/errors.hpp>

#include "runtime/stream_capture.hpp"

namespace defer::detail {

void CpuQueue::wait_for(std::uint64_t position) {
  std::unique_lock lock(mutex);
  progress.wait(lock, [&] { return completed.load(std::memory_order_acquire) >= position; });
  if (failure) {
    // A task failed: report it once, like an asynchronous CUDA error, then the queue is usable again.
    auto failed = std::exchange(failure, nullptr);
    lock.unlock();
    try {
      std::rethrow_exception(failed);
    } catch (const std::exception& e) {
      throw DeviceError(std::string("a task on a cpu stream failed: ") + e.what());
    }
  }
}

CpuStream::CpuStream() : StreamImpl(Device::cpu()), queue_(std::make_shared<CpuQueue>()) {
  worker_ = std::thread([this] { run_worker(); });
}

CpuStream::~CpuStream() {
  {
    std::lock_guard lock(queue_->mutex);
    queue_->stopping = true;
  }
  queue_->work_ready.notify_one();
  if (worker_.get_id() == std::this_thread::get_id()) {
    worker_.detach();  // the last handle died inside one of our own tasks: the loop ends by itself
  } else {
    worker_.join();
  }
  release_cached_blocks();
}

void CpuStream::run_worker() {
  auto queue = queue_;  // keep the queue alive even if the stream object is being destroyed
  std::unique_lock lock(queue->mutex);
  for (;;) {
    queue->work_ready.wait(lock, [&] { return queue->stopping || !queue->tasks.empty(); });
    if (queue->tasks.empty()) return;  // stopping, and everything queued has run
    auto task = std::move(queue->tasks.front());
    queue->tasks.pop_front();
    lock.unlock();
    std::exception_ptr failed;
    try {
      task();
    } catch (...) {
      failed = std::current_exception();
    }
    task = nullptr;  // destroy captured state outside the lock
    lock.lock();
    if (failed && !queue->failure) queue->failure = failed;
    queue->completed.fetch_add(1, std::memory_order_release);
    queue->progress.notify_all();
  }
}

void CpuStream::enqueue(std::function<void()> task) {
  {
    std::lock_guard lock(queue_->mutex);
    queue_->tasks.push_back(std::move(task));
    ++queue_->queued;
  }
  queue_->work_ready.notify_one();
}

void CpuStream::synchronize() {
  std::uint64_t position;
  {
    std::lock_guard lock(queue_->mutex);
    position = queue_->queued;
  }
  queue_->wait_for(position);
}

bool CpuStream::query() {
  std::lock_guard lock(queue_->mutex);
  return queue_->completed.load(std::memory_order_acquire) >= queue_->queued;
}

std::shared_ptr<EventImpl> CpuStream::record() {
  std::lock_guard lock(queue_->mutex);
  return std::make_shared<CpuEvent>(queue_, queue_->queued);
}

void CpuStream::wait(const std::shared_ptr<EventImpl>& e) {
  if (!e || e->query()) return;  // already complete: nothing to order
  enqueue([e] { e->synchronize(); });
}

void enqueue_cpu(StreamImpl& stream, std::function<void()> task) {
  if (StreamCapture* capture = StreamCapture::active_for(stream)) {
    capture->record_cpu_task(std::move(task));  // a replayed plan: queued later, as one task
    return;
  }
  static_cast<CpuStream&>(stream).enqueue(std::move(task));
}

}  // namespace defer::detail
