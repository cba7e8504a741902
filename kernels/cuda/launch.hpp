#pragma once
// Host-side launchers of the CUDA kernels that fill memory. Each queues its kernel on `stream` and
// checks the launch; none synchronizes.
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include <defer/dtype.hpp>

namespace defer::kernels::cuda {

// Sets n elements of element_bytes (1, 2, 4 or 8) at data to the low bytes of `bits`.
void fill(void* data, std::int64_t n, std::size_t element_bytes, std::uint64_t bits, cudaStream_t stream);
// data[i] = i as dtype.
void arange(void* data, std::int64_t n, DType dtype, cudaStream_t stream);
// Occupies `stream` for about `nanoseconds` (a slow producer for ordering tests and benchmarks).
void busy_wait(std::uint64_t nanoseconds, cudaStream_t stream);

}  // namespace defer::kernels::cuda
