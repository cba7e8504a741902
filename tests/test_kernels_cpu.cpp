// CPU kernels against float64 references computed here, on random non-zero inputs (a kernel that
// skips an element cannot pass as a zero), with every output poisoned before the call (a quiet NaN
// with a payload no arithmetic produces) and guarded past its end.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cpu/ops.hpp"
#include "reference.hpp"
#include "support/one_op.hpp"

namespace defer::kernels::cpu::detail {
// Testing hook defined in kernels/cpu/matmul.cpp (not part of ops.hpp).
bool matmul_force_portable(bool force) noexcept;
}  // namespace defer::kernels::cpu::detail

namespace {

using namespace defer::kernels;
using namespace defer::testing;
using i64 = std::int64_t;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kDInf = std::numeric_limits<double>::infinity();
constexpr double kDNaN = std::numeric_limits<double>::quiet_NaN();
constexpr std::uint32_t kPoisonBits = 0x7fe5a5a5u;
constexpr i64 kGuard = 16;
// The smallest magnitude that rounds to infinity in float.
constexpr double kFloatOverflow = 3.4028235677973366e38;

const std::vector<i64> kSizes = {0, 1, 3, 1023, 65537};
constexpr i64 kLarge = i64{1} << 22;  // ~4M elements

std::vector<float> random_values(i64 n, unsigned seed, float lo = -4.f, float hi = 4.f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) {
    do x = dist(gen);
    while (x == 0.f);
  }
  return v;
}

// An output buffer of n floats plus a guard, all poisoned.
class Out {
 public:
  explicit Out(i64 n) : n_(n), v_(static_cast<std::size_t>(n + kGuard), std::bit_cast<float>(kPoisonBits)) {}
  float* data() { return v_.data(); }
  const float* data() const { return v_.data(); }
  float operator[](i64 i) const { return v_[static_cast<std::size_t>(i)]; }
  i64 size() const { return n_; }

  // Every element written, nothing past the end touched.
  void expect_written(const std::string& ctx) const {
    i64 unwritten = 0, first = -1;
    for (i64 i = 0; i < n_; ++i)
      if (bits(i) == kPoisonBits && unwritten++ == 0) first = i;
    EXPECT_EQ(unwritten, 0) << ctx << ": " << unwritten << " of " << n_ << " outputs not written, first at " << first;
    for (i64 i = n_; i < n_ + kGuard; ++i)
      if (bits(i) != kPoisonBits) {
        ADD_FAILURE() << ctx << ": wrote past the end of the output (element " << i << " of " << n_ << ")";
        break;
      }
  }

 private:
  std::uint32_t bits(i64 i) const { return std::bit_cast<std::uint32_t>(v_[static_cast<std::size_t>(i)]); }
  i64 n_;
  std::vector<float> v_;
};

bool matches(double want, float got, double tol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want) || std::fabs(want) >= kFloatOverflow) return got == static_cast<float>(std::copysign(kDInf, want));
  if (!std::isfinite(got)) return false;
  return std::fabs(static_cast<double>(got) - want) <= tol;
}

// Compares out[i] with want[i] within tol(i); reports the first few mismatches and their count.
void expect_close(const std::string& ctx, const std::vector<double>& want, const Out& out,
                  const std::function<double(i64)>& tol) {
  ASSERT_EQ(static_cast<i64>(want.size()), out.size()) << ctx;
  out.expect_written(ctx);
  i64 bad = 0;
  for (i64 i = 0; i < out.size(); ++i) {
    const double w = want[static_cast<std::size_t>(i)];
    const double t = tol(i);
    if (!matches(w, out[i], t)) {
      if (bad < 5)
        ADD_FAILURE() << ctx << ": element " << i << " is " << out[i] << ", want " << w << " (tolerance " << t
                      << ")";
      ++bad;
    }
  }
  EXPECT_EQ(bad, 0) << ctx << ": " << bad << " of " << out.size() << " elements differ";
}

// relative tolerance with an absolute floor at the bottom of float's normal range
std::function<double(i64)> relative(const std::vector<double>& want, double rtol, double atol = 1e-36) {
  return [&want, rtol, atol](i64 i) { return rtol * std::fabs(want[static_cast<std::size_t>(i)]) + atol; };
}

std::string str(const char* what, std::initializer_list<i64> dims) {
  std::string s = what;
  s += " [";
  bool first = true;
  for (i64 d : dims) {
    if (!first) s += ", ";
    s += std::to_string(d);
    first = false;
  }
  return s + "]";
}

// ---------------------------------------------------------------------------------------------
// element-wise

double ref_unary(UnaryOp op, double x) { return defer::testing::ref::elementwise(op, x); }
double ref_binary(BinaryOp op, double a, double b) { return defer::testing::ref::elementwise(op, a, b); }

bool positive_domain(UnaryOp op) { return op == UnaryOp::log || op == UnaryOp::sqrt; }

void check_unary(UnaryOp op, const std::vector<float>& x, const std::string& ctx) {
  const i64 n = static_cast<i64>(x.size());
  Out out(n);
  one_op::unary(op, x.data(), out.data(), n);
  std::vector<double> want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) want[i] = ref_unary(op, x[i]);
  expect_close(ctx, want, out, relative(want, 1e-5));
}

TEST(KernelsCpuUnary, AllOpsAllSizes) {
  for (UnaryOp op : kUnaryOps)
    for (i64 n : kSizes) {
      const auto x = positive_domain(op) ? random_values(n, 11, 1e-3f, 10.f) : random_values(n, 11);
      check_unary(op, x, str(name(op), {n}));
    }
}

TEST(KernelsCpuUnary, Large) {
  for (UnaryOp op : {UnaryOp::neg, UnaryOp::exp, UnaryOp::relu, UnaryOp::gelu}) {
    const auto x = random_values(kLarge, 12);
    check_unary(op, x, str(name(op), {kLarge}));
  }
}

// Wide ranges reach the tails: overflow-free sigmoid, no cancellation in gelu / gelu_tanh / silu.
TEST(KernelsCpuUnary, WideRange) {
  for (UnaryOp op : kUnaryOps) {
    std::vector<float> x;
    if (op == UnaryOp::exp) x = random_values(65537, 13, -87.f, 88.f);
    else if (positive_domain(op)) {  // log-uniform over [1e-30, 1e30]
      x = random_values(65537, 13, -69.f, 69.f);
      for (float& v : x) v = std::exp(v);
    }
    else x = random_values(65537, 13, -30.f, 30.f);
    check_unary(op, x, str(name(op), {65537}) + " wide");
  }
  // the negative tail alone, where every sigmoid-like op is small and must stay relatively exact
  for (UnaryOp op : {UnaryOp::sigmoid, UnaryOp::silu, UnaryOp::gelu, UnaryOp::gelu_tanh})
    check_unary(op, random_values(4099, 14, -12.f, -3.f), std::string(name(op)) + " negative tail");
  // log near 1, where the result is near 0
  check_unary(UnaryOp::log, random_values(4099, 15, 0.99f, 1.01f), "log near 1");
}

TEST(KernelsCpuUnary, SpecialValues) {
  const float fmax = std::numeric_limits<float>::max();
  const std::vector<float> x = {kNaN,  -kNaN, kInf,   -kInf,   0.f,    -0.f,  1e-40f, -1e-40f, 1.f, -1.f,
                                100.f, -100.f, 1000.f, -1000.f, fmax, -fmax, 88.8f,  -103.f, 20.f, -20.f};
  for (UnaryOp op : kUnaryOps) {
    // results in float's subnormal range (exp(-103), silu(-100)) have an absolute accuracy only
    const i64 n = static_cast<i64>(x.size());
    Out out(n);
    one_op::unary(op, x.data(), out.data(), n);
    std::vector<double> want(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) want[i] = ref_unary(op, x[i]);
    expect_close(std::string(name(op)) + " special values", want, out, [&](i64 i) {
      return 1e-5 * std::fabs(want[static_cast<std::size_t>(i)]) + 1e-40;
    });
  }
  // spot checks of the documented semantics
  const std::vector<float> y = {kNaN, -kInf, kInf, -1000.f, 1000.f};
  Out o(5);
  one_op::unary(UnaryOp::relu, y.data(), o.data(), 5);
  EXPECT_TRUE(std::isnan(o[0]));
  EXPECT_EQ(o[1], 0.f);
  EXPECT_EQ(o[2], kInf);
  one_op::unary(UnaryOp::sigmoid, y.data(), o.data(), 5);
  EXPECT_TRUE(std::isnan(o[0]));
  EXPECT_EQ(o[1], 0.f);
  EXPECT_EQ(o[2], 1.f);
  EXPECT_EQ(o[3], 0.f);
  EXPECT_EQ(o[4], 1.f);
  one_op::unary(UnaryOp::log, y.data(), o.data(), 5);
  EXPECT_TRUE(std::isnan(o[1]));  // log(-inf)
  EXPECT_TRUE(std::isnan(o[3]));  // log(-1000)
}

TEST(KernelsCpuUnary, InPlace) {
  for (UnaryOp op : kUnaryOps) {
    const auto x = positive_domain(op) ? random_values(1027, 16, 1e-3f, 10.f) : random_values(1027, 16);
    auto y = x;
    one_op::unary(op, y.data(), y.data(), static_cast<i64>(y.size()));
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double w = ref_unary(op, x[i]);
      ASSERT_TRUE(matches(w, y[i], 1e-5 * std::fabs(w) + 1e-36)) << name(op) << " in place, element " << i;
    }
  }
}

void check_binary_scalar(BinaryOp op, const std::vector<float>& x, float s, const std::string& ctx) {
  const i64 n = static_cast<i64>(x.size());
  Out out(n);
  one_op::binary_scalar(op, x.data(), s, out.data(), n);
  std::vector<double> want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) want[i] = defer::testing::ref::elementwise(op, x[i], 0, 0, s);
  expect_close(ctx, want, out, relative(want, 1e-5));
}

TEST(KernelsCpuBinary, ScalarAllOpsAllSizes) {
  for (ElementwiseOp op : kScalarOps)
    for (i64 n : kSizes)
      for (float s : {2.5f, -0.75f, 1e-3f, 3e4f}) {
        const auto x = random_values(n, 21);
        check_binary_scalar(op, x, s, str(name(op), {n}) + " scalar " + std::to_string(s));
      }
  const auto big = random_values(kLarge, 22);
  check_binary_scalar(ElementwiseOp::mul_scalar, big, 1.5f, str("mul", {kLarge}));
}

TEST(KernelsCpuBinary, ScalarSpecialValues) {
  const std::vector<float> x = {kNaN, kInf, -kInf, 0.f, -0.f, 1.f, -1.f, 3.f};
  for (ElementwiseOp op : kScalarOps)
    for (float s : {0.f, -0.f, kInf, -kInf, kNaN, 2.f, std::numeric_limits<float>::max()})
      check_binary_scalar(op, x, s, std::string(name(op)) + " specials by " + std::to_string(s));
  // spot checks: IEEE division by zero, a NaN scalar, clamp's NaN and infinities
  Out o(8);
  one_op::binary_scalar(ElementwiseOp::div_scalar, x.data(), 0.f, o.data(), 8);
  EXPECT_TRUE(std::isnan(o[3]));  // 0 / 0
  EXPECT_EQ(o[5], kInf);          // 1 / 0
  EXPECT_EQ(o[6], -kInf);         // -1 / 0
  one_op::binary_scalar(ElementwiseOp::add_scalar, x.data(), kNaN, o.data(), 8);
  for (i64 i = 0; i < 8; ++i) EXPECT_TRUE(std::isnan(o[i])) << i;
  const float bounds[] = {-kInf, 2.f};
  one_op::run(ElementwiseOp::clamp, {x.data()}, o.data(), 8, bounds);
  EXPECT_TRUE(std::isnan(o[0]));
  EXPECT_EQ(o[1], 2.f);
  EXPECT_EQ(o[2], -kInf);
}

void check_binary_contiguous(BinaryOp op, const std::vector<float>& a, const std::vector<float>& b,
                             const std::string& ctx) {
  const i64 n = static_cast<i64>(a.size());
  Out out(n);
  one_op::binary(op, a.data(), b.data(), out.data(), n, nullptr);
  std::vector<double> want(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) want[i] = ref_binary(op, a[i], b[i]);
  expect_close(ctx, want, out, relative(want, 1e-5));
}

TEST(KernelsCpuBinary, ContiguousAllOpsAllSizes) {
  for (BinaryOp op : kBinaryOps)
    for (i64 n : kSizes) check_binary_contiguous(op, random_values(n, 31), random_values(n, 32), str(name(op), {n}));
  for (BinaryOp op : {BinaryOp::add, BinaryOp::maximum})
    check_binary_contiguous(op, random_values(kLarge, 33), random_values(kLarge, 34), str(name(op), {kLarge}));
}

TEST(KernelsCpuBinary, ContiguousSpecialValues) {
  const std::vector<float> s = {kNaN, kInf, -kInf, 0.f, -0.f, 1.f, -2.f, std::numeric_limits<float>::max()};
  std::vector<float> a, b;
  for (float x : s)
    for (float y : s) a.push_back(x), b.push_back(y);
  for (BinaryOp op : kBinaryOps) check_binary_contiguous(op, a, b, std::string(name(op)) + " special pairs");
}

TEST(KernelsCpuBinary, InPlace) {
  const auto a = random_values(1029, 35);
  const auto b = random_values(1029, 36);
  for (BinaryOp op : kBinaryOps) {
    auto y = a;
    one_op::binary(op, y.data(), b.data(), y.data(), 1029, nullptr);
    for (std::size_t i = 0; i < a.size(); ++i) {
      const double w = ref_binary(op, a[i], b[i]);
      ASSERT_TRUE(matches(w, y[i], 1e-5 * std::fabs(w))) << name(op) << " in place, element " << i;
    }
  }
}

// Broadcast from NumPy-style shapes of equal rank (1 where an input is broadcast).
Broadcast make_broadcast(const std::vector<i64>& out, const std::vector<i64>& a, const std::vector<i64>& b) {
  Broadcast bc;
  bc.ndim = static_cast<int>(out.size());
  const std::vector<i64>* in[2] = {&a, &b};
  for (int s = 0; s < 2; ++s) {
    i64 stride = 1;
    for (int d = bc.ndim - 1; d >= 0; --d) {
      const i64 dim = (*in[s])[static_cast<std::size_t>(d)];
      bc.stride[s][d] = dim == 1 ? 0 : stride;
      stride *= dim;
    }
  }
  for (int d = 0; d < bc.ndim; ++d) bc.shape[d] = out[static_cast<std::size_t>(d)];
  return bc;
}

// The largest element offset input s reads, plus one (the input's size).
i64 extent(const Broadcast& bc, int s) {
  i64 e = 1;
  for (int d = 0; d < bc.ndim; ++d) {
    if (bc.shape[d] == 0) return 0;
    e += (bc.shape[d] - 1) * bc.stride[s][d];
  }
  return e;
}

// Runs op over the descriptor on random inputs of the sizes it implies and checks every output
// against a reference that indexes the inputs straight from the descriptor.
void check_broadcast(BinaryOp op, const Broadcast& bc, unsigned seed, const std::string& ctx) {
  i64 n = 1;
  for (int d = 0; d < bc.ndim; ++d) n *= bc.shape[d];
  const auto a = random_values(extent(bc, 0), seed);
  const auto b = random_values(extent(bc, 1), seed + 1);
  Out out(n);
  one_op::binary(op, a.data(), b.data(), out.data(), n, &bc);
  std::vector<double> want(static_cast<std::size_t>(n));
  for (i64 f = 0; f < n; ++f) {
    i64 rem = f, oa = 0, ob = 0;
    for (int d = bc.ndim - 1; d >= 0; --d) {
      const i64 idx = rem % bc.shape[d];
      rem /= bc.shape[d];
      oa += idx * bc.stride[0][d];
      ob += idx * bc.stride[1][d];
    }
    want[static_cast<std::size_t>(f)] = ref_binary(op, a[static_cast<std::size_t>(oa)], b[static_cast<std::size_t>(ob)]);
  }
  expect_close(ctx, want, out, relative(want, 1e-5));
}

std::string shapes(const std::vector<i64>& a, const std::vector<i64>& b) {
  auto one = [](const std::vector<i64>& v) {
    std::string s = "[";
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (i > 0) s += ',';
      s += std::to_string(v[i]);
    }
    return s + "]";
  };
  return one(a) + " vs " + one(b);
}

TEST(KernelsCpuBinary, BroadcastPatterns) {
  struct Case {
    std::vector<i64> a, b;
  };
  std::vector<Case> cases;
  for (i64 n : kSizes) {
    cases.push_back({{1}, {n}});  // scalar-like
    cases.push_back({{n}, {1}});
  }
  for (auto [m, n] : std::vector<std::pair<i64, i64>>{{1, 1}, {3, 5}, {1023, 7}, {7, 1023}, {2, 65537}, {65537, 2}}) {
    cases.push_back({{1, n}, {m, n}});  // row
    cases.push_back({{m, n}, {1, n}});
    cases.push_back({{m, 1}, {m, n}});  // column against full
    cases.push_back({{m, n}, {m, 1}});
    cases.push_back({{m, 1}, {1, n}});  // both sides: an outer product
    cases.push_back({{1, n}, {m, 1}});
  }
  for (auto [p, q, r] : std::vector<std::array<i64, 3>>{{2, 3, 4}, {5, 7, 1023}, {33, 65, 3}, {3, 1, 5}}) {
    cases.push_back({{p, q, r}, {p, 1, r}});  // middle dimension
    cases.push_back({{p, 1, r}, {p, q, r}});
    cases.push_back({{p, 1, r}, {1, q, 1}});  // both sides, alternating
    cases.push_back({{1, q, 1}, {p, 1, r}});
    cases.push_back({{p, q, 1}, {1, 1, r}});
  }
  cases.push_back({{3, 0, 4}, {3, 1, 4}});  // empty output
  cases.push_back({{0, 5}, {1, 5}});
  for (const Case& c : cases) {
    std::vector<i64> out(c.a.size());
    for (std::size_t d = 0; d < out.size(); ++d) out[d] = std::max(c.a[d], c.b[d]);
    if (defer::testing::ref::numel(c.a) == 0 || defer::testing::ref::numel(c.b) == 0)
      for (std::size_t d = 0; d < out.size(); ++d)
        if (c.a[d] == 0 || c.b[d] == 0) out[d] = 0;
    const Broadcast bc = make_broadcast(out, c.a, c.b);
    for (BinaryOp op : kBinaryOps) check_broadcast(op, bc, 41, std::string(name(op)) + " " + shapes(c.a, c.b));
  }
}

TEST(KernelsCpuBinary, BroadcastLarge) {
  const i64 m = 2048, n = 2048;
  check_broadcast(BinaryOp::add, make_broadcast({m, n}, {m, n}, {1, n}), 42, "add [2048,2048] vs [1,2048]");
  check_broadcast(BinaryOp::mul, make_broadcast({m, n}, {m, 1}, {1, n}), 43, "mul [2048,1] vs [1,2048]");
}

TEST(KernelsCpuBinary, BroadcastZeroDims) {
  Broadcast bc;  // ndim 0: a single element
  const float a = 3.f, b = -2.f;
  for (BinaryOp op : kBinaryOps) {
    Out out(1);
    one_op::binary(op, &a, &b, out.data(), 1, &bc);
    expect_close(std::string(name(op)) + " 0-d", {ref_binary(op, a, b)}, out, [](i64) { return 1e-6; });
  }
}

// Strides that are not those of a contiguous input: a transposed view, a stepped view.
TEST(KernelsCpuBinary, BroadcastGeneralStrides) {
  Broadcast t;
  t.ndim = 2;
  t.shape[0] = 37, t.shape[1] = 53;
  t.stride[0][0] = 1, t.stride[0][1] = 37;  // a read transposed
  t.stride[1][0] = 53, t.stride[1][1] = 1;
  for (BinaryOp op : kBinaryOps) check_broadcast(op, t, 44, std::string(name(op)) + " transposed a");
  Broadcast s;
  s.ndim = 1;
  s.shape[0] = 1001;
  s.stride[0][0] = 3, s.stride[1][0] = 2;
  for (BinaryOp op : kBinaryOps) check_broadcast(op, s, 45, std::string(name(op)) + " stepped");
}

// Random ranks 1..8, every dimension full, broadcast on a, on b, or size 1 on both.
TEST(KernelsCpuBinary, BroadcastRandomShapes) {
  std::mt19937 gen(46);
  for (int trial = 0; trial < 300; ++trial) {
    const int nd = 1 + static_cast<int>(gen() % kMaxDims);
    std::vector<i64> out(static_cast<std::size_t>(nd)), a(out.size()), b(out.size());
    for (std::size_t d = 0; d < out.size(); ++d) {
      const i64 dim = 1 + static_cast<i64>(gen() % (nd > 4 ? 4 : 9));
      out[d] = a[d] = b[d] = dim;
      switch (gen() % 4) {
        case 0: a[d] = 1; break;
        case 1: b[d] = 1; break;
        case 2: out[d] = a[d] = b[d] = 1; break;
        default: break;
      }
    }
    const BinaryOp op = kBinaryOps[gen() % 6];
    check_broadcast(op, make_broadcast(out, a, b), static_cast<unsigned>(trial), std::string(name(op)) + " " + shapes(a, b));
  }
}

TEST(KernelsCpuBinary, BroadcastPropagatesNaNAndInf) {
  const std::vector<float> col = {kNaN, kInf, -kInf, 2.f};  // [4, 1]
  const std::vector<float> row = {1.f, kNaN, -kInf};         // [1, 3]
  const Broadcast bc = make_broadcast({4, 3}, {4, 1}, {1, 3});
  for (BinaryOp op : kBinaryOps) {
    Out out(12);
    one_op::binary(op, col.data(), row.data(), out.data(), 12, &bc);
    std::vector<double> want;
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 3; ++j) want.push_back(ref_binary(op, col[static_cast<std::size_t>(i)], row[static_cast<std::size_t>(j)]));
    expect_close(std::string(name(op)) + " specials broadcast", want, out, [](i64) { return 1e-6; });
  }
}

// ---------------------------------------------------------------------------------------------
// reductions, softmax, layer norm

void check_reduce(ReduceOp op, const std::vector<float>& x, i64 outer, i64 n, i64 inner, const std::string& ctx) {
  Out out(outer * inner);
  cpu::reduce(op, x.data(), out.data(), outer, n, inner);
  std::vector<double> want(static_cast<std::size_t>(outer * inner)), abs_sum(want.size());
  for (i64 o = 0; o < outer; ++o)
    for (i64 i = 0; i < inner; ++i) {
      double s = 0, sa = 0, m = -kDInf, lo = kDInf;
      bool nan = false;
      for (i64 j = 0; j < n; ++j) {
        const double v = x[static_cast<std::size_t>((o * n + j) * inner + i)];
        s += v;
        sa += std::fabs(v);
        nan |= std::isnan(v);
        m = std::max(m, v);
        lo = std::min(lo, v);
      }
      const auto k = static_cast<std::size_t>(o * inner + i);
      switch (op) {
        case ReduceOp::sum: want[k] = s, abs_sum[k] = sa; break;
        case ReduceOp::mean: want[k] = n == 0 ? kDNaN : s / static_cast<double>(n), abs_sum[k] = sa / static_cast<double>(n); break;
        case ReduceOp::max: want[k] = nan ? kDNaN : m, abs_sum[k] = 0; break;
        case ReduceOp::min: want[k] = nan ? kDNaN : lo, abs_sum[k] = 0; break;
        case ReduceOp::argmax: FAIL() << "argmax has a test of its own";
      }
    }
  // relative to the sum of magnitudes: a sum near zero carries no relative accuracy
  expect_close(ctx, want, out, [&](i64 i) {
    const auto k = static_cast<std::size_t>(i);
    return 1e-5 * std::fabs(want[k]) + 1e-7 * abs_sum[k];
  });
}

const std::vector<std::array<i64, 3>> kReduceShapes = {
    {1, 0, 1},   {3, 0, 4},    {1, 1, 1},   {1, 3, 1},    {1, 1023, 1}, {1, 65537, 1}, {7, 1023, 1},
    {1023, 3, 1}, {3, 5, 17},  {2, 1023, 300}, {1, 65537, 3}, {5, 3, 1023}, {1, 7, 65537}, {4, 1, 9},
    {0, 5, 3},   {3, 5, 0}};

TEST(KernelsCpuReduce, AllOpsShapes) {
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min})
    for (const auto& [outer, n, inner] : kReduceShapes) {
      if ((op == ReduceOp::max || op == ReduceOp::min) && n == 0) continue;  // rejected by the op layer
      check_reduce(op, random_values(outer * n * inner, 51), outer, n, inner, str(name(op), {outer, n, inner}));
    }
}

TEST(KernelsCpuReduce, EmptyAxis) {
  Out s(12), m(12);
  cpu::reduce(ReduceOp::sum, nullptr, s.data(), 3, 0, 4);
  cpu::reduce(ReduceOp::mean, nullptr, m.data(), 3, 0, 4);
  s.expect_written("sum of nothing");
  m.expect_written("mean of nothing");
  for (i64 i = 0; i < 12; ++i) {
    EXPECT_EQ(s[i], 0.f);
    EXPECT_TRUE(std::isnan(m[i]));
  }
}

// Each axis of a [5, 7, 9] tensor, as the op layer would view it.
TEST(KernelsCpuReduce, EachAxisOf3d) {
  const auto x = random_values(5 * 7 * 9, 52);
  const std::array<i64, 3> views[] = {{1, 5, 63}, {5, 7, 9}, {35, 9, 1}};
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min})
    for (const auto& [outer, n, inner] : views) check_reduce(op, x, outer, n, inner, str(name(op), {outer, n, inner}));
}

TEST(KernelsCpuReduce, Large) {
  check_reduce(ReduceOp::sum, random_values(kLarge, 53), 1, kLarge, 1, "sum of 4M");
  check_reduce(ReduceOp::mean, random_values(kLarge, 54, 0.5f, 1.5f), 1, kLarge, 1, "mean of 4M");
  check_reduce(ReduceOp::max, random_values(kLarge, 55), 4, 1024, 1024, "max [4,1024,1024] middle");
  check_reduce(ReduceOp::sum, random_values(kLarge, 56), 1024, 4096, 1, "sum rows [1024,4096]");
}

// A sum of large cancelling values: a float accumulator would lose the small ones entirely.
TEST(KernelsCpuReduce, AccumulatesInDouble) {
  std::vector<float> x;
  for (int i = 0; i < 1000; ++i) x.insert(x.end(), {1e8f, 1.f, -1e8f});
  Out out(1);
  cpu::reduce(ReduceOp::sum, x.data(), out.data(), 1, static_cast<i64>(x.size()), 1);
  EXPECT_EQ(out[0], 1000.f);
}

TEST(KernelsCpuReduce, NaNAndInf) {
  for (const auto& [outer, n, inner] : std::vector<std::array<i64, 3>>{{6, 1023, 1}, {2, 513, 7}, {1, 300, 600}}) {
    auto x = random_values(outer * n * inner, 57);
    auto at = [&](i64 o, i64 j, i64 i) -> float& { return x[static_cast<std::size_t>((o * n + j) * inner + i)]; };
    // output (0, 0): a NaN; (0, last): +inf; (outer-1, 0): +inf and -inf; (outer-1, last) all -inf
    at(0, n / 2, 0) = kNaN;
    at(0, 3, inner - 1) = kInf;
    at(outer - 1, 1, 0) = kInf;
    at(outer - 1, n - 1, 0) = -kInf;
    if (inner > 1 || outer > 1)
      for (i64 j = 0; j < n; ++j) at(outer - 1, j, inner - 1) = -kInf;
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min})
      check_reduce(op, x, outer, n, inner, str(name(op), {outer, n, inner}) + " specials");
  }
}

// argmax: the first largest element's index, a NaN counting as largest, on random values with
// ties and NaNs planted.
TEST(KernelsCpuReduce, ArgmaxFirstOfTiesAndNaNWins) {
  for (const auto& [outer, n, inner] : std::vector<std::array<i64, 3>>{{1, 1, 1}, {3, 1023, 1}, {2, 5, 17}, {4, 300, 3}}) {
    auto x = random_values(outer * n * inner, 58);
    auto at = [&](i64 o, i64 j, i64 i) -> float& { return x[static_cast<std::size_t>((o * n + j) * inner + i)]; };
    if (n > 3) {
      at(0, 1, 0) = 100.f;  // a tie: the first wins
      at(0, n - 1, 0) = 100.f;
      at(outer - 1, n - 2, inner - 1) = kNaN;  // NaN beats everything, also an earlier inf
      at(outer - 1, 0, inner - 1) = kInf;
    }
    std::vector<i64> out(static_cast<std::size_t>(outer * inner) + 4, -7);
    cpu::argmax(x.data(), out.data(), outer, n, inner);
    for (i64 o = 0; o < outer; ++o)
      for (i64 i = 0; i < inner; ++i) {
        i64 best = 0;
        for (i64 j = 1; j < n; ++j) {
          const float v = at(o, j, i), m = at(o, best, i);
          if (std::isnan(m)) break;
          if (std::isnan(v) || v > m) best = j;
        }
        EXPECT_EQ(out[static_cast<std::size_t>(o * inner + i)], best) << "argmax " << outer << "x" << n << "x" << inner
                                                                        << " at (" << o << ", " << i << ")";
      }
    for (std::size_t k = static_cast<std::size_t>(outer * inner); k < out.size(); ++k) EXPECT_EQ(out[k], -7) << "past the end";
  }
}

void check_softmax(const std::vector<float>& x, i64 outer, i64 n, i64 inner, const std::string& ctx) {
  Out out(outer * n * inner);
  cpu::softmax(x.data(), out.data(), outer, n, inner);
  std::vector<double> want(x.size());
  for (i64 o = 0; o < outer; ++o)
    for (i64 i = 0; i < inner; ++i) {
      auto k = [&](i64 j) { return static_cast<std::size_t>((o * n + j) * inner + i); };
      double m = -kDInf;
      bool nan = false;
      for (i64 j = 0; j < n; ++j) m = std::max(m, static_cast<double>(x[k(j)])), nan |= std::isnan(x[k(j)]);
      double s = 0;
      for (i64 j = 0; j < n; ++j) s += (want[k(j)] = std::exp(x[k(j)] - m));
      for (i64 j = 0; j < n; ++j) want[k(j)] = nan ? kDNaN : want[k(j)] / s;
    }
  expect_close(ctx, want, out, relative(want, 1e-4));
  // and every finite slice sums to 1
  for (i64 o = 0; n > 0 && o < outer; ++o)
    for (i64 i = 0; i < inner; ++i) {
      double s = 0;
      for (i64 j = 0; j < n; ++j) s += out[(o * n + j) * inner + i];
      if (std::isfinite(s)) {
        EXPECT_NEAR(s, 1.0, 1e-5) << ctx << ": slice (" << o << ", " << i << ")";
      }
    }
}

const std::vector<std::array<i64, 3>> kSoftmaxShapes = {
    {1, 1, 1}, {1, 3, 1}, {3, 1023, 1}, {1, 65537, 1}, {1023, 3, 1}, {2, 5, 3}, {3, 7, 300},
    {1, 1023, 17}, {2, 3, 65537}, {4, 1, 5}, {0, 3, 1}, {2, 0, 3}};

TEST(KernelsCpuSoftmax, Shapes) {
  for (const auto& [outer, n, inner] : kSoftmaxShapes) {
    check_softmax(random_values(outer * n * inner, 61), outer, n, inner, str("softmax", {outer, n, inner}));
    check_softmax(random_values(outer * n * inner, 62, -50.f, 50.f), outer, n, inner,
                  str("softmax wide", {outer, n, inner}));
  }
}

TEST(KernelsCpuSoftmax, Large) {
  check_softmax(random_values(kLarge, 63), 1024, 4096, 1, "softmax [1024,4096]");
  check_softmax(random_values(kLarge, 64), 1, 4096, 1024, "softmax [1,4096,1024]");
}

// Values far from 0 must not overflow exp: the max is subtracted first.
TEST(KernelsCpuSoftmax, Stable) {
  for (const auto& [outer, n, inner] : std::vector<std::array<i64, 3>>{{3, 1023, 1}, {2, 100, 33}}) {
    check_softmax(random_values(outer * n * inner, 65, 996.f, 1004.f), outer, n, inner, "softmax near +1000");
    check_softmax(random_values(outer * n * inner, 66, -1004.f, -996.f), outer, n, inner, "softmax near -1000");
  }
}

TEST(KernelsCpuSoftmax, SpecialValues) {
  for (i64 inner : {i64{1}, i64{5}}) {
    const i64 outer = 4, n = 37;
    auto x = random_values(outer * n * inner, 67);
    auto at = [&](i64 o, i64 j, i64 i) -> float& { return x[static_cast<std::size_t>((o * n + j) * inner + i)]; };
    for (i64 j = 0; j < n; ++j) at(0, j, 0) = -kInf;  // all -inf: NaN, like torch
    at(1, 4, 0) = -kInf;                             // one -inf: exactly 0 there
    at(1, 9, 0) = -kInf;
    at(2, 7, inner - 1) = kNaN;                      // NaN: the whole slice NaN
    Out out(outer * n * inner);
    cpu::softmax(x.data(), out.data(), outer, n, inner);
    out.expect_written("softmax specials");
    auto got = [&](i64 o, i64 j, i64 i) { return out[(o * n + j) * inner + i]; };
    for (i64 j = 0; j < n; ++j) {
      EXPECT_TRUE(std::isnan(got(0, j, 0))) << "all -inf, inner " << inner;
      EXPECT_TRUE(std::isnan(got(2, j, inner - 1))) << "NaN, inner " << inner;
    }
    EXPECT_EQ(got(1, 4, 0), 0.f);
    EXPECT_EQ(got(1, 9, 0), 0.f);
    check_softmax(x, outer, n, inner, "softmax specials, inner " + std::to_string(inner));
  }
}

void check_layer_norm(const std::vector<float>& x, const std::vector<float>& gamma, const std::vector<float>& beta,
                      i64 rows, i64 cols, float eps, const std::string& ctx) {
  Out out(rows * cols);
  cpu::layer_norm(x.data(), gamma.data(), beta.data(), out.data(), rows, cols, eps);
  namespace ref = defer::testing::ref;
  const std::vector<double> want = ref::layer_norm(ref::widen(x), ref::widen(gamma), ref::widen(beta), cols, eps);
  expect_close(ctx, want, out, [&](i64 i) {
    const auto c = static_cast<std::size_t>(i % cols);
    return 1e-4 * std::fabs(want[static_cast<std::size_t>(i)]) + 1e-6 * (std::fabs(gamma[c]) + std::fabs(beta[c]));
  });
  // with gamma = 1, beta = 0 every row has mean 0 and variance var / (var + eps)
  if (cols > 0 && std::all_of(gamma.begin(), gamma.end(), [](float g) { return g == 1.f; }) &&
      std::all_of(beta.begin(), beta.end(), [](float b) { return b == 0.f; }))
    for (i64 r = 0; r < rows; ++r) {
      double mx = 0, m = 0, v = 0, mo = 0, vo = 0;
      for (i64 c = 0; c < cols; ++c) m += x[static_cast<std::size_t>(r * cols + c)], mo += out[r * cols + c];
      m /= static_cast<double>(cols), mo /= static_cast<double>(cols);
      for (i64 c = 0; c < cols; ++c) {
        const double d = x[static_cast<std::size_t>(r * cols + c)] - m, e = out[r * cols + c] - mo;
        v += d * d, vo += e * e, mx = std::max(mx, std::fabs(d));
      }
      v /= static_cast<double>(cols), vo /= static_cast<double>(cols);
      EXPECT_NEAR(mo, 0.0, 1e-5) << ctx << ": row " << r;
      EXPECT_NEAR(vo, v / (v + eps), 1e-4) << ctx << ": row " << r;
    }
}

TEST(KernelsCpuLayerNorm, Shapes) {
  const std::vector<std::array<i64, 2>> shapes = {{0, 5}, {3, 0}, {1, 1}, {2, 1}, {1, 3}, {7, 1023}, {3, 65537}, {513, 7}};
  for (const auto& [rows, cols] : shapes) {
    const auto x = random_values(rows * cols, 71);
    const std::vector<float> ones(static_cast<std::size_t>(cols), 1.f), zeros(static_cast<std::size_t>(cols), 0.f);
    check_layer_norm(x, ones, zeros, rows, cols, 1e-5f, str("layer_norm gamma=1 beta=0", {rows, cols}));
    check_layer_norm(x, random_values(cols, 72, 0.25f, 2.f), random_values(cols, 73), rows, cols, 1e-5f,
                     str("layer_norm random gamma, beta", {rows, cols}));
    check_layer_norm(x, random_values(cols, 74), random_values(cols, 75), rows, cols, 0.1f,
                     str("layer_norm eps 0.1", {rows, cols}));
  }
}

TEST(KernelsCpuLayerNorm, Large) {
  const i64 rows = 64, cols = 65536;
  const std::vector<float> ones(cols, 1.f), zeros(cols, 0.f);
  check_layer_norm(random_values(rows * cols, 76), ones, zeros, rows, cols, 1e-5f, "layer_norm [64,65536]");
  check_layer_norm(random_values(rows * cols, 77), random_values(cols, 78), random_values(cols, 79), rows, cols, 1e-5f,
                   "layer_norm [64,65536] random gamma, beta");
}

// A large common offset: the mean must be accurate for the deviations to be.
TEST(KernelsCpuLayerNorm, Offset) {
  const i64 rows = 5, cols = 4097;
  const std::vector<float> ones(cols, 1.f), zeros(cols, 0.f);
  check_layer_norm(random_values(rows * cols, 80, 999.f, 1001.f), ones, zeros, rows, cols, 1e-5f, "layer_norm near 1000");
}

TEST(KernelsCpuLayerNorm, ConstantRowGivesBeta) {
  const std::vector<float> x(10, 3.25f);
  const auto gamma = random_values(5, 81), beta = random_values(5, 82);
  Out out(10);
  cpu::layer_norm(x.data(), gamma.data(), beta.data(), out.data(), 2, 5, 1e-5f);
  out.expect_written("constant rows");
  for (i64 i = 0; i < 10; ++i) EXPECT_EQ(out[i], beta[static_cast<std::size_t>(i % 5)]) << i;
}

TEST(KernelsCpuLayerNorm, NaNPropagates) {
  auto x = random_values(3 * 9, 83);
  x[9 + 4] = kNaN;  // row 1
  const std::vector<float> ones(9, 1.f), zeros(9, 0.f);
  Out out(27);
  cpu::layer_norm(x.data(), ones.data(), zeros.data(), out.data(), 3, 9, 1e-5f);
  out.expect_written("layer_norm NaN");
  for (i64 c = 0; c < 9; ++c) {
    EXPECT_TRUE(std::isfinite(out[c]));
    EXPECT_TRUE(std::isnan(out[9 + c]));
    EXPECT_TRUE(std::isfinite(out[18 + c]));
  }
}

// ---------------------------------------------------------------------------------------------
// matmul, transpose

// Runs matmul on random inputs laid out with the given batch strides and checks c against a
// float64 reference, with a tolerance relative to sum_p |a_ip b_pj| (the scale of the rounding).
void check_matmul(i64 batch, i64 m, i64 k, i64 n, i64 sa, i64 sb, unsigned seed, const std::string& ctx,
                  std::vector<float> a = {}, std::vector<float> b = {}) {
  const i64 a_size = batch == 0 ? 0 : (batch - 1) * sa + m * k;
  const i64 b_size = batch == 0 ? 0 : (batch - 1) * sb + k * n;
  if (a.empty()) a = random_values(a_size, seed);
  if (b.empty()) b = random_values(b_size, seed + 1);
  Out c(batch * m * n);
  cpu::matmul(a.data(), b.data(), c.data(), batch, m, k, n, sa, sb);
  std::vector<double> want(static_cast<std::size_t>(batch * m * n)), scale(want.size());
  for (i64 q = 0; q < batch; ++q)
    for (i64 i = 0; i < m; ++i)
      for (i64 j = 0; j < n; ++j) {
        double s = 0, sabs = 0;
        for (i64 p = 0; p < k; ++p) {
          const double prod = static_cast<double>(a[static_cast<std::size_t>(q * sa + i * k + p)]) *
                              b[static_cast<std::size_t>(q * sb + p * n + j)];
          s += prod;
          sabs += std::fabs(prod);
        }
        const auto idx = static_cast<std::size_t>((q * m + i) * n + j);
        want[idx] = s;
        scale[idx] = sabs;
      }
  expect_close(ctx, want, c, [&](i64 i) {
    const auto idx = static_cast<std::size_t>(i);
    return 1e-4 * std::fabs(want[idx]) + 1e-5 * scale[idx];
  });
}

class KernelsCpuMatmul : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    const bool has_isa_kernel = cpu::detail::matmul_force_portable(GetParam());
    if (GetParam() && !has_isa_kernel) GTEST_SKIP() << "no ISA-specific kernel on this CPU: the default run covers it";
  }
  void TearDown() override { cpu::detail::matmul_force_portable(false); }
};

const std::vector<std::array<i64, 3>> kMatmulShapes = {
    {0, 3, 4},  {3, 0, 4},     {3, 4, 0},    {1, 1, 1},    {1, 1, 5},    {5, 1, 1},      {1, 7, 1},
    {3, 5, 7},  {7, 5, 3},     {17, 1, 19},  {1, 300, 1},  {1, 513, 700}, {700, 3, 1},   {6, 16, 16},
    {4, 8, 8},  {67, 129, 33}, {13, 600, 37}, {200, 20, 30}, {3, 5, 2100}, {97, 257, 49}, {256, 256, 256}};

TEST_P(KernelsCpuMatmul, Shapes) {
  for (const auto& [m, k, n] : kMatmulShapes) check_matmul(1, m, k, n, m * k, k * n, 91, str("matmul", {m, k, n}));
}

TEST_P(KernelsCpuMatmul, KZeroGivesZeros) {
  Out c(3 * 4 * 5);
  cpu::matmul(nullptr, nullptr, c.data(), 3, 4, 0, 5, 0, 0);
  c.expect_written("k == 0");
  for (i64 i = 0; i < c.size(); ++i) EXPECT_EQ(c[i], 0.f);
}

TEST_P(KernelsCpuMatmul, BatchStrides) {
  for (const auto& [m, k, n] : std::vector<std::array<i64, 3>>{{1, 1, 1}, {3, 5, 7}, {33, 70, 18}, {1, 9, 300}}) {
    const i64 batch = 3;
    check_matmul(batch, m, k, n, m * k, k * n, 92, str("batched contiguous", {m, k, n}));
    check_matmul(batch, m, k, n, 0, k * n, 93, str("shared a", {m, k, n}));
    check_matmul(batch, m, k, n, m * k, 0, 94, str("shared b", {m, k, n}));
    check_matmul(batch, m, k, n, 0, 0, 95, str("both shared", {m, k, n}));
    check_matmul(batch, m, k, n, m * k + 5, k * n + 3, 96, str("padded strides", {m, k, n}));
    check_matmul(batch, m, k, n, m * k + 5, 0, 97, str("padded a, shared b", {m, k, n}));
  }
  check_matmul(0, 3, 4, 5, 12, 20, 98, "batch 0");
  check_matmul(5, 0, 4, 5, 0, 20, 98, "m 0, batched");
}

TEST_P(KernelsCpuMatmul, NaNAndInf) {
  const i64 m = 5, k = 7, n = 9;
  auto a = random_values(m * k, 99, 0.5f, 2.f);
  auto b = random_values(k * n, 100);
  a[2 * k + 3] = kNaN;  // row 2 of c: NaN
  b[4 * n + 6] = kInf;  // column 6 of c: +inf (a is positive), but NaN in row 2
  check_matmul(1, m, k, n, m * k, k * n, 0, "matmul specials", a, b);
}

INSTANTIATE_TEST_SUITE_P(Kernel, KernelsCpuMatmul, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "Portable" : "Default"; });

void check_transpose(i64 batch, i64 rows, i64 cols) {
  const std::string ctx = str("transpose", {batch, rows, cols});
  auto x = random_values(batch * rows * cols, 101);
  if (!x.empty()) x[x.size() / 2] = kNaN;
  Out out(batch * rows * cols);
  cpu::transpose(sizeof(float), x.data(), out.data(), batch, rows, cols);
  out.expect_written(ctx);
  i64 bad = 0;
  for (i64 q = 0; q < batch; ++q)
    for (i64 r = 0; r < rows; ++r)
      for (i64 c = 0; c < cols; ++c) {
        const float want = x[static_cast<std::size_t>((q * rows + r) * cols + c)];
        const float got = out[(q * cols + c) * rows + r];
        if (std::bit_cast<std::uint32_t>(want) != std::bit_cast<std::uint32_t>(got) && bad++ < 5)
          ADD_FAILURE() << ctx << ": (" << q << ", " << r << ", " << c << ") is " << got << ", want " << want;
      }
  EXPECT_EQ(bad, 0) << ctx;
}

TEST(KernelsCpuTranspose, Shapes) {
  const std::vector<std::array<i64, 3>> shapes = {{1, 0, 5}, {2, 5, 0}, {0, 3, 3},    {1, 1, 1},     {1, 3, 5},
                                                  {2, 67, 129}, {3, 1, 1023}, {2, 1023, 1}, {1, 33, 65}, {1, 1024, 1024},
                                                  {4, 32, 32}, {1, 65537, 3}};
  for (const auto& [batch, rows, cols] : shapes) check_transpose(batch, rows, cols);
}

}  // namespace
