#include "runtime/storage.hpp"

#include <defer/errors.hpp>

#include "runtime/cpu/cpu_stream.hpp"
#include "runtime/stream_impl.hpp"

namespace defer::detail {
namespace {

// The queue on which releases wait for device work. Leaked on purpose, like the default streams: it
// must outlive every tensor, static ones included.
StreamImpl& release_queue() {
  static auto* queue = new std::shared_ptr<StreamImpl>(create_stream(Device::cpu()));
  return **queue;
}

}  // namespace

ExternalStorage::ExternalStorage(void* data, std::size_t nbytes, std::function<void()> release,
                                 std::shared_ptr<StreamImpl> stream)
    : Storage(data, nbytes), release_(std::move(release)) {
  streams_.push_back(std::move(stream));
}

ExternalStorage::~ExternalStorage() {
  try {
    release_after_running_work();
  } catch (...) {
    // No memory to arrange it: wait here for every stream instead, rather than leak or release early.
    for (const auto& s : streams_) {
      try {
        s->synchronize();
      } catch (...) {
        // A failed stream's work is over either way.
      }
    }
    if (release_) release_();
  }
}

void ExternalStorage::record_use(StreamImpl& stream) {
  std::lock_guard lock(mutex_);
  for (const auto& s : streams_)
    if (s.get() == &stream) return;
  streams_.push_back(stream.shared_from_this());
}

// Releases now when every stream is idle, else queues the release behind events on the busy ones.
// Throws only before anything was queued.
void ExternalStorage::release_after_running_work() {
  std::vector<std::shared_ptr<EventImpl>> running;
  for (const auto& s : streams_) {
    bool idle = true;
    try {
      idle = s->query();  // idle: what it ran with the memory is over
    } catch (const Error&) {
      // A failed stream: its work is over either way.
    }
    if (!idle) running.push_back(s->record());
  }
  if (running.empty()) {
    if (release_) release_();
    return;
  }
  // A copy of the release function (if queuing throws, the destructor still has the original).
  enqueue_cpu(release_queue(), [running = std::move(running), release = release_] {
    for (const auto& e : running) {
      try {
        e->synchronize();
      } catch (...) {
        // A failed task ended that stream's use of the memory too.
      }
    }
    if (release) release();
  });
}

}  // namespace defer::detail
