#pragma once
// Random op graphs for the property tests, written in the fuzz target's graph language
// (tests/support/graph_lang.hpp), and a float64 reference of any such program that carries, for every
// element, a bound on how far the library's evaluation may be from it.
//
// The bound: each op propagates its operands' bounds (through the function's Lipschitz constant, or
// an exact interval bound for exp, log, sqrt, rsqrt, pow, mul, div, and a sensitivity bound for the
// reductions, softmax, layer_norm and matmul) and adds its own rounding (a few units in the last
// place of f32 for libm functions, n units for an n-term sum), then the rounding of storing the
// result in its dtype (f16: 2^-11 relative, bf16: 2^-8; ops compute in f32 and round once when they
// store, docs/api.md section 9). Comparisons, casts to integers and argmax are exact where the operands'
// intervals decide them. `ok` is false where the bound says nothing: an operand interval that
// crosses a domain edge or a comparison's threshold, or magnitudes near the dtype's overflow. The
// generator steers clear of those (log/sqrt/div only on operands away from 0, exp only of bounded
// values), so almost every element is checked.
//
// An index op whose index is out of range fails when it runs (std::out_of_range), and so does every
// value computed from it: the reference says which values must fail (Outcome).
//
// Views and copies (docs/api.md section 8) move elements without rounding: the reference computes
// them by index mapping on row-major indices (each op's meaning), never through strides; the layout
// a value has by the rules is carried along (RefValue::strides) only so that infer_type can decide
// `view`. The generator mixes views (of pending results, of views, stride-0 expands, empty slices)
// with the other ops, which then read them in place, and now and then writes a view call the rules
// reject (the run must reject it too).
//
// Element-wise ops are drawn from the op table's rows (kernels/op_table.hpp) by their columns, as
// tests/support/one_op.hpp does; a row that the reference below does not handle is a build error.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "graph_lang.hpp"
#include "one_op.hpp"
#include "reference.hpp"  // tests/reference.hpp

namespace defer::testing {

struct Bounded {
  double v = 0;
  double err = 0;
  bool ok = true;
};

// What a value's wait must give: its elements (ok), std::out_of_range (an index out of range here
// or upstream), or unknown: an index the reference cannot bound, so neither is checked.
enum class Outcome { ok, unknown, out_of_range };

struct RefValue {
  Shape shape;
  DType dtype = DType::f32;
  Shape strides;  // the layout the rules give it (lang::ValueType::strides; empty: dense)
  std::vector<Bounded> e;  // row-major, whatever the layout
  Outcome outcome = Outcome::ok;
};

inline lang::ValueType type_of(const RefValue& r) { return {r.shape, r.dtype, r.strides}; }

namespace refb {

using kernels::ElementwiseOp;
using E = kernels::ElementwiseOp;

constexpr double kUnit = 0x1p-24;
constexpr double kUnderflow = 0x1p-140;
constexpr Bounded kUnreliable{0, 0, false};
constexpr Bounded kNaN{std::numeric_limits<double>::quiet_NaN(), 0, true};

inline Bounded exact(double v) { return Bounded{v, 0, true}; }

inline Bounded rounded(double r, double err, double ulps) {
  Bounded b{r, err + ulps * kUnit * (std::fabs(r) + err) + (ulps > 0 ? kUnderflow : 0.0), true};
  if (std::isnan(r)) return b;
  if (!std::isfinite(r) || !std::isfinite(b.err) || std::fabs(r) + b.err > 1e30) b.ok = false;
  return b;
}

// ---- dtypes ------------------------------------------------------------------------------------

// Half a unit in the last place (relative) and the absolute error near 0 of storing in a dtype.
struct Precision {
  double half_ulp, floor, largest;
};
inline Precision precision(DType t) {
  if (t == DType::f16) return {0x1p-11, 0x1p-25, 65504.0};
  if (t == DType::bf16) return {0x1p-8, 0x1p-134, 3.3e38};
  return {kUnit, kUnderflow, 1e30};
}

// Whether v is a value of dtype t (f16/bf16: its significand and exponent fit).
inline bool representable(double v, DType t) {
  if (!std::isfinite(v) || v == 0) return true;
  const int bits = t == DType::f16 ? 11 : t == DType::bf16 ? 8 : 24;
  const int min_exp = t == DType::f16 ? -14 : -126;
  const int e = std::max(std::ilogb(v), min_exp);
  const double scaled = std::ldexp(v, bits - 1 - e);
  return scaled == std::trunc(scaled) && std::fabs(v) <= precision(t).largest;
}

// The rounding of storing an f32 computation's result in dtype t (f32 rounding is in the ops).
inline Bounded store(Bounded r, DType t) {
  if (!r.ok || std::isnan(r.v) || (t != DType::f16 && t != DType::bf16)) return r;
  const Precision p = precision(t);
  if (!(r.err == 0 && representable(r.v, t))) r.err += p.half_ulp * (std::fabs(r.v) + r.err) + p.floor;
  if (std::fabs(r.v) + r.err > p.largest) r.ok = false;  // may round to infinity
  return r;
}

// A float to an integer dtype: truncated toward zero, saturated, NaN 0 (kernels/elementwise_math.h's
// contract, docs/api.md section 9).
inline double truncate_to(double v, DType t) {
  if (std::isnan(v)) return 0;
  const double top = t == DType::i32 ? 0x1p31 : 0x1p63;
  if (v >= top) return top - 1;
  if (v < -top) return -top;
  return std::trunc(v);
}

// A scalar operand as the op uses it: the data's dtype (docs/api.md section 9). Comparing boolean data
// with a scalar is not modelled (unreliable); masked_fill of boolean data stores the scalar != 0.
inline Bounded scalar_as(double s, DType data) {
  if (is_integer(data)) return exact(truncate_to(s, data));
  if (data == DType::boolean) return kUnreliable;
  if (data == DType::f32 || representable(s, data)) return exact(s);
  return Bounded{s, precision(data).half_ulp * std::fabs(s) + precision(data).floor, true};
}

// ---- math rows --------------------------------------------------------------------------------

using ref::sigmoid;

inline Bounded unary(ElementwiseOp op, Bounded a) {
  if (!a.ok) return kUnreliable;
  if (std::isnan(a.v)) return kNaN;
  const double x = a.v, e = a.err;
  switch (op) {
    case E::neg: return rounded(-x, e, 0);
    case E::abs: return rounded(std::fabs(x), e, 0);
    case E::relu: return rounded(x < 0 ? 0.0 : x, e, 0);
    case E::exp: {
      const double r = std::exp(x);
      return rounded(r, r * std::expm1(e), 4);
    }
    case E::log:
      if (x - e > 0) return rounded(std::log(x), -std::log1p(-e / x), 4);
      return x + e < 0 ? kNaN : kUnreliable;
    case E::sqrt:
      if (x - e >= 0) {
        const double r = std::sqrt(x);
        return rounded(r, e == 0 ? 0.0 : e / (r + std::sqrt(x - e)), 1);
      }
      return x + e < 0 ? kNaN : kUnreliable;
    case E::rsqrt:  // 1 / sqrt: three roundings
      if (x - e > 0) {
        const double r = 1.0 / std::sqrt(x);
        return rounded(r, 1.0 / std::sqrt(x - e) - r, 4);
      }
      return x + e < 0 ? kNaN : kUnreliable;
    case E::tanh: return rounded(std::tanh(x), e, 8);
    case E::sigmoid: return rounded(sigmoid(x), 0.25 * e, 16);
    case E::silu: return rounded(x * sigmoid(x), 1.1 * e, 16);
    case E::gelu: return rounded(0.5 * x * std::erfc(-x / std::numbers::sqrt2), 1.2 * e, 4);
    case E::gelu_tanh: {
      const double u = std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x);
      return rounded(x * sigmoid(2.0 * u), 1.2 * e, 4);
    }
    case E::erf: return rounded(std::erf(x), 1.13 * e, 4);                    // |erf'| <= 2 / sqrt(pi)
    case E::softplus: return rounded(ref::elementwise(op, x), e, 8);          // |softplus'| <= 1
    default: return kUnreliable;
  }
}

// add ... minimum, also for their scalar rows (b is then the scalar).
inline Bounded binary(ElementwiseOp op, Bounded a, Bounded b) {
  if ((a.ok && std::isnan(a.v)) || (b.ok && std::isnan(b.v))) return kNaN;
  if (!a.ok || !b.ok) return kUnreliable;
  switch (op) {
    case E::add: return rounded(a.v + b.v, a.err + b.err, 1);
    case E::sub: return rounded(a.v - b.v, a.err + b.err, 1);
    case E::mul: return rounded(a.v * b.v, std::fabs(a.v) * b.err + std::fabs(b.v) * a.err + a.err * b.err, 1);
    case E::div: {
      const double m = std::fabs(b.v);
      if (m - b.err <= 0) return kUnreliable;
      return rounded(a.v / b.v, (a.err * m + std::fabs(a.v) * b.err) / (m * (m - b.err)), 1);
    }
    case E::maximum: return rounded(std::max(a.v, b.v), std::max(a.err, b.err), 0);
    case E::minimum: return rounded(std::min(a.v, b.v), std::max(a.err, b.err), 0);
    default: return kUnreliable;
  }
}

// x^p: monotone between the interval's ends where the interval keeps one sign.
inline Bounded power(Bounded a, Bounded p) {
  if (!a.ok || !p.ok || p.err != 0) return kUnreliable;
  if (p.v == 0) return exact(1);  // pow(x, 0) is 1, NaN included
  if (std::isnan(a.v)) return kNaN;
  const double x = a.v, e = a.err, r = std::pow(x, p.v);
  const bool integral = p.v == std::trunc(p.v);
  if (x - e > 0 || (integral && x + e < 0)) {
    const double err = std::max(std::fabs(std::pow(x - e, p.v) - r), std::fabs(std::pow(x + e, p.v) - r));
    return rounded(r, err, 4);
  }
  if (!integral && x + e < 0) return kNaN;
  if (integral && p.v > 0) return rounded(r, std::max(std::fabs(std::pow(x - e, p.v)), std::fabs(std::pow(x + e, p.v))) + std::fabs(r), 4);
  return kUnreliable;
}

// min(max(x, lo), hi), NaN staying NaN, lo > hi giving hi (torch.clamp).
inline Bounded clamp(Bounded a, Bounded lo, Bounded hi) {
  if (!a.ok || !lo.ok || !hi.ok) return kUnreliable;
  if (std::isnan(a.v)) return kNaN;
  const double r = ref::elementwise(E::clamp, a.v, 0, 0, lo.v, hi.v);
  return rounded(r, std::max({a.err, lo.err, hi.err}), 0);
}

// ---- comparisons, selections, casts ---------------------------------------------------------------

inline bool holds(ElementwiseOp cmp, double x, double y) { return ref::elementwise(cmp, x, y) != 0.0; }

// A comparison is exact where every value in the operands' intervals gives the same answer.
inline Bounded compare(ElementwiseOp cmp, Bounded a, Bounded b) {
  if (!a.ok || !b.ok) return kUnreliable;
  if (std::isnan(a.v) || std::isnan(b.v)) return exact(cmp == E::ne ? 1 : 0);
  if (a.err == 0 && b.err == 0) return exact(holds(cmp, a.v, b.v) ? 1 : 0);
  const double alo = a.v - a.err, ahi = a.v + a.err, blo = b.v - b.err, bhi = b.v + b.err;
  if (cmp == E::eq || cmp == E::ne) {
    if (ahi < blo || bhi < alo) return exact(cmp == E::ne ? 1 : 0);
    return kUnreliable;
  }
  const bool first = holds(cmp, alo, bhi), second = holds(cmp, ahi, blo);
  return first == second ? exact(first ? 1 : 0) : kUnreliable;
}

inline Bounded select(Bounded cond, Bounded yes, Bounded no) {
  if (!cond.ok) return kUnreliable;
  return cond.v != 0 ? yes : no;
}

inline double wrap_i32(double v) {
  return static_cast<double>(static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(static_cast<int64_t>(v)))));
}

// to(x, t) for x of dtype `from` (docs/api.md section 9); the store's rounding comes after.
inline Bounded cast(Bounded x, DType from, DType to) {
  if (!x.ok) return kUnreliable;
  if (is_integer(from) && is_integer(to)) return exact(to == DType::i32 ? wrap_i32(x.v) : x.v);
  if (std::isnan(x.v)) return is_floating(to) ? kNaN : exact(to == DType::boolean ? 1 : 0);
  if (is_floating(to)) {
    // An integer beyond 2^24 rounds as the f32 computation loads it.
    if (is_integer(from) && std::fabs(x.v) > 0x1p24) x.err += kUnit * std::fabs(x.v);
    return x;
  }
  if (to == DType::boolean) {
    if (x.err == 0 || std::fabs(x.v) > x.err) return exact(x.v != 0 ? 1 : 0);
    return kUnreliable;
  }
  const double lo = truncate_to(x.v - x.err, to), hi = truncate_to(x.v + x.err, to);
  return lo == hi ? exact(lo) : kUnreliable;
}

// The tensor row of a scalar row (add_scalar -> add, gt_scalar -> gt), by the table's api names.
inline ElementwiseOp tensor_form(ElementwiseOp scalar_row) {
  const std::string api = kernels::name(scalar_row);
  for (ElementwiseOp op : ops_where([&](const kernels::ElementwiseInfo& i) { return i.tensors == 2 && i.scalars == 0 && api == i.name; }))
    return op;
  throw std::invalid_argument(api + " has no tensor form");
}

// One element of an op-table row: its tensor operands t, its scalars (as given), the dtype of its
// data operands and of its result. Every row is a case: a new row needs its reference here.
inline Bounded elementwise(ElementwiseOp op, const Bounded* t, const float* s, DType data, DType result) {
  switch (op) {
    case E::neg:
    case E::abs:
    case E::exp:
    case E::log:
    case E::sqrt:
    case E::rsqrt:
    case E::tanh:
    case E::sigmoid:
    case E::relu:
    case E::silu:
    case E::gelu:
    case E::gelu_tanh:
    case E::erf:
    case E::softplus: return unary(op, t[0]);
    case E::add:
    case E::sub:
    case E::mul:
    case E::div:
    case E::maximum:
    case E::minimum: return binary(op, t[0], t[1]);
    case E::add_scalar:
    case E::sub_scalar:
    case E::mul_scalar:
    case E::div_scalar:
    case E::maximum_scalar:
    case E::minimum_scalar: return binary(tensor_form(op), t[0], scalar_as(s[0], data));
    case E::pow_scalar: return power(t[0], scalar_as(s[0], data));
    case E::clamp: return clamp(t[0], scalar_as(s[0], data), scalar_as(s[1], data));
    case E::eq:
    case E::ne:
    case E::lt:
    case E::le:
    case E::gt:
    case E::ge: return compare(op, t[0], t[1]);
    case E::eq_scalar:
    case E::ne_scalar:
    case E::lt_scalar:
    case E::le_scalar:
    case E::gt_scalar:
    case E::ge_scalar: return compare(tensor_form(op), t[0], scalar_as(s[0], data));
    case E::where: return select(t[0], t[1], t[2]);
    case E::masked_fill:
      return select(t[1], data == DType::boolean ? exact(s[0] != 0.f ? 1 : 0) : scalar_as(s[0], data), t[0]);
    case E::to: return cast(t[0], data, result);
  }
  return kUnreliable;
}

// Shapes and broadcasting index the same way as the plain float64 reference.
using ref::broadcast_offset;
using ref::numel;

struct Axis {
  int64_t outer = 1, n = 1, inner = 1;
};
inline Axis axis(const Shape& s, int dim) {
  Axis a;
  for (int d = 0; d < dim; ++d) a.outer *= s[static_cast<std::size_t>(d)];
  a.n = s[static_cast<std::size_t>(dim)];
  for (std::size_t d = static_cast<std::size_t>(dim) + 1; d < s.size(); ++d) a.inner *= s[d];
  return a;
}

inline int normalized(int dim, const Shape& s) { return dim < 0 ? dim + static_cast<int>(s.size()) : dim; }

// ---- the other ops, one function each ------------------------------------------------------------

inline void elementwise_values(const lang::Stmt& s, const std::vector<const RefValue*>& a, RefValue& out) {
  const int condition = kernels::condition_operand(s.op);
  const DType data = a[condition == 0 ? 1 : 0]->dtype;
  Shape idx(out.shape.size(), 0);
  Bounded t[kernels::kMaxOpTensors];
  for (std::size_t i = 0; i < out.e.size(); ++i) {
    for (std::size_t k = 0; k < a.size(); ++k) t[k] = a[k]->e[static_cast<std::size_t>(broadcast_offset(a[k]->shape, out.shape, idx))];
    out.e[i] = elementwise(s.op, t, s.scalars.data(), data, out.dtype);
    for (std::size_t d = out.shape.size(); d-- > 0;) {
      if (++idx[d] < out.shape[d]) break;
      idx[d] = 0;
    }
  }
}

// The first largest of x[0..n) (NaN largest): exact where the intervals decide it, else the range
// of indices it may be (v +- err).
inline Bounded argmax_of(const std::vector<Bounded>& x) {
  const auto n = static_cast<int64_t>(x.size());
  const Bounded anywhere{static_cast<double>(n - 1) / 2, static_cast<double>(n - 1) / 2, true};
  double top = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) {
    const Bounded& b = x[static_cast<std::size_t>(j)];
    if (!b.ok) return anywhere;
    if (std::isnan(b.v)) return exact(static_cast<double>(j));  // the first NaN; none before it
    top = std::max(top, b.v - b.err);
  }
  int64_t first = -1, last = -1;
  bool tie = true;  // every candidate is exactly the first one's value
  for (int64_t j = 0; j < n; ++j) {
    const Bounded& b = x[static_cast<std::size_t>(j)];
    if (b.v + b.err < top) continue;
    if (first < 0) first = j;
    else tie = tie && b.err == 0 && x[static_cast<std::size_t>(first)].err == 0 && b.v == x[static_cast<std::size_t>(first)].v;
    last = j;
  }
  if (first == last || tie) return exact(static_cast<double>(first));
  return Bounded{static_cast<double>(first + last) / 2, static_cast<double>(last - first) / 2, true};
}

inline void reduce_values(const lang::Stmt& s, const RefValue& x, RefValue& out) {
  const Axis ax = axis(x.shape, normalized(s.dim, x.shape));
  const bool extreme = s.reduce == kernels::ReduceOp::max || s.reduce == kernels::ReduceOp::min;
  const double sign = s.reduce == kernels::ReduceOp::min ? -1 : 1;
  for (int64_t o = 0; o < ax.outer; ++o)
    for (int64_t i = 0; i < ax.inner; ++i) {
      std::vector<Bounded> row;
      for (int64_t j = 0; j < ax.n; ++j) row.push_back(x.e[static_cast<std::size_t>((o * ax.n + j) * ax.inner + i)]);
      Bounded& r = out.e[static_cast<std::size_t>(o * ax.inner + i)];
      if (s.reduce == kernels::ReduceOp::argmax) {
        r = argmax_of(row);
        continue;
      }
      double acc = extreme ? -std::numeric_limits<double>::infinity() : 0.0, err = 0, mag = 0;
      bool ok = true, nan = false;
      for (const Bounded& b : row) {
        if (!b.ok) ok = false;
        else if (std::isnan(b.v)) nan = true;
        acc = extreme ? std::max(acc, sign * b.v) : acc + b.v;
        err = extreme ? std::max(err, b.err) : err + b.err;
        mag += std::fabs(b.v);
      }
      const double n = static_cast<double>(ax.n);
      if (extreme) r = rounded(sign * acc, err, 0);
      else if (s.reduce == kernels::ReduceOp::sum) r = rounded(acc, err + (n + 1) * kUnit * mag, 1);
      else r = ax.n == 0 ? kNaN : rounded(acc / n, (err + (n + 2) * kUnit * mag) / n, 2);
      if (!ok) r = kUnreliable;
      else if (nan) r = kNaN;  // NaN wins in max and min too
    }
}

inline void softmax_values(const lang::Stmt& s, const RefValue& x, RefValue& out) {
  const Axis ax = axis(x.shape, normalized(s.dim, x.shape));
  for (int64_t o = 0; o < ax.outer; ++o)
    for (int64_t i = 0; i < ax.inner; ++i) {
      const auto at = [&](int64_t j) { return static_cast<std::size_t>((o * ax.n + j) * ax.inner + i); };
      double m = -std::numeric_limits<double>::infinity(), e = 0, total = 0, spread = 0;
      bool ok = true;
      for (int64_t j = 0; j < ax.n; ++j) {
        const Bounded& b = x.e[at(j)];
        ok = ok && b.ok && !std::isnan(b.v);
        m = std::max(m, b.v);
        e = std::max(e, b.err);
      }
      for (int64_t j = 0; j < ax.n; ++j) {
        total += std::exp(x.e[at(j)].v - m);
        spread = std::max(spread, m - x.e[at(j)].v);
      }
      const double rel = std::expm1(2 * e) + (static_cast<double>(ax.n) + 16) * kUnit * (1 + spread);
      for (int64_t j = 0; j < ax.n; ++j) {
        const double y = std::exp(x.e[at(j)].v - m) / total;
        out.e[at(j)] = ok ? rounded(y, y * rel, 4) : kUnreliable;
      }
    }
}

inline void layer_norm_values(const lang::Stmt& s, const std::vector<const RefValue*>& a, RefValue& out) {
  const int64_t cols = a[0]->shape.back();
  const int64_t rows = cols == 0 ? 0 : numel(a[0]->shape) / cols;
  const double eps = s.scalars[0], n = static_cast<double>(cols);
  for (int64_t r = 0; r < rows; ++r) {
    const auto at = [&](int64_t c) { return static_cast<std::size_t>(r * cols + c); };
    double mu = 0, var = 0, e = 0, vmax = 0;
    bool ok = true;
    for (int64_t c = 0; c < cols; ++c) {
      const Bounded& x = a[0]->e[at(c)];
      const Bounded& g = a[1]->e[static_cast<std::size_t>(c)];
      const Bounded& b = a[2]->e[static_cast<std::size_t>(c)];
      ok = ok && x.ok && g.ok && b.ok && !std::isnan(x.v) && !std::isnan(g.v) && !std::isnan(b.v);
      mu += x.v;
      e = std::max(e, x.err);
      vmax = std::max(vmax, std::fabs(x.v));
    }
    mu /= n;
    for (int64_t c = 0; c < cols; ++c) var += (a[0]->e[at(c)].v - mu) * (a[0]->e[at(c)].v - mu);
    var /= n;
    const double sigma = std::sqrt(var + eps);
    const double ex = e + (n + 4) * kUnit * vmax;  // input error plus the mean's rounding
    // Two passes (the mean, then squared deviations from it), as both backends compute it: the
    // variance's own rounding is relative to the variance, with no E[x^2] - E[x]^2 cancellation.
    const double dvar = 4 * ex * sigma + 4 * ex * ex + 2 * (n + 4) * kUnit * var;
    const double dsigma = std::min(dvar / (2 * sigma), std::sqrt(dvar));
    const double low = var + eps - dvar;
    if (!(low > 0) || eps <= 0) ok = false;
    const double sigma_low = ok ? std::sqrt(low) : 0;
    for (int64_t c = 0; c < cols; ++c) {
      if (!ok) {
        out.e[at(c)] = kUnreliable;
        continue;
      }
      const Bounded& x = a[0]->e[at(c)];
      const Bounded& g = a[1]->e[static_cast<std::size_t>(c)];
      const Bounded& b = a[2]->e[static_cast<std::size_t>(c)];
      const double z = (x.v - mu) / sigma;
      const double dz = 2 * ex / sigma_low + std::fabs(x.v - mu) * dsigma / (sigma * sigma_low) + 8 * kUnit * std::fabs(z);
      const double y = z * g.v + b.v;
      const double err = std::fabs(g.v) * dz + (std::fabs(z) + dz) * g.err + b.err +
                         4 * kUnit * (std::fabs(y) + std::fabs(z * g.v) + std::fabs(b.v));
      out.e[at(c)] = rounded(y, err, 0);
    }
  }
}

// As torch.matmul: batch dims broadcast; a 1-D operand is a row (first) or a column (second).
inline void matmul_values(const RefValue& x, const RefValue& y, RefValue& out) {
  const Shape& sa = x.shape;
  const Shape& sb = y.shape;
  const int64_t m = sa.size() >= 2 ? sa[sa.size() - 2] : 1, k = sa.back(), n = sb.size() >= 2 ? sb.back() : 1;
  const Shape ba(sa.begin(), sa.end() - static_cast<std::ptrdiff_t>(std::min<std::size_t>(sa.size(), 2)));
  const Shape bb(sb.begin(), sb.end() - static_cast<std::ptrdiff_t>(std::min<std::size_t>(sb.size(), 2)));
  const Shape batch(out.shape.begin(), out.shape.end() - (sa.size() >= 2 ? 1 : 0) - (sb.size() >= 2 ? 1 : 0));
  Shape idx(batch.size(), 0);
  for (int64_t p = 0; p < numel(batch); ++p) {
    const int64_t ao = broadcast_offset(ba, batch, idx) * m * k, bo = broadcast_offset(bb, batch, idx) * k * n;
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0, err = 0, mag = 0;
        bool ok = true;
        for (int64_t q = 0; q < k; ++q) {
          const Bounded& u = x.e[static_cast<std::size_t>(ao + i * k + q)];
          const Bounded& w = y.e[static_cast<std::size_t>(bo + q * n + j)];
          ok = ok && u.ok && w.ok && !std::isnan(u.v) && !std::isnan(w.v);
          acc += u.v * w.v;
          err += std::fabs(u.v) * w.err + std::fabs(w.v) * u.err + u.err * w.err;
          mag += std::fabs(u.v * w.v);
        }
        out.e[static_cast<std::size_t>(p * m * n + i * n + j)] =
            ok ? rounded(acc, err + (static_cast<double>(k) + 2) * kUnit * mag, 1) : kUnreliable;
      }
    for (std::size_t d = batch.size(); d-- > 0;) {
      if (++idx[d] < batch[d]) break;
      idx[d] = 0;
    }
  }
}

// ---- views and copies (docs/api.md section 8), by index mapping ---------------------------------
//
// A view's element at index i is its operand's element at index from(i): the map is written from
// each op's meaning, on logical row-major indices; no strides are involved.

// out[i] = x[from(i)] for every index i of out; from(i, j) sets j, an index of x.
template <class From>
inline void map_values(const RefValue& x, RefValue& out, From from) {
  Shape i(out.shape.size(), 0), j(x.shape.size(), 0);
  for (Bounded& b : out.e) {
    from(i, j);
    int64_t flat = 0;
    for (std::size_t d = 0; d < j.size(); ++d) flat = flat * x.shape[d] + j[d];
    b = x.e[static_cast<std::size_t>(flat)];
    for (std::size_t d = i.size(); d-- > 0;) {
      if (++i[d] < out.shape[d]) break;
      i[d] = 0;
    }
  }
}

inline std::size_t dim_at(int64_t dim, std::size_t rank) { return static_cast<std::size_t>(dim < 0 ? dim + static_cast<int64_t>(rank) : dim); }

// Python's slice start: a negative one counts from the end; clamped to [0, n].
inline int64_t slice_start(int64_t p, int64_t n) { return std::clamp<int64_t>(p < 0 ? p + n : p, 0, n); }

inline void view_values(const lang::Stmt& s, const std::vector<const RefValue*>& a, RefValue& out) {
  using lang::Kind;
  const RefValue& x = *a[0];
  const std::size_t r = x.shape.size();
  switch (s.kind) {
    case Kind::reshape:
    case Kind::view:
    case Kind::unsqueeze:
    case Kind::squeeze:
    case Kind::contiguous: out.e = x.e; return;  // the same elements in the same row-major order
    case Kind::transpose:
    case Kind::permute: {
      std::vector<std::size_t> dims(r);  // out dim k is x's dim dims[k]
      for (std::size_t k = 0; k < r; ++k) dims[k] = s.kind == Kind::permute ? dim_at(s.ints[k], r) : k;
      if (s.kind == Kind::transpose) {
        const std::size_t d0 = s.ints.empty() ? r - 2 : dim_at(s.ints[0], r), d1 = s.ints.empty() ? r - 1 : dim_at(s.ints[1], r);
        std::swap(dims[d0], dims[d1]);
      }
      return map_values(x, out, [&](const Shape& i, Shape& j) {
        for (std::size_t k = 0; k < r; ++k) j[dims[k]] = i[k];
      });
    }
    case Kind::expand: {
      const std::size_t lead = out.shape.size() - r;
      return map_values(x, out, [&](const Shape& i, Shape& j) {
        for (std::size_t k = 0; k < r; ++k) j[k] = x.shape[k] == 1 ? 0 : i[k + lead];
      });
    }
    case Kind::slice:
    case Kind::split: {
      const std::size_t d = dim_at(s.dim, r);
      const int64_t start = s.kind == Kind::slice ? slice_start(s.ints[0], x.shape[d]) : s.ints[1] * s.ints[0];
      const int64_t step = s.kind == Kind::slice ? s.ints[2] : 1;
      return map_values(x, out, [&](const Shape& i, Shape& j) {
        j = i;
        j[d] = start + i[d] * step;
      });
    }
    case Kind::select: {
      const std::size_t d = dim_at(s.dim, r);
      const int64_t index = s.ints[0] < 0 ? s.ints[0] + x.shape[d] : s.ints[0];
      return map_values(x, out, [&](const Shape& i, Shape& j) {
        for (std::size_t k = 0; k < r; ++k) j[k] = k < d ? i[k] : k == d ? index : i[k - 1];
      });
    }
    case Kind::cat: {
      // Operand t's element at index i goes to out at i, moved along dim d past the operands before it.
      const std::size_t d = dim_at(s.dim, r);
      int64_t offset = 0;
      for (const RefValue* t : a) {
        Shape i(r, 0);
        for (const Bounded& b : t->e) {
          int64_t flat = 0;
          for (std::size_t k = 0; k < r; ++k) flat = flat * out.shape[k] + (k == d ? i[k] + offset : i[k]);
          out.e[static_cast<std::size_t>(flat)] = b;
          for (std::size_t k = r; k-- > 0;) {
            if (++i[k] < t->shape[k]) break;
            i[k] = 0;
          }
        }
        offset += t->shape[d];
      }
      return;
    }
    default: return;
  }
}

inline bool is_view_or_copy(lang::Kind k) {
  using lang::Kind;
  switch (k) {
    case Kind::transpose:
    case Kind::reshape:
    case Kind::view:
    case Kind::permute:
    case Kind::unsqueeze:
    case Kind::squeeze:
    case Kind::expand:
    case Kind::slice:
    case Kind::select:
    case Kind::split:
    case Kind::contiguous:
    case Kind::cat: return true;
    default: return false;
  }
}

// out[o, j, i] = x[o, index[j], i] (index_select; embedding with o = 1 and the ids flattened). An
// index certainly outside [0, n) fails the op when it runs; one that may be outside makes the
// outcome unknown; one known only within a range gives unreliable elements.
inline void gather_values(const RefValue& x, const Axis& ax, const RefValue& index, RefValue& out) {
  Outcome outcome = Outcome::ok;
  for (const Bounded& b : index.e) {
    const double lo = std::ceil(b.v - b.err), hi = std::floor(b.v + b.err);
    if (b.ok && (hi < 0 || lo >= static_cast<double>(ax.n))) outcome = Outcome::out_of_range;
    else if (!b.ok || lo < 0 || hi >= static_cast<double>(ax.n)) outcome = std::max(outcome, Outcome::unknown);
  }
  // The runtime checks indices only when the result has elements (src/graph/executor.cpp: launch_op
  // returns before the kernel for an empty result), so there an index out of range passes.
  if (outcome == Outcome::out_of_range && out.e.empty()) outcome = Outcome::unknown;
  out.outcome = outcome;
  if (outcome != Outcome::ok) return;
  const auto count = static_cast<int64_t>(index.e.size());
  for (int64_t o = 0; o < ax.outer; ++o)
    for (int64_t j = 0; j < count; ++j) {
      const Bounded& b = index.e[static_cast<std::size_t>(j)];
      for (int64_t i = 0; i < ax.inner; ++i)
        out.e[static_cast<std::size_t>((o * count + j) * ax.inner + i)] =
            b.err == 0 ? x.e[static_cast<std::size_t>((o * ax.n + static_cast<int64_t>(b.v)) * ax.inner + i)] : kUnreliable;
    }
}

inline void leaf_values(const lang::Stmt& s, RefValue& out) {
  const std::size_t n = out.e.size();
  switch (s.kind) {
    case lang::Kind::rand:
    case lang::Kind::pos: {
      const auto v = lang::leaf_values(s.seed, n, s.kind == lang::Kind::pos);
      for (std::size_t i = 0; i < n; ++i) out.e[i] = exact(v[i]);
      return;
    }
    case lang::Kind::ids: {
      const auto v = lang::id_values(s.seed, n, s.maxval);
      for (std::size_t i = 0; i < n; ++i) out.e[i] = exact(static_cast<double>(v[i]));
      return;
    }
    case lang::Kind::mask: {
      const auto v = lang::mask_values(s.seed, n);
      for (std::size_t i = 0; i < n; ++i) out.e[i] = exact(v[i]);
      return;
    }
    case lang::Kind::arange:
      for (std::size_t i = 0; i < n; ++i) out.e[i] = exact(s.dtype == DType::boolean ? (i != 0 ? 1.0 : 0.0) : static_cast<double>(i));
      return;
    default: return;
  }
}

}  // namespace refb

// The bounded float64 value of one statement, given its operands' values.
inline RefValue evaluate(const lang::Stmt& s, const std::vector<const RefValue*>& a) {
  using lang::Kind;
  using namespace refb;
  std::vector<lang::ValueType> types;
  for (const RefValue* r : a) types.push_back(type_of(*r));
  const auto type = lang::infer_type(s, types);
  if (!type) {
    std::string what = "reference: an invalid statement at line ";
    what.append(std::to_string(s.line)).append(" (").append(lang::keyword(s)).append(", operands");
    for (const auto& t : types) what.append(" ").append(shape_str(t.shape)).append(" ").append(dtype_name(t.dtype));
    throw std::logic_error(what + ")");
  }
  RefValue out;
  out.shape = type->shape;
  out.dtype = type->dtype;
  out.strides = type->strides;
  out.e.assign(static_cast<std::size_t>(numel(out.shape)), kUnreliable);
  for (const RefValue* r : a) out.outcome = std::max(out.outcome, r->outcome);
  if (out.outcome != Outcome::ok) return out;  // an operand fails: so does this value
  switch (s.kind) {
    case Kind::rand:
    case Kind::pos:
    case Kind::ids:
    case Kind::mask:
    case Kind::arange: refb::leaf_values(s, out); break;
    case Kind::elementwise: elementwise_values(s, a, out); break;
    case Kind::reduce: reduce_values(s, *a[0], out); break;
    case Kind::softmax: softmax_values(s, *a[0], out); break;
    case Kind::layer_norm: layer_norm_values(s, a, out); break;
    case Kind::matmul: matmul_values(*a[0], *a[1], out); break;
    case Kind::index_select: gather_values(*a[0], axis(a[0]->shape, normalized(s.dim, a[0]->shape)), *a[1], out); break;
    case Kind::embedding: gather_values(*a[0], Axis{1, a[0]->shape[0], a[0]->shape[1]}, *a[1], out); break;
    default:
      if (is_view_or_copy(s.kind)) {
        view_values(s, a, out);
        return out;  // elements moved, not computed: nothing rounds
      }
      break;
  }
  for (Bounded& b : out.e) b = store(b, out.dtype);
  return out;
}

// The reference of every value a (valid) program defines, by id; statements whose operands are
// invalid stay empty (shape {} and no elements, valid = false).
struct Reference {
  std::vector<RefValue> values;
  std::vector<bool> valid;
};

inline Reference evaluate(const lang::Program& p) {
  Reference ref;
  ref.values.resize(p.names.size());
  ref.valid.assign(p.names.size(), false);
  for (const lang::Stmt& s : p.stmts) {
    if (s.out < 0) continue;
    std::vector<const RefValue*> args;
    std::vector<lang::ValueType> types;
    bool ok = true;
    for (int a : s.args) {
      ok = ok && ref.valid[static_cast<std::size_t>(a)];
      args.push_back(&ref.values[static_cast<std::size_t>(a)]);
      types.push_back(type_of(ref.values[static_cast<std::size_t>(a)]));
    }
    if (!ok || !lang::infer_type(s, types)) continue;
    ref.values[static_cast<std::size_t>(s.out)] = evaluate(s, args);
    ref.valid[static_cast<std::size_t>(s.out)] = true;
  }
  return ref;
}

// A result within its bound: NaN where the reference is a certain NaN; elements without a bound
// are not checked. Returns "" or the first violation.
inline std::string check_bounded(const std::vector<double>& got, const RefValue& want, double slack = 2.0) {
  if (got.size() != want.e.size()) return "size " + std::to_string(got.size()) + " vs " + std::to_string(want.e.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    const Bounded& b = want.e[i];
    if (!b.ok) continue;
    const double g = got[i];
    const bool good = std::isnan(b.v) ? std::isnan(g) : std::fabs(g - b.v) <= slack * b.err;
    if (!good)
      return "element " + std::to_string(i) + ": got " + std::to_string(g) + ", want " + std::to_string(b.v) + " +- " +
             std::to_string(b.err);
  }
  return "";
}
inline std::string check_bounded(const std::vector<float>& got, const RefValue& want, double slack = 2.0) {
  return check_bounded(std::vector<double>(got.begin(), got.end()), want, slack);
}

// An observation as the reference says: the outcome, the dtype, and the values within their bounds
// (integers exactly).
inline std::string check_observation(const lang::Observation& o, const RefValue& want) {
  if (want.outcome == Outcome::unknown) return "";
  if (want.outcome == Outcome::out_of_range)
    return o.outcome == "out_of_range" ? "" : "expected out_of_range, got " + o.outcome + " " + o.message;
  if (o.outcome != "ok") return "failed: " + o.outcome + ": " + o.message;
  if (o.dtype != want.dtype) return std::string("dtype ") + dtype_name(o.dtype) + ", want " + dtype_name(want.dtype);
  if (!o.exact.empty()) return check_bounded(std::vector<double>(o.exact.begin(), o.exact.end()), want);
  return check_bounded(o.values, want);
}

// ------------------------------------------------------------------------------------------------
// The generator.

struct GenOptions {
  int min_ops = 4, max_ops = 24;
  bool directives = true;     // mode/stream/fusion/graphs/wait/wait_all/drop statements
  bool low_precision = true;  // f16/bf16 chains and operands
  bool bad_indices = true;    // now and then an index op with indices out of range
  bool bad_views = true;      // now and then a view call the rules reject (checked to be rejected)
};

// The op table's rows the generator draws from, by their columns (tests/support/one_op.hpp has the
// math rows: kUnaryOps, kBinaryOps, kScalarOps).
namespace rows {
using kernels::ElementwiseInfo;
using kernels::OpData;
using kernels::OpResult;
inline const std::vector<ElementwiseOp> kTwoScalarOps =
    ops_where([](const ElementwiseInfo& i) { return i.tensors == 1 && i.scalars == 2 && i.data == OpData::floating; });
inline const std::vector<ElementwiseOp> kComparisons =
    ops_where([](const ElementwiseInfo& i) { return i.result == OpResult::boolean && i.tensors == 2; });
inline const std::vector<ElementwiseOp> kScalarComparisons =
    ops_where([](const ElementwiseInfo& i) { return i.result == OpResult::boolean && i.tensors == 1 && i.scalars == 1; });
// where and masked_fill: the rows with a condition operand.
inline const std::vector<ElementwiseOp> kSelections = [] {
  std::vector<ElementwiseOp> ops;
  for (unsigned i = 0; i < kernels::kElementwiseOpCount; ++i)
    if (kernels::condition_operand(static_cast<ElementwiseOp>(i)) >= 0) ops.push_back(static_cast<ElementwiseOp>(i));
  return ops;
}();
inline const ElementwiseOp kCast = ops_where([](const ElementwiseInfo& i) { return i.result == OpResult::cast; }).at(0);
}  // namespace rows

class GraphGenerator {
 public:
  GraphGenerator(uint32_t seed, GenOptions o = {}) : rng_(seed), o_(o), leaf_seed_(seed * 1000u) {}

  lang::Program generate() {
    const int leaves = pick(1, 3);
    for (int i = 0; i < leaves; ++i) {
      const Shape shape = random_shape();  // draws in a fixed order: the same program from any compiler
      leaf(shape, chance(0.3));
    }
    const int ops = pick(o_.min_ops, o_.max_ops);
    for (int i = 0; i < ops; ++i) {
      if (o_.directives && chance(0.35)) directive();
      op();
    }
    return std::move(p_);
  }

 private:
  using E = kernels::ElementwiseOp;
  struct Val {
    int id;
    RefValue ref;
  };

  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  template <class T>
  T pick_of(const std::vector<T>& v) { return v[static_cast<std::size_t>(pick(0, static_cast<int>(v.size()) - 1))]; }

  // A value satisfying pred: recent values more often (deep chains), yet older ones too (shared
  // subexpressions); -1 if there is none.
  template <class Pred>
  int any_where(Pred pred) {
    std::vector<int> fit;
    for (const Val& v : vals_)
      if (pred(v.ref)) fit.push_back(v.id);
    if (fit.empty()) return -1;
    const int n = static_cast<int>(fit.size());
    return fit[static_cast<std::size_t>(chance(0.6) ? std::max(0, n - 1 - pick(0, 2)) : pick(0, n - 1))];
  }
  int any() { return any_where([](const RefValue&) { return true; }); }
  // A floating value (f32 mostly: most values are), or a new f32 leaf.
  int floating() {
    const int id = any_where([](const RefValue& r) { return is_floating(r.dtype); });
    return id >= 0 ? id : leaf(random_shape(), false);
  }
  const RefValue& ref(int id) const {
    for (const Val& v : vals_)
      if (v.id == id) return v.ref;
    return vals_.front().ref;
  }

  Shape random_shape() {
    Shape s(static_cast<std::size_t>(pick(0, 3)));
    for (auto& e : s) e = chance(0.03) ? 0 : chance(0.25) ? 1 : pick(2, chance(0.15) ? 33 : 6);
    return s;
  }

  static double min_abs(const RefValue& r) {
    double m = std::numeric_limits<double>::infinity();
    for (const Bounded& b : r.e) m = std::min(m, b.ok ? std::fabs(b.v) - b.err : 0.0);
    return m;
  }
  static double min_val(const RefValue& r) {
    double m = std::numeric_limits<double>::infinity();
    for (const Bounded& b : r.e) m = std::min(m, b.ok ? b.v - b.err : -1.0);
    return m;
  }
  static double max_abs(const RefValue& r) {
    double m = 0;
    for (const Bounded& b : r.e) m = std::max(m, b.ok ? std::fabs(b.v) + b.err : 1e30);
    return m;
  }

  // ---- emitting statements --------------------------------------------------------------------

  int emit(lang::Stmt s) {
    std::vector<const RefValue*> args;
    for (int a : s.args) args.push_back(&ref(a));
    s.out = static_cast<int>(p_.names.size());
    p_.names.push_back(std::string("v").append(std::to_string(s.out)));
    s.line = static_cast<int>(p_.stmts.size()) + 1;
    RefValue r = evaluate(s, args);
    p_.stmts.push_back(s);
    vals_.push_back(Val{s.out, std::move(r)});
    return s.out;
  }
  // s if the rules accept it (shapes the generator did not arrange), else nothing: -1.
  int emit_if_valid(const lang::Stmt& s) {
    std::vector<lang::ValueType> types;
    for (int a : s.args) types.push_back(type_of(ref(a)));
    return lang::infer_type(s, types) ? emit(s) : -1;
  }

  int leaf(const Shape& shape, bool positive) {
    lang::Stmt s;
    s.kind = positive ? lang::Kind::pos : lang::Kind::rand;
    s.seed = leaf_seed_++;
    s.shape = shape;
    return emit(s);
  }
  int ids(const Shape& shape, int64_t maxval) {
    lang::Stmt s;
    s.kind = lang::Kind::ids;
    s.seed = leaf_seed_++;
    s.maxval = maxval;
    s.shape = shape;
    return emit(s);
  }
  int mask(const Shape& shape) {
    lang::Stmt s;
    s.kind = lang::Kind::mask;
    s.seed = leaf_seed_++;
    s.shape = shape;
    return emit(s);
  }
  int arange(int64_t end, DType t) {
    lang::Stmt s;
    s.kind = lang::Kind::arange;
    s.shape = {end};
    s.dtype = t;
    return emit(s);
  }
  // A fresh leaf of any dtype: f32 values cast to f16/bf16, small ids, masks.
  int leaf_of(DType t, const Shape& shape) {
    if (!o_.low_precision && (t == DType::f16 || t == DType::bf16)) t = DType::f32;
    if (t == DType::boolean) return mask(shape);
    if (is_integer(t)) return cast(ids(shape, 8), t);
    return cast(leaf(shape, false), t);
  }

  int ew(E op, std::vector<int> args, float s0 = 0.f, float s1 = 0.f) {
    lang::Stmt s;
    s.kind = lang::Kind::elementwise;
    s.op = op;
    s.args = std::move(args);
    s.scalars = {s0, s1};
    return emit(s);
  }
  int cast(int a, DType t) {
    if (ref(a).dtype == t) return a;
    lang::Stmt s;
    s.kind = lang::Kind::elementwise;
    s.op = rows::kCast;
    s.args = {a};
    s.dtype = t;
    return emit(s);
  }
  // A value of the same shape and dtype whose elements are all >= 0.5: abs(x) + 0.5.
  int positive(int a) {
    if (min_val(ref(a)) >= 0.25) return a;
    return ew(E::add_scalar, {ew(E::abs, {a})}, 0.5f);
  }
  // Bounded magnitudes keep exp and long products finite.
  int tame(int a) { return max_abs(ref(a)) <= 8 ? a : ew(E::tanh, {a}); }

  // A shape that broadcasts with `s`: some dims set to 1, maybe leading dims dropped.
  Shape broadcast_partner(const Shape& s) {
    Shape t = s;
    for (auto& e : t)
      if (chance(0.3)) e = 1;
    if (!t.empty() && chance(0.3)) t.erase(t.begin(), t.begin() + pick(1, static_cast<int>(t.size())));
    if (t.size() == s.size() && t.size() < 3 && chance(0.15)) t.insert(t.begin(), pick(2, 3));  // a new leading dim
    return t;
  }
  // A value of dtype t that broadcasts with `a`: an existing one when one fits, else a fresh leaf.
  int partner(int a, DType t) {
    const Shape sa = ref(a).shape;
    for (int tries = 0; tries < 4; ++tries) {
      const int c = any_where([&](const RefValue& r) { return r.dtype == t; });
      if (c < 0) break;
      lang::Stmt probe;
      probe.kind = lang::Kind::elementwise;
      probe.op = E::add;
      if (lang::infer_type(probe, {{sa, DType::f32}, {ref(c).shape, DType::f32}}) && chance(0.7)) return c;
    }
    return leaf_of(t, broadcast_partner(sa));
  }

  // ---- ops on a given floating operand ------------------------------------------------------------

  int unary_on(int a) {
    const E u = pick_of(kUnaryOps);
    if (u == E::log || u == E::sqrt || u == E::rsqrt) return ew(u, {positive(a)});
    if (u == E::exp) return ew(u, {tame(a)});
    return ew(u, {a});
  }
  int binary_on(int a) {
    const E b = pick_of(kBinaryOps);
    int x = a, y = partner(a, ref(a).dtype);
    if (chance(0.5)) std::swap(x, y);
    if (b == E::div && min_abs(ref(y)) < 0.25) y = positive(y);
    if (b == E::mul) {
      x = tame(x);
      y = tame(y);
    }
    return ew(b, {x, y});
  }
  int scalar_on(int a) {
    if (chance(0.15)) {  // clamp, sometimes with lo > hi
      const float lo = static_cast<float>(pick(-12, 4)) / 8.f, hi = chance(0.9) ? lo + static_cast<float>(pick(1, 16)) / 8.f : lo - 0.5f;
      return ew(pick_of(rows::kTwoScalarOps), {a}, lo, hi);
    }
    const E op = pick_of(kScalarOps);
    if (op == E::pow_scalar) return ew(op, {positive(tame(a))}, pick_of(std::vector<float>{0.5f, 2.f, 3.f, -1.f, 1.5f, 0.f}));
    const float x = std::uniform_real_distribution<float>(0.5f, 3.f)(rng_) * (chance(0.5) ? -1.f : 1.f);
    return ew(op, {op == E::mul_scalar ? tame(a) : a}, x);
  }
  int math_on(int a) {
    switch (pick(0, 5)) {
      case 0:
      case 1: return unary_on(a);
      case 2:
      case 3:
      case 4: return binary_on(a);
      default: return scalar_on(a);
    }
  }

  // ---- the kinds of step ----------------------------------------------------------------------

  void op() {
    switch (pick(0, 19)) {
      case 0:
      case 1:
      case 2:
      case 3:
      case 4:
      case 5: math_on(floating()); return;
      case 6: reduction(); return;
      case 7: softmax(); return;
      case 8: layer_norm(); return;
      case 9: matmul(); return;
      case 10: transpose(); return;
      case 11:
      case 12: comparison_and_selection(); return;
      case 13:
      case 14: low_precision_chain(); return;
      case 15:
      case 16: index_op(); return;
      default: view_chain(); return;
    }
  }

  // The ops below take an operand `a`, or pick one (-1).
  void reduction(int a = -1) {
    if (a < 0) a = floating();
    const Shape& sa = ref(a).shape;
    if (sa.empty()) return;
    lang::Stmt s;
    s.kind = lang::Kind::reduce;
    s.reduce = static_cast<kernels::ReduceOp>(pick(0, static_cast<int>(kernels::kReduceOpCount) - 1));
    s.dim = pick(-static_cast<int>(sa.size()), static_cast<int>(sa.size()) - 1);
    s.keepdim = chance(0.4);
    s.args = {a};
    emit_if_valid(s);
  }

  void softmax(int a = -1) {
    if (a < 0) a = floating();
    if (ref(a).shape.empty()) return;
    lang::Stmt s;
    s.kind = lang::Kind::softmax;
    s.dim = pick(-static_cast<int>(ref(a).shape.size()), static_cast<int>(ref(a).shape.size()) - 1);
    s.args = {a};
    emit(s);
  }

  // layer_norm with fresh gamma and beta of x's dtype.
  void layer_norm(int a = -1) {
    a = tame(a < 0 ? floating() : a);
    if (ref(a).shape.empty()) return;
    const DType t = ref(a).dtype;
    const Shape last{ref(a).shape.back()};
    lang::Stmt s;
    s.kind = lang::Kind::layer_norm;
    s.args = {a, cast(leaf(last, true), t), cast(leaf(last, false), t)};
    s.scalars[0] = chance(0.5) ? 1e-5f : 1e-3f;
    emit(s);
  }

  // [m,k] or [b,m,k] times a fresh or existing [k,n] / [b,k,n] of the same dtype (a fresh [k,n]
  // is now and then the transpose of an [n,k]: a strided operand).
  void matmul(int a = -1) {
    if (a < 0) a = floating();
    const Shape sa = ref(a).shape;
    const DType t = ref(a).dtype;
    lang::Stmt s;
    s.kind = lang::Kind::matmul;
    if (sa.size() < 2 || sa.size() > 3) {
      if (sa.size() >= 2) return;
      const Shape s2{pick(1, 6), pick(1, 8)};
      s.args = {leaf_of(t, s2), leaf_of(t, {s2[1], pick(1, 6)})};
      emit(s);
      return;
    }
    Shape sb{sa.back(), pick(1, 7)};
    if (sa.size() == 3 && chance(0.5)) sb.insert(sb.begin(), sa[0]);
    int b = any_where([&](const RefValue& r) { return r.shape == sb && r.dtype == t && chance(0.5); });
    if (b < 0 && sb.size() == 2 && chance(0.3)) b = transposed(leaf_of(t, {sb[1], sb[0]}));
    if (b < 0) b = leaf_of(t, sb);
    s.args = {tame(a), tame(b)};
    emit(s);
  }

  int transposed(int a) {
    lang::Stmt s;
    s.kind = lang::Kind::transpose;
    s.args = {a};
    return emit(s);
  }

  void transpose() {  // any dtype: the last two dims, or two given ones
    const int a = any();
    const int r = static_cast<int>(ref(a).shape.size());
    if (r < 1) return;
    lang::Stmt s;
    s.kind = lang::Kind::transpose;
    s.args = {a};
    if (r < 2 || chance(0.4)) s.ints = {pick(-r, r - 1), pick(-r, r - 1)};
    emit(s);
  }

  // ---- views (docs/api.md section 8) ----------------------------------------------------------

  // One to three views in a row (views of views) of a value, often a pending result, then often an
  // op that reads the last view in place: an element-wise op (fused through the strided operand), a
  // reduction, softmax, layer_norm or matmul.
  void view_chain() {
    int a = chance(0.85) ? floating() : any();
    for (int k = chance(0.6) ? 1 : pick(2, 3); k > 0; --k) {
      const int v = view_of(a);
      if (v >= 0) a = v;
    }
    if (!is_floating(ref(a).dtype) || chance(0.3)) return;
    switch (pick(0, 6)) {
      case 0:
      case 1:
      case 2: math_on(a); return;
      case 3: reduction(a); return;
      case 4: softmax(a); return;
      case 5: layer_norm(a); return;
      default: matmul(a); return;
    }
  }

  std::optional<lang::ValueType> type_of_stmt(const lang::Stmt& s) {
    std::vector<lang::ValueType> types;
    for (int a : s.args) types.push_back(type_of(ref(a)));
    return lang::infer_type(s, types);
  }

  // A statement the rules reject: in the program (the op must reject it at the call, in either
  // mode), not among the values later statements use.
  void emit_rejected(lang::Stmt s) {
    s.out = static_cast<int>(p_.names.size());
    p_.names.push_back(std::string("v").append(std::to_string(s.out)));
    s.line = static_cast<int>(p_.stmts.size()) + 1;
    p_.stmts.push_back(s);
  }

  // Whether a leaf may have this shape (the language's limits): the generator makes leaves of the
  // shapes of other values (partners, gamma and beta, cat's operands), so views keep to them too.
  static bool leaf_sized(const Shape& shape) {
    if (static_cast<int>(shape.size()) > lang::kMaxRank || refb::numel(shape) > lang::kMaxLeafElements) return false;
    for (int64_t e : shape)
      if (e > lang::kMaxExtent) return false;
    return true;
  }

  // A view as built, or now and then (bad_views) one with a dim or an integer made wrong, which is
  // emitted as a rejected call where the rules reject it. Results a leaf could not have are not
  // made (-1), nor are rejected ones.
  int emit_view(lang::Stmt s) {
    if (o_.bad_views && chance(0.05)) {
      const int r = static_cast<int>(ref(s.args[0]).shape.size());
      if (!s.ints.empty() && chance(0.6)) s.ints[static_cast<std::size_t>(pick(0, static_cast<int>(s.ints.size()) - 1))] = pick(-3, 9);
      else s.dim = chance(0.5) ? r + 1 : -r - 2;  // out of range for every op (unsqueeze takes r)
    }
    const auto type = type_of_stmt(s);
    if (!type) {
      emit_rejected(s);
      return -1;
    }
    if (!leaf_sized(type->shape)) return -1;
    return emit(s);
  }

  // 0 .. r-1 shuffled, some as negative dims.
  std::vector<int64_t> permutation(int r) {
    std::vector<int64_t> dims(static_cast<std::size_t>(r));
    for (int i = 0; i < r; ++i) dims[static_cast<std::size_t>(i)] = i;
    for (int i = r - 1; i > 0; --i) std::swap(dims[static_cast<std::size_t>(i)], dims[static_cast<std::size_t>(pick(0, i))]);
    for (int64_t& d : dims)
      if (chance(0.25)) d -= r;
    return dims;
  }

  static std::vector<int64_t> divisors(int64_t n) {
    std::vector<int64_t> v;
    for (int64_t f = 1; f <= n; ++f)
      if (n % f == 0) v.push_back(f);
    return v;
  }

  // A view of a (any dtype): one of the view ops with arguments that mostly fit a's shape.
  int view_of(int a) {
    const Shape sh = ref(a).shape;
    const int r = static_cast<int>(sh.size());
    const auto a_dim = [&] { return pick(-r, r - 1); };  // r >= 1
    lang::Stmt s;
    s.args = {a};
    switch (pick(0, 13)) {
      case 0:
        if (r == 0) return -1;
        s.kind = lang::Kind::transpose;
        if (r < 2 || chance(0.5)) s.ints = {a_dim(), a_dim()};
        break;
      case 1:
        s.kind = lang::Kind::permute;
        s.ints = permutation(r);
        break;
      case 2:
      case 3: return reshape_of(a);
      case 4:
        s.kind = lang::Kind::unsqueeze;
        s.dim = pick(-r - 1, r);
        break;
      case 5: {
        std::vector<int> ones;
        for (int d = 0; d < r; ++d)
          if (sh[static_cast<std::size_t>(d)] == 1) ones.push_back(chance(0.5) ? d : d - r);
        if (ones.empty()) return -1;
        s.kind = lang::Kind::squeeze;
        s.dim = pick_of(ones);
        break;
      }
      case 6: return expand_of(a);
      case 7:
      case 8: {
        if (r == 0) return -1;
        s.kind = lang::Kind::slice;
        s.dim = a_dim();
        const int e = static_cast<int>(sh[static_cast<std::size_t>(s.dim < 0 ? s.dim + r : s.dim)]);
        const int64_t start = chance(0.1) ? std::numeric_limits<int64_t>::min() : pick(-e - 2, e + 1);
        const int64_t end = chance(0.1) ? std::numeric_limits<int64_t>::max() : chance(0.1) ? -100 : pick(-e - 1, e + 2);
        const int64_t step = chance(0.6) ? 1 : chance(0.9) ? pick(2, 4) : 100;
        s.ints = {start, end, step};
        break;
      }
      case 9: {
        std::vector<int> dims;
        for (int d = 0; d < r; ++d)
          if (sh[static_cast<std::size_t>(d)] > 0) dims.push_back(d);
        if (dims.empty()) return -1;
        s.kind = lang::Kind::select;
        const int d = pick_of(dims), e = static_cast<int>(sh[static_cast<std::size_t>(d)]);
        s.dim = chance(0.3) ? d - r : d;
        s.ints = {pick(-e, e - 1)};
        break;
      }
      case 10: {
        if (r == 0) return -1;
        s.kind = lang::Kind::split;
        s.dim = a_dim();
        const int64_t e = sh[static_cast<std::size_t>(s.dim < 0 ? s.dim + r : s.dim)];
        const int64_t size = pick(1, static_cast<int>(std::max<int64_t>(e, 1)) + 1);
        const int64_t parts = e == 0 ? 1 : (e + size - 1) / size;
        s.ints = {size, pick(0, static_cast<int>(parts) - 1)};
        break;
      }
      case 11: s.kind = lang::Kind::contiguous; break;
      default: return cat_of(a);
    }
    return emit_view(s);
  }

  // reshape or view of a to another arrangement of its elements: flattened, two dims merged, one
  // split, a random factorization, 1s moved; one extent -1 now and then. A view the strides do not
  // allow is now and then emitted as the rejected call it is, else it becomes a reshape (a copy).
  int reshape_of(int a) {
    const Shape sh = ref(a).shape;
    const int r = static_cast<int>(sh.size());
    const int64_t n = refb::numel(sh);
    Shape to;
    switch (pick(0, 4)) {
      case 0: to = {n}; break;
      case 1:
        to = sh;
        if (r >= 2) {
          const int d = pick(0, r - 2);
          to[static_cast<std::size_t>(d)] *= to[static_cast<std::size_t>(d) + 1];
          to.erase(to.begin() + d + 1);
        }
        break;
      case 2: {
        to = sh;
        if (r == 0) break;
        const auto d = static_cast<std::size_t>(pick(0, r - 1));
        if (to[d] < 2) break;
        const int64_t f = pick_of(divisors(to[d]));
        to.insert(to.begin() + static_cast<std::ptrdiff_t>(d), f);
        to[d + 1] /= f;
        break;
      }
      case 3: {
        if (n == 0) {
          to = {pick(1, 3), 0};
          break;
        }
        int64_t left = n;
        for (int k = pick(0, 3); k > 0 && left > 1; --k) {
          const int64_t f = pick_of(divisors(left));
          to.push_back(f);
          left /= f;
        }
        to.push_back(left);
        break;
      }
      default:
        for (int64_t e : sh)
          if (e != 1) to.push_back(e);
        to.insert(to.begin() + pick(0, static_cast<int>(to.size())), 1);
        break;
    }
    if (n > 0 && !to.empty() && chance(0.3)) to[static_cast<std::size_t>(pick(0, static_cast<int>(to.size()) - 1))] = -1;
    lang::Stmt s;
    s.kind = chance(0.5) ? lang::Kind::view : lang::Kind::reshape;
    s.args = {a};
    s.ints = to;
    if (s.kind == lang::Kind::view && !type_of_stmt(s)) {
      if (o_.bad_views && chance(0.25)) {
        emit_rejected(s);
        return -1;
      }
      s.kind = lang::Kind::reshape;
    }
    return emit_view(s);
  }

  // expand of a: extent-1 dims grown (to 0 now and then), others kept (-1 or the extent), new
  // leading dims; a without an extent-1 dim is unsqueezed first.
  int expand_of(int a) {
    Shape sh = ref(a).shape;
    const int lead = chance(0.3) ? pick(1, 2) : 0;
    if (lead == 0 && std::find(sh.begin(), sh.end(), 1) == sh.end()) {
      lang::Stmt u;
      u.kind = lang::Kind::unsqueeze;
      u.args = {a};
      u.dim = pick(0, static_cast<int>(sh.size()));
      a = emit_view(u);
      if (a < 0) return -1;
      sh = ref(a).shape;
    }
    Shape to;
    for (int i = 0; i < lead; ++i) to.push_back(chance(0.05) ? 0 : pick(1, 4));
    for (int64_t e : sh) to.push_back(e == 1 && chance(0.7) ? (chance(0.05) ? 0 : pick(2, 5)) : chance(0.5) ? -1 : e);
    lang::Stmt s;
    s.kind = lang::Kind::expand;
    s.args = {a};
    s.ints = to;
    return emit_view(s);
  }

  // cat of a and one or two more along a dim: a itself, a fresh leaf of another extent there, or
  // a slice of a.
  int cat_of(int a) {
    const Shape sh = ref(a).shape;
    const DType t = ref(a).dtype;
    const int r = static_cast<int>(sh.size());
    if (r == 0 || refb::numel(sh) > 4096) return -1;
    const int d = pick(0, r - 1);
    lang::Stmt s;
    s.kind = lang::Kind::cat;
    s.args = {a};
    for (int k = pick(1, 2); k > 0; --k) {
      switch (pick(0, 2)) {
        case 0: s.args.push_back(a); break;
        case 1: {
          Shape other = sh;
          other[static_cast<std::size_t>(d)] = pick(0, 3);
          s.args.push_back(leaf_of(t, other));
          break;
        }
        default: {
          lang::Stmt sl;
          sl.kind = lang::Kind::slice;
          sl.args = {a};
          sl.dim = d;
          sl.ints = {pick(0, static_cast<int>(sh[static_cast<std::size_t>(d)])), std::numeric_limits<int64_t>::max(), pick(1, 2)};
          s.args.push_back(emit(sl));
          break;
        }
      }
    }
    if (chance(0.5)) std::swap(s.args[0], s.args.back());
    s.dim = chance(0.3) ? d - r : d;
    return emit_view(s);
  }

  // A comparison (of any dtype but a boolean with a scalar), then often a selection by it: a row
  // with a condition operand (where, masked_fill) gets the comparison there, a value and partners
  // of its dtype as the data operands, and a fill value as its scalar.
  void comparison_and_selection() {
    const int a = any();
    const DType t = ref(a).dtype;
    int cond = -1;
    if (t == DType::boolean || chance(0.4)) {
      cond = ew(pick_of(rows::kComparisons), {a, partner(a, t)});
    } else {
      const float threshold = is_floating(t) ? static_cast<float>(pick(-12, 12)) / 8.f : static_cast<float>(pick(0, 6));
      cond = ew(pick_of(rows::kScalarComparisons), {a}, threshold);
    }
    if (chance(0.3)) return;
    lang::Stmt s;
    s.kind = lang::Kind::elementwise;
    s.op = pick_of(rows::kSelections);
    const kernels::ElementwiseInfo& info = kernels::info(s.op);
    const int x = chance(0.5) ? floating() : any();
    bool first_data = true;
    for (int k = 0; k < info.tensors; ++k) {
      if (k == kernels::condition_operand(s.op)) s.args.push_back(cond);
      else s.args.push_back(first_data ? x : partner(x, ref(x).dtype));
      if (k != kernels::condition_operand(s.op)) first_data = false;
    }
    for (int k = 0; k < info.scalars; ++k) s.scalars[static_cast<std::size_t>(k)] = pick_of(std::vector<float>{-1e4f, 0.f, 2.5f, -0.75f});
    emit_if_valid(s);
  }

  // An f16/bf16 variant of a chain: cast in, a few math ops in that dtype, usually cast out.
  void low_precision_chain() {
    if (!o_.low_precision) return;
    const DType t = chance(0.5) ? DType::f16 : DType::bf16;
    int x = cast(tame(floating()), t);
    for (int k = pick(1, 3); k > 0; --k) x = math_on(x);
    if (chance(0.7)) cast(x, DType::f32);
  }

  // index_select or embedding; the indices are valid mostly, out of range now and then.
  void index_op() {
    if (chance(0.5)) return index_select();
    return embedding();
  }

  // A 1-D index of k entries for a dim of extent n.
  int index_for(int64_t n, int64_t k) {
    const DType t = chance(0.3) ? DType::i32 : DType::i64;
    if (n == 0 && !o_.bad_indices) k = 0;  // every index of an empty dim is out of range
    if (o_.bad_indices && chance(0.08)) return cast(ids({k}, chance(0.5) ? -pick(1, 4) : n + pick(1, 3)), t);  // out of range
    if (chance(0.2) && k <= n) return arange(k, t);
    return cast(ids({k}, std::max<int64_t>(n, 1)), t);
  }

  void index_select() {
    const int a = any_where([](const RefValue& r) { return !r.shape.empty(); });
    if (a < 0) return;
    const Shape sa = ref(a).shape;
    const int dim = pick(0, static_cast<int>(sa.size()) - 1);
    int index = -1;
    // Sometimes the index is an argmax over a dim no longer than this one: in range, maybe unsure.
    if (chance(0.2)) {
      const int v = any_where([&](const RefValue& r) {
        return is_floating(r.dtype) && r.shape.size() == 2 && r.shape[1] >= 1 && r.shape[1] <= sa[static_cast<std::size_t>(dim)];
      });
      if (v >= 0) {
        lang::Stmt s;
        s.kind = lang::Kind::reduce;
        s.reduce = kernels::ReduceOp::argmax;
        s.dim = 1;
        s.args = {v};
        index = emit(s);
      }
    }
    if (index < 0) index = index_for(sa[static_cast<std::size_t>(dim)], pick(0, 6));
    lang::Stmt s;
    s.kind = lang::Kind::index_select;
    s.dim = chance(0.3) ? dim - static_cast<int>(sa.size()) : dim;
    s.args = {a, index};
    emit(s);
  }

  void embedding() {
    int w = any_where([](const RefValue& r) { return r.shape.size() == 2 && r.shape[0] >= 1; });
    if (w < 0 || chance(0.3)) {
      const DType t = chance(0.7) ? DType::f32 : pick_of(std::vector<DType>{DType::f16, DType::bf16, DType::i64});
      const int64_t vocab = pick(1, 8);
      w = leaf_of(t, {vocab, pick(1, 6)});
    }
    const int64_t vocab = ref(w).shape[0];
    Shape shape(static_cast<std::size_t>(pick(0, 2)));
    for (auto& e : shape) e = pick(1, 5);
    int id = o_.bad_indices && chance(0.08) ? ids(shape, chance(0.5) ? -2 : vocab + 2) : ids(shape, vocab);
    if (chance(0.3)) id = cast(id, DType::i32);
    lang::Stmt s;
    s.kind = lang::Kind::embedding;
    s.args = {w, id};
    emit(s);
  }

  void directive() {
    lang::Stmt s;
    s.line = static_cast<int>(p_.stmts.size()) + 1;
    switch (pick(0, 7)) {
      case 0: s.kind = lang::Kind::mode; s.flag = chance(0.4); break;
      case 1: s.kind = lang::Kind::stream; s.stream = pick(0, lang::kStreams - 1); break;
      case 2: s.kind = lang::Kind::fusion; s.flag = chance(0.7); break;
      case 3: s.kind = lang::Kind::graphs; s.flag = chance(0.7); break;
      case 4:
      case 5: s.kind = lang::Kind::wait; s.args = {any()}; break;
      case 6:
        s.kind = lang::Kind::wait_all;
        for (int i = pick(1, 4); i > 0; --i) s.args.push_back(any());
        break;
      case 7:
        if (vals_.size() < 4) return;
        s.kind = lang::Kind::drop;
        s.args = {vals_[static_cast<std::size_t>(pick(0, static_cast<int>(vals_.size()) - 2))].id};
        break;
    }
    p_.stmts.push_back(s);
  }

  std::mt19937 rng_;
  GenOptions o_;
  uint32_t leaf_seed_;
  lang::Program p_;
  std::vector<Val> vals_;
};

// The same program with every random leaf drawn from another seed: the same structure and shapes
// (so a replayed plan must serve it) with different values.
inline lang::Program reseeded(lang::Program p, uint32_t salt) {
  for (lang::Stmt& s : p.stmts)
    if (s.kind == lang::Kind::rand || s.kind == lang::Kind::pos || s.kind == lang::Kind::ids || s.kind == lang::Kind::mask)
      s.seed ^= salt * 0x9e3779b9u + 1u;
  return p;
}

}  // namespace defer::testing
