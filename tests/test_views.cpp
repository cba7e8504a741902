// Views (docs/api.md section 8) on both backends: every view op against a float64 reference that
// maps indices on its own (not through the runtime's strides), views of views, zero-size dims,
// storage sharing and aliasing, lifetime, call-time errors, and fusion through views.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <numeric>

#include <defer/defer.hpp>

#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;

namespace {

using Index = std::vector<int64_t>;

int64_t numel(const Shape& s) { return std::accumulate(s.begin(), s.end(), int64_t{1}, std::multiplies<>()); }

// The row-major multi-index of flat position e in shape s.
Index unravel(int64_t e, const Shape& s) {
  Index i(s.size());
  for (std::size_t d = s.size(); d-- > 0;) {
    i[d] = e % s[d];
    e /= s[d];
  }
  return i;
}

int64_t ravel(const Index& i, const Shape& s) {
  int64_t e = 0;
  for (std::size_t d = 0; d < s.size(); ++d) e = e * s[d] + i[d];
  return e;
}

// A host tensor in double: the reference.
struct Ref {
  std::vector<double> v;
  Shape shape;
};

// out[i] = in[source(i)] for every multi-index i of out_shape.
Ref map(const Ref& in, const Shape& out_shape, const std::function<Index(const Index&)>& source) {
  Ref out{std::vector<double>(static_cast<std::size_t>(numel(out_shape))), out_shape};
  for (int64_t e = 0; e < numel(out_shape); ++e)
    out.v[static_cast<std::size_t>(e)] = in.v[static_cast<std::size_t>(ravel(source(unravel(e, out_shape)), in.shape))];
  return out;
}

Ref ref_permute(const Ref& in, const Index& dims) {
  Shape s;
  for (int64_t d : dims) s.push_back(in.shape[static_cast<std::size_t>(d)]);
  return map(in, s, [&](const Index& i) {
    Index j(i.size());
    for (std::size_t k = 0; k < dims.size(); ++k) j[static_cast<std::size_t>(dims[k])] = i[k];
    return j;
  });
}

Ref ref_slice(const Ref& in, std::size_t dim, int64_t start, int64_t count, int64_t step) {
  Shape s = in.shape;
  s[dim] = count;
  return map(in, s, [&](const Index& i) {
    Index j = i;
    j[dim] = start + i[dim] * step;
    return j;
  });
}

Ref ref_select(const Ref& in, std::size_t dim, int64_t index) {
  Shape s = in.shape;
  s.erase(s.begin() + static_cast<std::ptrdiff_t>(dim));
  return map(in, s, [&](const Index& i) {
    Index j = i;
    j.insert(j.begin() + static_cast<std::ptrdiff_t>(dim), index);
    return j;
  });
}

Ref ref_expand(const Ref& in, const Shape& s) {
  return map(in, s, [&](const Index& i) {
    Index j(in.shape.size());
    for (std::size_t k = 0; k < j.size(); ++k) {
      const std::size_t from = i.size() - j.size() + k;
      j[k] = in.shape[k] == 1 ? 0 : i[from];
    }
    return j;
  });
}

Ref ref_reshape(const Ref& in, const Shape& s) { return Ref{in.v, s}; }

class Views : public ::testing::TestWithParam<DeviceKind> {
 protected:
  void SetUp() override {
    if (GetParam() == DeviceKind::cuda && !cuda_available()) GTEST_SKIP() << "no CUDA device";
    dev_ = GetParam() == DeviceKind::cuda ? Device::cuda(0) : Device::cpu();
  }
  // A random tensor and its reference.
  std::pair<Tensor, Ref> make(const Shape& s, unsigned seed) {
    std::vector<float> v = random_values(static_cast<std::size_t>(numel(s)), seed);
    return {from_vector(v, s, dev_), Ref{std::vector<double>(v.begin(), v.end()), s}};
  }
  void expect_equal(const TensorAwait& got, const Ref& want, const std::string& what) {
    const Tensor& t = wait(got);
    ASSERT_EQ(t.shape(), want.shape) << what;
    const std::vector<float> v = to_vector(t);
    ASSERT_EQ(v.size(), want.v.size()) << what;
    for (std::size_t i = 0; i < v.size(); ++i) ASSERT_EQ(static_cast<double>(v[i]), want.v[i]) << what << " at " << i;
  }
  Device dev_ = Device::cpu();
};

TEST_P(Views, EveryViewMatchesTheReferenceAndLaunchesNothing) {
  auto [x, r] = make({2, 3, 4}, 1);
  std::vector<std::pair<TensorAwait, Ref>> cases;
  std::vector<std::string> names;
  auto add = [&](TensorAwait v, Ref want, const char* name) {
    cases.emplace_back(std::move(v), std::move(want));
    names.push_back(name);
  };
  add(permute(x, {2, 0, 1}), ref_permute(r, {2, 0, 1}), "permute");
  add(permute(x, {-1, 1, 0}), ref_permute(r, {2, 1, 0}), "permute with negative dims");
  add(transpose(x, 0, 2), ref_permute(r, {2, 1, 0}), "transpose(0, 2)");
  add(transpose(x), ref_permute(r, {0, 2, 1}), "transpose()");
  add(slice(x, 2, 1, 4, 2), ref_slice(r, 2, 1, 2, 2), "slice step 2");
  add(slice(x, -1, -3, 100), ref_slice(r, 2, 1, 3, 1), "slice negative start, clamped end");
  add(slice(x, 1, 2, 1), ref_slice(r, 1, 2, 0, 1), "empty slice");
  add(select(x, 1, 2), ref_select(r, 1, 2), "select");
  add(select(x, 1, -1), ref_select(r, 1, 2), "select negative index");
  add(unsqueeze(x, 1), ref_reshape(r, {2, 1, 3, 4}), "unsqueeze");
  add(unsqueeze(x, -1), ref_reshape(r, {2, 3, 4, 1}), "unsqueeze at the end");
  add(squeeze(unsqueeze(x, 0), 0), r, "squeeze");
  add(view(x, {6, 4}), ref_reshape(r, {6, 4}), "view");
  add(reshape(x, {4, -1}), ref_reshape(r, {4, 6}), "reshape -1");
  add(expand(unsqueeze(x, 0), {3, -1, -1, -1}), ref_expand(r, {3, 2, 3, 4}), "expand a new dim");
  add(expand(slice(x, 1, 0, 1), {5, 2, 7, 4}), ref_expand(ref_slice(r, 1, 0, 1, 1), {5, 2, 7, 4}),
               "expand extent-1 dims and a new one");
  current_stream(dev_).synchronize();
  reset_stats();
  for (auto& c : cases) wait(c.first);
  EXPECT_EQ(stats().kernel_launches, 0u) << "views of materialized tensors launch nothing";
  for (std::size_t i = 0; i < cases.size(); ++i) expect_equal(cases[i].first, cases[i].second, names[i]);
}

TEST_P(Views, ViewsOfViewsCompose) {
  auto [x, r] = make({4, 5, 6}, 2);
  TensorAwait v = slice(transpose(slice(x, 2, 1, 6, 2), 0, 2), 1, 1, 5);  // [3, 4, 4]
  Ref want = ref_slice(ref_permute(ref_slice(r, 2, 1, 3, 2), {2, 1, 0}), 1, 1, 4, 1);
  expect_equal(v, want, "slice(transpose(slice))");
  expect_equal(select(v, 0, 1), ref_select(want, 0, 1), "select of that");
  expect_equal(expand(unsqueeze(select(v, 2, 3), 0), {2, 3, 4}), ref_expand(ref_reshape(ref_select(want, 2, 3), {1, 3, 4}), {2, 3, 4}),
               "expand(unsqueeze(select))");
  // A view of a strided view, where strides allow it: split the middle dim of a transposed tensor.
  TensorAwait t = transpose(x, 0, 1);  // [5, 4, 6], strides [6, 30, 1]
  expect_equal(view(t, {5, 2, 2, 6}), ref_reshape(ref_permute(r, {1, 0, 2}), {5, 2, 2, 6}), "view of a transpose");
}

TEST_P(Views, ReshapeCopiesOnlyWhenTheStridesDoNotAllowAView) {
  auto [x, r] = make({3, 4}, 3);
  current_stream(dev_).synchronize();
  reset_stats();
  Tensor flat = wait(reshape(transpose(x), {12}));
  EXPECT_EQ(stats().kernel_launches, 1u) << "flattening a transposed tensor needs one copy";
  EXPECT_TRUE(flat.is_contiguous());
  expect_equal(TensorAwait(flat), ref_reshape(ref_permute(r, {1, 0}), {12}), "reshape of a transpose");
  reset_stats();
  Tensor v = wait(reshape(x, {2, 6}));
  EXPECT_EQ(stats().kernel_launches, 0u);
  EXPECT_EQ(v.data_ptr(), x.data_ptr()) << "a reshape that strides allow is a view";
  EXPECT_THROW(view(transpose(x), {12}), std::invalid_argument);
}

TEST_P(Views, ViewsShareStorageAndWritesAreSeenThroughEveryView) {
  auto [x, r] = make({4, 6}, 4);
  Tensor t = wait(transpose(x));
  EXPECT_EQ(t.data_ptr(), x.data_ptr()) << "transpose(x) points into x's storage";
  EXPECT_EQ(t.strides(), (Shape{1, 6}));
  EXPECT_FALSE(t.is_contiguous());
  Tensor s = wait(slice(x, 1, 2, 5));
  EXPECT_EQ(s.storage_offset(), 2);
  EXPECT_EQ(static_cast<const char*>(s.data_ptr()), static_cast<const char*>(x.data_ptr()) + 2 * sizeof(float));
  if (dev_.is_cpu()) {
    current_stream(dev_).synchronize();
    static_cast<float*>(s.data_ptr())[6 + 1] = 123.f;  // s[1, 1] is x[1, 3]
    EXPECT_EQ(to_vector(x)[1 * 6 + 3], 123.f);
    EXPECT_EQ(to_vector(t)[3 * 4 + 1], 123.f) << "t[3, 1] is x[1, 3]";
  }
}

TEST_P(Views, AViewKeepsItsStorageAlive) {
  TensorAwait v;
  Ref want;
  {
    auto [x, r] = make({5, 7}, 5);
    v = select(transpose(x), 0, 3);  // x[:, 3]
    want = ref_select(ref_permute(r, {1, 0}), 0, 3);
    wait(v);
  }  // x's handle is gone; the view holds the storage (ASan checks the reads below)
  for (int i = 0; i < 3; ++i) {
    std::vector<Tensor> churn;
    for (int k = 0; k < 4; ++k) churn.push_back(full({35}, -1.f, DType::f32, dev_));
  }
  expect_equal(v, want, "a view outliving its base");
}

TEST_P(Views, ZeroSizeDims) {
  auto [x, r] = make({3, 0, 2}, 6);
  expect_equal(permute(x, {2, 1, 0}), ref_permute(r, {2, 1, 0}), "permute of an empty tensor");
  expect_equal(reshape(x, {0, 5}), ref_reshape(r, {0, 5}), "reshape of an empty tensor");
  expect_equal(expand(unsqueeze(x, 0), {4, 3, 0, 2}), Ref{{}, {4, 3, 0, 2}}, "expand of an empty tensor");
  expect_equal(slice(x, 0, 1, 1), Ref{{}, {0, 0, 2}}, "an empty slice");
  expect_equal(contiguous(transpose(x, 0, 2)), ref_permute(r, {2, 1, 0}), "contiguous of an empty tensor");
  EXPECT_EQ(split(x, 2, 1).size(), 1u);
}

TEST_P(Views, ContiguousCatAndSplit) {
  auto [x, r] = make({4, 6}, 7);
  auto [y, q] = make({4, 2}, 8);
  current_stream(dev_).synchronize();
  reset_stats();
  Tensor same = wait(contiguous(x));
  EXPECT_EQ(same.data_ptr(), x.data_ptr()) << "contiguous of a contiguous tensor is that tensor";
  EXPECT_EQ(stats().kernel_launches, 0u);
  Tensor c = wait(contiguous(transpose(x)));
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(stats().kernel_launches, 1u);
  expect_equal(TensorAwait(c), ref_permute(r, {1, 0}), "contiguous(transpose)");

  Ref joined{{}, {4, 8}};
  joined.v.resize(32);
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 8; ++j)
      joined.v[static_cast<std::size_t>(i * 8 + j)] = j < 6 ? r.v[static_cast<std::size_t>(i * 6 + j)]
                                                            : q.v[static_cast<std::size_t>(i * 2 + j - 6)];
  expect_equal(cat({x, y}, 1), joined, "cat along dim 1");
  expect_equal(cat({transpose(x), transpose(y)}, -2), ref_permute(joined, {1, 0}), "cat of strided views along dim 0");
  EXPECT_THROW(cat({x, transpose(y)}, 0), std::invalid_argument);

  std::vector<TensorAwait> parts = split(x, 4, 1);
  ASSERT_EQ(parts.size(), 2u);
  expect_equal(parts[0], ref_slice(r, 1, 0, 4, 1), "split part 1");
  expect_equal(parts[1], ref_slice(r, 1, 4, 2, 1), "split part 2 (shorter)");
  EXPECT_EQ(wait(parts[1]).data_ptr(), static_cast<const char*>(x.data_ptr()) + 4 * sizeof(float));
}

TEST_P(Views, ElementwiseChainsOverViewsAreOneKernelReadingInPlace) {
  auto [x, r] = make({3, 4, 5}, 9);
  auto [y, q] = make({4, 3, 5}, 10);
  auto [z, p] = make({5}, 11);
  current_stream(dev_).synchronize();
  reset_stats();
  // permute + add + mul over views of materialized tensors: one fused kernel, no copies.
  TensorAwait out = (permute(x, {1, 0, 2}) + y) * expand(z, {4, 3, 5});
  Ref px = ref_permute(r, {1, 0, 2});
  Ref want = px;
  for (std::size_t i = 0; i < want.v.size(); ++i)
    want.v[i] = static_cast<float>(static_cast<float>(px.v[i] + q.v[i]) * static_cast<float>(p.v[i % 5]));
  expect_equal(out, want, "(permute(x) + y) * expand(z)");
  EXPECT_EQ(stats().kernel_launches, 1u);
  EXPECT_EQ(stats().fused_kernels, 1u);

  reset_stats();
  auto [a, ra] = make({6, 7}, 12);
  auto [b, rb] = make({7, 6}, 13);
  TensorAwait sum_t = transpose(a, 0, 1) + b;  // reads a in place
  Ref ta = ref_permute(ra, {1, 0});
  for (std::size_t i = 0; i < ta.v.size(); ++i) ta.v[i] = static_cast<float>(ta.v[i] + rb.v[i]);
  expect_equal(sum_t, ta, "transpose(a) + b");
  EXPECT_EQ(stats().kernel_launches, 1u) << "no copy of the transposed operand";
}

// f(i) element by element, rounded to f32 like the kernels.
Ref pointwise(const Ref& a, const std::function<double(double, std::size_t)>& f) {
  Ref out = a;
  for (std::size_t i = 0; i < out.v.size(); ++i) out.v[i] = static_cast<float>(f(a.v[i], i));
  return out;
}

TEST_P(Views, AViewBetweenElementwiseOpsKeepsOneFusedKernel) {
  auto [a, ra] = make({4, 6}, 20);
  auto [b, rb] = make({4, 6}, 21);
  auto [c, rc] = make({6, 4}, 22);
  auto [d, rd] = make({4, 3, 2}, 23);
  current_stream(dev_).synchronize();
  const Ref ab = pointwise(ra, [&](double x, std::size_t i) { return static_cast<float>(x) * static_cast<float>(rb.v[i]); });
  struct Case {
    const char* name;
    std::function<TensorAwait()> build;
    Ref want;
  };
  std::vector<Case> cases;
  cases.push_back({"transpose(a * b) + c", [&] { return transpose(a * b) + c; },
                   pointwise(ref_permute(ab, {1, 0}), [&](double x, std::size_t i) { return static_cast<float>(x) + static_cast<float>(rc.v[i]); })});
  cases.push_back({"slice(a * b) * 2", [&] { return slice(a * b, 1, 1, 6, 2) * 2.f; },
                   pointwise(ref_slice(ab, 1, 1, 3, 2), [](double x, std::size_t) { return x * 2; })});
  cases.push_back({"view(a * b, [4, 3, 2]) - d", [&] { return view(a * b, {4, 3, 2}) - d; },
                   pointwise(ref_reshape(ab, {4, 3, 2}), [&](double x, std::size_t i) { return static_cast<float>(x) - static_cast<float>(rd.v[i]); })});
  cases.push_back({"exp(select(transpose(a * b), 0, 2)) as a view of a view", [&] { return exp(select(transpose(a * b), 0, 2)); },
                   pointwise(ref_select(ref_permute(ab, {1, 0}), 0, 2), [](double x, std::size_t) { return std::exp(static_cast<float>(x)); })});
  cases.push_back({"unsqueeze(a * b, 0) + d-like broadcast", [&] { return unsqueeze(a * b, 1) * expand(unsqueeze(b, 1), {4, 5, 6}); },
                   [&] {
                     Ref e = ref_expand(ref_reshape(ab, {4, 1, 6}), {4, 5, 6});
                     Ref bb = ref_expand(ref_reshape(rb, {4, 1, 6}), {4, 5, 6});
                     return pointwise(e, [&](double x, std::size_t i) { return static_cast<float>(x) * static_cast<float>(bb.v[i]); });
                   }()});
  for (Case& k : cases) {
    reset_stats();
    TensorAwait out = k.build();
    wait(out);
    EXPECT_EQ(stats().kernel_launches, 1u) << k.name;
    EXPECT_EQ(stats().fused_kernels, 1u) << k.name;
    expect_equal(out, k.want, k.name);
  }
  // A reshape that strides cannot express inside the group (flattening a transposed product):
  // still correct, with the product written and then copied.
  Ref flat = ref_reshape(ref_permute(ab, {1, 0}), {24});
  expect_equal(exp(reshape(transpose(a * b), {24})), pointwise(flat, [](double x, std::size_t) { return std::exp(static_cast<float>(x)); }),
               "exp(reshape(transpose(a * b)))");
  // A view of a product that someone else also reads: the product is written once, the view reads it.
  TensorAwait p = a * b;
  expect_equal(transpose(p) + c, cases[0].want, "a shared product read through a view");
  expect_equal(p, ab, "the shared product");
}

TEST_P(Views, BadDimsIndicesAndShapesThrowAtTheCallNamingTheOp) {
  auto [x, r] = make({2, 3}, 14);
  auto expect_error = [](const std::function<void()>& call, const std::string& op, const std::string& detail) {
    try {
      call();
      ADD_FAILURE() << op << ": no exception";
    } catch (const std::invalid_argument& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(op + ":", 0), 0u) << msg;
      EXPECT_NE(msg.find(detail), std::string::npos) << msg << " (should mention " << detail << ")";
    }
  };
  expect_error([&] { permute(x, {0, 0}); }, "permute", "repeats");
  expect_error([&] { permute(x, {0}); }, "permute", "[2, 3]");
  expect_error([&] { permute(x, {0, 2}); }, "permute", "dim 2");
  expect_error([&] { transpose(x, 0, 5); }, "transpose", "dim 5");
  expect_error([&] { transpose(from_vector({1, 2}, {2}, dev_)); }, "transpose", "[2]");
  expect_error([&] { unsqueeze(x, 4); }, "unsqueeze", "dim 4");
  expect_error([&] { squeeze(x, 0); }, "squeeze", "extent 2");
  expect_error([&] { expand(x, {2, 4}); }, "expand", "[2, 3]");
  expect_error([&] { expand(x, {3}); }, "expand", "fewer dims");
  expect_error([&] { slice(x, 1, 0, 2, 0); }, "slice", "step");
  expect_error([&] { slice(x, 2, 0, 1); }, "slice", "dim 2");
  expect_error([&] { select(x, 0, 2); }, "select", "index 2");
  expect_error([&] { select(x, 1, -4); }, "select", "index -4");
  expect_error([&] { view(x, {4, -1}); }, "view", "[4, -1]");
  expect_error([&] { reshape(x, {-1, -1}); }, "reshape", "-1");
  expect_error([&] { reshape(x, {7}); }, "reshape", "[7]");
  expect_error([&] { split(x, 0, 1); }, "split", "size");
  expect_error([&] { cat({x, from_vector({1, 2}, {1, 2}, dev_)}, 0); }, "cat", "[1, 2]");
  expect_error([&] { cat({}, 0); }, "cat", "at least one");
  // The runtime stays usable.
  expect_equal(transpose(x), ref_permute(r, {1, 0}), "after the errors");
}

INSTANTIATE_TEST_SUITE_P(Devices, Views, ::testing::Values(DeviceKind::cpu, DeviceKind::cuda),
                         [](const auto& info) { return info.param == DeviceKind::cpu ? "cpu" : "cuda"; });

}  // namespace
