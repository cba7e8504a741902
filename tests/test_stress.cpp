// Concurrency stress: many threads build and wait overlapping graphs (shared pending inputs, shared
// results waited from several threads at once) on several streams, in both modes, with fusion and
// replay switched on and off mid-run by another thread. Every result is checked against values
// computed single-threaded first. Run under TSan in CI. DEFER_STRESS_ROUNDS scales it.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

#include <defer/defer.hpp>

#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;

namespace {

int rounds() {
  const char* v = std::getenv("DEFER_STRESS_ROUNDS");
  const int n = v ? std::atoi(v) : 0;
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  return n > 0 ? n : 15;
#else
  return n > 0 ? n : 60;
#endif
}

class Stress : public ::testing::TestWithParam<DeviceKind> {
 protected:
  void SetUp() override {
    if (GetParam() == DeviceKind::cuda && !cuda_available()) GTEST_SKIP() << "no CUDA device";
    dev_ = GetParam() == DeviceKind::cuda ? Device::cuda(0) : Device::cpu();
  }
  Device dev_ = Device::cpu();
};

}  // namespace

TEST_P(Stress, ManyThreadsBuildAndWaitOverlappingGraphsOnSeveralStreams) {
  const int threads = 8, n = rounds();
  const Tensor x = from_vector(random_values(16 * 16, 1), {16, 16}, dev_);
  const Tensor w = from_vector(random_values(16 * 16, 2), {16, 16}, dev_);
  const Tensor g = from_vector(random_values(16, 3, 0.5f, 1.5f), {16}, dev_);
  current_stream(dev_).synchronize();  // read on other streams as plain Tensors: upload them first
  auto make = [&](int v, const TensorAwait& shared) -> TensorAwait {
    switch (v % 4) {
      case 0: return sum(gelu(TensorAwait(x) * 0.5f + shared), 1);
      case 1: return softmax(matmul(x, w) - 1.f, -1);
      case 2: return layer_norm(tanh(shared) + x, g, g);
      default: return mean(maximum(shared, x) * sigmoid(x), 0, true);
    }
  };
  // Expected values, single-threaded and eager.
  std::vector<std::vector<float>> expected(4);
  {
    ModeGuard eager(Mode::eager);
    const TensorAwait shared = exp(TensorAwait(x) * 0.25f);
    for (int v = 0; v < 4; ++v) expected[static_cast<std::size_t>(v)] = to_vector(wait(make(v, shared)));
  }
  std::vector<Stream> streams;
  for (int i = 0; i < 4; ++i) streams.push_back(Stream::create(dev_));
  const bool fusion = fusion_enabled(), graphs = graphs_enabled();
  std::atomic<int> errors{0};
  std::atomic<bool> done{false};
  // Another thread flips the process-wide switches while graphs are planned.
  std::thread flipper([&] {
    std::mt19937 rng(7);
    while (!done.load()) {
      set_fusion_enabled(rng() % 2 == 0);
      set_graphs_enabled(rng() % 2 == 0);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  for (int round = 0; round < n; ++round) {
    // Built once per round by the main thread, pending; every worker builds on it and waits parts.
    const TensorAwait shared = exp(TensorAwait(x) * 0.25f);
    std::vector<TensorAwait> common;
    for (int v = 0; v < 4; ++v) common.push_back(make(v, shared));
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        std::mt19937 rng(static_cast<unsigned>(round * 131 + t));
        ModeGuard mode(rng() % 4 == 0 ? Mode::eager : Mode::deferred);
        const Stream& s = streams[rng() % streams.size()];
        StreamGuard on(s);
        std::vector<TensorAwait> mine;
        std::vector<int> kinds;
        for (int k = 0; k < 4; ++k) {
          const int v = static_cast<int>(rng() % 4);
          // Half of them the common results (waited by several threads at once), half their own.
          mine.push_back(rng() % 2 ? common[static_cast<std::size_t>(v)] : make(v, shared));
          kinds.push_back(v);
        }
        std::vector<Tensor> got;
        if (rng() % 2) got = wait_all(mine, s);
        else
          for (const TensorAwait& m : mine) got.push_back(wait(m, s));
        for (std::size_t k = 0; k < got.size(); ++k)
          if (to_vector(got[k]) != expected[static_cast<std::size_t>(kinds[k])]) ++errors;
        // The same Await waited again gives the very same tensor.
        if (wait(mine[0]).data_ptr() != got[0].data_ptr()) ++errors;
      });
    }
    for (auto& th : pool) th.join();
  }
  done = true;
  flipper.join();
  set_fusion_enabled(fusion);
  set_graphs_enabled(graphs);
  for (auto& s : streams) s.synchronize();
  EXPECT_EQ(errors.load(), 0);
}

TEST_P(Stress, ConcurrentFirstWaitsOfOneDeepGraphRunEachNodeOnce) {
  for (int round = 0; round < rounds(); ++round) {
    const Tensor x = from_vector(random_values(256, static_cast<unsigned>(round) + 10), {256}, dev_);
    current_stream(dev_).synchronize();
    TensorAwait y = x;
    for (int i = 0; i < 50; ++i) y = (i % 2 ? tanh(y) : y * 1.01f + 0.1f);
    std::vector<float> want;
    {
      ModeGuard eager(Mode::eager);
      TensorAwait e = x;
      for (int i = 0; i < 50; ++i) e = (i % 2 ? tanh(e) : e * 1.01f + 0.1f);
      want = to_vector(wait(e));
    }
    std::vector<Stream> streams{Stream::create(dev_), Stream::create(dev_), Stream::create(dev_)};
    std::vector<const void*> ptrs(6);
    std::vector<std::thread> pool;
    for (int t = 0; t < 6; ++t)
      pool.emplace_back([&, t] { ptrs[static_cast<std::size_t>(t)] = wait(y, streams[static_cast<std::size_t>(t) % 3]).data_ptr(); });
    for (auto& th : pool) th.join();
    for (const void* p : ptrs) EXPECT_EQ(p, ptrs[0]) << "every wait must get the very same tensor";
    StreamGuard on(streams[1]);
    EXPECT_EQ(to_vector(wait(y)), want);
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, Stress, ::testing::Values(DeviceKind::cpu, DeviceKind::cuda),
                         [](const auto& p) { return p.param == DeviceKind::cpu ? "cpu" : "cuda"; });
