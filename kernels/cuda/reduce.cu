// Reductions over the middle axis of [outer, n, inner], softmax over the same axis, and layer norm
// over the last axis, reading x in place through a StridedAxis (kernels/strided_axis.hpp): x[o, j, i]
// at o * outer_stride + j * n_stride + i * inner_stride, any strides (0: broadcast, negative
// allowed). Outputs are contiguous in the logical order ([outer, inner]; softmax [outer, n, inner];
// layer norm [rows, cols]).
//
// Two shapes of kernel:
// - Row kernels: a group of threads owns one output "row" (the n elements x[o, :, i]) and reduces
//   with strided loads; the group is a warp for rows of up to kWarpRowMax elements (eight rows per
//   block), else the whole block (cub::BlockReduce). Rows are contiguous when n_stride == 1 (a
//   dense tensor's last dim, or a transposed view's reduced dim): a warp's loads are then coalesced.
// - Column kernels, for inner >= 32: a 32 x 8 block owns 32 neighbouring outputs (o, i..i+31);
//   threadIdx.x walks i, so every load of a warp is one coalesced 128-byte line when
//   inner_stride == 1, and the 8 rows of threads split n and meet in shared memory. Not used when
//   the reduced axis is the denser one in memory (the row kernels coalesce there).
// Blocks loop over their work (grid-stride), so grids stay below 65535 blocks for any size.
//
// Dtypes: every kernel is a template over the data's dtype tag (kernels/dtype_dispatch.hpp): f16
// and bf16 elements are loaded to f32, computed as f32 data is, and rounded once when stored.
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
#include "dtype_dispatch.hpp"
#include "strided_axis.hpp"
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
// max and min that propagate NaN (fmaxf / fminf alone would drop it).
struct NanMax {
  __device__ float operator()(float a, float b) const { return (a != a || b != b) ? a + b : fmaxf(a, b); }
};
struct NanMin {
  __device__ float operator()(float a, float b) const { return (a != a || b != b) ? a + b : fminf(a, b); }
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
struct MinOp {
  using Acc = float;
  using Combine = NanMin;
  using Load = AsFloat;
  __device__ static Acc identity() { return INFINITY; }
  __device__ static float finish(Acc acc, std::int64_t n) { return n == 0 ? NAN : acc; }
};

// acc combined with load(p[j * stride]) for j = first, first + step, ... below n, in that order,
// elements of Tag's dtype read as f32. Four loads are issued before their values are combined, to
// keep several in flight per thread.
template <class Tag, class Acc, class Combine, class Load>
__device__ __forceinline__ Acc accumulate(Acc acc, const typename Tag::storage* p, std::int64_t first, std::int64_t n,
                                          std::int64_t step, std::int64_t stride, Combine combine, Load load) {
  std::int64_t j = first;
  for (; j + 3 * step < n; j += 4 * step) {
    const float v0 = Tag::load(p[j * stride]);
    const float v1 = Tag::load(p[(j + step) * stride]);
    const float v2 = Tag::load(p[(j + 2 * step) * stride]);
    const float v3 = Tag::load(p[(j + 3 * step) * stride]);
    acc = combine(acc, load(v0));
    acc = combine(acc, load(v1));
    acc = combine(acc, load(v2));
    acc = combine(acc, load(v3));
  }
  for (; j < n; j += step) acc = combine(acc, load(Tag::load(p[j * stride])));
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

// The start of row (o, i) = r of x: x[o, 0, i].
template <class T>
__device__ __forceinline__ T* row_start(T* x, const StridedAxis& a, std::int64_t o, std::int64_t i) {
  return x + o * a.outer_stride + i * a.inner_stride;
}

template <class Tag, class Op, int kGroup>
__global__ void __launch_bounds__(kBlock)
    reduce_rows_kernel(const typename Tag::storage* x, typename Tag::storage* out, StridedAxis a) {
  using Acc = typename Op::Acc;
  using Group = RowGroup<Acc, kGroup>;
  __shared__ typename Group::Storage storage;
  Group group{storage};
  const int lane = static_cast<int>(threadIdx.x % kGroup);
  const std::int64_t rows = a.outer * a.inner;
  for (std::int64_t r = first_row<kGroup>(); r < rows; r += row_step<kGroup>()) {
    const std::int64_t o = r / a.inner;
    const std::int64_t i = r - o * a.inner;
    const typename Tag::storage* p = row_start(x, a, o, i);
    Acc acc =
        accumulate<Tag>(Op::identity(), p, lane, a.n, kGroup, a.n_stride, typename Op::Combine{}, typename Op::Load{});
    acc = group.all_reduce(acc, typename Op::Combine{});
    if (lane == 0) out[r] = Tag::store(Op::finish(acc, a.n));
  }
}

template <class Tag, class Op>
__global__ void __launch_bounds__(kBlock)
    reduce_columns_kernel(const typename Tag::storage* x, typename Tag::storage* out, StridedAxis a) {
  using Acc = typename Op::Acc;
  __shared__ Acc partial[kTileY][kTileX];
  const typename Op::Combine combine{};
  const std::int64_t col_tiles = (a.inner + kTileX - 1) / kTileX;
  const std::int64_t tiles = a.outer * col_tiles;
  for (std::int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const std::int64_t o = t / col_tiles;
    const std::int64_t i = (t - o * col_tiles) * kTileX + threadIdx.x;
    Acc acc = Op::identity();
    if (i < a.inner)
      acc = accumulate<Tag>(acc, row_start(x, a, o, i), threadIdx.y, a.n, kTileY, a.n_stride, combine,
                            typename Op::Load{});
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && i < a.inner) {
      for (int y = 1; y < kTileY; ++y) acc = combine(acc, partial[y][threadIdx.x]);
      out[o * a.inner + i] = Tag::store(Op::finish(acc, a.n));
    }
    __syncthreads();  // partial is rewritten by the next tile
  }
}

// ---- softmax -----------------------------------------------------------------------------------

// out[o, j, i] at (o * n + j) * inner + i, whatever x's strides.
template <class Tag, int kGroup>
__global__ void __launch_bounds__(kBlock)
    softmax_rows_kernel(const typename Tag::storage* x, typename Tag::storage* out, StridedAxis a) {
  using MaxGroup = RowGroup<float, kGroup>;
  using SumGroup = RowGroup<double, kGroup>;
  __shared__ typename MaxGroup::Storage max_storage;
  __shared__ typename SumGroup::Storage sum_storage;
  MaxGroup max_group{max_storage};
  SumGroup sum_group{sum_storage};
  const int lane = static_cast<int>(threadIdx.x % kGroup);
  const std::int64_t rows = a.outer * a.inner, n = a.n, inner = a.inner, sn = a.n_stride;
  for (std::int64_t r = first_row<kGroup>(); r < rows; r += row_step<kGroup>()) {
    const std::int64_t o = r / inner;
    const std::int64_t i = r - o * inner;
    const typename Tag::storage* p = row_start(x, a, o, i);
    typename Tag::storage* q = out + o * n * inner + i;
    float m = accumulate<Tag>(-INFINITY, p, lane, n, kGroup, sn, NanMax{}, AsFloat{});
    m = max_group.all_reduce(m, NanMax{});
    double s = accumulate<Tag>(0.0, p, lane, n, kGroup, sn, Plus{}, ExpShifted{m});
    s = sum_group.all_reduce(s, Plus{});
    const float inv = static_cast<float>(1.0 / s);
    for (std::int64_t j = lane; j < n; j += kGroup) q[j * inner] = Tag::store(expf(Tag::load(p[j * sn]) - m) * inv);
  }
}

template <class Tag>
__global__ void __launch_bounds__(kBlock)
    softmax_columns_kernel(const typename Tag::storage* x, typename Tag::storage* out, StridedAxis a) {
  __shared__ float max_part[kTileY][kTileX];
  __shared__ double sum_part[kTileY][kTileX];
  const std::int64_t n = a.n, inner = a.inner, sn = a.n_stride;
  const std::int64_t col_tiles = (inner + kTileX - 1) / kTileX;
  const std::int64_t tiles = a.outer * col_tiles;
  for (std::int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const std::int64_t o = t / col_tiles;
    const std::int64_t i = (t - o * col_tiles) * kTileX + threadIdx.x;
    const bool valid = i < inner;
    const typename Tag::storage* p = valid ? row_start(x, a, o, i) : x;
    float m = -INFINITY;
    if (valid) m = accumulate<Tag>(m, p, threadIdx.y, n, kTileY, sn, NanMax{}, AsFloat{});
    max_part[threadIdx.y][threadIdx.x] = m;
    __syncthreads();
    // Every thread of the column combines the 8 partials in the same order: the same max for all.
    m = max_part[0][threadIdx.x];
    for (int y = 1; y < kTileY; ++y) m = NanMax{}(m, max_part[y][threadIdx.x]);
    double s = 0.0;
    if (valid) s = accumulate<Tag>(s, p, threadIdx.y, n, kTileY, sn, Plus{}, ExpShifted{m});
    sum_part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    s = sum_part[0][threadIdx.x];
    for (int y = 1; y < kTileY; ++y) s += sum_part[y][threadIdx.x];
    if (valid) {
      const float inv = static_cast<float>(1.0 / s);
      typename Tag::storage* q = out + o * n * inner + i;
      for (std::int64_t j = threadIdx.y; j < n; j += kTileY) q[j * inner] = Tag::store(expf(Tag::load(p[j * sn]) - m) * inv);
    }
    __syncthreads();  // max_part and sum_part are rewritten by the next tile
  }
}

// ---- layer norm --------------------------------------------------------------------------------

// Two passes over the row (mean, then the mean of squared deviations: no cancellation), then the
// normalized write. Row r of x starts at r * outer_stride, its columns n_stride apart (inner == 1);
// out is [rows, cols]. A dense x may equal out: each element is read before its own write, by the
// same thread.
template <class Tag, int kGroup>
__global__ void __launch_bounds__(kBlock)
    layer_norm_kernel(const typename Tag::storage* x, const typename Tag::storage* gamma,
                      const typename Tag::storage* beta, typename Tag::storage* out, StridedAxis a, float eps) {
  using Group = RowGroup<double, kGroup>;
  __shared__ typename Group::Storage storage;
  Group group{storage};
  const int lane = static_cast<int>(threadIdx.x % kGroup);
  const std::int64_t rows = a.outer, cols = a.n, sc = a.n_stride;
  for (std::int64_t r = first_row<kGroup>(); r < rows; r += row_step<kGroup>()) {
    const typename Tag::storage* p = x + r * a.outer_stride;
    typename Tag::storage* q = out + r * cols;
    const double sum = group.all_reduce(accumulate<Tag>(0.0, p, lane, cols, kGroup, sc, Plus{}, AsDouble{}), Plus{});
    const double mean = sum / static_cast<double>(cols);
    const float mean_hi = static_cast<float>(mean);
    const Deviation dev{mean_hi, static_cast<float>(mean - static_cast<double>(mean_hi))};
    const double squares =
        group.all_reduce(accumulate<Tag>(0.0, p, lane, cols, kGroup, sc, Plus{}, SquaredDeviation{dev}), Plus{});
    const float rstd = static_cast<float>(1.0 / sqrt(squares / static_cast<double>(cols) + eps));
    for (std::int64_t j = lane; j < cols; j += kGroup)
      q[j] = Tag::store(dev(Tag::load(p[j * sc])) * rstd * Tag::load(gamma[j]) + Tag::load(beta[j]));
  }
}

// ---- argmax ------------------------------------------------------------------------------------

// A candidate of argmax: a value and its position along the reduced axis.
struct Candidate {
  float v;
  long long j;
};

// The better of two candidates: a NaN beats every number (torch.argmax), a larger value a smaller
// one, and among equals (NaNs included) the first position wins. Commutative and associative, so
// any combining order gives the sequential scan's answer.
__device__ __forceinline__ Candidate better(Candidate a, Candidate b) {
  const bool a_nan = a.v != a.v, b_nan = b.v != b.v;
  if (a_nan != b_nan) return a_nan ? a : b;
  if (!a_nan && a.v != b.v) return a.v > b.v ? a : b;
  return a.j <= b.j ? a : b;
}

// A warp per output (o, i): lanes scan j = lane, lane + 32, ... and meet in a butterfly.
template <class Tag>
__global__ void __launch_bounds__(kBlock)
    argmax_kernel(const typename Tag::storage* x, long long* out, StridedAxis a) {
  const int lane = static_cast<int>(threadIdx.x % kWarp);
  const std::int64_t rows = a.outer * a.inner, n = a.n;
  for (std::int64_t r = first_row<kWarp>(); r < rows; r += row_step<kWarp>()) {
    const std::int64_t o = r / a.inner;
    const std::int64_t i = r - o * a.inner;
    const typename Tag::storage* p = row_start(x, a, o, i);
    Candidate best{-INFINITY, n};  // n: no position yet (loses every tie with a real one)
    for (std::int64_t j = lane; j < n; j += kWarp) best = better(best, Candidate{Tag::load(p[j * a.n_stride]), j});
#pragma unroll
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const Candidate other{__shfl_xor_sync(0xffffffffu, best.v, offset), __shfl_xor_sync(0xffffffffu, best.j, offset)};
      best = better(best, other);
    }
    if (lane == 0) out[r] = best.j < n ? best.j : 0;
  }
}

// ---- host side ---------------------------------------------------------------------------------

void check_sizes(const char* who, std::int64_t a, std::int64_t b, std::int64_t c) {
  if (a < 0 || b < 0 || c < 0)
    throw std::invalid_argument(std::string("defer::kernels::cuda::") + who + ": negative size (" + std::to_string(a) +
                                ", " + std::to_string(b) + ", " + std::to_string(c) + ")");
}

std::int64_t magnitude(std::int64_t v) { return v < 0 ? -v : v; }

// The column kernels pay off when inner is wide enough for coalesced warps and there are enough
// 32-wide tiles to fill the GPU (or n is short); otherwise one group per output is better. When the
// reduced axis is the denser one in memory (a transposed view), the row kernels' warps coalesce and
// the column tiles' would not.
bool use_columns(const StridedAxis& a) {
  if (a.inner < kColumnMinInner) return false;
  if (a.n > 1 && magnitude(a.n_stride) < magnitude(a.inner_stride)) return false;
  const std::int64_t tiles = a.outer * ((a.inner + kTileX - 1) / kTileX);
  return tiles >= 128 || a.n < 4096;
}

unsigned column_grid(const StridedAxis& a) { return grid_for(a.outer * ((a.inner + kTileX - 1) / kTileX), 1); }

template <class Tag, class Op>
void launch_reduce(const void* x_bytes, void* out_bytes, const StridedAxis& a, cudaStream_t stream) {
  const auto* x = static_cast<const typename Tag::storage*>(x_bytes);
  auto* out = static_cast<typename Tag::storage*>(out_bytes);
  const std::int64_t rows = a.outer * a.inner;
  if (use_columns(a)) {
    reduce_columns_kernel<Tag, Op><<<column_grid(a), dim3(kTileX, kTileY), 0, stream>>>(x, out, a);
  } else if (a.n <= kWarpRowMax) {
    reduce_rows_kernel<Tag, Op, kWarp><<<grid_for(rows, kBlock / kWarp), kBlock, 0, stream>>>(x, out, a);
  } else {
    reduce_rows_kernel<Tag, Op, kBlock><<<grid_for(rows, 1), kBlock, 0, stream>>>(x, out, a);
  }
}

// Calls fn(tag) for f32, f16 and bf16; other dtypes are the op layer's to reject.
template <class F>
void floating_dispatch(const char* who, DType dtype, F&& fn) {
  dispatch(dtype, [&](auto tag) {
    if constexpr (decltype(tag)::floating) fn(tag);
    else throw std::invalid_argument(std::string("defer::kernels::cuda::") + who + ": " + dtype_name(dtype) +
                                     " is not a floating dtype");
  });
}

}  // namespace

void reduce(ReduceOp op, DType dtype, const void* x, void* out, const StridedAxis& axis, cudaStream_t stream) {
  check_sizes("reduce", axis.outer, axis.n, axis.inner);
  if (axis.outer == 0 || axis.inner == 0) return;  // no outputs; n == 0 still writes the empty reduction
  floating_dispatch("reduce", dtype, [&](auto tag) {
    using Tag = decltype(tag);
    switch (op) {
      case ReduceOp::sum: return launch_reduce<Tag, SumOp>(x, out, axis, stream);
      case ReduceOp::mean: return launch_reduce<Tag, MeanOp>(x, out, axis, stream);
      case ReduceOp::max: return launch_reduce<Tag, MaxOp>(x, out, axis, stream);
      case ReduceOp::min: return launch_reduce<Tag, MinOp>(x, out, axis, stream);
      case ReduceOp::argmax:
        argmax_kernel<Tag><<<grid_for(axis.outer * axis.inner, kBlock / kWarp), kBlock, 0, stream>>>(
            static_cast<const typename Tag::storage*>(x), static_cast<long long*>(out), axis);
        return;
    }
    throw std::invalid_argument("defer::kernels::cuda::reduce: unknown op " + std::to_string(static_cast<int>(op)));
  });
  DEFER_CUDA_CHECK(cudaGetLastError());
}

void reduce(ReduceOp op, DType dtype, const void* x, void* out, std::int64_t outer, std::int64_t n, std::int64_t inner,
            cudaStream_t stream) {
  check_sizes("reduce", outer, n, inner);
  reduce(op, dtype, x, out, StridedAxis::contiguous(outer, n, inner), stream);
}

void softmax(DType dtype, const void* x_bytes, void* out_bytes, const StridedAxis& axis, cudaStream_t stream) {
  check_sizes("softmax", axis.outer, axis.n, axis.inner);
  if (axis.outer == 0 || axis.n == 0 || axis.inner == 0) return;
  const std::int64_t rows = axis.outer * axis.inner;
  floating_dispatch("softmax", dtype, [&](auto tag) {
    using Tag = decltype(tag);
    const auto* x = static_cast<const typename Tag::storage*>(x_bytes);
    auto* out = static_cast<typename Tag::storage*>(out_bytes);
    if (use_columns(axis)) {
      softmax_columns_kernel<Tag><<<column_grid(axis), dim3(kTileX, kTileY), 0, stream>>>(x, out, axis);
    } else if (axis.n <= kWarpRowMax) {
      softmax_rows_kernel<Tag, kWarp><<<grid_for(rows, kBlock / kWarp), kBlock, 0, stream>>>(x, out, axis);
    } else {
      softmax_rows_kernel<Tag, kBlock><<<grid_for(rows, 1), kBlock, 0, stream>>>(x, out, axis);
    }
  });
  DEFER_CUDA_CHECK(cudaGetLastError());
}

void softmax(DType dtype, const void* x, void* out, std::int64_t outer, std::int64_t n, std::int64_t inner,
             cudaStream_t stream) {
  check_sizes("softmax", outer, n, inner);
  softmax(dtype, x, out, StridedAxis::contiguous(outer, n, inner), stream);
}

void layer_norm(DType dtype, const void* x, const void* gamma, const void* beta, void* out, const StridedAxis& axis,
                float eps, cudaStream_t stream) {
  check_sizes("layer_norm", axis.outer, axis.n, 0);
  if (axis.inner != 1)
    throw std::invalid_argument("defer::kernels::cuda::layer_norm: normalizes the last axis (inner must be 1, got " +
                                std::to_string(axis.inner) + ")");
  if (axis.outer == 0 || axis.n == 0) return;
  floating_dispatch("layer_norm", dtype, [&](auto tag) {
    using Tag = decltype(tag);
    using S = typename Tag::storage;
    const auto* xs = static_cast<const S*>(x);
    const auto* g = static_cast<const S*>(gamma);
    const auto* b = static_cast<const S*>(beta);
    auto* o = static_cast<S*>(out);
    if (axis.n <= kWarpRowMax) {
      layer_norm_kernel<Tag, kWarp><<<grid_for(axis.outer, kBlock / kWarp), kBlock, 0, stream>>>(xs, g, b, o, axis, eps);
    } else {
      layer_norm_kernel<Tag, kBlock><<<grid_for(axis.outer, 1), kBlock, 0, stream>>>(xs, g, b, o, axis, eps);
    }
  });
  DEFER_CUDA_CHECK(cudaGetLastError());
}

void layer_norm(DType dtype, const void* x, const void* gamma, const void* beta, void* out, std::int64_t rows,
                std::int64_t cols, float eps, cudaStream_t stream) {
  check_sizes("layer_norm", rows, cols, 0);
  layer_norm(dtype, x, gamma, beta, out, StridedAxis{rows, cols, 1, cols, 1, 1}, eps, stream);
}

}  // namespace defer::kernels::cuda
