#pragma once
// The small interface both backends implement: an in-order queue of work on one device, and events
// that mark positions in it. Everything above (allocator, tensors, awaits) talks to this interface.
#include <cstdint>
#include <memory>

#include <defer/device.hpp>

namespace defer::detail {

class EventImpl {
 public:
  virtual ~EventImpl() = default;
  virtual bool query() const = 0;        // complete?
  virtual void synchronize() const = 0;  // block the host until complete
};

class StreamImpl : public std::enable_shared_from_this<StreamImpl> {
 public:
  explicit StreamImpl(Device device);
  virtual ~StreamImpl() = default;
  StreamImpl(const StreamImpl&) = delete;
  StreamImpl& operator=(const StreamImpl&) = delete;

  Device device() const noexcept { return device_; }
  std::uint64_t id() const noexcept { return id_; }

  virtual void synchronize() = 0;
  virtual bool query() = 0;
  virtual std::shared_ptr<EventImpl> record() = 0;
  // Later work on this stream waits for `e`, which may belong to any backend.
  virtual void wait(const std::shared_ptr<EventImpl>& e) = 0;
  virtual void* native_handle() const noexcept = 0;

 protected:
  // Called by each backend's destructor once the stream's queued work has finished: the allocator
  // moves blocks cached for this stream to the pool that every stream may use.
  void release_cached_blocks() noexcept;

 private:
  Device device_;
  std::uint64_t id_;
};

// Creates a stream of the backend that owns `d` (d must be available).
std::shared_ptr<StreamImpl> create_stream(Device d);
// Stream::from_native: a wrapper of a CUDA stream made elsewhere, never destroyed by defer.
std::shared_ptr<StreamImpl> wrap_native_stream(Device d, void* handle);
// The default stream of `d`; created on first use and alive until the process exits.
const std::shared_ptr<StreamImpl>& default_stream_impl(Device d);
// This thread's current stream of `d` (its default stream unless a StreamGuard says otherwise).
const std::shared_ptr<StreamImpl>& current_stream_impl(Device d);
// The id of this thread's current stream of `d` (cached per thread: cheaper than the above).
std::uint64_t current_stream_id(Device d);
// Makes `s` (null: the default stream) this thread's current stream of `d`; returns the previous
// setting in the same form.
std::shared_ptr<StreamImpl> exchange_current_stream(Device d, std::shared_ptr<StreamImpl> s);
// Throws DeviceError naming the device and the reason when `d` cannot be used.
void require_available(Device d);

}  // namespace defer::detail
