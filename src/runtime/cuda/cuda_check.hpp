#pragma once
// The CUDA backend's one error check: a failed runtime call throws defer::DeviceError (or
// OutOfMemory for allocations, handled by the allocator) naming the call, the CUDA error name and
// string, and the file:line.
#include <cuda_runtime_api.h>

#include <string>

#include <defer/errors.hpp>

namespace defer::detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  throw DeviceError(std::string(call) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                    ") at " + file + ":" + std::to_string(line));
}

}  // namespace defer::detail

#define DEFER_CUDA_CHECK(call)                                                          \
  do {                                                                                   \
    const cudaError_t defer_cuda_err_ = (call);                                          \
    if (defer_cuda_err_ != cudaSuccess) {                                                \
      (void)cudaGetLastError(); /* clear a non-sticky error so the runtime stays usable */ \
      ::defer::detail::throw_cuda_error(defer_cuda_err_, #call, __FILE__, __LINE__);    \
    }                                                                                    \
  } while (0)
