#pragma once
// Host-side launchers of the CUDA kernels. Each queues its kernel on `stream` and checks the launch;
// none synchronizes.
#include <cuda_runtime_api.h>

#include <cstdint>

#include <defer/tensor.hpp>

namespace defer::kernels::cuda {

// Sets n elements of dtype at data to value (converted to dtype).
void fill(void* data, std::int64_t n, DType dtype, float value, cudaStream_t stream);
// Occupies `stream` for about `nanoseconds` (a slow producer for ordering tests and benchmarks).
void busy_wait(std::uint64_t nanoseconds, cudaStream_t stream);

}  // namespace defer::kernels::cuda
