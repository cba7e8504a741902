// CPU reductions, softmax and layer norm over [outer, n, inner] views.
// Sums accumulate in double. A contiguous row (inner == 1) is reduced with kLanes independent
// accumulators so the loop vectorizes without reassociating a single sum; a strided reduction
// (inner > 1) keeps one accumulator per column of a chunk of columns and walks the rows, so the
// inner loop runs over contiguous memory.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/ops.hpp"

namespace defer::kernels::cpu {
namespace {

constexpr int kLanes = 8;
constexpr std::int64_t kChunk = 256;  // columns per pass of a strided reduction
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

double sum_row(const float* x, std::int64_t n) {
  double acc[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(x[j + l]);
  double s = 0.0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; j < n; ++j) s += static_cast<double>(x[j]);
  return s;
}

// sum of (x - mean)^2
double sq_dev_row(const float* x, std::int64_t n, double mean) {
  double acc[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double d = static_cast<double>(x[j + l]) - mean;
      acc[l] += d * d;
    }
  double s = 0.0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; j < n; ++j) {
    const double d = static_cast<double>(x[j]) - mean;
    s += d * d;
  }
  return s;
}

// max (min) of a row, NaN if any element is NaN, -inf (inf) for n == 0
template <bool Max>
float extreme_row(const float* x, std::int64_t n) {
  using E = Extreme<Max>;
  float acc[kLanes];
  for (float& v : acc) v = E::start;
  std::int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    // kept as a loop (not unrolled into kLanes selects) so that it is vectorized as one
#pragma GCC unroll 1
    for (int l = 0; l < kLanes; ++l) acc[l] = E::pick(acc[l], x[j + l]);
  }
  float m = E::start;
  for (int l = 0; l < kLanes; ++l) m = E::pick(m, acc[l]);
  for (; j < n; ++j) m = E::pick(m, x[j]);
  return m;
}

float max_row(const float* x, std::int64_t n) { return extreme_row<true>(x, n); }

void reduce_rows(ReduceOp op, const float* x, float* out, std::int64_t rows, std::int64_t n) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * n;
    switch (op) {
      case ReduceOp::sum: out[r] = static_cast<float>(sum_row(row, n)); break;
      case ReduceOp::mean: out[r] = static_cast<float>(sum_row(row, n) / static_cast<double>(n)); break;
      case ReduceOp::max: out[r] = extreme_row<true>(row, n); break;
      case ReduceOp::min: out[r] = extreme_row<false>(row, n); break;
      case ReduceOp::argmax: break;  // argmax() below
    }
  }
}

// inner > 1: out[o, i] over x[o, j, i]
void reduce_strided(ReduceOp op, const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner) {
  double acc[kChunk];
  float macc[kChunk];
  for (std::int64_t o = 0; o < outer; ++o) {
    const float* xo = x + o * n * inner;
    float* oo = out + o * inner;
    for (std::int64_t i0 = 0; i0 < inner; i0 += kChunk) {
      const std::int64_t w = std::min(kChunk, inner - i0);
      if (op == ReduceOp::max || op == ReduceOp::min) {
        const bool is_max = op == ReduceOp::max;
        for (std::int64_t i = 0; i < w; ++i) macc[i] = is_max ? kNegInf : kPosInf;
        for (std::int64_t j = 0; j < n; ++j) {
          const float* row = xo + j * inner + i0;
          if (is_max)
            for (std::int64_t i = 0; i < w; ++i) macc[i] = max_nan(macc[i], row[i]);
          else
            for (std::int64_t i = 0; i < w; ++i) macc[i] = min_nan(macc[i], row[i]);
        }
        for (std::int64_t i = 0; i < w; ++i) oo[i0 + i] = macc[i];
      } else {
        for (std::int64_t i = 0; i < w; ++i) acc[i] = 0.0;
        for (std::int64_t j = 0; j < n; ++j) {
          const float* row = xo + j * inner + i0;
          for (std::int64_t i = 0; i < w; ++i) acc[i] += static_cast<double>(row[i]);
        }
        const double scale = op == ReduceOp::mean ? 1.0 / static_cast<double>(n) : 1.0;
        for (std::int64_t i = 0; i < w; ++i) oo[i0 + i] = static_cast<float>(acc[i] * scale);
      }
    }
  }
}

void softmax_rows(const float* x, float* out, std::int64_t rows, std::int64_t n) {
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* orow = out + r * n;
    // m is NaN if the row holds a NaN; for a row of -inf, x - m is NaN: both rows come out NaN.
    const double m = max_row(xr, n);
    double s = 0.0;
    for (std::int64_t j = 0; j < n; ++j) {
      const double e = std::exp(static_cast<double>(xr[j]) - m);
      orow[j] = static_cast<float>(e);
      s += e;
    }
    const double inv = 1.0 / s;
    for (std::int64_t j = 0; j < n; ++j) orow[j] = static_cast<float>(static_cast<double>(orow[j]) * inv);
  }
}

void softmax_strided(const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner) {
  float m[kChunk];
  double s[kChunk];
  for (std::int64_t o = 0; o < outer; ++o) {
    const float* xo = x + o * n * inner;
    float* oo = out + o * n * inner;
    for (std::int64_t i0 = 0; i0 < inner; i0 += kChunk) {
      const std::int64_t w = std::min(kChunk, inner - i0);
      for (std::int64_t i = 0; i < w; ++i) m[i] = kNegInf;
      for (std::int64_t j = 0; j < n; ++j) {
        const float* row = xo + j * inner + i0;
        for (std::int64_t i = 0; i < w; ++i) m[i] = max_nan(m[i], row[i]);
      }
      for (std::int64_t i = 0; i < w; ++i) s[i] = 0.0;
      for (std::int64_t j = 0; j < n; ++j) {
        const float* row = xo + j * inner + i0;
        float* orow = oo + j * inner + i0;
        for (std::int64_t i = 0; i < w; ++i) {
          const double e = std::exp(static_cast<double>(row[i]) - static_cast<double>(m[i]));
          orow[i] = static_cast<float>(e);
          s[i] += e;
        }
      }
      for (std::int64_t i = 0; i < w; ++i) s[i] = 1.0 / s[i];
      for (std::int64_t j = 0; j < n; ++j) {
        float* orow = oo + j * inner + i0;
        for (std::int64_t i = 0; i < w; ++i) orow[i] = static_cast<float>(static_cast<double>(orow[i]) * s[i]);
      }
    }
  }
}

}  // namespace

void reduce(ReduceOp op, const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner) {
  if (outer <= 0 || inner <= 0) return;
  if (n <= 0) {
    // sum of nothing is 0, mean is 0/0; max of nothing is rejected by the op layer (NaN here).
    const float v = op == ReduceOp::sum ? 0.f : kNaN;
    std::fill_n(out, outer * inner, v);
    return;
  }
  if (inner == 1) reduce_rows(op, x, out, outer, n);
  else reduce_strided(op, x, out, outer, n, inner);
}

void argmax(const float* x, std::int64_t* out, std::int64_t outer, std::int64_t n, std::int64_t inner) {
  for (std::int64_t o = 0; o < outer; ++o)
    for (std::int64_t i = 0; i < inner; ++i) {
      const float* p = x + o * n * inner + i;
      std::int64_t best = 0;
      float m = n > 0 ? p[0] : kNaN;
      // The first maximum; a NaN counts as the largest value (torch.argmax), so the first NaN wins.
      for (std::int64_t j = 1; j < n && m == m; ++j) {
        const float v = p[j * inner];
        if (v > m || v != v) {
          m = v;
          best = j;
        }
      }
      out[o * inner + i] = best;
    }
}

void softmax(const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner) {
  if (outer <= 0 || n <= 0 || inner <= 0) return;
  if (inner == 1) softmax_rows(x, out, outer, n);
  else softmax_strided(x, out, outer, n, inner);
}

void layer_norm(const float* x, const float* gamma, const float* beta, float* out, std::int64_t rows,
                std::int64_t cols, float eps) {
  if (rows <= 0 || cols <= 0) return;
  const double dcols = static_cast<double>(cols);
  for (std::int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* orow = out + r * cols;
    // two passes: mean, then the squared deviations from it (no cancellation in E[x^2] - E[x]^2)
    const double mean = sum_row(xr, cols) / dcols;
    const double var = sq_dev_row(xr, cols, mean) / dcols;
    const double inv = 1.0 / std::sqrt(var + static_cast<double>(eps));
    for (std::int64_t c = 0; c < cols; ++c)
      orow[c] = static_cast<float>((static_cast<double>(xr[c]) - mean) * inv * static_cast<double>(gamma[c]) +
                                   static_cast<double>(beta[c]));
  }
}

}  // namespace defer::kernels::cpu
