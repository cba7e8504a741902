#pragma once
// Where the caching allocator gets memory from when its cache has nothing that fits: the backend's
// system allocator (aligned host memory, or cudaMalloc). Slow, so never on the hot path.
#include <cstddef>
#include <memory>

#include <defer/device.hpp>

namespace defer::detail {

class SystemMemory {
 public:
  virtual ~SystemMemory() = default;
  virtual void* allocate(std::size_t bytes) noexcept = 0;  // nullptr when out of memory
  virtual void deallocate(void* p, std::size_t bytes) noexcept = 0;
  virtual std::size_t free_bytes() noexcept = 0;  // what the system could still give us
};

std::unique_ptr<SystemMemory> make_cpu_system_memory();
#ifdef DEFER_HAVE_CUDA
std::unique_ptr<SystemMemory> make_cuda_system_memory(int device);
#endif

}  // namespace defer::detail
