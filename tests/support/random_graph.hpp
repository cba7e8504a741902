#pragma once
// Random op graphs for the property tests, written in the fuzz target's graph language
// (fuzz/graph_lang.hpp), and a float64 reference of any such program that carries, for every
// element, a bound on how far a float32 evaluation may be from it.
//
// The bound: each op propagates its operands' bounds (through the function's Lipschitz constant, or
// an exact interval bound for exp, log, sqrt, mul, div, and a sensitivity bound for the reductions,
// softmax, layer_norm and matmul) and adds its own rounding (a few units in the last place for libm
// functions, n units for an n-term sum). `ok` is false where the bound says nothing: an operand
// interval that crosses a domain edge, or magnitudes near float's overflow. The generator steers
// clear of those (log/sqrt/div only on operands away from 0, exp only of bounded values), so almost
// every element is checked.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "graph_lang.hpp"
#include "reference.hpp"

namespace defer::testing {

struct Bounded {
  double v = 0;
  double err = 0;
  bool ok = true;
};

struct RefValue {
  Shape shape;
  std::vector<Bounded> e;
};

namespace refb {

constexpr double kUnit = 0x1p-24;
constexpr double kUnderflow = 0x1p-140;
constexpr Bounded kUnreliable{0, 0, false};
constexpr Bounded kNaN{std::numeric_limits<double>::quiet_NaN(), 0, true};

inline Bounded rounded(double r, double err, double ulps) {
  Bounded b{r, err + ulps * kUnit * (std::fabs(r) + err) + (ulps > 0 ? kUnderflow : 0.0), true};
  if (std::isnan(r)) return b;
  if (!std::isfinite(r) || !std::isfinite(b.err) || std::fabs(r) + b.err > 1e30) b.ok = false;
  return b;
}

using ref::sigmoid;

inline Bounded unary(lang::Unary op, Bounded a) {
  using lang::Unary;
  if (!a.ok) return kUnreliable;
  if (std::isnan(a.v)) return kNaN;
  const double x = a.v, e = a.err;
  switch (op) {
    case Unary::neg: return rounded(-x, e, 0);
    case Unary::abs: return rounded(std::fabs(x), e, 0);
    case Unary::relu: return rounded(x < 0 ? 0.0 : x, e, 0);
    case Unary::exp: {
      const double r = std::exp(x);
      return rounded(r, r * std::expm1(e), 4);
    }
    case Unary::log:
      if (x - e > 0) return rounded(std::log(x), -std::log1p(-e / x), 4);
      return x + e < 0 ? kNaN : kUnreliable;
    case Unary::sqrt:
      if (x - e >= 0) {
        const double r = std::sqrt(x);
        return rounded(r, e == 0 ? 0.0 : e / (r + std::sqrt(x - e)), 1);
      }
      return x + e < 0 ? kNaN : kUnreliable;
    case Unary::tanh: return rounded(std::tanh(x), e, 8);
    case Unary::sigmoid: return rounded(sigmoid(x), 0.25 * e, 16);
    case Unary::silu: return rounded(x * sigmoid(x), 1.1 * e, 16);
    case Unary::gelu: return rounded(0.5 * x * std::erfc(-x / std::numbers::sqrt2), 1.2 * e, 4);
    case Unary::gelu_tanh: {
      const double u = std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x);
      return rounded(x * sigmoid(2.0 * u), 1.2 * e, 4);
    }
  }
  return kUnreliable;
}

inline Bounded binary(lang::Binary op, Bounded a, Bounded b) {
  using lang::Binary;
  if ((a.ok && std::isnan(a.v)) || (b.ok && std::isnan(b.v))) return kNaN;
  if (!a.ok || !b.ok) return kUnreliable;
  switch (op) {
    case Binary::add: return rounded(a.v + b.v, a.err + b.err, 1);
    case Binary::sub: return rounded(a.v - b.v, a.err + b.err, 1);
    case Binary::mul: return rounded(a.v * b.v, std::fabs(a.v) * b.err + std::fabs(b.v) * a.err + a.err * b.err, 1);
    case Binary::div: {
      const double m = std::fabs(b.v);
      if (m - b.err <= 0) return kUnreliable;
      return rounded(a.v / b.v, (a.err * m + std::fabs(a.v) * b.err) / (m * (m - b.err)), 1);
    }
    case Binary::maximum: return rounded(std::max(a.v, b.v), std::max(a.err, b.err), 0);
    case Binary::minimum: return rounded(std::min(a.v, b.v), std::max(a.err, b.err), 0);
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

}  // namespace refb

// The bounded float64 value of one op statement, given its operands' values.
inline RefValue evaluate(const lang::Stmt& s, const std::vector<const RefValue*>& a) {
  using lang::Kind;
  using namespace refb;
  std::vector<Shape> shapes;
  for (const RefValue* r : a) shapes.push_back(r->shape);
  RefValue out;
  const auto shape = lang::infer_shape(s, shapes);
  if (!shape) {
    std::string what = "reference: an invalid statement at line " + std::to_string(s.line) + " (kind " +
                       std::to_string(static_cast<int>(s.kind)) + ", operands";
    for (const Shape& x : shapes) what += " " + shape_str(x);
    throw std::logic_error(what + ")");
  }
  out.shape = *shape;
  const auto n_out = static_cast<std::size_t>(numel(out.shape));
  out.e.resize(n_out);
  switch (s.kind) {
    case Kind::rand:
    case Kind::pos: {
      const auto v = lang::leaf_values(s.seed, n_out, s.kind == Kind::pos);
      for (std::size_t i = 0; i < n_out; ++i) out.e[i] = Bounded{v[i], 0, true};
      break;
    }
    case Kind::unary:
      for (std::size_t i = 0; i < n_out; ++i) out.e[i] = unary(s.unary, a[0]->e[i]);
      break;
    case Kind::scalar:
      for (std::size_t i = 0; i < n_out; ++i) out.e[i] = binary(s.binary, a[0]->e[i], Bounded{s.scalar, 0, true});
      break;
    case Kind::binary: {
      Shape idx(out.shape.size(), 0);
      for (std::size_t i = 0; i < n_out; ++i) {
        out.e[i] = binary(s.binary, a[0]->e[static_cast<std::size_t>(broadcast_offset(a[0]->shape, out.shape, idx))],
                          a[1]->e[static_cast<std::size_t>(broadcast_offset(a[1]->shape, out.shape, idx))]);
        for (std::size_t d = out.shape.size(); d-- > 0;) {
          if (++idx[d] < out.shape[d]) break;
          idx[d] = 0;
        }
      }
      break;
    }
    case Kind::sum:
    case Kind::mean:
    case Kind::max: {
      const int dim = s.dim < 0 ? s.dim + static_cast<int>(a[0]->shape.size()) : s.dim;
      const Axis ax = axis(a[0]->shape, dim);
      for (int64_t o = 0; o < ax.outer; ++o)
        for (int64_t i = 0; i < ax.inner; ++i) {
          double acc = s.kind == Kind::max ? -std::numeric_limits<double>::infinity() : 0.0, err = 0, mag = 0;
          bool ok = true, nan = false;
          for (int64_t j = 0; j < ax.n; ++j) {
            const Bounded& x = a[0]->e[static_cast<std::size_t>((o * ax.n + j) * ax.inner + i)];
            if (!x.ok) ok = false;
            else if (std::isnan(x.v)) nan = true;
            acc = s.kind == Kind::max ? std::max(acc, x.v) : acc + x.v;
            err = s.kind == Kind::max ? std::max(err, x.err) : err + x.err;
            mag += std::fabs(x.v);
          }
          Bounded r;
          const double n = static_cast<double>(ax.n);
          if (s.kind == Kind::max) r = rounded(acc, err, 0);
          else if (s.kind == Kind::sum) r = rounded(acc, err + (n + 1) * kUnit * mag, 1);
          else r = ax.n == 0 ? kNaN : rounded(acc / n, (err + (n + 2) * kUnit * mag) / n, 2);
          if (!ok || (nan && s.kind == Kind::max)) r = kUnreliable;
          else if (nan) r = kNaN;
          out.e[static_cast<std::size_t>(o * ax.inner + i)] = r;
        }
      break;
    }
    case Kind::softmax: {
      const int dim = s.dim < 0 ? s.dim + static_cast<int>(a[0]->shape.size()) : s.dim;
      const Axis ax = axis(a[0]->shape, dim);
      for (int64_t o = 0; o < ax.outer; ++o)
        for (int64_t i = 0; i < ax.inner; ++i) {
          const auto at = [&](int64_t j) { return static_cast<std::size_t>((o * ax.n + j) * ax.inner + i); };
          double m = -std::numeric_limits<double>::infinity(), e = 0, total = 0, spread = 0;
          bool ok = true;
          for (int64_t j = 0; j < ax.n; ++j) {
            const Bounded& x = a[0]->e[at(j)];
            ok = ok && x.ok && !std::isnan(x.v);
            m = std::max(m, x.v);
            e = std::max(e, x.err);
          }
          for (int64_t j = 0; j < ax.n; ++j) {
            total += std::exp(a[0]->e[at(j)].v - m);
            spread = std::max(spread, m - a[0]->e[at(j)].v);
          }
          const double rel = std::expm1(2 * e) + (static_cast<double>(ax.n) + 16) * kUnit * (1 + spread);
          for (int64_t j = 0; j < ax.n; ++j) {
            const double y = std::exp(a[0]->e[at(j)].v - m) / total;
            out.e[at(j)] = ok ? rounded(y, y * rel, 4) : kUnreliable;
          }
        }
      break;
    }
    case Kind::layer_norm: {
      const int64_t cols = a[0]->shape.back();
      const int64_t rows = cols == 0 ? 0 : numel(a[0]->shape) / cols;
      const double eps = s.scalar, n = static_cast<double>(cols);
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
        const double ex = e + (n + 4) * kUnit * vmax;                        // input error plus the mean's rounding
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
      break;
    }
    case Kind::matmul: {
      const Shape& sa = a[0]->shape;
      const Shape& sb = a[1]->shape;
      const int64_t m = sa[sa.size() - 2], k = sa.back(), n = sb.back();
      const int64_t batch = sa.size() == 3 ? sa[0] : (sb.size() == 3 ? sb[0] : 1);
      for (int64_t p = 0; p < batch; ++p) {
        const int64_t ao = sa.size() == 3 ? p * m * k : 0, bo = sb.size() == 3 ? p * k * n : 0;
        for (int64_t i = 0; i < m; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double acc = 0, err = 0, mag = 0;
            bool ok = true;
            for (int64_t q = 0; q < k; ++q) {
              const Bounded& x = a[0]->e[static_cast<std::size_t>(ao + i * k + q)];
              const Bounded& y = a[1]->e[static_cast<std::size_t>(bo + q * n + j)];
              ok = ok && x.ok && y.ok && !std::isnan(x.v) && !std::isnan(y.v);
              acc += x.v * y.v;
              err += std::fabs(x.v) * y.err + std::fabs(y.v) * x.err + x.err * y.err;
              mag += std::fabs(x.v * y.v);
            }
            out.e[static_cast<std::size_t>(p * m * n + i * n + j)] =
                ok ? rounded(acc, err + (static_cast<double>(k) + 2) * kUnit * mag, 1) : kUnreliable;
          }
      }
      break;
    }
    case Kind::transpose: {
      const Shape& si = a[0]->shape;
      const int64_t rows = si[si.size() - 2], cols = si.back();
      const int64_t batch = rows * cols == 0 ? 0 : numel(si) / (rows * cols);
      for (int64_t p = 0; p < batch; ++p)
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < cols; ++j)
            out.e[static_cast<std::size_t>(p * rows * cols + j * rows + i)] = a[0]->e[static_cast<std::size_t>(p * rows * cols + i * cols + j)];
      break;
    }
    default: break;
  }
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
    std::vector<Shape> shapes;
    bool ok = true;
    for (int a : s.args) {
      ok = ok && ref.valid[static_cast<std::size_t>(a)];
      args.push_back(&ref.values[static_cast<std::size_t>(a)]);
      shapes.push_back(ref.values[static_cast<std::size_t>(a)].shape);
    }
    if (!ok || !lang::infer_shape(s, shapes)) continue;
    ref.values[static_cast<std::size_t>(s.out)] = evaluate(s, args);
    ref.valid[static_cast<std::size_t>(s.out)] = true;
  }
  return ref;
}

// A float32 result within its bound: NaN where the reference is a certain NaN; elements without a
// bound are not checked. Returns "" or the first violation.
inline std::string check_bounded(const std::vector<float>& got, const RefValue& want, double slack = 2.0) {
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

// ------------------------------------------------------------------------------------------------
// The generator.

struct GenOptions {
  int min_ops = 4, max_ops = 24;
  bool directives = true;  // mode/stream/fusion/graphs/wait/wait_all/drop statements
};

class GraphGenerator {
 public:
  GraphGenerator(uint32_t seed, GenOptions o = {}) : rng_(seed), o_(o), leaf_seed_(seed * 1000u) {}

  lang::Program generate() {
    const int leaves = pick(1, 3);
    for (int i = 0; i < leaves; ++i) leaf(random_shape(), chance(0.3));
    const int ops = pick(o_.min_ops, o_.max_ops);
    for (int i = 0; i < ops; ++i) {
      if (o_.directives && chance(0.35)) directive();
      op();
    }
    return std::move(p_);
  }

 private:
  struct Val {
    int id;
    RefValue ref;
  };

  bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }
  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  const Val& any() {
    // Recent values more often: deep chains, yet older ones too: shared subexpressions.
    const int n = static_cast<int>(vals_.size());
    const int i = chance(0.6) ? std::max(0, n - 1 - pick(0, 2)) : pick(0, n - 1);
    return vals_[static_cast<std::size_t>(i)];
  }

  Shape random_shape() {
    Shape s(static_cast<std::size_t>(pick(0, 3)));
    for (auto& e : s) e = chance(0.03) ? 0 : chance(0.25) ? 1 : pick(2, chance(0.15) ? 33 : 6);
    return s;
  }

  double min_abs(const RefValue& r) {
    double m = std::numeric_limits<double>::infinity();
    for (const Bounded& b : r.e) m = std::min(m, b.ok ? std::fabs(b.v) - b.err : 0.0);
    return m;
  }
  double min_val(const RefValue& r) {
    double m = std::numeric_limits<double>::infinity();
    for (const Bounded& b : r.e) m = std::min(m, b.ok ? b.v - b.err : -1.0);
    return m;
  }
  double max_abs(const RefValue& r) {
    double m = 0;
    for (const Bounded& b : r.e) m = std::max(m, b.ok ? std::fabs(b.v) + b.err : 1e30);
    return m;
  }

  int emit(lang::Stmt s) {
    std::vector<const RefValue*> args;
    for (int a : s.args) args.push_back(&value(a).ref);
    s.out = static_cast<int>(p_.names.size());
    p_.names.push_back("v" + std::to_string(s.out));
    s.line = static_cast<int>(p_.stmts.size()) + 1;
    RefValue r = evaluate(s, args);
    p_.stmts.push_back(s);
    vals_.push_back(Val{s.out, std::move(r)});
    return s.out;
  }
  const Val& value(int id) {
    for (const Val& v : vals_)
      if (v.id == id) return v;
    return vals_.front();
  }

  int leaf(const Shape& shape, bool positive) {
    lang::Stmt s;
    s.kind = positive ? lang::Kind::pos : lang::Kind::rand;
    s.seed = leaf_seed_++;
    s.shape = shape;
    return emit(s);
  }
  int unary(lang::Unary u, int a) {
    lang::Stmt s;
    s.kind = lang::Kind::unary;
    s.unary = u;
    s.args = {a};
    return emit(s);
  }
  int scalar(lang::Binary b, int a, float x) {
    lang::Stmt s;
    s.kind = lang::Kind::scalar;
    s.binary = b;
    s.args = {a};
    s.scalar = x;
    return emit(s);
  }
  // A value of the same shape whose elements are all >= 0.5: abs(x) + 0.5.
  int positive(int a) {
    if (min_val(value(a).ref) >= 0.25) return a;
    return scalar(lang::Binary::add, unary(lang::Unary::abs, a), 0.5f);
  }
  // Bounded magnitudes keep exp and long products finite.
  int tame(int a) { return max_abs(value(a).ref) <= 8 ? a : unary(lang::Unary::tanh, a); }

  // A shape that broadcasts with `s`: some dims set to 1, maybe leading dims dropped.
  Shape broadcast_partner(const Shape& s) {
    Shape t = s;
    for (auto& e : t)
      if (chance(0.3)) e = 1;
    if (!t.empty() && chance(0.3)) t.erase(t.begin(), t.begin() + pick(1, static_cast<int>(t.size())));
    if (t.size() == s.size() && t.size() < 3 && chance(0.15)) t.insert(t.begin(), pick(2, 3));  // a new leading dim
    return t;
  }

  void op() {
    const Val& a = any();
    const int ida = a.id;
    const Shape sa = a.ref.shape;
    switch (pick(0, 10)) {
      case 0:
      case 1: {  // unary
        const auto u = static_cast<lang::Unary>(pick(0, 10));
        if (u == lang::Unary::log || u == lang::Unary::sqrt) unary(u, positive(ida));
        else if (u == lang::Unary::exp) unary(u, tame(ida));
        else unary(u, ida);
        return;
      }
      case 2:
      case 3:
      case 4: {  // binary, broadcasting, with an existing value when one fits
        const auto b = static_cast<lang::Binary>(pick(0, 5));
        int idb = -1;
        for (int tries = 0; tries < 4 && idb < 0; ++tries) {
          const Val& c = any();
          lang::Stmt probe;
          probe.kind = lang::Kind::binary;
          if (lang::infer_shape(probe, {sa, c.ref.shape}) && chance(0.7)) idb = c.id;
        }
        if (idb < 0) idb = leaf(broadcast_partner(sa), false);
        int x = ida, y = idb;
        if (chance(0.5)) std::swap(x, y);
        if (b == lang::Binary::div && min_abs(value(y).ref) < 0.25) y = positive(y);
        if (b == lang::Binary::mul) {
          x = tame(x);
          y = tame(y);
        }
        lang::Stmt s;
        s.kind = lang::Kind::binary;
        s.binary = b;
        s.args = {x, y};
        emit(s);
        return;
      }
      case 5: {  // scalar
        const auto b = static_cast<lang::Binary>(pick(0, 3));
        float x = std::uniform_real_distribution<float>(0.5f, 3.f)(rng_) * (chance(0.5) ? -1.f : 1.f);
        scalar(b, b == lang::Binary::mul ? tame(ida) : ida, x);
        return;
      }
      case 6: {  // reductions
        if (sa.empty()) return;
        lang::Stmt s;
        s.kind = static_cast<lang::Kind>(static_cast<int>(lang::Kind::sum) + pick(0, 2));
        s.dim = pick(-static_cast<int>(sa.size()), static_cast<int>(sa.size()) - 1);
        s.keepdim = chance(0.4);
        s.args = {ida};
        if (!lang::infer_shape(s, {sa})) return;
        emit(s);
        return;
      }
      case 7: {  // softmax
        if (sa.empty()) return;
        lang::Stmt s;
        s.kind = lang::Kind::softmax;
        s.dim = pick(-static_cast<int>(sa.size()), static_cast<int>(sa.size()) - 1);
        s.args = {ida};
        emit(s);
        return;
      }
      case 8: {  // layer_norm with fresh or existing gamma and beta
        if (sa.empty()) return;
        const Shape last{sa.back()};
        const int g = leaf(last, true), b = leaf(last, false);
        lang::Stmt s;
        s.kind = lang::Kind::layer_norm;
        s.args = {tame(ida), g, b};
        s.scalar = chance(0.5) ? 1e-5f : 1e-3f;
        emit(s);
        return;
      }
      case 9: {  // matmul: [m,k] or [b,m,k] times a fresh or existing [k,n] / [b,k,n]
        if (sa.size() < 2 || sa.size() > 3) {
          if (sa.size() >= 2) return;
          Shape s2{pick(1, 6), pick(1, 8)};
          const int x = leaf(s2, false);
          lang::Stmt t;
          t.kind = lang::Kind::matmul;
          t.args = {x, leaf({s2[1], pick(1, 6)}, false)};
          emit(t);
          return;
        }
        const int64_t k = sa.back();
        Shape sb{k, pick(1, 7)};
        if (sa.size() == 3 && chance(0.5)) sb.insert(sb.begin(), sa[0]);
        int idb = -1;
        for (const Val& v : vals_)
          if (v.ref.shape == sb && chance(0.5)) idb = v.id;
        if (idb < 0) idb = leaf(sb, false);
        lang::Stmt t;
        t.kind = lang::Kind::matmul;
        t.args = {tame(ida), tame(idb)};
        emit(t);
        return;
      }
      case 10: {  // transpose
        if (sa.size() < 2) return;
        lang::Stmt s;
        s.kind = lang::Kind::transpose;
        s.args = {ida};
        emit(s);
        return;
      }
    }
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
      case 5: s.kind = lang::Kind::wait; s.args = {any().id}; break;
      case 6:
        s.kind = lang::Kind::wait_all;
        for (int i = pick(1, 4); i > 0; --i) s.args.push_back(any().id);
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

// The same program with every leaf drawn from another seed: the same structure and shapes (so a
// replayed plan must serve it) with different values.
inline lang::Program reseeded(lang::Program p, uint32_t salt) {
  for (lang::Stmt& s : p.stmts)
    if (s.kind == lang::Kind::rand || s.kind == lang::Kind::pos) s.seed ^= salt * 0x9e3779b9u + 1u;
  return p;
}

}  // namespace defer::testing
