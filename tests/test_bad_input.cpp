// Bad input at every public entry point, as a table: each row names the entry point, the bad input,
// the exception type the contract promises and a substring its message must contain (the op and the
// shapes). After every row the runtime must still work. NaN and Inf flow through every op without
// a crash.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <typeinfo>

#include <defer/defer.hpp>

#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;

namespace {

const Device cpu = Device::cpu();

enum class Expect { invalid_argument, logic_error, device_error, out_of_memory };

const char* name_of(Expect e) {
  switch (e) {
    case Expect::invalid_argument: return "std::invalid_argument";
    case Expect::logic_error: return "std::logic_error";
    case Expect::device_error: return "defer::DeviceError";
    case Expect::out_of_memory: return "defer::OutOfMemory";
  }
  return "?";
}

bool matches(Expect e, const std::exception& x) {
  switch (e) {
    case Expect::invalid_argument: return dynamic_cast<const std::invalid_argument*>(&x) != nullptr;
    // Misuse of an empty Await or an undefined tensor: std::logic_error, of which std::invalid_argument
    // (an op or function handed one as an argument) is a kind.
    case Expect::logic_error: return dynamic_cast<const std::logic_error*>(&x) != nullptr;
    case Expect::device_error: return dynamic_cast<const DeviceError*>(&x) != nullptr;
    case Expect::out_of_memory: return dynamic_cast<const OutOfMemory*>(&x) != nullptr;
  }
  return false;
}

struct Row {
  const char* entry;
  const char* input;
  Expect expect;
  std::vector<std::string> message;  // substrings the message must contain
  std::function<void()> call;
  bool needs_no_gpu = false;  // the row is about a missing GPU
};

Tensor f32(Shape s) { return full(std::move(s), 1.5f, DType::f32, cpu); }
Tensor i32(Shape s) { return full(std::move(s), 2.f, DType::i32, cpu); }

std::vector<Row> table() {
  const Tensor a23 = f32({2, 3}), a34 = f32({3, 4}), a24 = f32({2, 4}), a4 = f32({4}), s0 = f32({}), i23 = i32({2, 3});
  const Tensor b235 = f32({2, 3, 5}), b354 = f32({3, 5, 4}), a2345 = f32({2, 3, 4, 5});
  const Tensor undefined;
  const TensorAwait empty_aw;
  const int64_t big = int64_t{1} << 62;
  using E = Expect;
  return {
      // element-wise shapes and dtypes
      {"add", "[2,3] + [2,4]", E::invalid_argument, {"add", "[2, 3]", "[2, 4]"}, [=] { add(a23, a24); }},
      {"sub", "[2,3] - [3,4]", E::invalid_argument, {"sub", "[2, 3]", "[3, 4]"}, [=] { sub(a23, a34); }},
      {"mul", "[2,3] * [4]", E::invalid_argument, {"mul", "[2, 3]", "[4]"}, [=] { mul(a23, a4); }},
      {"div", "[4] / [2,3]", E::invalid_argument, {"div", "[4]", "[2, 3]"}, [=] { div(a4, a23); }},
      {"maximum", "[2,3,5] vs [3,5,4]", E::invalid_argument, {"maximum", "[2, 3, 5]", "[3, 5, 4]"}, [=] { maximum(b235, b354); }},
      {"minimum", "[2,4] vs [2,3]", E::invalid_argument, {"minimum"}, [=] { minimum(a24, a23); }},
      {"operator+", "[2,3] + [2,4]", E::invalid_argument, {"add", "[2, 3]", "[2, 4]"}, [=] { (void)(TensorAwait(a23) + a24); }},
      {"add", "i32 + f32", E::invalid_argument, {"add", "i32"}, [=] { add(i23, a23); }},
      {"exp", "i32", E::invalid_argument, {"exp", "i32"}, [=] { defer::exp(i23); }},
      {"mul(scalar)", "i32", E::invalid_argument, {"mul", "i32"}, [=] { mul(i23, 2.f); }},
      {"sum", "i32", E::invalid_argument, {"sum", "i32"}, [=] { sum(i23, 0); }},
      {"softmax", "i32", E::invalid_argument, {"softmax", "i32"}, [=] { softmax(i23, 0); }},
      {"matmul", "i32 x f32", E::invalid_argument, {"matmul", "i32"}, [=] { matmul(i23, a34); }},
      {"layer_norm", "i32 x", E::invalid_argument, {"layer_norm", "i32"}, [=] { layer_norm(i23, f32({3}), f32({3})); }},
      // reductions and dims
      {"sum", "dim 2 of [2,3]", E::invalid_argument, {"sum", "dim 2", "2 dims"}, [=] { sum(a23, 2); }},
      {"mean", "dim -3 of [2,3]", E::invalid_argument, {"mean", "dim -3"}, [=] { mean(a23, -3); }},
      {"max", "dim 0 of a scalar", E::invalid_argument, {"max", "dim 0", "0 dims"}, [=] { defer::max(s0, 0); }},
      {"max", "an empty dim", E::invalid_argument, {"max", "[0, 3]"}, [=] { defer::max(f32({0, 3}), 0); }},
      {"softmax", "dim 4 of [2,3,4,5]", E::invalid_argument, {"softmax", "dim 4"}, [=] { softmax(a2345, 4); }},
      {"softmax", "dim INT_MIN", E::invalid_argument, {"softmax"}, [=] { softmax(a23, std::numeric_limits<int>::min()); }},
      {"sum", "dim INT_MAX", E::invalid_argument, {"sum"}, [=] { sum(a23, std::numeric_limits<int>::max()); }},
      // matmul, transpose, layer_norm shapes
      {"matmul", "[2,3] x [2,4]", E::invalid_argument, {"matmul", "[2, 3]", "[2, 4]"}, [=] { matmul(a23, a24); }},
      {"matmul", "1-D operand", E::invalid_argument, {"matmul", "[4]"}, [=] { matmul(a4, a34); }},
      {"matmul", "4-D operand", E::invalid_argument, {"matmul", "[2, 3, 4, 5]"}, [=] { matmul(a2345, a34); }},
      {"matmul", "batch 2 vs 3", E::invalid_argument, {"matmul", "[2, 3, 5]", "[3, 5, 4]"}, [=] { matmul(b235, b354); }},
      {"transpose", "1-D", E::invalid_argument, {"transpose", "[4]"}, [=] { transpose(a4); }},
      {"transpose", "0-D", E::invalid_argument, {"transpose", "[]"}, [=] { transpose(s0); }},
      {"layer_norm", "gamma [4] for x [2,3]", E::invalid_argument, {"layer_norm", "[4]", "[2, 3]"}, [=] { layer_norm(a23, a4, f32({3})); }},
      {"layer_norm", "0-D x", E::invalid_argument, {"layer_norm"}, [=] { layer_norm(s0, s0, s0); }},
      // undefined tensors and empty Awaits
      {"add", "undefined tensor", E::invalid_argument, {"add", "undefined"}, [=] { add(undefined, a23); }},
      {"exp", "undefined tensor", E::invalid_argument, {"exp", "undefined"}, [=] { defer::exp(undefined); }},
      {"matmul", "undefined tensor", E::invalid_argument, {"matmul", "undefined"}, [=] { matmul(a23, undefined); }},
      {"to", "undefined tensor", E::invalid_argument, {"to", "undefined"}, [=] { to(undefined, cpu); }},
      {"add", "empty Await", E::logic_error, {"empty"}, [=] { add(empty_aw, a23); }},
      {"softmax", "empty Await", E::logic_error, {"empty"}, [=] { softmax(empty_aw, 0); }},
      {"wait", "empty Await", E::logic_error, {"empty"}, [=] { wait(empty_aw); }},
      {"operator*", "empty Await", E::logic_error, {"empty"}, [=] { (void)*empty_aw; }},
      {"wait_all", "an empty Await among others", E::logic_error, {"empty"}, [=] { wait_all({TensorAwait(a23), empty_aw}); }},
      {"Tensor::shape", "undefined tensor", E::logic_error, {"undefined"}, [=] { (void)undefined.shape(); }},
      {"to_vector", "undefined tensor", E::logic_error, {"undefined"}, [=] { to_vector(undefined); }},
      {"record_stream", "undefined tensor", E::logic_error, {"undefined"}, [=] { record_stream(undefined, current_stream(cpu)); }},
      // shapes and sizes
      {"empty", "negative extent", E::invalid_argument, {"empty", "-1"}, [=] { empty({2, -1}, DType::f32, cpu); }},
      {"empty", "extents whose product overflows int64", E::invalid_argument, {"empty", "overflow"}, [=] { empty({big, big, 4}, DType::f32, cpu); }},
      {"full", "extents whose product overflows int64", E::invalid_argument, {"overflow"}, [=] { full({big, 8}, 0.f, DType::f32, cpu); }},
      {"empty", "bytes overflowing size_t", E::invalid_argument, {"overflow"}, [=] { empty({int64_t{1} << 62}, DType::f32, cpu); }},
      {"empty", "2^60 bytes", E::out_of_memory, {"1152921504606846976", "free"}, [=] { empty({int64_t{1} << 58}, DType::f32, cpu); }},
      {"from_vector", "3 values for [2,2]", E::invalid_argument, {"from_vector", "[2, 2]"}, [=] { from_vector({1.f, 2.f, 3.f}, {2, 2}, cpu); }},
      {"add", "broadcast result overflowing int64", E::invalid_argument, {"add"},
       [=] { add(empty({big, 0}, DType::f32, cpu), empty({0, big}, DType::f32, cpu)); }},
      // devices
      {"Device::cuda", "index -1", E::invalid_argument, {"-1"}, [] { Device::cuda(-1); }},
      {"Stream::create", "cuda:7", E::device_error, {"cuda:7"}, [] { Stream::create(Device::cuda(7)); }, true},
      {"empty", "cuda:0 without a GPU", E::device_error, {"cuda:0"}, [] { empty({2}, DType::f32, Device::cuda(0)); }, true},
      {"to", "cuda:0 without a GPU", E::device_error, {"cuda:0"}, [=] { wait(to(a23, Device::cuda(0))); }, true},
      {"memory_stats", "cuda:0 without a GPU", E::device_error, {"cuda:0"}, [] { memory_stats(Device::cuda(0)); }, true},
      {"current_stream", "cuda:0 without a GPU", E::device_error, {"cuda:0"}, [] { current_stream(Device::cuda(0)); }, true},
  };
}

}  // namespace

TEST(BadInput, EveryRowThrowsTheContractsErrorAndTheRuntimeStaysUsable) {
  empty_cache(cpu);
  const MemoryStats baseline = memory_stats(cpu);
  Tensor keep = from_vector({1.f, 2.f, 3.f}, {3}, cpu);
  TensorAwait pending = keep * 2.f;  // stays pending across every row
  int rows = 0;
  for (const Row& row : table()) {
    const std::string ctx = std::string(row.entry) + " with " + row.input;
    if (row.needs_no_gpu && cuda_available()) continue;
    ++rows;
    try {
      row.call();
      ADD_FAILURE() << ctx << ": no exception (expected " << name_of(row.expect) << ")";
    } catch (const std::exception& e) {
      EXPECT_TRUE(matches(row.expect, e)) << ctx << ": threw " << typeid(e).name() << " (" << e.what() << "), expected "
                                          << name_of(row.expect);
      for (const std::string& part : row.message)
        EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << ctx << ": message '" << e.what() << "' lacks '" << part << "'";
    } catch (...) {
      ADD_FAILURE() << ctx << ": threw something that is not a std::exception";
    }
    // Still usable: a fresh op works and earlier values are intact.
    EXPECT_EQ(to_vector(wait(exp(from_vector({0.f}, {1}, cpu)))), (std::vector<float>{1.f})) << "after " << ctx;
    EXPECT_EQ(to_vector(keep), (std::vector<float>{1.f, 2.f, 3.f})) << "after " << ctx;
  }
  EXPECT_GE(rows, 45);
  EXPECT_EQ(to_vector(wait(pending)), (std::vector<float>{2.f, 4.f, 6.f}));
  keep = Tensor();
  pending = TensorAwait();
  current_stream(cpu).synchronize();
  EXPECT_EQ(memory_stats(cpu).allocated_bytes, baseline.allocated_bytes) << "a rejected call leaked memory";
}

TEST(BadInput, DeferredErrorsOfOperandsOfUnknownShapeAreCachedAtTheWait) {
  // An awaitable's shape is not known at the call: the check happens when it runs, and is cached.
  auto bad = awaitable([] { return full({2, 5}, 1.f, DType::f32, Device::cpu()); });
  TensorAwait r = matmul(bad, full({3, 4}, 1.f, DType::f32, cpu));
  std::string first;
  try {
    wait(r);
    ADD_FAILURE() << "no error";
  } catch (const std::invalid_argument& e) {
    first = e.what();
    EXPECT_NE(first.find("matmul"), std::string::npos) << first;
  }
  try {
    wait(r);
    ADD_FAILURE() << "no error on the second wait";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(first, e.what());
  }
}

TEST(BadInput, NanAndInfPropagateThroughEveryOpWithoutACrash) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (bool eager : {false, true}) {
    ModeGuard mode(eager ? Mode::eager : Mode::deferred);
    const Tensor x = from_vector({nan, inf, -inf, 1.f, 0.f, -0.f, 3e38f, -3e38f}, {2, 4}, cpu);
    const Tensor g = from_vector({1.f, nan, 1.f, inf}, {4}, cpu);
    std::vector<TensorAwait> results = {
        neg(x), defer::abs(x), defer::exp(x), defer::log(x), defer::sqrt(x), defer::tanh(x), sigmoid(x), relu(x), silu(x),
        gelu(x), gelu_tanh(x), x + x, x - x, x * x, x / x, maximum(x, x), minimum(x, x), x * 0.f, x / 0.f,
        sum(x, 1), mean(x, 0), defer::max(x, 1), softmax(x, 1), softmax(x, 0), layer_norm(x, g, g),
        matmul(x, transpose(x)), transpose(x), add(x, g)};
    const std::vector<Tensor> values = wait_all(results);
    ASSERT_EQ(values.size(), results.size());
    // Spot checks of IEEE behaviour: NaN in gives NaN out, inf - inf is NaN, exp(-inf) is 0.
    const auto at = [&](std::size_t r, std::size_t i) { return to_vector(values[r])[i]; };
    EXPECT_TRUE(std::isnan(at(0, 0)));
    EXPECT_EQ(at(2, 2), 0.f);
    EXPECT_EQ(at(2, 1), inf);
    EXPECT_TRUE(std::isnan(at(12, 1))) << "inf - inf";
    EXPECT_TRUE(std::isnan(at(3, 2))) << "log(-inf)";
    EXPECT_EQ(at(3, 4), -inf) << "log(0)";
    EXPECT_TRUE(std::isnan(at(19, 0))) << "a sum over a NaN";
    EXPECT_TRUE(std::isnan(at(22, 0))) << "softmax of a row with a NaN";
  }
}
