// The CUDA kernels and the CUDA backend against the CPU (the reference, which accumulates in double)
// and a float64 reference (tests/reference.hpp), for f32, f16 and bf16 data (and every dtype where
// an op takes it), on random non-zero inputs and outputs poisoned with NaN (or bytes no result has),
// so a missing write cannot pass. Element-wise ops run as fused programs on CUDA, alone or fused:
// every op of the op table is called through its public function on Device::cuda. Shapes reach
// every kernel variant: vector and scalar element-wise paths, 32- and 64-bit broadcast indexing,
// warp / block / column reductions, single-GEMM and batched matmul with transposed, padded and
// broadcast operands. Every case skips without a GPU.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <defer/defer.hpp>
#include <defer/options.hpp>

#include "cpu/fill.hpp"
#include "cpu/ops.hpp"
#include "cuda/launch.hpp"
#include "cuda/ops.hpp"
#include "fusion/fused_program.hpp"
#include "cuda/fused/cuda_fused_launch.hpp"
#include "op_table.hpp"
#include "reference.hpp"
#include "support/op_call.hpp"
#include "runtime/cuda/cublas_handle.hpp"
#include "support/dtype_bytes.hpp"
#include "support/matmul_cases.hpp"
#include "support/one_op.hpp"
#include "test_util.hpp"

namespace {

using defer::Device;
using defer::DType;
using defer::Shape;
using defer::Tensor;
using defer::TensorAwait;
using defer::kernels::ElementwiseOp;
using defer::kernels::FusedLayout;
using defer::kernels::FusedProgram;
using defer::kernels::ReduceOp;
using defer::testing::all_dtypes;
using defer::testing::decode;
using defer::testing::encode;
using defer::testing::floating_dtypes;
using defer::testing::kBinaryOps;
using defer::testing::kScalarOps;
using defer::testing::kUnaryOps;
using defer::testing::random_values;
using defer::testing::round_to;
using i64 = std::int64_t;
namespace gpu = defer::kernels::cuda;
namespace cpu = defer::kernels::cpu;
namespace R = defer::testing::ref;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Every row of the op table; the reductions of the reduce table whose result has the data's dtype.
std::vector<ElementwiseOp> all_ops() {
  std::vector<ElementwiseOp> v;
  for (unsigned i = 0; i < defer::kernels::kElementwiseOpCount; ++i) v.push_back(static_cast<ElementwiseOp>(i));
  return v;
}
std::vector<ReduceOp> value_reduce_ops() {
  std::vector<ReduceOp> v;
  for (unsigned i = 0; i < defer::kernels::kReduceOpCount; ++i)
    if (defer::kernels::kReduceOps[i].result == defer::kernels::OpResult::same) v.push_back(static_cast<ReduceOp>(i));
  return v;
}

std::string dname(DType t) { return defer::dtype_name(t); }

Device gpu_device() { return Device::cuda(0); }
cudaStream_t gpu_stream() { return static_cast<cudaStream_t>(defer::current_stream(gpu_device()).native_handle()); }

// A device tensor of dtype t holding `values` (each exact in t), copied on the current stream.
Tensor upload(DType t, const std::vector<float>& values) {
  Tensor out = defer::empty({static_cast<i64>(values.size())}, t, gpu_device());
  const std::vector<std::byte> bytes = encode(t, values);
  if (!bytes.empty()) {
    EXPECT_EQ(cudaMemcpyAsync(out.data_ptr(), bytes.data(), bytes.size(), cudaMemcpyHostToDevice, gpu_stream()),
              cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(gpu_stream()), cudaSuccess);  // `bytes` dies here
  }
  return out;
}
Tensor upload(const std::vector<float>& values) { return upload(DType::f32, values); }
// n elements of NaN (floating dtypes) or -7 (i32, i64), for outputs.
Tensor poisoned(i64 n, DType t = DType::f32) {
  return defer::full({n}, defer::is_floating(t) ? kNaN : -7.f, t, gpu_device());
}
const void* cptr(const Tensor& t) { return t.data_ptr(); }
void* mptr(Tensor& t) { return t.data_ptr(); }
const std::byte* bptr(const Tensor& t) { return static_cast<const std::byte*>(t.data_ptr()); }
std::byte* bptr(Tensor& t) { return static_cast<std::byte*>(t.data_ptr()); }
// Completes the work queued on the current stream, then copies to the host (as f32).
std::vector<float> download(const Tensor& t) { return defer::to_vector(t); }
// The raw bytes of a device tensor's storage, after the work queued on the current stream.
std::vector<std::byte> download_bytes(const Tensor& t) {
  defer::current_stream(gpu_device()).synchronize();
  std::vector<std::byte> bytes(t.nbytes());
  if (!bytes.empty()) {
    EXPECT_EQ(cudaMemcpy(bytes.data(), t.data_ptr(), bytes.size(), cudaMemcpyDeviceToHost), cudaSuccess);
  }
  return bytes;
}

// |got - want| <= atol + rtol |want|; NaN must meet NaN and an infinity the same infinity.
template <class T>
void expect_close(const std::string& what, const std::vector<T>& got, const std::vector<T>& want, double rtol,
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

// The relative tolerance of a result of dtype t against the CPU or float64 (docs/api.md: 1e-5 for f32,
// 1e-2 for f16 and bf16), or the f32 tolerance a test had before it took halves.
double rtol_of(DType t, double f32 = 1e-5) { return t == DType::f32 ? f32 : 1e-2; }

// values rounded to dtype t (the inputs of a test on t, exact in t).
std::vector<float> rounded(DType t, std::vector<float> values) {
  for (float& v : values) v = round_to(t, v);
  return values;
}

// The CPU's answer for a result of dtype t computed in f32: rounded once to t.
std::vector<float> as_dtype(DType t, std::vector<float> values) { return rounded(t, std::move(values)); }

// ---- element-wise: every op of the table, through its public function ----------------------------

// The op's PUBLIC function (include/defer/ops.hpp), generated from the op table: `api` names it,
// `tensors` and `scalars` pick the overload, a cast takes the target dtype.
TensorAwait call(ElementwiseOp op, const std::vector<TensorAwait>& t, const std::vector<float>& s, DType cast_to) {
  return defer::testing::call_public(op, t, s, cast_to);
}

// Element values of t as double, exactly (i64 up to 2^53).
R::Vec read(const Tensor& t) {
  auto widen = [](const auto& v) { return R::Vec(v.begin(), v.end()); };
  switch (t.dtype()) {
    case DType::f32:
    case DType::f16:
    case DType::bf16: return widen(defer::to_vector(t));
    case DType::i32: return widen(defer::to_host<std::int32_t>(t));
    case DType::i64: return widen(defer::to_host<std::int64_t>(t));
    case DType::boolean: return widen(defer::to_host<std::uint8_t>(t));
  }
  return {};
}

// What a cast of v to `to` gives: integers truncate toward zero (NaN 0, saturating), booleans are
// v != 0 (NaN included); floating targets keep v (compared within their tolerance).
double cast_ref(double v, DType to) {
  switch (to) {
    case DType::f32:
    case DType::f16:
    case DType::bf16: return v;
    case DType::i32: return std::isnan(v) ? 0 : std::clamp(std::trunc(v), -2147483648.0, 2147483647.0);
    case DType::i64: return std::isnan(v) ? 0 : std::trunc(v);
    case DType::boolean: return v != 0 ? 1 : 0;
  }
  return std::nan("");
}

// got against want, per the result's dtype: floats within rtol |want| + atol (NaN meets NaN, an
// infinity the same infinity), integers and booleans exactly.
void expect_values(const R::Vec& got, const R::Vec& want, DType t, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double rtol = rtol_of(t), atol = t == DType::f16 ? 1e-7 : defer::is_floating(t) ? 1e-30 : 0;
  std::size_t bad = 0, first = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double g = got[i], w = want[i];
    const bool ok = std::isnan(w)   ? std::isnan(g)
                    : std::isinf(w) ? g == w
                                    : std::fabs(g - w) <= rtol * std::fabs(w) + atol;
    if (!ok && bad++ == 0) first = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << want.size() << " differ; first at " << first << ": got "
                     << got[first] << ", want " << want[first];
}

// Row-major multi-index iteration over `out`, reading each operand of shape shapes[k] broadcast.
R::Vec broadcast_eval(const std::vector<R::Vec>& operands, const std::vector<Shape>& shapes, const Shape& out,
                      ElementwiseOp op, const std::vector<float>& s) {
  R::Vec y(static_cast<std::size_t>(R::numel(out)));
  Shape idx(out.size(), 0);
  for (std::size_t e = 0; e < y.size(); ++e) {
    double v[3] = {0, 0, 0};
    for (std::size_t k = 0; k < operands.size(); ++k)
      v[k] = operands[k][static_cast<std::size_t>(R::broadcast_offset(shapes[k], out, idx))];
    y[e] = R::elementwise(op, v[0], v[1], v[2], s.empty() ? 0.0 : s[0], s.size() > 1 ? s[1] : 0.0);
    for (std::size_t d = out.size(); d-- > 0;) {
      if (++idx[d] < out[d]) break;
      idx[d] = 0;
    }
  }
  return y;
}

// One op of the table on `data` operands of dtype t (and boolean conditions) of the given shapes,
// on CUDA and on the CPU: both against float64 and against each other.
void check_op(ElementwiseOp op, DType t, const std::vector<Shape>& shapes, DType cast_to, unsigned seed,
              bool with_nan) {
  const defer::kernels::ElementwiseInfo& row = defer::kernels::info(op);
  const std::string what = std::string(row.id) + " on " + dname(t) + (op == ElementwiseOp::to ? " to " + dname(cast_to) : "") +
                           " " + defer::shape_str(shapes[0]) + (row.tensors > 1 ? " with " + defer::shape_str(shapes[1]) : "");
  SCOPED_TRACE(what);
  // Scalars 1.5 and 2.5 (exact in every floating dtype): a clamp range, an exponent, a fill value.
  std::vector<float> s = {1.5f, 2.5f};
  s.resize(static_cast<std::size_t>(row.scalars));
  std::vector<TensorAwait> on_gpu, on_cpu;
  std::vector<R::Vec> values;
  for (int k = 0; k < row.tensors; ++k) {
    const Shape& shape = shapes[static_cast<std::size_t>(k)];
    const auto n = static_cast<std::size_t>(R::numel(shape));
    Tensor g, c;
    if (defer::kernels::condition_operand(op) == k) {  // a boolean condition or mask
      std::vector<std::uint8_t> bits(n);
      for (std::size_t i = 0; i < n; ++i) bits[i] = static_cast<std::uint8_t>((i * 7 + seed) % 3 == 0);
      g = defer::from_host(bits, shape, gpu_device());
      c = defer::from_host(bits, shape, Device::cpu());
    } else {
      // Values of either sign, magnitude in [0.1, 4): never 0 (a divisor), every 5th one 1.5 (a
      // tie with the scalar), every 3rd of operand 1 equal to operand 0's (ties of comparisons).
      std::vector<float> v = random_values(n, seed + static_cast<unsigned>(k), 0.1f, 4.f);
      for (std::size_t i = 0; i < n; ++i) {
        if (i % 2) v[i] = -v[i];
        if (i % 5 == 0) v[i] = 1.5f;
      }
      if (k == 1 && shapes[1] == shapes[0] && defer::kernels::condition_operand(op) != 0)
        for (std::size_t i = 0; i < n; i += 3) v[i] = static_cast<float>(values[0][i]);
      if (with_nan && n > 10) v[3 + static_cast<std::size_t>(k)] = kNaN;
      g = defer::wait(defer::to(defer::from_vector(v, shape, gpu_device()), t));
      c = defer::wait(defer::to(defer::from_vector(v, shape, Device::cpu()), t));
    }
    values.push_back(read(c));
    on_gpu.emplace_back(g);
    on_cpu.emplace_back(c);
  }
  const Tensor got_gpu = defer::wait(call(op, on_gpu, s, cast_to));
  const Tensor got_cpu = defer::wait(call(op, on_cpu, s, cast_to));
  ASSERT_EQ(got_gpu.device(), gpu_device());
  ASSERT_EQ(got_gpu.dtype(), got_cpu.dtype());
  ASSERT_EQ(got_gpu.shape(), got_cpu.shape());
  const DType result = got_gpu.dtype();
  const DType want_dtype = row.result == defer::kernels::OpResult::boolean ? DType::boolean
                           : row.result == defer::kernels::OpResult::cast  ? cast_to
                                                                           : t;
  ASSERT_EQ(result, want_dtype);
  // float64, from the very input values both devices read
  Shape out = shapes[0];
  for (int k = 1; k < row.tensors; ++k) out = R::broadcast_shape(out, shapes[static_cast<std::size_t>(k)]);
  std::vector<Shape> used(shapes.begin(), shapes.begin() + row.tensors);
  std::vector<float> ref_scalars = s;
  for (float& x : ref_scalars) x = round_to(t, x);  // a scalar takes the tensor's dtype
  R::Vec want = broadcast_eval(values, used, out, op, ref_scalars);
  if (op == ElementwiseOp::to)
    for (double& w : want) w = cast_ref(w, cast_to);
  const R::Vec g = read(got_gpu), c = read(got_cpu);
  expect_values(g, want, result, "cuda against float64");
  expect_values(c, want, result, "cpu against float64");
  expect_values(g, c, result, "cuda against cpu");
}

// The operand shapes of a broadcasting case, one per operand (ops of fewer operands take the first).
struct ShapeCase {
  std::vector<Shape> shapes;
  bool with_nan;
};

TEST(KernelsCudaElementwise, EveryOpOfTheTableMatchesTheCpuAndFloat64) {
  DEFER_SKIP_WITHOUT_GPU();
  const ShapeCase contiguous[] = {
      {{{1}, {1}, {1}}, false},                      // a lone tail element
      {{{7}, {7}, {7}}, false},                      // one vector and a tail of 3
      {{{100003}, {100003}, {100003}}, true},         // vectors and a tail of 3, NaN in operands
  };
  const ShapeCase broadcast[] = {
      {{{5, 7, 9}, {5, 1, 9}, {7, 1}}, false},       // broadcast on different dims: strided reads
      {{{37, 41}, {1}, {41}}, false},               // a one-element operand: a uniform read
      {{{2, 2, 2, 2, 2, 2, 2, 3}, {2, 1, 2, 1, 2, 1, 2, 3}, {1, 2, 1, 2, 1, 2, 1, 1}}, false},  // kMaxDims
  };
  unsigned seed = 1;
  for (const ElementwiseOp op : all_ops()) {
    const defer::kernels::ElementwiseInfo& row = defer::kernels::info(op);
    const std::vector<DType> targets = op == ElementwiseOp::to ? all_dtypes() : std::vector<DType>{DType::f32};
    for (const DType t : floating_dtypes())
      for (const DType target : targets) {
        for (const ShapeCase& c : contiguous) check_op(op, t, c.shapes, target, ++seed, c.with_nan);
        if (row.tensors > 1)
          for (const ShapeCase& c : broadcast) check_op(op, t, c.shapes, target, ++seed, c.with_nan);
        if (HasFailure()) return;  // one op's report, not hundreds
      }
  }
}

TEST(KernelsCudaElementwise, SpecialValuesMatchTheCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  const std::vector<float> x = {kNaN, -kInf, kInf, -100.f, -30.f, -12.f, -8.f, -1e-30f, 1e-30f, 30.f, 100.f, 1e4f};
  const Shape shape = {static_cast<i64>(x.size())};
  const Tensor dx = defer::from_vector(x, shape, gpu_device());
  const Tensor hx = defer::from_vector(x, shape, Device::cpu());
  for (const ElementwiseOp op : kUnaryOps) {
    const auto got = download(defer::wait(call(op, {dx}, {}, DType::f32)));
    const auto want = download(defer::wait(call(op, {hx}, {}, DType::f32)));
    // Denormal results (e.g. silu(-100)) carry few significant bits: an absolute floor of 1e-37.
    expect_close(std::string(defer::kernels::info(op).id) + " special values", got, want, 1e-5, 1e-37);
  }
  // The documented edge cases, independent of the CPU.
  auto on_gpu = [&](TensorAwait r) { return download(defer::wait(r)); };
  auto got = on_gpu(defer::relu(dx));
  EXPECT_TRUE(std::isnan(got[0])) << "relu(NaN)";
  EXPECT_EQ(got[1], 0.f) << "relu(-inf)";
  got = on_gpu(defer::sigmoid(dx));
  EXPECT_EQ(got[1], 0.f);
  EXPECT_EQ(got[2], 1.f);
  EXPECT_FALSE(std::isnan(got[3]));
  EXPECT_EQ(got[11], 1.f);
  got = on_gpu(defer::gelu(dx));
  EXPECT_EQ(got[2], kInf) << "gelu(inf)";
  EXPECT_EQ(got[11], 1e4f) << "gelu(1e4)";
  got = on_gpu(defer::gelu_tanh(dx));
  EXPECT_EQ(got[2], kInf) << "gelu_tanh(inf)";
  EXPECT_EQ(got[11], 1e4f) << "gelu_tanh(1e4)";
  got = on_gpu(defer::softplus(dx));
  EXPECT_EQ(got[2], kInf) << "softplus(inf)";
  EXPECT_EQ(got[10], 100.f) << "softplus(100)";
  EXPECT_EQ(got[1], 0.f) << "softplus(-inf)";
}

TEST(KernelsCudaElementwise, GeluTailsAgainstDouble) {
  DEFER_SKIP_WITHOUT_GPU();
  // The negative tails, where a float formula would lose digits: relative 1e-5 against float64.
  std::vector<float> x;
  for (float v = -12.f; v < 4.f; v += 0.0137f) x.push_back(v);
  const Tensor dx = defer::from_vector(x, {static_cast<i64>(x.size())}, gpu_device());
  for (const ElementwiseOp op : {ElementwiseOp::gelu, ElementwiseOp::gelu_tanh}) {
    const auto got = download(defer::wait(call(op, {dx}, {}, DType::f32)));
    std::vector<float> want(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) want[i] = static_cast<float>(R::elementwise(op, x[i]));
    expect_close(std::string(defer::kernels::info(op).id) + " tail", got, want, 1e-5, 1e-37);
  }
}

// A one-op fused program (how the runtime runs an op alone) over n elements.
FusedProgram one_op(ElementwiseOp op) {
  const defer::kernels::ElementwiseInfo& row = defer::kernels::info(op);
  FusedProgram p;
  for (int k = 0; k < row.tensors; ++k) {
    p.code.push_back(defer::testing::load(k));
    p.input_dtypes.push_back(DType::f32);
  }
  p.code.push_back(defer::testing::op_instr(op, 0, row.tensors > 1 ? 1 : 0, row.tensors > 2 ? 2 : 0, 0));
  p.outputs = {static_cast<std::uint16_t>(row.tensors)};
  p.output_dtypes = {DType::f32};
  p.num_inputs = static_cast<std::uint16_t>(row.tensors);
  p.num_scalars = static_cast<std::uint16_t>(row.scalars);
  return p;
}
FusedLayout flat_layout(i64 n, int inputs) {
  FusedLayout l;
  l.ndim = 1;
  l.shape[0] = n;
  for (int i = 0; i < inputs; ++i) l.strides.push_back({1});
  return l;
}

TEST(KernelsCudaElementwise, MisalignedAndInPlace) {
  DEFER_SKIP_WITHOUT_GPU();
  const i64 n = 4099;
  const auto x = random_values(static_cast<std::size_t>(n + 1), 12);
  for (const ElementwiseOp op : kUnaryOps) {
    const std::string id = defer::kernels::info(op).id;
    const FusedProgram p = one_op(op);
    // Misaligned by one float: the scalar path.
    std::vector<float> want(static_cast<std::size_t>(n));
    defer::testing::one_op::unary(op, x.data() + 1, want.data(), n);
    const Tensor dx = upload(x);
    Tensor out = poisoned(n + 1);
    const void* in[1] = {bptr(dx) + sizeof(float)};
    void* outs[1] = {bptr(out) + sizeof(float)};
    defer::detail::launch_fused_cuda(p, flat_layout(n, 1), in, outs, nullptr, gpu_stream(), 0);
    auto got = download(out);
    EXPECT_TRUE(std::isnan(got[0])) << id << " wrote before its output";
    expect_close(id + " misaligned", std::vector<float>(got.begin() + 1, got.end()), want, 1e-5, 1e-37);
    // In place.
    Tensor inplace = upload(x);
    const void* same_in[1] = {cptr(inplace)};
    void* same_out[1] = {mptr(inplace)};
    defer::detail::launch_fused_cuda(p, flat_layout(n + 1, 1), same_in, same_out, nullptr, gpu_stream(), 0);
    std::vector<float> want_all(x.size());
    defer::testing::one_op::unary(op, x.data(), want_all.data(), n + 1);
    expect_close(id + " in place", download(inplace), want_all, 1e-5, 1e-37);
  }
}

TEST(KernelsCudaElementwise, NegativeStrideTakesThe64BitPath) {
  DEFER_SKIP_WITHOUT_GPU();
  // out[i, j] = a[i, n - 1 - j] + b[j]: a negative stride, which only the 64-bit offsets accept.
  const i64 rows = 3, cols = 1000;
  const auto a = random_values(static_cast<std::size_t>(rows * cols), 51);
  const auto b = random_values(static_cast<std::size_t>(cols), 52);
  FusedLayout l;
  l.ndim = 2;
  l.shape[0] = rows;
  l.shape[1] = cols;
  l.strides = {{cols, -1}, {0, 1}};
  std::vector<float> want(static_cast<std::size_t>(rows * cols));
  for (i64 i = 0; i < rows; ++i)
    for (i64 j = 0; j < cols; ++j)
      want[static_cast<std::size_t>(i * cols + j)] =
          a[static_cast<std::size_t>(i * cols + cols - 1 - j)] + b[static_cast<std::size_t>(j)];
  const Tensor da = upload(a), db = upload(b);
  Tensor out = poisoned(rows * cols);
  const void* in[2] = {bptr(da) + (cols - 1) * static_cast<i64>(sizeof(float)), cptr(db)};
  void* outs[1] = {mptr(out)};
  defer::detail::launch_fused_cuda(one_op(ElementwiseOp::add), l, in, outs, nullptr, gpu_stream(), 0);
  expect_close("negative stride", download(out), want, 0, 0);
}

// ---- integer element-wise ops: exact in 64 bits --------------------------------------------------

TEST(KernelsCudaInteger, I64BeyondTwoToTheTwentyFourIsExact) {
  DEFER_SKIP_WITHOUT_GPU();
  constexpr i64 big = i64{1} << 40;
  const std::vector<i64> a = {big + 1, big, -(i64{1} << 53) + 1, 5, (i64{1} << 24) + 1, -3};
  const std::vector<i64> b = {big, big, -(i64{1} << 53) + 1, 6, i64{1} << 24, -3};
  const std::vector<std::uint8_t> mask = {1, 0, 1, 0, 1, 0};
  const Shape shape = {static_cast<i64>(a.size())};
  for (const Device dev : {gpu_device(), Device::cpu()}) {
    SCOPED_TRACE(dev == Device::cpu() ? "cpu" : "cuda");
    const Tensor ta = defer::from_host(a, shape, dev), tb = defer::from_host(b, shape, dev);
    const Tensor tm = defer::from_host(mask, shape, dev);
    // Comparisons: f32 would round big + 1 to big and 2^24 + 1 to 2^24.
    EXPECT_EQ(defer::to_host<std::uint8_t>(defer::wait(defer::eq(ta, tb))), (std::vector<std::uint8_t>{0, 1, 1, 0, 0, 1}));
    EXPECT_EQ(defer::to_host<std::uint8_t>(defer::wait(defer::gt(ta, tb))), (std::vector<std::uint8_t>{1, 0, 0, 0, 1, 0}));
    EXPECT_EQ(defer::to_host<std::uint8_t>(defer::wait(defer::le(ta, tb))), (std::vector<std::uint8_t>{0, 1, 1, 1, 0, 1}));
    EXPECT_EQ(defer::to_host<std::uint8_t>(defer::wait(defer::eq(ta, 5.f))), (std::vector<std::uint8_t>{0, 0, 0, 1, 0, 0}));
    // where and masked_fill select exactly.
    EXPECT_EQ(defer::to_host<i64>(defer::wait(defer::where(tm, ta, tb))),
              (std::vector<i64>{big + 1, big, -(i64{1} << 53) + 1, 6, (i64{1} << 24) + 1, -3}));
    EXPECT_EQ(defer::to_host<i64>(defer::wait(defer::masked_fill(ta, tm, 7.f))),
              (std::vector<i64>{7, big, 7, 5, 7, -3}));
    // i64 -> i32 wraps; -> boolean is nonzero.
    EXPECT_EQ(defer::to_host<std::int32_t>(defer::wait(defer::to(ta, DType::i32))),
              (std::vector<std::int32_t>{1, 0, 1, 5, (1 << 24) + 1, -3}));
    EXPECT_EQ(defer::to_host<std::uint8_t>(defer::wait(defer::to(ta, DType::boolean))),
              (std::vector<std::uint8_t>{1, 1, 1, 1, 1, 1}));
  }
  // The kernel itself, with a broadcast operand read through stride 0.
  const Tensor ta = defer::from_host(a, shape, gpu_device());
  const Tensor tb = defer::from_host(std::vector<i64>{big}, {1}, gpu_device());
  Tensor out = defer::full(shape, 1.f, DType::boolean, gpu_device());
  FusedLayout l;
  l.ndim = 1;
  l.shape[0] = shape[0];
  l.strides = {{1}, {0}};
  const void* in[2] = {cptr(ta), cptr(tb)};
  const DType dtypes[2] = {DType::i64, DType::i64};
  defer::current_stream(gpu_device()).synchronize();
  gpu::integer_elementwise(ElementwiseOp::eq, l, in, dtypes, 2, 0, mptr(out), DType::boolean, gpu_stream());
  EXPECT_EQ(defer::to_host<std::uint8_t>(out), (std::vector<std::uint8_t>{0, 1, 0, 0, 0, 0}));
  gpu::integer_elementwise(ElementwiseOp::lt_scalar, l, in, dtypes, 1, big + 1, mptr(out), DType::boolean, gpu_stream());
  EXPECT_EQ(defer::to_host<std::uint8_t>(out), (std::vector<std::uint8_t>{0, 1, 1, 1, 1, 1}));
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

// The CPU's reduce of values (exact in t) as the CPU backend does it: in f32 (double sums), the
// result rounded once to t.
std::vector<float> cpu_reduce(ReduceOp op, DType t, const std::vector<float>& x, const ReduceShape& s) {
  std::vector<float> want(static_cast<std::size_t>(s.outer * s.inner));
  cpu::reduce(op, x.data(), want.data(), s.outer, s.n, s.inner);
  return as_dtype(t, want);
}

TEST(KernelsCudaReduce, AllOpsAndDTypesMatchCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  for (const DType t : floating_dtypes())
    for (const auto& s : kReduceShapes) {
      const auto x = rounded(t, random_values(static_cast<std::size_t>(s.outer * s.n * s.inner), 61));
      const Tensor dx = upload(t, x);
      const i64 outputs = s.outer * s.inner;
      for (const ReduceOp op : value_reduce_ops()) {
        Tensor out = poisoned(outputs, t);
        gpu::reduce(op, t, cptr(dx), mptr(out), s.outer, s.n, s.inner, gpu_stream());
        // Both accumulate in double: they differ by the final rounding only (plus slack for sums
        // that cancel to near zero).
        expect_close(std::string(defer::kernels::name(op)) + " " + dname(t) + " " + str(s), download(out),
                     cpu_reduce(op, t, x, s), rtol_of(t), t == DType::f32 ? 1e-5 : 1e-2);
      }
      // argmax: the first largest, exactly (ties are common in f16 and bf16)
      Tensor index = poisoned(outputs, DType::i64);
      gpu::reduce(ReduceOp::argmax, t, cptr(dx), mptr(index), s.outer, s.n, s.inner, gpu_stream());
      std::vector<i64> want(static_cast<std::size_t>(outputs));
      cpu::argmax(x.data(), want.data(), s.outer, s.n, s.inner);
      EXPECT_EQ(defer::to_host<i64>(index), want) << "argmax " << dname(t) << " " << str(s);
    }
}

TEST(KernelsCudaReduce, EmptyAxisAndNaN) {
  DEFER_SKIP_WITHOUT_GPU();
  for (const DType t : floating_dtypes()) {
    SCOPED_TRACE(dname(t));
    // n == 0: sum is 0, mean is NaN; the outputs are still written.
    for (const ReduceShape s : {ReduceShape{3, 0, 4}, ReduceShape{2, 0, 40}, ReduceShape{5, 0, 1}}) {
      const i64 outputs = s.outer * s.inner;
      Tensor out = poisoned(outputs, t);
      gpu::reduce(ReduceOp::sum, t, nullptr, mptr(out), s.outer, s.n, s.inner, gpu_stream());
      for (float v : download(out)) EXPECT_EQ(v, 0.f) << "sum over n == 0 " << str(s);
      Tensor mean = defer::full({outputs}, 7.f, t, gpu_device());
      gpu::reduce(ReduceOp::mean, t, nullptr, mptr(mean), s.outer, s.n, s.inner, gpu_stream());
      for (float v : download(mean)) EXPECT_TRUE(std::isnan(v)) << "mean over n == 0 " << str(s);
    }
    // A NaN propagates through every reduction, and argmax points at it.
    for (const ReduceShape s : {ReduceShape{4, 3000, 1}, ReduceShape{4, 100, 1}, ReduceShape{2, 50, 64}}) {
      auto x = rounded(t, random_values(static_cast<std::size_t>(s.outer * s.n * s.inner), 62));
      const i64 nan_at = s.n / 2;
      x[static_cast<std::size_t>((1 * s.n + nan_at) * s.inner)] = kNaN;  // in output (1, 0)
      const Tensor dx = upload(t, x);
      for (const ReduceOp op : value_reduce_ops()) {
        Tensor out = poisoned(s.outer * s.inner, t);
        gpu::reduce(op, t, cptr(dx), mptr(out), s.outer, s.n, s.inner, gpu_stream());
        const auto got = download(out);
        for (i64 o = 0; o < s.outer; ++o)
          for (i64 i = 0; i < s.inner; ++i)
            EXPECT_EQ(std::isnan(got[static_cast<std::size_t>(o * s.inner + i)]), o == 1 && i == 0)
                << defer::kernels::name(op) << " " << str(s) << " at (" << o << ", " << i << ")";
      }
      Tensor index = poisoned(s.outer * s.inner, DType::i64);
      gpu::reduce(ReduceOp::argmax, t, cptr(dx), mptr(index), s.outer, s.n, s.inner, gpu_stream());
      const auto got = defer::to_host<i64>(index);
      EXPECT_EQ(got[static_cast<std::size_t>(s.inner)], nan_at) << "argmax of a row with a NaN " << str(s);
      std::vector<i64> want(got.size());
      cpu::argmax(x.data(), want.data(), s.outer, s.n, s.inner);
      EXPECT_EQ(got, want) << str(s);
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
  gpu::reduce(ReduceOp::sum, DType::f32, cptr(dx), mptr(out), 1, n, 1, gpu_stream());
  EXPECT_NEAR(download(out)[0], exact, 1e-6 * exact);
  // min and max of the same
  const auto [lo, hi] = std::minmax_element(x.begin(), x.end());
  gpu::reduce(ReduceOp::min, DType::f32, cptr(dx), mptr(out), 1, n, 1, gpu_stream());
  EXPECT_EQ(download(out)[0], *lo);
  gpu::reduce(ReduceOp::max, DType::f32, cptr(dx), mptr(out), 1, n, 1, gpu_stream());
  EXPECT_EQ(download(out)[0], *hi);
}

TEST(KernelsCudaSoftmax, MatchesCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  for (const DType t : floating_dtypes())
    for (const auto& s : {ReduceShape{5, 1000, 1}, ReduceShape{2, 3000, 1}, ReduceShape{1, 100000, 1},
                          ReduceShape{3, 50, 40}, ReduceShape{2, 7, 3}, ReduceShape{1, 5000, 40},
                          ReduceShape{2, 20, 100}, ReduceShape{1, 1, 1}, ReduceShape{300, 2, 1}}) {
      const i64 total = s.outer * s.n * s.inner;
      const auto x = rounded(t, random_values(static_cast<std::size_t>(total), 71, -10.f, 10.f));
      std::vector<float> want(x.size());
      cpu::softmax(x.data(), want.data(), s.outer, s.n, s.inner);
      want = as_dtype(t, want);
      const Tensor dx = upload(t, x);
      Tensor out = poisoned(total, t);
      gpu::softmax(t, cptr(dx), mptr(out), s.outer, s.n, s.inner, gpu_stream());
      const auto got = download(out);
      expect_close("softmax " + dname(t) + " " + str(s), got, want, rtol_of(t, 1e-4), t == DType::f32 ? 1e-12 : 1e-6);
      // In place gives the same.
      Tensor inplace = upload(t, x);
      gpu::softmax(t, cptr(inplace), mptr(inplace), s.outer, s.n, s.inner, gpu_stream());
      expect_close("softmax in place " + dname(t) + " " + str(s), download(inplace), got, 0, 0);
    }
}

TEST(KernelsCudaSoftmax, LargeValuesAndNaN) {
  DEFER_SKIP_WITHOUT_GPU();
  // Shifted by the max: no overflow for large logits; a NaN poisons only its own row.
  for (const DType t : floating_dtypes()) {
    const auto x = rounded(t, {1000.f, 1001.f, 999.f, 1.f, 2.f, kNaN, -1000.f, -1001.f, -999.f});
    const Tensor dx = upload(t, x);
    Tensor out = poisoned(9, t);
    gpu::softmax(t, cptr(dx), mptr(out), 3, 3, 1, gpu_stream());
    const auto got = download(out);
    std::vector<float> want(9);
    cpu::softmax(x.data(), want.data(), 3, 3, 1);
    expect_close("softmax large values " + dname(t), got, as_dtype(t, want), rtol_of(t), 1e-12);
    for (int j = 0; j < 3; ++j) EXPECT_TRUE(std::isnan(got[static_cast<std::size_t>(3 + j)])) << dname(t);
  }
}

TEST(KernelsCudaLayerNorm, MatchesCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  struct Case {
    i64 rows, cols;
    float lo, hi;
  };
  // warp rows (<= 1024), block rows, a long row, and data far from zero (the mean must be exact).
  for (const DType t : floating_dtypes())
    for (const Case c : {Case{16, 768, -4.f, 4.f}, Case{3, 1024, -4.f, 4.f}, Case{2, 1025, -4.f, 4.f},
                         Case{2, 100000, -4.f, 4.f}, Case{4, 7, -4.f, 4.f}, Case{5, 3000, 999.f, 1001.f},
                         Case{300, 1, -1.f, 1.f}}) {
      const auto x = rounded(t, random_values(static_cast<std::size_t>(c.rows * c.cols), 81, c.lo, c.hi));
      const auto gamma = rounded(t, random_values(static_cast<std::size_t>(c.cols), 82, 0.5f, 2.f));
      const auto beta = rounded(t, random_values(static_cast<std::size_t>(c.cols), 83));
      std::vector<float> want(x.size());
      cpu::layer_norm(x.data(), gamma.data(), beta.data(), want.data(), c.rows, c.cols, 1e-5f);
      const Tensor dx = upload(t, x), dg = upload(t, gamma), db = upload(t, beta);
      Tensor out = poisoned(c.rows * c.cols, t);
      gpu::layer_norm(t, cptr(dx), cptr(dg), cptr(db), mptr(out), c.rows, c.cols, 1e-5f, gpu_stream());
      expect_close("layer_norm " + dname(t) + " " + defer::shape_str({c.rows, c.cols}), download(out),
                   as_dtype(t, want), rtol_of(t, 1e-4), t == DType::f32 ? 1e-4 : 1e-2);
    }
}

// ---- strided axes (kernels/strided_axis.hpp) ----------------------------------------------------

// The GPU kernels read a strided axis of one storage as the CPU's do: row kernels (warp and block),
// column tiles with a non-unit inner stride, negative and broadcast (0) strides.
TEST(KernelsCudaStridedAxis, MatchesCpuOnTheSameStorage) {
  DEFER_SKIP_WITHOUT_GPU();
  using defer::kernels::StridedAxis;
  struct Case {
    const char* name;
    StridedAxis axis;
  };
  const Case cases[] = {
      {"transposed, warp rows", {40, 300, 1, 1, 40, 1}},
      {"transposed, block rows", {3, 3000, 1, 1, 3, 1}},
      {"rows with inner > 1, reduced axis denser", {2, 100, 50, 1, 2, 400}},
      {"column tiles, inner stride 2", {4, 30, 64, 4000, 130, 2}},
      {"negative strides", {3, 50, 40, -2000, -40, 1}},
      {"reduced axis broadcast", {3, 20, 40, 40, 0, 1}},
      {"outer broadcast, inner broadcast", {5, 33, 36, 0, 1, 0}},
  };
  for (const DType t : floating_dtypes())
    for (const Case& c : cases) {
      const StridedAxis& a = c.axis;
      i64 below = 0, above = 0;
      for (const auto& [extent, stride] : {std::pair<i64, i64>{a.outer, a.outer_stride}, {a.n, a.n_stride},
                                           {a.inner, a.inner_stride}}) {
        if (stride < 0) below -= stride * (extent - 1);
        else above += stride * (extent - 1);
      }
      const auto storage = rounded(t, random_values(static_cast<std::size_t>(below + above + 1), 91, -10.f, 10.f));
      const float* host = storage.data() + below;
      const Tensor dx = upload(t, storage);
      const void* x = bptr(dx) + below * static_cast<i64>(defer::dtype_size(t));
      const std::string ctx = c.name + std::string(" ") + dname(t);
      const i64 outputs = a.outer * a.inner;
      for (const ReduceOp op : value_reduce_ops()) {
        Tensor out = poisoned(outputs, t);
        gpu::reduce(op, t, x, mptr(out), a, gpu_stream());
        std::vector<float> want(static_cast<std::size_t>(outputs));
        cpu::reduce(op, host, want.data(), a);
        expect_close(std::string(defer::kernels::name(op)) + " " + ctx, download(out), as_dtype(t, want), rtol_of(t),
                     t == DType::f32 ? 1e-5 : 1e-2);
      }
      Tensor index = poisoned(outputs, DType::i64);
      gpu::reduce(ReduceOp::argmax, t, x, mptr(index), a, gpu_stream());
      std::vector<i64> want_index(static_cast<std::size_t>(outputs));
      cpu::argmax(host, want_index.data(), a);
      EXPECT_EQ(defer::to_host<i64>(index), want_index) << "argmax " << ctx;
      Tensor soft = poisoned(a.numel(), t);
      gpu::softmax(t, x, mptr(soft), a, gpu_stream());
      std::vector<float> want_soft(static_cast<std::size_t>(a.numel()));
      cpu::softmax(host, want_soft.data(), a);
      expect_close("softmax " + ctx, download(soft), as_dtype(t, want_soft), rtol_of(t, 1e-4),
                   t == DType::f32 ? 1e-12 : 1e-6);
      if (a.inner != 1) continue;
      const auto gamma = rounded(t, random_values(static_cast<std::size_t>(a.n), 92, 0.5f, 2.f));
      const auto beta = rounded(t, random_values(static_cast<std::size_t>(a.n), 93));
      const Tensor dg = upload(t, gamma), db = upload(t, beta);
      Tensor norm = poisoned(a.numel(), t);
      gpu::layer_norm(t, x, cptr(dg), cptr(db), mptr(norm), a, 1e-5f, gpu_stream());
      std::vector<float> want_norm(static_cast<std::size_t>(a.numel()));
      cpu::layer_norm(host, gamma.data(), beta.data(), want_norm.data(), a, 1e-5f);
      expect_close("layer_norm " + ctx, download(norm), as_dtype(t, want_norm), rtol_of(t, 1e-4),
                   t == DType::f32 ? 1e-4 : 1e-2);
    }
}

// ---- matmul --------------------------------------------------------------------------------------

cublasHandle_t handle_for_current_stream() {
  return defer::detail::cublas_handle(defer::current_stream(gpu_device()).impl());
}

// The CPU kernel's answer (in f32, from the same values) for a product laid out as p says.
std::vector<float> cpu_matmul(const defer::testing::TestProduct& p, const std::vector<float>& a,
                              const std::vector<float>& b) {
  const defer::kernels::MatmulLayout l = p.layout();
  std::vector<float> want(static_cast<std::size_t>(l.batch_count() * p.m * p.n));
  cpu::matmul(DType::f32, a.data(), b.data(), want.data(), l);
  return want;
}

TEST(KernelsCudaMatmul, MatchesCpu) {
  DEFER_SKIP_WITHOUT_GPU();
  using P = defer::testing::TestProduct;
  // Single GEMMs, transposed operands (cuBLAS transpose flags), padded leading dimensions, one
  // batch dim (one strided-batched call), shared operands, and two batch dims broadcast the
  // [1, H] x [B, 1] way (a loop of strided-batched calls over the smaller dim).
  const std::vector<P> cases = {
      {{}, 64, 32, 48},
      {{3}, 17, 33, 19},
      {{4}, 10, 20, 30, false, false, 0, 0, {}, {true}},
      {{4}, 10, 20, 30, false, false, 0, 0, {true}, {}},
      {{2}, 3, 4, 5, false, false, 0, 0, {true}, {true}},
      {{}, 1, 1000, 1},
      {{2}, 129, 257, 65},
      {{}, 1, 1, 1},
      {{}, 64, 32, 48, true, false},
      {{}, 64, 32, 48, false, true},
      {{}, 67, 129, 33, true, true, 3},
      {{3}, 17, 33, 19, true, false, 2, 5},
      {{3}, 17, 33, 19, false, true, 0, 0, {true}, {}},
      {{2, 3}, 9, 20, 11, false, false, 0, 0, {true, false}, {false, true}},
      {{3, 2}, 9, 20, 11, true, true, 1, 3, {false, true}, {true, false}},
      {{2, 1, 3}, 5, 7, 6, false, true, 0, 2},
  };
  for (const DType t : floating_dtypes())
    for (const P& c : cases) {
      const defer::kernels::MatmulLayout l = c.layout();
      const auto a_span = static_cast<std::size_t>(defer::testing::operand_span(l.a, c.m, c.k, c.batch));
      const auto b_span = static_cast<std::size_t>(defer::testing::operand_span(l.b, c.k, c.n, c.batch));
      const auto a = rounded(t, random_values(a_span, 91, -1.f, 1.f));
      const auto b = rounded(t, random_values(b_span, 92, -1.f, 1.f));
      const std::vector<float> want = cpu_matmul(c, a, b);
      const Tensor da = upload(t, a), db = upload(t, b);
      Tensor out = poisoned(static_cast<i64>(want.size()), t);
      gpu::matmul(handle_for_current_stream(), t, cptr(da), cptr(db), mptr(out), l);
      // Both accumulate in float (in different orders); the terms are at most 1 in magnitude.
      const double root_k = std::sqrt(static_cast<double>(c.k));
      expect_close(c.name(t), download(out), as_dtype(t, want), rtol_of(t, 1e-4),
                   (t == DType::f32 ? 1e-5 : 1e-3) * root_k);
    }
}

TEST(KernelsCudaMatmul, EmptyDimensions) {
  DEFER_SKIP_WITHOUT_GPU();
  auto layout = [](std::vector<i64> batch, i64 m, i64 k, i64 n) {
    defer::kernels::MatmulLayout l;
    l.m = m, l.k = k, l.n = n, l.batch = batch;
    l.a.row = std::max<i64>(k, 1), l.b.row = std::max<i64>(n, 1);
    l.a.batch.assign(batch.size(), 0), l.b.batch.assign(batch.size(), 0);
    return l;
  };
  for (const DType t : floating_dtypes()) {
    // k == 0: an empty sum, all zeros (the output was poisoned).
    Tensor out = poisoned(2 * 3 * 4, t);
    gpu::matmul(handle_for_current_stream(), t, nullptr, nullptr, mptr(out), layout({2}, 3, 0, 4));
    for (float v : download(out)) EXPECT_EQ(v, 0.f) << dname(t);
    // m, n or a batch extent == 0: nothing to write, nothing launched.
    gpu::matmul(handle_for_current_stream(), t, nullptr, nullptr, nullptr, layout({2}, 0, 5, 4));
    gpu::matmul(handle_for_current_stream(), t, nullptr, nullptr, nullptr, layout({2}, 3, 5, 0));
    gpu::matmul(handle_for_current_stream(), t, nullptr, nullptr, nullptr, layout({0}, 3, 5, 4));
    gpu::matmul(handle_for_current_stream(), t, nullptr, nullptr, nullptr, layout({3, 0}, 3, 5, 4));
  }
  EXPECT_THROW(gpu::matmul(handle_for_current_stream(), DType::i32, nullptr, nullptr, nullptr, layout({}, 1, 1, 1)),
               std::invalid_argument);
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
  EXPECT_NE(math & CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION, 0) << "f16/bf16 split-K sums stay in f32";

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
    const defer::testing::TestProduct square{{}, 64, 64, 64};
    gpu::matmul(defer::detail::cublas_handle(other.impl()), DType::f32, cptr(da), cptr(da), mptr(out), square.layout());
    const std::vector<float> want = cpu_matmul(square, a, a);
    expect_close("matmul on another stream", download(out), want, 1e-4, 1e-4);
  }
  // And back.
  EXPECT_EQ(defer::detail::cublas_handle(first), h);
  ASSERT_EQ(cublasGetStream(h, &bound), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(bound, static_cast<cudaStream_t>(first.native_handle()));
}

// ---- indexing ----------------------------------------------------------------------------------

TEST(KernelsCudaIndex, IndexSelectMatchesCpuAndABadIndexThrowsFromTheWait) {
  DEFER_SKIP_WITHOUT_GPU();
  const Shape shape = {5, 3, 4};
  const auto values = random_values(60, 111, -50.f, 50.f);
  for (const DType t : all_dtypes())
    for (const DType index_dtype : {DType::i32, DType::i64}) {
      SCOPED_TRACE(dname(t) + " indexed by " + dname(index_dtype));
      auto make = [&](Device d) { return defer::wait(defer::to(defer::from_vector(values, shape, d), t)); };
      auto index = [&](const std::vector<i64>& v, Device d) {
        return defer::wait(defer::to(defer::from_host(v, {static_cast<i64>(v.size())}, d), index_dtype));
      };
      const Tensor g = make(gpu_device()), c = make(Device::cpu());
      for (const int dim : {0, 1, 2}) {
        const std::vector<i64> picks = {2, 0, 2, 1};
        const Tensor got = defer::wait(defer::index_select(g, dim, index(picks, gpu_device())));
        const Tensor want = defer::wait(defer::index_select(c, dim, index(picks, Device::cpu())));
        ASSERT_EQ(got.shape(), want.shape());
        EXPECT_EQ(read(got), read(want)) << "dim " << dim;
      }
      // An index outside [0, extent) is found by the kernel: the wait throws.
      for (const std::vector<i64>& bad : {std::vector<i64>{1, 5, 0}, std::vector<i64>{-1}, std::vector<i64>{0, 1, 2, 3, 4, 3, 7}}) {
        EXPECT_THROW(defer::wait(defer::index_select(g, 0, index(bad, gpu_device()))), std::out_of_range);
        EXPECT_THROW(defer::wait(defer::index_select(c, 0, index(bad, Device::cpu()))), std::out_of_range);
      }
      // embedding: rows of a [V, D] table
      const Tensor table = defer::wait(defer::to(defer::from_vector(values, {15, 4}, gpu_device()), t));
      const Tensor table_cpu = defer::wait(defer::to(defer::from_vector(values, {15, 4}, Device::cpu()), t));
      const std::vector<i64> ids = {14, 0, 3, 3, 7, 1};
      EXPECT_EQ(read(defer::wait(defer::embedding(table, defer::from_host(ids, {2, 3}, gpu_device())))),
                read(defer::wait(defer::embedding(table_cpu, defer::from_host(ids, {2, 3}, Device::cpu())))));
      EXPECT_THROW(defer::wait(defer::embedding(table, defer::from_host(std::vector<i64>{15}, {1}, gpu_device()))),
                   std::out_of_range);
    }
  // The device still works after a bad index.
  EXPECT_EQ(download(defer::wait(defer::add(upload({1.f, 2.f}), 1.f))), (std::vector<float>{2.f, 3.f}));
}

TEST(KernelsCudaIndex, TheKernelWritesOnlyGoodRowsAndReportsTheFirstBadOne) {
  DEFER_SKIP_WITHOUT_GPU();
  // x [2, 4, 3]; out [2, 6, 3] of rows 0, 3, 7 (bad), 1, -2 (bad), 2 along dim 1
  const i64 outer = 2, extent = 4, inner = 3;
  const std::vector<i64> index = {0, 3, 7, 1, -2, 2};
  const i64 count = static_cast<i64>(index.size());
  const auto x = random_values(static_cast<std::size_t>(outer * extent * inner), 112);
  const Tensor dx = upload(x);
  const Tensor di = defer::from_host(index, {count}, gpu_device());
  Tensor out = poisoned(outer * count * inner);
  Tensor fault = defer::empty({1}, DType::i64, gpu_device());
  gpu::fill(mptr(fault), 1, sizeof(long long), static_cast<std::uint64_t>(std::numeric_limits<long long>::max()),
            gpu_stream());
  gpu::index_select(cptr(dx), sizeof(float), cptr(di), DType::i64, outer, extent, count, inner, mptr(out),
                    static_cast<long long*>(mptr(fault)), gpu_stream());
  EXPECT_EQ(defer::to_host<i64>(fault), std::vector<i64>{2});
  const auto got = download(out);
  for (i64 o = 0; o < outer; ++o)
    for (i64 j = 0; j < count; ++j)
      for (i64 i = 0; i < inner; ++i) {
        const float g = got[static_cast<std::size_t>((o * count + j) * inner + i)];
        const i64 row = index[static_cast<std::size_t>(j)];
        if (row < 0 || row >= extent) {
          EXPECT_TRUE(std::isnan(g)) << "a bad row was written: " << j;
        } else {
          EXPECT_EQ(g, x[static_cast<std::size_t>((o * extent + row) * inner + i)]) << o << ", " << j << ", " << i;
        }
      }
  // All good: the word keeps INT64_MAX.
  const Tensor good = defer::from_host(std::vector<std::int32_t>{3, 0}, {2}, gpu_device());
  gpu::fill(mptr(fault), 1, sizeof(long long), static_cast<std::uint64_t>(std::numeric_limits<long long>::max()),
            gpu_stream());
  Tensor small = poisoned(outer * 2 * inner);
  gpu::index_select(cptr(dx), sizeof(float), cptr(good), DType::i32, outer, extent, 2, inner, mptr(small),
                    static_cast<long long*>(mptr(fault)), gpu_stream());
  EXPECT_EQ(defer::to_host<i64>(fault), std::vector<i64>{std::numeric_limits<i64>::max()});
  std::vector<float> want;
  for (i64 o = 0; o < outer; ++o)
    for (const i64 row : {3, 0})
      for (i64 i = 0; i < inner; ++i) want.push_back(x[static_cast<std::size_t>((o * extent + row) * inner + i)]);
  EXPECT_EQ(download(small), want);
}

// ---- fill and arange -----------------------------------------------------------------------------

TEST(KernelsCudaFill, FillAndArangeOfEveryDType) {
  DEFER_SKIP_WITHOUT_GPU();
  const i64 n = 70001;  // beyond f16's largest finite value and bf16's exact integers
  for (const DType t : all_dtypes()) {
    SCOPED_TRACE(dname(t));
    const std::size_t e = defer::dtype_size(t);
    // fill: the low bytes of the pattern in every element, nothing past the end
    const std::uint64_t bits = 0x0123456789abcdefull;
    Tensor buf = defer::empty({n + 4}, t, gpu_device());
    ASSERT_EQ(cudaMemsetAsync(mptr(buf), 0x5a, static_cast<std::size_t>(n + 4) * e, gpu_stream()), cudaSuccess);
    gpu::fill(mptr(buf), n, e, bits, gpu_stream());
    const auto filled = download_bytes(buf);
    std::vector<std::byte> want_fill(filled.size(), std::byte{0x5a});
    cpu::fill(want_fill.data(), n, e, bits);
    EXPECT_TRUE(filled == want_fill) << "fill";
    std::uint64_t first = 0;
    std::memcpy(&first, filled.data(), e);
    EXPECT_EQ(first, e == 8 ? bits : bits & ((std::uint64_t{1} << (8 * e)) - 1));
    // arange: i as the dtype, as the CPU computes it
    gpu::arange(mptr(buf), n, t, gpu_stream());
    const auto ranged = download_bytes(buf);
    std::vector<std::byte> want_range = want_fill;
    cpu::arange(want_range.data(), n, t);
    EXPECT_TRUE(ranged == want_range) << "arange";
    // through the public API on both devices
    const float value = t == DType::boolean ? 1.f : defer::is_floating(t) ? -2.5f : 3.f;
    EXPECT_EQ(read(defer::full({3, 7}, value, t, gpu_device())), read(defer::full({3, 7}, value, t, Device::cpu())));
    EXPECT_EQ(read(defer::arange(1000, t, gpu_device())), read(defer::arange(1000, t, Device::cpu())));
    const R::Vec values = read(defer::full({5}, value, t, gpu_device()));
    for (double v : values) EXPECT_EQ(v, value);
  }
}

// ---- fusion on CUDA ------------------------------------------------------------------------------

// Pins fusion (and turns graph replay off, so each wait plans afresh) for the scope.
class FusionGuard {
 public:
  explicit FusionGuard(bool fusion) : fusion_(defer::fusion_enabled()), graphs_(defer::graphs_enabled()) {
    defer::set_fusion_enabled(fusion);
    defer::set_graphs_enabled(false);
  }
  ~FusionGuard() {
    defer::set_fusion_enabled(fusion_);
    defer::set_graphs_enabled(graphs_);
  }
  FusionGuard(const FusionGuard&) = delete;
  FusionGuard& operator=(const FusionGuard&) = delete;

 private:
  bool fusion_, graphs_;
};

// Every f32 math op of the table in one DAG over x [64, 96] and a row y [96]: the unary ops in
// turn, each result plus y; the binary ops with y; the scalar ops; clamp; and a second output
// that shares the chain's start (a DAG, two results from one kernel).
std::vector<TensorAwait> every_op_graph(const Tensor& x_tensor, const Tensor& y_tensor) {
  const TensorAwait x = x_tensor, y = y_tensor;  // one input each, however often it is read
  TensorAwait v = defer::add(defer::mul(x, y), x);  // mul then add: must not become an FMA
  const TensorAwait start = v;
  for (const ElementwiseOp op : kUnaryOps) v = defer::add(call(op, {v}, {}, DType::f32), y);
  for (const ElementwiseOp op : kBinaryOps) v = call(op, {v, y}, {}, DType::f32);
  for (const ElementwiseOp op : kScalarOps) v = call(op, {v}, {2.f}, DType::f32);
  v = defer::clamp(v, -1.f, 1.7f);
  return {v, defer::mul(defer::sigmoid(start), 3.f)};
}

// The same graph with fusion on and off gives bit-identical results on CUDA: fusion never changes
// rounding (f32 throughout; the f16/bf16 case rounds intermediates only when unfused, below).
TEST(KernelsCudaFusion, FusedEqualsUnfusedBitForBit) {
  DEFER_SKIP_WITHOUT_GPU();
  const Tensor x = defer::from_vector(random_values(64 * 96, 121), {64, 96}, gpu_device());
  const Tensor y = defer::from_vector(random_values(96, 122), {96}, gpu_device());
  std::vector<std::vector<float>> results[2];
  std::uint64_t launches[2] = {0, 0};
  for (const bool fusion : {true, false}) {
    FusionGuard guard(fusion);
    defer::reset_stats();
    for (const Tensor& r : defer::wait_all(every_op_graph(x, y))) results[fusion ? 0 : 1].push_back(download(r));
    launches[fusion ? 0 : 1] = defer::stats().kernel_launches;
  }
  EXPECT_LT(launches[0], launches[1]);
  EXPECT_EQ(launches[0], 1u) << "one fused kernel with two outputs";
  ASSERT_EQ(results[0].size(), results[1].size());
  for (std::size_t k = 0; k < results[0].size(); ++k) {
    const auto& a = results[0][k];
    const auto& r = results[1][k];
    ASSERT_EQ(a.size(), r.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (std::isnan(r[i])) {
        ASSERT_TRUE(std::isnan(a[i])) << "output " << k << " element " << i;
      } else {
        ASSERT_EQ(a[i], r[i]) << "output " << k << " element " << i;
      }
    }
  }
  // A reduction with a fused prologue: the same value fused or not (both accumulate in double).
  std::vector<float> sums[2];
  for (const bool fusion : {true, false}) {
    FusionGuard guard(fusion);
    sums[fusion ? 0 : 1] = download(defer::wait(defer::sum(defer::mul(defer::relu(x), 2.f), 1)));
  }
  expect_close("sum(relu(x) * 2) fused vs unfused", sums[0], sums[1], 1e-6, 0);
}

// x rounded to nearest even to `bits` significant bits, exponents down to emin (subnormals below),
// infinity beyond `max`: f16 (11, -14, 65504) and bf16 (8, -126, ~3.39e38) without the library.
double round_binary(double x, int bits, int emin, double max) {
  if (!std::isfinite(x) || x == 0) return x;
  int e = 0;
  std::frexp(x, &e);  // x = m 2^e, 0.5 <= |m| < 1
  const int ulp = std::max(e - 1, emin) - (bits - 1);
  const double r = std::ldexp(std::nearbyint(std::ldexp(x, -ulp)), ulp);
  return std::fabs(r) > max ? std::copysign(std::numeric_limits<double>::infinity(), r) : r;
}
double round_half(DType t, double x) {
  return t == DType::f16 ? round_binary(x, 11, -14, 65504.0) : round_binary(x, 8, -126, 3.3895313892515355e38);
}

// f16 and bf16 chains fuse into one kernel that rounds every value through the dtype, as the ops
// one by one do: fused and unfused agree bit for bit on CUDA, and the CPU (which runs the same
// program) and float64 rounded after every op agree within a few last places of the dtype.
TEST(KernelsCudaFusion, HalfPrecisionChainsFuse) {
  DEFER_SKIP_WITHOUT_GPU();
  const Shape shape = {32, 100};
  const auto xv = random_values(32 * 100, 131, -3.f, 3.f), bv = random_values(100, 132, -1.f, 1.f);
  for (const DType t : floating_dtypes()) {
    if (t == DType::f32) continue;
    SCOPED_TRACE(dname(t));
    auto inputs = [&](Device d) {
      return std::make_pair(defer::wait(defer::to(defer::from_vector(xv, shape, d), t)),
                            defer::wait(defer::to(defer::from_vector(bv, {100}, d), t)));
    };
    auto graph = [](const Tensor& x_tensor, const Tensor& b_tensor) {
      const TensorAwait x = x_tensor, b = b_tensor;
      return std::vector<TensorAwait>{defer::sub(defer::gelu(defer::add(defer::mul(x, 0.5f), b)), defer::tanh(x)),
                                      defer::sum(defer::mul(defer::relu(x), 2.f), 1)};
    };
    const auto [gx, gb] = inputs(gpu_device());
    const auto [cx, cb] = inputs(Device::cpu());
    std::vector<Tensor> fused, unfused, cpu_fused;
    std::uint64_t fused_kernels = 0, fused_launches = 0, unfused_launches = 0;
    {
      FusionGuard guard(true);
      defer::reset_stats();
      fused = defer::wait_all(graph(gx, gb));
      fused_kernels = defer::stats().fused_kernels;
      fused_launches = defer::stats().kernel_launches;
      cpu_fused = defer::wait_all(graph(cx, cb));
    }
    {
      FusionGuard guard(false);
      defer::reset_stats();
      unfused = defer::wait_all(graph(gx, gb));
      unfused_launches = defer::stats().kernel_launches;
    }
    EXPECT_GE(fused_kernels, 1u);
    EXPECT_LT(fused_launches, unfused_launches);
    // float64 from the inputs as the dtype holds them, rounded through the dtype after every op
    const R::Vec x = read(cx), b = read(cb);
    auto r = [&](double v) { return round_half(t, v); };
    R::Vec chain(x.size()), sums(32, 0.0);
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double h = r(R::elementwise(ElementwiseOp::gelu, r(r(x[i] * 0.5) + b[i % 100])));
      chain[i] = r(h - r(std::tanh(x[i])));
      sums[i / 100] += r(r(std::max(x[i], 0.0)) * 2.0);
    }
    for (double& v : sums) v = r(v);
    // A last-bit difference of f32 math may flip a rounding of the dtype: a few units in the last
    // place of the largest intermediate (|v| < 4), or of a sum (< 1000).
    const double eps = t == DType::f16 ? 1.0 / 2048 : 1.0 / 256;
    for (std::size_t k = 0; k < 2; ++k) {
      SCOPED_TRACE("output " + std::to_string(k));
      ASSERT_EQ(fused[k].dtype(), t);
      const R::Vec got = read(fused[k]);
      const R::Vec& want = k == 0 ? chain : sums;
      const double atol = (k == 0 ? 16.0 : 512.0) * eps;
      expect_close("cuda against float64", got, want, 1e-2, atol);
      expect_close("cuda against cpu", got, read(cpu_fused[k]), 1e-2, atol);
      // fused and unfused: bit for bit (the sums of values of the dtype are exact in double)
      expect_close("fused against unfused", got, read(unfused[k]), 0, 0);
    }
  }
}

TEST(KernelsCuda, ZeroSizedCallsLaunchNothing) {
  DEFER_SKIP_WITHOUT_GPU();
  const cudaStream_t s = gpu_stream();
  defer::detail::launch_fused_cuda(one_op(ElementwiseOp::exp), flat_layout(0, 1), std::vector<const void*>{nullptr}.data(),
                                   std::vector<void*>{nullptr}.data(), nullptr, s, 0);
  for (const DType t : floating_dtypes()) {
    gpu::reduce(ReduceOp::sum, t, nullptr, nullptr, 0, 5, 3, s);
    gpu::reduce(ReduceOp::argmax, t, nullptr, nullptr, 3, 5, 0, s);
    gpu::softmax(t, nullptr, nullptr, 2, 0, 3, s);
    gpu::layer_norm(t, nullptr, nullptr, nullptr, nullptr, 0, 8, 1e-5f, s);
  }
  for (const std::size_t e : {1u, 2u, 4u, 8u}) {
    gpu::fill(nullptr, 0, e, 0, s);
    gpu::index_select(nullptr, e, nullptr, DType::i64, 2, 4, 0, 3, nullptr, nullptr, s);
  }
  for (const DType t : all_dtypes()) gpu::arange(nullptr, 0, t, s);
  FusedLayout empty;
  empty.ndim = 1;
  empty.shape[0] = 0;
  empty.strides = {{1}};
  const void* in[1] = {nullptr};
  const DType dtypes[1] = {DType::i64};
  gpu::integer_elementwise(ElementwiseOp::eq_scalar, empty, in, dtypes, 1, 0, nullptr, DType::boolean, s);
  defer::current_stream(gpu_device()).synchronize();
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

}  // namespace
