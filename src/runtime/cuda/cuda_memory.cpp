// Device memory for the CUDA backend. cudaMalloc and cudaFree are slow and cudaFree synchronizes
// the device, which is why the caching allocator calls them only when its cache cannot serve.
#include <cuda_runtime_api.h>

#include "runtime/cuda/cuda_device_guard.hpp"
#include "runtime/system_memory.hpp"

namespace defer::detail {
namespace {

class CudaSystemMemory final : public SystemMemory {
 public:
  explicit CudaSystemMemory(int device) : device_(device) {}
  void* allocate(std::size_t bytes) noexcept override {
    try {
      CudaDeviceGuard guard(device_);
      void* p = nullptr;
      if (cudaMalloc(&p, bytes) == cudaSuccess) return p;
      (void)cudaGetLastError();  // clear the out-of-memory error: it is not sticky
    } catch (...) {
    }
    return nullptr;
  }
  void deallocate(void* p, std::size_t) noexcept override {
    try {
      CudaDeviceGuard guard(device_);
      (void)cudaFree(p);
    } catch (...) {
    }
  }
  std::size_t free_bytes() noexcept override {
    try {
      CudaDeviceGuard guard(device_);
      std::size_t free = 0, total = 0;
      if (cudaMemGetInfo(&free, &total) == cudaSuccess) return free;
    } catch (...) {
    }
    return 0;
  }

 private:
  int device_;
};

}  // namespace

std::unique_ptr<SystemMemory> make_cuda_system_memory(int device) { return std::make_unique<CudaSystemMemory>(device); }

}  // namespace defer::detail
