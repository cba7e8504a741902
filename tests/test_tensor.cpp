// Tensors: creation, host round trips for every dtype, stream-ordered copies, bad input.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

#include <defer/defer.hpp>

#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;

namespace {

std::vector<Device> devices() {
  std::vector<Device> d{Device::cpu()};
  if (cuda_available()) d.push_back(Device::cuda(0));
  return d;
}

std::vector<std::int32_t> random_ints(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<std::int32_t> dist(std::numeric_limits<std::int32_t>::min(),
                                                   std::numeric_limits<std::int32_t>::max());
  std::vector<std::int32_t> v(n);
  for (auto& x : v) {
    do x = dist(gen);
    while (x == 0);
  }
  return v;
}

}  // namespace

TEST(Tensor, UndefinedByDefault) {
  Tensor t;
  EXPECT_FALSE(t.defined());
  EXPECT_THROW(t.shape(), std::logic_error);
  EXPECT_THROW(t.numel(), std::logic_error);
  EXPECT_THROW(t.dtype(), std::logic_error);
  EXPECT_THROW(t.device(), std::logic_error);
  EXPECT_THROW(t.data_ptr(), std::logic_error);
  EXPECT_THROW(to_vector(t), std::invalid_argument);
  EXPECT_THROW(record_stream(t, current_stream(Device::cpu())), std::invalid_argument);
}

TEST(Tensor, EmptyDescribesItself) {
  Tensor t = empty({2, 3, 4}, DType::i32, Device::cpu());
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(t.dim(), 3);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.dtype(), DType::i32);
  EXPECT_EQ(t.device(), Device::cpu());
  EXPECT_EQ(t.nbytes(), 96u);
  EXPECT_NE(t.data_ptr(), nullptr);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 64, 0u) << "CPU blocks are cache-line aligned";
}

TEST(Tensor, ScalarAndZeroSizeShapes) {
  Tensor scalar = from_vector({2.5f}, {}, Device::cpu());
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.numel(), 1);
  EXPECT_EQ(to_vector(scalar), std::vector<float>{2.5f});
  Tensor none = from_vector({}, {3, 0}, Device::cpu());
  EXPECT_EQ(none.numel(), 0);
  EXPECT_TRUE(to_vector(none).empty());
}

TEST(Tensor, CopiesShareStorage) {
  Tensor a = from_vector({1.f, 2.f}, {2}, Device::cpu());
  Tensor b = a;
  EXPECT_EQ(a.data_ptr(), b.data_ptr());
  std::as_const(b).data_ptr();
  current_stream(Device::cpu()).synchronize();
  static_cast<float*>(b.data_ptr())[1] = 9.f;
  EXPECT_EQ(to_vector(a), (std::vector<float>{1.f, 9.f}));
}

TEST(Tensor, F32RoundTripOnEveryDevice) {
  for (Device d : devices()) {
    for (int64_t n : {1, 3, 1023, 65537, 1 << 20}) {
      const auto values = random_values(static_cast<std::size_t>(n), static_cast<unsigned>(n));
      Tensor t = from_vector(values, {n}, d);
      EXPECT_EQ(t.device(), d);
      EXPECT_EQ(to_vector(t), values) << d.str() << " n=" << n;
      EXPECT_EQ(to_host<float>(t), values);
    }
  }
}

TEST(Tensor, I32RoundTripOnEveryDevice) {
  for (Device d : devices()) {
    const auto values = random_ints(4099, 11);
    Tensor t = from_host(values, {4099}, d);
    EXPECT_EQ(t.dtype(), DType::i32);
    EXPECT_EQ(to_host<std::int32_t>(t), values) << d.str();
    const auto as_float = to_vector(t);
    for (std::size_t i = 0; i < values.size(); ++i) ASSERT_EQ(as_float[i], static_cast<float>(values[i]));
  }
}

TEST(Tensor, FullFillsEveryDtype) {
  for (Device d : devices()) {
    EXPECT_EQ(to_vector(full({2, 2}, 1.25f, DType::f32, d)), std::vector<float>(4, 1.25f));
    EXPECT_EQ(to_host<std::int32_t>(full({3}, -7.f, DType::i32, d)), std::vector<std::int32_t>(3, -7));
  }
  EXPECT_THROW(full({2}, std::nanf(""), DType::i32, Device::cpu()), std::invalid_argument);
  EXPECT_THROW(full({2}, 1e10f, DType::i32, Device::cpu()), std::invalid_argument);
}

TEST(Tensor, NanAndInfSurviveARoundTrip) {
  const float inf = std::numeric_limits<float>::infinity();
  auto back = to_vector(from_vector({std::nanf(""), inf, -inf, 1.f}, {4}, Device::cpu()));
  EXPECT_TRUE(std::isnan(back[0]));
  EXPECT_EQ(back[1], inf);
  EXPECT_EQ(back[2], -inf);
}

TEST(Tensor, ToVectorCompletesWorkQueuedOnTheCurrentStream) {
  Stream s = Stream::create(Device::cpu());
  StreamGuard g(s);
  Tensor t = full({1000}, 1.f, DType::f32, Device::cpu());
  float* p = static_cast<float*>(t.data_ptr());
  enqueue_sleep(s, 100);
  enqueue(s, [p] { std::fill_n(p, 1000, 42.f); });
  EXPECT_EQ(to_vector(t), std::vector<float>(1000, 42.f));
}

TEST(Tensor, FromVectorMayReleaseItsSourceAtOnce) {
  Stream s = Stream::create(Device::cpu());
  StreamGuard g(s);
  enqueue_sleep(s, 50);  // the copy runs after the host vector is gone
  Tensor t;
  {
    std::vector<float> source = random_values(512, 3);
    t = from_vector(source, {512}, Device::cpu());
    std::vector<float> expected = source;
    std::fill(source.begin(), source.end(), -1.f);
    EXPECT_EQ(to_vector(t), expected);
  }
}

TEST(Tensor, BadShapesAndSizesAreInvalidArgumentsNamingTheOp) {
  try {
    from_vector({1.f, 2.f, 3.f}, {2, 2}, Device::cpu());
    FAIL();
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("from_vector"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[2, 2]"), std::string::npos) << msg;
  }
  EXPECT_THROW(empty({-1, 3}, DType::f32, Device::cpu()), std::invalid_argument);
  EXPECT_THROW(empty({int64_t{1} << 40, int64_t{1} << 40}, DType::f32, Device::cpu()), std::invalid_argument);
  EXPECT_THROW(empty({int64_t{1} << 62}, DType::f32, Device::cpu()), std::invalid_argument) << "byte count overflows";
  try {
    empty({3, -2}, DType::f32, Device::cpu());
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("empty"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("[3, -2]"), std::string::npos);
  }
  Tensor i = from_host(std::vector<std::int32_t>{1, 2}, {2}, Device::cpu());
  EXPECT_THROW(to_host<float>(i), std::invalid_argument);
}

TEST(Tensor, RecordStreamRejectsAnotherDevice) {
  DEFER_SKIP_WITHOUT_GPU();
  Tensor t = from_vector({1.f}, {1}, Device::cpu());
  EXPECT_THROW(record_stream(t, Stream::create(Device::cuda(0))), std::invalid_argument);
}

TEST(Tensor, GpuAndCpuAgreeOnTheSameRandomInput) {
  DEFER_SKIP_WITHOUT_GPU();
  const auto values = random_values(100003, 5);
  auto via_gpu = to_vector(from_vector(values, {100003}, Device::cuda(0)));
  auto via_cpu = to_vector(from_vector(values, {100003}, Device::cpu()));
  EXPECT_EQ(via_gpu, via_cpu);
  EXPECT_EQ(via_gpu, values);
}
