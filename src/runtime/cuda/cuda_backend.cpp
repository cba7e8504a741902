// The CUDA backend: each call makes the stream's device current and queues kernels/cuda's kernel
// (cuBLAS for matmul, NVRTC-compiled fused programs for element-wise work) on the stream.
#include <cstdint>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "cuda/copy.hpp"
#include "cuda/launch.hpp"
#include "cuda/ops.hpp"
#include "cuda/fused/cuda_fused_launch.hpp"
#include "runtime/backend.hpp"
#include "runtime/cuda/cublas_handle.hpp"
#include "runtime/cuda/cuda_check.hpp"
#include "runtime/cuda/cuda_device_guard.hpp"
#include "runtime/cuda/cuda_stream.hpp"
#include "runtime/tensor_impl.hpp"

namespace defer::detail {
namespace {

using kernels::ReduceOp;

class CudaBackend final : public Backend {
 public:
  void run_fused(std::shared_ptr<const kernels::FusedProgram> program, std::shared_ptr<const kernels::FusedLayout> layout,
                 std::vector<const void*> inputs, std::vector<void*> outputs, std::vector<float> scalars,
                 StreamImpl& stream) override {
    // The launch copies pointers, sizes and scalars into the kernel's argument: nothing to keep.
    launch_fused_cuda(*program, *layout, inputs.data(), outputs.data(), scalars.data(), cuda_handle(stream),
                      stream.device().index());
  }

  void integer_elementwise(kernels::ElementwiseOp op, std::shared_ptr<const kernels::FusedLayout> layout,
                           std::vector<const void*> inputs, std::vector<DType> input_dtypes, std::int64_t scalar,
                           void* out, DType out_dtype, StreamImpl& stream) override {
    CudaDeviceGuard guard(stream.device().index());
    kernels::cuda::integer_elementwise(op, *layout, inputs.data(), input_dtypes.data(), static_cast<int>(inputs.size()),
                                       scalar, out, out_dtype, cuda_handle(stream));
  }

  void copy_strided(std::size_t element_bytes, const kernels::CopyLayout& layout, const void* src, void* dst,
                    StreamImpl& stream) override {
    CudaDeviceGuard guard(stream.device().index());
    kernels::cuda::copy_strided(element_bytes, layout, src, dst, cuda_handle(stream));
  }

  void fill(void* data, std::int64_t n, std::size_t element_bytes, std::uint64_t bits, StreamImpl& stream) override {
    CudaDeviceGuard guard(stream.device().index());
    kernels::cuda::fill(data, n, element_bytes, bits, cuda_handle(stream));
  }

  void arange(void* data, std::int64_t n, DType dtype, StreamImpl& stream) override {
    CudaDeviceGuard guard(stream.device().index());
    kernels::cuda::arange(data, n, dtype, cuda_handle(stream));
  }

  void reduce(ReduceOp op, DType dtype, const void* x, void* out, const kernels::StridedAxis& axis,
              StreamImpl& stream) override {
    CudaDeviceGuard guard(stream.device().index());
    kernels::cuda::reduce(op, dtype, x, out, axis, cuda_handle(stream));
  }

  void softmax(DType dtype, const void* x, void* out, const kernels::StridedAxis& axis, StreamImpl& stream) override {
    CudaDeviceGuard guard(stream.device().index());
    kernels::cuda::softmax(dtype, x, out, axis, cuda_handle(stream));
  }

  void layer_norm(DType dtype, const void* x, const void* gamma, const void* beta, void* out,
                  const kernels::StridedAxis& axis, float eps, StreamImpl& stream) override {
    CudaDeviceGuard guard(stream.device().index());
    kernels::cuda::layer_norm(dtype, x, gamma, beta, out, axis, eps, cuda_handle(stream));
  }

  void matmul(DType dtype, const void* a, const void* b, void* c, const kernels::MatmulLayout& layout,
              StreamImpl& stream) override {
    CudaDeviceGuard guard(stream.device().index());
    kernels::cuda::matmul(cublas_handle(stream), dtype, a, b, c, layout);
  }

  std::optional<IndexFault> index_select(const void* x, std::size_t element_bytes, const void* index, DType index_dtype,
                                         std::int64_t outer, std::int64_t extent, std::int64_t count, std::int64_t inner,
                                         void* out, StreamImpl& stream) override {
    CudaDeviceGuard guard(stream.device().index());
    const cudaStream_t s = cuda_handle(stream);
    // The fault word: INT64_MAX until a thread meets a bad index and lowers it to its position.
    Tensor word = allocate_tensor(Shape{1}, DType::i64, stream, "index_select");
    auto* fault = static_cast<long long*>(word.data_ptr());
    kernels::cuda::fill(fault, 1, sizeof(long long), static_cast<std::uint64_t>(std::numeric_limits<long long>::max()), s);
    kernels::cuda::index_select(x, element_bytes, index, index_dtype, outer, extent, count, inner, out, fault, s);
    long long position = 0;
    DEFER_CUDA_CHECK(cudaMemcpyAsync(&position, fault, sizeof position, cudaMemcpyDeviceToHost, s));
    stream.synchronize();  // the wait reports a bad index: it needs the kernel's answer
    if (position == std::numeric_limits<long long>::max()) return std::nullopt;
    std::int64_t value = 0;
    const std::size_t index_bytes = dtype_size(index_dtype);
    const auto* at = static_cast<const unsigned char*>(index) + static_cast<std::size_t>(position) * index_bytes;
    if (index_dtype == DType::i32) {
      std::int32_t v = 0;
      DEFER_CUDA_CHECK(cudaMemcpy(&v, at, sizeof v, cudaMemcpyDeviceToHost));
      value = v;
    } else {
      DEFER_CUDA_CHECK(cudaMemcpy(&value, at, sizeof value, cudaMemcpyDeviceToHost));
    }
    return IndexFault{position, value};
  }
};

}  // namespace

Backend& cuda_backend() {
  static CudaBackend* backend = new CudaBackend;  // never destroyed: no CUDA call after the runtime's teardown
  return *backend;
}

}  // namespace defer::detail
