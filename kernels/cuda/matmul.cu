// Batched matrix product through cuBLAS, and a batched transpose kernel.
//
// cuBLAS is column-major. A row-major [r, c] matrix is, to cuBLAS, the column-major [c, r] matrix
// of its transpose with leading dimension c. So for row-major C = A B we ask cuBLAS for
// C^T = B^T A^T: the column-major product of "B" ([n, k], ld n) and "A" ([k, m], ld k) into "C"
// ([n, m], ld n), which is exactly row-major C [m, n] in memory. No operand is transposed.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/ops.hpp"
#include "runtime/cuda/cublas_check.hpp"
#include "runtime/cuda/cuda_check.hpp"

namespace defer::kernels::cuda {
namespace {

constexpr int kTile = 32;      // transpose tile edge
constexpr int kTileRows = 8;   // threads per tile column: each thread moves kTile / kTileRows elements
constexpr std::int64_t kMaxBlocks = 65535;

// out[b] = x[b]^T, x [batch, rows, cols], elements of type T (moved as bits: any dtype of T's size).
// One 32 x 32 tile per block iteration: read with threads along cols (coalesced), write with threads
// along rows (coalesced), through shared memory whose rows are padded by one element so the
// column-wise reads hit different banks.
template <class T>
__global__ void __launch_bounds__(kTile * kTileRows)
    transpose_kernel(const T* x, T* out, std::int64_t rows, std::int64_t cols, std::int64_t row_tiles,
                     std::int64_t col_tiles, std::int64_t tiles) {
  __shared__ T tile[kTile][kTile + 1];
  const std::int64_t tiles_per_matrix = row_tiles * col_tiles;
  const std::int64_t matrix_size = rows * cols;
  for (std::int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const std::int64_t b = t / tiles_per_matrix;
    const std::int64_t in_matrix = t - b * tiles_per_matrix;
    const std::int64_t r0 = (in_matrix / col_tiles) * kTile;
    const std::int64_t c0 = (in_matrix % col_tiles) * kTile;
    const T* src = x + b * matrix_size;
    T* dst = out + b * matrix_size;
    // tile[i][j] = src[r0 + i][c0 + j]
    const std::int64_t c = c0 + threadIdx.x;
#pragma unroll
    for (int k = 0; k < kTile; k += kTileRows) {
      const std::int64_t r = r0 + threadIdx.y + k;
      if (r < rows && c < cols) tile[threadIdx.y + k][threadIdx.x] = src[r * cols + c];
    }
    __syncthreads();
    // dst[c0 + i][r0 + j] = src[r0 + j][c0 + i] = tile[j][i]; dst is [cols, rows]
    const std::int64_t r = r0 + threadIdx.x;
#pragma unroll
    for (int k = 0; k < kTile; k += kTileRows) {
      const std::int64_t cc = c0 + threadIdx.y + k;
      if (cc < cols && r < rows) dst[cc * rows + r] = tile[threadIdx.x][threadIdx.y + k];
    }
    __syncthreads();  // the tile is rewritten by the next iteration
  }
}

bool fits_int(std::int64_t v) { return v <= INT_MAX; }

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

}  // namespace

void matmul(cublasHandle_t handle, DType dtype, const void* a, const void* b, void* c, std::int64_t batch,
            std::int64_t m, std::int64_t k, std::int64_t n, std::int64_t a_batch_stride, std::int64_t b_batch_stride) {
  if (batch < 0 || m < 0 || k < 0 || n < 0 || a_batch_stride < 0 || b_batch_stride < 0)
    throw std::invalid_argument("defer::kernels::cuda::matmul: negative size or stride (batch " +
                                std::to_string(batch) + ", m " + std::to_string(m) + ", k " + std::to_string(k) +
                                ", n " + std::to_string(n) + ")");
  const cudaDataType_t type = cuda_type(dtype);
  if (batch == 0 || m == 0 || n == 0) return;  // no output
  if (k == 0) {
    // An empty sum: C is all zeros (cuBLAS rejects k == 0 as lda = 0). Queued on the handle's stream.
    cudaStream_t stream = nullptr;
    DEFER_CUBLAS_CHECK(cublasGetStream(handle, &stream));
    const auto bytes = static_cast<std::size_t>(batch * m * n) * dtype_size(dtype);
    DEFER_CUDA_CHECK(cudaMemsetAsync(c, 0, bytes, stream));
    return;
  }

  // A shared B with A's matrices back to back is one product: [batch * m, k] x [k, n].
  if (batch > 1 && b_batch_stride == 0 && a_batch_stride == m * k) {
    m *= batch;
    batch = 1;
  }

  const float alpha = 1.f, beta = 0.f;  // CUBLAS_POINTER_MODE_HOST (set by cublas_handle); beta 0: C not read
  const long long stride_a = a_batch_stride, stride_b = b_batch_stride, stride_c = m * n;
  const bool small = fits_int(m) && fits_int(n) && fits_int(k) && fits_int(batch);
  if (dtype == DType::f32) {
    const auto* af = static_cast<const float*>(a);
    const auto* bf = static_cast<const float*>(b);
    auto* cf = static_cast<float*>(c);
    if (small) {
      DEFER_CUBLAS_CHECK(cublasSgemmStridedBatched(handle, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n),
                                                   static_cast<int>(m), static_cast<int>(k), &alpha, bf,
                                                   static_cast<int>(n), stride_b, af, static_cast<int>(k), stride_a,
                                                   &beta, cf, static_cast<int>(n), stride_c, static_cast<int>(batch)));
    } else {
      DEFER_CUBLAS_CHECK(cublasSgemmStridedBatched_64(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &alpha, bf, n,
                                                      stride_b, af, k, stride_a, &beta, cf, n, stride_c, batch));
    }
    return;
  }
  // f16 / bf16 operands on tensor cores, accumulated and scaled in f32, rounded once into C.
  if (small) {
    DEFER_CUBLAS_CHECK(cublasGemmStridedBatchedEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n),
                                                  static_cast<int>(m), static_cast<int>(k), &alpha, b, type,
                                                  static_cast<int>(n), stride_b, a, type, static_cast<int>(k), stride_a,
                                                  &beta, c, type, static_cast<int>(n), stride_c,
                                                  static_cast<int>(batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  } else {
    DEFER_CUBLAS_CHECK(cublasGemmStridedBatchedEx_64(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &alpha, b, type, n,
                                                     stride_b, a, type, k, stride_a, &beta, c, type, n, stride_c,
                                                     batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

namespace {

template <class T>
void launch_transpose(const void* x, void* out, std::int64_t batch, std::int64_t rows, std::int64_t cols,
                      cudaStream_t stream) {
  const std::int64_t row_tiles = (rows + kTile - 1) / kTile;
  const std::int64_t col_tiles = (cols + kTile - 1) / kTile;
  const std::int64_t tiles = batch * row_tiles * col_tiles;
  const auto blocks = static_cast<unsigned>(std::min(tiles, kMaxBlocks));
  transpose_kernel<T><<<blocks, dim3(kTile, kTileRows), 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(out),
                                                                     rows, cols, row_tiles, col_tiles, tiles);
}

}  // namespace

void transpose(std::size_t element_bytes, const void* x, void* out, std::int64_t batch, std::int64_t rows,
               std::int64_t cols, cudaStream_t stream) {
  if (batch < 0 || rows < 0 || cols < 0)
    throw std::invalid_argument("defer::kernels::cuda::transpose: negative size");
  if (batch == 0 || rows == 0 || cols == 0) return;
  switch (element_bytes) {
    case 1: launch_transpose<std::uint8_t>(x, out, batch, rows, cols, stream); break;
    case 2: launch_transpose<std::uint16_t>(x, out, batch, rows, cols, stream); break;
    case 4: launch_transpose<std::uint32_t>(x, out, batch, rows, cols, stream); break;
    case 8: launch_transpose<std::uint64_t>(x, out, batch, rows, cols, stream); break;
    default:
      throw std::invalid_argument("defer::kernels::cuda::transpose: no kernel for elements of " +
                                  std::to_string(element_bytes) + " bytes");
  }
  DEFER_CUDA_CHECK(cudaGetLastError());
}

}  // namespace defer::kernels::cuda
