// CPU reductions, softmax and layer norm over strided [outer, n, inner] views (strided_axis.hpp):
// x[o, j, i] is read at o * outer_stride + j * n_stride + i * inner_stride, in place; outputs are
// contiguous in the logical order.
//
// Sums accumulate in double. Two loop orders, chosen once per call:
// - rows: each output reduces its own n elements, with kLanes independent accumulators so the
//   loop vectorizes without reassociating a single sum. Used when the reduced axis is the denser
//   one in memory (always for inner == 1).
// - columns: a chunk of neighbouring outputs keeps one accumulator each while the rows j are walked
//   in order, so the inner loop runs along the inner axis (contiguous memory when inner_stride == 1).
// Each loop is a template over whether its innermost stride is 1, so the dense buffers of
// contiguous tensors keep their unit-stride (vectorized) loops and strided views pay for strides
// only where they have them.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <stdexcept>
#include <type_traits>

#include "cpu/ops.hpp"

namespace defer::kernels::cpu {
namespace {

constexpr int kLanes = 8;
constexpr std::int64_t kChunk = 256;  // columns per pass of a column-ordered reduction
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

constexpr float kPosInf = std::numeric_limits<float>::infinity();

// max and min that stick at NaN: once m is NaN, neither test can replace it. (Bitwise | rather
// than ||: no branch, so the lane loops vectorize.)
inline float max_nan(float m, float v) { return ((v > m) | (v != v)) ? v : m; }
inline float min_nan(float m, float v) { return ((v < m) | (v != v)) ? v : m; }

// The identity and the combine of max (Max) or min.
template <bool Max>
struct Extreme {
  static constexpr float start = Max ? kNegInf : kPosInf;
  static float pick(float m, float v) { return Max ? max_nan(m, v) : min_nan(m, v); }
};

// The stride of a loop: 1 known at compile time when kUnit, else the runtime value.
template <bool kUnit>
constexpr std::int64_t step(std::int64_t stride) {
  return kUnit ? 1 : stride;
}

// Calls fn(std::true_type{}) when stride == 1, else fn(std::false_type{}): the one branch per call.
template <class F>
void with_unit(std::int64_t stride, F&& fn) {
  if (stride == 1) fn(std::true_type{});
  else fn(std::false_type{});
}

// sum of x[j * stride] over j < n
template <bool kUnit>
double sum_row(const float* x, std::int64_t n, std::int64_t stride) {
  const std::int64_t s = step<kUnit>(stride);
  double acc[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(x[(j + l) * s]);
  double sum = 0.0;
  for (int l = 0; l < kLanes; ++l) sum += acc[l];
  for (; j < n; ++j) sum += static_cast<double>(x[j * s]);
  return sum;
}

// sum of (x[j * stride] - mean)^2
template <bool kUnit>
double sq_dev_row(const float* x, std::int64_t n, std::int64_t stride, double mean) {
  const std::int64_t s = step<kUnit>(stride);
  double acc[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double d = static_cast<double>(x[(j + l) * s]) - mean;
      acc[l] += d * d;
    }
  double sum = 0.0;
  for (int l = 0; l < kLanes; ++l) sum += acc[l];
  for (; j < n; ++j) {
    const double d = static_cast<double>(x[j * s]) - mean;
    sum += d * d;
  }
  return sum;
}

// max (min) of x[j * stride] over j < n, NaN if any element is NaN, -inf (inf) for n == 0
template <bool Max, bool kUnit>
float extreme_row(const float* x, std::int64_t n, std::int64_t stride) {
  using E = Extreme<Max>;
  const std::int64_t s = step<kUnit>(stride);
  float acc[kLanes];
  for (float& v : acc) v = E::start;
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    // kept as a loop (not unrolled into kLanes selects) so that it is vectorized as one
#pragma GCC unroll 1
    for (int l = 0; l < kLanes; ++l) acc[l] = E::pick(acc[l], x[(j + l) * s]);
  }
  float m = E::start;
  for (int l = 0; l < kLanes; ++l) m = E::pick(m, acc[l]);
  for (; j < n; ++j) m = E::pick(m, x[j * s]);
  return m;
}

// Whether to reduce output by output along the reduced axis (rather than in column chunks): when
// that axis is the denser one in memory, or there is one output per o anyway.
bool by_rows(const StridedAxis& a) {
  return a.inner == 1 || (a.n > 1 && std::abs(a.n_stride) < std::abs(a.inner_stride));
}

// out[o, i] over the rows x[o, :, i], each reduced on its own (n > 0).
template <bool kUnit>
void reduce_rows(ReduceOp op, const float* x, float* out, const StridedAxis& a) {
  for (std::int64_t o = 0; o < a.outer; ++o)
    for (std::int64_t i = 0; i < a.inner; ++i) {
      const float* row = x + o * a.outer_stride + i * a.inner_stride;
      float& r = out[o * a.inner + i];
      switch (op) {
        case ReduceOp::sum: r = static_cast<float>(sum_row<kUnit>(row, a.n, a.n_stride)); break;
        case ReduceOp::mean:
          r = static_cast<float>(sum_row<kUnit>(row, a.n, a.n_stride) / static_cast<double>(a.n));
          break;
        case ReduceOp::max: r = extreme_row<true, kUnit>(row, a.n, a.n_stride); break;
        case ReduceOp::min: r = extreme_row<false, kUnit>(row, a.n, a.n_stride); break;
        case ReduceOp::argmax: break;  // argmax() below
      }
    }
}

// out[o, i] over x[o, j, i], chunks of neighbouring i walked along j (n > 0)
template <bool kUnit>
void reduce_columns(ReduceOp op, const float* x, float* out, const StridedAxis& a) {
  const std::int64_t si = step<kUnit>(a.inner_stride);
  double acc[kChunk];
  float macc[kChunk];
  for (std::int64_t o = 0; o < a.outer; ++o) {
    const float* xo = x + o * a.outer_stride;
    float* oo = out + o * a.inner;
    for (std::int64_t i0 = 0; i0 < a.inner; i0 += kChunk) {
      const std::int64_t w = std::min(kChunk, a.inner - i0);
      if (op == ReduceOp::max || op == ReduceOp::min) {
        const bool is_max = op == ReduceOp::max;
        for (std::int64_t i = 0; i < w; ++i) macc[i] = is_max ? kNegInf : kPosInf;
        for (std::int64_t j = 0; j < a.n; ++j) {
          const float* row = xo + j * a.n_stride + i0 * si;
          if (is_max)
            for (std::int64_t i = 0; i < w; ++i) macc[i] = max_nan(macc[i], row[i * si]);
          else
            for (std::int64_t i = 0; i < w; ++i) macc[i] = min_nan(macc[i], row[i * si]);
        }
        for (std::int64_t i = 0; i < w; ++i) oo[i0 + i] = macc[i];
      } else {
        for (std::int64_t i = 0; i < w; ++i) acc[i] = 0.0;
        for (std::int64_t j = 0; j < a.n; ++j) {
          const float* row = xo + j * a.n_stride + i0 * si;
          for (std::int64_t i = 0; i < w; ++i) acc[i] += static_cast<double>(row[i * si]);
        }
        const double scale = op == ReduceOp::mean ? 1.0 / static_cast<double>(a.n) : 1.0;
        for (std::int64_t i = 0; i < w; ++i) oo[i0 + i] = static_cast<float>(acc[i] * scale);
      }
    }
  }
}

// Softmax of each row x[o, :, i] on its own, written to out[o, :, i] (contiguous [outer, n, inner]).
// kDense: the input row and the output row are both unit-stride (inner == 1, n_stride == 1).
template <bool kDense>
void softmax_rows(const float* x, float* out, const StridedAxis& a) {
  const std::int64_t sx = step<kDense>(a.n_stride), so = step<kDense>(a.inner);
  for (std::int64_t o = 0; o < a.outer; ++o)
    for (std::int64_t i = 0; i < a.inner; ++i) {
      const float* xr = x + o * a.outer_stride + i * a.inner_stride;
      float* orow = out + o * a.n * a.inner + i;
      // m is NaN if the row holds a NaN; for a row of -inf, x - m is NaN: both rows come out NaN.
      const double m = extreme_row<true, kDense>(xr, a.n, a.n_stride);
      double s = 0.0;
      for (std::int64_t j = 0; j < a.n; ++j) {
        const double e = std::exp(static_cast<double>(xr[j * sx]) - m);
        orow[j * so] = static_cast<float>(e);
        s += e;
      }
      const double inv = 1.0 / s;
      for (std::int64_t j = 0; j < a.n; ++j) orow[j * so] = static_cast<float>(static_cast<double>(orow[j * so]) * inv);
    }
}

// Softmax over j for chunks of neighbouring i, walking the rows in order.
template <bool kUnit>
void softmax_columns(const float* x, float* out, const StridedAxis& a) {
  const std::int64_t si = step<kUnit>(a.inner_stride);
  float m[kChunk];
  double s[kChunk];
  for (std::int64_t o = 0; o < a.outer; ++o) {
    const float* xo = x + o * a.outer_stride;
    float* oo = out + o * a.n * a.inner;
    for (std::int64_t i0 = 0; i0 < a.inner; i0 += kChunk) {
      const std::int64_t w = std::min(kChunk, a.inner - i0);
      for (std::int64_t i = 0; i < w; ++i) m[i] = kNegInf;
      for (std::int64_t j = 0; j < a.n; ++j) {
        const float* row = xo + j * a.n_stride + i0 * si;
        for (std::int64_t i = 0; i < w; ++i) m[i] = max_nan(m[i], row[i * si]);
      }
      for (std::int64_t i = 0; i < w; ++i) s[i] = 0.0;
      for (std::int64_t j = 0; j < a.n; ++j) {
        const float* row = xo + j * a.n_stride + i0 * si;
        float* orow = oo + j * a.inner + i0;
        for (std::int64_t i = 0; i < w; ++i) {
          const double e = std::exp(static_cast<double>(row[i * si]) - static_cast<double>(m[i]));
          orow[i] = static_cast<float>(e);
          s[i] += e;
        }
      }
      for (std::int64_t i = 0; i < w; ++i) s[i] = 1.0 / s[i];
      for (std::int64_t j = 0; j < a.n; ++j) {
        float* orow = oo + j * a.inner + i0;
        for (std::int64_t i = 0; i < w; ++i) orow[i] = static_cast<float>(static_cast<double>(orow[i]) * s[i]);
      }
    }
  }
}

template <bool kUnit>
void layer_norm_rows(const float* x, const float* gamma, const float* beta, float* out, const StridedAxis& a,
                     float eps) {
  const std::int64_t cols = a.n, sc = step<kUnit>(a.n_stride);
  const double dcols = static_cast<double>(cols);
  for (std::int64_t r = 0; r < a.outer; ++r) {
    const float* xr = x + r * a.outer_stride;
    float* orow = out + r * cols;
    // two passes: mean, then the squared deviations from it (no cancellation in E[x^2] - E[x]^2)
    const double mean = sum_row<kUnit>(xr, cols, a.n_stride) / dcols;
    const double var = sq_dev_row<kUnit>(xr, cols, a.n_stride, mean) / dcols;
    const double inv = 1.0 / std::sqrt(var + static_cast<double>(eps));
    for (std::int64_t c = 0; c < cols; ++c)
      orow[c] = static_cast<float>((static_cast<double>(xr[c * sc]) - mean) * inv * static_cast<double>(gamma[c]) +
                                   static_cast<double>(beta[c]));
  }
}

}  // namespace

void reduce(ReduceOp op, const float* x, float* out, const StridedAxis& axis) {
  if (op == ReduceOp::argmax)
    throw std::invalid_argument("defer::kernels::cpu::reduce: argmax has its own kernel (cpu::argmax)");
  if (axis.outer <= 0 || axis.inner <= 0) return;
  if (axis.n <= 0) {
    // sum of nothing is 0, mean is 0/0; max of nothing is rejected by the op layer (NaN here).
    const float v = op == ReduceOp::sum ? 0.f : kNaN;
    std::fill_n(out, axis.outer * axis.inner, v);
    return;
  }
  if (by_rows(axis))
    with_unit(axis.n_stride, [&](auto unit) { reduce_rows<decltype(unit)::value>(op, x, out, axis); });
  else
    with_unit(axis.inner_stride, [&](auto unit) { reduce_columns<decltype(unit)::value>(op, x, out, axis); });
}

void reduce(ReduceOp op, const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner) {
  reduce(op, x, out, StridedAxis::contiguous(outer, n, inner));
}

void argmax(const float* x, std::int64_t* out, const StridedAxis& axis) {
  for (std::int64_t o = 0; o < axis.outer; ++o)
    for (std::int64_t i = 0; i < axis.inner; ++i) {
      const float* p = x + o * axis.outer_stride + i * axis.inner_stride;
      std::int64_t best = 0;
      float m = axis.n > 0 ? p[0] : kNaN;
      // The first maximum; a NaN counts as the largest value (torch.argmax), so the first NaN wins.
      for (std::int64_t j = 1; j < axis.n && m == m; ++j) {
        const float v = p[j * axis.n_stride];
        if (v > m || v != v) {
          m = v;
          best = j;
        }
      }
      out[o * axis.inner + i] = best;
    }
}

void argmax(const float* x, std::int64_t* out, std::int64_t outer, std::int64_t n, std::int64_t inner) {
  argmax(x, out, StridedAxis::contiguous(outer, n, inner));
}

void softmax(const float* x, float* out, const StridedAxis& axis) {
  if (axis.outer <= 0 || axis.n <= 0 || axis.inner <= 0) return;
  if (by_rows(axis)) {
    if (axis.inner == 1 && (axis.n_stride == 1 || axis.n == 1)) softmax_rows<true>(x, out, axis);
    else softmax_rows<false>(x, out, axis);
  } else {
    with_unit(axis.inner_stride, [&](auto unit) { softmax_columns<decltype(unit)::value>(x, out, axis); });
  }
}

void softmax(const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner) {
  softmax(x, out, StridedAxis::contiguous(outer, n, inner));
}

void layer_norm(const float* x, const float* gamma, const float* beta, float* out, const StridedAxis& axis, float eps) {
  if (axis.inner != 1)
    throw std::invalid_argument("defer::kernels::cpu::layer_norm: normalizes the last axis (inner must be 1)");
  if (axis.outer <= 0 || axis.n <= 0) return;
  with_unit(axis.n == 1 ? 1 : axis.n_stride,
            [&](auto unit) { layer_norm_rows<decltype(unit)::value>(x, gamma, beta, out, axis, eps); });
}

void layer_norm(const float* x, const float* gamma, const float* beta, float* out, std::int64_t rows,
                std::int64_t cols, float eps) {
  layer_norm(x, gamma, beta, out, StridedAxis{rows, cols, 1, cols, 1, 1}, eps);
}

}  // namespace defer::kernels::cpu
