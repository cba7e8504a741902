// CPU kernels against float64 references computed here, on random non-zero inputs (a kernel that
// skips an element cannot pass as a zero), with every output poisoned before the call (a quiet NaN
// with a payload no arithmetic produces) and guarded past its end.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cpu/ops.hpp"
#include "reference.hpp"
#include "support/dtype_bytes.hpp"
#include "support/matmul_cases.hpp"
#include "support/one_op.hpp"

namespace defer::kernels::cpu::detail {
// Testing hook defined in kernels/cpu/matmul.cpp (not part of ops.hpp).
bool matmul_force_portable(bool force) noexcept;
}  // namespace defer::kernels::cpu::detail

namespace {

using namespace defer::kernels;
using namespace defer::testing;
using defer::DType;
using defer::dtype_name;
using defer::dtype_size;
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
// reductions, softmax and layer norm over strided axes (kernels/strided_axis.hpp)

// A storage buffer that a StridedAxis reads from `base` on (base chosen so that negative strides stay
// inside), holding small nonzero integers: every sum is exact whatever the order of its additions.
struct StridedCase {
  const char* name;
  StridedAxis axis;
};

i64 reach_below(const StridedAxis& a) {  // how far below x the axis reaches (>= 0)
  auto below = [](i64 extent, i64 stride) { return stride < 0 ? -stride * (extent - 1) : 0; };
  return below(a.outer, a.outer_stride) + below(a.n, a.n_stride) + below(a.inner, a.inner_stride);
}
i64 reach_above(const StridedAxis& a) {  // and above it
  auto above = [](i64 extent, i64 stride) { return stride > 0 ? stride * (extent - 1) : 0; };
  return above(a.outer, a.outer_stride) + above(a.n, a.n_stride) + above(a.inner, a.inner_stride);
}

std::vector<float> integer_storage(i64 n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(-9, 9);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) {
    int k = 0;
    while (k == 0) k = dist(gen);
    x = static_cast<float>(k);
  }
  return v;
}

// x[o, j, i] by hand: base + o * outer_stride + j * n_stride + i * inner_stride.
double strided_at(const std::vector<float>& storage, i64 base, const StridedAxis& a, i64 o, i64 j, i64 i) {
  return storage[static_cast<std::size_t>(base + o * a.outer_stride + j * a.n_stride + i * a.inner_stride)];
}

// Rows, columns (also wider than one chunk), unit and non-unit strides, negative and broadcast ones.
const std::vector<StridedCase> kStridedCases = {
    {"transposed [6,4] read as [4,6]", {4, 6, 1, 1, 4, 1}},
    {"rows, n_stride 3, lanes and tail", {2, 50, 1, 150, 3, 1}},
    {"columns, inner_stride 2", {2, 3, 40, 240, 80, 2}},
    {"columns wider than a chunk, padded outers", {2, 3, 300, 907, 300, 1}},
    {"rows with inner > 1 (reduced axis denser)", {2, 7, 3, 1, 2, 14}},
    {"negative strides", {3, 5, 4, -20, 4, -1}},
    {"reduced axis broadcast (stride 0)", {3, 6, 2, 2, 0, 1}},
    {"outer broadcast (stride 0)", {4, 5, 1, 0, 1, 1}},
    {"inner broadcast (stride 0)", {3, 4, 33, 4, 1, 0}},
    {"n == 1 with an odd stride", {3, 1, 5, 5, 1000, 1}},
};

TEST(KernelsCpuStridedAxis, ContiguousHelpers) {
  const StridedAxis a = StridedAxis::contiguous(2, 3, 4);
  EXPECT_EQ(a.outer_stride, 12);
  EXPECT_EQ(a.n_stride, 4);
  EXPECT_EQ(a.inner_stride, 1);
  EXPECT_TRUE(a.is_contiguous());
  EXPECT_EQ(a.numel(), 24);
  EXPECT_EQ(a.offset(1, 2, 3), 23);
  EXPECT_TRUE((StridedAxis{1, 3, 4, 99, 4, 1}.is_contiguous())) << "an extent-1 axis takes any stride";
  EXPECT_FALSE((StridedAxis{2, 3, 4, 12, 4, 2}.is_contiguous()));
  EXPECT_FALSE((StridedAxis{2, 3, 1, 1, 2, 1}.is_contiguous()));
}

TEST(KernelsCpuStridedAxis, ReduceIsExact) {
  for (const auto& [name, a] : kStridedCases) {
    const i64 base = reach_below(a);
    const auto storage = integer_storage(base + reach_above(a) + 1, 91);
    const float* x = storage.data() + base;
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min}) {
      std::vector<double> want;
      for (i64 o = 0; o < a.outer; ++o)
        for (i64 i = 0; i < a.inner; ++i) {
          double s = 0, hi = -kDInf, lo = kDInf;
          for (i64 j = 0; j < a.n; ++j) {
            const double v = strided_at(storage, base, a, o, j, i);
            s += v, hi = std::max(hi, v), lo = std::min(lo, v);
          }
          want.push_back(op == ReduceOp::sum    ? s
                         : op == ReduceOp::mean ? s / static_cast<double>(a.n)
                         : op == ReduceOp::max  ? hi
                                                : lo);
        }
      Out out(a.outer * a.inner);
      cpu::reduce(op, x, out.data(), a);
      // sums of small integers are exact; a mean is one division away (rounded once to float)
      expect_close(std::string(name) + " " + defer::kernels::name(op), want, out, relative(want, 1e-7, 0));
    }
  }
}

TEST(KernelsCpuStridedAxis, ArgmaxFirstOfTies) {
  for (const auto& [name, a] : kStridedCases) {
    const i64 base = reach_below(a);
    const auto storage = integer_storage(base + reach_above(a) + 1, 92);  // 18 values: many ties
    std::vector<i64> out(static_cast<std::size_t>(a.outer * a.inner) + 4, -7);
    cpu::argmax(storage.data() + base, out.data(), a);
    for (i64 o = 0; o < a.outer; ++o)
      for (i64 i = 0; i < a.inner; ++i) {
        i64 best = 0;
        for (i64 j = 1; j < a.n; ++j)
          if (strided_at(storage, base, a, o, j, i) > strided_at(storage, base, a, o, best, i)) best = j;
        EXPECT_EQ(out[static_cast<std::size_t>(o * a.inner + i)], best) << name << " at (" << o << ", " << i << ")";
      }
    for (std::size_t k = static_cast<std::size_t>(a.outer * a.inner); k < out.size(); ++k)
      EXPECT_EQ(out[k], -7) << name << ": past the end";
  }
}

TEST(KernelsCpuStridedAxis, SoftmaxWritesTheLogicalOrder) {
  for (const auto& [name, a] : kStridedCases) {
    const i64 base = reach_below(a);
    const auto storage = integer_storage(base + reach_above(a) + 1, 93);
    std::vector<double> want(static_cast<std::size_t>(a.numel()));
    for (i64 o = 0; o < a.outer; ++o)
      for (i64 i = 0; i < a.inner; ++i) {
        double m = -kDInf, s = 0;
        for (i64 j = 0; j < a.n; ++j) m = std::max(m, strided_at(storage, base, a, o, j, i));
        for (i64 j = 0; j < a.n; ++j) s += std::exp(strided_at(storage, base, a, o, j, i) - m);
        for (i64 j = 0; j < a.n; ++j)
          want[static_cast<std::size_t>((o * a.n + j) * a.inner + i)] = std::exp(strided_at(storage, base, a, o, j, i) - m) / s;
      }
    Out out(a.numel());
    cpu::softmax(storage.data() + base, out.data(), a);
    expect_close(std::string("softmax ") + name, want, out, relative(want, 1e-6));
  }
}

TEST(KernelsCpuStridedAxis, LayerNormRows) {
  const std::vector<StridedCase> cases = {
      {"transposed [7,3] read as [3,7]", {3, 7, 1, 1, 3, 1}},
      {"rows 10 apart, columns 2 apart", {4, 5, 1, 10, 2, 1}},
      {"negative strides", {2, 5, 1, -5, -1, 1}},
      {"one row broadcast", {3, 4, 1, 0, 1, 1}},
      {"long rows, stride 3", {2, 1000, 1, 3000, 3, 1}},
  };
  for (const auto& [name, a] : cases) {
    const i64 base = reach_below(a);
    const auto storage = integer_storage(base + reach_above(a) + 1, 94);
    const auto gamma = random_values(a.n, 95, 0.5f, 2.f), beta = random_values(a.n, 96);
    std::vector<double> want, scale;
    for (i64 r = 0; r < a.outer; ++r) {
      double mean = 0, var = 0;
      for (i64 c = 0; c < a.n; ++c) mean += strided_at(storage, base, a, r, c, 0);
      mean /= static_cast<double>(a.n);
      for (i64 c = 0; c < a.n; ++c) var += (strided_at(storage, base, a, r, c, 0) - mean) * (strided_at(storage, base, a, r, c, 0) - mean);
      var /= static_cast<double>(a.n);
      for (i64 c = 0; c < a.n; ++c) {
        const double g = gamma[static_cast<std::size_t>(c)], b = beta[static_cast<std::size_t>(c)];
        const double y = (strided_at(storage, base, a, r, c, 0) - mean) / std::sqrt(var + 1e-5) * g;
        want.push_back(y + b);
        scale.push_back(std::fabs(y) + std::fabs(b));
      }
    }
    Out out(a.outer * a.n);
    cpu::layer_norm(storage.data() + base, gamma.data(), beta.data(), out.data(), a, 1e-5f);
    expect_close(std::string("layer_norm ") + name, want, out,
                 [&](i64 i) { return 1e-6 * scale[static_cast<std::size_t>(i)]; });
  }
  // it normalizes the last axis only
  const std::vector<float> x(8, 1.f), g(2, 1.f), b(2, 0.f);
  Out out(8);
  EXPECT_THROW(cpu::layer_norm(x.data(), g.data(), b.data(), out.data(), StridedAxis::contiguous(2, 2, 2), 1e-5f),
               std::invalid_argument);
}

// The strided overloads read a dense buffer exactly as the contiguous ones (the same loops).
TEST(KernelsCpuStridedAxis, ContiguousAxisMatchesDenseOverloadBitForBit) {
  for (const auto& [outer, n, inner] : std::vector<std::array<i64, 3>>{{3, 1023, 1}, {2, 300, 17}, {5, 3, 300}}) {
    const auto x = random_values(outer * n * inner, 97);
    const StridedAxis a = StridedAxis::contiguous(outer, n, inner);
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::mean, ReduceOp::max, ReduceOp::min}) {
      Out dense(outer * inner), strided(outer * inner);
      cpu::reduce(op, x.data(), dense.data(), outer, n, inner);
      cpu::reduce(op, x.data(), strided.data(), a);
      for (i64 k = 0; k < outer * inner; ++k) ASSERT_EQ(dense[k], strided[k]) << defer::kernels::name(op) << " " << k;
    }
    Out dense(outer * n * inner), strided(outer * n * inner);
    cpu::softmax(x.data(), dense.data(), outer, n, inner);
    cpu::softmax(x.data(), strided.data(), a);
    for (i64 k = 0; k < outer * n * inner; ++k) ASSERT_EQ(dense[k], strided[k]) << "softmax " << k;
  }
}

// ---------------------------------------------------------------------------------------------
// matmul

// A NaN with a payload no arithmetic produces, per floating dtype.
std::uint32_t poison_bits(DType t) { return t == DType::f32 ? kPoisonBits : t == DType::f16 ? 0x7e5au : 0x7fa5u; }

// Runs the product on random inputs (rounded to t; or `a`, `b`) with the output poisoned and guarded,
// and checks it against a float64 reference read through the layout, within a tolerance relative
// to sum_p |a_ip b_pj| (f32 accumulation) plus one rounding to t.
void check_matmul(DType t, const TestProduct& p, unsigned seed, std::vector<float> a = {}, std::vector<float> b = {}) {
  const std::string ctx = p.name(t);
  const MatmulLayout l = p.layout();
  const i64 count = l.batch_count(), mn = p.m * p.n, total = count * mn;
  if (a.empty()) a = random_values(operand_span(l.a, p.m, p.k, p.batch), seed);
  if (b.empty()) b = random_values(operand_span(l.b, p.k, p.n, p.batch), seed + 1);
  ASSERT_EQ(static_cast<i64>(a.size()), operand_span(l.a, p.m, p.k, p.batch)) << ctx;
  ASSERT_EQ(static_cast<i64>(b.size()), operand_span(l.b, p.k, p.n, p.batch)) << ctx;
  for (float& v : a) v = round_to(t, v);
  for (float& v : b) v = round_to(t, v);
  const std::vector<std::byte> ab = encode(t, a), bb = encode(t, b);
  const std::size_t esize = defer::dtype_size(t);
  std::vector<std::byte> out(static_cast<std::size_t>(total + kGuard) * esize);
  const std::uint32_t poison = poison_bits(t);
  for (std::size_t i = 0; i < out.size(); i += esize) std::memcpy(&out[i], &poison, esize);
  cpu::matmul(t, ab.data(), bb.data(), out.data(), l);

  const double unit = t == DType::f32 ? 0.0 : t == DType::f16 ? std::ldexp(1.0, -10) : std::ldexp(1.0, -7);
  i64 bad = 0;
  std::vector<i64> idx(p.batch.size(), 0);
  for (i64 q = 0; q < count; ++q) {
    i64 ao = 0, bo = 0;
    for (std::size_t d = 0; d < idx.size(); ++d) ao += idx[d] * l.a.batch[d], bo += idx[d] * l.b.batch[d];
    for (i64 i = 0; i < p.m; ++i)
      for (i64 j = 0; j < p.n; ++j) {
        double s = 0, sabs = 0;
        for (i64 r = 0; r < p.k; ++r) {
          const double prod = static_cast<double>(a[static_cast<std::size_t>(ao + i * l.a.row + r * l.a.col)]) *
                              b[static_cast<std::size_t>(bo + r * l.b.row + j * l.b.col)];
          s += prod;
          sabs += std::fabs(prod);
        }
        const i64 at = q * mn + i * p.n + j;
        std::uint32_t bits = 0;
        std::memcpy(&bits, &out[static_cast<std::size_t>(at) * esize], esize);
        const float got = decode(t, &out[static_cast<std::size_t>(at) * esize], 1)[0];
        const double tol = 1e-4 * std::fabs(s) + 1e-5 * sabs + unit * std::fabs(s) + (t == DType::f16 ? 1e-7 : 0.0);
        const bool ok = bits != poison && matches(s, got, tol);
        if (!ok && bad++ < 5)
          ADD_FAILURE() << ctx << ": c[" << q << ", " << i << ", " << j << "] is " << got
                        << (bits == poison ? " (not written)" : "") << ", want " << s << " (tolerance " << tol << ")";
      }
    for (std::size_t d = idx.size(); d-- > 0;) {
      if (++idx[d] < p.batch[d]) break;
      idx[d] = 0;
    }
  }
  EXPECT_EQ(bad, 0) << ctx << ": " << bad << " of " << total << " elements differ";
  for (i64 i = total; i < total + kGuard; ++i) {
    std::uint32_t bits = 0;
    std::memcpy(&bits, &out[static_cast<std::size_t>(i) * esize], esize);
    if (bits != poison) {
      ADD_FAILURE() << ctx << ": wrote past the end of the output (element " << i << " of " << total << ")";
      break;
    }
  }
}

// Each case runs the default kernel (AVX2+FMA where the CPU has it) and the portable one.
class KernelsCpuMatmul : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    const bool has_isa_kernel = cpu::detail::matmul_force_portable(GetParam());
    if (GetParam() && !has_isa_kernel) GTEST_SKIP() << "no ISA-specific kernel on this CPU: the default run covers it";
  }
  void TearDown() override { cpu::detail::matmul_force_portable(false); }
};

// Edge tiles of both micro-kernels (4 x 8, 6 x 16), k blocks (256), n blocks (2048), vectors.
const std::vector<std::array<i64, 3>> kMatmulShapes = {
    {0, 3, 4},  {3, 0, 4},     {3, 4, 0},    {1, 1, 1},    {1, 1, 5},    {5, 1, 1},      {1, 7, 1},
    {3, 5, 7},  {7, 5, 3},     {17, 1, 19},  {1, 300, 1},  {1, 513, 700}, {700, 3, 1},   {6, 16, 16},
    {4, 8, 8},  {67, 129, 33}, {13, 600, 37}, {200, 20, 30}, {3, 5, 2100}, {97, 257, 49}, {256, 256, 256}};

TEST_P(KernelsCpuMatmul, ShapesInEveryOrientation) {
  for (const auto& [m, k, n] : kMatmulShapes)
    for (const bool a_t : {false, true})
      for (const bool b_t : {false, true}) check_matmul(DType::f32, {{}, m, k, n, a_t, b_t}, 91);
}

TEST_P(KernelsCpuMatmul, PaddedLeadingDimensions) {
  for (const auto& [m, k, n] : std::vector<std::array<i64, 3>>{{5, 7, 9}, {67, 129, 33}, {13, 300, 70}})
    for (const bool a_t : {false, true})
      for (const bool b_t : {false, true}) check_matmul(DType::f32, {{}, m, k, n, a_t, b_t, /*pad=*/5}, 92);
}

TEST_P(KernelsCpuMatmul, KZeroGivesZeros) {
  for (const DType t : floating_dtypes()) {
    MatmulLayout l;
    l.m = 4, l.k = 0, l.n = 5, l.batch = {3};
    l.a.batch = {0}, l.b.batch = {0};
    std::vector<std::byte> out(60 * dtype_size(t), std::byte{0x5a});
    cpu::matmul(t, nullptr, nullptr, out.data(), l);
    for (const float v : decode(t, out.data(), 60)) EXPECT_EQ(v, 0.f) << dtype_name(t);
  }
}

TEST_P(KernelsCpuMatmul, BatchStridesSharedAndBroadcast) {
  for (const auto& [m, k, n] : std::vector<std::array<i64, 3>>{{1, 1, 1}, {3, 5, 7}, {33, 70, 18}, {1, 9, 300}})
    for (const bool a_t : {false, true})
      for (const bool b_t : {false, true}) {
        const std::vector<i64> b3 = {3};
        check_matmul(DType::f32, {b3, m, k, n, a_t, b_t}, 93);                              // back to back
        check_matmul(DType::f32, {b3, m, k, n, a_t, b_t, 0, 0, {true}, {}}, 94);            // shared a
        check_matmul(DType::f32, {b3, m, k, n, a_t, b_t, 0, 0, {}, {true}}, 95);            // shared b
        check_matmul(DType::f32, {b3, m, k, n, a_t, b_t, 0, 0, {true}, {true}}, 96);        // both shared
        check_matmul(DType::f32, {b3, m, k, n, a_t, b_t, 2, 5}, 97);                        // padded, gaps
        check_matmul(DType::f32, {b3, m, k, n, a_t, b_t, 0, 5, {}, {true}}, 98);            // gaps, shared b
        // [1, H] x [B, 1] batch dims: a broadcast over the outer dim, b over the inner one.
        check_matmul(DType::f32, {{2, 3}, m, k, n, a_t, b_t, 1, 0, {true, false}, {false, true}}, 99);
        check_matmul(DType::f32, {{2, 1, 3}, m, k, n, a_t, b_t, 0, 3}, 100);
      }
  check_matmul(DType::f32, {{0}, 3, 4, 5}, 101);
  check_matmul(DType::f32, {{5}, 0, 4, 5, false, false, 0, 0, {true}, {}}, 102);
  check_matmul(DType::f32, {{2, 0, 3}, 3, 4, 5}, 103);
}

TEST_P(KernelsCpuMatmul, HalfPrecisionAccumulatesInFloatAndRoundsOnce) {
  for (const DType t : {DType::f16, DType::bf16}) {
    for (const auto& [m, k, n] : std::vector<std::array<i64, 3>>{{1, 1, 1}, {7, 5, 3}, {67, 300, 33}, {6, 16, 16}})
      for (const bool a_t : {false, true})
        for (const bool b_t : {false, true}) check_matmul(t, {{}, m, k, n, a_t, b_t, 1}, 104);
    check_matmul(t, {{2, 3}, 9, 20, 11, true, false, 0, 2, {true, false}, {false, true}}, 105);
    check_matmul(t, {{4}, 17, 33, 9, false, true, 0, 0, {}, {true}}, 106);
  }
}

TEST_P(KernelsCpuMatmul, NaNAndInf) {
  const i64 m = 5, k = 7, n = 9;
  for (const bool b_t : {false, true}) {
    auto a = random_values(m * k, 99, 0.5f, 2.f);
    auto b = random_values(k * n, 100);
    a[2 * k + 3] = kNaN;                       // row 2 of c: NaN
    b[b_t ? 6 * k + 4 : 4 * n + 6] = kInf;     // column 6 of c: +inf (a is positive), but NaN in row 2
    check_matmul(DType::f32, {{}, m, k, n, false, b_t}, 0, a, b);
  }
}

TEST_P(KernelsCpuMatmul, NonFloatingDTypesThrow) {
  MatmulLayout l;
  l.m = l.k = l.n = 1;
  EXPECT_THROW(cpu::matmul(DType::i32, nullptr, nullptr, nullptr, l), std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(Kernel, KernelsCpuMatmul, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& p) { return p.param ? "Portable" : "Default"; });

}  // namespace
