#include "runtime/cuda/cuda_stream.hpp"

#include "runtime/stream_capture.hpp"

#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/cuda/cuda_check.hpp"
#include "runtime/cuda/cuda_device_guard.hpp"
#include "runtime/stream_ordered_pool.hpp"

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

CudaStream::CudaStream(int device, cudaStream_t external)
    : StreamImpl(Device::cuda(device)), stream_(external), owned_(false), external_(true) {
#if CUDART_VERSION >= 12080
  // A stream of another device would run our kernels there, on memory of this device. The legacy
  // and per-thread handles are not checked: they mean the current device's, and every call on this
  // stream makes `device` current first.
  if (external == cudaStreamLegacy || external == cudaStreamPerThread) return;
  CudaDeviceGuard guard(device);
  int actual = -1;
  const cudaError_t err = cudaStreamGetDevice(external, &actual);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw std::invalid_argument("Stream::from_native: the handle is not a CUDA stream of cuda:" +
                                std::to_string(device) + " (cudaStreamGetDevice: " + cudaGetErrorName(err) + ")");
  }
  if (actual != device) {
    throw std::invalid_argument("Stream::from_native: the handle is a stream of cuda:" + std::to_string(actual) +
                                ", not of cuda:" + std::to_string(device));
  }
#endif
}

CudaStream::~CudaStream() {
  if (external_) {
    release_blocks_when_drained();
    return;
  }
  if (!owned_) return;  // default streams live until the process exits
  // Wait for queued work so that the allocator may hand this stream's cached blocks to any stream.
  const bool drained = cudaStreamSynchronize(stream_) == cudaSuccess;
  if (drained) release_cached_blocks();
  (void)cudaStreamDestroy(stream_);
}

namespace {

// What a host function needs to release a wrapper's cached blocks after the wrapper is gone.
struct RetiredStream {
  Device device;
  std::uint64_t id;
};

// A CUDA host function: it must make no CUDA call, and moving blocks within the allocator makes none.
void release_retired(void* p) {
  std::unique_ptr<RetiredStream> retired(static_cast<RetiredStream*>(p));
  try {
    pool_for(retired->device).stream_destroyed(retired->id);
  } catch (...) {
  }
}

}  // namespace

void CudaStream::release_blocks_when_drained() noexcept {
  try {
    CudaDeviceGuard guard(device().index());  // the legacy and per-thread handles mean the current device's
    const cudaError_t state = cudaStreamQuery(stream_);
    if (state == cudaSuccess) {
      release_cached_blocks();
      return;
    }
    if (state == cudaErrorNotReady) {
      // Queued after the work so far, by id: this object is gone when it runs.
      auto retired = std::make_unique<RetiredStream>(RetiredStream{device(), id()});
      if (cudaLaunchHostFunc(stream_, release_retired, retired.get()) == cudaSuccess) {
        retired.release();
        return;
      }
      (void)cudaGetLastError();
      if (cudaStreamSynchronize(stream_) == cudaSuccess) {
        release_cached_blocks();
        return;
      }
    }
    (void)cudaGetLastError();
  } catch (...) {
  }
  // A failed stream keeps its blocks: memory of unknown state is never reused.
}

void* CudaStream::native_handle() const noexcept {
  if (const StreamCapture* capture = StreamCapture::active_for(*this)) return capture->capture_handle();
  return stream_;
}

void CudaStream::synchronize() {
  std::optional<CudaDeviceGuard> guard;
  if (external_) guard.emplace(device().index());  // a legacy or per-thread handle means the current device's
  DEFER_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

bool CudaStream::query() {
  std::optional<CudaDeviceGuard> guard;
  if (external_) guard.emplace(device().index());  // as in synchronize
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
