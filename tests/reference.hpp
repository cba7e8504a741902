#pragma once
// A float64 reference of every op, written as plainly as possible and independent of the kernels:
// the yardstick for both backends.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "op_table.hpp"

namespace defer::testing::ref {

using Vec = std::vector<double>;
using Dims = std::vector<int64_t>;

inline int64_t numel(const Dims& s) {
  int64_t n = 1;
  for (auto e : s) n *= e;
  return n;
}

inline Vec widen(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

inline double gelu(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }
inline double gelu_tanh(double x) {
  const double c = std::sqrt(2.0 / 3.14159265358979323846);
  return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x)));
}
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// One element of every element-wise op of the op table, in float64, written from the ops'
// definitions (not from kernels/elementwise_math.h). a, b, c are the tensor operands, s0 and s1
// the scalars. `to` is the identity here: tests round to the target dtype themselves. A new op
// without a reference is a build error of the tests (-Werror=switch).
inline double elementwise(kernels::ElementwiseOp op, double a, double b = 0, double c = 0, double s0 = 0, double s1 = 0) {
  using kernels::ElementwiseOp;
  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  switch (op) {
    case ElementwiseOp::neg: return -a;
    case ElementwiseOp::abs: return std::fabs(a);
    case ElementwiseOp::exp: return std::exp(a);
    case ElementwiseOp::log: return std::log(a);
    case ElementwiseOp::sqrt: return std::sqrt(a);
    case ElementwiseOp::rsqrt: return 1.0 / std::sqrt(a);
    case ElementwiseOp::tanh: return std::tanh(a);
    case ElementwiseOp::sigmoid: return sigmoid(a);
    case ElementwiseOp::relu: return a < 0.0 ? 0.0 : a;
    case ElementwiseOp::silu: return a * sigmoid(a);
    // x Phi(x); erfc rather than 1 + erf, which cancels (even in double) for x below about -6
    case ElementwiseOp::gelu: return 0.5 * a * std::erfc(-a / std::sqrt(2.0));
    // 0.5 x (1 + tanh(u)) = x sigmoid(2u), the form that does not cancel for negative x
    case ElementwiseOp::gelu_tanh: return a * sigmoid(2.0 * std::sqrt(2.0 / 3.14159265358979323846) * (a + 0.044715 * a * a * a));
    case ElementwiseOp::erf: return std::erf(a);
    case ElementwiseOp::softplus: return a > 30.0 ? a + std::exp(-a) : std::log1p(std::exp(a));
    case ElementwiseOp::add: return a + b;
    case ElementwiseOp::sub: return a - b;
    case ElementwiseOp::mul: return a * b;
    case ElementwiseOp::div: return a / b;
    case ElementwiseOp::maximum: return std::isnan(a) || std::isnan(b) ? nan : std::max(a, b);
    case ElementwiseOp::minimum: return std::isnan(a) || std::isnan(b) ? nan : std::min(a, b);
    case ElementwiseOp::add_scalar: return a + s0;
    case ElementwiseOp::sub_scalar: return a - s0;
    case ElementwiseOp::mul_scalar: return a * s0;
    case ElementwiseOp::div_scalar: return a / s0;
    case ElementwiseOp::maximum_scalar: return std::isnan(a) || std::isnan(s0) ? nan : std::max(a, s0);
    case ElementwiseOp::minimum_scalar: return std::isnan(a) || std::isnan(s0) ? nan : std::min(a, s0);
    case ElementwiseOp::pow_scalar: return std::pow(a, s0);
    case ElementwiseOp::clamp: return std::isnan(a) ? a : std::min(std::max(a, s0), s1);
    case ElementwiseOp::eq: return a == b;
    case ElementwiseOp::ne: return a != b;
    case ElementwiseOp::lt: return a < b;
    case ElementwiseOp::le: return a <= b;
    case ElementwiseOp::gt: return a > b;
    case ElementwiseOp::ge: return a >= b;
    case ElementwiseOp::eq_scalar: return a == s0;
    case ElementwiseOp::ne_scalar: return a != s0;
    case ElementwiseOp::lt_scalar: return a < s0;
    case ElementwiseOp::le_scalar: return a <= s0;
    case ElementwiseOp::gt_scalar: return a > s0;
    case ElementwiseOp::ge_scalar: return a >= s0;
    case ElementwiseOp::where: return a != 0.0 ? b : c;
    case ElementwiseOp::masked_fill: return b != 0.0 ? s0 : a;
    case ElementwiseOp::to: return a;
  }
  return nan;
}

template <class F>
Vec map(const Vec& x, F f) {
  Vec y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) y[i] = f(x[i]);
  return y;
}

inline Dims broadcast_shape(const Dims& a, const Dims& b) {
  const std::size_t r = std::max(a.size(), b.size());
  Dims out(r);
  for (std::size_t i = 0; i < r; ++i) {
    const int64_t x = i < r - a.size() ? 1 : a[i - (r - a.size())];
    const int64_t y = i < r - b.size() ? 1 : b[i - (r - b.size())];
    out[i] = x == 1 ? y : x;
  }
  return out;
}

// Element of an input of shape `in` read by output multi-index `idx` of shape `out`.
inline int64_t broadcast_offset(const Dims& in, const Dims& out, const Dims& idx) {
  int64_t off = 0;
  const std::size_t lead = out.size() - in.size();
  for (std::size_t d = 0; d < in.size(); ++d) off = off * in[d] + (in[d] == 1 ? 0 : idx[d + lead]);
  return off;
}

template <class F>
Vec zip(const Vec& a, const Dims& sa, const Vec& b, const Dims& sb, F f) {
  const Dims out = broadcast_shape(sa, sb);
  Vec y(static_cast<std::size_t>(numel(out)));
  Dims idx(out.size(), 0);
  for (std::size_t i = 0; i < y.size(); ++i) {
    y[i] = f(a[static_cast<std::size_t>(broadcast_offset(sa, out, idx))], b[static_cast<std::size_t>(broadcast_offset(sb, out, idx))]);
    for (std::size_t d = out.size(); d-- > 0;) {
      if (++idx[d] < out[d]) break;
      idx[d] = 0;
    }
  }
  return y;
}

enum class Reduce { sum, mean, max };

inline Vec reduce(const Vec& x, const Dims& s, int dim, Reduce op) {
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < dim; ++d) outer *= s[static_cast<std::size_t>(d)];
  for (std::size_t d = static_cast<std::size_t>(dim) + 1; d < s.size(); ++d) inner *= s[d];
  const int64_t n = s[static_cast<std::size_t>(dim)];
  Vec y(static_cast<std::size_t>(outer * inner));
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      double acc = op == Reduce::max ? -std::numeric_limits<double>::infinity() : 0.0;
      for (int64_t j = 0; j < n; ++j) {
        const double v = x[static_cast<std::size_t>((o * n + j) * inner + i)];
        acc = op == Reduce::max ? std::max(acc, v) : acc + v;
      }
      if (op == Reduce::mean) acc /= static_cast<double>(n);
      y[static_cast<std::size_t>(o * inner + i)] = acc;
    }
  return y;
}

// The scale a reduction's error is measured against: the same reduction of |x|.
inline Vec abs_sum(const Vec& x, const Dims& s, int dim) { return reduce(map(x, [](double v) { return std::abs(v); }), s, dim, Reduce::sum); }

inline Vec softmax(const Vec& x, const Dims& s, int dim) {
  const Vec mx = reduce(x, s, dim, Reduce::max);
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < dim; ++d) outer *= s[static_cast<std::size_t>(d)];
  for (std::size_t d = static_cast<std::size_t>(dim) + 1; d < s.size(); ++d) inner *= s[d];
  const int64_t n = s[static_cast<std::size_t>(dim)];
  Vec y(x.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      double total = 0;
      for (int64_t j = 0; j < n; ++j) {
        const auto k = static_cast<std::size_t>((o * n + j) * inner + i);
        y[k] = std::exp(x[k] - mx[static_cast<std::size_t>(o * inner + i)]);
        total += y[k];
      }
      for (int64_t j = 0; j < n; ++j) y[static_cast<std::size_t>((o * n + j) * inner + i)] /= total;
    }
  return y;
}

inline Vec layer_norm(const Vec& x, const Vec& g, const Vec& b, int64_t cols, double eps) {
  Vec y(x.size());
  const int64_t rows = cols == 0 ? 0 : static_cast<int64_t>(x.size()) / cols;
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0, var = 0;
    for (int64_t c = 0; c < cols; ++c) mean += x[static_cast<std::size_t>(r * cols + c)];
    mean /= static_cast<double>(cols);
    for (int64_t c = 0; c < cols; ++c) {
      const double d = x[static_cast<std::size_t>(r * cols + c)] - mean;
      var += d * d;
    }
    var /= static_cast<double>(cols);
    for (int64_t c = 0; c < cols; ++c) {
      const auto k = static_cast<std::size_t>(r * cols + c);
      y[k] = (x[k] - mean) / std::sqrt(var + eps) * g[static_cast<std::size_t>(c)] + b[static_cast<std::size_t>(c)];
    }
  }
  return y;
}

// The result shape of torch.matmul: [..., m, k] x [..., k, n] -> broadcast(batch) + [m, n], a 1-D
// first operand a row vector and a 1-D second operand a column vector, their added dim dropped.
inline Dims matmul_shape(const Dims& sa, const Dims& sb) {
  const Dims ba(sa.begin(), sa.size() > 2 ? sa.end() - 2 : sa.begin());
  const Dims bb(sb.begin(), sb.size() > 2 ? sb.end() - 2 : sb.begin());
  Dims out = broadcast_shape(ba, bb);
  if (sa.size() >= 2) out.push_back(sa[sa.size() - 2]);
  if (sb.size() >= 2) out.push_back(sb.back());
  return out;
}

// torch.matmul of dense row-major operands, in float64 (see matmul_shape); broadcast batch dims
// read the same matrix.
inline Vec matmul(const Vec& a, const Dims& sa, const Vec& b, const Dims& sb) {
  const Dims ma = sa.size() == 1 ? Dims{1, sa[0]} : sa;  // [k] -> [1, k]
  const Dims mb = sb.size() == 1 ? Dims{sb[0], 1} : sb;  // [k] -> [k, 1]
  const int64_t m = ma[ma.size() - 2], k = ma.back(), n = mb.back();
  const Dims ba(ma.begin(), ma.end() - 2), bb(mb.begin(), mb.end() - 2);
  const Dims batch = broadcast_shape(ba, bb);
  const int64_t count = numel(batch);
  Vec c(static_cast<std::size_t>(count * m * n), 0.0);
  Dims idx(batch.size(), 0);
  for (int64_t p = 0; p < count; ++p) {
    const int64_t ao = (ba.empty() ? 0 : broadcast_offset(ba, batch, idx)) * m * k;
    const int64_t bo = (bb.empty() ? 0 : broadcast_offset(bb, batch, idx)) * k * n;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t q = 0; q < k; ++q) acc += a[static_cast<std::size_t>(ao + i * k + q)] * b[static_cast<std::size_t>(bo + q * n + j)];
        c[static_cast<std::size_t>(p * m * n + i * n + j)] = acc;
      }
    for (std::size_t d = batch.size(); d-- > 0;) {
      if (++idx[d] < batch[d]) break;
      idx[d] = 0;
    }
  }
  return c;
}

inline Vec transpose(const Vec& x, const Dims& s) {
  const int64_t rows = s[s.size() - 2], cols = s.back();
  const int64_t batch = rows * cols == 0 ? 0 : static_cast<int64_t>(x.size()) / (rows * cols);
  Vec y(x.size());
  for (int64_t p = 0; p < batch; ++p)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = 0; j < cols; ++j)
        y[static_cast<std::size_t>(p * rows * cols + j * rows + i)] = x[static_cast<std::size_t>(p * rows * cols + i * cols + j)];
  return y;
}

}  // namespace defer::testing::ref
