#include "runtime/cuda/cuda_stream.hpp"

#include "runtime/stream_capture.hpp"

#include <mutex>
#include <vector>

#include "runtime/cuda/cuda_check.hpp"
#include "runtime/cuda/cuda_device_guard.hpp"

namespace defer::detail {
namespace {

// Recycled events of one device. Leaked on purpose at exit: destroying CUDA objects while the CUDA
// runtime unloads fails.
struct EventFreeList {
  std::mutex mutex;
  std::vector<cudaEvent_t> events;
};

EventFreeList& free_list(int device) {
  static auto* lists = new std::vector<EventFreeList>(static_cast<std::size_t>(cuda_device_count()));
  return (*lists)[static_cast<std::size_t>(device)];
}

}  // namespace

int probe_cuda_devices(std::string& reason) noexcept {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    // cudaErrorNoDevice and cudaErrorInsufficientDriver both mean "no GPU"; the error is sticky,
    // so the caller makes no further CUDA call.
    reason = std::string(cudaGetErrorName(err)) + " (" + cudaGetErrorString(err) + ")";
    return 0;
  }
  if (count == 0) reason = "no CUDA device found";
  return count;
}

CudaEvent::CudaEvent(int device) : device_(device) {
  auto& list = free_list(device);
  {
    std::lock_guard lock(list.mutex);
    if (!list.events.empty()) {
      event_ = list.events.back();
      list.events.pop_back();
      return;
    }
  }
  CudaDeviceGuard guard(device);
  DEFER_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
}

CudaEvent::~CudaEvent() {
  auto& list = free_list(device_);
  std::lock_guard lock(list.mutex);
  list.events.push_back(event_);
}

bool CudaEvent::query() const {
  const cudaError_t err = cudaEventQuery(event_);
  if (err == cudaErrorNotReady) return false;
  DEFER_CUDA_CHECK(err);
  return true;
}

void CudaEvent::synchronize() const { DEFER_CUDA_CHECK(cudaEventSynchronize(event_)); }

CudaStream::CudaStream(int device, bool owned) : StreamImpl(Device::cuda(device)), owned_(owned) {
  CudaDeviceGuard guard(device);
  DEFER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

CudaStream::~CudaStream() {
  if (!owned_) return;  // default streams live until the process exits
  // Wait for queued work so that the allocator may hand this stream's cached blocks to any stream.
  const bool drained = cudaStreamSynchronize(stream_) == cudaSuccess;
  if (drained) release_cached_blocks();
  (void)cudaStreamDestroy(stream_);
}

void* CudaStream::native_handle() const noexcept {
  if (const StreamCapture* capture = StreamCapture::active_for(*this)) return capture->capture_handle();
  return stream_;
}

void CudaStream::synchronize() { DEFER_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

bool CudaStream::query() {
  const cudaError_t err = cudaStreamQuery(stream_);
  if (err == cudaErrorNotReady) return false;
  DEFER_CUDA_CHECK(err);
  return true;
}

std::shared_ptr<EventImpl> CudaStream::record() {
  auto event = std::make_shared<CudaEvent>(device().index());
  CudaDeviceGuard guard(device().index());
  DEFER_CUDA_CHECK(cudaEventRecord(event->handle(), stream_));
  return event;
}

void CudaStream::wait(const std::shared_ptr<EventImpl>& e) {
  if (!e) return;
  if (auto* cuda_event = dynamic_cast<const CudaEvent*>(e.get())) {
    CudaDeviceGuard guard(device().index());
    DEFER_CUDA_CHECK(cudaStreamWaitEvent(stream_, cuda_event->handle(), 0));
    return;
  }
  if (e->query()) return;
  // An event of another backend (a CPU queue position): a host function blocks this stream until
  // it completes. It makes no CUDA call, as host functions must not.
  auto* keep = new std::shared_ptr<EventImpl>(e);
  CudaDeviceGuard guard(device().index());
  const cudaError_t err = cudaLaunchHostFunc(
      stream_,
      [](void* p) {
        auto* event = static_cast<std::shared_ptr<EventImpl>*>(p);
        try {
          (*event)->synchronize();
        } catch (...) {
          // A failed CPU task was reported to that queue's own synchronize; ordering is what matters here.
        }
        delete event;
      },
      keep);
  if (err != cudaSuccess) delete keep;
  DEFER_CUDA_CHECK(err);
}

}  // namespace defer::detail
