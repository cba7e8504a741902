// Every element-wise op of the op table (kernels/op_table.hpp) x every dtype it takes x both devices,
// called through its PUBLIC function and compared element by element with the float64 reference
// (tests/reference.hpp). Nothing here names an op: the rows come from kElementwiseOps, the public
// call is generated from the X-macro, and the input domain of each row is an exhaustive switch, so a
// new row is tested without an edit here, and a row whose public function, reference or domain is
// missing is a build error (-Werror=switch). Also: broadcasting, NaN/Inf, eager == deferred, dtype
// errors, random fused DAGs bit-identical to their unfused runs, and which graphs are one fused
// kernel launch (casts, comparisons, where and masked_fill included).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include <defer/defer.hpp>
#include <defer/options.hpp>

#include "op_table.hpp"
#include "reference.hpp"
#include "support/op_call.hpp"
#include "support/one_op.hpp"
#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;
using kernels::ElementwiseInfo;
using kernels::OpData;
using kernels::OpResult;
namespace R = defer::testing::ref;

// Readable test parameters in gtest's messages.
namespace defer {
inline void PrintTo(DeviceKind k, std::ostream* os) { *os << (k == DeviceKind::cuda ? "cuda" : "cpu"); }
}  // namespace defer
namespace defer::kernels {
inline void PrintTo(ElementwiseOp op, std::ostream* os) { *os << info(op).id; }
}  // namespace defer::kernels

namespace {

constexpr DType kAllDTypes[] = {DType::f32, DType::i32, DType::f16, DType::bf16, DType::i64, DType::boolean};
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

const ElementwiseInfo& row(ElementwiseOp op) { return kernels::info(op); }
bool is_condition(ElementwiseOp op, int operand) { return kernels::condition_operand(op) == operand; }

// The dtypes the op's data operands may have: the table's `data` column.
std::vector<DType> data_dtypes(ElementwiseOp op) {
  if (row(op).data == OpData::floating) return {DType::f32, DType::f16, DType::bf16};
  return {std::begin(kAllDTypes), std::end(kAllDTypes)};
}
// The result dtypes to try: the cast target for `to`, else the one the `result` column implies.
std::vector<DType> targets(ElementwiseOp op, DType data) {
  switch (row(op).result) {
    case OpResult::same: return {data};
    case OpResult::boolean: return {DType::boolean};
    case OpResult::cast: return {std::begin(kAllDTypes), std::end(kAllDTypes)};
    case OpResult::index: return {DType::i64};
  }
  return {};
}

// The op's PUBLIC function (include/defer/ops.hpp), generated from the table: `api` names the
// function, `tensors` and `scalars` pick the overload, `result` == cast takes the target dtype.
TensorAwait call(ElementwiseOp op, const std::vector<TensorAwait>& t, const std::vector<float>& s, DType cast_to) {
  return defer::testing::call_public(op, t, s, cast_to);
}

// Random inputs of each row: a range where the op is defined and well conditioned (positive for
// log/sqrt/rsqrt/pow), its scalars (inexact in f16 and bf16 and not integers: the op must round
// or truncate them to the data's dtype first), and whether operands keep away from 0 (divisors).
// A new row must say what it takes (-Werror=switch).
struct Domain {
  float lo = -4.f, hi = 4.f;
  std::vector<float> scalars;
  bool away_from_zero = false;
};
Domain domain(ElementwiseOp op) {
  using E = ElementwiseOp;
  switch (op) {
    case E::log:
    case E::sqrt:
    case E::rsqrt: return {0.05f, 50.f, {}};
    case E::exp: return {-8.f, 8.f, {}};
    case E::neg:
    case E::abs:
    case E::tanh:
    case E::sigmoid:
    case E::relu:
    case E::silu:
    case E::gelu:
    case E::gelu_tanh:
    case E::erf:
    case E::softplus: return {-6.f, 6.f, {}};
    case E::add:
    case E::sub:
    case E::mul:
    case E::maximum:
    case E::minimum: return {};
    case E::div: return {-4.f, 4.f, {}, true};
    case E::add_scalar:
    case E::sub_scalar:
    case E::mul_scalar:
    case E::maximum_scalar:
    case E::minimum_scalar: return {-4.f, 4.f, {0.3f}};
    case E::div_scalar: return {-4.f, 4.f, {-2.3f}};
    case E::pow_scalar: return {0.1f, 4.f, {1.7f}};
    case E::clamp: return {-4.f, 4.f, {-1.1f, 2.3f}};
    case E::eq:
    case E::ne:
    case E::lt:
    case E::le:
    case E::gt:
    case E::ge:
    case E::where: return {};
    case E::eq_scalar:
    case E::ne_scalar:
    case E::lt_scalar:
    case E::le_scalar:
    case E::gt_scalar:
    case E::ge_scalar: return {-4.f, 4.f, {1.3f}};
    case E::masked_fill: return {-4.f, 4.f, {-2.7f}};
    case E::to: return {-7e4f, 7e4f, {}};  // beyond f16's range, beyond its exact integers
  }
  return {};
}

// x rounded to nearest even to `bits` significant bits, exponents down to emin (subnormals below),
// infinity beyond `max`: f16 and bf16 computed without the library's conversions.
double round_binary(double x, int bits, int emin, double max) {
  if (!std::isfinite(x) || x == 0) return x;
  int e = 0;
  std::frexp(x, &e);  // x = m 2^e, 0.5 <= |m| < 1: the leading bit is 2^(e-1)
  const int ulp = std::max(e - 1, emin) - (bits - 1);
  const double r = std::ldexp(std::nearbyint(std::ldexp(x, -ulp)), ulp);
  return std::abs(r) > max ? std::copysign(kInf, r) : r;
}

// v (a value of dtype `from`) converted to `to` as a cast must: floats round to nearest even, a
// float to an integer truncates (NaN 0, saturating), i64 -> i32 wraps, nonzero is true.
double convert(double v, DType from, DType to) {
  switch (to) {
    case DType::f32: return static_cast<double>(static_cast<float>(v));
    case DType::f16: return round_binary(v, 11, -14, 65504.0);
    case DType::bf16: return round_binary(v, 8, -126, 3.3895313892515355e38);
    case DType::i32:
      if (is_integer(from) || from == DType::boolean)
        return static_cast<double>(static_cast<std::int32_t>(static_cast<std::uint32_t>(static_cast<std::int64_t>(v))));
      if (std::isnan(v)) return 0;
      return std::clamp(std::trunc(v), -2147483648.0, 2147483647.0);
    case DType::i64:
      if (std::isnan(v)) return 0;
      return std::clamp(std::trunc(v), -9223372036854775808.0, 9223372036854775808.0);
    case DType::boolean: return v != 0 ? 1.0 : 0.0;
  }
  return kNaN;
}

// A scalar as the op sees it: it takes the data's dtype (rounded to f16/bf16, truncated to an
// integer, nonzero -> true), as a cast of it would.
double scalar_as(float s, DType data) { return convert(s, DType::f32, data); }

// Element values of t as double: exact for every dtype (i64 up to 2^53, which these tests keep to).
R::Vec read(const Tensor& t) {
  auto widen = [](const auto& v) { return R::Vec(v.begin(), v.end()); };
  switch (t.dtype()) {
    case DType::f32:
    case DType::f16:
    case DType::bf16: return widen(to_vector(t));
    case DType::i32: return widen(to_host<std::int32_t>(t));
    case DType::i64: return widen(to_host<std::int64_t>(t));
    case DType::boolean: return widen(to_host<std::uint8_t>(t));
  }
  return {};
}

// Bit patterns of every element (f16/bf16 through their exact, injective f32 widening).
std::vector<std::uint64_t> bits(const Tensor& t) {
  std::vector<std::uint64_t> out;
  if (is_floating(t.dtype())) {
    for (float f : to_vector(t)) {
      std::uint32_t u;
      std::memcpy(&u, &f, sizeof u);
      out.push_back(u);
    }
  } else {
    for (double v : read(t)) out.push_back(static_cast<std::uint64_t>(static_cast<std::int64_t>(v)));
  }
  return out;
}

// |got - want| <= rtol |want| + atol per the result's dtype (the bounds of docs/api.md: 1e-5 for f32,
// 1e-2 for f16/bf16, the floor covering f16's subnormal steps); NaN must meet NaN and infinity the
// same infinity; integers and booleans are exact.
void expect_match(const R::Vec& got, const R::Vec& want, DType dtype, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double rtol = dtype == DType::f32 ? 1e-5 : is_floating(dtype) ? 1e-2 : 0;
  const double atol = dtype == DType::f32 ? 1e-30 : dtype == DType::f16 ? 1e-7 : dtype == DType::bf16 ? 1e-30 : 0;
  int reported = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    const bool ok = std::isnan(w)   ? std::isnan(g)
                    : std::isinf(w) ? g == w
                                    : std::abs(g - w) <= rtol * std::abs(w) + atol;
    if (!ok && reported++ < 5) ADD_FAILURE() << what << " [" << i << "]: got " << g << ", want " << w;
  }
}

struct Operand {
  Tensor t;
  R::Vec v;  // its exact element values
  Shape shape;
};

using Param = std::tuple<DeviceKind, ElementwiseOp>;

class EveryOp : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    if (std::get<0>(GetParam()) == DeviceKind::cuda && !cuda_available()) GTEST_SKIP() << "no CUDA device";
    dev_ = std::get<0>(GetParam()) == DeviceKind::cuda ? Device::cuda(0) : Device::cpu();
    op_ = std::get<1>(GetParam());
  }

  // A tensor of dtype d holding `values` (rounded to d): floats are built in f32 and cast, so the
  // reference reads back the rounded values it must start from.
  Operand make(DType d, const Shape& s, const R::Vec& values) {
    Operand o{Tensor(), {}, s};
    switch (d) {
      case DType::f32:
      case DType::f16:
      case DType::bf16: {
        std::vector<float> f(values.size());
        for (std::size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(values[i]);
        o.t = from_host<float>(f, s, dev_);
        if (d != DType::f32) o.t = wait(to(o.t, d));
        break;
      }
      case DType::i32:
        o.t = from_host<std::int32_t>(std::vector<std::int32_t>(values.begin(), values.end()), s, dev_);
        break;
      case DType::i64:
        o.t = from_host<std::int64_t>(std::vector<std::int64_t>(values.begin(), values.end()), s, dev_);
        break;
      case DType::boolean:
        o.t = from_host<std::uint8_t>(std::vector<std::uint8_t>(values.begin(), values.end()), s, dev_);
        break;
    }
    o.v = read(o.t);
    return o;
  }

  // Random non-zero values of operand k (a missing write cannot pass for a result): floats in the
  // op's domain; integers small (ties happen) or beyond 2^24 and 2^31 (where f32 could not tell
  // neighbours apart, and an i64 -> i32 cast wraps to negative values); booleans 0 and 1.
  R::Vec values(DType d, int k, std::size_t n, unsigned seed) const {
    const Domain dom = domain(op_);
    std::mt19937 gen(seed);
    R::Vec v(n);
    if (is_condition(op_, k) || d == DType::boolean) {
      for (auto& x : v) x = static_cast<double>(gen() % 2);
    } else if (is_integer(d)) {
      const double big = d == DType::i32 ? 1073741827.0 : 1099511627776.0 + 2147483649.0;
      for (std::size_t i = 0; i < n; ++i) {
        const int r = static_cast<int>(gen() % 6) - 3;  // -3 .. 3 without 0
        v[i] = (i % 2 ? big : 0.0) + static_cast<double>(r < 0 ? r : r + 1);
      }
    } else {
      const std::vector<float> f = random_values(n, seed, dom.lo, dom.hi);
      for (std::size_t i = 0; i < n; ++i) v[i] = dom.away_from_zero ? (f[i] < 0 ? f[i] - 0.5 : f[i] + 0.5) : f[i];
    }
    return v;
  }

  std::vector<float> scalars() const { return domain(op_).scalars; }

  // Runs the op on operands of `shapes` with data dtype d (a cast: to `target`) and checks the
  // result's shape, dtype, device and every element against the reference (`given`: the operands'
  // values, else random ones).
  void check(DType d, DType target, const std::vector<Shape>& shapes, const std::vector<float>& sc, unsigned seed,
             const std::vector<R::Vec>& given = {}) {
    const ElementwiseInfo& info = row(op_);
    std::vector<Operand> in;
    std::vector<TensorAwait> args;
    for (int k = 0; k < info.tensors; ++k) {
      const Shape& s = shapes.at(static_cast<std::size_t>(k));
      const DType dk = is_condition(op_, k) ? DType::boolean : d;
      R::Vec v = given.empty() ? values(dk, k, static_cast<std::size_t>(R::numel(s)), seed + static_cast<unsigned>(k))
                               : given.at(static_cast<std::size_t>(k));
      // Comparisons must see ties: every 5th element is the scalar, every 3rd of b equals a where
      // they have one shape (random integers tie by themselves).
      if (given.empty() && info.result == OpResult::boolean && !is_integer(d)) {
        if (info.scalars == 1 && k == 0)
          for (std::size_t i = 0; i < v.size(); i += 5) v[i] = sc.at(0);
        if (k == 1 && shapes[0] == shapes[1])
          for (std::size_t i = 0; i < v.size(); i += 3) v[i] = in[0].v[i];
      }
      in.push_back(make(dk, s, v));
      args.push_back(in.back().t);
    }
    std::string what = std::string(info.id) + " " + dtype_name(d) + "->" + dtype_name(target);
    for (const Operand& o : in) what += " " + shape_str(o.shape);
    for (float x : sc) what += " s=" + std::to_string(x);
    const Tensor out = wait(call(op_, args, sc, target));
    Shape want_shape = in[0].shape;
    for (const Operand& o : in) want_shape = R::broadcast_shape(want_shape, o.shape);
    ASSERT_EQ(out.shape(), want_shape) << what;
    ASSERT_EQ(out.dtype(), target) << what;
    ASSERT_EQ(out.device(), dev_) << what;
    R::Vec want(static_cast<std::size_t>(R::numel(want_shape)));
    Shape idx(want_shape.size(), 0);
    const double s0 = sc.size() > 0 ? scalar_as(sc[0], d) : 0, s1 = sc.size() > 1 ? scalar_as(sc[1], d) : 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      double x[3] = {0, 0, 0};
      for (std::size_t k = 0; k < in.size(); ++k)
        x[k] = in[k].v[static_cast<std::size_t>(R::broadcast_offset(in[k].shape, want_shape, idx))];
      want[i] = convert(R::elementwise(op_, x[0], x[1], x[2], s0, s1), d, target);
      for (std::size_t a = idx.size(); a-- > 0;) {
        if (++idx[a] < want_shape[a]) break;
        idx[a] = 0;
      }
    }
    expect_match(read(out), want, target, what);
  }

  // Every (data dtype, result dtype) pair the table allows.
  template <class F>
  void for_each_dtype(F f) {
    for (DType d : data_dtypes(op_))
      for (DType t : targets(op_, d)) f(d, t);
  }

  Device dev_ = Device::cpu();
  ElementwiseOp op_ = ElementwiseOp::neg;
};

std::string param_name(const ::testing::TestParamInfo<Param>& p) {
  return std::string(std::get<0>(p.param) == DeviceKind::cuda ? "cuda_" : "cpu_") + row(std::get<1>(p.param)).id;
}

}  // namespace

// Same-shape operands, every dtype the op takes (and for `to` every source x target pair).
TEST_P(EveryOp, MatchesFloat64ReferenceOnEveryDtypeItTakes) {
  const Shape s{3, 5, 7};
  const std::vector<Shape> shapes(3, s);
  unsigned seed = 100;
  for_each_dtype([&](DType d, DType t) { check(d, t, shapes, scalars(), seed += 10); });
}

// NumPy broadcasting of every operand against every other, 0-d operands, empty tensors.
TEST_P(EveryOp, BroadcastZeroDimAndEmptyOperandsMatchReference) {
  std::vector<std::vector<Shape>> cases;
  switch (row(op_).tensors) {
    case 1: cases = {{{}}, {{0, 3}}, {{1}}}; break;
    case 2: cases = {{{4, 1, 5}, {1, 3, 5}}, {{5}, {2, 3, 5}}, {{}, {2, 3}}, {{2, 3}, {}}, {{0, 3}, {1, 3}}}; break;
    default: cases = {{{4, 1, 5}, {1, 3, 5}, {4, 3, 1}}, {{}, {3, 1}, {1, 4}}, {{2, 1}, {2, 3}, {}}}; break;
  }
  unsigned seed = 500;
  for (const auto& shapes : cases)
    for_each_dtype([&](DType d, DType t) { check(d, t, shapes, scalars(), seed += 10); });
}

// NaN, infinities, signed zeros and values beyond f16's range, in every combination of operands
// (each operand varies along its own dim), with special scalars too; every floating data dtype.
TEST_P(EveryOp, NanAndInfinityInputsFollowTheReference) {
  const R::Vec special{kNaN, kInf, -kInf, 0.0, -0.0, 1.0, -1.0, 2.5, -0.375, 30000.0};
  const ElementwiseInfo& info = row(op_);
  std::vector<Shape> shapes;
  std::vector<R::Vec> given;
  for (int k = 0; k < info.tensors; ++k) {
    Shape s(static_cast<std::size_t>(info.tensors), 1);
    const bool cond = is_condition(op_, k);
    s[static_cast<std::size_t>(k)] = cond ? 2 : static_cast<int64_t>(special.size());
    shapes.push_back(s);
    given.push_back(cond ? R::Vec{0.0, 1.0} : special);
  }
  std::vector<std::vector<float>> scalar_sets{{}};
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  if (info.scalars == 1) scalar_sets = {{1.5f}, {nan}, {inf}, {-inf}, {-0.f}};
  if (info.scalars == 2) scalar_sets = {{-1.f, 2.5f}, {nan, 2.5f}, {-1.f, nan}, {-inf, inf}, {3.f, -1.f}};
  for (DType d : data_dtypes(op_)) {
    if (!is_floating(d)) continue;
    for (DType t : targets(op_, d))
      for (const auto& sc : scalar_sets) check(d, t, shapes, sc, 0, given);
  }
}

// Eager mode launches each op at once and returns a ready Await; its result is the deferred one,
// bit for bit.
TEST_P(EveryOp, EagerModeEqualsDeferredBitForBit) {
  const ElementwiseInfo& info = row(op_);
  unsigned seed = 900;
  for_each_dtype([&](DType d, DType t) {
    std::vector<TensorAwait> args;
    for (int k = 0; k < info.tensors; ++k) {
      const DType dk = is_condition(op_, k) ? DType::boolean : d;
      args.push_back(make(dk, {4, 9}, values(dk, k, 36, seed += 3)).t);
    }
    const TensorAwait deferred = call(op_, args, scalars(), t);
    EXPECT_FALSE(deferred.is_ready()) << "a deferred op runs nothing before its wait";
    TensorAwait eager;
    {
      ModeGuard guard(Mode::eager);
      eager = call(op_, args, scalars(), t);
    }
    EXPECT_TRUE(eager.is_ready()) << "an eager op has run when it returns";
    EXPECT_EQ(bits(wait(eager)), bits(wait(deferred))) << info.id << " " << dtype_name(d) << "->" << dtype_name(t);
  });
}

// Data of a dtype outside the `data` column, data operands of two dtypes, and a non-boolean
// condition or mask are std::invalid_argument at the call, naming the op and the dtypes.
TEST_P(EveryOp, RejectsDtypesItDoesNotTakeAtTheCall) {
  const ElementwiseInfo& info = row(op_);
  const auto accepted = data_dtypes(op_);
  auto operands = [&](DType data, DType second, DType cond) {
    std::vector<TensorAwait> args;
    int data_seen = 0;
    for (int k = 0; k < info.tensors; ++k)
      args.push_back(full({2, 3}, 1.f, is_condition(op_, k) ? cond : (data_seen++ == 0 ? data : second), dev_));
    return args;
  };
  auto expect_invalid = [&](const std::vector<TensorAwait>& args, std::vector<std::string> words,
                            const std::string& what) {
    try {
      call(op_, args, scalars(), DType::f32);
      ADD_FAILURE() << info.id << ": " << what << " was accepted";
    } catch (const std::invalid_argument& e) {
      for (const std::string& w : words)
        EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what() << " lacks " << w;
    }
  };
  for (DType d : kAllDTypes) {
    const bool ok = std::find(accepted.begin(), accepted.end(), d) != accepted.end();
    if (ok)
      EXPECT_NO_THROW(call(op_, operands(d, d, DType::boolean), scalars(), DType::f32))
          << info.id << " " << dtype_name(d);
    else
      expect_invalid(operands(d, d, DType::boolean), {info.name, dtype_name(d)}, dtype_name(d));
  }
  const int data_operands = info.tensors - (kernels::condition_operand(op_) >= 0 ? 1 : 0);
  if (data_operands >= 2) {
    expect_invalid(operands(DType::f32, DType::f16, DType::boolean), {info.name, "f32", "f16"}, "f32 with f16");
    if (info.data == OpData::any)
      expect_invalid(operands(DType::i32, DType::i64, DType::boolean), {"i32", "i64"}, "i32 with i64");
  }
  if (kernels::condition_operand(op_) >= 0)
    for (DType c : {DType::f32, DType::i32, DType::i64, DType::f16})
      expect_invalid(operands(DType::f32, DType::f32, c), {info.name, "boolean", dtype_name(c)},
                     std::string("a condition of ") + dtype_name(c));
}

INSTANTIATE_TEST_SUITE_P(OpTable, EveryOp,
                         ::testing::Combine(::testing::Values(DeviceKind::cpu, DeviceKind::cuda),
                                            ::testing::ValuesIn(ops_where([](const ElementwiseInfo&) {
                                              return true;
                                            }))),
                         param_name);

namespace {

class Fusion : public ::testing::TestWithParam<DeviceKind> {
 protected:
  void SetUp() override {
    if (GetParam() == DeviceKind::cuda && !cuda_available()) GTEST_SKIP() << "no CUDA device";
    dev_ = GetParam() == DeviceKind::cuda ? Device::cuda(0) : Device::cpu();
  }
  Tensor input(const Shape& s, unsigned seed) {
    return from_vector(random_values(static_cast<std::size_t>(R::numel(s)), seed, -2.f, 2.f), s, dev_);
  }
  // Builds the graph (its intermediates released when make returns, as a user's expression leaves
  // them: a held intermediate must be written, and a held small operand is not inlined), prints
  // explain() without judging it, and waits the graph with replays off (a replayed plan launches no
  // kernel of its own): one kernel launch, and a fused one.
  Tensor expect_one_fused_launch(const std::function<TensorAwait()>& make, const std::string& what) {
    const bool graphs = graphs_enabled();
    set_graphs_enabled(false);
    const TensorAwait r = make();
    const std::string plan = explain(r);
    EXPECT_FALSE(plan.empty()) << what;
    std::cout << "[ explain  ] " << what << "\n" << plan << "\n";
    reset_stats();
    Tensor t = wait(r);
    EXPECT_EQ(stats().kernel_launches, 1u) << what << "\n" << plan;
    EXPECT_EQ(stats().fused_kernels, 1u) << what << "\n" << plan;
    set_graphs_enabled(graphs);
    return t;
  }
  Device dev_ = Device::cpu();
};

struct Node {
  TensorAwait t;
  DType dtype;
  bool used = false;
};

// A random DAG of `ops` rows of the table over f32, boolean and i64 values that broadcast to
// [8, 33] over every dtype; its sinks (values nobody reads) are returned. Fused programs round
// every value through its op's dtype (kernels/fusion/fused_program.hpp), so f16 and bf16 chains
// agree bit for bit with the unfused ops too.
std::vector<TensorAwait> random_dag(const std::vector<Node>& inputs, unsigned seed, int ops) {
  std::mt19937 gen(seed);
  std::vector<Node> pool = inputs;
  auto pick = [&](DType d) -> Node* {
    std::vector<Node*> of;
    for (Node& n : pool)
      if (n.dtype == d) of.push_back(&n);
    if (of.empty()) return nullptr;
    Node* n = of[gen() % of.size()];
    n->used = true;
    return n;
  };
  const float scalar_choices[] = {0.5f, -1.25f, 2.f, 3.f, 0.f};
  for (int made = 0; made < ops;) {
    const auto op = static_cast<ElementwiseOp>(gen() % kernels::kElementwiseOpCount);
    const ElementwiseInfo& info = row(op);
    const DType floating[] = {DType::f32, DType::f16, DType::bf16};
    const DType data = info.data == OpData::floating ? floating[gen() % 3] : kAllDTypes[gen() % 6];
    std::vector<TensorAwait> args;
    bool ok = true;
    for (int k = 0; k < info.tensors && ok; ++k) {
      Node* n = pick(is_condition(op, k) ? DType::boolean : data);
      ok = n != nullptr;
      if (ok) args.push_back(n->t);
    }
    if (!ok) continue;
    std::vector<float> sc;
    for (int k = 0; k < info.scalars; ++k) sc.push_back(scalar_choices[gen() % 5]);
    if (info.scalars == 2 && sc[0] > sc[1]) std::swap(sc[0], sc[1]);
    const DType target = kAllDTypes[gen() % 6];
    TensorAwait r = call(op, args, sc, target);
    const DType rd = info.result == OpResult::boolean ? DType::boolean : info.result == OpResult::cast ? target : data;
    pool.push_back({r, rd});
    ++made;
  }
  std::vector<TensorAwait> sinks;
  for (std::size_t i = inputs.size(); i < pool.size(); ++i)
    if (!pool[i].used) sinks.push_back(pool[i].t);
  return sinks;
}

}  // namespace

// Fusion must not change a single bit: every op rounds as its unfused kernel does (the same
// functions of kernels/elementwise_math.h, no FMA contraction), casts included.
TEST_P(Fusion, RandomDagsAreBitIdenticalFusedAndUnfused) {
  auto f32 = [&](Shape s, unsigned seed) {
    return from_vector(random_values(static_cast<std::size_t>(R::numel(s)), seed, -3.f, 3.f), s, dev_);
  };
  std::vector<std::uint8_t> mask(8 * 33);
  for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = static_cast<std::uint8_t>(i % 3 == 0);
  std::vector<std::int64_t> ints(33);
  for (std::size_t i = 0; i < ints.size(); ++i)
    ints[i] = static_cast<std::int64_t>(i % 5) - 2 + (i % 2 ? (1LL << 40) : 0);
  std::vector<std::int32_t> small(8);
  for (std::size_t i = 0; i < small.size(); ++i) small[i] = static_cast<std::int32_t>(i) * 70000 - 200000;
  const std::vector<Node> inputs{{f32({8, 33}, 1), DType::f32},
                                 {f32({33}, 2), DType::f32},
                                 {f32({8, 1}, 3), DType::f32},
                                 {wait(to(f32({8, 33}, 4), DType::f16)), DType::f16},
                                 {wait(to(f32({1, 33}, 5), DType::bf16)), DType::bf16},
                                 {from_host<std::uint8_t>(mask, {8, 33}, dev_), DType::boolean},
                                 {from_host<std::int64_t>(ints, {1, 33}, dev_), DType::i64},
                                 {from_host<std::int32_t>(small, {8, 1}, dev_), DType::i32}};
  const bool graphs = graphs_enabled();
  set_graphs_enabled(false);  // a replayed plan launches no kernel of its own: count real launches
  for (unsigned seed = 1; seed <= 20; ++seed) {
    set_fusion_enabled(false);
    reset_stats();
    const std::vector<Tensor> unfused = wait_all(random_dag(inputs, seed, 30));
    const auto unfused_launches = stats().kernel_launches;
    set_fusion_enabled(true);
    reset_stats();
    const std::vector<Tensor> fused = wait_all(random_dag(inputs, seed, 30));
    const auto fused_launches = stats().kernel_launches;
    ASSERT_EQ(fused.size(), unfused.size());
    for (std::size_t i = 0; i < fused.size(); ++i) {
      EXPECT_EQ(fused[i].dtype(), unfused[i].dtype());
      EXPECT_EQ(bits(fused[i]), bits(unfused[i])) << "seed " << seed << ", sink " << i;
    }
    EXPECT_LT(fused_launches, unfused_launches) << "seed " << seed << ": fusion merged nothing";
  }
  set_graphs_enabled(graphs);
}

TEST_P(Fusion, AnElementwiseDagIsOneKernelLaunch) {
  const TensorAwait x = input({64, 33}, 1);
  const Tensor r = expect_one_fused_launch([&] { return sigmoid((tanh(x * .5f) + 1.f) * relu(x - .25f)) * 2.f; },
                                           "sigmoid((tanh(x*.5)+1) * relu(x-.25)) * 2");
  const auto xv = to_vector(wait(x)), got = to_vector(r);
  for (std::size_t i = 0; i < xv.size(); ++i) {
    const double v = xv[i], want = 2.0 * R::sigmoid((std::tanh(v * .5) + 1.0) * std::max(v - .25, 0.0));
    EXPECT_NEAR(got[i], want, 1e-5 * want) << i;
  }
}

// scores [B,H,L,L] * scale + mask, the mask an element-wise chain over [B,1,1,L]: the chain is
// computed inside the one kernel over the broadcast shape, never materialized on its own.
TEST_P(Fusion, AnAttentionMaskChainBroadcastAgainstScoresIsOneKernelLaunch) {
  const TensorAwait scores = input({2, 4, 8, 8}, 2);
  std::vector<float> k(16);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = i % 3 ? 1.f : 0.f;
  const TensorAwait keep = from_vector(k, {2, 1, 1, 8}, dev_);
  const Tensor r = expect_one_fused_launch(
      [&] {
        const TensorAwait mask = (1.f - keep) * -10000.f;
        return scores * 0.125f + mask;
      },
      "scores * scale + (1 - keep) * -1e4");
  EXPECT_EQ(r.shape(), (Shape{2, 4, 8, 8}));
  const auto sv = to_vector(wait(scores)), got = to_vector(r);
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double want = sv[i] * 0.125 + (1.0 - k[(i / 256) * 8 + i % 8]) * -10000.0;
    EXPECT_NEAR(got[i], want, 1e-5 * std::abs(want) + 1e-6) << i;
  }
}

// Casts, comparisons, where and masked_fill over floating or boolean data fuse with their
// neighbours; the fused result equals the unfused one (bit for bit where no f16/bf16 value is
// computed inside the kernel: a fused kernel keeps those in f32 and rounds what it stores).
TEST_P(Fusion, CastsComparisonsWhereAndMaskedFillFuseWithTheirNeighbours) {
  const TensorAwait x = input({16, 33}, 3);
  std::vector<std::uint8_t> odd(33);
  for (std::size_t i = 0; i < odd.size(); ++i) odd[i] = static_cast<std::uint8_t>(i % 2);
  const TensorAwait flags = from_host<std::uint8_t>(odd, {1, 33}, dev_);
  struct Row {
    const char* name;
    std::function<TensorAwait()> make;
    bool exact;
  };
  const std::vector<Row> rows{
      {"to(to(x * 2, f16), f32) + 1", [&] { return to(to(x * 2.f, DType::f16), DType::f32) + 1.f; }, true},
      {"sigmoid(to(x, f16)) * 3", [&] { return sigmoid(to(x, DType::f16)) * 3.f; }, false},
      {"where(gt(x, 0), x * 2, -x)", [&] { return where(gt(x, 0.f), x * 2.f, -x); }, true},
      {"masked_fill(x + 1, lt(x, -0.5), 0) * 3", [&] { return masked_fill(x + 1.f, lt(x, -.5f), 0.f) * 3.f; }, true},
      {"to(eq(gt(x, 0), lt(x, 1)), f32) + x", [&] { return to(eq(gt(x, 0.f), lt(x, 1.f)), DType::f32) + x; }, true},
      {"where(ge(b, 0), b, -b), b = to(x, bf16)",
       [&] {
         const TensorAwait b = to(x, DType::bf16);
         return where(ge(b, 0.f), b, -b);
       },
       true},
      {"masked_fill(exp(x), flags [1, 33], 0) - 1", [&] { return masked_fill(defer::exp(x), flags, 0.f) - 1.f; }, true},
      {"to(relu(x) * 4, boolean)", [&] { return to(relu(x) * 4.f, DType::boolean); }, true},
  };
  for (const Row& row : rows) {
    set_fusion_enabled(false);
    const Tensor unfused = wait(row.make());
    set_fusion_enabled(true);
    const Tensor fused = expect_one_fused_launch(row.make, row.name);
    ASSERT_EQ(fused.dtype(), unfused.dtype()) << row.name;
    if (row.exact) {
      EXPECT_EQ(bits(fused), bits(unfused)) << row.name;
      continue;
    }
    const auto f = to_vector(fused), u = to_vector(unfused);
    for (std::size_t i = 0; i < f.size(); ++i)
      ASSERT_NEAR(f[i], u[i], 1e-2 * std::abs(u[i])) << row.name << " [" << i << "]";
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, Fusion, ::testing::Values(DeviceKind::cpu, DeviceKind::cuda),
                         [](const ::testing::TestParamInfo<DeviceKind>& p) {
                           return std::string(p.param == DeviceKind::cuda ? "cuda" : "cpu");
                         });
