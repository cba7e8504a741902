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

// out[b] = x[b]^T, x [batch, rows, cols]. One 32 x 32 tile per block iteration: read with threads
// along cols (coalesced), write with threads along rows (coalesced), through shared memory whose
// rows are padded by one float so the column-wise reads hit 32 different banks.
__global__ void __launch_bounds__(kTile * kTileRows)
    transpose_kernel(const float* x, float* out, std::int64_t rows, std::int64_t cols, std::int64_t row_tiles,
                     std::int64_t col_tiles, std::int64_t tiles) {
  __shared__ float tile[kTile][kTile + 1];
  const std::int64_t tiles_per_matrix = row_tiles * col_tiles;
  const std::int64_t matrix_size = rows * cols;
  for (std::int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const std::int64_t b = t / tiles_per_matrix;
    const std::int64_t in_matrix = t - b * tiles_per_matrix;
    const std::int64_t r0 = (in_matrix / col_tiles) * kTile;
    const std::int64_t c0 = (in_matrix % col_tiles) * kTile;
    const float* src = x + b * matrix_size;
    float* dst = out + b * matrix_size;
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

}  // namespace

void matmul(cublasHandle_t handle, const float* a, const float* b, float* c, std::int64_t batch, std::int64_t m,
            std::int64_t k, std::int64_t n, std::int64_t a_batch_stride, std::int64_t b_batch_stride) {
  if (batch < 0 || m < 0 || k < 0 || n < 0 || a_batch_stride < 0 || b_batch_stride < 0)
    throw std::invalid_argument("defer::kernels::cuda::matmul: negative size or stride (batch " +
                                std::to_string(batch) + ", m " + std::to_string(m) + ", k " + std::to_string(k) +
                                ", n " + std::to_string(n) + ")");
  if (batch == 0 || m == 0 || n == 0) return;  // no output
  if (k == 0) {
    // An empty sum: C is all zeros (cuBLAS rejects k == 0 as lda = 0). Queued on the handle's stream.
    cudaStream_t stream = nullptr;
    DEFER_CUBLAS_CHECK(cublasGetStream(handle, &stream));
    const auto bytes = static_cast<std::size_t>(batch * m * n) * sizeof(float);
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
  if (fits_int(m) && fits_int(n) && fits_int(k) && fits_int(batch)) {
    DEFER_CUBLAS_CHECK(cublasSgemmStridedBatched(handle, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n),
                                                 static_cast<int>(m), static_cast<int>(k), &alpha, b,
                                                 static_cast<int>(n), stride_b, a, static_cast<int>(k), stride_a,
                                                 &beta, c, static_cast<int>(n), stride_c, static_cast<int>(batch)));
  } else {
    DEFER_CUBLAS_CHECK(cublasSgemmStridedBatched_64(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, m, k, &alpha, b, n, stride_b,
                                                    a, k, stride_a, &beta, c, n, stride_c, batch));
  }
}

void transpose(const float* x, float* out, std::int64_t batch, std::int64_t rows, std::int64_t cols,
               cudaStream_t stream) {
  if (batch < 0 || rows < 0 || cols < 0)
    throw std::invalid_argument("defer::kernels::cuda::transpose: negative size");
  if (batch == 0 || rows == 0 || cols == 0) return;
  const std::int64_t row_tiles = (rows + kTile - 1) / kTile;
  const std::int64_t col_tiles = (cols + kTile - 1) / kTile;
  const std::int64_t tiles = batch * row_tiles * col_tiles;
  const auto blocks = static_cast<unsigned>(std::min(tiles, kMaxBlocks));
  transpose_kernel<<<blocks, dim3(kTile, kTileRows), 0, stream>>>(x, out, rows, cols, row_tiles, col_tiles, tiles);
  DEFER_CUDA_CHECK(cudaGetLastError());
}

}  // namespace defer::kernels::cuda
