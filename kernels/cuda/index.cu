// index_select (and embedding, which is index_select of dim 0): rows copied by index, every index
// checked on the device. A thread whose index lies outside [0, extent) copies nothing and records
// its position in the fault word, so no access is ever out of bounds and the host learns the first
// bad position after the launch (cuda_backend.cpp reads it back).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda/ops.hpp"
#include "runtime/cuda/cuda_check.hpp"

namespace defer::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// out[o, j, i] = x[o, index[j], i]: one element per thread and step, T the element's bits.
template <class T, class I>
__global__ void index_select_kernel(const T* x, const I* index, std::int64_t outer, std::int64_t extent,
                                    std::int64_t count, std::int64_t inner, T* out, long long* fault) {
  const std::int64_t total = outer * count * inner;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total; e += stride) {
    const std::int64_t i = e % inner;
    const std::int64_t oj = e / inner;
    const std::int64_t j = oj % count;
    const std::int64_t o = oj / count;
    const std::int64_t row = static_cast<std::int64_t>(index[j]);
    if (row < 0 || row >= extent) {
      atomicMin(fault, static_cast<long long>(j));
      continue;
    }
    out[e] = x[(o * extent + row) * inner + i];
  }
}

// Only the check, for an output without elements (outer or inner is 0): indices are validated all
// the same.
template <class I>
__global__ void index_check_kernel(const I* index, std::int64_t extent, std::int64_t count, long long* fault) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count; j += stride) {
    const std::int64_t row = static_cast<std::int64_t>(index[j]);
    if (row < 0 || row >= extent) atomicMin(fault, static_cast<long long>(j));
  }
}

unsigned blocks_for(std::int64_t n) {
  return static_cast<unsigned>(std::min<std::int64_t>((n + kThreads - 1) / kThreads, 65535));
}

template <class T>
void launch(const void* x, const void* index, DType index_dtype, std::int64_t outer, std::int64_t extent,
            std::int64_t count, std::int64_t inner, void* out, long long* fault, cudaStream_t stream) {
  const auto blocks = blocks_for(outer * count * inner);
  const T* xs = static_cast<const T*>(x);
  T* os = static_cast<T*>(out);
  if (index_dtype == DType::i32)
    index_select_kernel<<<blocks, kThreads, 0, stream>>>(xs, static_cast<const std::int32_t*>(index), outer, extent,
                                                         count, inner, os, fault);
  else
    index_select_kernel<<<blocks, kThreads, 0, stream>>>(xs, static_cast<const std::int64_t*>(index), outer, extent,
                                                         count, inner, os, fault);
}

}  // namespace

void index_select(const void* x, std::size_t element_bytes, const void* index, DType index_dtype, std::int64_t outer,
                  std::int64_t extent, std::int64_t count, std::int64_t inner, void* out, long long* fault,
                  cudaStream_t stream) {
  if (index_dtype != DType::i32 && index_dtype != DType::i64)
    throw std::invalid_argument(std::string("defer::kernels::cuda::index_select: indices must be i32 or i64, got ") +
                                dtype_name(index_dtype));
  if (count <= 0) return;
  if (outer * inner <= 0) {
    if (index_dtype == DType::i32)
      index_check_kernel<<<blocks_for(count), kThreads, 0, stream>>>(static_cast<const std::int32_t*>(index), extent,
                                                                      count, fault);
    else
      index_check_kernel<<<blocks_for(count), kThreads, 0, stream>>>(static_cast<const std::int64_t*>(index), extent,
                                                                      count, fault);
    DEFER_CUDA_CHECK(cudaGetLastError());
    return;
  }
  switch (element_bytes) {
    case 1: launch<std::uint8_t>(x, index, index_dtype, outer, extent, count, inner, out, fault, stream); break;
    case 2: launch<std::uint16_t>(x, index, index_dtype, outer, extent, count, inner, out, fault, stream); break;
    case 4: launch<std::uint32_t>(x, index, index_dtype, outer, extent, count, inner, out, fault, stream); break;
    case 8: launch<std::uint64_t>(x, index, index_dtype, outer, extent, count, inner, out, fault, stream); break;
    default:
      throw std::invalid_argument("defer::kernels::cuda::index_select: no kernel for elements of " +
                                  std::to_string(element_bytes) + " bytes");
  }
  DEFER_CUDA_CHECK(cudaGetLastError());
}

}  // namespace defer::kernels::cuda
