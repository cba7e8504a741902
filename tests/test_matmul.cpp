// matmul as torch.matmul (docs/api.md sections 5, 8, 9), table-driven on both backends and in f32,
// f16 and bf16, against a float64 reference: 2-D to 4-D operands, broadcast batch dims, 1-D operands,
// transposed, permuted, sliced, selected and expanded operands read in place (the no-copy promise
// checked through Stats), k == 0 and empty results; the layout rules the kernels read; and the
// call-time errors. Inputs are random and never zero, outputs poisoned with NaN beforehand. The
// operands' logical values are gathered on the host from each view's shape, strides and offset
// (tests/test_views.cpp checks those against index maps of its own). CUDA cases skip without a GPU.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include <defer/defer.hpp>

#include "graph/executor.hpp"
#include "matmul_layout.hpp"
#include "reference.hpp"
#include "support/dtype_bytes.hpp"
#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;
namespace R = defer::testing::ref;

namespace {

using View = std::function<TensorAwait(const TensorAwait&)>;

// One row of the table: each operand is a dense tensor of `shape`, then `view` (none: itself).
struct Case {
  const char* name;
  Shape a_shape, b_shape;
  View a_view = nullptr, b_view = nullptr;
  // Kernels a wait of matmul(a, b) launches once a and b are materialized: 1 (the matmul; no copy),
  // 2 (one operand the kernels cannot read is copied first) or 0 (an empty result).
  std::uint64_t launches = 1;
};

View tr() {
  return [](const TensorAwait& x) { return transpose(x); };
}
View perm(std::vector<int64_t> dims) {
  return [dims](const TensorAwait& x) { return permute(x, dims); };
}
View slices(std::vector<std::array<int64_t, 4>> s) {  // {dim, start, end, step}, applied in order
  return [s](const TensorAwait& x) {
    TensorAwait y = x;
    for (const auto& [dim, start, end, step] : s) y = slice(y, dim, start, end, step);
    return y;
  };
}

const std::vector<Case>& cases() {
  static const std::vector<Case> table = {
      {"2-D", {33, 65}, {65, 17}},
      {"3-D", {3, 17, 40}, {3, 40, 9}},
      {"4-D [B,H,L,D] x [B,H,D,L]", {2, 3, 16, 8}, {2, 3, 8, 16}},
      {"broadcast [H,L,D] x [B,H,D,L]", {3, 16, 8}, {2, 3, 8, 16}},
      {"broadcast [1,H,L,D] x [B,1,D,L]", {1, 3, 16, 8}, {2, 1, 8, 16}},
      {"broadcast [B,1,L,D] x [1,H,D,L]", {2, 1, 5, 8}, {1, 3, 8, 7}},
      {"broadcast transpose([1,H,D,L]) x [B,1,D,L]", {1, 3, 8, 16}, {2, 1, 8, 16}, tr(), nullptr},
      {"2-D x 4-D (shared a)", {16, 8}, {2, 3, 8, 5}},
      {"4-D x 2-D (shared b: one tall product)", {2, 3, 16, 8}, {8, 5}},
      {"1-D x 2-D", {7}, {7, 5}},
      {"2-D x 1-D", {5, 7}, {7}},
      {"1-D x 1-D (0-d result)", {7}, {7}},
      {"1-D x 4-D", {8}, {2, 3, 8, 5}},
      {"4-D x 1-D", {2, 3, 5, 8}, {8}},
      {"q x transpose(k)", {2, 3, 16, 8}, {2, 3, 16, 8}, nullptr, tr()},
      {"transpose(a) x b", {2, 8, 5}, {2, 8, 6}, tr(), nullptr},
      {"transpose(a) x transpose(b), 2-D, edge tiles", {67, 33}, {129, 67}, tr(), tr()},
      {"transpose(a, 0, 1) batch-major x b", {5, 2, 9}, {2, 9, 4},
       [](const TensorAwait& x) { return transpose(x, 0, 1); }, nullptr},
      {"q.permute(0,2,1,3) x k.permute(0,2,3,1)", {2, 16, 3, 8}, {2, 16, 3, 8}, perm({0, 2, 1, 3}), perm({0, 2, 3, 1})},
      {"scores x v.permute(0,2,1,3)", {2, 3, 16, 16}, {2, 16, 3, 8}, nullptr, perm({0, 2, 1, 3})},
      {"permuted batch dims [H,B,..] -> [B,H,..]", {3, 2, 5, 6}, {2, 3, 6, 4}, perm({1, 0, 2, 3}), nullptr},
      {"sliced rows and columns (offsets, leading dims)", {10, 40}, {30, 20}, slices({{0, 2, 9, 1}, {1, 3, 30, 1}}),
       slices({{0, 1, 28, 1}, {1, 5, 18, 1}})},
      {"sliced batch and stepped rows", {4, 12, 6}, {3, 6, 5}, slices({{0, 1, 4, 1}, {1, 0, 12, 2}}), nullptr},
      {"sliced transposed", {20, 30}, {30, 20}, [](const TensorAwait& x) { return transpose(slice(x, 1, 2, 27)); },
       [](const TensorAwait& x) { return slice(transpose(x), 1, 0, 7); }},
      {"selected", {4, 5, 6}, {6, 7}, [](const TensorAwait& x) { return select(x, 1, 2); }, nullptr},
      {"expanded batch (stride 0)", {1, 5, 6}, {3, 6, 4}, [](const TensorAwait& x) { return expand(x, {3, 5, 6}); },
       nullptr},
      {"strided 1-D operands", {9, 2}, {9, 3}, [](const TensorAwait& x) { return select(x, 1, 1); },
       [](const TensorAwait& x) { return select(x, 1, 2); }},
      // Layouts BLAS cannot express: that operand, and only it, is copied first.
      {"stepped columns (copied)", {6, 14}, {7, 5}, slices({{1, 0, 14, 2}}), nullptr, 2},
      {"expanded matrix rows (copied)", {1, 6}, {6, 5}, [](const TensorAwait& x) { return expand(x, {4, 6}); }, nullptr,
       2},
      {"k == 0", {3, 0}, {0, 4}},
      {"k == 0, batched", {2, 3, 0}, {2, 0, 4}},
      {"m == 0", {0, 5}, {5, 4}, nullptr, nullptr, 0},
      {"n == 0", {3, 5}, {5, 0}, nullptr, nullptr, 0},
      {"batch 0", {0, 3, 5}, {5, 4}, nullptr, nullptr, 0},
  };
  return table;
}

// Fills the allocator's cache for `n` elements of dtype with NaN blocks, so that an output element
// that is not written shows up as NaN.
void poison(Device d, int64_t n, DType dtype) {
  if (n <= 0) return;
  std::vector<Tensor> blocks;
  for (int i = 0; i < 3; ++i) blocks.push_back(full({n}, std::numeric_limits<float>::quiet_NaN(), dtype, d));
  current_stream(d).synchronize();
}

// The logical values of a view of a dense tensor holding `storage`, row-major.
R::Vec gather(const Tensor& view, const std::vector<float>& storage) {
  const Shape& s = view.shape();
  const int64_t n = R::numel(s);
  R::Vec out(static_cast<std::size_t>(n));
  std::vector<int64_t> idx(s.size(), 0);
  for (int64_t e = 0; e < n; ++e) {
    int64_t at = view.storage_offset();
    for (std::size_t d = 0; d < s.size(); ++d) at += idx[d] * view.strides()[d];
    out[static_cast<std::size_t>(e)] = storage[static_cast<std::size_t>(at)];
    for (std::size_t d = s.size(); d-- > 0;) {
      if (++idx[d] < s[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

class Matmul : public ::testing::TestWithParam<std::tuple<DeviceKind, DType>> {
 protected:
  void SetUp() override {
    if (std::get<0>(GetParam()) == DeviceKind::cuda && !cuda_available()) GTEST_SKIP() << "no CUDA device";
    dev_ = std::get<0>(GetParam()) == DeviceKind::cuda ? Device::cuda(0) : Device::cpu();
    dtype_ = std::get<1>(GetParam());
  }

  // A materialized operand: dense random values (exact in the dtype) of `shape`, then the view.
  // Returns the view and its logical values.
  std::pair<Tensor, R::Vec> operand(const Shape& shape, const View& view, unsigned seed) {
    std::vector<float> values = random_values(static_cast<std::size_t>(R::numel(shape)), seed, -2.f, 2.f);
    for (float& v : values) v = round_to(dtype_, v);
    const Tensor base = wait(to(from_vector(values, shape, dev_), dtype_));
    const Tensor x = view ? wait(view(base)) : base;
    return {x, gather(x, values)};
  }

  Device dev_ = Device::cpu();
  DType dtype_ = DType::f32;
};

TEST_P(Matmul, MatchesFloat64AndReadsStridedOperandsInPlace) {
  unsigned seed = 500;
  for (const Case& c : cases()) {
    const std::string what = std::string(c.name) + " " + dtype_name(dtype_) + " on " + dev_.str();
    const auto [a, av] = operand(c.a_shape, c.a_view, seed++);
    const auto [b, bv] = operand(c.b_shape, c.b_view, seed++);
    const R::Dims sa = a.shape(), sb = b.shape();
    const R::Vec want = R::matmul(av, sa, bv, sb);
    const R::Vec scale = R::matmul(R::map(av, [](double v) { return std::abs(v); }), sa,
                                   R::map(bv, [](double v) { return std::abs(v); }), sb);
    poison(dev_, static_cast<int64_t>(want.size()), dtype_);

    reset_stats();
    const Tensor c_out = wait(matmul(a, b));
    EXPECT_EQ(stats().kernel_launches, c.launches) << what << ": " << shape_str(sa) << " strides "
                                                   << shape_str(a.strides()) << " x " << shape_str(sb) << " strides "
                                                   << shape_str(b.strides());
    EXPECT_EQ(c_out.shape(), R::matmul_shape(sa, sb)) << what;
    EXPECT_EQ(c_out.dtype(), dtype_) << what;
    EXPECT_TRUE(c_out.is_contiguous()) << what;
    const std::vector<float> got = to_vector(c_out);
    ASSERT_EQ(got.size(), want.size()) << what;
    // f32 accumulation: 1e-4 of sum |a_ip b_pj|; f16 / bf16 add one rounding of the result (one ulp).
    const double unit = dtype_ == DType::f32 ? 0.0 : dtype_ == DType::f16 ? std::ldexp(1.0, -10) : std::ldexp(1.0, -7);
    int bad = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
      const double tol = 1e-4 * std::max(std::abs(want[i]), scale[i]) + unit * std::abs(want[i]) + 1e-6;
      if (!(std::abs(got[i] - want[i]) <= tol) && bad++ < 5)  // NaN (unwritten) fails too
        ADD_FAILURE() << what << " [" << i << "]: got " << got[i] << ", want " << want[i] << " (tolerance " << tol
                      << ")";
    }
  }
}

TEST_P(Matmul, KZeroGivesZeros) {
  const auto [a, av] = operand({2, 3, 0}, nullptr, 1);
  const auto [b, bv] = operand({2, 0, 4}, nullptr, 2);
  poison(dev_, 24, dtype_);
  for (const float v : to_vector(wait(matmul(a, b)))) EXPECT_EQ(v, 0.f);
}

TEST_P(Matmul, EagerModeReadsViewsInPlaceToo) {
  const auto [q, qv] = operand({2, 16, 3, 8}, perm({0, 2, 1, 3}), 3);
  const auto [k, kv] = operand({2, 16, 3, 8}, perm({0, 2, 3, 1}), 4);
  ModeGuard eager(Mode::eager);
  reset_stats();
  TensorAwait s = matmul(q, k);
  EXPECT_TRUE(s.is_ready());
  EXPECT_EQ(stats().kernel_launches, 1u) << "a copy was launched for a permuted operand";
  EXPECT_EQ(wait(s).shape(), (Shape{2, 3, 16, 16}));
}

INSTANTIATE_TEST_SUITE_P(
    BackendsAndDTypes, Matmul,
    ::testing::Combine(::testing::Values(DeviceKind::cpu, DeviceKind::cuda),
                       ::testing::Values(DType::f32, DType::f16, DType::bf16)),
    [](const auto& param_info) {
      return std::string(std::get<0>(param_info.param) == DeviceKind::cpu ? "cpu_" : "cuda_") +
             dtype_name(std::get<1>(param_info.param));
    });

// --- the copy fallback names its reason ------------------------------------------------------------

TEST(MatmulCopies, TheLaunchLogSaysWhyAnOperandIsCopied) {
  const Tensor a = from_vector(random_values(6 * 14, 1), {6, 14}, Device::cpu());
  const Tensor b = from_vector(random_values(7 * 5, 2), {7, 5}, Device::cpu());
  const Tensor stepped = wait(slice(a, 1, 0, 14, 2));  // [6, 7], strides [14, 2]
  detail::set_launch_log(true);
  ::testing::internal::CaptureStderr();
  wait(matmul(stepped, b));
  wait(matmul(a, transpose(from_vector(random_values(5 * 14, 3), {5, 14}, Device::cpu()))));
  const std::string log = ::testing::internal::GetCapturedStderr();
  detail::set_launch_log(false);
  EXPECT_NE(log.find("contiguous([6, 7] strides [14, 2]) for operand 1 of matmul"), std::string::npos) << log;
  EXPECT_NE(log.find("neither a unit row stride nor a unit column stride"), std::string::npos) << log;
  EXPECT_EQ(log.find("for operand 2 of matmul"), std::string::npos) << "b was copied:\n" << log;
  EXPECT_EQ(log.find("contiguous([14, 5]"), std::string::npos) << "a transposed operand was copied:\n" << log;
}

// --- the layout the kernels read (kernels/matmul_layout.hpp) ---------------------------------------

TEST(MatmulLayout, CollapsesBatchDimsFoldsSharedOperandsAndKeepsTransposes) {
  using kernels::make_matmul_layout;
  // [B, H] back to back: one batch dim of B * H.
  kernels::MatmulLayout l = make_matmul_layout({2, 3, 16, 8}, {384, 128, 8, 1}, {2, 3, 8, 16}, {384, 128, 16, 1});
  EXPECT_EQ(l.batch, (std::vector<int64_t>{6}));
  EXPECT_EQ(l.a.batch, (std::vector<int64_t>{128}));
  EXPECT_EQ(l.b.batch, (std::vector<int64_t>{128}));
  EXPECT_TRUE(l.a.row_major(l.k));
  EXPECT_EQ(l.a.ld(l.k), 8);
  // transpose(k): column-major b with leading dimension 8, same batch.
  l = make_matmul_layout({2, 3, 16, 8}, {384, 128, 8, 1}, {2, 3, 8, 16}, {384, 128, 1, 8});
  EXPECT_FALSE(l.b.row_major(l.n));
  EXPECT_EQ(l.b.ld(l.n), 8);
  EXPECT_EQ(l.batch, (std::vector<int64_t>{6}));
  // q.permute(0, 2, 1, 3) of [B, L, H, D] = [2, 16, 3, 8]: [B, H] do not merge; rows H * D apart.
  l = make_matmul_layout({2, 3, 16, 8}, {384, 8, 24, 1}, {2, 3, 8, 16}, {384, 8, 1, 24});
  EXPECT_EQ(l.batch, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(l.a.batch, (std::vector<int64_t>{384, 8}));
  EXPECT_EQ(l.a.ld(l.k), 24);
  EXPECT_FALSE(l.b.row_major(l.n));
  EXPECT_EQ(l.b.ld(l.n), 24);
  // A shared b over back-to-back rows of a: one [B * H * L, D] x [D, N] product.
  l = make_matmul_layout({2, 3, 16, 8}, {384, 128, 8, 1}, {8, 5}, {5, 1});
  EXPECT_TRUE(l.batch.empty());
  EXPECT_EQ(l.m, 96);
  // [1, H] x [B, 1]: per b, a's H matrices follow each other: one [H * L, D] x [D, L] product per B.
  l = make_matmul_layout({1, 3, 16, 8}, {384, 128, 8, 1}, {2, 1, 8, 16}, {128, 128, 16, 1});
  EXPECT_EQ(l.batch, (std::vector<int64_t>{2}));
  EXPECT_EQ(l.m, 48);
  EXPECT_EQ(l.a.batch, (std::vector<int64_t>{0}));
  EXPECT_EQ(l.b.batch, (std::vector<int64_t>{128}));
  // ... unless a is transposed: two batch dims, each operand broadcast (stride 0) over one.
  l = make_matmul_layout({1, 3, 16, 8}, {384, 128, 1, 16}, {2, 1, 8, 16}, {128, 128, 16, 1});
  EXPECT_EQ(l.batch, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(l.a.batch, (std::vector<int64_t>{0, 128}));
  EXPECT_EQ(l.b.batch, (std::vector<int64_t>{128, 0}));
  EXPECT_EQ(l.m, 16);
  // 1-D operands: a row vector first, a column vector second, any stride.
  l = make_matmul_layout({7}, {3}, {7}, {5});
  EXPECT_EQ(l.m, 1);
  EXPECT_EQ(l.n, 1);
  EXPECT_EQ(l.k, 7);
  EXPECT_EQ(l.a.col * l.a.row, 3);
  EXPECT_EQ(l.b.row, 5);
}

TEST(MatmulLayout, CopyReasons) {
  using kernels::matmul_copy_reason;
  EXPECT_EQ(matmul_copy_reason({4, 5}, {5, 1}, false), nullptr);
  EXPECT_EQ(matmul_copy_reason({4, 5}, {1, 4}, false), nullptr);    // transposed
  EXPECT_EQ(matmul_copy_reason({4, 5}, {9, 1}, true), nullptr);     // a leading dimension
  EXPECT_EQ(matmul_copy_reason({3, 4, 5}, {0, 5, 1}, true), nullptr);  // expanded batch
  EXPECT_EQ(matmul_copy_reason({5}, {4}, false), nullptr);          // strided vector
  EXPECT_EQ(matmul_copy_reason({5}, {4}, true), nullptr);
  EXPECT_NE(matmul_copy_reason({4, 5}, {10, 2}, false), nullptr);   // stepped columns
  EXPECT_NE(matmul_copy_reason({4, 5}, {0, 1}, false), nullptr);    // expanded rows
  EXPECT_NE(matmul_copy_reason({4, 5}, {3, 1}, false), nullptr);    // overlapping rows
  EXPECT_NE(matmul_copy_reason({2, 4, 5}, {-20, 5, 1}, false), nullptr);
  EXPECT_NE(matmul_copy_reason({4, 5}, {-5, 1}, false), nullptr);
  EXPECT_EQ(matmul_copy_reason({4, 0}, {0, 0}, false), nullptr);   // empty: nothing is read
}

// --- call-time errors ------------------------------------------------------------------------------

TEST(MatmulChecks, BadShapesThrowAtTheCallNamingMatmulAndBothShapes) {
  const Device cpu = Device::cpu();
  auto t = [&](Shape s) { return from_vector(random_values(static_cast<std::size_t>(R::numel(s)), 9), s, cpu); };
  const std::vector<std::pair<Shape, Shape>> bad = {
      {{2, 3}, {4, 5}},             // inner dims differ
      {{3}, {4}},                   // 1-D x 1-D
      {{3}, {4, 5}},                // 1-D x 2-D
      {{4, 5}, {4}},                // 2-D x 1-D
      {{2, 3, 4}, {3, 4, 5}},       // batch dims do not broadcast
      {{2, 1, 3, 4}, {3, 3, 4, 5}},  // nor here
      {{}, {3}},                    // 0-d
      {{3, 4}, {}},
  };
  for (const auto& [sa, sb] : bad) {
    const Tensor a = t(sa), b = t(sb);
    reset_stats();
    try {
      matmul(a, b);
      ADD_FAILURE() << "no std::invalid_argument for " << shape_str(sa) << " x " << shape_str(sb);
    } catch (const std::invalid_argument& e) {
      const std::string msg = e.what();
      for (const std::string& part : {std::string("matmul"), shape_str(sa) + " x " + shape_str(sb)})
        EXPECT_NE(msg.find(part), std::string::npos) << msg << " lacks " << part;
    }
    EXPECT_EQ(stats().kernel_launches, 0u);
  }
}

}  // namespace
