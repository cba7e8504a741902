// The CUDA kernels against the CPU kernels (the reference, which accumulates in double), on random
// non-zero inputs and outputs poisoned with NaN, so a missing write cannot pass. Shapes are chosen
// to reach every kernel variant: float4 and scalar element-wise paths, 32- and 64-bit broadcast
// indexing, warp / block / column reductions, single-GEMM and batched matmul, partial transpose
// tiles. Every case skips without a GPU.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include <defer/defer.hpp>

#include "cpu/ops.hpp"
#include "cuda/ops.hpp"
#include "runtime/cuda/cublas_handle.hpp"
#include "test_util.hpp"

namespace {

using defer::Device;
using defer::DType;
using defer::Tensor;
using defer::kernels::BinaryOp;
using defer::kernels::Broadcast;
using defer::kernels::ReduceOp;
using defer::kernels::UnaryOp;
using defer::testing::random_values;
using i64 = std::int64_t;
namespace gpu = defer::kernels::cuda;
namespace cpu = defer::kernels::cpu;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

const UnaryOp kUnaryOps[] = {UnaryOp::neg,  UnaryOp::abs,     UnaryOp::exp,  UnaryOp::log,
                             UnaryOp::sqrt, UnaryOp::tanh,    UnaryOp::sigmoid, UnaryOp::relu,
                             UnaryOp::silu, UnaryOp::gelu,    UnaryOp::gelu_tanh};
const BinaryOp kBinaryOps[] = {BinaryOp::add, BinaryOp::sub, BinaryOp::mul,
                               BinaryOp::div, BinaryOp::maximum, BinaryOp::minimum};
const ReduceOp kReduceOps[] = {ReduceOp::sum, ReduceOp::mean, ReduceOp::max};

Device gpu_device() { return Device::cuda(0); }
cudaStream_t gpu_stream() { return static_cast<cudaStream_t>(defer::current_stream(gpu_device()).native_handle()); }

// A device copy of host values (queued on the current stream, like the kernels).
Tensor upload(const std::vector<float>& v) {
  return defer::from_vector(v, {static_cast<i64>(v.size())}, gpu_device());
}
// n elements of NaN, for outputs.
Tensor poisoned(i64 n) { return defer::full({n}, kNaN, DType::f32, gpu_device()); }
const float* cptr(const Tensor& t) { return static_cast<const float*>(t.data_ptr()); }
float* mptr(Tensor& t) { return static_cast<float*>(t.data_ptr()); }
// Completes the work queued on the current stream, then copies to the host.
std::vector<float> download(const Tensor& t) { return defer::to_vector(t); }

// |got - want| <= atol + rtol |want|; NaN must meet NaN and an infinity the same infinity.
void expect_close(const std::string& what, const std::vector<float>& got, const std::vector<float>& want, double rtol,
                  double atol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], w = want[i];
    bool ok;
    if (std::isnan(w)) ok = std::isnan(g);
    else if (std::isinf(w)) ok = g == w;
    else ok = !std::isnan(g) && std::fabs(g - w) <= atol + rtol * std::fabs(w);
    if (!ok && bad++ == 0) first = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << want.size() << " differ; first at " << first << ": got "
                     << got[first] << ", want " << want[first];
}

std::vector<float> positive_values(std::size_t n, unsigned seed) { return random_values(n, seed, 0.01f, 8.f); }

// ---- element-wise ------------------------------------------------------------------------------

TEST(KernelsCudaUnary, AllOpsMatchCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  // 100003: float4 body plus a 3-element tail; 1: a lone tail element.
  for (i64 n : {i64{1}, i64{7}, i64{100003}}) {
    for (UnaryOp op : kUnaryOps) {
      const bool needs_positive = op == UnaryOp::log || op == UnaryOp::sqrt;
      const auto x = needs_positive ? positive_values(n, 11) : random_values(n, 11);
      std::vector<float> want(x.size());
      cpu::unary(op, x.data(), want.data(), n);
      const Tensor dx = upload(x);
      Tensor out = poisoned(n);
      gpu::unary(op, cptr(dx), mptr(out), n, gpu_stream());
      expect_close(std::string(defer::kernels::name(op)) + " n=" + std::to_string(n), download(out), want, 1e-5,
                   1e-7);
    }
  }
}

TEST(KernelsCudaUnary, MisalignedAndInPlace) {
  DEFER_SKIP_WITHOUT_GPU();
  const i64 n = 4099;
  for (UnaryOp op : {UnaryOp::exp, UnaryOp::gelu, UnaryOp::silu}) {
    const auto x = random_values(n + 1, 12);
    // Misaligned by one float: the scalar path.
    std::vector<float> want(n);
    cpu::unary(op, x.data() + 1, want.data(), n);
    const Tensor dx = upload(x);
    Tensor out = poisoned(n + 1);
    gpu::unary(op, cptr(dx) + 1, mptr(out) + 1, n, gpu_stream());
    auto got = download(out);
    EXPECT_TRUE(std::isnan(got[0])) << "wrote before its output";
    expect_close(std::string(defer::kernels::name(op)) + " misaligned", std::vector<float>(got.begin() + 1, got.end()),
                 want, 1e-5, 1e-7);
    // In place.
    Tensor inplace = upload(x);
    gpu::unary(op, mptr(inplace), mptr(inplace), n + 1, gpu_stream());
    std::vector<float> want_all(n + 1);
    cpu::unary(op, x.data(), want_all.data(), n + 1);
    expect_close(std::string(defer::kernels::name(op)) + " in place", download(inplace), want_all, 1e-5, 1e-7);
  }
}

TEST(KernelsCudaUnary, SpecialValuesAndTails) {
  DEFER_SKIP_WITHOUT_GPU();
  const std::vector<float> x = {kNaN, -kInf, kInf, -100.f, -30.f, -12.f, -8.f, -1e-30f, 1e-30f, 30.f, 100.f, 1e4f};
  const i64 n = static_cast<i64>(x.size());
  const Tensor dx = upload(x);
  for (UnaryOp op : kUnaryOps) {
    std::vector<float> want(x.size());
    cpu::unary(op, x.data(), want.data(), n);
    Tensor out = poisoned(n);
    gpu::unary(op, cptr(dx), mptr(out), n, gpu_stream());
    const auto got = download(out);
    // Denormal results (e.g. silu(-100)) carry few significant bits: an absolute floor of 1e-37.
    expect_close(std::string(defer::kernels::name(op)) + " special values", got, want, 1e-5, 1e-37);
  }
  // The documented edge cases, independent of the CPU kernels.
  Tensor out = poisoned(n);
  gpu::unary(UnaryOp::relu, cptr(dx), mptr(out), n, gpu_stream());
  auto got = download(out);
  EXPECT_TRUE(std::isnan(got[0])) << "relu(NaN)";
  EXPECT_EQ(got[1], 0.f) << "relu(-inf)";
  gpu::unary(UnaryOp::sigmoid, cptr(dx), mptr(out), n, gpu_stream());
  got = download(out);
  EXPECT_EQ(got[1], 0.f);
  EXPECT_EQ(got[2], 1.f);
  EXPECT_FALSE(std::isnan(got[3]));
  EXPECT_EQ(got[11], 1.f);
  gpu::unary(UnaryOp::gelu, cptr(dx), mptr(out), n, gpu_stream());
  got = download(out);
  EXPECT_EQ(got[2], kInf) << "gelu(inf)";
  EXPECT_EQ(got[11], 1e4f) << "gelu(1e4)";
  gpu::unary(UnaryOp::gelu_tanh, cptr(dx), mptr(out), n, gpu_stream());
  got = download(out);
  EXPECT_EQ(got[2], kInf) << "gelu_tanh(inf)";
  EXPECT_EQ(got[11], 1e4f) << "gelu_tanh(1e4)";
}

TEST(KernelsCudaUnary, GeluTailsAgainstDouble) {
  DEFER_SKIP_WITHOUT_GPU();
  // The negative tails, where a float formula would lose digits: relative 1e-5 against float64.
  std::vector<float> x;
  for (float v = -12.f; v < 4.f; v += 0.0137f) x.push_back(v);
  const i64 n = static_cast<i64>(x.size());
  const Tensor dx = upload(x);
  Tensor out = poisoned(n);
  gpu::unary(UnaryOp::gelu, cptr(dx), mptr(out), n, gpu_stream());
  auto got = download(out);
  std::vector<float> want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    want[i] = static_cast<float>(0.5 * v * std::erfc(-v / std::sqrt(2.0)));
  }
  expect_close("gelu tail", got, want, 1e-5, 1e-37);
  gpu::unary(UnaryOp::gelu_tanh, cptr(dx), mptr(out), n, gpu_stream());
  got = download(out);
  const double c = std::sqrt(2.0 / 3.14159265358979323846);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double v = x[i];
    want[i] = static_cast<float>(v / (1.0 + std::exp(-2.0 * c * (v + 0.044715 * v * v * v))));
  }
  expect_close("gelu_tanh tail", got, want, 1e-5, 1e-37);
}

TEST(KernelsCudaBinary, ScalarAllOpsMatchCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  for (i64 n : {i64{3}, i64{100003}}) {
    const auto x = random_values(n, 21);
    const Tensor dx = upload(x);
    for (BinaryOp op : kBinaryOps) {
      for (float s : {1.75f, -3.5f}) {
        std::vector<float> want(x.size());
        cpu::binary_scalar(op, x.data(), s, want.data(), n);
        Tensor out = poisoned(n);
        gpu::binary_scalar(op, cptr(dx), s, mptr(out), n, gpu_stream());
        expect_close(std::string(defer::kernels::name(op)) + " scalar", download(out), want, 1e-6, 0);
      }
    }
  }
}

TEST(KernelsCudaBinary, ContiguousAllOpsMatchCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  for (i64 n : {i64{1}, i64{100003}}) {
    auto a = random_values(n, 31);
    auto b = random_values(n, 32);
    if (n > 10) {  // NaN in either operand propagates through maximum and minimum
      a[5] = kNaN;
      b[9] = kNaN;
    }
    const Tensor da = upload(a), db = upload(b);
    for (BinaryOp op : kBinaryOps) {
      std::vector<float> want(a.size());
      cpu::binary(op, a.data(), b.data(), want.data(), n, nullptr);
      Tensor out = poisoned(n);
      gpu::binary(op, cptr(da), cptr(db), mptr(out), n, nullptr, gpu_stream());
      const auto got = download(out);
      expect_close(std::string(defer::kernels::name(op)) + " contiguous", got, want, 1e-6, 0);
      if (n > 10) {
        EXPECT_TRUE(std::isnan(got[5]) && std::isnan(got[9])) << defer::kernels::name(op);
      }
    }
  }
}

// A Broadcast for output `shape` and inputs of shapes `sa`, `sb` (right-aligned, NumPy rules).
Broadcast make_broadcast(const std::vector<i64>& shape, const std::vector<i64>& sa, const std::vector<i64>& sb) {
  Broadcast bc;
  bc.ndim = static_cast<int>(shape.size());
  for (int d = 0; d < bc.ndim; ++d) bc.shape[d] = shape[static_cast<std::size_t>(d)];
  const std::vector<i64>* in[2] = {&sa, &sb};
  for (int k = 0; k < 2; ++k) {
    const auto& s = *in[k];
    const int lead = bc.ndim - static_cast<int>(s.size());
    i64 stride = 1;
    for (int d = bc.ndim - 1; d >= 0; --d) {
      const i64 extent = d < lead ? 1 : s[static_cast<std::size_t>(d - lead)];
      bc.stride[k][d] = extent == 1 ? 0 : stride;
      stride *= extent;
    }
  }
  return bc;
}

i64 numel(const std::vector<i64>& s) {
  i64 n = 1;
  for (i64 e : s) n *= e;
  return n;
}

TEST(KernelsCudaBinary, BroadcastAllOpsMatchCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  struct Case {
    std::vector<i64> out, a, b;
  };
  const Case cases[] = {
      {{5, 7, 9}, {5, 1, 9}, {7, 1}},           // both broadcast, different dims
      {{37, 41}, {37, 41}, {1}},                 // tensor and a one-element tensor
      {{2, 3, 4, 5}, {2, 3, 4, 5}, {4, 5}},      // collapses to [6, 20]
      {{3, 4}, {3, 4}, {3, 4}},                  // a descriptor that is really contiguous
      {{1, 1, 1}, {1}, {1, 1}},                  // a single element
      {{64, 1, 300}, {64, 1, 1}, {300}},         // outer product
      {{2, 2, 2, 2, 2, 2, 2, 3}, {2, 1, 2, 1, 2, 1, 2, 3}, {1, 2, 1, 2, 1, 2, 1, 1}},  // kMaxDims
  };
  for (const auto& c : cases) {
    const Broadcast bc = make_broadcast(c.out, c.a, c.b);
    const i64 n = numel(c.out);
    const auto a = random_values(static_cast<std::size_t>(numel(c.a)), 41);
    const auto b = random_values(static_cast<std::size_t>(numel(c.b)), 42);
    const Tensor da = upload(a), db = upload(b);
    for (BinaryOp op : kBinaryOps) {
      std::vector<float> want(static_cast<std::size_t>(n));
      cpu::binary(op, a.data(), b.data(), want.data(), n, &bc);
      Tensor out = poisoned(n);
      gpu::binary(op, cptr(da), cptr(db), mptr(out), n, &bc, gpu_stream());
      expect_close(std::string(defer::kernels::name(op)) + " broadcast " + defer::shape_str(c.out), download(out), want,
                   1e-6, 0);
    }
  }
}

TEST(KernelsCudaBinary, NegativeStrideTakesThe64BitPath) {
  DEFER_SKIP_WITHOUT_GPU();
  // out[i, j] = a[i, n - 1 - j] + b[j]: a negative stride, which only the 64-bit kernel accepts.
  const i64 rows = 3, cols = 1000;
  const auto a = random_values(static_cast<std::size_t>(rows * cols), 51);
  const auto b = random_values(static_cast<std::size_t>(cols), 52);
  Broadcast bc;
  bc.ndim = 2;
  bc.shape[0] = rows;
  bc.shape[1] = cols;
  bc.stride[0][0] = cols;
  bc.stride[0][1] = -1;
  bc.stride[1][0] = 0;
  bc.stride[1][1] = 1;
  std::vector<float> want(static_cast<std::size_t>(rows * cols));
  for (i64 i = 0; i < rows; ++i)
    for (i64 j = 0; j < cols; ++j)
      want[static_cast<std::size_t>(i * cols + j)] =
          a[static_cast<std::size_t>(i * cols + cols - 1 - j)] + b[static_cast<std::size_t>(j)];
  const Tensor da = upload(a), db = upload(b);
  Tensor out = poisoned(rows * cols);
  gpu::binary(BinaryOp::add, cptr(da) + (cols - 1), cptr(db), mptr(out), rows * cols, &bc, gpu_stream());
  expect_close("negative stride", download(out), want, 0, 0);
}

// ---- reductions --------------------------------------------------------------------------------

struct ReduceShape {
  i64 outer, n, inner;
};

std::string str(const ReduceShape& s) { return defer::shape_str({s.outer, s.n, s.inner}); }

// Reaches the warp rows (n <= 1024), block rows, block rows over strided columns (few wide tiles
// with a long n), column tiles (inner >= 32), a partial column tile, n == 1 and long rows.
const ReduceShape kReduceShapes[] = {{7, 1000, 1}, {3, 5000, 1},  {4, 3, 5},   {2, 300, 64}, {1, 5000, 40},
                                     {3, 7, 1000}, {1, 200000, 1}, {2, 1, 33}, {300, 2, 1},  {5, 70, 3}};

TEST(KernelsCudaReduce, AllOpsMatchCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  for (const auto& s : kReduceShapes) {
    const auto x = random_values(static_cast<std::size_t>(s.outer * s.n * s.inner), 61);
    const Tensor dx = upload(x);
    const i64 outputs = s.outer * s.inner;
    for (ReduceOp op : kReduceOps) {
      std::vector<float> want(static_cast<std::size_t>(outputs));
      cpu::reduce(op, x.data(), want.data(), s.outer, s.n, s.inner);
      Tensor out = poisoned(outputs);
      gpu::reduce(op, cptr(dx), mptr(out), s.outer, s.n, s.inner, gpu_stream());
      // Both accumulate in double: they differ by the final rounding only (plus slack for sums
      // that cancel to near zero).
      expect_close(std::string(defer::kernels::name(op)) + " " + str(s), download(out), want, 1e-5, 1e-5);
    }
  }
}

TEST(KernelsCudaReduce, EmptyAxisAndNaN) {
  DEFER_SKIP_WITHOUT_GPU();
  // n == 0: sum is 0, mean is NaN; the outputs are still written.
  for (const ReduceShape s : {ReduceShape{3, 0, 4}, ReduceShape{2, 0, 40}, ReduceShape{5, 0, 1}}) {
    const i64 outputs = s.outer * s.inner;
    Tensor out = poisoned(outputs);
    gpu::reduce(ReduceOp::sum, nullptr, mptr(out), s.outer, s.n, s.inner, gpu_stream());
    for (float v : download(out)) EXPECT_EQ(v, 0.f) << "sum over n == 0 " << str(s);
    Tensor mean = defer::full({outputs}, 7.f, DType::f32, gpu_device());
    gpu::reduce(ReduceOp::mean, nullptr, mptr(mean), s.outer, s.n, s.inner, gpu_stream());
    for (float v : download(mean)) EXPECT_TRUE(std::isnan(v)) << "mean over n == 0 " << str(s);
  }
  // max propagates NaN; sum too.
  for (const ReduceShape s : {ReduceShape{4, 3000, 1}, ReduceShape{4, 100, 1}, ReduceShape{2, 50, 64}}) {
    auto x = random_values(static_cast<std::size_t>(s.outer * s.n * s.inner), 62);
    x[static_cast<std::size_t>((1 * s.n + s.n / 2) * s.inner)] = kNaN;  // in output (1, 0)
    const Tensor dx = upload(x);
    for (ReduceOp op : kReduceOps) {
      Tensor out = poisoned(s.outer * s.inner);
      gpu::reduce(op, cptr(dx), mptr(out), s.outer, s.n, s.inner, gpu_stream());
      const auto got = download(out);
      for (i64 o = 0; o < s.outer; ++o)
        for (i64 i = 0; i < s.inner; ++i)
          EXPECT_EQ(std::isnan(got[static_cast<std::size_t>(o * s.inner + i)]), o == 1 && i == 0)
              << defer::kernels::name(op) << " " << str(s) << " at (" << o << ", " << i << ")";
    }
  }
}

TEST(KernelsCudaReduce, LongSumWithOffsetIsAccurate) {
  DEFER_SKIP_WITHOUT_GPU();
  // 2^20 values near 1000: a float accumulator would be off by far more than 1e-5.
  const i64 n = i64{1} << 20;
  auto x = random_values(static_cast<std::size_t>(n), 63, 999.f, 1001.f);
  double exact = 0;
  for (float v : x) exact += v;
  const Tensor dx = upload(x);
  Tensor out = poisoned(1);
  gpu::reduce(ReduceOp::sum, cptr(dx), mptr(out), 1, n, 1, gpu_stream());
  EXPECT_NEAR(download(out)[0], exact, 1e-6 * exact);
}

TEST(KernelsCudaSoftmax, MatchesCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  for (const auto& s : {ReduceShape{5, 1000, 1}, ReduceShape{2, 3000, 1}, ReduceShape{1, 100000, 1},
                        ReduceShape{3, 50, 40}, ReduceShape{2, 7, 3}, ReduceShape{1, 5000, 40},
                        ReduceShape{2, 20, 100}, ReduceShape{1, 1, 1}, ReduceShape{300, 2, 1}}) {
    const i64 total = s.outer * s.n * s.inner;
    const auto x = random_values(static_cast<std::size_t>(total), 71, -10.f, 10.f);
    std::vector<float> want(x.size());
    cpu::softmax(x.data(), want.data(), s.outer, s.n, s.inner);
    const Tensor dx = upload(x);
    Tensor out = poisoned(total);
    gpu::softmax(cptr(dx), mptr(out), s.outer, s.n, s.inner, gpu_stream());
    const auto got = download(out);
    expect_close("softmax " + str(s), got, want, 1e-4, 1e-12);
    // In place gives the same.
    Tensor inplace = upload(x);
    gpu::softmax(cptr(inplace), mptr(inplace), s.outer, s.n, s.inner, gpu_stream());
    expect_close("softmax in place " + str(s), download(inplace), got, 0, 0);
  }
}

TEST(KernelsCudaSoftmax, LargeValuesAndNaN) {
  DEFER_SKIP_WITHOUT_GPU();
  // Shifted by the max: no overflow for large logits; a NaN poisons only its own row.
  const std::vector<float> x = {1000.f, 1001.f, 999.f, 1.f, 2.f, kNaN, -1000.f, -1001.f, -999.f};
  const Tensor dx = upload(x);
  Tensor out = poisoned(9);
  gpu::softmax(cptr(dx), mptr(out), 3, 3, 1, gpu_stream());
  const auto got = download(out);
  std::vector<float> want(9);
  cpu::softmax(x.data(), want.data(), 3, 3, 1);
  expect_close("softmax large values", got, want, 1e-5, 1e-12);
  for (int j = 0; j < 3; ++j) EXPECT_TRUE(std::isnan(got[static_cast<std::size_t>(3 + j)]));
}

TEST(KernelsCudaLayerNorm, MatchesCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  struct Case {
    i64 rows, cols;
    float lo, hi;
  };
  // warp rows (<= 1024), block rows, a long row, and data far from zero (the mean must be exact).
  for (const Case c : {Case{16, 768, -4.f, 4.f}, Case{3, 1024, -4.f, 4.f}, Case{2, 1025, -4.f, 4.f},
                       Case{2, 100000, -4.f, 4.f}, Case{4, 7, -4.f, 4.f}, Case{5, 3000, 999.f, 1001.f},
                       Case{300, 1, -1.f, 1.f}}) {
    const auto x = random_values(static_cast<std::size_t>(c.rows * c.cols), 81, c.lo, c.hi);
    const auto gamma = random_values(static_cast<std::size_t>(c.cols), 82, 0.5f, 2.f);
    const auto beta = random_values(static_cast<std::size_t>(c.cols), 83);
    std::vector<float> want(x.size());
    cpu::layer_norm(x.data(), gamma.data(), beta.data(), want.data(), c.rows, c.cols, 1e-5f);
    const Tensor dx = upload(x), dg = upload(gamma), db = upload(beta);
    Tensor out = poisoned(c.rows * c.cols);
    gpu::layer_norm(cptr(dx), cptr(dg), cptr(db), mptr(out), c.rows, c.cols, 1e-5f, gpu_stream());
    expect_close("layer_norm " + defer::shape_str({c.rows, c.cols}), download(out), want, 1e-4, 1e-4);
  }
}

// ---- matmul and transpose ----------------------------------------------------------------------

cublasHandle_t handle_for_current_stream() {
  return defer::detail::cublas_handle(defer::current_stream(gpu_device()).impl());
}

TEST(KernelsCudaMatmul, MatchesCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  struct Case {
    i64 batch, m, k, n;
    bool a_shared, b_shared;
  };
  const Case cases[] = {
      {1, 64, 32, 48, false, false}, {3, 17, 33, 19, false, false}, {4, 10, 20, 30, false, true},  // one GEMM
      {4, 10, 20, 30, true, false},  {2, 3, 4, 5, true, true},       {1, 1, 1000, 1, false, false},
      {2, 129, 257, 65, false, false}, {1, 1, 1, 1, false, false},
  };
  for (const auto& c : cases) {
    const i64 a_stride = c.a_shared ? 0 : c.m * c.k;
    const i64 b_stride = c.b_shared ? 0 : c.k * c.n;
    const auto a = random_values(static_cast<std::size_t>((c.a_shared ? 1 : c.batch) * c.m * c.k), 91, -1.f, 1.f);
    const auto b = random_values(static_cast<std::size_t>((c.b_shared ? 1 : c.batch) * c.k * c.n), 92, -1.f, 1.f);
    std::vector<float> want(static_cast<std::size_t>(c.batch * c.m * c.n));
    cpu::matmul(a.data(), b.data(), want.data(), c.batch, c.m, c.k, c.n, a_stride, b_stride);
    const Tensor da = upload(a), db = upload(b);
    Tensor out = poisoned(c.batch * c.m * c.n);
    gpu::matmul(handle_for_current_stream(), cptr(da), cptr(db), mptr(out), c.batch, c.m, c.k, c.n, a_stride,
                b_stride);
    // Both accumulate in float (in different orders); the terms are at most 1 in magnitude.
    expect_close("matmul [batch, m, k, n] " + defer::shape_str({c.batch, c.m, c.k, c.n}), download(out), want, 1e-4,
                 1e-5 * std::sqrt(static_cast<double>(c.k)));
  }
}

TEST(KernelsCudaMatmul, EmptyDimensions) {
  DEFER_SKIP_WITHOUT_GPU();
  // k == 0: an empty sum, all zeros (the output was poisoned).
  Tensor out = poisoned(2 * 3 * 4);
  gpu::matmul(handle_for_current_stream(), nullptr, nullptr, mptr(out), 2, 3, 0, 4, 0, 0);
  for (float v : download(out)) EXPECT_EQ(v, 0.f);
  // m, n or batch == 0: nothing to write, nothing launched.
  gpu::matmul(handle_for_current_stream(), nullptr, nullptr, nullptr, 2, 0, 5, 4, 0, 0);
  gpu::matmul(handle_for_current_stream(), nullptr, nullptr, nullptr, 2, 3, 5, 0, 0, 0);
  gpu::matmul(handle_for_current_stream(), nullptr, nullptr, nullptr, 0, 3, 5, 4, 0, 0);
  defer::current_stream(gpu_device()).synchronize();
}

TEST(KernelsCudaMatmul, HandleFollowsTheStream) {
  DEFER_SKIP_WITHOUT_GPU();
  auto& first = defer::current_stream(gpu_device()).impl();
  const cublasHandle_t h = defer::detail::cublas_handle(first);
  EXPECT_EQ(defer::detail::cublas_handle(first), h) << "one handle per thread and device";
  cudaStream_t bound = nullptr;
  ASSERT_EQ(cublasGetStream(h, &bound), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(bound, static_cast<cudaStream_t>(first.native_handle()));
  cublasPointerMode_t mode{};
  ASSERT_EQ(cublasGetPointerMode(h, &mode), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(mode, CUBLAS_POINTER_MODE_HOST);
  cublasMath_t math{};
  ASSERT_EQ(cublasGetMathMode(h, &math), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(math & 0xf, CUBLAS_DEFAULT_MATH) << "no TF32";

  // Another stream: the same handle, rebound, and a product computed there is right.
  const defer::Stream other = defer::Stream::create(gpu_device());
  {
    defer::StreamGuard guard(other);
    EXPECT_EQ(defer::detail::cublas_handle(other.impl()), h);
    ASSERT_EQ(cublasGetStream(h, &bound), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(bound, static_cast<cudaStream_t>(other.native_handle()));
    const auto a = random_values(64 * 64, 93, -1.f, 1.f);
    const Tensor da = upload(a);
    Tensor out = poisoned(64 * 64);
    gpu::matmul(defer::detail::cublas_handle(other.impl()), cptr(da), cptr(da), mptr(out), 1, 64, 64, 64, 0, 0);
    std::vector<float> want(a.size());
    cpu::matmul(a.data(), a.data(), want.data(), 1, 64, 64, 64, 0, 0);
    expect_close("matmul on another stream", download(out), want, 1e-4, 1e-4);
  }
  // And back.
  EXPECT_EQ(defer::detail::cublas_handle(first), h);
  ASSERT_EQ(cublasGetStream(h, &bound), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(bound, static_cast<cudaStream_t>(first.native_handle()));
}

TEST(KernelsCudaTranspose, MatchesCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  struct Case {
    i64 batch, rows, cols;
  };
  for (const Case c : {Case{1, 1, 1}, Case{3, 33, 65}, Case{2, 100, 37}, Case{1, 2049, 3}, Case{1, 64, 64},
                       Case{5, 1, 300}, Case{70000, 2, 3}}) {
    const i64 total = c.batch * c.rows * c.cols;
    const auto x = random_values(static_cast<std::size_t>(total), 101);
    std::vector<float> want(x.size());
    cpu::transpose(x.data(), want.data(), c.batch, c.rows, c.cols);
    const Tensor dx = upload(x);
    Tensor out = poisoned(total);
    gpu::transpose(cptr(dx), mptr(out), c.batch, c.rows, c.cols, gpu_stream());
    expect_close("transpose " + defer::shape_str({c.batch, c.rows, c.cols}), download(out), want, 0, 0);
  }
}

TEST(KernelsCuda, ZeroSizedCallsLaunchNothing) {
  DEFER_SKIP_WITHOUT_GPU();
  const cudaStream_t s = gpu_stream();
  gpu::unary(UnaryOp::exp, nullptr, nullptr, 0, s);
  gpu::binary_scalar(BinaryOp::add, nullptr, 1.f, nullptr, 0, s);
  gpu::binary(BinaryOp::add, nullptr, nullptr, nullptr, 0, nullptr, s);
  gpu::reduce(ReduceOp::sum, nullptr, nullptr, 0, 5, 3, s);
  gpu::softmax(nullptr, nullptr, 2, 0, 3, s);
  gpu::layer_norm(nullptr, nullptr, nullptr, nullptr, 0, 8, 1e-5f, s);
  gpu::transpose(nullptr, nullptr, 2, 0, 3, s);
  defer::current_stream(gpu_device()).synchronize();
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

}  // namespace
