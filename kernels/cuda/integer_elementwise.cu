// Element-wise ops on integer data, exact in 64-bit integers: the per-element function is
// kernels/integer_elementwise.hpp's, shared with the CPU backend. Small tensors (ids, masks) are the
// use, so one simple kernel: each thread peels its element's multi-index into the inputs' offsets.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda/ops.hpp"
#include "integer_elementwise.hpp"
#include "runtime/cuda/cuda_check.hpp"

namespace defer::kernels::cuda {
namespace {

constexpr int kThreads = 256;

// The kernel's argument: the layout and the operands by value.
struct IntegerArgs {
  const void* in[kMaxOpTensors];
  DType dtype[kMaxOpTensors];
  int count;
  int ndim;
  long long shape[kMaxDims];
  long long stride[kMaxOpTensors][kMaxDims];
  long long scalar;
  long long n;
  void* out;
  DType out_dtype;
  ElementwiseOp op;
};

__global__ void integer_kernel(const IntegerArgs a) {
  const long long step = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long e = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; e < a.n; e += step) {
    long long offset[kMaxOpTensors] = {};
    long long rest = e;
    for (int d = a.ndim - 1; d >= 0; --d) {
      const long long c = rest % a.shape[d];
      rest /= a.shape[d];
      for (int k = 0; k < a.count; ++k) offset[k] += c * a.stride[k][d];
    }
    long long v[kMaxOpTensors] = {};
    for (int k = 0; k < a.count; ++k) v[k] = integer_load(a.in[k], a.dtype[k], offset[k]);
    integer_store(a.out, a.out_dtype, e, integer_op(a.op, v[0], v[1], v[2], a.scalar));
  }
}

}  // namespace

void integer_elementwise(ElementwiseOp op, const FusedLayout& layout, const void* const* inputs, const DType* dtypes,
                         int count, std::int64_t scalar, void* out, DType out_dtype, cudaStream_t stream) {
  if (count < 1 || count > kMaxOpTensors)
    throw std::invalid_argument("defer::kernels::cuda::integer_elementwise: " + std::to_string(count) + " operands");
  IntegerArgs a{};
  for (int k = 0; k < count; ++k) {
    a.in[k] = inputs[k];
    a.dtype[k] = dtypes[k];
    for (int d = 0; d < layout.ndim; ++d)
      a.stride[k][d] = layout.strides[static_cast<std::size_t>(k)][static_cast<std::size_t>(d)];
  }
  a.count = count;
  a.ndim = layout.ndim;
  for (int d = 0; d < layout.ndim; ++d) a.shape[d] = layout.shape[static_cast<std::size_t>(d)];
  a.scalar = scalar;
  a.n = layout.numel();
  a.out = out;
  a.out_dtype = out_dtype;
  a.op = op;
  if (a.n <= 0) return;
  const auto blocks = static_cast<unsigned>(std::min<long long>((a.n + kThreads - 1) / kThreads, 65535));
  integer_kernel<<<blocks, kThreads, 0, stream>>>(a);
  DEFER_CUDA_CHECK(cudaGetLastError());
}

}  // namespace defer::kernels::cuda
