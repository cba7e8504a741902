// Fusion at wait time: element-wise subgraphs become one kernel; results equal the unfused ones;
// intermediates nobody holds are never materialized; caps split long chains; errors stay cached.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <regex>
#include <string>

#include <defer/defer.hpp>

#include "graph/op_node.hpp"
#include "graph/replay.hpp"
#include "runtime/stream_ordered_pool.hpp"
#include "reference.hpp"
#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;

namespace {

// Runs make() twice, fused and unfused, and returns both results.
template <class F>
std::pair<std::vector<float>, std::vector<float>> fused_and_unfused(F make) {
  set_fusion_enabled(false);
  auto unfused = to_vector(wait(make()));
  set_fusion_enabled(true);
  auto fused = to_vector(wait(make()));
  return {fused, unfused};
}

class Fusion : public ::testing::TestWithParam<DeviceKind> {
 protected:
  void SetUp() override {
    if (GetParam() == DeviceKind::cuda && !cuda_available()) GTEST_SKIP() << "no CUDA device";
    dev_ = GetParam() == DeviceKind::cuda ? Device::cuda(0) : Device::cpu();
  }
  TensorAwait input(const Shape& s, unsigned seed, float lo = -2.f, float hi = 2.f) {
    int64_t n = 1;
    for (auto e : s) n *= e;
    return from_vector(random_values(static_cast<std::size_t>(n), seed, lo, hi), s, dev_);
  }
  Device dev_ = Device::cpu();
};

}  // namespace

TEST_P(Fusion, AChainOfEightIsOneLaunchAndOneFusedKernel) {
  TensorAwait x = input({1000, 33}, 1);
  TensorAwait y = input({33}, 2, 0.5f, 2.f);
  auto chain = [&] { return sigmoid(relu(exp(x * 0.5f) + y) - 1.f) / y * 3.f + x; };
  reset_stats();
  TensorAwait r = chain();
  wait(r);
  EXPECT_EQ(stats().kernel_launches, 1u);
  EXPECT_EQ(stats().fused_kernels, 1u);
  auto [fused, unfused] = fused_and_unfused(chain);
  EXPECT_EQ(fused, unfused) << "fused and unfused use the same per-op math";
}

TEST_P(Fusion, EveryElementwiseOpAndBroadcastPatternMatchesUnfused) {
  using Un = TensorAwait (*)(const TensorAwait&);
  const Un unary[] = {defer::neg, defer::abs, defer::exp, defer::tanh, defer::sigmoid, defer::relu,
                      defer::silu, defer::gelu, defer::gelu_tanh};
  using Bin = TensorAwait (*)(const TensorAwait&, const TensorAwait&);
  const Bin binary[] = {defer::add, defer::sub, defer::mul, defer::div, defer::maximum, defer::minimum};
  const std::vector<std::pair<Shape, Shape>> shapes{{{7, 5}, {7, 5}}, {{7, 5}, {5}}, {{7, 1}, {1, 5}},
                                                    {{3, 1, 4}, {2, 1}}, {{}, {6}}, {{4097}, {1}}};
  unsigned seed = 10;
  for (const auto& [sa, sb] : shapes) {
    TensorAwait a = input(sa, seed++), b = input(sb, seed++, 0.5f, 3.f);
    for (Un u : unary)
      for (Bin op : binary) {
        auto make = [&] { return op(u(a) * 1.5f, sqrt(abs(b)) + 0.25f) - log(abs(b)); };
        auto [fused, unfused] = fused_and_unfused(make);
        ASSERT_EQ(fused, unfused) << shape_str(sa) << " " << shape_str(sb);
      }
  }
}

TEST_P(Fusion, IntermediatesNobodyHoldsAreNeverMaterialized) {
  const int64_t n = 1 << 20;  // 4 MiB per tensor
  TensorAwait x = input({n}, 3);
  current_stream(dev_).synchronize();
  reset_peak_memory_stats(dev_);
  const auto before = memory_stats(dev_);
  TensorAwait r = x;
  for (int i = 0; i < 8; ++i) r = r * 1.01f + 0.5f;
  wait(r);
  const auto peak = memory_stats(dev_).peak_allocated_bytes - before.allocated_bytes;
  EXPECT_LE(peak, static_cast<std::size_t>(n) * 4 + (2 << 20)) << "only the result was allocated";
}

TEST_P(Fusion, HeldIntermediatesAreMaterializedOnceAndKeepTheirTensor) {
  TensorAwait x = input({64, 64}, 4);
  TensorAwait h = tanh(x) * 2.f;  // held by the user
  TensorAwait r = h + h * h;
  reset_stats();
  wait(r);
  EXPECT_EQ(stats().kernel_launches, 1u) << "h and r in one kernel with two outputs";
  EXPECT_TRUE(h.is_ready());
  const void* p = wait(h).data_ptr();
  reset_stats();
  EXPECT_EQ(wait(h).data_ptr(), p);
  EXPECT_EQ(stats().kernel_launches, 0u);
  const auto hv = to_vector(wait(h)), rv = to_vector(wait(r));
  for (std::size_t i = 0; i < hv.size(); ++i) ASSERT_FLOAT_EQ(rv[i], hv[i] + hv[i] * hv[i]);
}

TEST_P(Fusion, LongChainsAreSplitAtTheCapsNeverFail) {
  TensorAwait x = input({100}, 5);
  TensorAwait c = input({100}, 6);
  TensorAwait b = x;
  for (int i = 0; i < 1000; ++i) b = b + c;  // the loop must not compile 1000 distinct kernels
  reset_stats();
  const auto got = to_vector(wait(b));
  EXPECT_GT(stats().kernel_launches, 1u);
  EXPECT_LT(stats().kernel_launches, 20u);
  const auto xv = to_vector(wait(x)), cv = to_vector(wait(c));
  for (std::size_t i = 0; i < got.size(); ++i) {
    double want = xv[i];
    for (int k = 0; k < 1000; ++k) want = static_cast<float>(want + cv[i]);
    ASSERT_FLOAT_EQ(got[i], static_cast<float>(want));
  }
  // Many scalars split too.
  TensorAwait s = x;
  for (int i = 0; i < 100; ++i) s = s * 1.001f;
  const auto sv = to_vector(wait(s));
  EXPECT_NEAR(sv[0], xv[0] * std::pow(1.001, 100), 1e-4 * std::abs(sv[0]) + 1e-6);
}

TEST_P(Fusion, NonElementwiseOpsBreakGroupsAndStayCorrect) {
  TensorAwait x = input({16, 32}, 7);
  TensorAwait w = input({32, 32}, 8);
  auto make = [&] {
    TensorAwait h = gelu(matmul(x, w) * 0.1f + 1.f);
    return layer_norm(softmax(h * 0.5f, -1) + h, input({32}, 9), input({32}, 10)) + sum(h, -1, true);
  };
  auto [fused, unfused] = fused_and_unfused(make);
  ASSERT_EQ(fused.size(), unfused.size());
  for (std::size_t i = 0; i < fused.size(); ++i) ASSERT_NEAR(fused[i], unfused[i], 1e-5 * (1 + std::abs(unfused[i])));
}

TEST_P(Fusion, FailedInputsStayCachedErrors) {
  Await<Tensor> bad = awaitable([]() -> Tensor { throw std::runtime_error("no input today"); });
  TensorAwait r = relu(bad * 2.f) + 1.f;
  for (int i = 0; i < 2; ++i) {
    try {
      wait(r);
      FAIL();
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "no input today");
    }
  }
}

TEST_P(Fusion, WaitAllPlansResultsTogether) {
  TensorAwait x = input({32, 64}, 11);
  auto results = [&] {
    TensorAwait a = exp(x * 0.5f);  // shared by all three
    return std::vector<TensorAwait>{a * 2.f, a + 1.f, relu(a - 1.5f)};
  };
  reset_stats();
  std::vector<TensorAwait> separately = results();
  std::vector<std::vector<float>> want;
  for (const auto& r : separately) want.push_back(to_vector(wait(r)));
  const auto separate_launches = stats().kernel_launches;
  reset_stats();
  std::vector<TensorAwait> together = results();
  const std::vector<Tensor> got = wait_all(together);
  EXPECT_EQ(stats().kernel_launches, 1u) << "one fused kernel with three outputs";
  EXPECT_GT(separate_launches, 1u);
  ASSERT_EQ(got.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(to_vector(got[i]), want[i]);
    EXPECT_EQ(got[i].data_ptr(), wait(together[i]).data_ptr()) << "the results are the Awaits' own tensors";
  }
  // Results of other shapes and kinds, dependent results, done results and repeats work too.
  TensorAwait h = tanh(x);
  TensorAwait s = sum(h, 1);
  const auto mixed = wait_all({s, h, h * 2.f, x, s});
  EXPECT_EQ(mixed[0].shape(), (Shape{32}));
  EXPECT_EQ(mixed[1].data_ptr(), wait(h).data_ptr());
  EXPECT_EQ(mixed[4].data_ptr(), mixed[0].data_ptr());
  EXPECT_THROW(wait_all({x, TensorAwait()}), std::invalid_argument);
}

TEST_P(Fusion, AFailedGroupFailsItsConsumerGroupsWithTheSameError) {
  // The first group fails (its output cannot be allocated); the second group reads its output.
  TensorAwait x = input({1 << 10}, 13);
  TensorAwait first = exp(x) * 2.f;
  TensorAwait second = sum(first, 0, true) + first * 0.5f;  // a reduction closes the first group
  TensorAwait r = relu(second) - 1.f;
  detail::pool_for(dev_).fail_requests(1, 1);
  EXPECT_THROW(wait(r), OutOfMemory);
  EXPECT_THROW(wait(r), OutOfMemory) << "cached";
  EXPECT_THROW(wait(first), OutOfMemory);
}

TEST_P(Fusion, WaitAllReportsAnErrorAfterRunningTheRest) {
  Await<Tensor> bad = awaitable([]() -> Tensor { throw std::runtime_error("broken input"); });
  TensorAwait x = input({8}, 12);
  TensorAwait good = x * 3.f;
  TensorAwait failing = bad + 1.f;
  EXPECT_THROW(wait_all({good, failing}), std::runtime_error);
  EXPECT_TRUE(good.is_ready());
  EXPECT_EQ(to_vector(wait(good)).size(), 8u);
}

// ---- element-wise prologues fused into sum, mean and max.

TEST_P(Fusion, AReductionReadsItsElementwisePrologueInOneKernel) {
  const ref::Dims shape{6, 37, 5};
  TensorAwait x = input(Shape(shape.begin(), shape.end()), 30);
  TensorAwait y = input({37, 1}, 31, 0.5f, 2.f);  // broadcast along the last dim
  const ref::Vec xv = ref::widen(to_vector(wait(x))), yv = ref::widen(to_vector(wait(y)));
  // The prologue, in float64: exp(x * 0.5) * y - x
  ref::Vec pro(xv.size());
  for (std::size_t e = 0; e < xv.size(); ++e) pro[e] = std::exp(xv[e] * 0.5) * yv[(e / 5) % 37] - xv[e];
  using R = TensorAwait (*)(const TensorAwait&, int, bool);
  const std::pair<R, ref::Reduce> ops[] = {{defer::sum, ref::Reduce::sum}, {defer::mean, ref::Reduce::mean},
                                           {defer::max, ref::Reduce::max}};
  for (const auto& [op, rop] : ops)
    for (int dim : {0, 1, 2, -1})
      for (bool keepdim : {false, true}) {
        // Built in a function so that no temporary of the prologue is alive at the wait (a live
        // Await is one somebody may still wait: it would be written).
        auto make = [&, op = op] { return op(exp(x * 0.5f) * y - x, dim, keepdim); };
        TensorAwait r = make();
        reset_stats();
        const auto got = to_vector(wait(r));
        EXPECT_EQ(stats().kernel_launches, 1u) << "dim " << dim;
        EXPECT_EQ(stats().fused_kernels, 1u);
        const ref::Vec want = ref::reduce(pro, shape, dim < 0 ? dim + 3 : dim, rop);
        ASSERT_EQ(got.size(), want.size());
        for (std::size_t k = 0; k < got.size(); ++k)
          ASSERT_NEAR(got[k], want[k], 1e-5 * (1 + std::abs(want[k]))) << "dim " << dim << " element " << k;
      }
}

TEST_P(Fusion, AReductionOfOneElementwiseOpFuses) {
  TensorAwait x = input({64, 33}, 32);
  auto make = [&] { return sum(x * x, 1); };
  TensorAwait r = make();
  reset_stats();
  const auto got = to_vector(wait(r));
  EXPECT_EQ(stats().kernel_launches, 1u);
  const auto xv = to_vector(wait(x));
  for (int row = 0; row < 64; ++row) {
    double want = 0;
    for (int c = 0; c < 33; ++c) want += double(xv[row * 33 + c]) * xv[row * 33 + c];
    ASSERT_NEAR(got[static_cast<std::size_t>(row)], want, 1e-5 * want);
  }
}

TEST_P(Fusion, APrologueSomebodyHoldsIsWrittenAndNotFusedIntoTheReduction) {
  TensorAwait x = input({10, 20}, 33);
  TensorAwait pro = relu(x) + 0.5f;  // held: must get its tensor
  TensorAwait s = mean(pro, 1);
  reset_stats();
  const auto sv = to_vector(wait(s));
  EXPECT_EQ(stats().kernel_launches, 2u) << "the fused prologue, then the reduction over its tensor";
  const auto pv = to_vector(wait(pro));
  EXPECT_EQ(stats().kernel_launches, 2u) << "the prologue's tensor was written by the first kernel";
  for (int r = 0; r < 10; ++r) {
    double want = 0;
    for (int c = 0; c < 20; ++c) want += pv[static_cast<std::size_t>(r * 20 + c)];
    ASSERT_NEAR(sv[static_cast<std::size_t>(r)], want / 20, 1e-5);
  }
}

TEST_P(Fusion, APrologueReadElsewhereStaysCorrect) {
  TensorAwait x = input({8, 16}, 34);
  auto make = [&] {
    TensorAwait t = tanh(x) * 2.f;
    return sum(t, 1, true) + t;  // t is read by the reduction and by the add
  };
  auto [fused, unfused] = fused_and_unfused(make);
  ASSERT_EQ(fused.size(), unfused.size());
  for (std::size_t i = 0; i < fused.size(); ++i) ASSERT_NEAR(fused[i], unfused[i], 1e-5 * (1 + std::abs(unfused[i])));
}

TEST_P(Fusion, MaxOfAProloguePropagatesNaN) {
  std::vector<float> v = random_values(12, 35);
  v[7] = std::nanf("");
  TensorAwait x = from_vector(v, {3, 4}, dev_);
  const auto got = to_vector(wait(max(abs(x) + 1.f, 1)));
  EXPECT_FALSE(std::isnan(got[0]));
  EXPECT_TRUE(std::isnan(got[1])) << "row 1 holds the NaN";
  EXPECT_FALSE(std::isnan(got[2]));
}

INSTANTIATE_TEST_SUITE_P(Backends, Fusion, ::testing::Values(DeviceKind::cpu, DeviceKind::cuda),
                         [](const auto& param_info) { return param_info.param == DeviceKind::cpu ? "cpu" : "cuda"; });

// Whole element-wise DAGs: sibling branches meet in one kernel.
TEST_P(Fusion, SiblingBranchesFuseIntoOneKernel) {
  TensorAwait x = input({64, 33}, 40);
  auto dag = [&] { return sigmoid((tanh(x * .5f) + 1.f) * relu(x - .25f)) * 2.f; };
  reset_stats();
  const std::vector<float> got = to_vector(wait(dag()));
  EXPECT_EQ(stats().kernel_launches, 1u);
  EXPECT_EQ(stats().fused_kernels, 1u);
  const std::vector<float> xs = to_vector(wait(x));
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double v = xs[i];
    const double want = 2.0 * ref::sigmoid((std::tanh(v * .5) + 1.0) * std::max(v - .25, 0.0));
    ASSERT_NEAR(got[i], want, 1e-5 * std::fabs(want) + 1e-7) << "element " << i;
  }
  auto [fused, unfused] = fused_and_unfused(dag);
  EXPECT_EQ(fused, unfused);
}

// Attention's `scores * scale + mask`, the mask an element-wise chain over a [B, 1, 1, L] padding
// vector broadcast against [B, H, L, L] scores: one kernel, the small chain recomputed per element.
TEST_P(Fusion, ABroadcastOperandChainIsInlinedIntoItsConsumer) {
  const Shape scores_shape{2, 3, 4, 4};
  TensorAwait scores = input(scores_shape, 41);
  TensorAwait keep = input({2, 1, 1, 4}, 42, 0.f, 1.f);
  auto graph = [&] {
    TensorAwait mask = (to(gt(keep, 0.5f), DType::f32) - 1.f) * 1e4f;  // 0 where kept, -1e4 elsewhere
    return scores * 0.125f + mask;
  };
  reset_stats();
  const std::vector<float> got = to_vector(wait(graph()));
  EXPECT_EQ(stats().kernel_launches, 1u);
  EXPECT_EQ(stats().fused_kernels, 1u);
  const std::vector<float> s = to_vector(wait(scores)), k = to_vector(wait(keep));
  for (std::size_t i = 0; i < got.size(); ++i) {
    const std::size_t b = i / 48, key = i % 4;
    const double mask = k[b * 4 + key] > 0.5f ? 0.0 : -1e4;
    ASSERT_NEAR(got[i], s[i] * 0.125 + mask, 1e-3) << "element " << i;
  }
  auto [fused, unfused] = fused_and_unfused(graph);
  EXPECT_EQ(fused, unfused);
}

// A small operand somebody still holds must be written as itself: it is not inlined.
TEST_P(Fusion, AHeldBroadcastOperandIsNotInlined) {
  TensorAwait scores = input({2, 4, 4}, 43);
  TensorAwait keep = input({2, 1, 4}, 44);
  TensorAwait mask = relu(keep) * 2.f;  // held here
  TensorAwait out = scores + mask;
  reset_stats();
  wait(out);
  EXPECT_EQ(stats().kernel_launches, 2u) << "the mask's group and the sum";
  EXPECT_TRUE(mask.is_ready()) << "a held intermediate gets its tensor";
}

// explain() asks the planner: its kernel count is what the wait then launches, with fusion on or
// off, for a first sighting and for a replay.
TEST_P(Fusion, ExplainCountsWhatTheWaitLaunches) {
  TensorAwait x = input({16, 8}, 45);
  TensorAwait w = input({8, 8}, 46);
  TensorAwait g = input({8}, 47, 0.5f, 1.5f);
  TensorAwait b = input({8}, 48);
  const std::vector<std::pair<const char*, std::function<TensorAwait()>>> graphs{
      {"chain", [&] { return exp(x * 0.5f) + 1.f; }},
      {"reduction with a prologue", [&] { return sum(relu(x) * 2.f, 1); }},
      {"dag", [&] { return sigmoid((tanh(x * .5f) + 1.f) * relu(x - .25f)) * 2.f; }},
      {"matmul between chains", [&] { return gelu(matmul(relu(x) + 1.f, w) * 0.5f); }},
      {"layer_norm block", [&] { return layer_norm(matmul(x, w) + x, g, b) * 2.f; }},
      {"softmax of a masked score", [&] { return softmax(where(gt(x, 0.f), x, x * 0.f - 1e4f), -1); }},
      {"casts and comparisons", [&] { return to(to(x, DType::f16) * 2.f, DType::f32) + to(lt(x, 0.f), DType::f32); }},
      {"argmax of a chain", [&] { return argmax(exp(x) - 1.f, 1); }},
      {"index_select", [&] { return index_select(x * 2.f, 0, arange(4, DType::i64, dev_)) + 1.f; }},
  };
  const std::regex count(R"(a wait launches (1 graph replaying )?(\d+) kernel)");
  for (bool fusion : {true, false})
    for (const auto& [name, make] : graphs)
      for (int sighting = 0; sighting < 3; ++sighting) {
        set_fusion_enabled(fusion);
        TensorAwait r = make();
        const std::string text = explain(r);
        std::smatch m;
        ASSERT_TRUE(std::regex_search(text, m, count)) << text;
        const bool replay = m[1].matched;
        const auto kernels = std::stoull(m[2].str());
        reset_stats();
        wait(r);
        const Stats st = stats();
        set_fusion_enabled(true);
        const std::string ctx = std::string(name) + (fusion ? " fused" : " unfused") + ", sighting " +
                                std::to_string(sighting) + "\n" + text;
        if (replay) {
          EXPECT_EQ(st.graph_launches, 1u) << ctx;
          EXPECT_EQ(st.kernel_launches, 0u) << ctx;
        } else {
          EXPECT_EQ(st.graph_launches, 0u) << ctx;
          EXPECT_EQ(st.kernel_launches, kernels) << ctx;
        }
      }
  detail::clear_replay_cache();
}

TEST_P(Fusion, ExplainOfAThousandNodesStartsWithASummary) {
  TensorAwait x = input({4}, 49);
  TensorAwait y = x;
  for (int i = 0; i < 1200; ++i) y = i % 2 ? y * 1.0001f : y + 0.001f;
  const std::string text = explain(y);
  EXPECT_EQ(text.rfind("1200 pending ops; a wait launches ", 0), 0u) << text.substr(0, 200);
  // 1200 scalar ops fuse in groups of at most 64 (the scalar cap): about 20 kernels, a line each
  EXPECT_LT(std::count(text.begin(), text.end(), '\n'), 40) << "one line per kernel, not per node";
  reset_stats();
  wait(y);
  std::smatch m;
  const std::regex count(R"(a wait launches (\d+) kernel)");
  ASSERT_TRUE(std::regex_search(text, m, count));
  EXPECT_EQ(stats().kernel_launches, std::stoull(m[1].str()));
}
