// Tensor ops on both backends against a float64 reference, call-time checks, and the deferred
// graph's promises: nothing launches before a wait, unwaited work never runs, shared work runs once.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <thread>

#include <defer/defer.hpp>

#include "graph/executor.hpp"
#include "graph/op_node.hpp"
#include "runtime/stream_ordered_pool.hpp"
#include "reference.hpp"
#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;
namespace R = defer::testing::ref;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();

// Fills the allocator's cache for `n` f32 elements with NaN blocks, so that an op output that is
// not completely written shows up as NaN instead of as a plausible stale value.
void poison(Device d, int64_t n) {
  if (n <= 0) return;
  std::vector<Tensor> blocks;
  for (int i = 0; i < 3; ++i) blocks.push_back(full({n}, kNaN, DType::f32, d));
  current_stream(d).synchronize();
}

// |got - want| <= rtol * max(|want|, scale[i]) elementwise; NaN must meet NaN, inf the same inf.
void expect_close(const std::vector<float>& got, const R::Vec& want, double rtol, const R::Vec* scale = nullptr,
                  const std::string& what = "") {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    bool ok;
    if (std::isnan(w)) ok = std::isnan(g);
    else if (std::isinf(w)) ok = g == w;
    else {
      const double s = std::max(std::abs(w), scale ? (*scale)[i] : 1e-6);
      ok = std::abs(g - w) <= rtol * s;
    }
    if (!ok && reported++ < 5) ADD_FAILURE() << what << " [" << i << "]: got " << g << ", want " << w;
  }
}

std::vector<float> randn(const R::Dims& s, unsigned seed, float lo = -3.f, float hi = 3.f) {
  return random_values(static_cast<std::size_t>(R::numel(s)), seed, lo, hi);
}

class Ops : public ::testing::TestWithParam<DeviceKind> {
 protected:
  void SetUp() override {
    if (GetParam() == DeviceKind::cuda && !cuda_available()) GTEST_SKIP() << "no CUDA device";
    dev_ = GetParam() == DeviceKind::cuda ? Device::cuda(0) : Device::cpu();
  }
  Tensor tensor(const std::vector<float>& v, const R::Dims& s) { return from_vector(v, s, dev_); }
  std::vector<float> run(const TensorAwait& a, int64_t n) {
    poison(dev_, n);
    return to_vector(wait(a));
  }
  Device dev_ = Device::cpu();
};

const std::vector<int64_t> kSizes{0, 1, 3, 1023, 65537, 1 << 22};

}  // namespace

TEST_P(Ops, UnaryMatchesReference) {
  struct Case {
    const char* name;
    TensorAwait (*op)(const TensorAwait&);
    double (*ref)(double);
    float lo, hi;
  };
  const Case cases[] = {
      {"neg", defer::neg, [](double x) { return -x; }, -3, 3},
      {"abs", defer::abs, [](double x) { return std::abs(x); }, -3, 3},
      {"exp", defer::exp, [](double x) { return std::exp(x); }, -10, 10},
      {"log", defer::log, [](double x) { return std::log(x); }, 0.01f, 100},
      {"sqrt", defer::sqrt, [](double x) { return std::sqrt(x); }, 0.01f, 100},
      {"tanh", defer::tanh, [](double x) { return std::tanh(x); }, -5, 5},
      {"sigmoid", defer::sigmoid, R::sigmoid, -20, 20},
      {"relu", defer::relu, [](double x) { return x > 0 ? x : 0.0; }, -3, 3},
      {"silu", defer::silu, [](double x) { return x * R::sigmoid(x); }, -8, 8},
      {"gelu", defer::gelu, R::gelu, -6, 6},
      {"gelu_tanh", defer::gelu_tanh, R::gelu_tanh, -6, 6},
  };
  for (const Case& c : cases) {
    for (int64_t n : kSizes) {
      if (n == (1 << 22) && c.op != defer::gelu && c.op != defer::exp) continue;  // the large size for a few
      const auto x = randn({n}, static_cast<unsigned>(n) + 17, c.lo, c.hi);
      const auto got = run(c.op(tensor(x, {n})), n);
      // A relu of a negative input is exactly 0 and silu/gelu go to 0 for very negative inputs:
      // measure those against the input's magnitude.
      R::Vec scale = R::map(R::widen(x), [](double v) { return std::max(1e-6, std::abs(v) * 1e-2); });
      expect_close(got, R::map(R::widen(x), c.ref), 1e-5, &scale, std::string(c.name) + " n=" + std::to_string(n));
    }
  }
}

TEST_P(Ops, BinaryBroadcastingMatchesReference) {
  const std::vector<std::pair<R::Dims, R::Dims>> shapes{
      {{3}, {3}},           {{1}, {1023}},      {{2, 3}, {3}},          {{4, 1}, {1, 5}},   {{2, 1, 3}, {1, 4, 1}},
      {{5, 1, 1, 2}, {3, 1}}, {{}, {7}},        {{1}, {0}},             {{65537}, {1}},     {{3, 1, 5}, {3, 4, 5}},
      {{2, 3, 4}, {2, 3, 4}}, {{1, 1}, {1}},    {{6, 1, 7, 1}, {1, 5, 1, 3}}};
  using Op = TensorAwait (*)(const TensorAwait&, const TensorAwait&);
  const std::vector<std::tuple<const char*, Op, double (*)(double, double)>> ops{
      {"add", defer::add, [](double a, double b) { return a + b; }},
      {"sub", defer::sub, [](double a, double b) { return a - b; }},
      {"mul", defer::mul, [](double a, double b) { return a * b; }},
      {"div", defer::div, [](double a, double b) { return a / b; }},
      {"maximum", defer::maximum, [](double a, double b) { return std::max(a, b); }},
      {"minimum", defer::minimum, [](double a, double b) { return std::min(a, b); }}};
  unsigned seed = 1;
  for (const auto& [sa, sb] : shapes) {
    for (const auto& [name, op, ref] : ops) {
      auto a = randn(sa, seed++), b = randn(sb, seed++);
      for (auto& v : b) v = v < 0 ? v - 0.5f : v + 0.5f;  // keep divisors away from 0
      const R::Vec want = R::zip(R::widen(a), sa, R::widen(b), sb, ref);
      // a + b in float is within half an ulp of the exact result of the float inputs, so the
      // relative error against the float64 result is measured on the operands' scale.
      const R::Vec scale = R::zip(R::widen(a), sa, R::widen(b), sb, [](double x, double y) { return std::abs(x) + std::abs(y); });
      expect_close(run(op(tensor(a, sa), tensor(b, sb)), static_cast<int64_t>(want.size())), want, 1e-5, &scale,
                   std::string(name) + " " + shape_str(sa) + " " + shape_str(sb));
    }
  }
}

TEST_P(Ops, ScalarOpsAndOperatorsMatchReference) {
  const auto x = randn({5, 7}, 3);
  const R::Vec w = R::widen(x);
  Tensor t = tensor(x, {5, 7});
  TensorAwait a = t;
  const R::Vec scale = R::map(w, [](double v) { return std::abs(v) + 2.5; });
  expect_close(run(add(a, 2.5f), 35), R::map(w, [](double v) { return v + 2.5; }), 1e-5, &scale, "add s");
  expect_close(run(sub(a, 2.5f), 35), R::map(w, [](double v) { return v - 2.5; }), 1e-5, &scale, "sub s");
  expect_close(run(mul(a, 2.5f), 35), R::map(w, [](double v) { return v * 2.5; }), 1e-5, nullptr, "mul s");
  expect_close(run(div(a, 2.5f), 35), R::map(w, [](double v) { return v / 2.5; }), 1e-5, nullptr, "div s");
  expect_close(run(a + 1.f, 35), R::map(w, [](double v) { return v + 1; }), 1e-5, &scale, "+ s");
  expect_close(run(a - 1.f, 35), R::map(w, [](double v) { return v - 1; }), 1e-5, &scale, "- s");
  expect_close(run(a * 3.f, 35), R::map(w, [](double v) { return v * 3; }), 1e-5, nullptr, "* s");
  expect_close(run(a / 4.f, 35), R::map(w, [](double v) { return v / 4; }), 1e-5, nullptr, "/ s");
  expect_close(run(2.f + a, 35), R::map(w, [](double v) { return 2 + v; }), 1e-5, &scale, "s +");
  expect_close(run(2.f - a, 35), R::map(w, [](double v) { return 2 - v; }), 1e-5, &scale, "s -");
  expect_close(run(2.f * a, 35), R::map(w, [](double v) { return 2 * v; }), 1e-5, nullptr, "s *");
  expect_close(run(-a, 35), R::map(w, [](double v) { return -v; }), 1e-5, nullptr, "unary -");
  const R::Vec scale2 = R::map(w, [](double v) { return v * v + std::abs(v); });
  expect_close(run(a * a + a, 35), R::map(w, [](double v) { return v * v + v; }), 1e-5, &scale2, "a*a+a");
  expect_close(run(a - a, 35), R::Vec(35, 0.0), 1e-5, &scale, "a-a");
  expect_close(run(a / a, 35), R::Vec(35, 1.0), 1e-5, nullptr, "a/a");
}

TEST_P(Ops, ReductionsMatchReference) {
  const std::vector<R::Dims> shapes{{7}, {3, 5}, {4, 1, 6}, {2, 3, 1023}, {65537}, {3, 0, 2}};
  unsigned seed = 40;
  for (const R::Dims& s : shapes) {
    const auto x = randn(s, seed++);
    const R::Vec w = R::widen(x);
    for (int dim = -static_cast<int>(s.size()); dim < static_cast<int>(s.size()); ++dim) {
      const int d = dim < 0 ? dim + static_cast<int>(s.size()) : dim;
      for (bool keep : {false, true}) {
        R::Dims out = s;
        if (keep) out[static_cast<std::size_t>(d)] = 1;
        else out.erase(out.begin() + d);
        const std::string what = shape_str(s) + " dim=" + std::to_string(dim) + (keep ? " keepdim" : "");
        TensorAwait r = sum(tensor(x, s), dim, keep);
        EXPECT_EQ(wait(r).shape(), out) << what;
        const R::Vec scale = R::abs_sum(w, s, d);
        expect_close(run(r, R::numel(out)), R::reduce(w, s, d, R::Reduce::sum), 1e-5, &scale, "sum " + what);
        R::Vec mscale = scale;
        const double n = static_cast<double>(s[static_cast<std::size_t>(d)]);
        for (auto& v : mscale) v /= n;
        expect_close(run(mean(tensor(x, s), dim, keep), R::numel(out)), R::reduce(w, s, d, R::Reduce::mean), 1e-5,
                     &mscale, "mean " + what);
        if (s[static_cast<std::size_t>(d)] > 0)
          expect_close(run(max(tensor(x, s), dim, keep), R::numel(out)), R::reduce(w, s, d, R::Reduce::max), 0, nullptr,
                       "max " + what);
      }
    }
  }
}

TEST_P(Ops, SoftmaxMatchesReferenceOnEveryDimAndLongRows) {
  const std::vector<R::Dims> shapes{{5}, {3, 4}, {2, 3, 5}, {2, 65537}, {1023, 3}};
  unsigned seed = 60;
  for (const R::Dims& s : shapes) {
    const auto x = randn(s, seed++, -8, 8);
    for (int dim = -1; dim < static_cast<int>(s.size()); ++dim) {
      const int d = dim < 0 ? dim + static_cast<int>(s.size()) : dim;
      const auto got = run(softmax(tensor(x, s), dim), R::numel(s));
      const R::Vec want = R::softmax(R::widen(x), s, d);
      const R::Vec scale(want.size(), 1e-7);
      expect_close(got, want, 1e-4, &scale, "softmax " + shape_str(s) + " dim=" + std::to_string(dim));
    }
  }
}

TEST_P(Ops, LayerNormMatchesReference) {
  for (const R::Dims& s : std::vector<R::Dims>{{4, 7}, {3, 1023}, {2, 65537}, {2, 3, 5}, {9}}) {
    const int64_t cols = s.back();
    const auto x = randn(s, 70, -5, 5), g = randn({cols}, 71), b = randn({cols}, 72);
    const auto got = run(layer_norm(tensor(x, s), tensor(g, {cols}), tensor(b, {cols}), 1e-5f), R::numel(s));
    const R::Vec want = R::layer_norm(R::widen(x), R::widen(g), R::widen(b), cols, 1e-5);
    const R::Vec scale(want.size(), 1.0);
    expect_close(got, want, 1e-4, &scale, "layer_norm " + shape_str(s));
  }
}

TEST_P(Ops, MatmulMatchesReference) {
  // torch.matmul's shapes (tests/test_matmul.cpp covers strided operands and dtypes).
  const std::vector<std::pair<R::Dims, R::Dims>> shapes{
      {{1, 1}, {1, 1}},     {{3, 5}, {5, 7}},       {{67, 129}, {129, 33}}, {{2, 3, 4}, {2, 4, 5}},
      {{3, 4, 5}, {5, 2}},  {{4, 5}, {3, 5, 6}},    {{3, 0}, {0, 4}},       {{128, 256}, {256, 64}},
      {{2, 3, 4, 5}, {2, 3, 5, 6}}, {{3, 4, 5}, {2, 1, 5, 6}}, {{4}, {4, 5}}, {{3, 4}, {4}}, {{4}, {4}},
      {{5}, {2, 3, 5, 4}}};
  unsigned seed = 80;
  for (const auto& [sa, sb] : shapes) {
    const auto a = randn(sa, seed++), b = randn(sb, seed++);
    const R::Vec want = R::matmul(R::widen(a), sa, R::widen(b), sb);
    const R::Vec scale = R::matmul(R::map(R::widen(a), [](double v) { return std::abs(v); }), sa,
                                   R::map(R::widen(b), [](double v) { return std::abs(v); }), sb);
    const TensorAwait c = matmul(tensor(a, sa), tensor(b, sb));
    const auto got = run(c, static_cast<int64_t>(want.size()));
    EXPECT_EQ(wait(c).shape(), R::matmul_shape(sa, sb)) << shape_str(sa) << " x " << shape_str(sb);
    expect_close(got, want, 1e-4, &scale, "matmul " + shape_str(sa) + " x " + shape_str(sb));
  }
}

TEST_P(Ops, TransposeSwapsTheLastTwoDims) {
  for (const R::Dims& s : std::vector<R::Dims>{{3, 5}, {2, 3, 4}, {1, 1}, {0, 3}, {33, 65}}) {
    const auto x = randn(s, 90);
    TensorAwait t = transpose(tensor(x, s));
    R::Dims out = s;
    std::swap(out[out.size() - 1], out[out.size() - 2]);
    EXPECT_EQ(wait(t).shape(), out);
    expect_close(run(t, R::numel(s)), R::transpose(R::widen(x), s), 0, nullptr, "transpose " + shape_str(s));
  }
  const std::vector<std::int32_t> ints{1, 2, 3, 4, 5, 6};
  EXPECT_EQ(to_host<std::int32_t>(wait(transpose(from_host(ints, {2, 3}, dev_)))),
            (std::vector<std::int32_t>{1, 4, 2, 5, 3, 6}));
}

TEST_P(Ops, NanAndInfPropagate) {
  const float inf = std::numeric_limits<float>::infinity();
  Tensor t = tensor({kNaN, inf, -inf, 1.f}, {4});
  auto r = to_vector(wait(relu(t)));
  EXPECT_TRUE(std::isnan(r[0]));
  EXPECT_EQ(r[1], inf);
  EXPECT_EQ(r[2], 0.f);
  auto m = to_vector(wait(maximum(t, tensor({0.f}, {1}))));
  EXPECT_TRUE(std::isnan(m[0])) << "maximum propagates NaN";
  auto s = to_vector(wait(sum(t, 0)));
  EXPECT_TRUE(std::isnan(s[0]));
  auto l = to_vector(wait(log(tensor({-1.f, 0.f}, {2}))));
  EXPECT_TRUE(std::isnan(l[0]));
  EXPECT_EQ(l[1], -inf);
  auto sm = to_vector(wait(softmax(tensor({kNaN, 1.f}, {2}), 0)));
  EXPECT_TRUE(std::isnan(sm[1]));
}

TEST_P(Ops, ToTheSameDeviceIsTheSameTensor) {
  Tensor t = tensor({1.f, 2.f}, {2});
  EXPECT_EQ(wait(to(t, dev_)).data_ptr(), t.data_ptr());
}

TEST_P(Ops, EagerAndDeferredGiveIdenticalResults) {
  const auto x = randn({64, 48}, 100), w = randn({48, 32}, 101), g = randn({32}, 102), b = randn({32}, 103);
  auto step = [&] {
    TensorAwait h = gelu(matmul(tensor(x, {64, 48}), tensor(w, {48, 32})) + tensor(b, {32}));
    return layer_norm(softmax(h * 0.5f, -1) + h, tensor(g, {32}), tensor(b, {32}));
  };
  reset_stats();
  std::vector<float> eager;
  {
    ModeGuard guard(Mode::eager);
    TensorAwait r = step();
    EXPECT_TRUE(r.is_ready());
    EXPECT_EQ(stats().kernel_launches, 7u) << "eager: one kernel per op, at the call";
    eager = to_vector(wait(r));
  }
  reset_stats();
  TensorAwait r = step();
  EXPECT_EQ(stats().kernel_launches, 0u);
  EXPECT_EQ(to_vector(wait(r)), eager);
}

INSTANTIATE_TEST_SUITE_P(Backends, Ops, ::testing::Values(DeviceKind::cpu, DeviceKind::cuda),
                         [](const auto& param_info) { return param_info.param == DeviceKind::cpu ? "cpu" : "cuda"; });

// --- call-time checks (CPU; the rules do not depend on the backend) --------------------------------

TEST(OpChecks, BadShapesThrowAtCallTimeNamingOpAndShapes) {
  const Device cpu = Device::cpu();
  TensorAwait a = from_vector(random_values(6, 1), {2, 3}, cpu);
  TensorAwait b = from_vector(random_values(4, 2), {4}, cpu);
  reset_stats();
  auto expect_message = [](auto&& f, std::vector<std::string> parts) {
    try {
      f();
      ADD_FAILURE() << "no std::invalid_argument";
    } catch (const std::invalid_argument& e) {
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << " lacks " << p;
    }
  };
  expect_message([&] { add(a, b); }, {"add", "[2, 3]", "[4]"});
  expect_message([&] { a * b; }, {"mul", "[2, 3]", "[4]"});
  expect_message([&] { matmul(a, a); }, {"matmul", "[2, 3] x [2, 3]"});
  expect_message([&] { matmul(b, a); }, {"matmul", "[4] x [2, 3]"});
  expect_message([&] { matmul(from_vector(random_values(24, 3), {2, 3, 4}, cpu), from_vector(random_values(60, 4), {3, 4, 5}, cpu)); },
                 {"matmul", "batch", "[2, 3, 4] x [3, 4, 5]"});
  expect_message([&] { sum(a, 2); }, {"sum", "dim 2"});
  expect_message([&] { mean(a, -3); }, {"mean", "dim -3"});
  expect_message([&] { softmax(a, 5); }, {"softmax"});
  expect_message([&] { max(from_vector({}, {3, 0}, cpu), 1); }, {"max", "[3, 0]"});
  expect_message([&] { layer_norm(a, b, b); }, {"layer_norm", "[4]", "[2, 3]"});
  expect_message([&] { transpose(b); }, {"transpose", "[4]"});
  expect_message([&] { add(a, from_host(std::vector<std::int32_t>{1, 2, 3}, {3}, cpu)); }, {"add", "i32"});
  expect_message([&] { relu(TensorAwait()); }, {"relu", "empty"});
  expect_message([&] { exp(Tensor()); }, {"exp", "undefined"});
  expect_message([&] { layer_norm(a, from_vector(random_values(3, 5), {3}, cpu), from_vector(random_values(3, 6), {3}, cpu), -1.f); },
                 {"layer_norm", "eps"});
  EXPECT_EQ(stats().kernel_launches, 0u) << "a failed call launched something";
  // The runtime keeps working after each of them.
  EXPECT_EQ(wait(sum(a, 1)).shape(), (Shape{2}));
}

TEST(OpChecks, UnavailableDeviceIsDeviceErrorAtCallTime) {
  if (cuda_available()) GTEST_SKIP() << "this machine has a GPU";
  EXPECT_THROW(to(from_vector({1.f}, {1}, Device::cpu()), Device::cuda(0)), DeviceError);
}

TEST(OpChecks, MixedDevicesAreInvalidArguments) {
  DEFER_SKIP_WITHOUT_GPU();
  TensorAwait c = from_vector({1.f, 2.f}, {2}, Device::cpu());
  TensorAwait g = from_vector({1.f, 2.f}, {2}, Device::cuda(0));
  try {
    add(c, g);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cpu"), std::string::npos) << e.what();
  }
}

TEST(OpChecks, OperandOfUnknownShapeIsCheckedWhenItRunsAndTheErrorIsCached) {
  const Device cpu = Device::cpu();
  Await<Tensor> later = awaitable([cpu] { return from_vector(random_values(5, 9), {5}, cpu); });
  TensorAwait ok = later + 1.f;
  TensorAwait bad = add(later, from_vector(random_values(3, 8), {3}, cpu));  // accepted: [?] + [3]
  EXPECT_EQ(to_vector(wait(ok)).size(), 5u);
  for (int i = 0; i < 2; ++i) {
    try {
      wait(bad);
      FAIL() << "no error";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("[5]"), std::string::npos) << e.what();
    }
  }
}

// --- the deferred graph ----------------------------------------------------------------------------

TEST(Deferral, NothingLaunchesUntilAWait) {
  const Device cpu = Device::cpu();
  TensorAwait x = from_vector(random_values(100, 1), {10, 10}, cpu);
  reset_stats();
  TensorAwait y = x;
  for (int i = 0; i < 500; ++i) y = (i % 3 == 0) ? relu(y) : (i % 3 == 1 ? y * 0.5f : y + x);
  TensorAwait s = softmax(matmul(y, transpose(y)), -1);
  EXPECT_EQ(stats().kernel_launches, 0u);
  EXPECT_EQ(stats().awaits_run, 0u);
  EXPECT_FALSE(s.is_ready());
  set_fusion_enabled(false);  // one kernel per op, to count them
  wait(s);
  set_fusion_enabled(true);
  // 500 element-wise ops, matmul (reading transpose(y), a view, in place: no copy) and softmax.
  EXPECT_EQ(stats().kernel_launches, 502u);
  EXPECT_EQ(stats().awaits_run, 503u);
  reset_stats();
  wait(s);
  wait(y);
  EXPECT_EQ(stats().kernel_launches, 0u) << "waiting again launched";
}

TEST(Deferral, AnUnwaitedBranchNeverRuns) {
  TensorAwait x = from_vector(random_values(64, 2), {64}, Device::cpu());
  reset_stats();
  TensorAwait unused = exp(x) * 3.f;  // never waited
  TensorAwait used = x + 1.f;
  wait(used);
  EXPECT_EQ(stats().kernel_launches, 1u);
  EXPECT_FALSE(unused.is_ready());
}

TEST(Deferral, SharedSubexpressionsRunOnceAndIntermediatesKeepTheirTensor) {
  const auto v = random_values(256, 3);
  TensorAwait x = from_vector(v, {256}, Device::cpu());
  reset_stats();
  TensorAwait d = exp(x);
  TensorAwait r = (d + d) + (d * 2.f);
  TensorAwait u = sum(d, 0);  // another graph on d, not waited
  set_fusion_enabled(false);
  wait(r);
  set_fusion_enabled(true);
  EXPECT_EQ(stats().kernel_launches, 4u) << "exp, add, mul and the final add: exp once";
  EXPECT_TRUE(d.is_ready()) << "an intermediate the user holds is materialized";
  const void* p = wait(d).data_ptr();
  EXPECT_EQ(wait(d).data_ptr(), p);
  EXPECT_EQ(stats().kernel_launches, 4u);
  EXPECT_EQ(wait(u).shape(), Shape{});
  const auto got = to_vector(wait(r));
  for (std::size_t i = 0; i < v.size(); ++i) EXPECT_NEAR(got[i], 4.0 * std::exp(double(v[i])), 1e-5 * 4 * std::exp(double(v[i])));
}

TEST(Deferral, DeepChainsWaitAndDieWithoutRecursion) {
  TensorAwait x = from_vector({1.f}, {1}, Device::cpu());
  TensorAwait y = x;
  for (int i = 0; i < 200000; ++i) y = y + 1.f;
  EXPECT_EQ(to_vector(wait(y))[0], 200001.f);
  TensorAwait z = x;
  for (int i = 0; i < 200000; ++i) z = z * 1.f;
  z = TensorAwait();  // an unwaited deep chain is destroyed iteratively too
}

TEST(Deferral, ResultsAreOrderedAfterProducersOnOtherStreams) {
  const Device cpu = Device::cpu();
  Stream a = Stream::create(cpu), b = Stream::create(cpu);
  Tensor t = [&] {
    StreamGuard g(a);
    Tensor out = full({4096}, 1.f, DType::f32, cpu);
    float* p = static_cast<float*>(out.data_ptr());
    enqueue_sleep(a, 100);
    enqueue(a, [p] { std::fill_n(p, 4096, 5.f); });
    return out;
  }();
  TensorAwait src = [&] {
    StreamGuard g(a);
    return TensorAwait(t);  // nowait on a: captures a's completion
  }();
  TensorAwait r = src * 2.f;
  const Tensor& out = wait(r, b);
  StreamGuard g(b);
  EXPECT_EQ(to_vector(out), std::vector<float>(4096, 10.f));
}

TEST(Deferral, ConcurrentWaitsOfOneGraphRunEachNodeOnce) {
  for (bool fused : {false, true}) {
    TensorAwait x = from_vector(random_values(1000, 4), {1000}, Device::cpu());
    std::vector<TensorAwait> steps{x};  // every step held: all 100 nodes are materialized
    for (int i = 0; i < 50; ++i) {
      steps.push_back(tanh(steps.back()));
      steps.push_back(steps.back() + x);
    }
    set_fusion_enabled(fused);
    reset_stats();
    std::vector<std::thread> threads;
    std::vector<const void*> seen(8);
    for (int i = 0; i < 8; ++i)
      threads.emplace_back([&, i] { seen[static_cast<std::size_t>(i)] = wait(steps.back()).data_ptr(); });
    for (auto& t : threads) t.join();
    set_fusion_enabled(true);
    EXPECT_EQ(stats().awaits_run, 100u) << "each node once (fused: " << fused << ")";
    EXPECT_EQ(stats().kernel_launches, fused ? 13u : 100u) << "fused: 8 outputs a kernel at most";
    for (const void* p : seen) EXPECT_EQ(p, seen[0]);
  }
}

TEST(Modes, DefaultIsDeferredAndGuardsNestAndArePerThread) {
  EXPECT_EQ(mode(), Mode::deferred);
  {
    ModeGuard e(Mode::eager);
    EXPECT_EQ(mode(), Mode::eager);
    Mode other = Mode::eager;
    std::thread([&] { other = mode(); }).join();
    EXPECT_EQ(other, Mode::deferred);
    {
      ModeGuard d(Mode::deferred);
      EXPECT_EQ(mode(), Mode::deferred);
    }
    EXPECT_EQ(mode(), Mode::eager);
  }
  EXPECT_EQ(mode(), Mode::deferred);
}

TEST(Modes, EagerLaunchesAtTheCallAndErrorsSurfaceThere) {
  TensorAwait x = from_vector(random_values(10, 5), {10}, Device::cpu());
  ModeGuard e(Mode::eager);
  reset_stats();
  TensorAwait y = exp(x);
  EXPECT_TRUE(y.is_ready());
  EXPECT_EQ(stats().kernel_launches, 1u);
  detail::pool_for(Device::cpu()).fail_requests(1, 1);
  EXPECT_THROW(exp(x), OutOfMemory);
  EXPECT_EQ(to_vector(wait(y)).size(), 10u);
}

TEST(Explain, ShowsThePendingGraphAndWhatAWaitLaunches) {
  TensorAwait x = from_vector(random_values(6, 6), {2, 3}, Device::cpu());
  TensorAwait y = sum(relu(x) * 2.f, 1);
  const std::string before = explain(y);
  EXPECT_NE(before.find("relu"), std::string::npos) << before;
  EXPECT_NE(before.find("mul"), std::string::npos) << before;
  EXPECT_NE(before.find("sum(dim=1)"), std::string::npos) << before;
  EXPECT_NE(before.find("[2, 3]"), std::string::npos) << before;
  // relu, mul and the sum run as one fused kernel (a reduction with its element-wise prologue)
  EXPECT_NE(before.find("a wait launches 1 kernel (1 fused)"), std::string::npos) << before;
  EXPECT_NE(before.find("fused(relu, mul, sum)"), std::string::npos) << before;
  wait(y);
  const std::string after = explain(y);
  EXPECT_NE(after.find("launches nothing"), std::string::npos) << after;
  EXPECT_EQ(explain(TensorAwait()), "empty Await\n");
}

TEST(Explain, LaunchLogNamesOpShapesDeviceAndReason) {
  TensorAwait x = from_vector(random_values(6, 7), {2, 3}, Device::cpu());
  detail::set_launch_log(true);
  ::testing::internal::CaptureStderr();
  wait(x + 1.f);
  const std::string log = ::testing::internal::GetCapturedStderr();
  detail::set_launch_log(false);
  EXPECT_NE(log.find("launch add"), std::string::npos) << log;
  EXPECT_NE(log.find("[2, 3]"), std::string::npos) << log;
  EXPECT_NE(log.find("cpu"), std::string::npos) << log;
  EXPECT_NE(log.find("wait"), std::string::npos) << log;
}
