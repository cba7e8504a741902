// Reductions over the middle axis of [outer, n, inner], softmax over the same axis, and layer norm
// over the last axis.
//
// Two shapes of kernel:
// - Row kernels: a group of threads owns one output "row" (the n elements x[o, :, i]) and reduces
//   with strided loads; the group is a warp for rows of up to kWarpRowMax elements (eight rows per
//   block), else the whole block (cub::BlockReduce). Rows are contiguous when inner == 1.
// - Column kernels, for inner >= 32: a 32 x 8 block owns 32 neighbouring outputs (o, i..i+31);
//   threadIdx.x walks i, so every load of a warp is one coalesced 128-byte line, and the 8 rows of
//   threads split n and meet in shared memory.
// Blocks loop over their work (grid-stride), so grids stay below 65535 blocks for any size.
//
// Accuracy: sums are accumulated in double (per thread and across threads). The CPU reference
// accumulates in double and the contract asks for 1e-5 relative; a float accumulator loses that
// for long rows, and for layer norm a float mean of data with a large offset loses the digits that
// (x - mean) keeps. Double adds are cheap next to the loads on the GPUs we build for.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <cub/block/block_reduce.cuh>

#include "cuda/ops.hpp"
#include "runtime/cuda/cuda_check.hpp"

namespace defer::kernels::cuda {
namespace {

constexpr int kBlock = 256;                  // threads per block, every kernel here
constexpr int kWarp = 32;                    // row group size of the warp-per-row kernels
constexpr std::int64_t kWarpRowMax = 1024;   // rows up to this length get a warp, longer ones a block
constexpr int kTileX = 32, kTileY = kBlock / kTileX;
constexpr std::int64_t kColumnMinInner = 32;
constexpr std::int64_t kMaxBlocks = 65535;

unsigned grid_for(std::int64_t units, std::int64_t units_per_block) {
  return static_cast<unsigned>(std::min<std::int64_t>((units + units_per_block - 1) / units_per_block, kMaxBlocks));
}

// ---- combining and transforming functors -------------------------------------------------------

struct Plus {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
// max that propagates NaN (fmaxf alone would drop it).
struct NanMax {
  __device__ float operator()(float a, float b) const { return (a != a || b != b) ? a + b : fmaxf(a, b); }
};
struct AsDouble {
  __device__ double operator()(float v) const { return v; }
};
struct AsFloat {
  __device__ float operator()(float v) const { return v; }
};
struct ExpShifted {  // exp(v - max) for softmax
  float max;
  __device__ double operator()(float v) const { return expf(v - max); }
};
// x - mean with the mean carried as hi + lo floats: v - hi is exact when v is near the mean (where
// it matters), so a mean of 1000 does not cost the deviations 30 ppm of its value.
struct Deviation {
  float hi, lo;
  __device__ float operator()(float v) const { return (v - hi) - lo; }
};
struct SquaredDeviation {  // for the variance's second pass
  Deviation dev;
  __device__ double operator()(float v) const {
    const float d = dev(v);
    return d * d;
  }
};

// What reduce() computes, per ReduceOp: the accumulator, its identity, and the final value.
struct SumOp {
  using Acc = double;
  using Combine = Plus;
  using Load = AsDouble;
  __device__ static Acc identity() { return 0.0; }
  __device__ static float finish(Acc acc, std::int64_t) { return static_cast<float>(acc); }
};
struct MeanOp {
  using Acc = double;
  using Combine = Plus;
  using Load = AsDouble;
  __device__ static Acc identity() { return 0.0; }
  __device__ static float finish(Acc acc, std::int64_t n) {
    return n == 0 ? NAN : static_cast<float>(acc / static_cast<double>(n));
  }
};
struct MaxOp {  // the op layer rejects max of nothing; like the CPU kernel, it would be NaN
  using Acc = float;
  using Combine = NanMax;
  using Load = AsFloat;
  __device__ static Acc identity() { return -INFINITY; }
  __device__ static float finish(Acc acc, std::int64_t n) { return n == 0 ? NAN : acc; }
};

// acc combined with load(p[j * stride]) for j = first, first + step, ... below n, in that order.
// Four loads are issued before their values are combined, to keep several in flight per thread.
template <class Acc, class Combine, class Load>
__device__ __forceinline__ Acc accumulate(Acc acc, const float* p, std::int64_t first, std::int64_t n,
                                          std::int64_t step, std::int64_t stride, Combine combine, Load load) {
  std::int64_t j = first;
  for (; j + 3 * step < n; j += 4 * step) {
    const float v0 = p[j * stride];
    const float v1 = p[(j + step) * stride];
    const float v2 = p[(j + 2 * step) * stride];
    const float v3 = p[(j + 3 * step) * stride];
    acc = combine(acc, load(v0));
    acc = combine(acc, load(v1));
    acc = combine(acc, load(v2));
    acc = combine(acc, load(v3));
  }
  for (; j < n; j += step) acc = combine(acc, load(p[j * stride]));
  return acc;
}

// ---- row groups --------------------------------------------------------------------------------

// kGroup threads own one row: all_reduce gives every thread of the group the reduction of the
// group's values. Each is called by every thread of the group (the whole block for kBlock).
template <class T, int kGroup>
struct RowGroup;

template <class T>
struct RowGroup<T, kBlock> {
  using BlockReduce = cub::BlockReduce<T, kBlock>;
  struct Storage {
    typename BlockReduce::TempStorage temp;
    T result;
  };
  Storage& storage;

  template <class Op>
  __device__ T all_reduce(T v, Op op) {
    const T r = BlockReduce(storage.temp).Reduce(v, op);  // valid in thread 0
    if (threadIdx.x == 0) storage.result = r;
    __syncthreads();
    const T all = storage.result;
    __syncthreads();  // everyone has read result and left temp before either is reused
    return all;
  }
};

template <class T>
struct RowGroup<T, kWarp> {
  struct Storage {};
  Storage& storage;

  // Butterfly: for commutative ops every lane ends with the same value.
  template <class Op>
  __device__ T all_reduce(T v, Op op) {
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
  }
};

// Rows r = first_row(), first_row() + row_step(), ... belong to this thread's group. The loop bound
// is uniform over a group, so a group's threads always reduce together.
template <int kGroup>
__device__ __forceinline__ std::int64_t first_row() {
  return static_cast<std::int64_t>(blockIdx.x) * (kBlock / kGroup) + threadIdx.x / kGroup;
}
template <int kGroup>
__device__ __forceinline__ std::int64_t row_step() {
  return static_cast<std::int64_t>(gridDim.x) * (kBlock / kGroup);
}

// ---- reduce ------------------------------------------------------------------------------------

template <class Op, int kGroup>
__global__ void __launch_bounds__(kBlock)
    reduce_rows_kernel(const float* x, float* out, std::int64_t rows, std::int64_t n, std::int64_t inner) {
  using Acc = typename Op::Acc;
  using Group = RowGroup<Acc, kGroup>;
  __shared__ typename Group::Storage storage;
  Group group{storage};
  const int lane = static_cast<int>(threadIdx.x % kGroup);
  for (std::int64_t r = first_row<kGroup>(); r < rows; r += row_step<kGroup>()) {
    const std::int64_t o = r / inner;
    const std::int64_t i = r - o * inner;
    const float* p = x + o * n * inner + i;
    Acc acc = accumulate(Op::identity(), p, lane, n, kGroup, inner, typename Op::Combine{}, typename Op::Load{});
    acc = group.all_reduce(acc, typename Op::Combine{});
    if (lane == 0) out[r] = Op::finish(acc, n);
  }
}

template <class Op>
__global__ void __launch_bounds__(kBlock)
    reduce_columns_kernel(const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner) {
  using Acc = typename Op::Acc;
  __shared__ Acc partial[kTileY][kTileX];
  const typename Op::Combine combine{};
  const std::int64_t col_tiles = (inner + kTileX - 1) / kTileX;
  const std::int64_t tiles = outer * col_tiles;
  for (std::int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const std::int64_t o = t / col_tiles;
    const std::int64_t i = (t - o * col_tiles) * kTileX + threadIdx.x;
    Acc acc = Op::identity();
    if (i < inner)
      acc = accumulate(acc, x + o * n * inner + i, threadIdx.y, n, kTileY, inner, combine, typename Op::Load{});
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && i < inner) {
      for (int y = 1; y < kTileY; ++y) acc = combine(acc, partial[y][threadIdx.x]);
      out[o * inner + i] = Op::finish(acc, n);
    }
    __syncthreads();  // partial is rewritten by the next tile
  }
}

// ---- softmax -----------------------------------------------------------------------------------

template <int kGroup>
__global__ void __launch_bounds__(kBlock)
    softmax_rows_kernel(const float* x, float* out, std::int64_t rows, std::int64_t n, std::int64_t inner) {
  using MaxGroup = RowGroup<float, kGroup>;
  using SumGroup = RowGroup<double, kGroup>;
  __shared__ typename MaxGroup::Storage max_storage;
  __shared__ typename SumGroup::Storage sum_storage;
  MaxGroup max_group{max_storage};
  SumGroup sum_group{sum_storage};
  const int lane = static_cast<int>(threadIdx.x % kGroup);
  for (std::int64_t r = first_row<kGroup>(); r < rows; r += row_step<kGroup>()) {
    const std::int64_t o = r / inner;
    const std::int64_t i = r - o * inner;
    const std::int64_t base = o * n * inner + i;
    const float* p = x + base;
    float* q = out + base;
    float m = accumulate(-INFINITY, p, lane, n, kGroup, inner, NanMax{}, AsFloat{});
    m = max_group.all_reduce(m, NanMax{});
    double s = accumulate(0.0, p, lane, n, kGroup, inner, Plus{}, ExpShifted{m});
    s = sum_group.all_reduce(s, Plus{});
    const float inv = static_cast<float>(1.0 / s);
    for (std::int64_t j = lane; j < n; j += kGroup) q[j * inner] = expf(p[j * inner] - m) * inv;
  }
}

__global__ void __launch_bounds__(kBlock)
    softmax_columns_kernel(const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner) {
  __shared__ float max_part[kTileY][kTileX];
  __shared__ double sum_part[kTileY][kTileX];
  const std::int64_t col_tiles = (inner + kTileX - 1) / kTileX;
  const std::int64_t tiles = outer * col_tiles;
  for (std::int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const std::int64_t o = t / col_tiles;
    const std::int64_t i = (t - o * col_tiles) * kTileX + threadIdx.x;
    const bool valid = i < inner;
    const std::int64_t base = valid ? o * n * inner + i : 0;
    float m = -INFINITY;
    if (valid) m = accumulate(m, x + base, threadIdx.y, n, kTileY, inner, NanMax{}, AsFloat{});
    max_part[threadIdx.y][threadIdx.x] = m;
    __syncthreads();
    // Every thread of the column combines the 8 partials in the same order: the same max for all.
    m = max_part[0][threadIdx.x];
    for (int y = 1; y < kTileY; ++y) m = NanMax{}(m, max_part[y][threadIdx.x]);
    double s = 0.0;
    if (valid) s = accumulate(s, x + base, threadIdx.y, n, kTileY, inner, Plus{}, ExpShifted{m});
    sum_part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    s = sum_part[0][threadIdx.x];
    for (int y = 1; y < kTileY; ++y) s += sum_part[y][threadIdx.x];
    if (valid) {
      const float inv = static_cast<float>(1.0 / s);
      const float* p = x + base;
      float* q = out + base;
      for (std::int64_t j = threadIdx.y; j < n; j += kTileY) q[j * inner] = expf(p[j * inner] - m) * inv;
    }
    __syncthreads();  // max_part and sum_part are rewritten by the next tile
  }
}

// ---- layer norm --------------------------------------------------------------------------------

// Two passes over the row (mean, then the mean of squared deviations: no cancellation), then the
// normalized write. x may equal out: each element is read before its own write, by the same thread.
template <int kGroup>
__global__ void __launch_bounds__(kBlock)
    layer_norm_kernel(const float* x, const float* gamma, const float* beta, float* out, std::int64_t rows,
                      std::int64_t cols, float eps) {
  using Group = RowGroup<double, kGroup>;
  __shared__ typename Group::Storage storage;
  Group group{storage};
  const int lane = static_cast<int>(threadIdx.x % kGroup);
  for (std::int64_t r = first_row<kGroup>(); r < rows; r += row_step<kGroup>()) {
    const float* p = x + r * cols;
    float* q = out + r * cols;
    const double sum = group.all_reduce(accumulate(0.0, p, lane, cols, kGroup, 1, Plus{}, AsDouble{}), Plus{});
    const double mean = sum / static_cast<double>(cols);
    const float mean_hi = static_cast<float>(mean);
    const Deviation dev{mean_hi, static_cast<float>(mean - static_cast<double>(mean_hi))};
    const double squares =
        group.all_reduce(accumulate(0.0, p, lane, cols, kGroup, 1, Plus{}, SquaredDeviation{dev}), Plus{});
    const float rstd = static_cast<float>(1.0 / sqrt(squares / static_cast<double>(cols) + eps));
    for (std::int64_t j = lane; j < cols; j += kGroup) q[j] = dev(p[j]) * rstd * gamma[j] + beta[j];
  }
}

// ---- host side ---------------------------------------------------------------------------------

void check_sizes(const char* who, std::int64_t a, std::int64_t b, std::int64_t c) {
  if (a < 0 || b < 0 || c < 0)
    throw std::invalid_argument(std::string("defer::kernels::cuda::") + who + ": negative size (" + std::to_string(a) +
                                ", " + std::to_string(b) + ", " + std::to_string(c) + ")");
}

// The column kernels pay off when inner is wide enough for coalesced warps and there are enough
// 32-wide tiles to fill the GPU (or n is short); otherwise one group per output is better.
bool use_columns(std::int64_t outer, std::int64_t n, std::int64_t inner) {
  if (inner < kColumnMinInner) return false;
  const std::int64_t tiles = outer * ((inner + kTileX - 1) / kTileX);
  return tiles >= 128 || n < 4096;
}

template <class Op>
void launch_reduce(const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner,
                   cudaStream_t stream) {
  const std::int64_t rows = outer * inner;
  if (use_columns(outer, n, inner)) {
    const dim3 block(kTileX, kTileY);
    reduce_columns_kernel<Op><<<grid_for(outer * ((inner + kTileX - 1) / kTileX), 1), block, 0, stream>>>(
        x, out, outer, n, inner);
  } else if (n <= kWarpRowMax) {
    reduce_rows_kernel<Op, kWarp><<<grid_for(rows, kBlock / kWarp), kBlock, 0, stream>>>(x, out, rows, n, inner);
  } else {
    reduce_rows_kernel<Op, kBlock><<<grid_for(rows, 1), kBlock, 0, stream>>>(x, out, rows, n, inner);
  }
  DEFER_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void reduce(ReduceOp op, const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner,
            cudaStream_t stream) {
  check_sizes("reduce", outer, n, inner);
  if (outer == 0 || inner == 0) return;  // no outputs; n == 0 still writes the empty reduction
  switch (op) {
    case ReduceOp::sum: return launch_reduce<SumOp>(x, out, outer, n, inner, stream);
    case ReduceOp::mean: return launch_reduce<MeanOp>(x, out, outer, n, inner, stream);
    case ReduceOp::max: return launch_reduce<MaxOp>(x, out, outer, n, inner, stream);
  }
  throw std::invalid_argument("defer::kernels::cuda::reduce: unknown op " + std::to_string(static_cast<int>(op)));
}

void softmax(const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner, cudaStream_t stream) {
  check_sizes("softmax", outer, n, inner);
  if (outer == 0 || n == 0 || inner == 0) return;
  const std::int64_t rows = outer * inner;
  if (use_columns(outer, n, inner)) {
    const dim3 block(kTileX, kTileY);
    softmax_columns_kernel<<<grid_for(outer * ((inner + kTileX - 1) / kTileX), 1), block, 0, stream>>>(x, out, outer,
                                                                                                      n, inner);
  } else if (n <= kWarpRowMax) {
    softmax_rows_kernel<kWarp><<<grid_for(rows, kBlock / kWarp), kBlock, 0, stream>>>(x, out, rows, n, inner);
  } else {
    softmax_rows_kernel<kBlock><<<grid_for(rows, 1), kBlock, 0, stream>>>(x, out, rows, n, inner);
  }
  DEFER_CUDA_CHECK(cudaGetLastError());
}

void layer_norm(const float* x, const float* gamma, const float* beta, float* out, std::int64_t rows,
                std::int64_t cols, float eps, cudaStream_t stream) {
  check_sizes("layer_norm", rows, cols, 0);
  if (rows == 0 || cols == 0) return;
  if (cols <= kWarpRowMax) {
    layer_norm_kernel<kWarp><<<grid_for(rows, kBlock / kWarp), kBlock, 0, stream>>>(x, gamma, beta, out, rows, cols,
                                                                                    eps);
  } else {
    layer_norm_kernel<kBlock><<<grid_for(rows, 1), kBlock, 0, stream>>>(x, gamma, beta, out, rows, cols, eps);
  }
  DEFER_CUDA_CHECK(cudaGetLastError());
}

}  // namespace defer::kernels::cuda
