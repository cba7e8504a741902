#pragma once
// The CUDA backend's stream and event: RAII over cudaStream_t and cudaEvent_t. Every stream, the
// device's defer default stream included, is a non-blocking stream of our own: none synchronizes
// implicitly with CUDA's legacy stream 0 (the same semantics as the CPU backend's independent
// queues), and every one can be captured into a CUDA graph, which the legacy stream cannot. Code
// that mixes defer with work on stream 0 orders the two with events (Stream::wait / Event). Events are timing-disabled and
// recycled through a per-device free list, since creating one costs more than recording one.
// The exception is a wrapper made by Stream::from_native: it queues on a stream made elsewhere
// (any kind, cudaStreamLegacy too; captures still record on a private stream of ours), never
// destroyed here.
#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "runtime/stream_impl.hpp"

namespace defer::detail {

class CudaEvent final : public EventImpl {
 public:
  explicit CudaEvent(int device);  // takes an event from the device's free list
  ~CudaEvent() override;           // gives it back
  bool query() const override;
  void synchronize() const override;
  cudaEvent_t handle() const noexcept { return event_; }
  int device() const noexcept { return device_; }

 private:
  cudaEvent_t event_ = nullptr;
  int device_;
};

class CudaStream final : public StreamImpl {
 public:
  // owned: destroyed with this object; otherwise the device's default stream, never destroyed.
  CudaStream(int device, bool owned);
  // Stream::from_native: wraps `external`, a stream of `device` made elsewhere, never destroyed
  // here. std::invalid_argument when CUDA says it belongs to another device or is no stream.
  CudaStream(int device, cudaStream_t external);
  ~CudaStream() override;

  void synchronize() override;
  bool query() override;
  std::shared_ptr<EventImpl> record() override;
  void wait(const std::shared_ptr<EventImpl>& e) override;
  // The stream kernels launch into: this thread's capture stream while it captures a plan for
  // this stream (see StreamCapture), else the stream itself.
  void* native_handle() const noexcept override;
  cudaStream_t handle() const noexcept { return stream_; }

 private:
  // A wrapper's last handle is gone: the allocator's blocks cached for it go to the shared pool once
  // the work queued so far has finished, without blocking the host (the stream lives on elsewhere).
  void release_blocks_when_drained() noexcept;

  cudaStream_t stream_ = nullptr;
  bool owned_;
  bool external_ = false;  // made by Stream::from_native
};

inline cudaStream_t cuda_handle(const StreamImpl& s) { return static_cast<cudaStream_t>(s.native_handle()); }

// The number of usable devices; on failure 0 and `reason` says why (the CUDA error's name).
int probe_cuda_devices(std::string& reason) noexcept;

}  // namespace defer::detail
