// The driver for fused programs that end in a reduction. The element-wise part runs chunk by chunk
// through the shared interpreter (cpu/fused_interpreter.hpp), and each chunk of the reduced value
// is folded into accumulators while it is still in cache: the element-wise intermediate is never
// written to memory.
//
// The domain's flat index is e = (o * n + k) * inner + i. Two walks:
// - Blocks (inner <= kColumns): the domain is cut into plain chunks. A chunk covers parts of one or
//   more output blocks o (n * inner contiguous elements each); one accumulator per column of the
//   open block (one in all for inner == 1) takes the chunk's rows, and a block's outputs are
//   written once its last row has been folded in. Short rows thus share a chunk.
// - Tiles (inner > kColumns): a tile is kColumns neighbouring columns of one block; each of its n
//   row segments is contiguous and runs as its own chunk(s), so the accumulators stay bounded.
// Accuracy and semantics follow the unfused kernels (cpu/reduce.cpp): sums accumulate in double
// with kLanes independent accumulators along a row (vectorizes without reassociating one sum);
// mean is sum / n; max and min stick at NaN; an empty reduction is 0 for sum and NaN for the rest.
// A result of another dtype than f32 is reduced in f32 and converted once at the end.
// Large domains are split across the pool by whole blocks or tiles, so every output is reduced
// by one thread in one order.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu/fused_interpreter.hpp"
#include "cpu/thread_pool.hpp"

namespace defer::kernels::cpu::fused_internal {
namespace {

constexpr int kLanes = 8;
// Widest block whose columns are accumulated at once; wider ones are cut into tiles this wide.
// 512 doubles and 512 floats of accumulators stay in L1 next to a chunk.
constexpr i64 kColumns = 512;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// max and min that stick at NaN: once m is NaN, neither test can replace it. (Bitwise | rather
// than ||: no branch, so the lane loops vectorize.)
inline float max_nan(float m, float v) { return ((v > m) | (v != v)) ? v : m; }
inline float min_nan(float m, float v) { return ((v < m) | (v != v)) ? v : m; }
constexpr float kPosInf = std::numeric_limits<float>::infinity();

// The folding loops, compiled for the baseline ISA and for AVX2 like the interpreter's loops.
// sum_run/max_run reduce a contiguous run of one row (inner == 1); sum_rows/max_rows add `rows`
// rows of `width` contiguous columns into per-column accumulators.
#define DEFER_REDUCE_LOOPS                                                                          \
  double sum_run(const float* __restrict x, i64 n) {                                                \
    double acc[kLanes] = {};                                                                        \
    i64 j = 0;                                                                                      \
    for (; j + kLanes <= n; j += kLanes)                                                            \
      for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(x[j + l]);                     \
    double s = 0.0;                                                                                 \
    for (int l = 0; l < kLanes; ++l) s += acc[l];                                                   \
    for (; j < n; ++j) s += static_cast<double>(x[j]);                                              \
    return s;                                                                                       \
  }                                                                                                 \
  template <bool Max>                                                                               \
  float extreme_run(const float* __restrict x, i64 n) {                                             \
    constexpr float kStart = Max ? kNegInf : kPosInf;                                               \
    auto pick = [](float m, float v) { return Max ? max_nan(m, v) : min_nan(m, v); };               \
    float acc[kLanes];                                                                              \
    for (float& v : acc) v = kStart;                                                                \
    i64 j = 0;                                                                                      \
    for (; j + kLanes <= n; j += kLanes) {                                                          \
      _Pragma("GCC unroll 1") for (int l = 0; l < kLanes; ++l) acc[l] = pick(acc[l], x[j + l]);     \
    }                                                                                               \
    float m = kStart;                                                                               \
    for (int l = 0; l < kLanes; ++l) m = pick(m, acc[l]);                                           \
    for (; j < n; ++j) m = pick(m, x[j]);                                                           \
    return m;                                                                                       \
  }                                                                                                 \
  float max_run(const float* __restrict x, i64 n) { return extreme_run<true>(x, n); }               \
  float min_run(const float* __restrict x, i64 n) { return extreme_run<false>(x, n); }              \
  void sum_rows(double* __restrict acc, const float* __restrict x, i64 rows, i64 width) {           \
    for (i64 r = 0; r < rows; ++r, x += width)                                                      \
      for (i64 i = 0; i < width; ++i) acc[i] += static_cast<double>(x[i]);                          \
  }                                                                                                 \
  void max_rows(float* __restrict acc, const float* __restrict x, i64 rows, i64 width) {            \
    for (i64 r = 0; r < rows; ++r, x += width)                                                      \
      for (i64 i = 0; i < width; ++i) acc[i] = max_nan(acc[i], x[i]);                               \
  }                                                                                                 \
  void min_rows(float* __restrict acc, const float* __restrict x, i64 rows, i64 width) {            \
    for (i64 r = 0; r < rows; ++r, x += width)                                                      \
      for (i64 i = 0; i < width; ++i) acc[i] = min_nan(acc[i], x[i]);                               \
  }

namespace baseline {
DEFER_REDUCE_LOOPS
}  // namespace baseline

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define DEFER_REDUCE_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
DEFER_REDUCE_LOOPS
}  // namespace avx2
#pragma GCC pop_options
#endif
#undef DEFER_REDUCE_LOOPS

struct FoldLoops {
  double (*sum_run)(const float*, i64);
  float (*max_run)(const float*, i64);
  float (*min_run)(const float*, i64);
  void (*sum_rows)(double*, const float*, i64, i64);
  void (*max_rows)(float*, const float*, i64, i64);
  void (*min_rows)(float*, const float*, i64, i64);
};

const FoldLoops& fold_loops() {
  static constexpr FoldLoops kBaseline{baseline::sum_run,  baseline::max_run,  baseline::min_run,
                                       baseline::sum_rows, baseline::max_rows, baseline::min_rows};
#ifdef DEFER_REDUCE_HAVE_AVX2
  static constexpr FoldLoops kAvx2{avx2::sum_run, avx2::max_run, avx2::min_run, avx2::sum_rows, avx2::max_rows, avx2::min_rows};
  if (use_avx2()) return kAvx2;
#endif
  return kBaseline;
}

// One thread's accumulators for up to kColumns columns (max holds min's too).
struct Accumulators {
  double sum[kColumns];
  float max[kColumns];
};

struct Reducer {
  const Interpreter& interp;
  const FoldLoops& fold;
  Ref value;  // where a chunk of the reduced value lives
  ReduceOp op;
  i64 n, inner;
  i64 chunk;
  float* out;

  bool extreme() const { return op == ReduceOp::max || op == ReduceOp::min; }

  void reset(Accumulators& acc, i64 width) const {
    if (extreme()) std::fill_n(acc.max, width, op == ReduceOp::max ? kNegInf : kPosInf);
    else std::fill_n(acc.sum, width, 0.0);
  }

  float finish(const Accumulators& acc, i64 i) const {
    switch (op) {
      case ReduceOp::sum: return static_cast<float>(acc.sum[i]);
      case ReduceOp::mean: return static_cast<float>(acc.sum[i] / static_cast<double>(n));
      case ReduceOp::max:
      case ReduceOp::min: return acc.max[i];
      case ReduceOp::argmax: break;  // never fused (validate)
    }
    return kNaN;
  }

  void fold_run(Accumulators& acc, const float* v, i64 len) const {
    if (op == ReduceOp::max) acc.max[0] = max_nan(acc.max[0], fold.max_run(v, len));
    else if (op == ReduceOp::min) acc.max[0] = min_nan(acc.max[0], fold.min_run(v, len));
    else acc.sum[0] += fold.sum_run(v, len);
  }

  void fold_rows(Accumulators& acc, i64 column, const float* v, i64 rows, i64 width) const {
    if (op == ReduceOp::max) fold.max_rows(acc.max + column, v, rows, width);
    else if (op == ReduceOp::min) fold.min_rows(acc.max + column, v, rows, width);
    else fold.sum_rows(acc.sum + column, v, rows, width);
  }

  // Outputs of blocks [o0, o1): the contiguous domain [o0 * n * inner, o1 * n * inner) in chunks.
  void blocks(i64 o0, i64 o1, float* scratch) const {
    Accumulators acc;
    reset(acc, inner);
    i64 o = o0, k = 0, i = 0;  // the next element to fold is (o, k, i)
    const i64 end = o1 * n * inner;
    for (i64 e = o0 * n * inner; e < end;) {
      i64 len = std::min(chunk, end - e);
      interp.compute(e, len, scratch);
      const float* v = interp.source(value, e, scratch);
      e += len;
      while (len > 0) {
        if (inner == 1) {
          const i64 seg = std::min(n - k, len);
          fold_run(acc, v, seg);
          k += seg;
          v += seg;
          len -= seg;
        } else if (i != 0 || len < inner) {  // part of a row: the chunk starts or ends inside it
          const i64 seg = std::min(inner - i, len);
          fold_rows(acc, i, v, 1, seg);
          i += seg;
          v += seg;
          len -= seg;
          if (i == inner) {
            i = 0;
            ++k;
          }
        } else {  // whole rows
          const i64 rows = std::min(n - k, len / inner);
          fold_rows(acc, 0, v, rows, inner);
          k += rows;
          v += rows * inner;
          len -= rows * inner;
        }
        if (k == n) {  // the block is complete
          for (i64 c = 0; c < inner; ++c) out[o * inner + c] = finish(acc, c);
          reset(acc, inner);
          ++o;
          k = 0;
        }
      }
    }
  }

  // Outputs of tiles [t0, t1) of kColumns columns (inner > kColumns): each row segment of a tile is
  // contiguous in the domain and runs as its own chunk(s).
  void tiles(i64 t0, i64 t1, float* scratch) const {
    const i64 per_block = (inner + kColumns - 1) / kColumns;
    Accumulators acc;
    for (i64 t = t0; t < t1; ++t) {
      const i64 o = t / per_block;
      const i64 c0 = (t - o * per_block) * kColumns;
      const i64 width = std::min(kColumns, inner - c0);
      reset(acc, width);
      for (i64 k = 0; k < n; ++k) {
        const i64 row = (o * n + k) * inner + c0;
        for (i64 d = 0; d < width; d += chunk) {
          const i64 len = std::min(chunk, width - d);
          interp.compute(row + d, len, scratch);
          fold_rows(acc, d, interp.source(value, row + d, scratch), 1, len);
        }
      }
      for (i64 c = 0; c < width; ++c) out[o * inner + c0 + c] = finish(acc, c);
    }
  }
};

// run_fused_reduction into f32 outputs.
void reduce_into(const FusedProgram& program, const FusedLayout& layout, const void* const* inputs, float* output,
                 const float* scalars, const FusedRunOptions& options) {
  const ReduceOp op = program.reduction->op;
  const i64 outer = layout.reduce.outer, n = layout.reduce.n, inner = layout.reduce.inner;
  if (n <= 0) {  // the empty reduction, as the unfused kernel writes it
    std::fill_n(output, outer * inner, op == ReduceOp::sum ? 0.f : kNaN);
    return;
  }
  const i64 domain = outer * n * inner;
  // Per thread, like the element-wise driver: the calling thread plans; pool workers only read the
  // plan while this thread waits in parallel_for. No outputs: the value is read where it lives.
  thread_local Planner planner;
  const Plan& plan = planner.make(program, layout, inputs, nullptr);
  const Ref value = plan.copies.front().src;
  const i64 chunk = std::min(std::max<i64>(options.chunk, 1), domain);
  const i64 stride = buffer_stride(chunk);
  const auto per_thread = static_cast<std::size_t>(plan.buffers) * static_cast<std::size_t>(stride);
  const Interpreter interp{plan, loops(), inputs, nullptr, scalars, stride};
  const Reducer reducer{interp, fold_loops(), value, op, n, inner, chunk, output};

  // The units handed out are whole blocks (or tiles), enough of them per task to make a task about
  // kTaskElements domain elements.
  const bool by_tiles = inner > kColumns;
  const i64 units = by_tiles ? outer * ((inner + kColumns - 1) / kColumns) : outer;
  const i64 unit_elements = by_tiles ? n * kColumns : n * inner;
  const i64 per_task = std::max<i64>(1, kTaskElements / unit_elements);
  const i64 tasks = (units + per_task - 1) / per_task;
  auto run_units = [&](i64 u0, i64 u1, float* scratch) {
    if (by_tiles) reducer.tiles(u0, u1, scratch);
    else reducer.blocks(u0, u1, scratch);
  };

  ThreadPool* pool = nullptr;
  if (domain >= options.parallel_min && tasks > 1) {
    pool = options.pool != nullptr ? options.pool : &ThreadPool::shared();
    if (pool->num_workers() == 0) pool = nullptr;
  }
  if (pool == nullptr) {
    if (planner.scratch.size() < per_thread + 16) planner.scratch.resize(per_thread + 16);
    run_units(0, units, cache_line_aligned(planner.scratch.data()));
    return;
  }
  Scratch scratch(per_thread * pool->num_slots());
  pool->parallel_for(tasks, [&](i64 task, unsigned slot) {
    run_units(task * per_task, std::min(units, (task + 1) * per_task), scratch.data() + per_thread * slot);
  });
}

}  // namespace

void run_fused_reduction(const FusedProgram& program, const FusedLayout& layout, const void* const* inputs,
                         void* output, const float* scalars, const FusedRunOptions& options) {
  const i64 outputs = layout.reduce.outer * layout.reduce.inner;
  if (outputs <= 0) return;
  const DType dtype = program.output_dtypes[0];
  if (dtype == DType::f32) {
    reduce_into(program, layout, inputs, static_cast<float*>(output), scalars, options);
    return;
  }
  // Another dtype: reduce in f32, round once.
  std::vector<float> staged(static_cast<std::size_t>(outputs));
  reduce_into(program, layout, inputs, staged.data(), scalars, options);
  store(staged.data(), dtype, outputs, output);
}

}  // namespace defer::kernels::cpu::fused_internal
