// Data types (docs/api.md section 9): the dtype table, host round trips, arange and full, casts between
// every pair of dtypes on special values (expectations written out, f16/bf16 computed without the
// library), exhaustive f16/bf16 round trips, exact integer comparisons, where/masked_fill on every
// dtype, dtype errors, f16/bf16 reductions, softmax, layer_norm and matmul, index_select and
// embedding with their run-time range errors. (What fuses into one kernel, casts and comparisons
// included: test_elementwise_ops.cpp, Fusion.*.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include <defer/defer.hpp>
#include <defer/options.hpp>

#include "op_table.hpp"
#include "reference.hpp"
#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;
namespace R = defer::testing::ref;

namespace defer {  // readable test parameters in gtest's messages
inline void PrintTo(DeviceKind k, std::ostream* os) { *os << (k == DeviceKind::cuda ? "cuda" : "cpu"); }
}  // namespace defer

namespace {

constexpr DType kAll[] = {DType::f32, DType::i32, DType::f16, DType::bf16, DType::i64, DType::boolean};
const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();
constexpr std::int64_t kI32Max = 2147483647, kI32Min = -2147483648LL;
constexpr std::int64_t kI64Max = std::numeric_limits<std::int64_t>::max(),
                       kI64Min = std::numeric_limits<std::int64_t>::min();
constexpr double kBf16Max = 3.3895313892515355e38;

// f16 by the compiler's own IEEE binary16 (GCC's _Float16, rounding to nearest even): independent
// of kernels/elementwise_math.h.
std::uint16_t f16_bits(double v) {
  const _Float16 h = static_cast<_Float16>(v);
  std::uint16_t b;
  std::memcpy(&b, &h, sizeof b);
  return b;
}
double f16_value(std::uint16_t b) {
  _Float16 h;
  std::memcpy(&h, &b, sizeof h);
  return static_cast<double>(h);
}
std::uint32_t f32_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
double bf16_value(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
// The bits of a value bf16 holds exactly (NaN: the quiet NaN).
std::uint16_t bf16_bits(double v) { return static_cast<std::uint16_t>(f32_bits(static_cast<float>(v)) >> 16); }

// x rounded to nearest even to `bits` significant bits, exponents down to emin, infinity beyond max.
double round_binary(double x, int bits, int emin, double max) {
  if (!std::isfinite(x) || x == 0) return x;
  int e = 0;
  std::frexp(x, &e);
  const int ulp = std::max(e - 1, emin) - (bits - 1);
  const double r = std::ldexp(std::nearbyint(std::ldexp(x, -ulp)), ulp);
  return std::abs(r) > max ? std::copysign(kInf, r) : r;
}
double round_bf16(double x) { return round_binary(x, 8, -126, kBf16Max); }
double round_f16(double x) { return round_binary(x, 11, -14, 65504.0); }

class Dtypes : public ::testing::TestWithParam<DeviceKind> {
 protected:
  void SetUp() override {
    if (GetParam() == DeviceKind::cuda && !cuda_available()) GTEST_SKIP() << "no CUDA device";
    dev_ = GetParam() == DeviceKind::cuda ? Device::cuda(0) : Device::cpu();
  }
  Tensor on_dev(const Tensor& cpu_tensor) { return wait(to(cpu_tensor, dev_)); }

  // An f16/bf16 tensor with exactly these bit patterns: written into empty() storage on the CPU.
  Tensor raw16(const std::vector<std::uint16_t>& b, DType d, Shape s) {
    Tensor t = empty(std::move(s), d, Device::cpu());
    current_stream(Device::cpu()).synchronize();
    if (!b.empty()) std::memcpy(t.data_ptr(), b.data(), b.size() * sizeof b[0]);
    return on_dev(t);
  }
  // The bit patterns of an f16/bf16 tensor.
  std::vector<std::uint16_t> raw16_of(const Tensor& t) {
    const Tensor c = wait(to(t, Device::cpu()));
    if (dev_.is_cuda()) current_stream(dev_).synchronize();
    current_stream(Device::cpu()).synchronize();
    std::vector<std::uint16_t> b(static_cast<std::size_t>(c.numel()));
    if (!b.empty()) std::memcpy(b.data(), c.data_ptr(), b.size() * sizeof b[0]);
    return b;
  }
  // Each element's exact bits, whatever the dtype.
  std::vector<std::uint64_t> elems(const Tensor& t) {
    std::vector<std::uint64_t> out;
    auto add = [&](const auto& v) {
      for (auto x : v) out.push_back(static_cast<std::uint64_t>(x));
    };
    switch (t.dtype()) {
      case DType::f32:
        for (float f : to_host<float>(t)) out.push_back(f32_bits(f));
        break;
      case DType::f16:
      case DType::bf16: add(raw16_of(t)); break;
      case DType::i32: add(to_host<std::int32_t>(t)); break;
      case DType::i64: add(to_host<std::int64_t>(t)); break;
      case DType::boolean: add(to_host<std::uint8_t>(t)); break;
    }
    return out;
  }
  // A tensor of dtype d with these values (exact in d: f16/bf16 are written as bits).
  Tensor make(DType d, const std::vector<double>& v, Shape s) {
    switch (d) {
      case DType::f32: return from_host<float>(std::vector<float>(v.begin(), v.end()), s, dev_);
      case DType::f16:
      case DType::bf16: {
        std::vector<std::uint16_t> b;
        for (double x : v) b.push_back(d == DType::f16 ? f16_bits(x) : bf16_bits(x));
        return raw16(b, d, s);
      }
      case DType::i32: return from_host<std::int32_t>(std::vector<std::int32_t>(v.begin(), v.end()), s, dev_);
      case DType::i64: return from_host<std::int64_t>(std::vector<std::int64_t>(v.begin(), v.end()), s, dev_);
      case DType::boolean: return from_host<std::uint8_t>(std::vector<std::uint8_t>(v.begin(), v.end()), s, dev_);
    }
    return {};
  }
  // The bits that dtype d stores for value v (for values d holds exactly, and ints).
  static std::uint64_t bits_of(DType d, double v) {
    switch (d) {
      case DType::f32: return f32_bits(static_cast<float>(v));
      case DType::f16: return f16_bits(v);
      case DType::bf16: return bf16_bits(v);
      case DType::i32: return static_cast<std::uint64_t>(static_cast<std::int64_t>(static_cast<std::int32_t>(v)));
      case DType::i64: return static_cast<std::uint64_t>(static_cast<std::int64_t>(v));
      case DType::boolean: return v != 0 ? 1 : 0;
    }
    return 0;
  }
  Device dev_ = Device::cpu();
};

// Runs f, which must throw E whose message contains every one of `words`; returns the message.
template <class E, class F>
std::string expect_throw(F f, const std::vector<std::string>& words, std::string what = "") {
  if (what.empty())
    for (const std::string& w : words) what += w + " ";
  try {
    f();
  } catch (const E& e) {
    for (const std::string& w : words)
      EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << what << ": \"" << e.what() << "\" lacks " << w;
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << what << ": wrong exception type: " << e.what();
    return "";
  }
  ADD_FAILURE() << what << ": no exception";
  return "";
}

}  // namespace

TEST(DTypeTable, SizeNameAndKindOfEveryDtype) {
  struct Row {
    DType d;
    std::size_t size;
    const char* name;
    bool floating, integer;
  };
  const Row rows[] = {{DType::f32, 4, "f32", true, false}, {DType::i32, 4, "i32", false, true},
                      {DType::f16, 2, "f16", true, false}, {DType::bf16, 2, "bf16", true, false},
                      {DType::i64, 8, "i64", false, true}, {DType::boolean, 1, "boolean", false, false}};
  ASSERT_EQ(std::size(rows), detail::kDTypeCount) << "a dtype without a row here";
  for (const Row& r : rows) {
    EXPECT_EQ(dtype_size(r.d), r.size) << r.name;
    EXPECT_STREQ(dtype_name(r.d), r.name);
    EXPECT_EQ(is_floating(r.d), r.floating) << r.name;
    EXPECT_EQ(is_integer(r.d), r.integer) << r.name;
    EXPECT_EQ(empty({3, 5}, r.d, Device::cpu()).nbytes(), 15 * r.size) << r.name;
  }
}

TEST_P(Dtypes, FromHostToHostRoundTripsEveryHostType) {
  const float nan_payload = [] {
    float f;
    const std::uint32_t u = 0x7fc01234u;
    std::memcpy(&f, &u, 4);
    return f;
  }();
  const std::vector<float> f{
      -0.f,    nan_payload, std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::infinity(),
      3.4e38f, 0.1f};
  const auto fb = to_host<float>(from_host<float>(f, {2, 3}, dev_));
  for (std::size_t i = 0; i < f.size(); ++i) EXPECT_EQ(f32_bits(fb[i]), f32_bits(f[i])) << i;
  const std::vector<std::int32_t> i32{INT32_MIN, INT32_MAX, 0, -1, 16777217};
  EXPECT_EQ(to_host<std::int32_t>(from_host<std::int32_t>(i32, {5}, dev_)), i32);
  const std::vector<std::int64_t> i64{kI64Min, kI64Max, (1LL << 53) + 1, -1, 0, 1LL << 40};
  EXPECT_EQ(to_host<std::int64_t>(from_host<std::int64_t>(i64, {3, 2}, dev_)), i64);
  const std::vector<std::uint8_t> b{0, 1, 7, 255};
  EXPECT_EQ(to_host<std::uint8_t>(from_host<std::uint8_t>(b, {4}, dev_)), (std::vector<std::uint8_t>{0, 1, 1, 1}))
      << "a nonzero byte is true, stored as 1";
  expect_throw<std::invalid_argument>([&] { from_host<std::int64_t>(i64, {4}, dev_); }, {"from_host"},
                                      "6 values for [4]");
}

TEST_P(Dtypes, ToHostWithAnotherTypeThanTheDtypeIsInvalidArgument) {
  for (DType d : kAll) {
    const Tensor t = full({2}, 1.f, d, dev_);
    auto check = [&](auto tag, DType matches) {
      using T = decltype(tag);
      if (d == matches)
        EXPECT_NO_THROW(to_host<T>(t)) << dtype_name(d);
      else
        expect_throw<std::invalid_argument>([&] { to_host<T>(t); }, {dtype_name(d)},
                                            std::string("to_host of ") + dtype_name(d));
    };
    check(float{}, DType::f32);
    check(std::int32_t{}, DType::i32);
    check(std::int64_t{}, DType::i64);
    check(std::uint8_t{}, DType::boolean);
  }
}

// 0 .. n-1 in every dtype: f16 holds the integers exactly up to 2048, then rounds to nearest even
// (2049 -> 2048, 2051 -> 2052); bf16 up to 256; boolean is i != 0.
TEST_P(Dtypes, ArangeCountsInEveryDtypeRoundingToNearestEven) {
  for (DType d : kAll) {
    const int64_t n = d == DType::f16 ? 3000 : d == DType::bf16 ? 700 : 100;
    const Tensor t = arange(n, d, dev_);
    ASSERT_EQ(t.shape(), Shape{n});
    ASSERT_EQ(t.dtype(), d);
    const auto got = to_vector(t);
    for (int64_t i = 0; i < n; ++i) {
      const double x = static_cast<double>(i);
      const double want = d == DType::f16       ? round_f16(x)
                          : d == DType::bf16    ? round_bf16(x)
                          : d == DType::boolean ? (i != 0)
                                                : x;
      ASSERT_EQ(got[static_cast<std::size_t>(i)], want) << dtype_name(d) << " element " << i;
    }
  }
  EXPECT_EQ(to_vector(arange(3000, DType::f16, dev_))[2049], 2048.f) << "a tie goes to the even neighbour";
  EXPECT_EQ(to_vector(arange(3000, DType::f16, dev_))[2051], 2052.f) << "a tie goes to the even neighbour";
  EXPECT_EQ(arange(0, DType::i64, dev_).numel(), 0);
  EXPECT_EQ(to_host<std::int64_t>(arange(4, DType::i64, dev_)), (std::vector<std::int64_t>{0, 1, 2, 3}));
  expect_throw<std::invalid_argument>([&] { arange(-1, DType::i64, dev_); }, {"arange"}, "arange(-1)");
}

// full converts its value as a cast does; an integer dtype that cannot hold it is an error.
TEST_P(Dtypes, FullConvertsTheValueToEveryDtype) {
  struct Row {
    DType d;
    float value;
    std::uint64_t want;
  };
  const auto minus2 = static_cast<std::uint64_t>(-2LL);
  // clang-format off
  const Row rows[] = {
      {DType::f32, -2.75f, f32_bits(-2.75f)}, {DType::f16, -2.75f, f16_bits(-2.75)}, {DType::bf16, -2.75f, 0xc030},
      {DType::f16, 0.1f, f16_bits(0.1f)},     {DType::bf16, 0.1f, 0x3dcd},           {DType::f16, 1e5f, 0x7c00},
      {DType::i32, -2.75f, minus2},           {DType::i64, -2.75f, minus2},          {DType::i64, 3e10f, 30000001024ULL},
      {DType::i32, -2147483648.f, static_cast<std::uint64_t>(kI32Min)},
      {DType::boolean, 0.5f, 1},              {DType::boolean, 0.f, 0},              {DType::boolean, -0.f, 0}};
  // clang-format on
  for (const Row& r : rows) {
    const Tensor t = full({2, 3}, r.value, r.d, dev_);
    EXPECT_EQ(t.dtype(), r.d);
    EXPECT_EQ(elems(t), std::vector<std::uint64_t>(6, r.want)) << dtype_name(r.d) << " " << r.value;
  }
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::pair<DType, float> unrepresentable[] = {
      {DType::i32, 3e10f}, {DType::i32, 2147483648.f}, {DType::i32, nan}, {DType::i64, 1e19f}, {DType::i64, INFINITY}};
  for (auto [d, v] : unrepresentable)
    expect_throw<std::invalid_argument>([&] { full({2}, v, d, dev_); }, {"full", dtype_name(d)},
                                        std::string("full ") + dtype_name(d) + " " + std::to_string(v));
}

// Every source x target pair on special values, the expected results written out: floats round to
// nearest even (65520 and 3.4e38 overflow), a float to an integer truncates (NaN 0, saturating),
// i64 -> i32 wraps, nonzero (NaN too) is true.
TEST_P(Dtypes, CastsBetweenEveryPairOfDtypesOnSpecialValues) {
  struct V {
    double f;
    std::int64_t i;
  };  // the value: f for floats, i for integers
  auto F = [](double x) { return V{x, 0}; };
  auto I = [](std::int64_t n) { return V{static_cast<double>(n), n}; };
  const double nan = kNaN, inf = kInf;
  struct Row {
    DType from;
    V in, f32, i32, f16, bf16, i64, b;
  };
  // clang-format off
  const std::vector<Row> rows = {
      {DType::f32, F(nan), F(nan), I(0), F(nan), F(nan), I(0), I(1)},
      {DType::f32, F(inf), F(inf), I(kI32Max), F(inf), F(inf), I(kI64Max), I(1)},
      {DType::f32, F(-inf), F(-inf), I(kI32Min), F(-inf), F(-inf), I(kI64Min), I(1)},
      {DType::f32, F(-0.0), F(-0.0), I(0), F(-0.0), F(-0.0), I(0), I(0)},
      {DType::f32, F(65504), F(65504), I(65504), F(65504), F(65536), I(65504), I(1)},
      {DType::f32, F(65520), F(65520), I(65520), F(inf), F(65536), I(65520), I(1)},
      {DType::f32, F(3.4e38f), F(3.4e38f), I(kI32Max), F(inf), F(inf), I(kI64Max), I(1)},
      {DType::f32, F(0.5), F(0.5), I(0), F(0.5), F(0.5), I(0), I(1)},
      {DType::f32, F(1.5), F(1.5), I(1), F(1.5), F(1.5), I(1), I(1)},
      {DType::f32, F(2.5), F(2.5), I(2), F(2.5), F(2.5), I(2), I(1)},
      {DType::f32, F(-2.5), F(-2.5), I(-2), F(-2.5), F(-2.5), I(-2), I(1)},
      {DType::f32, F(-1.7f), F(-1.7f), I(-1), F(-1.7001953125), F(-1.703125), I(-1), I(1)},
      {DType::f32, F(2049), F(2049), I(2049), F(2048), F(2048), I(2049), I(1)},
      {DType::f32, F(2051), F(2051), I(2051), F(2052), F(2048), I(2051), I(1)},
      {DType::f32, F(257), F(257), I(257), F(257), F(256), I(257), I(1)},
      {DType::f32, F(259), F(259), I(259), F(259), F(260), I(259), I(1)},
      {DType::f32, F(0x1p-25), F(0x1p-25), I(0), F(0.0), F(0x1p-25), I(0), I(1)},
      {DType::f32, F(0x3p-25), F(0x3p-25), I(0), F(0x1p-23), F(0x3p-25), I(0), I(1)},
      {DType::f32, F(1e10f), F(1e10f), I(kI32Max), F(inf), F(9999220736.0), I(10000000000LL), I(1)},
      {DType::f32, F(-1e10f), F(-1e10f), I(kI32Min), F(-inf), F(-9999220736.0), I(-10000000000LL), I(1)},
      {DType::f32, F(2147483648.0), F(2147483648.0), I(kI32Max), F(inf), F(2147483648.0), I(2147483648LL), I(1)},
      {DType::f32, F(-2147483648.0), F(-2147483648.0), I(kI32Min), F(-inf), F(-2147483648.0), I(-2147483648LL), I(1)},
      {DType::f32, F(1e19f), F(1e19f), I(kI32Max), F(inf), F(round_bf16(1e19f)), I(kI64Max), I(1)},
      {DType::f32, F(-1e19f), F(-1e19f), I(kI32Min), F(-inf), F(round_bf16(-1e19f)), I(kI64Min), I(1)},
      {DType::f16, F(nan), F(nan), I(0), F(nan), F(nan), I(0), I(1)},
      {DType::f16, F(inf), F(inf), I(kI32Max), F(inf), F(inf), I(kI64Max), I(1)},
      {DType::f16, F(-0.0), F(-0.0), I(0), F(-0.0), F(-0.0), I(0), I(0)},
      {DType::f16, F(65504), F(65504), I(65504), F(65504), F(65536), I(65504), I(1)},
      {DType::f16, F(0x1p-24), F(0x1p-24), I(0), F(0x1p-24), F(0x1p-24), I(0), I(1)},
      {DType::f16, F(-1.7001953125), F(-1.7001953125), I(-1), F(-1.7001953125), F(-1.703125), I(-1), I(1)},
      {DType::f16, F(2050), F(2050), I(2050), F(2050), F(2048), I(2050), I(1)},
      {DType::f16, F(-2.5), F(-2.5), I(-2), F(-2.5), F(-2.5), I(-2), I(1)},
      {DType::bf16, F(nan), F(nan), I(0), F(nan), F(nan), I(0), I(1)},
      {DType::bf16, F(-inf), F(-inf), I(kI32Min), F(-inf), F(-inf), I(kI64Min), I(1)},
      {DType::bf16, F(-0.0), F(-0.0), I(0), F(-0.0), F(-0.0), I(0), I(0)},
      {DType::bf16, F(9999220736.0), F(9999220736.0), I(kI32Max), F(inf), F(9999220736.0), I(9999220736LL), I(1)},
      {DType::bf16, F(65536), F(65536), I(65536), F(inf), F(65536), I(65536), I(1)},
      {DType::bf16, F(kBf16Max), F(kBf16Max), I(kI32Max), F(inf), F(kBf16Max), I(kI64Max), I(1)},
      {DType::bf16, F(0x1p-133), F(0x1p-133), I(0), F(0.0), F(0x1p-133), I(0), I(1)},
      {DType::bf16, F(1.703125), F(1.703125), I(1), F(1.703125), F(1.703125), I(1), I(1)},
      {DType::bf16, F(-2.5), F(-2.5), I(-2), F(-2.5), F(-2.5), I(-2), I(1)},
      {DType::i32, I(0), F(0), I(0), F(0), F(0), I(0), I(0)},
      {DType::i32, I(-3), F(-3), I(-3), F(-3), F(-3), I(-3), I(1)},
      {DType::i32, I(kI32Max), F(2147483648.0), I(kI32Max), F(inf), F(2147483648.0), I(kI32Max), I(1)},
      {DType::i32, I(kI32Min), F(-2147483648.0), I(kI32Min), F(-inf), F(-2147483648.0), I(kI32Min), I(1)},
      {DType::i32, I(16777217), F(16777216), I(16777217), F(inf), F(16777216), I(16777217), I(1)},
      {DType::i32, I(65520), F(65520), I(65520), F(inf), F(65536), I(65520), I(1)},
      {DType::i32, I(65519), F(65519), I(65519), F(65504), F(65536), I(65519), I(1)},
      {DType::i32, I(2049), F(2049), I(2049), F(2048), F(2048), I(2049), I(1)},
      {DType::i64, I(0), F(0), I(0), F(0), F(0), I(0), I(0)},
      {DType::i64, I(-7), F(-7), I(-7), F(-7), F(-7), I(-7), I(1)},
      {DType::i64, I((1LL << 53) + 1), F(0x1p53), I(1), F(inf), F(0x1p53), I((1LL << 53) + 1), I(1)},
      {DType::i64, I(-(1LL << 53) - 1), F(-0x1p53), I(-1), F(-inf), F(-0x1p53), I(-(1LL << 53) - 1), I(1)},
      {DType::i64, I(1LL << 31), F(0x1p31), I(kI32Min), F(inf), F(0x1p31), I(1LL << 31), I(1)},
      {DType::i64, I((1LL << 32) + 5), F(0x1p32), I(5), F(inf), F(0x1p32), I((1LL << 32) + 5), I(1)},
      {DType::i64, I(-(1LL << 31) - 1), F(-0x1p31), I(kI32Max), F(-inf), F(-0x1p31), I(-(1LL << 31) - 1), I(1)},
      {DType::i64, I(kI64Max), F(0x1p63), I(-1), F(inf), F(0x1p63), I(kI64Max), I(1)},
      {DType::i64, I(kI64Min), F(-0x1p63), I(0), F(-inf), F(-0x1p63), I(kI64Min), I(1)},
      {DType::i64, I(16777217), F(16777216), I(16777217), F(inf), F(16777216), I(16777217), I(1)},
      {DType::boolean, I(0), F(0), I(0), F(0), F(0), I(0), I(0)},
      {DType::boolean, I(1), F(1), I(1), F(1), F(1), I(1), I(1)},
  };
  // clang-format on
  auto bits = [](DType d, V v) -> std::uint64_t {
    if (!is_floating(d))
      return d == DType::i32 ? static_cast<std::uint64_t>(static_cast<std::int64_t>(static_cast<std::int32_t>(v.i)))
                             : static_cast<std::uint64_t>(v.i);
    if (std::isnan(v.f)) return 0;  // any NaN: compared by class below
    return Dtypes::bits_of(d, v.f);
  };
  for (const Row& r : rows) {
    // make() is exact for every dtype but i64 beyond 2^53.
    const Tensor src =
        r.from == DType::i64 ? from_host<std::int64_t>({r.in.i}, {1}, dev_) : make(r.from, {r.in.f}, {1});
    const V want[] = {r.f32, r.i32, r.f16, r.bf16, r.i64, r.b};  // kAll's order
    for (std::size_t k = 0; k < std::size(kAll); ++k) {
      const DType to_dtype = kAll[k];
      const Tensor out = wait(to(src, to_dtype));
      const std::string what =
          std::string(dtype_name(r.from)) + " " + std::to_string(r.in.f) + " -> " + dtype_name(to_dtype);
      ASSERT_EQ(out.dtype(), to_dtype) << what;
      const std::uint64_t got = elems(out).at(0);
      if (is_floating(to_dtype) && std::isnan(want[k].f)) {
        EXPECT_TRUE(std::isnan(to_vector(out)[0])) << what << ": want NaN, got bits " << std::hex << got;
      } else {
        EXPECT_EQ(got, bits(to_dtype, want[k]))
            << what << " (want " << want[k].f << ", got " << to_vector(out)[0] << ")";
      }
    }
  }
}

// An integer beyond f32's exact range is rounded to bf16 once, not first to f32 and then to bf16
// (which turns a value just above a bf16 midpoint into a tie, and the tie to the even side):
// to(i32 2^30 + 2^22 + 1, bf16) is 2^30 + 2^23, not 2^30.
TEST_P(Dtypes, IntegerToBf16CastsRoundOnce) {
  const std::int64_t v32 = (1LL << 30) + (1LL << 22) + 1, v64 = (1LL << 40) + (1LL << 32) + 1;
  EXPECT_EQ(to_vector(wait(to(from_host<std::int32_t>({static_cast<std::int32_t>(v32)}, {1}, dev_), DType::bf16)))[0],
            static_cast<float>((1LL << 30) + (1LL << 23)));
  EXPECT_EQ(to_vector(wait(to(from_host<std::int64_t>({v64}, {1}, dev_), DType::bf16)))[0],
            static_cast<float>((1LL << 40) + (1LL << 33)));
}

// All 65536 f16 bit patterns: f16 -> f32 is exact (the compiler's _Float16 agrees) and f32 -> f16
// gives the pattern back; a NaN stays a NaN with its sign. The same for bf16.
TEST_P(Dtypes, EveryF16AndBf16BitPatternRoundTripsThroughF32) {
  std::vector<std::uint16_t> all(65536);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<std::uint16_t>(i);
  for (DType d : {DType::f16, DType::bf16}) {
    const Tensor f = wait(to(raw16(all, d, {65536}), DType::f32));
    const auto values = to_vector(f);
    const auto back = raw16_of(wait(to(f, d)));
    int bad = 0;
    for (std::size_t i = 0; i < all.size() && bad < 5; ++i) {
      const double want = d == DType::f16 ? f16_value(all[i]) : bf16_value(all[i]);
      if (std::isnan(want)) {
        const bool nan_back = d == DType::f16 ? std::isnan(f16_value(back[i])) : std::isnan(bf16_value(back[i]));
        if (!std::isnan(values[i]) || !nan_back || (back[i] & 0x8000) != (all[i] & 0x8000))
          ADD_FAILURE() << dtype_name(d) << " NaN " << std::hex << all[i] << " came back as " << back[i], ++bad;
      } else if (values[i] != want || f32_bits(values[i]) != f32_bits(static_cast<float>(want)) || back[i] != all[i]) {
        ADD_FAILURE() << dtype_name(d) << " " << std::hex << all[i] << ": f32 " << values[i] << ", back " << back[i],
            ++bad;
      }
    }
  }
}

// f32 -> f16 and f32 -> bf16 round to nearest even at every midpoint between neighbours (and one
// f32 step either side of it), overflow included: f16 against _Float16, bf16 against round_binary.
TEST_P(Dtypes, F32ToF16AndBf16RoundToNearestEvenAtEveryMidpoint) {
  for (DType d : {DType::f16, DType::bf16}) {
    const std::uint16_t last = d == DType::f16 ? 0x7bff : 0x7f7f;
    auto value = [&](std::uint32_t b) {
      return d == DType::f16 ? f16_value(static_cast<std::uint16_t>(b)) : bf16_value(static_cast<std::uint16_t>(b));
    };
    std::vector<float> x;
    for (std::uint32_t h = 0; h <= last; ++h) {
      const double next = h == last ? (d == DType::f16 ? 65536.0 : 0x1p128) : value(h + 1);
      const auto m = static_cast<float>((value(h) + next) / 2);  // exact in f32
      for (float v : {m, std::nextafter(m, 0.f), std::nextafter(m, std::numeric_limits<float>::infinity())})
        x.insert(x.end(), {v, -v});
    }
    const auto got = raw16_of(wait(to(from_host<float>(x, {static_cast<int64_t>(x.size())}, dev_), d)));
    int bad = 0;
    for (std::size_t i = 0; i < x.size() && bad < 5; ++i) {
      const std::uint16_t want = d == DType::f16 ? f16_bits(x[i]) : bf16_bits(round_bf16(x[i]));
      if (got[i] != want)
        ADD_FAILURE() << dtype_name(d) << " of " << x[i] << ": " << std::hex << got[i] << ", want " << want, ++bad;
    }
  }
}

// i32 and i64 comparisons are exact in 64-bit integers: neighbours beyond 2^24 (equal in f32)
// differ; tensor-tensor with broadcasting and tensor-scalar alike.
TEST_P(Dtypes, IntegerComparisonsAreExactBeyondTwoTo24) {
  using B = std::vector<std::uint8_t>;
  const Tensor a = from_host<std::int64_t>({16777217, 16777216, (1LL << 53) + 1, -(1LL << 40) - 1}, {4}, dev_);
  const Tensor b = from_host<std::int64_t>({16777216, 16777216, 1LL << 53, -(1LL << 40)}, {4}, dev_);
  EXPECT_EQ(to_host<std::uint8_t>(wait(eq(a, b))), (B{0, 1, 0, 0}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(ne(a, b))), (B{1, 0, 1, 1}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(lt(a, b))), (B{0, 0, 0, 1}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(le(a, b))), (B{0, 1, 0, 1}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(gt(a, b))), (B{1, 0, 1, 0}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(ge(a, b))), (B{1, 1, 1, 0}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(eq(a, 16777216.f))), (B{0, 1, 0, 0}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(gt(a, 16777216.f))), (B{1, 0, 1, 0}));
  // [4, 1] against [1, 4]: every pair.
  const Tensor col = from_host<std::int64_t>({16777217, 16777216, (1LL << 53) + 1, -(1LL << 40) - 1}, {4, 1}, dev_);
  const Tensor out =
      wait(eq(col, from_host<std::int64_t>({16777216, 16777216, 1LL << 53, -(1LL << 40)}, {1, 4}, dev_)));
  ASSERT_EQ(out.shape(), (Shape{4, 4}));
  EXPECT_EQ(to_host<std::uint8_t>(out), (B{0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  const Tensor c = from_host<std::int32_t>({16777217, INT32_MAX, INT32_MIN, 5}, {4}, dev_);
  const Tensor e = from_host<std::int32_t>({16777216, INT32_MAX - 1, INT32_MIN + 1, 5}, {4}, dev_);
  EXPECT_EQ(to_host<std::uint8_t>(wait(eq(c, e))), (B{0, 0, 0, 1}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(gt(c, e))), (B{1, 1, 0, 0}));
}

// f16 comparisons compare the stored (rounded) values: f16(2049) == 2048, f16(0.1) == its bits.
TEST_P(Dtypes, F16AndBf16ComparisonsCompareTheStoredValues) {
  using B = std::vector<std::uint8_t>;
  const Tensor a = wait(to(from_host<float>({1.f, 2049.f, 0.1f, NAN}, {4}, dev_), DType::f16));
  const Tensor b = make(DType::f16, {1.0009765625, 2048, f16_value(f16_bits(0.1f)), kNaN}, {4});
  EXPECT_EQ(to_host<std::uint8_t>(wait(eq(a, b))), (B{0, 1, 1, 0}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(ne(a, b))), (B{1, 0, 0, 1}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(lt(a, b))), (B{1, 0, 0, 0}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(ge(a, b))), (B{0, 1, 1, 0}));
  const Tensor h = wait(to(from_host<float>({257.f, 258.f}, {2}, dev_), DType::bf16));
  EXPECT_EQ(to_host<std::uint8_t>(wait(eq(h, 256.f))), (B{1, 0})) << "bf16(257) is 256";
}

// A scalar takes the tensor's dtype: an integer tensor truncates it (2.9 -> 2, -2.7 -> -2), an
// f16/bf16 tensor rounds it first (f16(0.1) == 0.1f; 1 + (2^-11 + 2^-22) is the tie 1 + 2^-11, to
// even: 1), a boolean tensor makes it nonzero -> true.
TEST_P(Dtypes, ScalarTakesTheTensorDtype) {
  using B = std::vector<std::uint8_t>;
  const Tensor a = from_host<std::int32_t>({2, 3, -2, 1}, {4}, dev_);
  EXPECT_EQ(to_host<std::uint8_t>(wait(eq(a, 2.9f))), (B{1, 0, 0, 0}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(eq(a, -2.7f))), (B{0, 0, 1, 0}));
  EXPECT_EQ(to_host<std::uint8_t>(wait(gt(from_host<std::int64_t>({1, 2}, {2}, dev_), 1.5f))), (B{0, 1}));
  const Tensor m = from_host<std::uint8_t>({1, 0, 1, 0}, {4}, dev_);
  EXPECT_EQ(to_host<std::int32_t>(wait(masked_fill(a, m, -2.7f))), (std::vector<std::int32_t>{-2, 3, -2, 1}));
  for (DType d : {DType::f16, DType::bf16}) {
    const Tensor x = wait(to(full({3}, 0.1f, DType::f32, dev_), d));
    EXPECT_EQ(to_host<std::uint8_t>(wait(eq(x, 0.1f))), (B{1, 1, 1})) << dtype_name(d);
    EXPECT_EQ(to_host<std::uint8_t>(wait(gt(x, 0.1f))), (B{0, 0, 0})) << dtype_name(d);
  }
  const Tensor one = full({2}, 1.f, DType::f16, dev_);
  EXPECT_EQ(to_vector(wait(add(one, 0x1p-11f + 0x1p-22f))), (std::vector<float>{1.f, 1.f}));
  const Tensor b = from_host<std::uint8_t>({0, 1}, {2}, dev_);
  EXPECT_EQ(to_host<std::uint8_t>(wait(eq(b, 0.5f))), (B{0, 1})) << "0.5 as a boolean is true";
}

// where and masked_fill move elements exactly on every data dtype (i64 beyond 2^53, booleans),
// broadcasting the condition and the operands.
TEST_P(Dtypes, WhereAndMaskedFillOnEveryDataDtype) {
  const Tensor cond = from_host<std::uint8_t>({1, 0, 1}, {3, 1}, dev_);
  const Tensor mask = from_host<std::uint8_t>({0, 1, 1, 0}, {1, 4}, dev_);
  for (DType d : kAll) {
    std::vector<double> va, vb;
    for (int i = 0; i < 12; ++i)
      va.push_back(d == DType::boolean ? i % 2 : i - 5.5 * (is_floating(d) ? 1 : 0) + (i == 0 ? 0.25 : 0));
    for (int i = 0; i < 4; ++i) vb.push_back(d == DType::boolean ? (i + 1) % 2 : 100 + i);
    Tensor a = make(d, va, {3, 4}), b = make(d, vb, {1, 4});
    if (d == DType::i64)
      a = from_host<std::int64_t>({(1LL << 53) + 1, -(1LL << 62), 3, 4, 5, 6, 7, 8, 9, 10, 11, kI64Max}, {3, 4}, dev_);
    const auto ea = elems(a), eb = elems(b), ec = elems(cond), em = elems(mask);
    const Tensor w = wait(where(cond, a, b));
    ASSERT_EQ(w.dtype(), d);
    ASSERT_EQ(w.shape(), (Shape{3, 4}));
    const Tensor f = wait(masked_fill(a, mask, -2.75f));
    ASSERT_EQ(f.dtype(), d);
    const auto ew = elems(w), ef = elems(f);
    for (std::size_t i = 0; i < 12; ++i) {
      EXPECT_EQ(ew[i], ec[i / 4] ? ea[i] : eb[i % 4]) << "where " << dtype_name(d) << " [" << i << "]";
      EXPECT_EQ(ef[i], em[i % 4] ? Dtypes::bits_of(d, -2.75) : ea[i])
          << "masked_fill " << dtype_name(d) << " [" << i << "]";
    }
  }
}

// Operands of one op with two dtypes, data an op does not take, a non-boolean condition and a
// non-integer index are std::invalid_argument at the call, naming the op and the dtypes. (Every
// element-wise op's dtype errors: test_elementwise_ops.cpp, RejectsDtypesItDoesNotTakeAtTheCall.)
TEST_P(Dtypes, DtypeErrorsAreInvalidArgumentsNamingTheDtypes) {
  auto t = [&](DType d, Shape s = {2, 3}) { return full(std::move(s), 1.f, d, dev_); };
  using E = std::invalid_argument;
  expect_throw<E>([&] { add(t(DType::f32), t(DType::f16)); }, {"add", "f32", "f16"});
  expect_throw<E>([&] { matmul(t(DType::f16, {2, 3}), t(DType::bf16, {3, 2})); }, {"matmul", "f16", "bf16"});
  expect_throw<E>([&] { layer_norm(t(DType::f16), t(DType::f32, {3}), t(DType::f16, {3})); }, {"layer_norm", "f32"});
  expect_throw<E>([&] { where(t(DType::i64), t(DType::f32), t(DType::f32)); }, {"where", "boolean", "i64"});
  expect_throw<E>([&] { index_select(t(DType::f32), 0, t(DType::f32, {2})); }, {"index_select", "f32"});
  expect_throw<E>([&] { embedding(t(DType::f32), t(DType::boolean, {2})); }, {"embedding", "boolean"});
  expect_throw<E>([&] { index_select(t(DType::f32), 0, t(DType::i64, {2, 1})); }, {"index_select", "1-D"});
  // Math beyond element-wise takes f32, f16 and bf16 only.
  for (DType d : {DType::i32, DType::i64, DType::boolean}) {
    const std::string n = dtype_name(d);
#define DEFER_REDUCE_CALL(id, name, result) expect_throw<E>([&] { defer::name(t(d), 1); }, {#name, n});
    DEFER_REDUCE_OPS(DEFER_REDUCE_CALL)
#undef DEFER_REDUCE_CALL
    expect_throw<E>([&] { softmax(t(d), 1); }, {"softmax", n});
    expect_throw<E>([&] { layer_norm(t(d), t(d, {3}), t(d, {3})); }, {"layer_norm", n});
    expect_throw<E>([&] { matmul(t(d, {2, 3}), t(d, {3, 2})); }, {"matmul", n});
    expect_throw<E>([&] { defer::exp(t(d)); }, {"exp", n});
  }
}

namespace {
// The reductions of the op table (DEFER_REDUCE_OPS), through their public functions.
TensorAwait reduce_call(kernels::ReduceOp op, const TensorAwait& a, int dim, bool keepdim) {
  switch (op) {
#define DEFER_REDUCE_CASE(id, name, result) \
  case kernels::ReduceOp::id: return defer::name(a, dim, keepdim);
    DEFER_REDUCE_OPS(DEFER_REDUCE_CASE)
#undef DEFER_REDUCE_CASE
  }
  throw std::logic_error("unknown reduce op");
}
// Float64 reduction of rows x (outer, n, inner): sum, mean, max, min (NaN wins), argmax (first of ties,
// NaN largest).
R::Vec reduce_ref(kernels::ReduceOp op, const R::Vec& x, const Shape& s, int dim) {
  int64_t outer = 1, inner = 1;
  for (int k = 0; k < dim; ++k) outer *= s[static_cast<std::size_t>(k)];
  for (std::size_t k = static_cast<std::size_t>(dim) + 1; k < s.size(); ++k) inner *= s[k];
  const int64_t n = s[static_cast<std::size_t>(dim)];
  R::Vec y;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      double acc = 0, best = 0;
      int64_t arg = 0;
      for (int64_t j = 0; j < n; ++j) {
        const double v = x[static_cast<std::size_t>((o * n + j) * inner + i)];
        acc += v;
        const bool better = j == 0 || (!std::isnan(best) && (std::isnan(v) || v > best));
        const bool lower = j == 0 || (!std::isnan(best) && (std::isnan(v) || v < best));
        if (op == kernels::ReduceOp::min ? lower : better) best = v, arg = j;
      }
      switch (op) {
        case kernels::ReduceOp::sum: y.push_back(acc); break;
        case kernels::ReduceOp::mean: y.push_back(acc / static_cast<double>(n)); break;
        case kernels::ReduceOp::max:
        case kernels::ReduceOp::min: y.push_back(best); break;
        case kernels::ReduceOp::argmax: y.push_back(static_cast<double>(arg)); break;
      }
    }
  return y;
}
}  // namespace

// sum/mean/max/min/argmax of f16 and bf16 compute in f32 and store the input's dtype (argmax: i64),
// on every dim, with and without keepdim, within 1e-2 of float64 on the stored inputs.
TEST_P(Dtypes, ReductionsOfF16AndBf16KeepTheDtypeAndMatchFloat64) {
  const Shape s{4, 37};
  for (DType d : {DType::f16, DType::bf16}) {
    const Tensor x = wait(to(from_vector(random_values(148, 7, -3.f, 3.f), s, dev_), d));
    const R::Vec xv = R::widen(to_vector(x));
    for (unsigned k = 0; k < kernels::kReduceOpCount; ++k) {
      const auto op = static_cast<kernels::ReduceOp>(k);
      const bool index = kernels::kReduceOps[k].result == kernels::OpResult::index;
      for (int dim : {0, 1, -1})
        for (bool keep : {false, true}) {
          const std::string what = std::string(kernels::name(op)) + " " + dtype_name(d) + " dim " +
                                   std::to_string(dim) + (keep ? " keepdim" : "");
          const int dd = dim < 0 ? dim + 2 : dim;
          Shape want_shape = s;
          want_shape[static_cast<std::size_t>(dd)] = 1;
          if (!keep) want_shape.erase(want_shape.begin() + dd);
          const Tensor r = wait(reduce_call(op, x, dim, keep));
          ASSERT_EQ(r.shape(), want_shape) << what;
          ASSERT_EQ(r.dtype(), index ? DType::i64 : d) << what;
          const R::Vec want = reduce_ref(op, xv, s, dd);
          const R::Vec got = R::widen(to_vector(r));  // argmax's small indices exactly
          R::Vec scale = R::abs_sum(xv, s, dd);
          if (op == kernels::ReduceOp::mean)
            for (double& v : scale) v /= static_cast<double>(s[static_cast<std::size_t>(dd)]);
          for (std::size_t i = 0; i < want.size(); ++i) {
            if (op == kernels::ReduceOp::sum || op == kernels::ReduceOp::mean)
              EXPECT_NEAR(got[i], want[i], 1e-2 * scale[i]) << what << " [" << i << "]";
            else
              EXPECT_EQ(got[i], want[i]) << what << " [" << i << "]";
          }
        }
    }
  }
}

// argmax gives the first of equal maxima and counts NaN as the largest; max/min propagate NaN.
TEST_P(Dtypes, ArgmaxTakesTheFirstOfTiesAndNanAsLargest) {
  const float nan = NAN, inf = INFINITY;
  for (DType d : {DType::f32, DType::f16, DType::bf16}) {
    const Tensor x = wait(to(from_vector({1, 3, 3, 2, 1, nan, 5, nan, -inf, -inf, -inf, -inf}, {3, 4}, dev_), d));
    const Tensor a = wait(argmax(x, 1, true));
    EXPECT_EQ(a.shape(), (Shape{3, 1}));
    EXPECT_EQ(to_host<std::int64_t>(a), (std::vector<std::int64_t>{1, 1, 0})) << dtype_name(d);
    const auto mx = to_vector(wait(defer::max(x, 1))), mn = to_vector(wait(defer::min(x, -1)));
    EXPECT_EQ(mx[0], 3.f);
    EXPECT_TRUE(std::isnan(mx[1])) << dtype_name(d);
    EXPECT_EQ(mx[2], -inf);
    EXPECT_EQ(mn[0], 1.f);
    EXPECT_TRUE(std::isnan(mn[1])) << dtype_name(d);
  }
}

// A reduction over the only dim of a 1-D tensor gives a 0-d tensor (shape {}, one element);
// keepdim gives shape {1}.
TEST_P(Dtypes, ReductionOverTheOnlyDimGivesAZeroDimTensor) {
  for (DType d : {DType::f32, DType::f16, DType::bf16}) {
    const Tensor x = wait(to(from_vector({2, -1, 4, 0.5f}, {4}, dev_), d));
    const double want[] = {5.5, 1.375, 4, -1, 2};  // sum, mean, max, min, argmax, as kReduceOps
    static_assert(std::size(want) == kernels::kReduceOpCount, "a reduction without an expectation here");
    for (unsigned k = 0; k < kernels::kReduceOpCount; ++k)
      for (int dim : {0, -1}) {
        const auto op = static_cast<kernels::ReduceOp>(k);
        const std::string what = std::string(kernels::name(op)) + " " + dtype_name(d);
        const Tensor r = wait(reduce_call(op, x, dim, false));
        EXPECT_EQ(r.shape(), Shape{}) << what;
        ASSERT_EQ(r.numel(), 1) << what;
        EXPECT_EQ(to_vector(r)[0], want[k]) << what;
        EXPECT_EQ(wait(reduce_call(op, x, dim, true)).shape(), Shape{1}) << what;
      }
  }
}

// softmax, layer_norm and matmul take f16 and bf16 (one dtype for all operands), compute in f32
// and match float64 on the stored inputs within 1e-2.
TEST_P(Dtypes, SoftmaxLayerNormAndMatmulOnF16AndBf16MatchFloat64) {
  auto close = [](const std::vector<float>& got, const R::Vec& want, const R::Vec& scale, const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    int bad = 0;
    for (std::size_t i = 0; i < got.size() && bad < 5; ++i)
      if (!(std::abs(got[i] - want[i]) <= 1e-2 * scale[i] + 1e-6))
        ADD_FAILURE() << what << " [" << i << "]: " << got[i] << " vs " << want[i], ++bad;
  };
  auto abs_of = [](R::Vec v) {
    for (double& x : v) x = std::abs(x);
    return v;
  };
  for (DType d : {DType::f16, DType::bf16}) {
    auto input = [&](Shape s, unsigned seed) {
      return wait(to(from_vector(random_values(static_cast<std::size_t>(R::numel(s)), seed, -3.f, 3.f), s, dev_), d));
    };
    const std::string n = dtype_name(d);
    const Tensor x = input({3, 17}, 1);
    const R::Vec xv = R::widen(to_vector(x));
    for (int dim : {0, 1}) {
      const Tensor y = wait(softmax(x, dim));
      EXPECT_EQ(y.dtype(), d);
      const R::Vec want = R::softmax(xv, {3, 17}, dim);
      close(to_vector(y), want, abs_of(want), "softmax " + n);
    }
    const Tensor h = input({4, 32}, 2), g = input({32}, 3), b = input({32}, 4);
    const Tensor ln = wait(layer_norm(h, g, b));
    EXPECT_EQ(ln.dtype(), d);
    const R::Vec lw = R::layer_norm(R::widen(to_vector(h)), R::widen(to_vector(g)), R::widen(to_vector(b)), 32, 1e-5);
    R::Vec lscale = abs_of(lw);
    for (double& v : lscale) v = std::max(v, 1.0);  // y = xhat * g + b cancels: measured on O(1)
    close(to_vector(ln), lw, lscale, "layer_norm " + n);
    for (auto [sa, sb] : {std::pair<Shape, Shape>{{5, 16}, {16, 7}}, {{2, 5, 16}, {2, 16, 7}}, {{5, 16}, {2, 16, 7}}}) {
      const Tensor a = input(sa, 5), c = input(sb, 6);
      const Tensor m = wait(matmul(a, c));
      EXPECT_EQ(m.dtype(), d);
      const R::Vec av = R::widen(to_vector(a)), cv = R::widen(to_vector(c));
      close(to_vector(m), R::matmul(av, sa, cv, sb), R::matmul(abs_of(av), sa, abs_of(cv), sb),
            "matmul " + n + " " + shape_str(sa));
    }
  }
}

// index_select and embedding copy rows of every dtype exactly, with i32 and i64 indices, on every
// dim (negative too), repeated indices and any ids shape.
TEST_P(Dtypes, IndexSelectAndEmbeddingGatherEveryDtypeWithI32AndI64Indices) {
  for (DType d : kAll) {
    std::vector<double> v;
    for (int i = 0; i < 60; ++i)
      v.push_back(d == DType::boolean ? (i * 7 % 3 == 0) : d == DType::i64 ? 0x1p40 + i : i - 30);
    const Tensor x = make(d, v, {4, 5, 3});
    const auto ex = elems(x);
    for (DType it : {DType::i32, DType::i64}) {
      const std::string what = std::string(dtype_name(d)) + " by " + dtype_name(it);
      const std::vector<int64_t> picks{2, 0, 2, 1};
      const Tensor index = make(it, {2, 0, 2, 1}, {4});
      for (int dim : {0, 1, 2, -1}) {
        const int dd = dim < 0 ? dim + 3 : dim;
        const Tensor out = wait(index_select(x, dim, index));
        Shape want_shape{4, 5, 3};
        want_shape[static_cast<std::size_t>(dd)] = 4;
        ASSERT_EQ(out.shape(), want_shape) << what;
        ASSERT_EQ(out.dtype(), d) << what;
        const auto eo = elems(out);
        for (int64_t i = 0; i < R::numel(want_shape); ++i) {
          int64_t c[3] = {i / (want_shape[1] * want_shape[2]), i / want_shape[2] % want_shape[1], i % want_shape[2]};
          c[dd] = picks[static_cast<std::size_t>(c[dd])];
          ASSERT_EQ(eo[static_cast<std::size_t>(i)], ex[static_cast<std::size_t>((c[0] * 5 + c[1]) * 3 + c[2])])
              << what << " dim " << dim << " [" << i << "]";
        }
      }
      const Tensor w = make(d, std::vector<double>(v.begin(), v.begin() + 24), {6, 4});
      const auto ew = elems(w);
      const std::vector<int64_t> ids{5, 0, 2, 2, 1, 5};
      const Tensor e = wait(embedding(w, make(it, {5, 0, 2, 2, 1, 5}, {2, 3})));
      ASSERT_EQ(e.shape(), (Shape{2, 3, 4})) << what;
      ASSERT_EQ(e.dtype(), d) << what;
      const auto ee = elems(e);
      for (std::size_t i = 0; i < ee.size(); ++i)
        EXPECT_EQ(ee[i], ew[static_cast<std::size_t>(ids[i / 4]) * 4 + i % 4]) << "embedding " << what;
      EXPECT_EQ(wait(embedding(w, make(it, {3}, {}))).shape(), Shape{4}) << "0-d ids";
    }
  }
}

// An index outside [0, extent), at the first, a middle or the last position, too large or negative
// (down to the type's minimum), is found when the graph runs: the wait throws std::out_of_range
// naming the op, the index and the extent; the error is cached; consumers fail with it; nothing is
// read out of bounds (ASan); the runtime keeps working.
TEST_P(Dtypes, OutOfRangeIndicesAtEveryPositionThrowOutOfRangeWhenWaited) {
  const Tensor x = from_vector(random_values(21, 3), {7, 3}, dev_);
  struct Op {
    const char* name;
    int dim;
    int64_t extent;
  };
  for (const Op& op : {Op{"index_select", 0, 7}, Op{"index_select", -1, 3}, Op{"embedding", 0, 7}})
    for (DType it : {DType::i32, DType::i64}) {
      const int64_t lowest = it == DType::i32 ? kI32Min : kI64Min;
      for (std::size_t pos : {0, 2, 4})
        for (int64_t bad : {op.extent, op.extent + 1000, int64_t{-1}, lowest}) {
          std::vector<double> good{1, 2, 0, 2, 1};
          std::vector<int64_t> idx(good.begin(), good.end());
          idx[pos] = bad;
          const Tensor index =
              it == DType::i32 ? from_host<std::int32_t>(std::vector<std::int32_t>(idx.begin(), idx.end()), {5}, dev_)
                               : from_host<std::int64_t>(idx, {5}, dev_);
          const std::string what = std::string(op.name) + " " + dtype_name(it) + " index " + std::to_string(bad) +
                                   " at " + std::to_string(pos);
          TensorAwait r = std::string(op.name) == "embedding" ? embedding(x, index) : index_select(x, op.dim, index);
          TensorAwait consumer = r * 2.f;
          const std::vector<std::string> words{op.name, std::to_string(bad), "extent " + std::to_string(op.extent)};
          const std::string first = expect_throw<std::out_of_range>([&] { wait(r); }, words, what);
          const std::string again = expect_throw<std::out_of_range>([&] { wait(r); }, words, what + " (again)");
          EXPECT_EQ(first, again) << "the error is cached";
          expect_throw<std::out_of_range>([&] { wait(consumer); }, {op.name}, what + " (consumer)");
          // Still working: the same op with good indices, and something unrelated.
          const Tensor ok = wait(index_select(x, op.dim, from_host<std::int64_t>({1, 2, 0, 2, 1}, {5}, dev_)));
          EXPECT_EQ(ok.shape()[static_cast<std::size_t>(op.dim < 0 ? 1 : 0)], 5) << what;
          EXPECT_EQ(to_vector(wait(add(x, x))).size(), 21u) << what;
        }
    }
}

TEST_P(Dtypes, EmptyIndexGivesAnEmptyResult) {
  const Tensor x = from_vector(random_values(21, 3), {7, 3}, dev_);
  const Tensor none64 = from_host<std::int64_t>({}, {0}, dev_), none32 = from_host<std::int32_t>({}, {0}, dev_);
  EXPECT_EQ(wait(index_select(x, 0, none64)).shape(), (Shape{0, 3}));
  EXPECT_EQ(wait(index_select(x, 1, none32)).shape(), (Shape{7, 0}));
  const Tensor e = wait(embedding(x, from_host<std::int64_t>({}, {2, 0}, dev_)));
  EXPECT_EQ(e.shape(), (Shape{2, 0, 3}));
  EXPECT_EQ(e.numel(), 0);
  EXPECT_TRUE(to_vector(e).empty());
}

// Indices are checked even when the rows they pick are empty: the result has no elements, the
// indices are still out of range.
TEST_P(Dtypes, BadIndicesOfAnEmptyResultStillThrow) {
  const Tensor empty_rows = from_vector({}, {0, 4}, dev_);
  EXPECT_THROW(wait(index_select(empty_rows, 1, from_host<std::int64_t>({-1, 2}, {2}, dev_))), std::out_of_range);
  EXPECT_EQ(wait(index_select(empty_rows, 1, from_host<std::int64_t>({3, 0}, {2}, dev_))).shape(), (Shape{0, 2}));
  const Tensor no_columns = from_vector({}, {2, 0}, dev_);
  EXPECT_THROW(wait(embedding(no_columns, from_host<std::int32_t>({1, 2}, {2}, dev_))), std::out_of_range);
  EXPECT_EQ(wait(embedding(no_columns, from_host<std::int32_t>({1, 0}, {2}, dev_))).shape(), (Shape{2, 0}));
}

// ../shared/contract/api_dtypes.cpp calls embedding(x[2, 3], ids {2, 0}) and expects no error; row 2
// of a 2-row weight is out of range by docs/api.md section 9, which this follows (raised in the issue).
TEST_P(Dtypes, ContractEmbeddingOfRowTwoOfATwoRowWeightIsOutOfRange) {
  const Tensor x = from_vector({-1, 2, 3, 4, 5, 6}, {2, 3}, dev_);
  expect_throw<std::out_of_range>(
      [&] {
        wait(embedding(x, from_host<std::int64_t>({2, 0}, {2}, dev_)));
      },
      {"embedding", "2"}, "embedding row 2");
}

INSTANTIATE_TEST_SUITE_P(Devices, Dtypes, ::testing::Values(DeviceKind::cpu, DeviceKind::cuda),
                         [](const ::testing::TestParamInfo<DeviceKind>& p) {
                           return std::string(p.param == DeviceKind::cuda ? "cuda" : "cpu");
                         });
