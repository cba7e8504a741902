// Matrix products through cuBLAS (kernels/matmul_layout.hpp), operands read in place.
//
// cuBLAS is column-major. A row-major [r, c] matrix with leading dimension ld is, to cuBLAS, the
// column-major [c, r] matrix of its transpose (ld ld); a column-major one (a transposed view) is
// itself. So for row-major C = A B we ask cuBLAS for C^T = B^T A^T: "A" is b and "B" is a, each
// with CUBLAS_OP_N when it is row-major (its memory already is the transpose cuBLAS wants) and
// CUBLAS_OP_T when it is column-major, and "C" is c ([n, m] column-major, ld n), which is exactly
// row-major C [m, n] in memory.
//
// Batches: one strided-batched call covers one batch dim (uniform strides for a, b and c). The
// layout's collapsed batch dims are usually one ([B*H] of attention, or a shared operand); when
// broadcasting leaves several (a [1, H, ...] times b [B, 1, ...]), the call batches the largest dim
// and a host loop issues one call per index of the others. The alternative, cublasGemmBatchedEx
// with pointer arrays, would need the arrays in device memory: an allocation and a host-to-device
// copy per product, kept alive until the kernel has run, for a case that is rare and whose outer
// extents are small. So: a loop.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/ops.hpp"
#include "runtime/cuda/cublas_check.hpp"
#include "runtime/cuda/cuda_check.hpp"

namespace defer::kernels::cuda {
namespace {

bool fits_int(std::int64_t v) { return v >= 0 && v <= INT_MAX; }

// The cuBLAS element type of a floating dtype.
cudaDataType_t cuda_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return CUDA_R_32F;
    case DType::f16: return CUDA_R_16F;
    case DType::bf16: return CUDA_R_16BF;
    case DType::i32:
    case DType::i64:
    case DType::boolean: break;
  }
  throw std::invalid_argument(std::string("defer::kernels::cuda::matmul: ") + dtype_name(dtype) +
                              " is not a floating dtype");
}

// `count` products of the layout's matrices (m, k, n > 0): product i of a at a + i * stride_a
// elements, likewise b and c.
void gemm_strided(cublasHandle_t handle, cudaDataType_t type, const MatmulLayout& l, const void* a, const void* b,
                  void* c, long long stride_a, long long stride_b, long long stride_c, std::int64_t count) {
  const cublasOperation_t op_b = l.b.row_major(l.n) ? CUBLAS_OP_N : CUBLAS_OP_T;
  const cublasOperation_t op_a = l.a.row_major(l.k) ? CUBLAS_OP_N : CUBLAS_OP_T;
  const std::int64_t ld_a = l.a.ld(l.k), ld_b = l.b.ld(l.n);
  // CUBLAS_POINTER_MODE_HOST (set by cublas_handle); beta 0: C is not read. f32 on CUBLAS_COMPUTE_32F
  // is plain SGEMM (the handle's math mode keeps TF32 off); f16 / bf16 operands run on tensor cores,
  // accumulated and scaled in f32, rounded once into C.
  const float alpha = 1.f, beta = 0.f;
  if (fits_int(l.m) && fits_int(l.n) && fits_int(l.k) && fits_int(ld_a) && fits_int(ld_b) && fits_int(count)) {
    DEFER_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        handle, op_b, op_a, static_cast<int>(l.n), static_cast<int>(l.m), static_cast<int>(l.k), &alpha, b, type,
        static_cast<int>(ld_b), stride_b, a, type, static_cast<int>(ld_a), stride_a, &beta, c, type,
        static_cast<int>(l.n), stride_c, static_cast<int>(count), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  } else {
    DEFER_CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(handle, op_b, op_a, l.n, l.m, l.k, &alpha, b, type, ld_b, stride_b,
                                                     a, type, ld_a, stride_a, &beta, c, type, l.n, stride_c, count,
                                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace

void matmul(cublasHandle_t handle, DType dtype, const void* a, const void* b, void* c, const MatmulLayout& l) {
  bool negative = l.m < 0 || l.k < 0 || l.n < 0 || l.a.batch.size() != l.batch.size() ||
                  l.b.batch.size() != l.batch.size();
  for (const std::int64_t e : l.batch) negative = negative || e < 0;
  if (negative)
    throw std::invalid_argument("defer::kernels::cuda::matmul: a negative size or mismatched batch strides (m " +
                                std::to_string(l.m) + ", k " + std::to_string(l.k) + ", n " + std::to_string(l.n) +
                                ", " + std::to_string(l.batch.size()) + " batch dims)");
  const cudaDataType_t type = cuda_type(dtype);
  const std::int64_t count = l.batch_count();
  if (count == 0 || l.m == 0 || l.n == 0) return;  // no output
  const auto esize = static_cast<std::int64_t>(dtype_size(dtype));
  if (l.k == 0) {
    // An empty sum: C is all zeros (cuBLAS rejects k == 0 as lda = 0). Queued on the handle's stream.
    cudaStream_t stream = nullptr;
    DEFER_CUBLAS_CHECK(cublasGetStream(handle, &stream));
    DEFER_CUDA_CHECK(cudaMemsetAsync(c, 0, static_cast<std::size_t>(count * l.m * l.n * esize), stream));
    return;
  }

  // c's stride of each batch dim, and the dim one call batches (the largest; -1: none).
  const std::size_t nb = l.batch.size();
  std::vector<std::int64_t> c_stride(nb);
  std::int64_t span = l.m * l.n;
  for (std::size_t d = nb; d-- > 0;) {
    c_stride[d] = span;
    span *= l.batch[d];
  }
  std::size_t batched = nb;
  for (std::size_t d = 0; d < nb; ++d)
    if (batched == nb || l.batch[d] > l.batch[batched]) batched = d;
  const bool one = batched == nb;
  const std::int64_t per_call = one ? 1 : l.batch[batched];
  const long long sa = one ? 0 : l.a.batch[batched], sb = one ? 0 : l.b.batch[batched],
                  sc = one ? l.m * l.n : c_stride[batched];

  const auto* ab = static_cast<const char*>(a);
  const auto* bb = static_cast<const char*>(b);
  auto* cb = static_cast<char*>(c);
  std::vector<std::int64_t> idx(nb, 0);
  std::int64_t ao = 0, bo = 0, co = 0;  // element offsets of the current call's first product
  for (std::int64_t q = 0; q < count / per_call; ++q) {
    gemm_strided(handle, type, l, ab + ao * esize, bb + bo * esize, cb + co * esize, sa, sb, sc, per_call);
    for (std::size_t d = nb; d-- > 0;) {  // the next index of the dims other than `batched`
      if (d == batched) continue;
      if (++idx[d] < l.batch[d]) {
        ao += l.a.batch[d];
        bo += l.b.batch[d];
        co += c_stride[d];
        break;
      }
      ao -= (l.batch[d] - 1) * l.a.batch[d];
      bo -= (l.batch[d] - 1) * l.b.batch[d];
      co -= (l.batch[d] - 1) * c_stride[d];
      idx[d] = 0;
    }
  }
}

}  // namespace defer::kernels::cuda
