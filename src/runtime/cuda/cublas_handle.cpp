// cuBLAS handles, one per thread and device.
//
// A handle is not safe to use from two threads at once, and creating one is slow (it allocates
// device memory and synchronizes), so each thread keeps one per device for its whole life and
// parks it for later threads when it exits. A
// handle is bound to one stream at a time; cublasSetStream also resets the handle's workspace to
// cuBLAS's own pool (which would cudaMalloc behind our allocator's back), so every rebinding gives
// the handle a workspace of ours again, allocated on the new stream: stream ordered, it is safe for
// the work queued there and returns to that stream's pool when it is replaced.
#include "runtime/cuda/cublas_handle.hpp"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <defer/errors.hpp>

#include "runtime/cuda/cublas_check.hpp"
#include "runtime/cuda/cuda_device_guard.hpp"
#include "runtime/cuda/cuda_stream.hpp"
#include "runtime/stream_ordered_pool.hpp"

namespace defer::detail {
namespace {

// cuBLAS recommends 32 MiB of workspace on Hopper (4 MiB suffices before it); one size for all
// keeps the code simple, and there is one workspace per thread and device.
constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;

constexpr std::uint64_t kUnbound = 0;  // no stream: StreamImpl ids start at 1

// One thread's handle on one device, with the workspace for the stream it is bound to.
class CublasHandle {
 public:
  explicit CublasHandle(int device) : device_(device) {
    CudaDeviceGuard guard(device_);
    DEFER_CUBLAS_CHECK(cublasCreate(&handle_));
    try {
      DEFER_CUBLAS_CHECK(cublasSetPointerMode(handle_, CUBLAS_POINTER_MODE_HOST));
      // The default math mode never rounds fp32 operands to TF32 (TF32 would miss the 1e-4 contract),
      // and f16/bf16 products never reduce split-K partial sums in f16/bf16: they accumulate in f32
      // and round once (docs/api.md section 9).
      DEFER_CUBLAS_CHECK(
          cublasSetMathMode(handle_, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                                               CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
    } catch (...) {
      (void)cublasDestroy(handle_);
      throw;
    }
  }

  // No destructor that calls cublasDestroy: handles are parked, never destroyed (see ParkedHandles).

  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;

  cublasHandle_t bind(StreamImpl& stream) {
    const cudaStream_t native = cuda_handle(stream);
    if (stream.id() == stream_id_) {
      if (native != bound_) {
        // The same stream seen through a graph capture (or back from one): cuBLAS launches into
        // the stream the capture records. cublasSetStream resets the workspace: set it again.
        CudaDeviceGuard guard(device_);
        DEFER_CUBLAS_CHECK(cublasSetStream(handle_, native));
        DEFER_CUBLAS_CHECK(cublasSetWorkspace(handle_, workspace_->data(), kWorkspaceBytes));
        bound_ = native;
      }
      return handle_;
    }
    StreamOrderedPool& pool = pool_for(stream.device());
    auto workspace = std::make_shared<Allocation>(pool, pool.allocate(kWorkspaceBytes, stream));
    CudaDeviceGuard guard(device_);
    stream_id_ = kUnbound;  // if a call below fails, the next bind starts over
    DEFER_CUBLAS_CHECK(cublasSetStream(handle_, native));
    DEFER_CUBLAS_CHECK(cublasSetWorkspace(handle_, workspace->data(), kWorkspaceBytes));
    bound_ = native;
    // The previous workspace goes back to the pool of the stream it was allocated on, ordered
    // after the cuBLAS work queued there.
    workspace_ = std::move(workspace);
    stream_id_ = stream.id();
    return handle_;
  }

 private:
  int device_;
  cublasHandle_t handle_ = nullptr;
  cudaStream_t bound_ = nullptr;  // the native stream cuBLAS launches into
  std::uint64_t stream_id_ = kUnbound;
  // The workspace cuBLAS uses on the bound stream, allocated there from our pool.
  std::shared_ptr<Allocation> workspace_;
};

// Handles of threads that exited, by device, for new threads to reuse. A handle is never destroyed:
// cublasDestroy in a thread's exit (a thread_local destructor) crashed inside the driver on an H100
// (it synchronizes the context while the runtime's per-thread state is torn down), during exit()
// the runtime may be unloading already, and creating a handle costs milliseconds, so parking it
// for the next thread is cheaper too. The driver reclaims them with the process.
struct ParkedHandles {
  std::mutex mutex;
  std::unordered_map<int, std::vector<std::unique_ptr<CublasHandle>>> by_device;
};

ParkedHandles& parked() {
  static auto* handles = new ParkedHandles;  // never destroyed (see above)
  return *handles;
}

// The calling thread's handles, by device index; parked for other threads when it exits.
class ThreadHandles {
 public:
  ThreadHandles() = default;
  ThreadHandles(const ThreadHandles&) = delete;
  ThreadHandles& operator=(const ThreadHandles&) = delete;
  ~ThreadHandles() {
    ParkedHandles& p = parked();
    std::lock_guard lock(p.mutex);
    for (auto& [device, handle] : handles_) p.by_device[device].push_back(std::move(handle));
  }

  CublasHandle& for_device(int device) {
    auto& slot = handles_[device];
    if (!slot) {
      ParkedHandles& p = parked();
      {
        std::lock_guard lock(p.mutex);
        auto& free = p.by_device[device];
        if (!free.empty()) {
          slot = std::move(free.back());
          free.pop_back();
        }
      }
      // A parked handle is still bound to its last stream (ids are never reused): bind() rebinds.
      if (!slot) slot = std::make_unique<CublasHandle>(device);
    }
    return *slot;
  }

 private:
  std::unordered_map<int, std::unique_ptr<CublasHandle>> handles_;
};

}  // namespace

cublasHandle_t cublas_handle(StreamImpl& stream) {
  thread_local ThreadHandles handles;
  return handles.for_device(stream.device().index()).bind(stream);
}

}  // namespace defer::detail
