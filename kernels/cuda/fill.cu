#include "cuda/launch.hpp"
#include "runtime/cuda/cuda_check.hpp"

namespace defer::kernels::cuda {
namespace {

template <class T>
__global__ void fill_kernel(T* data, std::int64_t n, T value) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride) data[i] = value;
}

}  // namespace

void fill(void* data, std::int64_t n, DType dtype, float value, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int threads = 256;
  const auto blocks = static_cast<unsigned>(std::min<std::int64_t>((n + threads - 1) / threads, 65535));
  if (dtype == DType::f32) {
    fill_kernel<<<blocks, threads, 0, stream>>>(static_cast<float*>(data), n, value);
  } else {
    fill_kernel<<<blocks, threads, 0, stream>>>(static_cast<std::int32_t*>(data), n, static_cast<std::int32_t>(value));
  }
  DEFER_CUDA_CHECK(cudaGetLastError());
}

}  // namespace defer::kernels::cuda
