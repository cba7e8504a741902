#pragma once
// Streams and events (docs/api.md section 2). A stream is an in-order queue of asynchronous work on one
// device: a cudaStream_t on CUDA, a queue run by its own worker thread on the CPU. Both backends
// share the same semantics, so stream-ordering logic is exercised on machines without a GPU.
#include <cstdint>
#include <memory>

#include <defer/device.hpp>

namespace defer {

namespace detail {
class StreamImpl;
class EventImpl;
}  // namespace detail

class Event;

class Stream {  // copyable handle; copies refer to the same queue
 public:
  static Stream create(Device d);  // a new stream on d (DeviceError if d is not available)
  // Wraps a cudaStream_t made elsewhere (PyTorch's current stream, say) so that defer work can be
  // queued on it (docs/api.md sections 2 and 12). Not owned: defer never destroys it, so it must
  // outlive every handle of the wrapper and the work defer queued on it. The wrapper is a stream
  // like any other (events, waits, stream-ordered allocations); dropping its last handle does not
  // block the host. While one is alive, wrapping the same handle again gives an equal Stream.
  // std::invalid_argument for a CPU device (its streams are defer's own queues) or a null handle
  // (the legacy default stream: pass cudaStreamLegacy or a stream of your own); DeviceError when
  // d is not available (no GPU, a build without CUDA).
  static Stream from_native(Device d, void* handle);

  Device device() const;
  void synchronize() const;  // block the host until all work queued so far has finished
  bool query() const;        // true when all work queued so far has finished
  Event record() const;      // an event marking the work queued so far
  // Work queued on this stream after this call runs after `e` has completed. The host is not
  // blocked. Works across devices (a CPU stream may wait on a CUDA event and vice versa).
  void wait(const Event& e) const;
  std::uint64_t id() const;      // unique for the life of the process, never reused
  void* native_handle() const;   // the cudaStream_t on CUDA, nullptr on the CPU

  friend bool operator==(const Stream& a, const Stream& b) noexcept { return a.impl_ == b.impl_; }

  // For the runtime's own layers.
  explicit Stream(std::shared_ptr<detail::StreamImpl> impl) noexcept : impl_(std::move(impl)) {}
  detail::StreamImpl& impl() const noexcept { return *impl_; }
  const std::shared_ptr<detail::StreamImpl>& shared_impl() const noexcept { return impl_; }

 private:
  std::shared_ptr<detail::StreamImpl> impl_;
};

// A position in a stream: complete once the work queued before it has finished. A default
// constructed Event marks nothing and is always complete.
class Event {
 public:
  Event() = default;
  bool query() const;        // true when complete
  void synchronize() const;  // block the host until complete
  bool valid() const noexcept { return impl_ != nullptr; }

  explicit Event(std::shared_ptr<detail::EventImpl> impl) noexcept : impl_(std::move(impl)) {}
  const std::shared_ptr<detail::EventImpl>& shared_impl() const noexcept { return impl_; }

 private:
  std::shared_ptr<detail::EventImpl> impl_;
};

// The calling thread's current stream for d; initially d's default stream.
Stream current_stream(Device d = default_device());
// d's default stream (on CUDA the legacy default stream of the device).
Stream default_stream(Device d);

// RAII: makes s the current stream of s.device() on this thread, restores the previous one.
class StreamGuard {
 public:
  explicit StreamGuard(Stream s);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  std::shared_ptr<detail::StreamImpl> previous_;
  Device device_;
};

}  // namespace defer
