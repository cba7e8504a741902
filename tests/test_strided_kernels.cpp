// Reductions (sum, mean, max, min, argmax), softmax and layer_norm read strided inputs in place
// (docs/api.md sections 5, 8, 9): every op x dtype (f32, f16, bf16) x device (cpu, cuda) x layout
// (transposed, permuted 3-D and 4-D, sliced with a step and an offset, expanded with stride 0, a
// select, over every dim, also counted from the end) against a float64 reference computed from the
// logical values (gathered on the host through the view's strides, not by a kernel). Outputs are
// poisoned beforehand. A strided input costs no copy where the dims around the reduced one collapse
// to one stride each side (one launch: the kernel), and exactly one counted copy where they do not.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include <defer/defer.hpp>

#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;

namespace {

using i64 = std::int64_t;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

enum class Op { sum, mean, max, min, argmax, softmax, layer_norm };
constexpr Op kOps[] = {Op::sum, Op::mean, Op::max, Op::min, Op::argmax, Op::softmax, Op::layer_norm};

const char* op_name(Op op) {
  switch (op) {
    case Op::sum: return "sum";
    case Op::mean: return "mean";
    case Op::max: return "max";
    case Op::min: return "min";
    case Op::argmax: return "argmax";
    case Op::softmax: return "softmax";
    case Op::layer_norm: return "layer_norm";
  }
  return "?";
}

// A view of a fresh contiguous tensor of shape `base`, and the dims around which its strides do not
// collapse to one stride each side (worked out by hand: the op must copy x first there).
struct Layout {
  const char* name;
  Shape base;
  std::function<TensorAwait(const TensorAwait&)> view;
  std::vector<int> copy_dims;
};

const std::vector<Layout>& layouts() {
  static const std::vector<Layout> all = {
      {"contiguous [4,5,6]", {4, 5, 6}, [](const TensorAwait& a) { return a; }, {}},
      // [10, 6] strides [1, 10]
      {"transpose [6,10]", {6, 10}, [](const TensorAwait& a) { return transpose(a, 0, 1); }, {}},
      // [6, 4, 5] strides [1, 30, 6]: dims 1, 2 collapse (30 = 6 * 5); dims 0, 1 do not
      {"permute [4,5,6] (2,0,1)", {4, 5, 6}, [](const TensorAwait& a) { return permute(a, {2, 0, 1}); }, {2}},
      // [6, 5, 4] strides [1, 6, 30]: one dim each side of dim 1
      {"permute [4,5,6] (2,1,0)", {4, 5, 6}, [](const TensorAwait& a) { return permute(a, {2, 1, 0}); }, {0, 2}},
      // [5, 4, 6] strides [6, 30, 1]
      {"permute [4,5,6] (1,0,2)", {4, 5, 6}, [](const TensorAwait& a) { return permute(a, {1, 0, 2}); }, {0, 2}},
      // [3, 2, 4, 5] strides [20, 60, 5, 1]
      {"permute [2,3,4,5] (1,0,2,3)", {2, 3, 4, 5}, [](const TensorAwait& a) { return permute(a, {1, 0, 2, 3}); },
       {0, 2, 3}},
      // [4, 5, 2, 3] strides [5, 1, 60, 20]
      {"permute [2,3,4,5] (2,3,0,1)", {2, 3, 4, 5}, [](const TensorAwait& a) { return permute(a, {2, 3, 0, 1}); },
       {0, 3}},
      // [5, 4] strides [12, 3], offset 25
      {"slice [7,12] 2: and 1:11:3", {7, 12},
       [](const TensorAwait& a) { return slice(slice(a, 0, 2, 7), 1, 1, 11, 3); }, {}},
      // [4, 6, 4] strides [48, 8, 2], offset 1
      {"slice [4,6,8] dim 2 1::2", {4, 6, 8}, [](const TensorAwait& a) { return slice(a, 2, 1, 8, 2); }, {}},
      // [8, 40, 32] strides [2560, 64, 2]: wide enough for the CUDA column kernels, inner stride 2
      {"slice [8,40,64] dim 2 ::2", {8, 40, 64}, [](const TensorAwait& a) { return slice(a, 2, 0, 64, 2); }, {}},
      // [5, 7] strides [1, 0]
      {"expand [5,1] to [5,7]", {5, 1}, [](const TensorAwait& a) { return expand(a, {5, 7}); }, {}},
      // [4, 6] strides [0, 1]
      {"expand [6] to [4,6]", {6}, [](const TensorAwait& a) { return expand(a, {4, 6}); }, {}},
      // [3, 6, 4] strides [4, 0, 1]: a broadcast dim next to a strided one does not collapse
      {"expand [3,1,4] to [3,6,4]", {3, 1, 4}, [](const TensorAwait& a) { return expand(a, {3, 6, 4}); }, {0, 2}},
      // [5, 7] strides [42, 1], offset 14
      {"select [5,6,7] dim 1", {5, 6, 7}, [](const TensorAwait& a) { return select(a, 1, 2); }, {}},
      // [5, 6] strides [42, 7], offset 6
      {"select [5,6,7] dim 2 (-1)", {5, 6, 7}, [](const TensorAwait& a) { return select(a, 2, -1); }, {}},
      // [9, 8] strides [1, 9], offset 72
      {"select [3,8,9] dim 0 then transpose", {3, 8, 9},
       [](const TensorAwait& a) { return transpose(select(a, 0, 1), 0, 1); }, {}},
      // [1100, 70] strides [1, 1100]: long rows (CUDA block rows) and a transposed column read
      {"transpose [70,1100]", {70, 1100}, [](const TensorAwait& a) { return transpose(a, 0, 1); }, {}},
  };
  return all;
}

i64 numel(const Shape& s) {
  i64 n = 1;
  for (i64 e : s) n *= e;
  return n;
}

// v's elements in row-major order of its shape, read on the host from the base's values through v's
// strides and its offset from the base.
std::vector<double> logical_values(const std::vector<float>& base_values, const Tensor& base, const Tensor& v) {
  const Shape& shape = v.shape();
  const Shape& strides = v.strides();
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(numel(shape)));
  std::vector<i64> idx(shape.size(), 0);
  const i64 n = numel(shape);
  for (i64 k = 0; k < n; ++k) {
    i64 at = v.storage_offset() - base.storage_offset();
    for (std::size_t d = 0; d < shape.size(); ++d) at += idx[d] * strides[d];
    out.push_back(base_values.at(static_cast<std::size_t>(at)));
    for (std::size_t d = shape.size(); d-- > 0;) {
      if (++idx[d] < shape[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

// The float64 reference of op over dim of the logical values, flattened, with the magnitude each
// element's tolerance is relative to.
struct Expected {
  std::vector<double> value, scale;
};

Expected reference(Op op, const std::vector<double>& x, const Shape& shape, int dim, const std::vector<double>& gamma,
                   const std::vector<double>& beta, double eps) {
  i64 outer = 1, inner = 1;
  for (int d = 0; d < dim; ++d) outer *= shape[static_cast<std::size_t>(d)];
  for (std::size_t d = static_cast<std::size_t>(dim) + 1; d < shape.size(); ++d) inner *= shape[d];
  const i64 n = shape[static_cast<std::size_t>(dim)];
  auto at = [&](i64 o, i64 j, i64 i) { return x[static_cast<std::size_t>((o * n + j) * inner + i)]; };
  Expected e;
  const bool per_element = op == Op::softmax || op == Op::layer_norm;
  if (per_element) e.value.assign(x.size(), 0.0), e.scale.assign(x.size(), 0.0);
  for (i64 o = 0; o < outer; ++o)
    for (i64 i = 0; i < inner; ++i) {
      double sum = 0, abs_sum = 0, hi = -INFINITY, lo = INFINITY;
      i64 best = 0;
      for (i64 j = 0; j < n; ++j) {
        const double v = at(o, j, i);
        sum += v, abs_sum += std::fabs(v), lo = std::min(lo, v);
        if (v > hi) hi = v, best = j;  // the first of the largest
      }
      const double dn = static_cast<double>(n);
      switch (op) {
        case Op::sum: e.value.push_back(sum), e.scale.push_back(abs_sum); break;
        case Op::mean: e.value.push_back(sum / dn), e.scale.push_back(abs_sum / dn); break;
        case Op::max: e.value.push_back(hi), e.scale.push_back(std::fabs(hi)); break;
        case Op::min: e.value.push_back(lo), e.scale.push_back(std::fabs(lo)); break;
        case Op::argmax: e.value.push_back(static_cast<double>(best)), e.scale.push_back(0); break;
        case Op::softmax: {
          double s = 0;
          for (i64 j = 0; j < n; ++j) s += std::exp(at(o, j, i) - hi);
          for (i64 j = 0; j < n; ++j) {
            const auto k = static_cast<std::size_t>((o * n + j) * inner + i);
            e.value[k] = std::exp(at(o, j, i) - hi) / s;
            e.scale[k] = e.value[k];
          }
          break;
        }
        case Op::layer_norm: {  // inner == 1: a row of n
          const double mean = sum / dn;
          double var = 0;
          for (i64 j = 0; j < n; ++j) var += (at(o, j, i) - mean) * (at(o, j, i) - mean);
          var /= dn;
          for (i64 j = 0; j < n; ++j) {
            const auto k = static_cast<std::size_t>(o * n + j);
            const double y = (at(o, j, i) - mean) / std::sqrt(var + eps) * gamma[static_cast<std::size_t>(j)];
            e.value[k] = y + beta[static_cast<std::size_t>(j)];
            e.scale[k] = std::fabs(y) + std::fabs(beta[static_cast<std::size_t>(j)]);
          }
          break;
        }
      }
    }
  return e;
}

// Fills the allocator's cache with NaN (or -7 for i64) blocks of an output's size, so that an
// element the kernel does not write shows up instead of passing as a stale value.
void poison(Device d, i64 n, DType dtype) {
  if (n <= 0) return;
  std::vector<Tensor> blocks;
  for (int i = 0; i < 3; ++i) blocks.push_back(full({n}, dtype == DType::i64 ? -7.f : kNaN, dtype, d));
  current_stream(d).synchronize();
}

TensorAwait apply(Op op, const TensorAwait& x, int dim, bool keepdim, const Tensor& gamma, const Tensor& beta) {
  switch (op) {
    case Op::sum: return sum(x, dim, keepdim);
    case Op::mean: return mean(x, dim, keepdim);
    case Op::max: return max(x, dim, keepdim);
    case Op::min: return min(x, dim, keepdim);
    case Op::argmax: return argmax(x, dim, keepdim);
    case Op::softmax: return softmax(x, dim);
    case Op::layer_norm: return layer_norm(x, gamma, beta, 1e-5f);
  }
  throw std::logic_error("unknown op");
}

// Relative tolerance: the contract's 1e-5 (1e-4 for softmax and layer_norm) in f32; f16 and bf16
// results are rounded once to their 11 or 8 significant bits.
double rtol_of(DType t, Op op) {
  const bool loose = op == Op::softmax || op == Op::layer_norm;
  switch (t) {
    case DType::f16: return 1.5e-3;
    case DType::bf16: return 8e-3;
    default: return loose ? 1e-4 : 1e-5;
  }
}

// x of dtype on device with these values (rounded to dtype), and the values it holds.
Tensor make_input(const Shape& shape, DType dtype, Device device, unsigned seed, std::vector<float>& held) {
  const Tensor f32 = from_vector(random_values(static_cast<std::size_t>(numel(shape)), seed), shape, device);
  const Tensor t = dtype == DType::f32 ? f32 : wait(to(f32, dtype));
  held = to_vector(t);  // exact for every floating dtype
  return t;
}

struct Param {
  DeviceKind device;
  DType dtype;
};

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  return std::string(info.param.device == DeviceKind::cpu ? "cpu" : "cuda") + "_" + dtype_name(info.param.dtype);
}

class StridedKernels : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    if (GetParam().device == DeviceKind::cuda) {
      DEFER_SKIP_WITHOUT_GPU();
      device_ = Device::cuda(0);
    }
  }
  // op over dim of v (the logical values x), checked against the reference; the launches counted.
  void check(Op op, const Tensor& v, const std::vector<double>& x, int dim, bool copies, const std::string& ctx) {
    const DType dtype = GetParam().dtype;
    const int rank = static_cast<int>(v.shape().size());
    const int d = dim < 0 ? dim + rank : dim;
    std::vector<float> g_held, b_held;
    Tensor gamma, beta;  // layer_norm's, [cols]
    if (op == Op::layer_norm) {
      gamma = make_input({v.shape().back()}, dtype, device_, 7, g_held);
      beta = make_input({v.shape().back()}, dtype, device_, 8, b_held);
    }
    const Expected want = reference(op, x, v.shape(), d, std::vector<double>(g_held.begin(), g_held.end()),
                                    std::vector<double>(b_held.begin(), b_held.end()), 1e-5);
    const DType out_dtype = op == Op::argmax ? DType::i64 : dtype;
    poison(device_, static_cast<i64>(want.value.size()), out_dtype);
    reset_stats();
    const Tensor out = wait(apply(op, v, dim, /*keepdim=*/dim < 0, gamma, beta));
    EXPECT_EQ(stats().kernel_launches, copies ? 2u : 1u)
        << ctx << (copies ? ": a copy of x, then the kernel" : ": the kernel alone, reading x in place");
    ASSERT_EQ(out.numel(), static_cast<i64>(want.value.size())) << ctx;
    EXPECT_TRUE(out.is_contiguous()) << ctx;
    if (op == Op::argmax) {
      const std::vector<i64> got = to_host<i64>(out);
      for (std::size_t k = 0; k < got.size(); ++k)
        ASSERT_EQ(static_cast<double>(got[k]), want.value[k]) << ctx << ": element " << k;
      return;
    }
    const std::vector<float> got = to_vector(out);
    const double rtol = rtol_of(dtype, op);
    int bad = 0;
    for (std::size_t k = 0; k < got.size(); ++k) {
      double tol = rtol * want.scale[k] + 1e-7;
      if (op == Op::sum || op == Op::mean) tol = rtol * std::fabs(want.value[k]) + 1e-6 * want.scale[k];
      if (!(std::fabs(static_cast<double>(got[k]) - want.value[k]) <= tol) && bad++ < 5)
        ADD_FAILURE() << ctx << ": element " << k << " is " << got[k] << ", want " << want.value[k] << " (tolerance "
                      << tol << ")";
    }
    EXPECT_EQ(bad, 0) << ctx;
  }
  Device device_ = Device::cpu();
};

TEST_P(StridedKernels, EveryOpEveryLayoutEveryDim) {
  const DType dtype = GetParam().dtype;
  unsigned seed = 100;
  for (const Layout& layout : layouts()) {
    std::vector<float> held;
    const Tensor base = make_input(layout.base, dtype, device_, ++seed, held);
    const Tensor v = wait(layout.view(base));  // a view of a materialized tensor: no launch
    const std::vector<double> x = logical_values(held, base, v);
    const int rank = static_cast<int>(v.shape().size());
    for (Op op : kOps) {
      for (int d = 0; d < rank; ++d) {
        if (op == Op::layer_norm && d != rank - 1) continue;  // over the last dim only
        const bool copies = std::find(layout.copy_dims.begin(), layout.copy_dims.end(), d) != layout.copy_dims.end();
        for (const int dim : {d, d - rank}) {
          const std::string ctx = std::string(op_name(op)) + " over dim " + std::to_string(dim) + " of " + layout.name +
                                  " (shape " + shape_str(v.shape()) + ", strides " + shape_str(v.strides()) + ") " +
                                  dtype_name(dtype) + " on " + device_.str();
          check(op, v, x, dim, copies, ctx);
          if (op == Op::layer_norm) break;  // its dim is implied
        }
      }
    }
  }
}

// The views share the base's storage: the kernel read it in place (and did not disturb it).
TEST_P(StridedKernels, InputUntouched) {
  std::vector<float> held;
  const Tensor base = make_input({6, 10}, GetParam().dtype, device_, 3, held);
  const Tensor v = wait(transpose(base, 0, 1));
  EXPECT_EQ(static_cast<const char*>(v.data_ptr()), static_cast<const char*>(base.data_ptr()));
  (void)wait(softmax(v, 0));
  (void)wait(sum(v, 1));
  EXPECT_EQ(to_vector(base), held);
}

// gamma and beta are read as dense rows: a strided one is copied first (one counted launch each).
TEST_P(StridedKernels, LayerNormCopiesStridedGammaAndBeta) {
  const DType dtype = GetParam().dtype;
  std::vector<float> xh, gh, bh;
  const Tensor base = make_input({7, 6}, dtype, device_, 11, xh);
  const Tensor x = wait(transpose(base, 0, 1));  // [6, 7], read in place
  const Tensor gamma_wide = make_input({14}, dtype, device_, 12, gh);
  const Tensor gamma = wait(slice(gamma_wide, 0, 0, 14, 2));  // stride 2
  const Tensor beta = make_input({7}, dtype, device_, 13, bh);
  std::vector<double> g, b;
  for (int c = 0; c < 7; ++c) g.push_back(gh[static_cast<std::size_t>(2 * c)]), b.push_back(bh[static_cast<std::size_t>(c)]);
  const Expected want = reference(Op::layer_norm, logical_values(xh, base, x), x.shape(), 1, g, b, 1e-5);
  reset_stats();
  const Tensor out = wait(layer_norm(x, gamma, beta, 1e-5f));
  EXPECT_EQ(stats().kernel_launches, 2u) << "a copy of gamma, then the kernel";
  const std::vector<float> got = to_vector(out);
  ASSERT_EQ(got.size(), want.value.size());
  for (std::size_t k = 0; k < got.size(); ++k)
    EXPECT_NEAR(got[k], want.value[k], rtol_of(dtype, Op::layer_norm) * want.scale[k] + 1e-7) << k;
  // an expanded (stride 0) beta as well
  const Tensor beta0 = wait(expand(wait(slice(beta, 0, 0, 1)), {7}));
  reset_stats();
  (void)wait(layer_norm(x, gamma, beta0, 1e-5f));
  EXPECT_EQ(stats().kernel_launches, 3u) << "copies of gamma and beta, then the kernel";
}

// An empty strided input: the sum over an empty dim is 0 (the kernel still writes the outputs),
// nothing to launch when there are no outputs.
TEST_P(StridedKernels, EmptyInputs) {
  const DType dtype = GetParam().dtype;
  const Tensor base = full({0, 5}, 1.f, dtype, device_);
  const Tensor v = wait(transpose(base, 0, 1));  // [5, 0]
  poison(device_, 5, dtype);
  const std::vector<float> s = to_vector(wait(sum(v, 1)));
  EXPECT_EQ(s, std::vector<float>(5, 0.f));
  const std::vector<float> m = to_vector(wait(mean(v, -1)));
  ASSERT_EQ(m.size(), 5u);
  for (float e : m) EXPECT_TRUE(std::isnan(e));
  EXPECT_EQ(wait(sum(v, 0)).numel(), 0);
  EXPECT_EQ(wait(softmax(v, 0)).numel(), 0);
}

// The one layout of the issue that cannot be read in place is copied, once: a reduction over the
// middle dim of [4, 5, 6] permuted to (1, 0, 2) (shape [5, 4, 6], strides [6, 30, 1]) reads in
// place, over dim 0 or 2 it copies.
TEST_P(StridedKernels, CopiesOnlyWhereTheDimsDoNotCollapse) {
  std::vector<float> held;
  const Tensor base = make_input({4, 5, 6}, GetParam().dtype, device_, 21, held);
  const Tensor v = wait(permute(base, {1, 0, 2}));
  const std::vector<std::pair<int, std::uint64_t>> cases = {{0, 2u}, {1, 1u}, {2, 2u}, {-1, 2u}, {-2, 1u}};
  for (const auto& [dim, launches] : cases) {
    reset_stats();
    (void)wait(sum(v, dim));
    EXPECT_EQ(stats().kernel_launches, launches) << "sum over dim " << dim;
    reset_stats();
    (void)wait(softmax(v, dim));
    EXPECT_EQ(stats().kernel_launches, launches) << "softmax over dim " << dim;
  }
}

INSTANTIATE_TEST_SUITE_P(, StridedKernels,
                         ::testing::Values(Param{DeviceKind::cpu, DType::f32}, Param{DeviceKind::cpu, DType::f16},
                                           Param{DeviceKind::cpu, DType::bf16}, Param{DeviceKind::cuda, DType::f32},
                                           Param{DeviceKind::cuda, DType::f16}, Param{DeviceKind::cuda, DType::bf16}),
                         param_name);

}  // namespace
