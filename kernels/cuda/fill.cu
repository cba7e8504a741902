// fill and arange.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "cuda/launch.hpp"
#include "dtype_dispatch.hpp"
#include "runtime/cuda/cuda_check.hpp"

namespace defer::kernels::cuda {
namespace {

constexpr int kThreads = 256;

unsigned blocks_for(std::int64_t n) {
  return static_cast<unsigned>(std::min<std::int64_t>((n + kThreads - 1) / kThreads, 65535));
}

template <class T>
__global__ void fill_kernel(T* data, std::int64_t n, T value) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) data[i] = value;
}

template <class Tag>
__global__ void arange_kernel(typename Tag::storage* data, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
    if constexpr (Tag::floating) data[i] = Tag::store(static_cast<float>(i));
    else data[i] = static_cast<typename Tag::storage>(i);
  }
}

template <class T>
void launch_fill(void* data, std::int64_t n, std::uint64_t bits, cudaStream_t stream) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));  // the low bytes on a little-endian host
  fill_kernel<<<blocks_for(n), kThreads, 0, stream>>>(static_cast<T*>(data), n, value);
}

}  // namespace

void fill(void* data, std::int64_t n, std::size_t element_bytes, std::uint64_t bits, cudaStream_t stream) {
  if (n <= 0) return;
  switch (element_bytes) {
    case 1: launch_fill<std::uint8_t>(data, n, bits, stream); break;
    case 2: launch_fill<std::uint16_t>(data, n, bits, stream); break;
    case 4: launch_fill<std::uint32_t>(data, n, bits, stream); break;
    case 8: launch_fill<std::uint64_t>(data, n, bits, stream); break;
    default: throw std::invalid_argument("fill: no kernel for elements of " + std::to_string(element_bytes) + " bytes");
  }
  DEFER_CUDA_CHECK(cudaGetLastError());
}

void arange(void* data, std::int64_t n, DType dtype, cudaStream_t stream) {
  if (n <= 0) return;
  dispatch(dtype, [&](auto tag) {
    using Tag = decltype(tag);
    arange_kernel<Tag><<<blocks_for(n), kThreads, 0, stream>>>(static_cast<typename Tag::storage*>(data), n);
  });
  DEFER_CUDA_CHECK(cudaGetLastError());
}

}  // namespace defer::kernels::cuda
