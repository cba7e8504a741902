// Graph replay: a plan whose structure and shapes repeat runs from the plan cache as one captured
// launch (a CUDA graph; one queue task on the CPU). Results equal the normal path and a float64
// reference, fresh inputs are read at every replay, replays count as graph launches, and anything
// that changes the structure (scalars, shapes, who holds what, the switches) is not replayed.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <optional>
#include <thread>

#include <defer/defer.hpp>

#include "graph/replay.hpp"
#include "runtime/fault_injection.hpp"
#include "reference.hpp"
#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;

namespace {

class Replay : public ::testing::TestWithParam<DeviceKind> {
 protected:
  void SetUp() override {
    if (GetParam() == DeviceKind::cuda && !cuda_available()) GTEST_SKIP() << "no CUDA device";
    dev_ = GetParam() == DeviceKind::cuda ? Device::cuda(0) : Device::cpu();
    set_graphs_enabled(true);
    set_fusion_enabled(true);
    detail::clear_replay_cache();
  }
  void TearDown() override {
    set_graphs_enabled(true);
    set_fusion_enabled(true);
  }
  Tensor input(const Shape& s, unsigned seed, float lo = -2.f, float hi = 2.f) {
    int64_t n = 1;
    for (auto e : s) n *= e;
    return from_vector(random_values(static_cast<std::size_t>(n), seed, lo, hi), s, dev_);
  }
  Device dev_ = Device::cpu();
};

// A small MLP step: matmul, bias, gelu, matmul, layer_norm (6 nodes; bias+gelu fuse).
struct Mlp {
  Tensor w1, b1, w2, gamma, beta;
  TensorAwait step(const TensorAwait& x) const { return layer_norm(matmul(gelu(matmul(x, w1) + b1), w2), gamma, beta); }
  ref::Vec reference(const std::vector<float>& x, int64_t rows) const {
    const int64_t d = w1.shape()[0], h = w1.shape()[1];
    ref::Vec a = ref::matmul(ref::widen(x), {rows, d}, ref::widen(to_vector(w1)), {d, h});
    const ref::Vec b = ref::widen(to_vector(b1));
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = ref::gelu(a[i] + b[i % b.size()]);
    const ref::Vec o = ref::matmul(a, {rows, h}, ref::widen(to_vector(w2)), {h, d});
    return ref::layer_norm(o, ref::widen(to_vector(gamma)), ref::widen(to_vector(beta)), d, 1e-5);
  }
};

void expect_close(const std::vector<float>& got, const ref::Vec& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * (1.0 + std::abs(want[i]))) << "element " << i;
}

}  // namespace

TEST_P(Replay, RepeatedStepReplaysWithFreshInputsAndMatchesTheReference) {
  const int64_t rows = 8, d = 16, h = 32;
  const Mlp mlp{input({d, h}, 1, -0.5f, 0.5f), input({h}, 2), input({h, d}, 3, -0.5f, 0.5f), input({d}, 4, 0.5f, 1.5f),
                input({d}, 5)};
  std::vector<std::vector<float>> outputs;
  reset_stats();
  for (unsigned step = 0; step < 5; ++step) {
    const auto xv = random_values(static_cast<std::size_t>(rows * d), 100 + step, -1.f, 1.f);
    const Stats before = stats();
    Tensor out = wait(mlp.step(from_vector(xv, {rows, d}, dev_)));
    const Stats after = stats();
    expect_close(to_vector(out), mlp.reference(xv, rows), 1e-4);
    outputs.push_back(to_vector(out));
    if (step == 0) {
      EXPECT_EQ(after.graph_launches - before.graph_launches, 0u) << "a first sighting runs normally";
      EXPECT_EQ(after.kernel_launches - before.kernel_launches, 4u) << "matmul, fused bias+gelu, matmul, layer_norm";
    } else {
      EXPECT_EQ(after.graph_launches - before.graph_launches, 1u) << "step " << step << " is one replay";
      EXPECT_EQ(after.kernel_launches - before.kernel_launches, 0u) << "replayed kernels are not counted singly";
    }
  }
  EXPECT_NE(outputs[3], outputs[4]) << "each replay reads its own input";
}

TEST_P(Replay, ReplayedResultsAreIdenticalToTheNormalPath) {
  const Mlp mlp{input({12, 20}, 6, -0.5f, 0.5f), input({20}, 7), input({20, 12}, 8, -0.5f, 0.5f), input({12}, 9, 0.5f, 1.5f),
                input({12}, 10)};
  const Tensor x = input({5, 12}, 11);
  set_graphs_enabled(false);
  const auto normal = to_vector(wait(mlp.step(x)));
  set_graphs_enabled(true);
  wait(mlp.step(x));  // first sighting
  reset_stats();
  const auto replayed = to_vector(wait(mlp.step(x)));
  EXPECT_EQ(stats().graph_launches, 1u);
  EXPECT_EQ(replayed, normal) << "a replay runs the very same kernels";
}

TEST_P(Replay, AFusedChainReplaysAsOneGraphLaunchAndNothingElse) {
  const Tensor x = input({300, 7}, 12), y = input({7}, 13, 0.5f, 2.f);
  auto chain = [&](const TensorAwait& a) { return sigmoid(relu(exp(a * 0.5f) + y) - 1.f) / y * 3.f + a; };
  const auto expected = to_vector(wait(chain(x)));
  reset_stats();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(to_vector(wait(chain(x))), expected);
  EXPECT_EQ(stats().graph_launches, 3u);
  EXPECT_EQ(stats().kernel_launches, 0u);
  EXPECT_EQ(stats().fused_kernels, 0u);
}

TEST_P(Replay, ANewScalarOrShapeIsANewStructure) {
  const Tensor x = input({64}, 14);
  auto step = [&](const TensorAwait& a, float s) { return exp(a * s) + a; };
  wait(step(x, 2.f));
  wait(step(x, 2.f));
  reset_stats();
  const auto three = to_vector(wait(step(x, 3.f)));  // a first sighting: scalars live in a graph's kernels
  EXPECT_EQ(stats().graph_launches, 0u);
  const auto xv = to_vector(x);
  for (std::size_t i = 0; i < xv.size(); ++i) ASSERT_NEAR(three[i], std::exp(3.0 * xv[i]) + xv[i], 1e-5 * (1 + std::abs(three[i])));
  wait(step(input({65}, 15), 2.f));
  EXPECT_EQ(stats().graph_launches, 0u) << "another shape";
  wait(step(x, 3.f));
  EXPECT_EQ(stats().graph_launches, 1u);
}

TEST_P(Replay, AHeldIntermediateIsPublishedAndChangesTheStructure) {
  const Tensor x = input({40}, 16);
  auto run = [&](bool hold) {
    std::optional<TensorAwait> mid = exp(x * 0.25f);
    TensorAwait out = (*mid + 1.f) * x;
    if (!hold) mid.reset();  // nobody but `out` holds it: fused away, never written
    Tensor o = wait(out);
    std::vector<float> m;
    if (hold) m = to_vector(wait(*mid));
    return std::pair{to_vector(o), m};
  };
  run(false);
  run(false);
  reset_stats();
  auto [o, m] = run(true);  // mid is held: it must be written, so this is not the cached structure
  EXPECT_EQ(stats().graph_launches, 0u);
  auto [o2, m2] = run(true);
  EXPECT_EQ(stats().graph_launches, 1u);
  EXPECT_EQ(o2, o);
  EXPECT_EQ(m2, m) << "the held intermediate is the replay's tensor, not recomputed";
  const auto xv = to_vector(x);
  for (std::size_t i = 0; i < xv.size(); ++i) ASSERT_NEAR(m2[i], std::exp(0.25 * xv[i]), 1e-5);
}

TEST_P(Replay, SwitchedOffNothingIsReplayed) {
  set_graphs_enabled(false);
  const Tensor x = input({64}, 17);
  reset_stats();
  for (int i = 0; i < 4; ++i) wait(tanh(x) * x + 1.f);
  EXPECT_EQ(stats().graph_launches, 0u);
  EXPECT_EQ(stats().kernel_launches, 4u);
}

TEST_P(Replay, WaitAllReplaysTogether) {
  const Tensor x = input({33}, 18), y = input({33}, 19);
  auto run = [&] {
    TensorAwait s = x + y;
    return wait_all({exp(s), s * 2.f});
  };
  const auto first = run();
  reset_stats();
  const auto again = run();
  EXPECT_EQ(stats().graph_launches, 1u);
  EXPECT_EQ(to_vector(again[0]), to_vector(first[0]));
  EXPECT_EQ(to_vector(again[1]), to_vector(first[1]));
}

TEST_P(Replay, AFailedInputIsReportedAsWithoutReplay) {
  const Tensor x = input({16}, 20);
  auto broken = awaitable([]() -> Tensor { throw std::runtime_error("input failed"); });
  wait(exp(x) + x);
  wait(exp(x) + x);
  auto r = exp(broken) + x;
  EXPECT_THROW(wait(r), std::runtime_error);
  EXPECT_EQ(to_vector(wait(exp(x) + x)), to_vector(wait(exp(x) + x))) << "the runtime keeps replaying";
}

TEST_P(Replay, CacheIsBoundedLeastRecentlyUsedFirst) {
  const Tensor x = input({8}, 21);
  auto step = [&](int k) { return exp(x * static_cast<float>(k)) + x; };  // a distinct structure per k
  wait(step(0));
  wait(step(0));  // cached with a plan
  for (int k = 1; k <= static_cast<int>(detail::kMaxReplayPlans); ++k) wait(step(k));  // evicts k = 0
  reset_stats();
  wait(step(0));
  EXPECT_EQ(stats().graph_launches, 0u) << "evicted: a first sighting again";
  wait(step(static_cast<int>(detail::kMaxReplayPlans)));
  wait(step(static_cast<int>(detail::kMaxReplayPlans)));
  EXPECT_EQ(stats().graph_launches, 2u) << "recent structures stay cached";
}

TEST_P(Replay, APlanWhoseReplayKeepsFailingRunsNormallyAndCorrectly) {
  const Tensor x = input({32}, 24);
  auto step = [&] { return relu(x * 3.f) - x; };
  const auto expected = to_vector(wait(step()));
  wait(step());  // cached with a plan and replayed once
  for (int i = 0; i < 3; ++i) {
    detail::fail_launch_after(1);  // the replay's capture fails; the normal path then runs clean
    reset_stats();
    EXPECT_EQ(to_vector(wait(step())), expected) << "a failed replay falls back to the normal path";
    EXPECT_EQ(stats().graph_launches, 0u);
  }
  detail::fail_launch_after(0);
  reset_stats();
  EXPECT_EQ(to_vector(wait(step())), expected);
  EXPECT_EQ(stats().graph_launches, 0u) << "after three failures in a row the plan is not captured again";
  EXPECT_EQ(stats().kernel_launches, 1u);
}

INSTANTIATE_TEST_SUITE_P(Backends, Replay, ::testing::Values(DeviceKind::cpu, DeviceKind::cuda),
                         [](const auto& p) { return p.param == DeviceKind::cpu ? "cpu" : "cuda"; });

// A replay's completion event is recorded after its launch: a consumer on another stream waits for
// the replayed work even while the producer stream is still busy with earlier work.
TEST(ReplayCpu, AnotherStreamWaitsForTheReplayedWork) {
  set_graphs_enabled(true);
  detail::clear_replay_cache();
  const int64_t n = int64_t{1} << 21;
  const Tensor x = from_vector(random_values(static_cast<std::size_t>(n), 22), {n});
  auto step = [&] { return sqrt(abs(x)) * 2.f + x; };
  wait(step());
  const auto expected = to_vector(wait(step()));
  Stream producer = Stream::create(Device::cpu()), consumer = Stream::create(Device::cpu());
  reset_stats();
  std::optional<TensorAwait> result;
  {
    StreamGuard g(producer);
    // Poison the block the replay's output will reuse on this stream, then keep the stream busy so
    // that the replay is still queued when the consumer's work is.
    { Tensor poison = full({n}, std::nanf(""), DType::f32, Device::cpu()); }
    enqueue_sleep(producer, 100);
    result = step();
    wait(*result);  // queued behind the sleep; the host does not wait for it
  }
  EXPECT_EQ(stats().graph_launches, 1u);
  StreamGuard g(consumer);
  EXPECT_EQ(to_vector(wait(*result * 1.f)), expected);
}

// Several threads replaying one structure at once: one holds the cached plan, the others run the
// normal path; every result is right.
TEST(ReplayCpu, ConcurrentReplaysOfOneStructureAreCorrect) {
  set_graphs_enabled(true);
  detail::clear_replay_cache();
  const Tensor w = from_vector(random_values(16 * 16, 23, -0.5f, 0.5f), {16, 16});
  // The threads use w as a plain Tensor on their own streams: its upload must be complete.
  current_stream(Device::cpu()).synchronize();
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      Stream s = Stream::create(Device::cpu());
      StreamGuard g(s);
      for (int i = 0; i < 50; ++i) {
        const auto xv = random_values(4 * 16, static_cast<unsigned>(1000 * t + i), -1.f, 1.f);
        const Tensor x = from_vector(xv, {4, 16});
        const auto got = to_vector(wait(relu(matmul(x, w)) + 1.f));
        const ref::Vec m = ref::matmul(ref::widen(xv), {4, 16}, ref::widen(to_vector(w)), {16, 16});
        for (std::size_t k = 0; k < m.size(); ++k)
          if (std::abs(got[k] - (std::max(m[k], 0.0) + 1.0)) > 1e-4) ++wrong;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(stats().graph_launches, 0u);
}
