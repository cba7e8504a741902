// The CPU fused-program interpreter (kernels/cpu/fused.hpp), the program's structure key and
// validation (kernels/fusion/fused_program.hpp), and the CPU thread pool.
//
// Random programs (DAGs over several inputs with every op) run on random broadcast layouts and are
// compared twice: with the same ops run one by one through the unfused kernels of cpu/ops.hpp,
// which use the same float math and so must agree to the last bit or so; and with a float64
// evaluation that carries a running bound on the float evaluation's error, so the tolerance
// follows each element's actual conditioning (cancellations, steep functions) instead of a fixed
// relative tolerance that no chain of ops could promise. Outputs are poisoned before every run
// (a NaN payload no arithmetic produces) and guarded past their end.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numbers>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/fused.hpp"
#include "cpu/ops.hpp"
#include "cpu/thread_pool.hpp"
#include "fusion/fused_program.hpp"
#include "support/one_op.hpp"

namespace defer::kernels::cpu::detail {
// Testing hook defined in kernels/cpu/fused.cpp (not part of fused.hpp): run the baseline loops
// even where AVX2 is available; returns whether an AVX2 path exists here.
bool fused_force_portable(bool force) noexcept;
}  // namespace defer::kernels::cpu::detail

namespace {

using namespace defer::kernels;
using namespace defer::testing;
using cpu::FusedRunOptions;
using cpu::ThreadPool;
using i64 = std::int64_t;
using u16 = std::uint16_t;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kFloatMax = std::numeric_limits<float>::max();
constexpr std::uint32_t kPoisonBits = 0x7fe5a5a5u;
constexpr i64 kGuard = 16;

// ---------------------------------------------------------------------------------------------
// building programs

FusedInstr unary(UnaryOp op, int a) { return op_instr(op, a); }
FusedInstr binary(BinaryOp op, int a, int b) { return op_instr(op, a, b); }
// op: the binary op (add); its tensor-scalar form reads scalar s.
FusedInstr scalar_op(BinaryOp op, int a, int s) { return op_instr(scalar_form(op), a, 0, 0, s); }

// All inputs and outputs f32.
FusedProgram make_program(std::vector<FusedInstr> code, std::vector<u16> outputs, int inputs, int scalars) {
  FusedProgram p;
  p.code = std::move(code);
  p.outputs = std::move(outputs);
  p.num_inputs = static_cast<u16>(inputs);
  p.num_scalars = static_cast<u16>(scalars);
  p.input_dtypes.assign(p.num_inputs, defer::DType::f32);
  p.output_dtypes.assign(p.outputs.size(), defer::DType::f32);
  return p;
}

std::string describe(const FusedProgram& p) {
  std::string s;
  for (std::size_t i = 0; i < p.code.size(); ++i) {
    const FusedInstr& in = p.code[i];
    s += "  v" + std::to_string(i) + " = ";
    if (in.kind == FusedKind::load) {
      s += "load in" + std::to_string(in.a);
    } else {
      const ElementwiseInfo& op = info(in.op);
      s += op.id;
      const u16 operands[] = {in.a, in.b, in.c};
      for (int k = 0; k < op.tensors; ++k) s += " v" + std::to_string(operands[k]);
      for (int k = 0; k < op.scalars; ++k) s += " s" + std::to_string(in.s + k);
    }
    s += "\n";
  }
  s += "  outputs:";
  for (u16 o : p.outputs) s += " v" + std::to_string(o);
  return s;
}

// A random DAG: starts with a load, then loads (sometimes of an input already loaded), unary,
// binary and scalar ops whose operands are mostly recent values (long chains) and sometimes any
// earlier value (wide DAGs, values with several readers).
FusedProgram random_program(std::mt19937& gen, int num_inputs, int num_scalars, int length) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); };
  auto operand = [&](int defined) { return pick(0, 9) < 6 ? std::max(0, defined - 1 - pick(0, 2)) : pick(0, defined - 1); };
  std::vector<FusedInstr> code;
  code.push_back(load(pick(0, num_inputs - 1)));
  for (int i = 1; i < length; ++i) {
    int kind = pick(0, 99);
    if (kind >= 80 && num_scalars == 0) kind = 50;
    if (kind < 12) code.push_back(load(pick(0, num_inputs - 1)));
    else if (kind < 50) code.push_back(unary(kUnaryOps[static_cast<std::size_t>(pick(0, static_cast<int>(kUnaryOps.size()) - 1))], operand(i)));
    else if (kind < 80) code.push_back(binary(kBinaryOps[static_cast<std::size_t>(pick(0, static_cast<int>(kBinaryOps.size()) - 1))], operand(i), operand(i)));
    else code.push_back(op_instr(kScalarOps[static_cast<std::size_t>(pick(0, static_cast<int>(kScalarOps.size()) - 1))], operand(i), 0, 0, pick(0, num_scalars - 1)));
  }
  std::vector<u16> outputs;
  const int count = pick(1, 3);
  for (int j = 0; j < count; ++j) outputs.push_back(static_cast<u16>(pick(0, 1) ? length - 1 : pick(0, length - 1)));
  return make_program(std::move(code), std::move(outputs), num_inputs, num_scalars);
}

// ---------------------------------------------------------------------------------------------
// layouts and inputs

struct Input {
  std::vector<float> storage;
  i64 base = 0;  // the element the layout's offsets count from (negative strides read below it)
  const float* data() const { return storage.data() + base; }
};

struct Case {
  FusedProgram program;
  FusedLayout layout;
  std::vector<Input> inputs;
  std::vector<float> scalars;
  std::string what;

  std::vector<const void*> input_ptrs() const {
    std::vector<const void*> v;
    for (const auto& in : inputs) v.push_back(in.data());
    return v;
  }
};

float random_value(std::mt19937& gen, float lo = -4.f, float hi = 4.f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  float x;
  do x = dist(gen);
  while (x == 0.f);
  return x;
}

// A row-major shape with n elements: n's prime factors spread over 1-5 dims, extent-1 dims
// included; n == 0 puts a 0 among small dims; n == 1 may be 0-dimensional.
FusedLayout random_shape(i64 n, std::mt19937& gen) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); };
  FusedLayout l;
  if (n == 0) {
    l.ndim = pick(1, 4);
    for (int d = 0; d < l.ndim; ++d) l.shape[static_cast<std::size_t>(d)] = pick(1, 3);
    l.shape[static_cast<std::size_t>(pick(0, l.ndim - 1))] = 0;
    return l;
  }
  l.ndim = n == 1 ? pick(0, 3) : pick(1, 5);
  for (int d = 0; d < l.ndim; ++d) l.shape[static_cast<std::size_t>(d)] = 1;
  i64 rest = n;
  for (i64 f = 2; f * f <= rest; ++f)
    while (rest % f == 0) {
      l.shape[static_cast<std::size_t>(pick(0, l.ndim - 1))] *= f;
      rest /= f;
    }
  if (rest > 1) l.shape[static_cast<std::size_t>(pick(0, l.ndim - 1))] *= rest;
  return l;
}

enum class Pattern { contiguous, broadcast, strided, any };

// Strides for one input over the layout's shape, and storage holding exactly what they reach.
// contiguous: row-major; broadcast: row-major over its own shape with some dims broadcast (stride
// 0); strided: dims stored in a random order, some padded, some reversed (negative stride), some
// overlapping (a small stride, as in a sliding-window view), some broadcast. Extent-1 dims
// sometimes get a junk stride, which must not matter.
Input random_input(FusedLayout& layout, Pattern pattern, std::mt19937& gen, float lo = -4.f, float hi = 4.f) {
  auto pick = [&](int a, int b) { return std::uniform_int_distribution<int>(a, b)(gen); };
  if (pattern == Pattern::any) pattern = static_cast<Pattern>(pick(0, 2));
  const int nd = layout.ndim;
  std::array<i64, kMaxDims> extent{}, stride{};
  std::array<bool, kMaxDims> bcast{};
  bool any_bcast = false;
  for (int d = 0; d < nd; ++d) {
    const auto du = static_cast<std::size_t>(d);
    bcast[du] = pattern != Pattern::contiguous && layout.shape[du] > 1 && pick(0, 9) < 4;
    any_bcast = any_bcast || bcast[du];
    extent[du] = bcast[du] ? 1 : layout.shape[du];
  }
  if (pattern == Pattern::broadcast && !any_bcast)  // broadcast the first dim that can be
    for (int d = 0; d < nd; ++d) {
      const auto du = static_cast<std::size_t>(d);
      if (layout.shape[du] > 1) {
        bcast[du] = true;
        extent[du] = 1;
        break;
      }
    }
  std::array<int, kMaxDims> order{};  // storage order, innermost first
  for (int d = 0; d < nd; ++d) order[static_cast<std::size_t>(d)] = nd - 1 - d;
  if (pattern == Pattern::strided) std::shuffle(order.begin(), order.begin() + nd, gen);
  i64 step = 1;
  for (int k = 0; k < nd; ++k) {
    const auto du = static_cast<std::size_t>(order[static_cast<std::size_t>(k)]);
    stride[du] = step;
    step *= extent[du] * (pattern == Pattern::strided && pick(0, 3) == 0 ? 2 : 1);
  }
  Input in;
  i64 span = 1;
  for (int d = 0; d < nd; ++d) {
    const auto du = static_cast<std::size_t>(d);
    if (bcast[du]) stride[du] = 0;
    else if (layout.shape[du] == 1 && pick(0, 3) == 0) stride[du] = 12345;  // never stepped
    else if (pattern == Pattern::strided && pick(0, 4) == 0) stride[du] = pick(1, 3);  // overlapping windows
    else if (pattern == Pattern::strided && pick(0, 3) == 0) {
      in.base += (extent[du] - 1) * stride[du];
      stride[du] = -stride[du];
    }
    if (layout.shape[du] > 1) span += (extent[du] - 1) * std::abs(stride[du]);
  }
  in.storage.resize(static_cast<std::size_t>(span));
  for (auto& x : in.storage) x = random_value(gen, lo, hi);
  layout.strides.push_back(stride);
  return in;
}

Case random_case(i64 n, std::mt19937& gen, int max_length = 40) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); };
  Case c;
  const int num_inputs = pick(1, 4);
  const int num_scalars = pick(0, 3);
  c.program = random_program(gen, num_inputs, num_scalars, pick(1, max_length));
  c.layout = random_shape(n, gen);
  for (int i = 0; i < num_inputs; ++i) c.inputs.push_back(random_input(c.layout, Pattern::any, gen));
  for (int k = 0; k < num_scalars; ++k) c.scalars.push_back(random_value(gen, -3.f, 3.f));
  c.what = "n = " + std::to_string(n) + ", shape [";
  for (int d = 0; d < c.layout.ndim; ++d)
    c.what += (d ? ", " : "") + std::to_string(c.layout.shape[static_cast<std::size_t>(d)]);
  c.what += "], key " + structure_key(c.program, c.layout) + "\n" + describe(c.program);
  return c;
}

// The flat offset input i reads for output element e (independent of the interpreter's odometer).
i64 offset_of(const FusedLayout& l, std::size_t input, i64 e) {
  i64 off = 0;
  for (int d = l.ndim - 1; d >= 0; --d) {
    const auto du = static_cast<std::size_t>(d);
    off += (e % l.shape[du]) * l.strides[input][du];
    e /= l.shape[du];
  }
  return off;
}

// ---------------------------------------------------------------------------------------------
// references

// The same program run unfused: each load materialized, each instruction one call of cpu/ops.hpp
// over the whole tensor. Buffers are dropped after their last reader.
std::vector<std::vector<float>> eval_unfused(const Case& c) {
  const FusedProgram& p = c.program;
  const i64 n = c.layout.numel();
  const auto nu = static_cast<std::size_t>(n);
  std::vector<int> last(p.code.size(), -1);
  for (std::size_t v = 0; v < p.code.size(); ++v) {
    const FusedInstr& in = p.code[v];
    if (in.kind == FusedKind::load) continue;
    const u16 operands[] = {in.a, in.b, in.c};
    for (int k = 0; k < info(in.op).tensors; ++k) last[operands[k]] = static_cast<int>(v);
  }
  for (u16 o : p.outputs) last[o] = static_cast<int>(p.code.size());
  std::vector<std::vector<float>> val(p.code.size());
  for (std::size_t v = 0; v < p.code.size(); ++v) {
    const FusedInstr& in = p.code[v];
    auto& out = val[v];
    out.resize(nu);
    if (in.kind == FusedKind::load) {
      const float* src = c.inputs[in.a].data();
      for (i64 e = 0; e < n; ++e) out[static_cast<std::size_t>(e)] = src[offset_of(c.layout, in.a, e)];
    } else if (n > 0) {
      const u16 operands[] = {in.a, in.b, in.c};
      std::vector<const float*> args;
      for (int k = 0; k < info(in.op).tensors; ++k) args.push_back(val[operands[k]].data());
      one_op::run(in.op, args, out.data(), n, c.scalars.data() + in.s);
    }
    for (std::size_t u = 0; u < v; ++u)
      if (last[u] == static_cast<int>(v)) val[u] = {};
  }
  std::vector<std::vector<float>> outs;
  for (u16 o : p.outputs) outs.push_back(val[o]);
  return outs;
}

// A float64 value with a bound on how far the float evaluation of the same expression can be from
// it: each op propagates its operands' bounds through the function's Lipschitz constant (or the
// exact interval bound for exp, log, sqrt, mul and div) and adds its own rounding, a few units in
// the last place for libm functions. `ok` is false where the bound says nothing: an operand
// interval that crosses a domain edge (log, sqrt, a divisor near 0) or magnitudes near float's
// overflow. A NaN with ok set is a NaN the float evaluation must produce too.
struct Bounded {
  double v = 0;
  double err = 0;
  bool ok = true;
};

constexpr double kUnit = 0x1p-24;      // float's unit roundoff
constexpr double kUnderflow = 0x1p-140;  // absolute slack per rounding, for subnormal results

Bounded rounded(double r, double err, double ulps) {
  Bounded b{r, err + ulps * kUnit * (std::fabs(r) + err) + (ulps > 0 ? kUnderflow : 0.0), true};
  if (std::isnan(r)) return b;
  if (!std::isfinite(r) || !std::isfinite(b.err) || std::fabs(r) + b.err > 1e37) b.ok = false;
  return b;
}

constexpr Bounded kUnreliable{0, 0, false};
constexpr Bounded kCertainNaN{std::numeric_limits<double>::quiet_NaN(), 0, true};

double sigmoid_d(double x) { return 1.0 / (1.0 + std::exp(-x)); }

Bounded apply_unary(ElementwiseOp op, Bounded a) {
  if (!a.ok) return kUnreliable;
  if (std::isnan(a.v)) return kCertainNaN;
  const double x = a.v, e = a.err;
  switch (op) {
    case ElementwiseOp::neg: return rounded(-x, e, 0);
    case ElementwiseOp::abs: return rounded(std::fabs(x), e, 0);
    case ElementwiseOp::relu: return rounded(x < 0 ? 0.0 : x, e, 0);
    case ElementwiseOp::exp: {
      const double r = std::exp(x);
      return rounded(r, r * std::expm1(e), 4);
    }
    case ElementwiseOp::log:
      if (x - e > 0) return rounded(std::log(x), -std::log1p(-e / x), 4);
      return x + e < 0 ? kCertainNaN : kUnreliable;
    case ElementwiseOp::sqrt:
      if (x - e >= 0) {
        const double r = std::sqrt(x);
        return rounded(r, e == 0 ? 0.0 : e / (r + std::sqrt(x - e)), 1);
      }
      return x + e < 0 ? kCertainNaN : kUnreliable;
    case ElementwiseOp::rsqrt:
      if (x - e > 0) return rounded(1.0 / std::sqrt(x), 0.5 * e * std::pow(x - e, -1.5), 2);
      return x + e < 0 ? kCertainNaN : kUnreliable;
    case ElementwiseOp::tanh: return rounded(std::tanh(x), e, 8);
    case ElementwiseOp::sigmoid: return rounded(sigmoid_d(x), 0.25 * e, 16);
    case ElementwiseOp::silu: return rounded(x * sigmoid_d(x), 1.1 * e, 16);
    case ElementwiseOp::gelu: return rounded(0.5 * x * std::erfc(-x / std::numbers::sqrt2), 1.2 * e, 4);
    case ElementwiseOp::gelu_tanh: {
      const double u = std::sqrt(2.0 / std::numbers::pi) * (x + 0.044715 * x * x * x);
      return rounded(x * sigmoid_d(2.0 * u), 1.2 * e, 4);
    }
    case ElementwiseOp::erf: return rounded(std::erf(x), 1.13 * e, 4);
    case ElementwiseOp::softplus: return rounded(x > 30 ? x + std::exp(-x) : std::log1p(std::exp(x)), e, 8);
    default: return kUnreliable;  // not an op of one f32 operand
  }
}

Bounded apply_binary(ElementwiseOp op, Bounded a, Bounded b) {
  if ((a.ok && std::isnan(a.v)) || (b.ok && std::isnan(b.v))) return kCertainNaN;
  if (!a.ok || !b.ok) return kUnreliable;
  switch (op) {
    case ElementwiseOp::add:
    case ElementwiseOp::add_scalar: return rounded(a.v + b.v, a.err + b.err, 1);
    case ElementwiseOp::sub:
    case ElementwiseOp::sub_scalar: return rounded(a.v - b.v, a.err + b.err, 1);
    case ElementwiseOp::mul:
    case ElementwiseOp::mul_scalar:
      return rounded(a.v * b.v, std::fabs(a.v) * b.err + std::fabs(b.v) * a.err + a.err * b.err, 1);
    case ElementwiseOp::div:
    case ElementwiseOp::div_scalar: {
      const double m = std::fabs(b.v);
      if (m - b.err <= 0) return kUnreliable;
      return rounded(a.v / b.v, (a.err * m + std::fabs(a.v) * b.err) / (m * (m - b.err)), 1);
    }
    case ElementwiseOp::maximum:
    case ElementwiseOp::maximum_scalar: return rounded(std::max(a.v, b.v), std::max(a.err, b.err), 0);
    case ElementwiseOp::minimum:
    case ElementwiseOp::minimum_scalar: return rounded(std::min(a.v, b.v), std::max(a.err, b.err), 0);
    case ElementwiseOp::pow_scalar: {  // b is an exact scalar exponent
      const double x = a.v, e = a.err, y = b.v;
      if (x - e > 0) {
        const double r = std::pow(x, y);
        return rounded(r, std::fabs(r) * std::expm1(std::fabs(y) * -std::log1p(-e / x)), 8);
      }
      if (x + e < 0 && y != std::floor(y)) return kCertainNaN;
      return kUnreliable;
    }
    default: return kUnreliable;  // not an op of two f32 operands
  }
}

std::vector<Bounded> eval_bounded(const Case& c, i64 e) {
  const FusedProgram& p = c.program;
  std::vector<Bounded> val(p.code.size());
  for (std::size_t v = 0; v < p.code.size(); ++v) {
    const FusedInstr& in = p.code[v];
    if (in.kind == FusedKind::load) {
      val[v] = {c.inputs[in.a].data()[offset_of(c.layout, in.a, e)], 0, true};
      continue;
    }
    const ElementwiseInfo& op = info(in.op);
    if (op.tensors == 1 && op.scalars == 0) val[v] = apply_unary(in.op, val[in.a]);
    else if (op.tensors == 2 && op.scalars == 0) val[v] = apply_binary(in.op, val[in.a], val[in.b]);
    else if (op.tensors == 1 && op.scalars == 1)
      val[v] = apply_binary(in.op, val[in.a], Bounded{c.scalars[in.s], 0, true});
    else val[v] = kUnreliable;
  }
  std::vector<Bounded> outs;
  for (u16 o : p.outputs) outs.push_back(val[o]);
  return outs;
}

// ---------------------------------------------------------------------------------------------
// running and comparing

std::uint32_t bits(float x) { return std::bit_cast<std::uint32_t>(x); }

// Output buffers of n floats plus a guard, all poisoned.
struct Outputs {
  Outputs(std::size_t count, i64 n) : n_(n), bufs(count, std::vector<float>(static_cast<std::size_t>(n + kGuard), std::bit_cast<float>(kPoisonBits))) {
    for (auto& b : bufs) ptrs.push_back(b.data());
  }
  // Every element written (nothing left poisoned), nothing past the end touched.
  void expect_written(const std::string& ctx) const {
    for (std::size_t j = 0; j < bufs.size(); ++j) {
      i64 unwritten = 0, first = -1;
      for (i64 i = 0; i < n_; ++i)
        if (bits(bufs[j][static_cast<std::size_t>(i)]) == kPoisonBits && unwritten++ == 0) first = i;
      EXPECT_EQ(unwritten, 0) << ctx << "\noutput " << j << ": " << unwritten << " of " << n_
                              << " elements not written, first at " << first;
      for (i64 i = n_; i < n_ + kGuard; ++i)
        if (bits(bufs[j][static_cast<std::size_t>(i)]) != kPoisonBits) {
          ADD_FAILURE() << ctx << "\noutput " << j << ": written past its end (element " << i << ")";
          break;
        }
    }
  }
  i64 n_;
  std::vector<std::vector<float>> bufs;
  std::vector<void*> ptrs;
};

// Fused against unfused: the same float math in the same order, so equal up to (in practice
// exactly) the last bit; NaN where the other is NaN, the same infinity.
bool same_float(float got, float want) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  return std::fabs(static_cast<double>(got) - want) <= 1e-6 * std::fabs(static_cast<double>(want)) + 1e-38;
}

void expect_matches_unfused(const std::string& ctx, const Outputs& got, const std::vector<std::vector<float>>& want) {
  got.expect_written(ctx);
  for (std::size_t j = 0; j < want.size(); ++j) {
    i64 bad = 0;
    for (std::size_t i = 0; i < want[j].size(); ++i)
      if (!same_float(got.bufs[j][i], want[j][i]) && bad++ < 3)
        ADD_FAILURE() << ctx << "\noutput " << j << " element " << i << ": fused " << got.bufs[j][i] << ", unfused "
                      << want[j][i];
    EXPECT_EQ(bad, 0) << ctx << "\noutput " << j << ": " << bad << " of " << want[j].size() << " elements differ";
  }
}

struct Float64Stats {
  i64 checked = 0;   // finite, bounded
  i64 nan = 0;       // NaN for certain
  i64 skipped = 0;   // no useful bound
};

// The float results against float64 within each element's propagated bound (twice, for slack).
void expect_matches_float64(const std::string& ctx, const Case& c, const Outputs& got, Float64Stats& stats) {
  const i64 n = c.layout.numel();
  std::vector<i64> sample;  // every element, or a spread sample and the last
  const i64 step = n <= 70000 ? 1 : n / 16384;
  for (i64 e = 0; e < n; e += step) sample.push_back(e);
  if (n > 0 && sample.back() != n - 1) sample.push_back(n - 1);
  i64 bad = 0;
  for (i64 e : sample) {
    const auto ref = eval_bounded(c, e);
    for (std::size_t j = 0; j < ref.size(); ++j) {
      const Bounded& r = ref[j];
      const float f = got.bufs[j][static_cast<std::size_t>(e)];
      bool good = true;
      if (!r.ok) {
        ++stats.skipped;
        continue;
      }
      if (std::isnan(r.v)) {
        ++stats.nan;
        good = std::isnan(f);
      } else {
        ++stats.checked;
        good = std::fabs(static_cast<double>(f) - r.v) <= 2 * r.err;
      }
      if (!good && bad++ < 3)
        ADD_FAILURE() << ctx << "\noutput " << j << " element " << e << ": fused " << f << ", float64 " << r.v
                      << " +- " << r.err;
    }
  }
  EXPECT_EQ(bad, 0) << ctx;
}

// Runs the case's program with the given options into fresh poisoned outputs.
Outputs run(const Case& c, const FusedRunOptions& options) {
  Outputs out(c.program.outputs.size(), c.layout.numel());
  const auto in = c.input_ptrs();
  cpu::run_fused(c.program, c.layout, in.data(), out.ptrs.data(), c.scalars.data(), options);
  return out;
}

Outputs run(const Case& c) {
  Outputs out(c.program.outputs.size(), c.layout.numel());
  const auto in = c.input_ptrs();
  cpu::run_fused(c.program, c.layout, in.data(), out.ptrs.data(), c.scalars.data());
  return out;
}

FusedRunOptions single_thread(i64 chunk) {
  FusedRunOptions o;
  o.chunk = chunk;
  o.parallel_min = std::numeric_limits<i64>::max();
  return o;
}

FusedRunOptions on_pool(ThreadPool& pool, i64 chunk) {
  FusedRunOptions o;
  o.chunk = chunk;
  o.parallel_min = 0;
  o.pool = &pool;
  return o;
}

// ---------------------------------------------------------------------------------------------
// random programs

TEST(FusedCpu, RandomProgramsMatchUnfusedAndFloat64) {
  struct Size {
    i64 n;
    int programs;
  };
  const Size sizes[] = {{0, 20}, {1, 40}, {3, 40}, {1023, 30}, {4097, 20}, {65537, 8}, {i64{1} << 20, 3}};
  const i64 chunks[] = {1, 5, 64, 1000, 4096};
  ThreadPool pool(3);
  std::mt19937 gen(20240611);
  Float64Stats stats;
  for (const Size& s : sizes)
    for (int k = 0; k < s.programs; ++k) {
      const Case c = random_case(s.n, gen);
      ASSERT_NO_THROW(validate(c.program, c.layout)) << c.what;
      const auto want = eval_unfused(c);
      const Outputs fused = run(c);  // the default: chunked, split over the shared pool when large
      expect_matches_unfused(c.what + "\n(default options)", fused, want);
      expect_matches_float64(c.what, c, fused, stats);
      const i64 chunk = chunks[std::uniform_int_distribution<int>(0, 4)(gen)];
      if (s.n <= 65537)
        expect_matches_unfused(c.what + "\n(single thread, chunk " + std::to_string(chunk) + ")",
                               run(c, single_thread(chunk)), want);
      expect_matches_unfused(c.what + "\n(pool of 3, chunk " + std::to_string(std::max<i64>(chunk, 64)) + ")",
                             run(c, on_pool(pool, std::max<i64>(chunk, 64))), want);
      if (::testing::Test::HasFailure()) return;
    }
  const i64 total = stats.checked + stats.nan + stats.skipped;
  std::printf("float64 comparison: %lld bounded, %lld certain NaN, %lld without a bound, of %lld\n",
              static_cast<long long>(stats.checked), static_cast<long long>(stats.nan),
              static_cast<long long>(stats.skipped), static_cast<long long>(total));
  EXPECT_GT(stats.checked, total / 3) << "too few elements had a usable float64 bound";
}

// Every op alone, and every op after a broadcast load, against the one-op kernels: bit for bit.
TEST(FusedCpu, EachOpEqualsItsUnfusedKernel) {
  std::mt19937 gen(7);
  const i64 n = 4097;
  for (UnaryOp op : kUnaryOps)
    for (Pattern pattern : {Pattern::contiguous, Pattern::broadcast}) {
      Case c;
      c.program = make_program({load(0), unary(op, 0)}, {1}, 1, 0);
      c.layout.ndim = 2;
      c.layout.shape[0] = 17;
      c.layout.shape[1] = 241;
      c.inputs.push_back(random_input(c.layout, pattern, gen, -6.f, 6.f));
      const auto want = eval_unfused(c);
      const Outputs got = run(c);
      got.expect_written(name(op));
      for (i64 i = 0; i < n; ++i) {
        const float g = got.bufs[0][static_cast<std::size_t>(i)], w = want[0][static_cast<std::size_t>(i)];
        ASSERT_TRUE(bits(g) == bits(w) || (std::isnan(g) && std::isnan(w))) << name(op) << " element " << i;
      }
    }
  for (BinaryOp op : kBinaryOps)
    for (bool with_scalar : {false, true}) {
      Case c;
      c.program = with_scalar ? make_program({load(0), scalar_op(op, 0, 0)}, {1}, 1, 1)
                              : make_program({load(0), load(1), binary(op, 0, 1)}, {2}, 2, 0);
      c.layout.ndim = 1;
      c.layout.shape[0] = n;
      c.inputs.push_back(random_input(c.layout, Pattern::contiguous, gen));
      if (!with_scalar) c.inputs.push_back(random_input(c.layout, Pattern::contiguous, gen));
      c.scalars = {0.75f};
      const auto want = eval_unfused(c);
      const Outputs got = run(c);
      got.expect_written(name(op));
      for (i64 i = 0; i < n; ++i)
        ASSERT_EQ(bits(got.bufs[0][static_cast<std::size_t>(i)]), bits(want[0][static_cast<std::size_t>(i)]))
            << name(op) << (with_scalar ? " (scalar)" : "") << " element " << i;
    }
}

// The baseline (SSE2) loops and the AVX2 loops give bit-identical results, equal to the unfused
// kernels' (no FMA, and each vectorized op rounds exactly as its scalar form).
TEST(FusedCpu, PortableAndAvx2LoopsAgreeBitForBit) {
  struct ForcePortable {
    bool have_avx2 = cpu::detail::fused_force_portable(false);
    ~ForcePortable() { cpu::detail::fused_force_portable(false); }
  } guard;
  if (!guard.have_avx2) std::printf("no AVX2 on this machine: both runs use the baseline loops\n");
  std::mt19937 gen(31);
  for (int k = 0; k < 40; ++k) {
    const Case c = random_case(k % 2 ? 4099 : 517, gen);
    const auto want = eval_unfused(c);
    cpu::detail::fused_force_portable(true);
    const Outputs portable = run(c, single_thread(k % 3 ? 256 : 2048));
    cpu::detail::fused_force_portable(false);
    const Outputs wide = run(c, single_thread(k % 3 ? 256 : 2048));
    expect_matches_unfused(c.what + "\n(baseline loops)", portable, want);
    expect_matches_unfused(c.what + "\n(avx2 loops)", wide, want);
    for (std::size_t j = 0; j < want.size(); ++j)
      for (std::size_t i = 0; i < want[j].size(); ++i) {
        const float p = portable.bufs[j][i], w = wide.bufs[j][i], u = want[j][i];
        ASSERT_TRUE((bits(p) == bits(w) && bits(w) == bits(u)) || (std::isnan(p) && std::isnan(w) && std::isnan(u)))
            << c.what << "\noutput " << j << " element " << i << ": baseline " << p << ", avx2 " << w << ", unfused " << u;
      }
  }
}

// The benchmark's chain: 8 ops, one input, one scalar per step, at a size that uses the pool.
TEST(FusedCpu, ChainOfEightLarge) {
  std::mt19937 gen(8);
  Case c;
  c.program = make_program({load(0), scalar_op(BinaryOp::mul, 0, 0), scalar_op(BinaryOp::add, 1, 1),
                            unary(UnaryOp::relu, 2), scalar_op(BinaryOp::sub, 3, 2), unary(UnaryOp::tanh, 4),
                            scalar_op(BinaryOp::maximum, 5, 3), unary(UnaryOp::abs, 6), unary(UnaryOp::neg, 7)},
                           {8}, 1, 4);
  c.layout.ndim = 1;
  c.layout.shape[0] = i64{1} << 20;
  c.inputs.push_back(random_input(c.layout, Pattern::contiguous, gen));
  c.scalars = {1.5f, 0.25f, 2.f, -0.5f};
  const auto want = eval_unfused(c);
  expect_matches_unfused("chain of 8", run(c), want);
  expect_matches_unfused("chain of 8, single thread", run(c, single_thread(2048)), want);
}

// An output that is a plain load is still written (a copy of the input, or of its broadcast); one
// value may feed several outputs; an output may be any value, not only the last.
TEST(FusedCpu, OutputsThatAreLoadsOrRepeated) {
  std::mt19937 gen(9);
  for (Pattern pattern : {Pattern::contiguous, Pattern::broadcast, Pattern::strided})
    for (i64 chunk : {i64{3}, i64{2048}}) {
      Case c;
      c.program = make_program({load(0), unary(UnaryOp::exp, 0), load(0), binary(BinaryOp::add, 1, 2)}, {0, 3, 3, 2, 1}, 1, 0);
      c.layout.ndim = 3;
      c.layout.shape = {5, 7, 9};
      c.inputs.push_back(random_input(c.layout, pattern, gen));
      const auto want = eval_unfused(c);
      expect_matches_unfused("loads and repeated outputs", run(c, single_thread(chunk)), want);
      for (i64 e = 0; e < c.layout.numel(); ++e)
        ASSERT_EQ(want[0][static_cast<std::size_t>(e)], c.inputs[0].data()[offset_of(c.layout, 0, e)]);
    }
}

// Each output may be the very buffer of a contiguous input (in-place update): later instructions
// of the program still read the input's old values.
TEST(FusedCpu, OutputAliasingAContiguousInput) {
  std::mt19937 gen(10);
  for (i64 n : {i64{1}, i64{1023}, i64{1} << 19}) {
    Case c;
    // v1 = exp(x) goes to x's own buffer; v3 = x + v1 and v2 (= y * 2) read x and y after that
    c.program = make_program({load(0), unary(UnaryOp::exp, 0), load(1), binary(BinaryOp::add, 0, 1),
                              scalar_op(BinaryOp::mul, 2, 0)},
                             {1, 3, 4}, 2, 1);
    c.layout.ndim = 1;
    c.layout.shape[0] = n;
    c.inputs.push_back(random_input(c.layout, Pattern::contiguous, gen));
    c.inputs.push_back(random_input(c.layout, Pattern::contiguous, gen));
    c.scalars = {2.f};
    const auto want = eval_unfused(c);
    for (bool pooled : {false, true}) {
      Case fresh = c;
      std::vector<float> other0(static_cast<std::size_t>(n));
      void* outs[] = {fresh.inputs[0].storage.data(), other0.data(), fresh.inputs[1].storage.data()};
      const auto in = fresh.input_ptrs();
      ThreadPool pool(1);
      cpu::run_fused(fresh.program, fresh.layout, in.data(), outs, fresh.scalars.data(),
                     pooled ? on_pool(pool, 256) : single_thread(256));
      for (i64 i = 0; i < n; ++i) {
        const auto iu = static_cast<std::size_t>(i);
        ASSERT_TRUE(same_float(fresh.inputs[0].storage[iu], want[0][iu])) << "n " << n << " element " << i;
        ASSERT_TRUE(same_float(other0[iu], want[1][iu])) << "n " << n << " element " << i;
        ASSERT_TRUE(same_float(fresh.inputs[1].storage[iu], want[2][iu])) << "n " << n << " element " << i;
      }
    }
  }
}

// NaN and infinities flow through fused chains exactly as through the unfused kernels, and a NaN
// made in the middle of a chain reaches the output.
TEST(FusedCpu, NaNAndInfPropagation) {
  const std::vector<float> special = {kNaN, kInf, -kInf, 0.f, -0.f, 1e-40f, -1e-40f, kFloatMax, -kFloatMax,
                                      1.f, -1.f, 88.f, -88.f, 1e-30f, 3.f};
  const i64 n = static_cast<i64>(special.size());
  // every unary and binary op of special x special, alone and inside a chain
  for (UnaryOp op : kUnaryOps) {
    Case c;
    c.program = make_program({load(0), unary(op, 0), scalar_op(BinaryOp::mul, 1, 0), unary(UnaryOp::neg, 2)}, {1, 3}, 1, 1);
    c.layout.ndim = 1;
    c.layout.shape[0] = n;
    c.layout.strides = {{1}};
    c.inputs.push_back({special, 0});
    c.scalars = {kInf};
    expect_matches_unfused(std::string("special values, ") + name(op), run(c, single_thread(4)), eval_unfused(c));
  }
  for (BinaryOp op : kBinaryOps) {
    Case c;
    c.program = make_program({load(0), load(1), binary(op, 0, 1), scalar_op(op, 2, 0), scalar_op(op, 0, 1)}, {2, 3, 4}, 2, 2);
    c.layout.ndim = 2;
    c.layout.shape[0] = n;
    c.layout.shape[1] = n;
    c.layout.strides = {{1, 0}, {0, 1}};  // an outer product: every pair of special values
    c.inputs.push_back({special, 0});
    c.inputs.push_back({special, 0});
    c.scalars = {kNaN, -kInf};
    expect_matches_unfused(std::string("special values, ") + name(op), run(c, single_thread(7)), eval_unfused(c));
  }
  // explicit expectations
  Case c;
  c.program = make_program({load(0), unary(UnaryOp::sqrt, 0), scalar_op(BinaryOp::add, 1, 0),
                            scalar_op(BinaryOp::maximum, 2, 1), unary(UnaryOp::relu, 3), unary(UnaryOp::log, 0),
                            binary(BinaryOp::div, 0, 0), unary(UnaryOp::exp, 0), scalar_op(BinaryOp::minimum, 0, 0)},
                           {4, 5, 6, 7, 8}, 1, 2);
  c.layout.ndim = 1;
  c.layout.shape[0] = 5;
  c.layout.strides = {{1}};
  c.inputs.push_back({{-1.f, 0.f, kInf, kNaN, 4.f}, 0});
  c.scalars = {1.f, 0.f};
  const Outputs o = run(c);
  o.expect_written("explicit");
  const auto& relu_chain = o.bufs[0];  // relu(max(sqrt(x) + 1, 0))
  EXPECT_TRUE(std::isnan(relu_chain[0]));
  EXPECT_EQ(relu_chain[1], 1.f);
  EXPECT_EQ(relu_chain[2], kInf);
  EXPECT_TRUE(std::isnan(relu_chain[3]));
  EXPECT_EQ(relu_chain[4], 3.f);
  const auto& logs = o.bufs[1];
  EXPECT_TRUE(std::isnan(logs[0]));
  EXPECT_EQ(logs[1], -kInf);
  EXPECT_EQ(logs[2], kInf);
  EXPECT_TRUE(std::isnan(logs[3]));
  const auto& self_div = o.bufs[2];  // x / x
  EXPECT_TRUE(std::isnan(self_div[1]));
  EXPECT_TRUE(std::isnan(self_div[2]));
  EXPECT_EQ(self_div[4], 1.f);
  EXPECT_EQ(o.bufs[3][2], kInf);  // exp(inf)
  EXPECT_TRUE(std::isnan(o.bufs[3][3]));
  EXPECT_TRUE(std::isnan(o.bufs[4][3]));  // min(NaN, 1)
  EXPECT_EQ(o.bufs[4][2], 1.f);
}

// A broadcast-heavy layout: a bias row, a per-row scale and a scalar-like input, with the inputs'
// dims in various storage orders; large enough for the pool.
TEST(FusedCpu, BroadcastLayoutsLarge) {
  std::mt19937 gen(11);
  Case c;
  c.program = make_program({load(0), load(1), binary(BinaryOp::add, 0, 1), load(2), binary(BinaryOp::mul, 2, 3),
                            unary(UnaryOp::gelu_tanh, 4), load(3), binary(BinaryOp::sub, 5, 6)},
                           {7}, 4, 0);
  c.layout.ndim = 2;
  c.layout.shape[0] = 1000;
  c.layout.shape[1] = 1031;
  c.layout.strides = {{1031, 1}, {0, 1}, {1, 0}, {0, 0}};
  for (i64 span : {i64{1000} * 1031, i64{1031}, i64{1000}, i64{1}}) {
    Input in;
    in.storage.resize(static_cast<std::size_t>(span));
    for (auto& x : in.storage) x = random_value(gen);
    c.inputs.push_back(std::move(in));
  }
  const auto want = eval_unfused(c);
  expect_matches_unfused("bias, row scale, scalar", run(c), want);
  // the same with the first input transposed in storage
  Case t = c;
  for (i64 r = 0; r < 1000; ++r)
    for (i64 k = 0; k < 1031; ++k)
      t.inputs[0].storage[static_cast<std::size_t>(k * 1000 + r)] = c.inputs[0].storage[static_cast<std::size_t>(r * 1031 + k)];
  t.layout.strides[0] = {1, 1000};
  expect_matches_unfused("transposed first input", run(t), want);
}

// Several threads (think: several CPU streams) run large fused programs at once: one gets the
// pool, the others run on their own thread; all results are right.
TEST(FusedCpu, ConcurrentCallers) {
  std::mt19937 gen(12);
  std::vector<Case> cases;
  std::vector<std::vector<std::vector<float>>> wants;
  for (int t = 0; t < 4; ++t) {
    cases.push_back(random_case(i64{1} << 18, gen, 12));
    wants.push_back(eval_unfused(cases.back()));
  }
  std::vector<Outputs> got;
  for (const auto& c : cases) got.emplace_back(c.program.outputs.size(), c.layout.numel());
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < cases.size(); ++t)
    threads.emplace_back([&, t] {
      const auto in = cases[t].input_ptrs();
      for (int rep = 0; rep < 3; ++rep)
        cpu::run_fused(cases[t].program, cases[t].layout, in.data(), got[t].ptrs.data(), cases[t].scalars.data());
    });
  for (auto& th : threads) th.join();
  for (std::size_t t = 0; t < cases.size(); ++t) expect_matches_unfused(cases[t].what, got[t], wants[t]);
}

// ---------------------------------------------------------------------------------------------
// fused reductions: an element-wise prologue evaluated over a domain, one value reduced along one
// axis of it. Checked against a float64 reduction of the bounded float64 prologue values.

// A layout over the domain `dims`, inputs to be added, reducing dim `dim`.
FusedLayout reduce_layout(const std::vector<i64>& dims, int dim) {
  FusedLayout l;
  l.ndim = static_cast<int>(dims.size());
  for (std::size_t d = 0; d < dims.size(); ++d) l.shape[d] = dims[d];
  l.reduce = {1, dims[static_cast<std::size_t>(dim)], 1};
  for (int d = 0; d < dim; ++d) l.reduce.outer *= dims[static_cast<std::size_t>(d)];
  for (std::size_t d = static_cast<std::size_t>(dim) + 1; d < dims.size(); ++d) l.reduce.inner *= dims[d];
  return l;
}

// The element-wise program with its (single) output reduced instead of written.
FusedProgram reducing(FusedProgram p, ReduceOp op) {
  p.reduction = FusedReduction{op, p.outputs.front()};
  p.outputs = {p.outputs.front()};
  p.output_dtypes.assign(p.outputs.size(), defer::DType::f32);
  return p;
}

const char* reduce_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::mean: return "mean";
    case ReduceOp::max: return "max";
    case ReduceOp::min: return "min";
    case ReduceOp::argmax: return "argmax";
  }
  return "?";
}

i64 reduce_outputs(const FusedLayout& l) { return l.reduce.outer * l.reduce.inner; }

Outputs run_reduce(const Case& c, const FusedRunOptions* options = nullptr) {
  Outputs out(1, reduce_outputs(c.layout));
  const auto in = c.input_ptrs();
  if (options) cpu::run_fused(c.program, c.layout, in.data(), out.ptrs.data(), c.scalars.data(), *options);
  else cpu::run_fused(c.program, c.layout, in.data(), out.ptrs.data(), c.scalars.data());
  return out;
}

struct ReduceStats {
  i64 checked = 0;  // a finite value within its bound
  i64 nan = 0;      // NaN for certain
  i64 skipped = 0;  // some element without a usable bound
};

// Output `r` (= o * inner + i) against the float64 reduction of the prologue's bounded values: the
// float elements are within 2 * err of the float64 ones, the double accumulation adds at most
// n * 2^-52 of the absolute sum, and the final rounding to float half an ulp (one, for slack).
bool reduce_output_ok(const Case& c, i64 r, float got, ReduceStats& stats, std::string& why) {
  const auto& ax = c.layout.reduce;
  const ReduceOp op = c.program.reduction->op;
  const i64 o = r / ax.inner, i = r % ax.inner;
  double sum = 0, err = 0, abs_sum = 0, mx = -std::numeric_limits<double>::infinity(), mx_err = 0;
  double mn = std::numeric_limits<double>::infinity();
  bool nan = false;
  for (i64 k = 0; k < ax.n; ++k) {
    const Bounded b = eval_bounded(c, (o * ax.n + k) * ax.inner + i)[0];
    if (!b.ok) {
      ++stats.skipped;
      return true;
    }
    if (std::isnan(b.v)) {
      nan = true;
      continue;
    }
    sum += b.v;
    err += 2 * b.err;
    abs_sum += std::fabs(b.v);
    mx = std::max(mx, b.v);
    mn = std::min(mn, b.v);
    mx_err = std::max(mx_err, 2 * b.err);
  }
  if (nan || (ax.n == 0 && op != ReduceOp::sum)) {
    ++stats.nan;
    why = "expected NaN";
    return std::isnan(got);
  }
  double want = 0, tol = 0;
  const double accumulate = static_cast<double>(ax.n) * 0x1p-52 * abs_sum;
  switch (op) {
    case ReduceOp::sum:
      want = sum;
      tol = err + accumulate;
      break;
    case ReduceOp::mean:
      want = sum / static_cast<double>(ax.n);
      tol = (err + accumulate) / static_cast<double>(ax.n);
      break;
    case ReduceOp::max:
      want = mx;
      tol = mx_err;
      break;
    case ReduceOp::min:
      want = mn;
      tol = mx_err;
      break;
    case ReduceOp::argmax: ADD_FAILURE() << "argmax is never fused"; return false;
  }
  tol += 0x1p-23 * std::fabs(want) + 1e-37;
  ++stats.checked;
  why = "float64 " + std::to_string(want) + " +- " + std::to_string(tol);
  return std::fabs(static_cast<double>(got) - want) <= tol;
}

// Every output written exactly once and right; `every` > 1 checks a spread sample and the last.
void expect_reduce_matches_float64(const std::string& ctx, const Case& c, const Outputs& got, ReduceStats& stats,
                                   i64 every = 1) {
  got.expect_written(ctx);
  const i64 outputs = reduce_outputs(c.layout);
  i64 bad = 0;
  for (i64 r = 0; r < outputs; r = (r + every < outputs || r == outputs - 1) ? r + every : outputs - 1) {
    std::string why;
    const float g = got.bufs[0][static_cast<std::size_t>(r)];
    if (!reduce_output_ok(c, r, g, stats, why) && bad++ < 3)
      ADD_FAILURE() << ctx << "\noutput " << r << ": fused " << g << ", " << why;
  }
  EXPECT_EQ(bad, 0) << ctx;
}

std::string reduce_what(const Case& c, const std::vector<i64>& dims, int dim) {
  std::string s = std::string(reduce_name(c.program.reduction->op)) + " over dim " + std::to_string(dim) + " of [";
  for (std::size_t d = 0; d < dims.size(); ++d) s += (d ? ", " : "") + std::to_string(dims[d]);
  const auto& ax = c.layout.reduce;
  s += "] (outer " + std::to_string(ax.outer) + ", n " + std::to_string(ax.n) + ", inner " + std::to_string(ax.inner) +
       "), key " + structure_key(c.program, c.layout) + "\n" + describe(c.program);
  return s;
}

// Prologues: the reduced input alone (read where it lives), a chain over a broadcast bias and a
// second input with scalars, and a positive chain (exp) whose sums are well conditioned.
enum class Prologue { load_only, chain, positive };

Case reduce_case(const std::vector<i64>& dims, int dim, ReduceOp op, Prologue prologue, Pattern first,
                 std::mt19937& gen) {
  Case c;
  c.layout = reduce_layout(dims, dim);
  switch (prologue) {
    case Prologue::load_only:
      c.program = make_program({load(0)}, {0}, 1, 0);
      c.inputs.push_back(random_input(c.layout, first, gen));
      break;
    case Prologue::chain:
      // ((x * y + bias) |> silu) * s0 - s1, maximum with x, then tanh(...) + x
      c.program = make_program({load(0), load(1), load(2), binary(BinaryOp::mul, 0, 1), binary(BinaryOp::add, 3, 2),
                                unary(UnaryOp::silu, 4), scalar_op(BinaryOp::mul, 5, 0), scalar_op(BinaryOp::sub, 6, 1),
                                binary(BinaryOp::maximum, 7, 0), unary(UnaryOp::tanh, 8), binary(BinaryOp::add, 9, 0)},
                               {10}, 3, 2);
      c.inputs.push_back(random_input(c.layout, first, gen));
      c.inputs.push_back(random_input(c.layout, Pattern::any, gen));
      c.inputs.push_back(random_input(c.layout, Pattern::broadcast, gen));
      c.scalars = {random_value(gen, -2.f, 2.f), random_value(gen, -2.f, 2.f)};
      break;
    case Prologue::positive:
      c.program = make_program({load(0), scalar_op(BinaryOp::mul, 0, 0), unary(UnaryOp::exp, 1)}, {2}, 1, 1);
      c.inputs.push_back(random_input(c.layout, first, gen));
      c.scalars = {0.5f};
      break;
  }
  c.program = reducing(c.program, op);
  c.what = reduce_what(c, dims, dim);
  return c;
}

constexpr ReduceOp kReduceOps[] = {ReduceOp::sum, ReduceOp::mean, ReduceOp::max};

struct DomainCase {
  std::vector<i64> dims;
  int dim;
};

// Every op over the first, a middle and the last dim, every walk of the interpreter: rows
// (inner == 1) and columns, short rows sharing a chunk, chunks that start and end inside a row,
// tiles of wide columns (inner > 512) with a narrow last tile, n == 1, a 1-element domain.
TEST(FusedReduceCpu, EveryOpAndDimMatchesFloat64) {
  const DomainCase domains[] = {{{37}, 0},        {{5, 300}, 0},    {{5, 300}, 1},    {{300, 5}, 0},
                                {{300, 5}, 1},    {{4, 7, 9}, 0},   {{4, 7, 9}, 1},   {{4, 7, 9}, 2},
                                {{3, 100, 2}, 1}, {{2, 5, 600}, 0}, {{2, 5, 600}, 1}, {{2, 3, 1100}, 1},
                                {{6, 1, 5}, 1},   {{1}, 0},         {{2, 33, 4, 5}, 2}};
  ThreadPool pool(3);
  std::vector<std::pair<std::string, FusedRunOptions>> runs = {
      {"chunk 1", single_thread(1)}, {"chunk 7", single_thread(7)}, {"chunk 512", single_thread(512)},
      {"pool of 3, chunk 64", on_pool(pool, 64)}};
  std::mt19937 gen(4242);
  ReduceStats stats;
  for (const DomainCase& d : domains)
    for (ReduceOp op : kReduceOps)
      for (Prologue prologue : {Prologue::load_only, Prologue::chain, Prologue::positive}) {
        const Case c = reduce_case(d.dims, d.dim, op, prologue, Pattern::any, gen);
        ASSERT_NO_THROW(validate(c.program, c.layout)) << c.what;
        expect_reduce_matches_float64(c.what + "\n(default options)", c, run_reduce(c), stats);
        for (const auto& [name, options] : runs)
          expect_reduce_matches_float64(c.what + "\n(" + name + ")", c, run_reduce(c, &options), stats);
        if (::testing::Test::HasFailure()) return;
      }
  std::printf("reductions: %lld outputs checked, %lld NaN, %lld without a bound\n",
              static_cast<long long>(stats.checked), static_cast<long long>(stats.nan),
              static_cast<long long>(stats.skipped));
  EXPECT_GT(stats.checked, 20 * (stats.nan + stats.skipped)) << "too few outputs had a usable float64 bound";
}

// Random element-wise DAGs (every op, repeated loads, scalars, any input pattern) with their first
// output reduced: mostly a test that every value a reduction can end on is reduced right.
TEST(FusedReduceCpu, RandomProloguesMatchFloat64) {
  std::mt19937 gen(99);
  ThreadPool pool(2);
  ReduceStats stats;
  for (int k = 0; k < 120; ++k) {
    auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); };
    std::vector<i64> dims;
    const int nd = pick(1, 4);
    for (int d = 0; d < nd; ++d) dims.push_back(pick(1, 3) == 1 ? 1 : pick(2, 24));
    if (k % 10 == 0) dims[static_cast<std::size_t>(pick(0, nd - 1))] = 700;  // tiles or long rows
    const int dim = pick(0, nd - 1);
    Case c;
    const int num_inputs = pick(1, 3), num_scalars = pick(0, 2);
    c.program = reducing(random_program(gen, num_inputs, num_scalars, pick(1, 12)), kReduceOps[k % 3]);
    c.layout = reduce_layout(dims, dim);
    for (int i = 0; i < num_inputs; ++i) c.inputs.push_back(random_input(c.layout, Pattern::any, gen, 0.5f, 2.f));
    for (int s = 0; s < num_scalars; ++s) c.scalars.push_back(random_value(gen, 0.5f, 1.5f));
    c.what = reduce_what(c, dims, dim);
    ASSERT_NO_THROW(validate(c.program, c.layout)) << c.what;
    const FusedRunOptions options = k % 2 ? single_thread(pick(1, 600)) : on_pool(pool, pick(16, 600));
    expect_reduce_matches_float64(c.what, c, run_reduce(c, &options), stats);
    if (::testing::Test::HasFailure()) return;
  }
  std::printf("random prologues: %lld outputs checked, %lld NaN, %lld without a bound\n",
              static_cast<long long>(stats.checked), static_cast<long long>(stats.nan),
              static_cast<long long>(stats.skipped));
  EXPECT_GT(stats.checked, stats.nan + stats.skipped) << "too few outputs had a usable float64 bound";
}

// Domains big enough to be split across the pool: by blocks of short rows, by blocks of columns, by
// tiles of wide columns; and a single long row (one task). Compared on a sample of outputs; the
// single-threaded run must agree with the split one to the last bit or so.
TEST(FusedReduceCpu, LargeDomainsSplitAcrossThreads) {
  const DomainCase domains[] = {{{2048, 1000}, 1}, {{1000, 2048}, 0}, {{64, 500, 64}, 1}, {{1 << 19}, 0}};
  ThreadPool pool(3);
  std::mt19937 gen(5);
  ReduceStats stats;
  int i = 0;
  for (const DomainCase& d : domains)
    for (ReduceOp op : kReduceOps) {
      const Case c = reduce_case(d.dims, d.dim, op, ++i % 2 ? Prologue::chain : Prologue::positive, Pattern::any, gen);
      const Outputs shared = run_reduce(c);  // the default options: the shared pool
      const FusedRunOptions pooled = on_pool(pool, 512);
      const Outputs mine = run_reduce(c, &pooled);
      const FusedRunOptions alone = single_thread(512);
      const Outputs single = run_reduce(c, &alone);
      const i64 outputs = reduce_outputs(c.layout);
      const i64 every = std::max<i64>(1, outputs / 64);
      expect_reduce_matches_float64(c.what + "\n(shared pool)", c, shared, stats, every);
      mine.expect_written(c.what + "\n(pool of 3)");
      single.expect_written(c.what + "\n(single thread)");
      for (i64 r = 0; r < outputs; ++r) {
        const auto ru = static_cast<std::size_t>(r);
        ASSERT_TRUE(same_float(mine.bufs[0][ru], single.bufs[0][ru]) && same_float(shared.bufs[0][ru], single.bufs[0][ru]))
            << c.what << "\noutput " << r << ": pool " << mine.bufs[0][ru] << ", shared " << shared.bufs[0][ru]
            << ", single thread " << single.bufs[0][ru];
      }
      if (::testing::Test::HasFailure()) return;
    }
  EXPECT_EQ(stats.nan + stats.skipped, 0);
}

// Sums accumulate in double, like the unfused kernel: 2^24 followed by a thousand ones (x * 1 in
// the prologue) sums to 2^24 + 1000 exactly, where a float accumulator would stay at 2^24.
TEST(FusedReduceCpu, SumsAccumulateInDouble) {
  for (i64 inner : {i64{1}, i64{3}, i64{700}})
    for (i64 chunk : {i64{1}, i64{64}, i64{4096}}) {
      Case c;
      c.program = reducing(make_program({load(0), scalar_op(BinaryOp::mul, 0, 0)}, {1}, 1, 1), ReduceOp::sum);
      c.layout = reduce_layout({2, 1001, inner}, 1);
      Input x;
      x.storage.assign(static_cast<std::size_t>(2 * 1001 * inner), 1.f);
      for (i64 o = 0; o < 2; ++o)
        for (i64 i = 0; i < inner; ++i) x.storage[static_cast<std::size_t>(o * 1001 * inner + i)] = 16777216.f;
      c.inputs.push_back(x);
      c.layout.strides.push_back({1001 * inner, inner, 1});
      c.scalars = {1.f};
      const FusedRunOptions options = single_thread(chunk);
      const Outputs got = run_reduce(c, &options);
      got.expect_written("double accumulation");
      for (i64 r = 0; r < 2 * inner; ++r)
        ASSERT_EQ(got.bufs[0][static_cast<std::size_t>(r)], 16778216.f) << "inner " << inner << " output " << r;
    }
}

// A NaN anywhere in a reduced row makes max (and sum, mean) NaN, whether it is in the input or
// made by the prologue (log of a negative); rows without one are exact for max. Infinities too.
TEST(FusedReduceCpu, NaNAndInfPropagation) {
  for (const DomainCase& d : {DomainCase{{6, 40}, 1}, DomainCase{{2, 40, 6}, 1}, DomainCase{{2, 40, 600}, 1}})
    for (ReduceOp op : kReduceOps)
      for (bool through_log : {false, true}) {
        std::mt19937 gen(17);
        Case c;
        c.layout = reduce_layout(d.dims, d.dim);
        // through_log: v = exp(log(x)) is x for x > 0 and NaN for x < 0; else v = x + 0
        c.program = through_log ? make_program({load(0), unary(UnaryOp::log, 0), unary(UnaryOp::exp, 1)}, {2}, 1, 0)
                                : make_program({load(0), scalar_op(BinaryOp::add, 0, 0)}, {1}, 1, 1);
        c.program = reducing(c.program, op);
        c.scalars = {0.f};
        c.inputs.push_back(random_input(c.layout, Pattern::contiguous, gen, 0.5f, 4.f));
        const auto& ax = c.layout.reduce;
        std::vector<float>& x = c.inputs[0].storage;
        // Five outputs (o, i): a bad element at the row's end; at its start; +inf; -inf and a bad
        // one; none.
        using Slot = std::pair<i64, i64>;
        const std::vector<Slot> slots = ax.inner == 1 ? std::vector<Slot>{{0, 0}, {1, 0}, {2, 0}, {3, 0}, {4, 0}}
                                                      : std::vector<Slot>{{0, 0}, {0, 1}, {1, 0}, {1, 1}, {0, 2}};
        auto at = [&](Slot s, i64 k) -> float& {
          return x[static_cast<std::size_t>((s.first * ax.n + k) * ax.inner + s.second)];
        };
        const float bad = through_log ? -1.f : kNaN;
        at(slots[0], ax.n - 1) = bad;
        at(slots[1], 0) = bad;
        at(slots[2], ax.n / 2) = kInf;
        at(slots[3], 1) = -kInf;
        at(slots[3], 2) = bad;
        Outputs got = run_reduce(c);
        got.expect_written(c.what);
        auto out = [&](Slot s) { return got.bufs[0][static_cast<std::size_t>(s.first * ax.inner + s.second)]; };
        const std::string ctx = std::string(reduce_name(op)) + (through_log ? " (NaN from log)" : " (NaN input)") +
                                " inner " + std::to_string(ax.inner);
        EXPECT_TRUE(std::isnan(out(slots[0]))) << ctx << ": " << out(slots[0]);
        EXPECT_TRUE(std::isnan(out(slots[1]))) << ctx << ": " << out(slots[1]);
        EXPECT_EQ(out(slots[2]), kInf) << ctx;
        EXPECT_TRUE(std::isnan(out(slots[3]))) << ctx << ": " << out(slots[3]);
        if (op == ReduceOp::max) {  // an untouched row: the exact max (of exp(log(x)) within rounding)
          float m = -kInf;
          for (i64 k = 0; k < ax.n; ++k) m = std::max(m, at(slots[4], k));
          if (through_log) EXPECT_NEAR(out(slots[4]), m, 1e-6f * m) << ctx;
          else EXPECT_EQ(out(slots[4]), m) << ctx;
        } else {
          EXPECT_TRUE(std::isfinite(out(slots[4]))) << ctx << ": " << out(slots[4]);
        }
      }
}

// n == 0 writes the empty reduction (0 for sum, NaN for mean and max) to every output; no outputs
// (outer or inner 0) writes nothing.
TEST(FusedReduceCpu, EmptyReductions) {
  for (ReduceOp op : kReduceOps) {
    Case c;
    c.program = reducing(make_program({load(0), unary(UnaryOp::exp, 0)}, {1}, 1, 0), op);
    c.layout = reduce_layout({3, 0, 4}, 1);
    c.layout.strides.push_back({0, 4, 1});
    c.inputs.push_back(Input{{1.f}, 0});
    ASSERT_NO_THROW(validate(c.program, c.layout));
    const Outputs got = run_reduce(c);
    got.expect_written(reduce_name(op));
    for (i64 r = 0; r < 12; ++r) {
      const float g = got.bufs[0][static_cast<std::size_t>(r)];
      if (op == ReduceOp::sum) EXPECT_EQ(g, 0.f) << r;
      else EXPECT_TRUE(std::isnan(g)) << reduce_name(op) << " " << r << ": " << g;
    }
    for (const DomainCase& d : {DomainCase{{0, 5}, 1}, DomainCase{{5, 0}, 0}}) {
      Case e = c;
      e.layout = reduce_layout(d.dims, d.dim);
      e.layout.strides.push_back({5, 1});
      ASSERT_EQ(reduce_outputs(e.layout), 0);
      ASSERT_NO_THROW(validate(e.program, e.layout));
      run_reduce(e).expect_written("no outputs");  // only the guard, which must stay poisoned
    }
  }
}

// The caller may collapse the domain's shape (make_fused_layout does); the reduce split alone says
// what is reduced, so the results are the same, bit for bit.
TEST(FusedReduceCpu, CollapsedShapeGivesTheSameResult) {
  std::mt19937 gen(3);
  for (ReduceOp op : kReduceOps)
    for (int dim : {0, 1, 2}) {
      const Case c = reduce_case({6, 50, 7}, dim, op, Prologue::positive, Pattern::contiguous, gen);
      Case flat = c;
      flat.layout.ndim = 1;
      flat.layout.shape = {6 * 50 * 7};
      flat.layout.strides = {{1}};
      const Outputs a = run_reduce(c), b = run_reduce(flat);
      b.expect_written(c.what);
      for (std::size_t r = 0; r < a.bufs[0].size(); ++r) ASSERT_EQ(bits(a.bufs[0][r]), bits(b.bufs[0][r])) << c.what << r;
    }
}

// The folding loops' baseline and AVX2 builds keep the same lanes: bit-identical results.
TEST(FusedReduceCpu, PortableAndAvx2LoopsAgreeBitForBit) {
  struct ForcePortable {
    bool have_avx2 = cpu::detail::fused_force_portable(false);
    ~ForcePortable() { cpu::detail::fused_force_portable(false); }
  } guard;
  std::mt19937 gen(12);
  for (const DomainCase& d : {DomainCase{{7, 999}, 1}, DomainCase{{999, 7}, 0}, DomainCase{{3, 40, 700}, 1}})
    for (ReduceOp op : kReduceOps) {
      const Case c = reduce_case(d.dims, d.dim, op, Prologue::chain, Pattern::any, gen);
      const FusedRunOptions options = single_thread(256);
      cpu::detail::fused_force_portable(true);
      const Outputs portable = run_reduce(c, &options);
      cpu::detail::fused_force_portable(false);
      const Outputs wide = run_reduce(c, &options);
      for (std::size_t r = 0; r < portable.bufs[0].size(); ++r)
        ASSERT_EQ(bits(portable.bufs[0][r]), bits(wide.bufs[0][r])) << c.what << "\noutput " << r;
    }
}

// ---------------------------------------------------------------------------------------------
// validate, structure_key, input_access

FusedLayout flat_layout(int inputs, i64 n = 8) {
  FusedLayout l;
  l.ndim = 1;
  l.shape[0] = n;
  for (int i = 0; i < inputs; ++i) l.strides.push_back({1});
  return l;
}

void expect_invalid(const FusedProgram& p, const FusedLayout& l, const std::string& fragment) {
  try {
    validate(p, l);
    ADD_FAILURE() << "validate accepted a program that should fail with \"" << fragment << "\":\n" << describe(p);
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)
        << "message \"" << e.what() << "\" does not mention \"" << fragment << "\"";
  }
}

TEST(FusedProgramValidate, AcceptsWellFormed) {
  EXPECT_NO_THROW(validate(make_program({load(0), load(1), binary(BinaryOp::div, 0, 1), unary(UnaryOp::gelu_tanh, 2),
                                         scalar_op(BinaryOp::minimum, 3, 1)},
                                        {4, 0}, 2, 2),
                           flat_layout(2)));
  FusedLayout zero_d;
  zero_d.strides.push_back({});
  EXPECT_NO_THROW(validate(make_program({load(0)}, {0}, 1, 0), zero_d));
}

TEST(FusedProgramValidate, RejectsMalformed) {
  const FusedLayout l1 = flat_layout(1);
  expect_invalid(make_program({load(0)}, {}, 1, 0), l1, "no outputs");
  expect_invalid(make_program({load(0), unary(UnaryOp::exp, 1)}, {1}, 1, 0), l1, "not defined before");
  expect_invalid(make_program({load(0), unary(UnaryOp::exp, 2), load(0)}, {1}, 1, 0), l1, "not defined before");
  expect_invalid(make_program({load(0), binary(BinaryOp::add, 0, 1)}, {1}, 1, 0), l1, "as operand 2");
  expect_invalid(make_program({load(0), binary(BinaryOp::add, 5, 0)}, {1}, 1, 0), l1, "as operand 1");
  expect_invalid(make_program({load(0), scalar_op(BinaryOp::add, 1, 0)}, {1}, 1, 1), l1, "not defined before");
  expect_invalid(make_program({load(1)}, {0}, 1, 0), l1, "loads input 1");
  expect_invalid(make_program({load(0), scalar_op(BinaryOp::mul, 0, 1)}, {1}, 1, 1), l1, "reads scalars 1..1");
  expect_invalid(make_program({load(0), scalar_op(BinaryOp::mul, 0, 0)}, {1}, 1, 0), l1, "reads scalars 0..0");
  expect_invalid(make_program({load(0), op_instr(ElementwiseOp::clamp, 0, 0, 0, 1)}, {1}, 1, 2), l1, "reads scalars 1..2");
  expect_invalid(make_program({load(0), load(0), op_instr(ElementwiseOp::where, 0, 1, 2)}, {2}, 1, 0), l1, "as operand 3");
  FusedInstr bad_op = unary(UnaryOp::neg, 0);
  bad_op.op = static_cast<ElementwiseOp>(kElementwiseOpCount);
  expect_invalid(make_program({load(0), bad_op}, {1}, 1, 0), l1, "not an element-wise op");
  bad_op.op = static_cast<ElementwiseOp>(200);
  expect_invalid(make_program({load(0), bad_op}, {1}, 1, 0), l1, "not an element-wise op");
  FusedInstr bad_cast = op_instr(ElementwiseOp::to, 0);
  bad_cast.dtype = static_cast<defer::DType>(99);
  expect_invalid(make_program({load(0), bad_cast}, {1}, 1, 0), l1, "unknown dtype");
  FusedProgram no_dtypes = make_program({load(0)}, {0}, 1, 0);
  no_dtypes.output_dtypes.clear();
  expect_invalid(no_dtypes, l1, "dtypes");
  FusedInstr bad_kind = load(0);
  bad_kind.kind = static_cast<FusedKind>(9);
  expect_invalid(make_program({load(0), bad_kind}, {1}, 1, 0), l1, "unknown kind");
  expect_invalid(make_program({load(0), unary(UnaryOp::exp, 0)}, {2}, 1, 0), l1, "output 0 is value 2");
  expect_invalid(make_program({}, {0}, 0, 0), flat_layout(0), "output 0 is value 0");
  expect_invalid(make_program({load(0)}, {0}, 1, 0), flat_layout(2), "strides for 2 inputs");
  FusedLayout deep = flat_layout(1);
  deep.ndim = kMaxDims + 1;
  expect_invalid(make_program({load(0)}, {0}, 1, 0), deep, "ndim");
  FusedLayout negative = flat_layout(1);
  negative.shape[0] = -1;
  expect_invalid(make_program({load(0)}, {0}, 1, 0), negative, "negative extent");
}

FusedLayout layout2(i64 rows, i64 cols, std::vector<std::array<i64, 2>> strides) {
  FusedLayout l;
  l.ndim = 2;
  l.shape[0] = rows;
  l.shape[1] = cols;
  for (auto s : strides) l.strides.push_back({s[0], s[1]});
  return l;
}

TEST(FusedProgramKey, SameStructureSameKey) {
  const FusedProgram p = make_program({load(0), load(1), binary(BinaryOp::add, 0, 1), scalar_op(BinaryOp::mul, 2, 0)}, {3}, 2, 1);
  // sizes differ, the pattern (input 0 contiguous, input 1 a broadcast row) does not
  const std::string a = structure_key(p, layout2(4, 8, {{8, 1}, {0, 1}}));
  const std::string b = structure_key(p, layout2(1000, 3, {{3, 1}, {0, 1}}));
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, structure_key(p, layout2(4, 8, {{8, 1}, {0, 1}})));  // deterministic
  // strides of a gathered input are kernel arguments: a column broadcast or a transpose is still "gathered"
  EXPECT_EQ(a, structure_key(p, layout2(4, 8, {{8, 1}, {1, 0}})));
  EXPECT_EQ(a, structure_key(p, layout2(4, 8, {{8, 1}, {1, 4}})));
  // junk strides on extent-1 dims do not make an input less contiguous
  EXPECT_EQ(structure_key(p, layout2(1, 8, {{99, 1}, {8, 1}})), structure_key(p, layout2(5, 8, {{8, 1}, {8, 1}})));
  // scalar values are never part of the key (they are not part of the program), and the key is compact
  EXPECT_LT(a.size(), 64u) << a;
}

TEST(FusedProgramKey, DifferentStructureDifferentKey) {
  const FusedProgram base = make_program({load(0), load(1), binary(BinaryOp::add, 0, 1), scalar_op(BinaryOp::mul, 2, 0)}, {3}, 2, 1);
  const FusedLayout bl = layout2(4, 8, {{8, 1}, {0, 1}});
  const std::string key = structure_key(base, bl);
  auto differs = [&](const FusedProgram& p, const FusedLayout& l, const char* what) {
    EXPECT_NE(structure_key(p, l), key) << what;
  };
  FusedProgram p = base;
  p.code[2].op = ElementwiseOp::sub;
  differs(p, bl, "another op");
  p = base;
  p.input_dtypes[1] = defer::DType::f16;
  differs(p, bl, "another input dtype");
  p = base;
  p.output_dtypes[0] = defer::DType::bf16;
  differs(p, bl, "another output dtype");
  p = base;
  p.code[2].b = 0;
  differs(p, bl, "another operand");
  p = base;
  p.code[3] = binary(BinaryOp::mul, 2, 0);
  differs(p, bl, "binary instead of binary_scalar");
  p = base;
  p.code[3] = unary(UnaryOp::neg, 2);
  differs(p, bl, "unary instead of binary_scalar");
  p = base;
  p.outputs = {3, 2};
  p.output_dtypes.assign(p.outputs.size(), defer::DType::f32);
  differs(p, bl, "another output");
  p = base;
  p.num_scalars = 2;
  differs(p, bl, "another scalar count");
  p = base;
  p.code[1] = load(0);
  differs(p, bl, "another input loaded");
  differs(base, layout2(4, 8, {{8, 1}, {8, 1}}), "no broadcast");
  differs(base, layout2(4, 8, {{0, 1}, {0, 1}}), "both broadcast");
  FusedLayout three = bl;
  three.ndim = 3;
  three.shape[2] = 1;
  differs(base, three, "another ndim");
  // distinct op codes in the same place never collide
  std::vector<std::string> keys;
  for (UnaryOp op : kUnaryOps)
    keys.push_back(structure_key(make_program({load(0), unary(op, 0)}, {1}, 1, 0), flat_layout(1)));
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(std::unique(keys.begin(), keys.end()), keys.end());
}

TEST(FusedProgramValidate, Reductions) {
  const FusedProgram p = reducing(make_program({load(0), unary(UnaryOp::exp, 0)}, {1}, 1, 0), ReduceOp::mean);
  FusedLayout l = reduce_layout({4, 5, 6}, 1);
  l.strides.push_back({30, 6, 1});
  EXPECT_NO_THROW(validate(p, l));
  FusedProgram bad = p;
  bad.outputs = {1, 1};
  bad.output_dtypes.assign(bad.outputs.size(), defer::DType::f32);
  expect_invalid(bad, l, "exactly one output");
  bad.outputs = {0};
  bad.output_dtypes.assign(bad.outputs.size(), defer::DType::f32);
  expect_invalid(bad, l, "exactly one output");
  bad = p;
  bad.reduction->value = 2;
  bad.outputs = {2};
  bad.output_dtypes.assign(bad.outputs.size(), defer::DType::f32);
  expect_invalid(bad, l, "output 0 is value 2");
  bad.outputs = {1};
  bad.output_dtypes.assign(bad.outputs.size(), defer::DType::f32);
  expect_invalid(bad, l, "reduces value 2");
  bad = p;
  bad.reduction->op = ReduceOp::argmax;
  expect_invalid(bad, l, "not sum, mean, max or min");
  bad.reduction->op = static_cast<ReduceOp>(kReduceOpCount);
  expect_invalid(bad, l, "not sum, mean, max or min");
  FusedLayout split = l;
  split.reduce = {4, 5, 5};
  expect_invalid(p, split, "does not cover");
  split.reduce = {-4, 5, -6};
  expect_invalid(p, split, "negative size");
  split = l;
  split.ndim = 1;
  split.shape = {120};
  EXPECT_NO_THROW(validate(p, split)) << "a collapsed domain with the same split";
}

TEST(FusedProgramKey, Reductions) {
  const FusedProgram ew = make_program({load(0), load(1), binary(BinaryOp::mul, 0, 1), unary(UnaryOp::exp, 2)}, {3}, 2, 0);
  auto layout = [](const std::vector<i64>& dims, int dim) {
    FusedLayout l = reduce_layout(dims, dim);
    std::array<i64, kMaxDims> row_major{};
    i64 step = 1;
    for (int d = l.ndim - 1; d >= 0; --d) {
      row_major[static_cast<std::size_t>(d)] = step;
      step *= dims[static_cast<std::size_t>(d)];
    }
    l.strides = {row_major, row_major};
    return l;
  };
  const FusedProgram sum = reducing(ew, ReduceOp::sum);
  const std::string rows = structure_key(sum, layout({8, 100}, 1));
  const std::string columns = structure_key(sum, layout({100, 8}, 0));
  // sizes never enter the key: only whether the reduced rows are contiguous (inner == 1)
  EXPECT_EQ(rows, structure_key(sum, layout({3, 7}, 1)));
  EXPECT_EQ(rows, structure_key(sum, layout({3000, 1}, 0)));
  EXPECT_EQ(columns, structure_key(sum, layout({3, 1000}, 0)));
  EXPECT_EQ(columns, structure_key(sum, layout({1000, 2}, 0)));
  EXPECT_NE(rows, columns);
  // the element-wise program, another op, another reduced value: other keys
  std::vector<std::string> keys = {rows, structure_key(ew, layout({8, 100}, 1)),
                                   structure_key(reducing(ew, ReduceOp::mean), layout({8, 100}, 1)),
                                   structure_key(reducing(ew, ReduceOp::max), layout({8, 100}, 1))};
  FusedProgram other_value = ew;
  other_value.outputs = {2};
  other_value.output_dtypes.assign(other_value.outputs.size(), defer::DType::f32);
  keys.push_back(structure_key(reducing(other_value, ReduceOp::sum), layout({8, 100}, 1)));
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(std::unique(keys.begin(), keys.end()), keys.end());
}

TEST(FusedProgramLayout, InputAccess) {
  EXPECT_EQ(input_access(layout2(4, 8, {{8, 1}}), 0), InputAccess::flat);
  EXPECT_EQ(input_access(layout2(1, 8, {{0, 1}}), 0), InputAccess::flat);  // a broadcast of an extent-1 dim is no broadcast
  EXPECT_EQ(input_access(layout2(4, 1, {{1, 7}}), 0), InputAccess::flat);
  EXPECT_EQ(input_access(layout2(4, 8, {{0, 1}}), 0), InputAccess::strided);
  EXPECT_EQ(input_access(layout2(4, 8, {{1, 4}}), 0), InputAccess::strided);
  EXPECT_EQ(input_access(layout2(4, 8, {{16, 1}}), 0), InputAccess::strided);
  EXPECT_EQ(input_access(layout2(4, 8, {{0, 0}}), 0), InputAccess::uniform);
  FusedLayout zero_d;
  zero_d.strides.push_back({});
  EXPECT_EQ(input_access(zero_d, 0), InputAccess::flat);
}

// ---------------------------------------------------------------------------------------------
// the thread pool

TEST(ThreadPool, EveryIndexOnceOnDistinctSlots) {
  for (unsigned workers : {0u, 1u, 3u}) {
    ThreadPool pool(workers);
    EXPECT_EQ(pool.num_workers(), workers);
    for (i64 n : {i64{0}, i64{1}, i64{2}, i64{1000}}) {
      std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
      std::vector<std::atomic<int>> busy(pool.num_slots());
      std::atomic<bool> slot_clash{false}, bad_slot{false};
      pool.parallel_for(n, [&](i64 i, unsigned slot) {
        if (slot >= pool.num_slots()) {
          bad_slot = true;
          return;
        }
        if (busy[slot].fetch_add(1) != 0) slot_clash = true;
        hits[static_cast<std::size_t>(i)].fetch_add(1);
        busy[slot].fetch_sub(1);
      });
      EXPECT_FALSE(bad_slot);
      EXPECT_FALSE(slot_clash);
      for (i64 i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << "index " << i;
    }
  }
}

TEST(ThreadPool, UsesItsWorkers) {
  ThreadPool pool(2);
  std::atomic<int> inside{0}, most{0};
  pool.parallel_for(64, [&](i64, unsigned) {
    const int now = ++inside;
    int seen = most.load();
    while (now > seen && !most.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    --inside;
  });
  EXPECT_GT(most.load(), 1) << "no two indices ever ran at the same time";
}

TEST(ThreadPool, ExceptionsReachTheCaller) {
  ThreadPool pool(2);
  std::atomic<int> ran{0};
  EXPECT_THROW(pool.parallel_for(2000,
                                 [&](i64 i, unsigned) {
                                   ++ran;
                                   if (i == 3) throw std::runtime_error("index 3");
                                   std::this_thread::sleep_for(std::chrono::microseconds(100));
                                 }),
               std::runtime_error);
  EXPECT_LT(ran.load(), 2000) << "the indices after the failure were not skipped";
  // still usable
  std::atomic<i64> sum{0};
  pool.parallel_for(100, [&](i64 i, unsigned) { sum += i; });
  EXPECT_EQ(sum.load(), 4950);
}

TEST(ThreadPool, NestedAndConcurrentLoopsRunInline) {
  ThreadPool pool(2);
  std::atomic<i64> sum{0};
  pool.parallel_for(8, [&](i64, unsigned) { pool.parallel_for(100, [&](i64 i, unsigned) { sum += i; }); });
  EXPECT_EQ(sum.load(), 8 * 4950);

  std::vector<std::thread> callers;
  std::atomic<i64> total{0};
  for (int t = 0; t < 4; ++t)
    callers.emplace_back([&] {
      for (int rep = 0; rep < 200; ++rep) pool.parallel_for(50, [&](i64 i, unsigned) { total += i; });
    });
  for (auto& c : callers) c.join();
  EXPECT_EQ(total.load(), 4 * 200 * 1225);
}

TEST(ThreadPool, StartsAndStopsCleanly) {
  for (int rep = 0; rep < 20; ++rep) {
    ThreadPool idle(3);  // never used
    ThreadPool used(2);
    std::atomic<int> n{0};
    used.parallel_for(rep + 1, [&](i64, unsigned) { ++n; });
    EXPECT_EQ(n.load(), rep + 1);
  }
  const unsigned hw = std::thread::hardware_concurrency();
  EXPECT_EQ(ThreadPool::shared().num_workers(), hw > 1 ? hw - 1 : 0u);
  EXPECT_EQ(&ThreadPool::shared(), &ThreadPool::shared());
}

}  // namespace
