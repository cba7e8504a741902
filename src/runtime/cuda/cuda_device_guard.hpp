#pragma once
// RAII: makes a CUDA device current for the calling thread and restores the previous one.
#include <cuda_runtime_api.h>

#include "runtime/cuda/cuda_check.hpp"

namespace defer::detail {

class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    DEFER_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) DEFER_CUDA_CHECK(cudaSetDevice(device));
  }
  ~CudaDeviceGuard() {
    int now = previous_;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
  }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace defer::detail
