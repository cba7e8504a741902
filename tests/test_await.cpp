// Await<T> (docs/api.md section 4): one test (or more) per numbered semantic, the behaviours around
// them, and ports of PyTorch's own Await tests (test/jit/test_await.py). Everything runs on the CPU
// backend, whose streams are asynchronous queues run by worker threads: ordering mistakes show up
// as wrong values here without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <latch>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <defer/defer.hpp>

#include "runtime/cpu/cpu_stream.hpp"

using namespace defer;
using namespace std::chrono_literals;

namespace {

using Clock = std::chrono::steady_clock;

const Device kCpu = Device::cpu();

// How long the producer's queued work keeps its stream busy in the stream-ordering tests, and how
// quickly a wait must return for it to count as not blocking on that work (generous on purpose:
// this checks that the host does not wait for the work, not how fast a wait is).
constexpr auto kBusy = 400ms;  // long enough that a loaded machine cannot blur blocked and not blocked
constexpr auto kNonBlocking = kBusy * 3 / 4;

// Random non-zero values in [-10, -0.5] U [0.5, 10].
std::vector<float> random_values(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> magnitude(0.5f, 10.0f);
  std::bernoulli_distribution negative(0.5);
  std::vector<float> v(n);
  for (float& x : v) x = negative(rng) ? -magnitude(rng) : magnitude(rng);
  return v;
}

int random_int(std::uint32_t seed, int lo = 1, int hi = 1000000) {
  std::mt19937 rng(seed);
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

std::chrono::duration<double, std::milli> elapsed_since(Clock::time_point t0) { return Clock::now() - t0; }

// Queues on `s`: sleep for `delay`, then write `values` to `dst`.
void enqueue_slow_write(const Stream& s, void* dst, std::vector<float> values, std::chrono::milliseconds delay) {
  detail::enqueue_cpu(s.impl(), [dst, values = std::move(values), delay] {
    std::this_thread::sleep_for(delay);
    std::memcpy(dst, values.data(), values.size() * sizeof(float));
  });
}

// A tensor made by work queued on the current CPU stream: zeros at first, `values` once the stream
// has slept for `delay`. Returns at once.
Tensor slow_tensor(const std::vector<float>& values, std::chrono::milliseconds delay = kBusy) {
  Tensor t = full({static_cast<int64_t>(values.size())}, 0.0f, DType::f32, kCpu);
  enqueue_slow_write(current_stream(kCpu), t.data_ptr(), values, delay);
  return t;
}

// Reads `t` by a task queued on `s` (after whatever is queued there, optionally sleeping first), and
// returns what that task saw once it has run.
std::vector<float> read_on(const Stream& s, const Tensor& t, std::chrono::milliseconds delay = 0ms) {
  auto seen = std::make_shared<std::vector<float>>(static_cast<std::size_t>(t.numel()));
  const void* src = t.data_ptr();
  detail::enqueue_cpu(s.impl(), [seen, src, delay] {
    if (delay > 0ms) std::this_thread::sleep_for(delay);
    std::memcpy(seen->data(), src, seen->size() * sizeof(float));
  });
  s.synchronize();
  return *seen;
}

// Host-side scaling through the tensor API (stream ordered on the current CPU stream).
Tensor scaled(const Tensor& t, float k) {
  std::vector<float> v = to_vector(t);
  for (float& x : v) x *= k;
  return from_vector(v, t.shape(), kCpu);
}

std::vector<float> scaled_values(std::vector<float> v, float k) {
  for (float& x : v) x *= k;
  return v;
}

struct TestError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace

// ------------------------------------------------------------------------------------------------
// Rule 1: awaitable(fn, args...) runs nothing and launches nothing; fn runs on the first wait only.
// ------------------------------------------------------------------------------------------------

TEST(AwaitRule1, AwaitableRunsAndLaunchesNothingUntilTheFirstWait) {
  const int base = random_int(1);
  std::atomic<int> dep_calls{0}, calls{0}, then_calls{0};
  Stream s = Stream::create(kCpu);
  std::atomic<bool> launched{false};

  const std::uint64_t runs_before = stats().awaits_run;
  const std::size_t bytes_before = memory_stats(kCpu).allocated_bytes;

  Await<int> dep = awaitable([&] {
    ++dep_calls;
    return base;
  });
  Await<Tensor> aw = awaitable(
      [&](int x) {
        ++calls;
        // The work fn would launch: a task on the current stream and a 1 MiB tensor.
        detail::enqueue_cpu(current_stream(kCpu).impl(), [&launched] { launched = true; });
        return full({256 * 1024}, static_cast<float>(x), DType::f32, kCpu);
      },
      dep);
  Await<float> last = then(aw, [&](const Tensor& t) {
    ++then_calls;
    return to_vector(t)[0];
  });

  s.synchronize();
  EXPECT_EQ(dep_calls, 0);
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(then_calls, 0);
  EXPECT_FALSE(launched);
  EXPECT_FALSE(dep.is_ready());
  EXPECT_FALSE(aw.is_ready());
  EXPECT_FALSE(last.is_ready());
  EXPECT_EQ(stats().awaits_run, runs_before);
  EXPECT_EQ(memory_stats(kCpu).allocated_bytes, bytes_before);

  EXPECT_EQ(wait(last, s), static_cast<float>(base));
  EXPECT_EQ(dep_calls, 1);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(then_calls, 1);
  s.synchronize();
  EXPECT_TRUE(launched);
  EXPECT_EQ(stats().awaits_run, runs_before + 3);
}

// ------------------------------------------------------------------------------------------------
// Rule 2: Await arguments are dependencies: waited first, or passed unchanged to an Await parameter.
// ------------------------------------------------------------------------------------------------

TEST(AwaitRule2, AwaitArgumentIsWaitedFirstForAValueParameter) {
  const int a = random_int(2), b = random_int(3);
  std::vector<std::string> order;  // only the waiting thread appends
  Await<int> da = awaitable([&] {
    order.push_back("a");
    return a;
  });
  Await<int> db = awaitable([&] {
    order.push_back("b");
    return b;
  });
  // By value, by const reference, and a plain argument in between.
  Await<long> sum = awaitable(
      [&](int x, long k, const int& y) {
        order.push_back("sum");
        return static_cast<long>(x) * k + y;
      },
      da, 3L, db);
  EXPECT_TRUE(order.empty());
  EXPECT_EQ(wait(sum), static_cast<long>(a) * 3 + b);
  ASSERT_EQ(order.size(), 3u);
  EXPECT_EQ(order.back(), "sum");  // both dependencies ran before fn
  EXPECT_TRUE(da.is_ready());
  EXPECT_TRUE(db.is_ready());
}

TEST(AwaitRule2, AwaitArgumentIsPassedUnchangedToAnAwaitParameter) {
  std::atomic<int> dep_calls{0};
  const int v = random_int(4);
  Await<int> dep = awaitable([&] {
    ++dep_calls;
    return v;
  });
  const detail::AwaitStateBase* dep_state = dep.state().get();

  bool same_state = false, ready_inside = true;
  Await<int> by_value = awaitable(
      [&](Await<int> got) {
        same_state = got.state().get() == dep_state;
        ready_inside = got.is_ready();
        return 1;
      },
      dep);
  EXPECT_EQ(wait(by_value), 1);
  EXPECT_TRUE(same_state);
  EXPECT_FALSE(ready_inside);
  EXPECT_EQ(dep_calls, 0);  // passed unchanged: never waited
  EXPECT_FALSE(dep.is_ready());

  same_state = false;
  Await<int> by_ref = awaitable([&](const Await<int>& got) { return (same_state = got.state().get() == dep_state) ? 2 : 0; }, dep);
  EXPECT_EQ(wait(by_ref), 2);
  EXPECT_TRUE(same_state);
  EXPECT_EQ(dep_calls, 0);
  EXPECT_FALSE(dep.is_ready());

  // Mixed: the first is waited, the second passed as is; fn may wait it itself.
  std::atomic<int> first_calls{0};
  Await<int> first = awaitable([&] {
    ++first_calls;
    return 10;
  });
  Await<int> mixed = awaitable(
      [&](int x, Await<int> later) {
        EXPECT_EQ(dep_calls, 0);
        return x + wait(later);
      },
      first, dep);
  EXPECT_EQ(wait(mixed), 10 + v);
  EXPECT_EQ(first_calls, 1);
  EXPECT_EQ(dep_calls, 1);
}

TEST(AwaitRule2, GenericCallableReceivesTheWaitedValue) {
  const int v = random_int(5);
  Await<int> dep = awaitable([v] { return v; });
  Await<bool> got_int = awaitable([](auto x) { return std::is_same_v<decltype(x), int>; }, dep);
  EXPECT_TRUE(wait(got_int));
  Await<int> plus = awaitable([](const auto& x, auto k) { return x + k; }, dep, 7);
  EXPECT_EQ(wait(plus), v + 7);
}

TEST(AwaitRule2, FunctionPointerWithAnAwaitParameter) {
  struct Fns {
    static int tripled(Await<int> a) { return 3 * wait(a); }
    static int doubled(int a) { return 2 * a; }
  };
  const int v = random_int(6);
  Await<int> dep = awaitable([v] { return v; });
  EXPECT_EQ(wait(awaitable(&Fns::doubled, dep)), 2 * v);
  Await<int> other = awaitable([v] { return v + 1; });
  Await<int> t = awaitable(&Fns::tripled, other);
  EXPECT_FALSE(other.is_ready());
  EXPECT_EQ(wait(t), 3 * (v + 1));

  // A functor whose one operator() is ref- and noexcept-qualified.
  struct Functor {
    bool operator()(const Await<int>& a) const& noexcept { return !a.is_ready(); }
  };
  Await<int> untouched = awaitable([v] { return v; });
  EXPECT_TRUE(wait(awaitable(Functor{}, untouched)));
  EXPECT_FALSE(untouched.is_ready());
}

TEST(AwaitRule2, DependenciesRunOnTheWaitsStream) {
  Stream s = Stream::create(kCpu);
  Stream dep_stream = default_stream(kCpu), fn_stream = default_stream(kCpu);
  Await<int> dep = awaitable([&] {
    dep_stream = current_stream(kCpu);
    return 1;
  });
  Await<int> aw = awaitable(
      [&](int x) {
        fn_stream = current_stream(kCpu);
        return x + 1;
      },
      dep);
  EXPECT_EQ(wait(aw, s), 2);
  EXPECT_TRUE(dep_stream == s);
  EXPECT_TRUE(fn_stream == s);
}

TEST(AwaitRule2, TensorDependencyProducedOnAnotherStreamIsOrderedForFn) {
  // The dependency already ran on stream A (still busy); the dependent is waited on B: fn's own
  // work on B must see the produced values.
  const auto values = random_values(1024, 7);
  Stream a = Stream::create(kCpu), b = Stream::create(kCpu);
  Await<Tensor> producer = awaitable([&] { return slow_tensor(values); });
  (void)wait(producer, a);
  auto seen = std::make_shared<std::vector<float>>();
  Await<int> consumer = awaitable(
      [seen](Tensor t) {
        const void* src = t.data_ptr();
        const auto n = static_cast<std::size_t>(t.numel());
        detail::enqueue_cpu(current_stream(kCpu).impl(), [seen, src, n] {
          seen->resize(n);
          std::memcpy(seen->data(), src, n * sizeof(float));
        });
        return 0;
      },
      producer);
  const auto t0 = Clock::now();
  EXPECT_EQ(wait(consumer, b), 0);
  EXPECT_LT(elapsed_since(t0), kNonBlocking);
  b.synchronize();
  EXPECT_EQ(*seen, values);
}

// ------------------------------------------------------------------------------------------------
// Rule 3: fn runs exactly once, on the calling thread, with the wait's stream current; later waits
// return the very same object.
// ------------------------------------------------------------------------------------------------

TEST(AwaitRule3, FnRunsOnceOnTheCallingThreadWithTheWaitsStreamCurrent) {
  Stream s = Stream::create(kCpu), s2 = Stream::create(kCpu);
  std::atomic<int> calls{0};
  std::thread::id ran_on;
  Stream seen_stream = default_stream(kCpu);
  const auto values = random_values(64, 8);
  Await<Tensor> aw = awaitable([&] {
    ++calls;
    ran_on = std::this_thread::get_id();
    seen_stream = current_stream(kCpu);
    return from_vector(values, {8, 8}, kCpu);
  });

  ASSERT_TRUE(current_stream(kCpu) == default_stream(kCpu));
  const Tensor& first = wait(aw, s);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(ran_on, std::this_thread::get_id());
  EXPECT_TRUE(seen_stream == s);
  EXPECT_FALSE(seen_stream == default_stream(kCpu));
  EXPECT_TRUE(current_stream(kCpu) == default_stream(kCpu));  // restored after the wait

  const void* data = first.data_ptr();
  const Tensor& again = wait(aw, s);
  const Tensor& on_current = wait(aw);
  Await<Tensor> copy = aw;
  const Tensor& via_copy = wait(copy, s2);
  EXPECT_EQ(&again, &first);
  EXPECT_EQ(&on_current, &first);
  EXPECT_EQ(&via_copy, &first);
  EXPECT_EQ(&*aw, &first);
  EXPECT_EQ(aw.operator->(), &first);
  EXPECT_EQ(again.data_ptr(), data);
  EXPECT_EQ(via_copy.data_ptr(), data);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(to_vector(first), values);
}

TEST(AwaitRule3, WaitWithoutAStreamUsesTheCurrentStream) {
  Stream g = Stream::create(kCpu);
  Stream seen = default_stream(kCpu);
  Await<int> aw = awaitable([&] {
    seen = current_stream(kCpu);
    return 1;
  });
  {
    StreamGuard guard(g);
    EXPECT_EQ(wait(aw), 1);
  }
  if (default_device() == kCpu) {
    EXPECT_TRUE(seen == g);
  }
}

TEST(AwaitRule3, ScalarResultIsTheSameObjectEveryTime) {
  std::atomic<int> calls{0};
  const int v = random_int(9);
  Await<std::vector<int>> aw = awaitable([&] {
    ++calls;
    return std::vector<int>(100, v);
  });
  const std::vector<int>* first = &wait(aw);
  for (int i = 0; i < 10; ++i) EXPECT_EQ(&wait(aw), first);
  EXPECT_EQ(first->data(), wait(aw).data());
  EXPECT_EQ((*first)[99], v);
  EXPECT_EQ(calls, 1);
}

// ------------------------------------------------------------------------------------------------
// Rule 4: wait is stream ordered: no host blocking, the other stream waits on the producer's event,
// and the result's storage is marked as used there.
// ------------------------------------------------------------------------------------------------

TEST(AwaitRule4, WaitOnAnotherStreamIsOrderedAfterTheProducerWithoutBlockingTheHost) {
  const auto values = random_values(4096, 10);
  Stream a = Stream::create(kCpu), b = Stream::create(kCpu);
  Await<Tensor> aw = awaitable([&] { return slow_tensor(values); });

  auto t0 = Clock::now();
  const Tensor& on_a = wait(aw, a);
  EXPECT_LT(elapsed_since(t0), kNonBlocking) << "wait blocked on the producer's work";
  EXPECT_FALSE(a.query());  // the producer is still busy

  t0 = Clock::now();
  const Tensor& on_b = wait(aw, b);
  EXPECT_LT(elapsed_since(t0), kNonBlocking) << "a wait on another stream blocked the host";
  EXPECT_EQ(&on_a, &on_b);

  EXPECT_EQ(read_on(b, on_b), values);
}

TEST(AwaitRule4, StorageIsNotReusedUntilTheOtherStreamsWorkHasFinished) {
  // The result is used on B (slowly); all handles are dropped; a new allocation of the same size
  // on the producer's stream A writes garbage. Without the storage being marked as used on B, the
  // block would go back to A at once and B would read the garbage.
  const auto values = random_values(4096, 11);
  Stream a = Stream::create(kCpu), b = Stream::create(kCpu);
  auto aw = std::make_unique<Await<Tensor>>(awaitable([&] { return slow_tensor(values); }));
  (void)wait(*aw, a);
  const Tensor& on_b = wait(*aw, b);
  auto seen = std::make_shared<std::vector<float>>(values.size());
  const void* src = on_b.data_ptr();
  detail::enqueue_cpu(b.impl(), [seen, src] {
    std::this_thread::sleep_for(kBusy / 2);
    std::memcpy(seen->data(), src, seen->size() * sizeof(float));
  });
  aw.reset();  // the tensor's last handle

  Tensor reused;
  {
    StreamGuard guard(a);
    reused = empty({static_cast<int64_t>(values.size())}, DType::f32, kCpu);
    enqueue_slow_write(a, reused.data_ptr(), std::vector<float>(values.size(), -12345.0f), 0ms);
  }
  b.synchronize();
  EXPECT_EQ(*seen, values);
}

// The wait on the temporary stream records the result's use there (record_stream), so the block's
// use list holds the stream's last reference. Freeing the tensor then destroys the stream from
// inside the allocator's deallocation: this once deadlocked on the pool's mutex.
TEST(AwaitRule4, WaitOnATemporaryStreamThenFreeTheResult) {
  const auto values = random_values(256, 60);
  Await<Tensor> aw = awaitable([&] { return from_vector(values, {256}, kCpu); });
  (void)wait(aw);
  EXPECT_EQ(wait(aw, Stream::create(kCpu)).numel(), 256);
  aw = Await<Tensor>();  // frees the tensor: the temporary stream's last reference goes with it
  EXPECT_EQ(to_vector(from_vector(values, {256}, kCpu)), values);
}

TEST(AwaitRule4, EveryTensorOfAContainerResultIsOrdered) {
  const auto v0 = random_values(512, 12), v1 = random_values(256, 13), v2 = random_values(128, 14);
  Stream a = Stream::create(kCpu), b = Stream::create(kCpu);
  using Result = std::tuple<std::pair<int, Tensor>, std::vector<Tensor>, std::optional<Tensor>, std::array<Tensor, 1>>;
  Await<Result> aw = awaitable([&] {
    return Result{{1, slow_tensor(v0)}, {slow_tensor(v1)}, slow_tensor(v2), {slow_tensor(v0)}};
  });
  (void)wait(aw, a);
  const auto t0 = Clock::now();
  const Result& r = wait(aw, b);
  EXPECT_LT(elapsed_since(t0), kNonBlocking);
  EXPECT_EQ(read_on(b, std::get<0>(r).second), v0);
  EXPECT_EQ(read_on(b, std::get<1>(r)[0]), v1);
  EXPECT_EQ(read_on(b, *std::get<2>(r)), v2);
  EXPECT_EQ(read_on(b, std::get<3>(r)[0]), v0);
}

namespace user {
// A user type that opts in to tensor ordering through ADL.
struct Features {
  Tensor embedding;
  std::vector<Tensor> extra;
  int tag = 0;
};
template <class F>
void defer_visit_tensors(const Features& f, F&& fn) {
  fn(f.embedding);
  for (const Tensor& t : f.extra) fn(t);
}
}  // namespace user

TEST(AwaitRule4, UserTypeWithATensorVisitorIsOrdered) {
  const auto v0 = random_values(300, 15), v1 = random_values(200, 16);
  Stream a = Stream::create(kCpu), b = Stream::create(kCpu);
  Await<user::Features> aw = awaitable([&] { return user::Features{slow_tensor(v0), {slow_tensor(v1)}, 7}; });
  (void)wait(aw, a);
  const auto t0 = Clock::now();
  const user::Features& f = wait(aw, b);
  EXPECT_LT(elapsed_since(t0), kNonBlocking);
  EXPECT_EQ(f.tag, 7);
  EXPECT_EQ(read_on(b, f.extra[0]), v1);
  EXPECT_EQ(read_on(b, f.embedding), v0);
}

// ------------------------------------------------------------------------------------------------
// Rule 5: fn's exception is cached and rethrown by every wait; fn is not run again.
// ------------------------------------------------------------------------------------------------

TEST(AwaitRule5, ExceptionIsCachedWithItsTypeAndMessage) {
  std::atomic<int> calls{0};
  const std::string message = "failure #" + std::to_string(random_int(17));
  Await<int> aw = awaitable([&]() -> int {
    ++calls;
    throw TestError(message);
  });
  for (int i = 0; i < 3; ++i) {
    try {
      (void)(i == 1 ? wait(aw, Stream::create(kCpu)) : wait(aw));
      ADD_FAILURE() << "wait did not throw";
    } catch (const TestError& e) {
      EXPECT_EQ(e.what(), message);
    } catch (...) {
      ADD_FAILURE() << "wrong exception type";
    }
  }
  EXPECT_THROW((void)*aw, TestError);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(aw.is_ready());
}

TEST(AwaitRule5, NonStdExceptionIsCachedToo) {
  std::atomic<int> calls{0};
  Await<void> aw = awaitable([&] {
    ++calls;
    throw 42;
  });
  for (int i = 0; i < 2; ++i) {
    try {
      wait(aw);
      ADD_FAILURE();
    } catch (int x) {
      EXPECT_EQ(x, 42);
    }
  }
  EXPECT_EQ(calls, 1);
}

// ------------------------------------------------------------------------------------------------
// Rule 6: concurrent waits run fn once and all get the same object.
// ------------------------------------------------------------------------------------------------

TEST(AwaitRule6, ConcurrentWaitsRunFnOnceAndShareTheObject) {
  constexpr int kThreads = 8;
  for (int round = 0; round < 20; ++round) {
    std::vector<Stream> streams;  // outlive the result, which records its use on them
    for (int i = 0; i < kThreads; ++i) streams.push_back(Stream::create(kCpu));
    std::atomic<int> calls{0};
    const auto values = random_values(32, 100 + static_cast<std::uint32_t>(round));
    Await<Tensor> aw = awaitable([&] {
      ++calls;
      std::this_thread::sleep_for(2ms);  // let the others arrive while fn runs
      return from_vector(values, {32}, kCpu);
    });
    std::vector<const Tensor*> got(kThreads, nullptr);
    std::vector<const void*> data(kThreads, nullptr);
    std::latch start(kThreads);
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) {
      threads.emplace_back([&, i, copy = aw] {
        start.arrive_and_wait();
        const Tensor& t = i % 2 ? wait(copy) : wait(copy, streams[i]);
        got[i] = &t;
        data[i] = t.data_ptr();
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(calls, 1);
    for (int i = 0; i < kThreads; ++i) {
      EXPECT_EQ(got[i], got[0]);
      EXPECT_EQ(data[i], data[0]);
    }
    EXPECT_EQ(to_vector(wait(aw)), values);
  }
}

TEST(AwaitRule6, ConcurrentWaitsOfAFailingAwaitAllSeeTheError) {
  constexpr int kThreads = 8;
  std::atomic<int> calls{0}, caught{0};
  Await<int> aw = awaitable([&]() -> int {
    ++calls;
    std::this_thread::sleep_for(2ms);
    throw TestError("shared failure");
  });
  std::latch start(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&] {
      start.arrive_and_wait();
      try {
        (void)wait(aw);
      } catch (const TestError& e) {
        if (std::string(e.what()) == "shared failure") ++caught;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(caught, kThreads);
}

TEST(AwaitRule6, ConcurrentWaitsOnASharedGraphRunEveryNodeOnce) {
  // Node i depends on node i-1 and node i/2 (diamonds everywhere); threads wait nodes in
  // different random orders.
  constexpr int kNodes = 3000, kThreads = 8;
  for (int round = 0; round < 3; ++round) {
    std::vector<std::atomic<int>> calls(kNodes);
    std::vector<Await<std::int64_t>> nodes;
    nodes.reserve(kNodes);
    nodes.push_back(awaitable([&calls] {
      ++calls[0];
      return std::int64_t{1};
    }));
    for (int i = 1; i < kNodes; ++i) {
      nodes.push_back(awaitable(
          [&calls, i](std::int64_t prev, std::int64_t half) {
            ++calls[i];
            return (prev + half) % 1000003;
          },
          nodes[i - 1], nodes[i / 2]));
    }
    std::vector<std::int64_t> expected(kNodes);
    expected[0] = 1;
    for (int i = 1; i < kNodes; ++i) expected[i] = (expected[i - 1] + expected[i / 2]) % 1000003;

    std::latch start(kThreads);
    std::atomic<int> mismatches{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        std::vector<int> order(kNodes);
        for (int i = 0; i < kNodes; ++i) order[i] = i;
        std::shuffle(order.begin(), order.end(), std::mt19937(static_cast<std::uint32_t>(1000 * round + t)));
        order.resize(40);
        start.arrive_and_wait();
        for (int i : order)
          if (wait(nodes[i]) != expected[i]) ++mismatches;
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(mismatches, 0);
    EXPECT_EQ(wait(nodes.back()), expected.back());
    for (int i = 0; i < kNodes; ++i) ASSERT_EQ(calls[i], 1) << "node " << i;
  }
}

// ------------------------------------------------------------------------------------------------
// Rule 7: arguments are released once fn has run; a destroyed, never-waited Await never runs fn.
// ------------------------------------------------------------------------------------------------

TEST(AwaitRule7, ArgumentsAreReleasedAfterFnRuns) {
  auto payload = std::make_shared<int>(random_int(18));
  std::weak_ptr<int> watch = payload;
  Await<int> aw = awaitable([](std::shared_ptr<int> p, int k) { return *p + k; }, std::move(payload), 1);
  ASSERT_NE((aw.args<std::shared_ptr<int>, int>()), nullptr);
  EXPECT_FALSE(watch.expired());
  EXPECT_EQ(wait(aw), *watch.lock() + 1);
  EXPECT_EQ((aw.args<std::shared_ptr<int>, int>()), nullptr);
  EXPECT_TRUE(watch.expired());
}

TEST(AwaitRule7, TensorArgumentMemoryIsFreedAfterFnRuns) {
  constexpr int64_t n = 1 << 20;  // 4 MiB
  Tensor t = full({n}, 2.5f, DType::f32, kCpu);
  const std::size_t nbytes = t.nbytes();
  Await<int64_t> aw = awaitable([](Tensor x) { return x.numel(); }, t);
  t = Tensor();
  ASSERT_NE(aw.args<Tensor>(), nullptr);
  const std::size_t before = memory_stats(kCpu).allocated_bytes;
  ASSERT_GE(before, nbytes);
  EXPECT_EQ(wait(aw), n);
  EXPECT_EQ(aw.args<Tensor>(), nullptr);
  EXPECT_LE(memory_stats(kCpu).allocated_bytes + nbytes, before);
}

TEST(AwaitRule7, ArgumentsAreReleasedWhenFnThrowsToo) {
  auto payload = std::make_shared<int>(1);
  std::weak_ptr<int> watch = payload;
  Await<int> aw = awaitable([](std::shared_ptr<int>) -> int { throw TestError("x"); }, std::move(payload));
  EXPECT_THROW((void)wait(aw), TestError);
  EXPECT_TRUE(watch.expired());
  EXPECT_EQ(aw.args<std::shared_ptr<int>>(), nullptr);
}

TEST(AwaitRule7, DependenciesAreReleasedAfterFnRuns) {
  const int v = random_int(19);
  Await<int> aw;
  std::weak_ptr<detail::AwaitStateBase> dep_state;
  {
    Await<int> dep = awaitable([v] { return v; });
    dep_state = dep.state();
    aw = awaitable([](int x) { return x * 2; }, dep);
  }
  EXPECT_FALSE(dep_state.expired());  // kept alive by aw until it runs
  EXPECT_EQ(wait(aw), 2 * v);
  EXPECT_TRUE(dep_state.expired());
}

TEST(AwaitRule7, DestroyedNeverWaitedAwaitNeverRunsFn) {
  std::atomic<int> calls{0};
  auto payload = std::make_shared<int>(3);
  std::weak_ptr<int> watch = payload;
  const auto runs_before = stats().awaits_run;
  {
    Await<int> dep = awaitable([&] {
      ++calls;
      return 1;
    });
    Await<int> aw = awaitable(
        [&](int x, std::shared_ptr<int> p) {
          ++calls;
          return x + *p;
        },
        dep, std::move(payload));
    Await<int> copy = aw;
    Await<int> next = then(copy, [&](const int& x) {
      ++calls;
      return x;
    });
  }
  EXPECT_EQ(calls, 0);
  EXPECT_TRUE(watch.expired());
  EXPECT_EQ(stats().awaits_run, runs_before);
}

// ------------------------------------------------------------------------------------------------
// Rule 8: nowait(v) is ready at once; for a Tensor it captures the current stream's event.
// ------------------------------------------------------------------------------------------------

TEST(AwaitRule8, NowaitIsReadyAtOnce) {
  const int v = random_int(20);
  Await<int> aw = nowait(v);
  EXPECT_TRUE(aw.valid());
  EXPECT_TRUE(aw.is_nowait());
  EXPECT_TRUE(aw.is_ready());
  EXPECT_EQ(aw.args<int>(), nullptr);
  EXPECT_EQ(aw.fn<int (*)()>(), nullptr);
  EXPECT_EQ(wait(aw), v);
  EXPECT_EQ(&wait(aw), &*aw);

  Await<int> deferred = awaitable([v] { return v; });
  EXPECT_FALSE(deferred.is_nowait());
  (void)wait(deferred);
  EXPECT_FALSE(deferred.is_nowait());
}

TEST(AwaitRule8, NowaitTensorIsOrderedAfterWorkStillQueuedOnTheCurrentStream) {
  const auto values = random_values(2048, 21);
  Stream a = Stream::create(kCpu), b = Stream::create(kCpu);
  Await<Tensor> aw;
  Tensor t;
  {
    StreamGuard guard(a);
    t = slow_tensor(values);
    aw = nowait(t);
  }
  EXPECT_TRUE(aw.is_ready());
  EXPECT_TRUE(aw.is_nowait());
  const auto t0 = Clock::now();
  const Tensor& got = wait(aw, b);
  EXPECT_LT(elapsed_since(t0), kNonBlocking);
  EXPECT_EQ(got.data_ptr(), t.data_ptr());
  EXPECT_EQ(read_on(b, got), values);
}

TEST(AwaitRule8, ImplicitTensorConversionIsANowait) {
  const auto values = random_values(1024, 22);
  Stream a = Stream::create(kCpu), b = Stream::create(kCpu);
  Await<Tensor> aw;
  {
    StreamGuard guard(a);
    aw = slow_tensor(values);  // Await(Tensor): same as nowait
  }
  EXPECT_TRUE(aw.is_nowait());
  EXPECT_TRUE(aw.is_ready());
  // Also through a dependency: fn runs on B and reads there.
  auto seen = std::make_shared<std::vector<float>>(values.size());
  Await<int> consumer = awaitable(
      [seen](const Tensor& x) {
        const void* src = x.data_ptr();
        detail::enqueue_cpu(current_stream(kCpu).impl(), [seen, src] { std::memcpy(seen->data(), src, seen->size() * sizeof(float)); });
        return 1;
      },
      aw);
  const auto t0 = Clock::now();
  EXPECT_EQ(wait(consumer, b), 1);
  EXPECT_LT(elapsed_since(t0), kNonBlocking);
  b.synchronize();
  EXPECT_EQ(*seen, values);
}

// ------------------------------------------------------------------------------------------------
// Rule 9: chains of any depth are waited and destroyed without exhausting the stack.
// ------------------------------------------------------------------------------------------------

constexpr int kChain = 1'000'000;

TEST(AwaitRule9, MillionThenChainIsWaitedAndDestroyed) {
  Await<int> aw = nowait(0);
  for (int i = 0; i < kChain; ++i) aw = then(aw, [](const int& v) { return v + 1; });
  EXPECT_FALSE(aw.is_ready());
  EXPECT_EQ(wait(aw), kChain);
  aw = Await<int>();
}

TEST(AwaitRule9, MillionAwaitableChainIsWaitedAndDestroyed) {
  const int start = random_int(23, 1, 1000);
  Await<int> first = awaitable([start] { return start; });
  Await<int> aw = first;
  for (int i = 0; i < kChain; ++i) aw = awaitable([](int v) { return v + 1; }, aw);
  EXPECT_EQ(wait(aw), start + kChain);
  EXPECT_TRUE(first.is_ready());
  first = Await<int>();
  aw = Await<int>();
}

TEST(AwaitRule9, MillionChainDestroyedUnwaited) {
  std::atomic<int> calls{0};
  {
    Await<int> aw = awaitable([&] {
      ++calls;
      return 0;
    });
    for (int i = 0; i < kChain; ++i) aw = awaitable([](int v) { return v + 1; }, aw);
  }
  {
    Await<int> aw = nowait(0);
    for (int i = 0; i < kChain; ++i) aw = then(aw, [&](const int& v) {
      ++calls;
      return v + 1;
    });
  }
  EXPECT_EQ(calls, 0);
}

TEST(AwaitRule9, DeepGraphWithTwoDependenciesPerNode) {
  // Node i depends on nodes i-1 and i-2: depth one million, every node reached twice.
  std::vector<Await<int>> keep_first(2);
  keep_first[0] = nowait(1);
  keep_first[1] = nowait(1);
  Await<int> prev2 = keep_first[0], prev1 = keep_first[1];
  for (int i = 2; i < kChain; ++i) {
    Await<int> next = awaitable([](int a, int b) { return (a + b) % 1000; }, prev1, prev2);
    prev2 = std::move(prev1);
    prev1 = std::move(next);
  }
  int a = 1, b = 1;
  for (int i = 2; i < kChain; ++i) {
    const int c = (a + b) % 1000;
    a = b;
    b = c;
  }
  prev2 = Await<int>();
  EXPECT_EQ(wait(prev1), b);
}

// ------------------------------------------------------------------------------------------------
// Rule 10: Await<Await<T>>.
// ------------------------------------------------------------------------------------------------

TEST(AwaitRule10, NestedAwait) {
  const int v = random_int(24);
  std::atomic<int> inner_calls{0}, outer_calls{0};
  Await<Await<int>> aw = awaitable([&] {
    ++outer_calls;
    return awaitable([&] {
      ++inner_calls;
      return v;
    });
  });
  static_assert(std::is_same_v<decltype(aw), Await<Await<int>>>);
  const Await<int>& inner = wait(aw);
  EXPECT_EQ(outer_calls, 1);
  EXPECT_EQ(inner_calls, 0);
  EXPECT_FALSE(inner.is_ready());
  EXPECT_EQ(wait(wait(aw)), v);
  EXPECT_EQ(inner_calls, 1);
  EXPECT_EQ(**aw, v);

  Await<Await<int>> ready = nowait(nowait(v));
  EXPECT_EQ(wait(wait(ready)), v);

  // As a dependency: waited once for an Await<int> parameter, then fn decides.
  Await<int> plus = awaitable([](Await<int> i) { return wait(i) + 1; }, aw);
  EXPECT_EQ(wait(plus), v + 1);
  Await<int> via_then = then(aw, [](const Await<int>& i) { return 2 * wait(i); });
  EXPECT_EQ(wait(via_then), 2 * v);
  EXPECT_EQ(inner_calls, 1);
}

// ------------------------------------------------------------------------------------------------
// Other behaviours.
// ------------------------------------------------------------------------------------------------

TEST(AwaitBehaviour, WaitFromInsideItsOwnFnThrowsLogicError) {
  Await<int> self;
  bool caught = false;
  std::atomic<int> calls{0};
  Await<int> aw = awaitable([&] {
    ++calls;
    try {
      (void)wait(self);
    } catch (const std::logic_error&) {
      caught = true;
    }
    return 5;
  });
  self = aw;
  EXPECT_EQ(wait(aw), 5);
  EXPECT_TRUE(caught);
  EXPECT_EQ(wait(self), 5);
  EXPECT_EQ(calls, 1);
  self = Await<int>();

  // Not caught by fn: the error becomes the cached result.
  Await<int> loop;
  Await<int> aw2 = awaitable([&] { return wait(loop) + 1; });
  loop = aw2;
  EXPECT_THROW((void)wait(aw2), std::logic_error);
  EXPECT_THROW((void)wait(aw2), std::logic_error);
  loop = Await<int>();

  // The runtime stays usable.
  const int v = random_int(25);
  EXPECT_EQ(wait(then(awaitable([v] { return v; }), [](const int& x) { return x + 1; })), v + 1);
}

TEST(AwaitBehaviour, WaitingADependentOfTheRunningAwaitThrowsAndLeavesItPending) {
  // fn of A waits B, and B depends on A: a cycle through fn. The inner wait throws; B goes back to
  // pending and can be waited normally once A is done.
  Await<int> b;
  bool caught = false;
  Await<int> a = awaitable([&] {
    try {
      (void)wait(b);
    } catch (const std::logic_error&) {
      caught = true;
    }
    return 20;
  });
  std::atomic<int> b_calls{0};
  b = awaitable(
      [&](int x) {
        ++b_calls;
        return x + 1;
      },
      a);
  EXPECT_EQ(wait(a), 20);
  EXPECT_TRUE(caught);
  EXPECT_FALSE(b.is_ready());
  EXPECT_EQ(b_calls, 0);
  EXPECT_EQ(wait(b), 21);
  EXPECT_EQ(b_calls, 1);
}

TEST(AwaitBehaviour, WaiterBlockedOnAStateGivenBackByAFailedWaitGetsTheRealValue) {
  // Main thread: a's fn waits b, and b depends on a (and on c): that inner wait claims b, runs c
  // (slow), then finds a running on its own thread and throws, giving b back (pending). Another
  // thread that meanwhile blocked on b must not take b for done: it has to run b itself, once a
  // has finished.
  Await<int> b;
  std::atomic<bool> c_started{false};
  std::atomic<int> b_calls{0};
  bool caught = false;
  const int x = random_int(61), y = random_int(62);
  Await<int> a = awaitable([&] {
    try {
      (void)wait(b);
    } catch (const std::logic_error&) {
      caught = true;
    }
    return x;
  });
  Await<int> c = awaitable([&] {
    c_started = true;
    std::this_thread::sleep_for(150ms);  // the other thread arrives and blocks on b meanwhile
    return y;
  });
  b = awaitable(
      [&](int va, int vc) {
        ++b_calls;
        return va + vc;
      },
      a, c);
  int from_thread = 0;
  std::thread other([&] {
    while (!c_started) std::this_thread::yield();
    from_thread = wait(b);
  });
  EXPECT_EQ(wait(a), x);
  other.join();
  EXPECT_TRUE(caught);
  EXPECT_EQ(from_thread, x + y);
  EXPECT_EQ(wait(b), x + y);
  EXPECT_EQ(b_calls, 1);
}

TEST(AwaitBehaviour, EmptyAwait) {
  Await<int> empty;
  EXPECT_FALSE(empty.valid());
  EXPECT_FALSE(empty.is_ready());
  EXPECT_FALSE(empty.is_nowait());
  EXPECT_EQ(empty.args<>(), nullptr);
  EXPECT_EQ(empty.fn<int (*)()>(), nullptr);
  EXPECT_THROW((void)wait(empty), std::logic_error);
  EXPECT_THROW((void)wait(empty, Stream::create(kCpu)), std::logic_error);
  EXPECT_THROW((void)*empty, std::logic_error);
  EXPECT_THROW((void)then(empty, [](const int& x) { return x; }), std::logic_error);
  EXPECT_THROW((void)awaitable([](int x) { return x; }, empty), std::logic_error);
  Await<void> empty_void;
  EXPECT_THROW(wait(empty_void), std::logic_error);
  Await<Tensor> empty_tensor;
  EXPECT_THROW((void)empty_tensor->numel(), std::logic_error);
  EXPECT_TRUE(nowait(1).valid());
}

TEST(AwaitBehaviour, VoidFnGivesAwaitVoid) {
  std::atomic<int> calls{0};
  Stream s = Stream::create(kCpu);
  Stream seen = default_stream(kCpu);
  auto aw = awaitable([&] {
    ++calls;
    seen = current_stream(kCpu);
  });
  static_assert(std::is_same_v<decltype(aw), Await<void>>);
  static_assert(std::is_void_v<decltype(wait(aw))>);
  EXPECT_FALSE(aw.is_ready());
  wait(aw, s);
  wait(aw);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(seen == s);
  EXPECT_TRUE(aw.is_ready());

  // then() of an Await<void>, and Await<void> as a dependency.
  auto next = then(aw, [] { return 4; });
  static_assert(std::is_same_v<decltype(next), Await<int>>);
  EXPECT_EQ(wait(next), 4);
  std::atomic<int> side{0};
  Await<void> effect = awaitable([&] { side = 9; });
  Await<int> after = awaitable([&](Await<void> e) { return e.is_ready() ? side.load() : -1; }, effect);
  EXPECT_EQ(wait(after), -1);  // an Await parameter: passed unchanged, not waited
  Await<int> after_waited = awaitable([&](const auto& e) { return e.is_ready() ? side.load() : -1; }, effect);
  EXPECT_EQ(wait(after_waited), 9);  // generic: waited first

  Await<void> failing = awaitable([] { throw TestError("void failed"); });
  EXPECT_THROW(wait(then(failing, [] { return 1; })), TestError);
}

TEST(AwaitBehaviour, FnReturnsTheCallableOfTheRightType) {
  const int k = random_int(26);
  auto lambda = [k](int x) { return x * k; };
  Await<int> dep = nowait(3);
  Await<int> aw = awaitable(lambda, dep);
  const auto* f = aw.fn<decltype(lambda)>();
  ASSERT_NE(f, nullptr);
  EXPECT_EQ((*f)(2), 2 * k);
  EXPECT_EQ(aw.fn<int (*)(int)>(), nullptr);
  EXPECT_EQ(aw.fn<std::function<int(int)>>(), nullptr);

  struct Fns {
    static int twice(int x) { return 2 * x; }
  };
  Await<int> by_ptr = awaitable(&Fns::twice, 5);
  ASSERT_NE(by_ptr.fn<int (*)(int)>(), nullptr);
  EXPECT_EQ(*by_ptr.fn<int (*)(int)>(), &Fns::twice);
  EXPECT_EQ(by_ptr.fn<decltype(lambda)>(), nullptr);

  auto plus = [](const int& x) { return x + 1; };
  Await<int> chained = then(aw, plus);
  EXPECT_NE(chained.fn<decltype(plus)>(), nullptr);
  EXPECT_EQ(nowait(1).fn<decltype(plus)>(), nullptr);
}

TEST(AwaitBehaviour, ArgsAreTheBoundArgumentsWhilePending) {
  const int n = random_int(27);
  const std::string text = "seed-" + std::to_string(n);
  Await<int> dep = nowait(n);
  Await<std::size_t> aw = awaitable([](int a, const std::string& s, Await<int> d) { return a + s.size() + static_cast<std::size_t>(wait(d)); },
                                    n, text, dep);
  const auto* args = aw.args<int, std::string, Await<int>>();
  ASSERT_NE(args, nullptr);
  EXPECT_EQ(std::get<0>(*args), n);
  EXPECT_EQ(std::get<1>(*args), text);
  EXPECT_EQ(std::get<2>(*args).state(), dep.state());
  EXPECT_EQ((aw.args<int, std::string>()), nullptr);
  EXPECT_EQ((aw.args<long, std::string, Await<int>>()), nullptr);
  EXPECT_EQ(wait(aw), static_cast<std::size_t>(n) + text.size() + static_cast<std::size_t>(n));
  EXPECT_EQ((aw.args<int, std::string, Await<int>>()), nullptr);
}

TEST(AwaitBehaviour, ArgumentsAreBoundByValueWhenAwaitableIsCalled) {
  std::vector<int> v = {1, 2, 3};
  Await<int> aw = awaitable([](std::vector<int> x) { return static_cast<int>(x.size()); }, v);
  v.push_back(4);
  EXPECT_EQ(wait(aw), 3);
  // Move-only arguments and callables.
  auto p = std::make_unique<int>(random_int(28));
  const int expected = *p;
  Await<int> moved = awaitable([q = std::make_unique<int>(1)](std::unique_ptr<int> x) { return *x + *q; }, std::move(p));
  EXPECT_EQ(wait(moved), expected + 1);
}

TEST(AwaitBehaviour, StateQueries) {
  Await<int> aw = awaitable([] { return 1; });
  EXPECT_TRUE(aw.valid());
  EXPECT_FALSE(aw.is_nowait());
  EXPECT_FALSE(aw.is_ready());
  Await<int> copy = aw;
  (void)wait(copy);
  EXPECT_TRUE(aw.is_ready());  // copies share one state
  EXPECT_FALSE(aw.is_nowait());
}

TEST(AwaitBehaviour, IsAwaitV) {
  static_assert(is_await_v<Await<int>>);
  static_assert(is_await_v<const Await<Tensor>>);
  static_assert(is_await_v<Await<void>>);
  static_assert(is_await_v<Await<Await<int>>>);
  static_assert(!is_await_v<int>);
  static_assert(!is_await_v<Tensor>);
  static_assert(!is_await_v<std::vector<Await<int>>>);
  EXPECT_TRUE(is_await_v<Await<float>>);
  EXPECT_FALSE(is_await_v<float>);
}

TEST(AwaitBehaviour, DereferenceWaitsOnce) {
  std::atomic<int> calls{0};
  const auto values = random_values(6, 29);
  Await<Tensor> aw = awaitable([&] {
    ++calls;
    return from_vector(values, {2, 3}, kCpu);
  });
  EXPECT_EQ(aw->numel(), 6);
  EXPECT_EQ(aw->shape(), (Shape{2, 3}));
  EXPECT_EQ(to_vector(*aw), values);
  EXPECT_EQ(aw->data_ptr(), (*aw).data_ptr());
  EXPECT_EQ(calls, 1);
}

TEST(AwaitBehaviour, ThenChains) {
  const int v = random_int(30);
  std::atomic<int> calls{0};
  Await<int> base = awaitable([&] {
    ++calls;
    return v;
  });
  auto doubled = then(base, [&](const int& x) {
    ++calls;
    return 2L * x;
  });
  static_assert(std::is_same_v<decltype(doubled), Await<long>>);
  auto text = then(doubled, [&](long x) {
    ++calls;
    return std::to_string(x);
  });
  static_assert(std::is_same_v<decltype(text), Await<std::string>>);
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(wait(text), std::to_string(2L * v));
  EXPECT_EQ(calls, 3);
  EXPECT_EQ(wait(doubled), 2L * v);
  EXPECT_EQ(calls, 3);

  // A reference-returning continuation gives an Await of the value.
  Await<std::pair<int, std::string>> pair = nowait(std::pair<int, std::string>{v, "x"});
  auto second = then(pair, [](const std::pair<int, std::string>& p) -> const std::string& { return p.second; });
  static_assert(std::is_same_v<decltype(second), Await<std::string>>);
  EXPECT_EQ(wait(second), "x");

  // then() of a Tensor result, on a stream.
  const auto values = random_values(16, 31);
  Stream s = Stream::create(kCpu);
  Await<Tensor> t = then(nowait(from_vector(values, {16}, kCpu)), [](const Tensor& x) { return scaled(x, 3.0f); });
  const Tensor& on_s = wait(t, s);
  EXPECT_EQ(read_on(s, on_s), scaled_values(values, 3.0f));  // usable on s
  EXPECT_EQ(to_vector(wait(t)), scaled_values(values, 3.0f));  // and, once waited there, on the current stream
}

TEST(AwaitBehaviour, ExceptionOfADependencyPropagatesToDependents) {
  const std::string message = "dependency failed " + std::to_string(random_int(32));
  std::atomic<int> dep_calls{0}, calls{0};
  Await<int> dep = awaitable([&]() -> int {
    ++dep_calls;
    throw TestError(message);
  });
  Await<int> direct = awaitable(
      [&](int x) {
        ++calls;
        return x;
      },
      dep);
  Await<int> chained = then(direct, [&](const int& x) {
    ++calls;
    return x + 1;
  });
  for (int i = 0; i < 2; ++i) {
    try {
      (void)wait(chained);
      ADD_FAILURE() << "no exception";
    } catch (const TestError& e) {
      EXPECT_EQ(e.what(), message);
    }
  }
  try {
    (void)wait(direct);
    ADD_FAILURE() << "no exception";
  } catch (const TestError& e) {
    EXPECT_EQ(e.what(), message);
  }
  EXPECT_THROW((void)wait(dep), TestError);
  EXPECT_EQ(dep_calls, 1);
  EXPECT_EQ(calls, 0);
  EXPECT_TRUE(direct.is_ready());
  EXPECT_TRUE(chained.is_ready());

  // A dependency passed unchanged fails only where fn waits it.
  Await<int> handled = awaitable(
      [](Await<int> d) {
        try {
          return wait(d);
        } catch (const TestError&) {
          return -1;
        }
      },
      dep);
  EXPECT_EQ(wait(handled), -1);
}

// ------------------------------------------------------------------------------------------------
// Ports of PyTorch's test/jit/test_await.py.
// ------------------------------------------------------------------------------------------------

namespace {

struct Pair {
  Tensor a;
  float b = 0;
};

struct Counter {
  int value = 0;
  std::vector<int> history;
};

Tensor triple_waited(const Await<Tensor>& aw) { return scaled(wait(aw), 3.0f); }

}  // namespace

// test_await_python: fn(args...) == wait(awaitable(fn, args...)).
TEST(AwaitTorchPort, FnOfArgsEqualsWait) {
  const auto values = random_values(12, 40);
  const float k = 1.5f + static_cast<float>(random_int(41, 1, 10));
  auto fn = [](const Tensor& x, float factor) { return scaled(x, factor); };
  Tensor x = from_vector(values, {3, 4}, kCpu);
  Await<Tensor> aw = awaitable(fn, x, k);
  const Tensor direct = fn(x, k);
  const Tensor& deferred = wait(aw);
  EXPECT_EQ(deferred.shape(), direct.shape());
  EXPECT_EQ(to_vector(deferred), to_vector(direct));
  EXPECT_EQ(to_vector(deferred), scaled_values(values, k));

  auto int_fn = [](int a, int b) { return a * 31 + b; };
  const int a = random_int(42), b = random_int(43);
  EXPECT_EQ(wait(awaitable(int_fn, a, b)), int_fn(a, b));
}

// test_await_list_lazy: making a list of Awaits runs nothing.
TEST(AwaitTorchPort, VectorOfAwaitsRunsNothing) {
  std::atomic<int> calls{0};
  const auto values = random_values(10, 44);
  std::vector<Await<Tensor>> list;
  for (int i = 0; i < 10; ++i)
    list.push_back(awaitable(
        [&calls](float v) {
          ++calls;
          return full({2}, v, DType::f32, kCpu);
        },
        values[i]));
  EXPECT_EQ(calls, 0);
  for (const auto& aw : list) EXPECT_FALSE(aw.is_ready());
  for (int i = 0; i < 10; ++i) EXPECT_EQ(to_vector(wait(list[i])), (std::vector<float>{values[i], values[i]}));
  EXPECT_EQ(calls, 10);
}

// test_await_nowait / test_await_class_nowait.
TEST(AwaitTorchPort, NowaitOfAScalarAndOfAStruct) {
  const float f = random_values(1, 45)[0];
  Await<float> scalar = nowait(f);
  EXPECT_TRUE(scalar.is_ready());
  EXPECT_EQ(wait(scalar), f);

  const auto values = random_values(4, 46);
  Pair p{from_vector(values, {4}, kCpu), f};
  Await<Pair> st = nowait(p);
  EXPECT_TRUE(st.is_nowait());
  EXPECT_EQ(st->b, f);
  EXPECT_EQ(st->a.data_ptr(), p.a.data_ptr());  // the same storage: a copy of the handle
  EXPECT_EQ(to_vector(st->a), values);
}

// test_await_class_arg / test_await_class_return.
TEST(AwaitTorchPort, StructArgumentsAndResults) {
  const auto va = random_values(6, 47), vb = random_values(6, 48);
  Pair in1{from_vector(va, {6}, kCpu), 2.0f};
  Pair in2{from_vector(vb, {6}, kCpu), 3.0f};
  Await<Pair> aw = awaitable(
      [](const Pair& x, Pair y) {
        std::vector<float> a = to_vector(x.a), b = to_vector(y.a), out(a.size());
        for (std::size_t i = 0; i < a.size(); ++i) out[i] = a[i] * x.b + b[i] * y.b;
        return Pair{from_vector(out, {static_cast<int64_t>(out.size())}, kCpu), x.b + y.b};
      },
      in1, in2);
  const Pair& r = wait(aw);
  EXPECT_EQ(r.b, 5.0f);
  std::vector<float> expected(6);
  for (int i = 0; i < 6; ++i) expected[i] = va[i] * 2.0f + vb[i] * 3.0f;
  EXPECT_EQ(to_vector(r.a), expected);
}

// test_await_getattr_implicit_convertion: member access through the Await waits, once.
TEST(AwaitTorchPort, MemberAccessThroughTheAwaitWaitsOnce) {
  std::atomic<int> calls{0};
  const auto values = random_values(5, 49);
  Await<Pair> aw = awaitable([&] {
    ++calls;
    return Pair{from_vector(values, {5}, kCpu), 0.25f};
  });
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(aw->b, 0.25f);
  EXPECT_EQ(aw->a.numel(), 5);
  EXPECT_EQ(to_vector(aw->a), values);
  EXPECT_EQ(&aw->a, &wait(aw).a);
  EXPECT_EQ(calls, 1);
}

// test_await_nested.
TEST(AwaitTorchPort, NestedAwaitOfTensor) {
  const auto values = random_values(8, 50);
  Tensor x = from_vector(values, {8}, kCpu);
  Await<Await<Tensor>> aw = awaitable([](Tensor t) { return awaitable([](Tensor u) { return scaled(u, 2.0f); }, t); }, x);
  const Await<Tensor>& inner = wait(aw);
  EXPECT_FALSE(inner.is_ready());
  EXPECT_EQ(to_vector(wait(wait(aw))), scaled_values(values, 2.0f));
  EXPECT_EQ(to_vector(*wait(aw)), scaled_values(values, 2.0f));
}

// test_eager_await_non_scriptable-like: fn mutates its own copy of a user object.
TEST(AwaitTorchPort, FnMutatesItsCopyNotTheCallersObject) {
  Counter c{random_int(51), {1, 2}};
  const Counter original = c;
  Await<Counter> aw = awaitable(
      [](Counter mine) {
        mine.value += 1;
        mine.history.push_back(mine.value);
        return mine;
      },
      c);
  const Counter& r = wait(aw);
  EXPECT_EQ(c.value, original.value);
  EXPECT_EQ(c.history, original.history);
  EXPECT_EQ(r.value, original.value + 1);
  EXPECT_EQ(r.history, (std::vector<int>{1, 2, original.value + 1}));
}

// test_await_out_of_interpreter / threads: made on one thread, waited on another.
TEST(AwaitTorchPort, MadeOnOneThreadWaitedOnAnother) {
  const auto values = random_values(16, 52);
  std::atomic<int> calls{0};
  std::thread::id ran_on;
  Await<Tensor> aw = awaitable(
      [&](Tensor t) {
        ++calls;
        ran_on = std::this_thread::get_id();
        return scaled(t, -1.0f);
      },
      from_vector(values, {16}, kCpu));
  std::thread::id waiter;
  const Tensor* from_thread = nullptr;
  std::vector<float> seen;
  std::thread th([&] {
    waiter = std::this_thread::get_id();
    from_thread = &wait(aw);
    seen = to_vector(*from_thread);
  });
  th.join();
  EXPECT_EQ(ran_on, waiter);
  EXPECT_EQ(seen, scaled_values(values, -1.0f));
  EXPECT_EQ(&wait(aw), from_thread);
  EXPECT_EQ(to_vector(wait(aw)), scaled_values(values, -1.0f));
  EXPECT_EQ(calls, 1);
}

// test_await_multiout_save: a (Tensor, List[Tensor]) result.
TEST(AwaitTorchPort, MultiOutputResult) {
  const auto values = random_values(10, 53);
  using Multi = std::tuple<Tensor, std::vector<Tensor>>;
  Await<Multi> aw = awaitable(
      [](Tensor x) {
        return Multi{scaled(x, 2.0f), {scaled(x, 3.0f), scaled(x, 4.0f)}};
      },
      from_vector(values, {2, 5}, kCpu));
  const Multi& r = wait(aw);
  EXPECT_EQ(std::get<0>(r).shape(), (Shape{2, 5}));
  EXPECT_EQ(to_vector(std::get<0>(r)), scaled_values(values, 2.0f));
  ASSERT_EQ(std::get<1>(r).size(), 2u);
  EXPECT_EQ(to_vector(std::get<1>(r)[0]), scaled_values(values, 3.0f));
  EXPECT_EQ(to_vector(std::get<1>(r)[1]), scaled_values(values, 4.0f));
  auto [first, rest] = wait(aw);
  EXPECT_EQ(first.data_ptr(), std::get<0>(r).data_ptr());
  EXPECT_EQ(rest[1].data_ptr(), std::get<1>(r)[1].data_ptr());
}

// test_await_func_arg: an Await passed to a function and waited there.
TEST(AwaitTorchPort, AwaitPassedToAFunctionAndWaitedThere) {
  const auto values = random_values(7, 54);
  std::atomic<int> calls{0};
  Await<Tensor> aw = awaitable(
      [&](Tensor t) {
        ++calls;
        return scaled(t, 2.0f);
      },
      from_vector(values, {7}, kCpu));
  EXPECT_EQ(to_vector(triple_waited(aw)), scaled_values(scaled_values(values, 2.0f), 3.0f));
  EXPECT_EQ(calls, 1);
  // And through awaitable: a function taking the Await receives it unchanged.
  Await<Tensor> other = awaitable(
      [&](Tensor t) {
        ++calls;
        return scaled(t, 5.0f);
      },
      from_vector(values, {7}, kCpu));
  Await<Tensor> outer = awaitable(&triple_waited, other);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(to_vector(wait(outer)), scaled_values(scaled_values(values, 5.0f), 3.0f));
  EXPECT_EQ(calls, 2);
}
