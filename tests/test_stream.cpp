// Streams and events on both backends (docs/api.md section 2). The CPU backend models CUDA streams as
// asynchronous in-order queues, so ordering bugs show up here without a GPU.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <thread>
#include <vector>

#include <defer/defer.hpp>

#include "test_util.hpp"
#ifdef DEFER_HAVE_CUDA
#include <cuda_runtime_api.h>

#include "cuda/launch.hpp"
#endif

using namespace defer;
using namespace defer::testing;
using Clock = std::chrono::steady_clock;

TEST(Stream, CreateGivesADistinctStreamOnTheDevice) {
  Stream a = Stream::create(Device::cpu());
  Stream b = Stream::create(Device::cpu());
  EXPECT_EQ(a.device(), Device::cpu());
  EXPECT_FALSE(a == b);
  EXPECT_NE(a.id(), b.id());
  Stream copy = a;
  EXPECT_TRUE(copy == a);
  EXPECT_EQ(copy.id(), a.id());
  EXPECT_EQ(a.native_handle(), nullptr);
}

TEST(Stream, CurrentIsTheDefaultUntilGuarded) {
  const Device cpu = Device::cpu();
  EXPECT_TRUE(current_stream(cpu) == default_stream(cpu));
  Stream a = Stream::create(cpu);
  Stream b = Stream::create(cpu);
  {
    StreamGuard ga(a);
    EXPECT_TRUE(current_stream(cpu) == a);
    {
      StreamGuard gb(b);
      EXPECT_TRUE(current_stream(cpu) == b);
    }
    EXPECT_TRUE(current_stream(cpu) == a);
  }
  EXPECT_TRUE(current_stream(cpu) == default_stream(cpu));
}

TEST(Stream, CurrentStreamIsPerThread) {
  Stream a = Stream::create(Device::cpu());
  StreamGuard guard(a);
  bool other_sees_default = false;
  std::thread t([&] { other_sees_default = current_stream(Device::cpu()) == default_stream(Device::cpu()); });
  t.join();
  EXPECT_TRUE(other_sees_default);
  EXPECT_TRUE(current_stream(Device::cpu()) == a);
}

TEST(Stream, WorkIsAsynchronousAndSynchronizeWaitsForIt) {
  Stream s = Stream::create(Device::cpu());
  std::atomic<bool> done{false};
  const auto t0 = Clock::now();
  enqueue_sleep(s, 150);
  enqueue(s, [&] { done = true; });
  EXPECT_LT(seconds_since(t0), 0.075) << "queuing work blocked the host";
  EXPECT_FALSE(s.query());
  EXPECT_FALSE(done.load());
  s.synchronize();
  EXPECT_TRUE(done.load());
  EXPECT_TRUE(s.query());
  EXPECT_GE(seconds_since(t0), 0.14);
}

TEST(Stream, WorkRunsInOrder) {
  Stream s = Stream::create(Device::cpu());
  std::vector<int> order;
  for (int i = 0; i < 1000; ++i) enqueue(s, [&order, i] { order.push_back(i); });
  s.synchronize();
  ASSERT_EQ(order.size(), 1000u);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(order[static_cast<std::size_t>(i)], i);
}

TEST(Event, MarksTheWorkQueuedBeforeIt) {
  Stream s = Stream::create(Device::cpu());
  std::atomic<int> stage{0};
  enqueue_sleep(s, 100);
  enqueue(s, [&] { stage = 1; });
  Event e = s.record();
  enqueue_sleep(s, 200);
  enqueue(s, [&] { stage = 2; });
  EXPECT_TRUE(e.valid());
  EXPECT_FALSE(e.query());
  e.synchronize();
  EXPECT_TRUE(e.query());
  EXPECT_EQ(stage.load(), 1) << "the event waited for work queued after it";
  s.synchronize();
  EXPECT_EQ(stage.load(), 2);
}

TEST(Event, DefaultConstructedIsComplete) {
  Event e;
  EXPECT_FALSE(e.valid());
  EXPECT_TRUE(e.query());
  e.synchronize();
  Stream s = Stream::create(Device::cpu());
  s.wait(e);  // no-op
  s.synchronize();
}

TEST(Event, OutlivesItsStream) {
  Event e;
  {
    Stream s = Stream::create(Device::cpu());
    enqueue_sleep(s, 20);
    e = s.record();
  }  // the stream finishes its work before it goes away
  EXPECT_TRUE(e.query());
}

// The heart of stream ordering: a slow producer on A, a consumer on B ordered by an event. The
// consumer must read the produced values (never stale memory), and the host must not block.
TEST(Event, CrossStreamWaitOrdersTheConsumerAfterASlowProducer) {
  Stream a = Stream::create(Device::cpu());
  Stream b = Stream::create(Device::cpu());
  const std::vector<float> expected = random_values(4096, 7);
  std::vector<float> buffer(expected.size(), -1.f), seen;
  const auto t0 = Clock::now();
  enqueue_sleep(a, 200);
  enqueue(a, [&] { std::memcpy(buffer.data(), expected.data(), expected.size() * sizeof(float)); });
  Event produced = a.record();
  b.wait(produced);
  enqueue(b, [&] { seen = buffer; });
  EXPECT_LT(seconds_since(t0), 0.1) << "the cross-stream wait blocked the host";
  b.synchronize();
  EXPECT_EQ(seen, expected);
}

TEST(Event, WaitingQueueDoesNotBlockOtherQueues) {
  Stream a = Stream::create(Device::cpu());
  Stream b = Stream::create(Device::cpu());
  Stream c = Stream::create(Device::cpu());
  enqueue_sleep(a, 300);
  b.wait(a.record());
  std::atomic<bool> c_ran{false};
  enqueue(c, [&] { c_ran = true; });
  c.synchronize();
  EXPECT_TRUE(c_ran.load());
  EXPECT_FALSE(b.query()) << "b should still be waiting on a";
  b.synchronize();
  EXPECT_TRUE(a.query());
}

TEST(Stream, AFailedTaskIsReportedOnceAndTheStreamStaysUsable) {
  Stream s = Stream::create(Device::cpu());
  enqueue(s, [] { throw std::runtime_error("kernel exploded"); });
  try {
    s.synchronize();
    FAIL() << "no error reported";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("kernel exploded"), std::string::npos) << e.what();
  }
  std::atomic<bool> ran{false};
  enqueue(s, [&] { ran = true; });
  s.synchronize();
  EXPECT_TRUE(ran.load());
}

TEST(Stream, DestroyingTheLastHandleFinishesQueuedWork) {
  std::atomic<int> count{0};
  {
    Stream s = Stream::create(Device::cpu());
    for (int i = 0; i < 10; ++i) {
      enqueue_sleep(s, 2);
      enqueue(s, [&] { ++count; });
    }
  }
  EXPECT_EQ(count.load(), 10);
}

TEST(Stream, ManyStreamsFromManyThreads) {
  std::vector<std::thread> threads;
  std::atomic<int> total{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      Stream s = Stream::create(Device::cpu());
      StreamGuard guard(s);
      for (int i = 0; i < 100; ++i) enqueue(current_stream(Device::cpu()), [&] { ++total; });
      current_stream(Device::cpu()).synchronize();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(total.load(), 800);
}

// Stream::from_native wraps a cudaStream_t made elsewhere (docs/api.md sections 2 and 12). Its bad
// arguments are the contract's errors on every machine; the CUDA cases below need a GPU.
TEST(Stream, FromNativeRejectsTheCpuANullHandleAndAnUnavailableDevice) {
  int not_a_stream = 0;
  try {
    (void)Stream::from_native(Device::cpu(), &not_a_stream);
    ADD_FAILURE() << "a CPU device was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("from_native"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cpu"), std::string::npos) << e.what();
  }
  try {
    (void)Stream::from_native(Device::cuda(0), nullptr);
    ADD_FAILURE() << "a null handle was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("from_native"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("null"), std::string::npos) << e.what();
  }
  if (!cuda_available()) {
    // Never dereferenced: the device is checked first.
    try {
      (void)Stream::from_native(Device::cuda(0), &not_a_stream);
      ADD_FAILURE() << "a stream was wrapped without a GPU";
    } catch (const DeviceError& e) {
      EXPECT_NE(std::string(e.what()).find("cuda:0"), std::string::npos) << e.what();
    }
  }
  // The runtime is untouched.
  Stream s = Stream::create(Device::cpu());
  s.synchronize();
}

#ifdef DEFER_HAVE_CUDA
TEST(CudaStream, CrossStreamWaitOrdersTheConsumerAfterASlowProducer) {
  DEFER_SKIP_WITHOUT_GPU();
  const Device gpu = Device::cuda(0);
  Stream a = Stream::create(gpu);
  Stream b = Stream::create(gpu);
  EXPECT_NE(a.native_handle(), nullptr);
  const std::size_t n = 1 << 20;
  Tensor t = [&] {
    StreamGuard g(a);
    return empty({static_cast<int64_t>(n)}, DType::f32, gpu);
  }();
  const auto t0 = Clock::now();
  kernels::cuda::busy_wait(200'000'000, static_cast<cudaStream_t>(a.native_handle()));  // 200 ms
  const float value = 3.5f;
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  kernels::cuda::fill(t.data_ptr(), static_cast<int64_t>(n), sizeof(float), bits, static_cast<cudaStream_t>(a.native_handle()));
  b.wait(a.record());
  std::vector<float> host(n, 0.f);
  ASSERT_EQ(cudaMemcpyAsync(host.data(), t.data_ptr(), n * sizeof(float), cudaMemcpyDeviceToHost,
                            static_cast<cudaStream_t>(b.native_handle())),
            cudaSuccess);
  b.synchronize();
  EXPECT_GE(seconds_since(t0), 0.15);
  for (std::size_t i = 0; i < n; i += 4099) ASSERT_EQ(host[i], 3.5f) << i;
}

TEST(CudaStream, EventsQueryAndSynchronize) {
  DEFER_SKIP_WITHOUT_GPU();
  Stream s = Stream::create(Device::cuda(0));
  kernels::cuda::busy_wait(100'000'000, static_cast<cudaStream_t>(s.native_handle()));
  Event e = s.record();
  EXPECT_FALSE(e.query());
  e.synchronize();
  EXPECT_TRUE(e.query());
  EXPECT_TRUE(s.query());
}

TEST(CudaStream, CpuStreamWaitsOnCudaEventAndBack) {
  DEFER_SKIP_WITHOUT_GPU();
  Stream g = Stream::create(Device::cuda(0));
  Stream c = Stream::create(Device::cpu());
  kernels::cuda::busy_wait(100'000'000, static_cast<cudaStream_t>(g.native_handle()));
  c.wait(g.record());
  std::atomic<bool> gpu_done_first{false};
  enqueue(c, [&] { gpu_done_first = g.query(); });
  c.synchronize();
  EXPECT_TRUE(gpu_done_first.load());

  std::atomic<bool> cpu_done{false};
  enqueue_sleep(c, 100);
  enqueue(c, [&] { cpu_done = true; });
  g.wait(c.record());
  Event after = g.record();
  after.synchronize();
  EXPECT_TRUE(cpu_done.load());
}

// A foreign cudaStream_t (made here by hand, as PyTorch would): the wrapper queues on it, is a stream
// like ours (records, waits, queries), is equal to another wrapper of the same handle, and never
// destroys it.
TEST(CudaStream, FromNativeWrapsAForeignStreamWithoutOwningIt) {
  DEFER_SKIP_WITHOUT_GPU();
  const Device gpu = Device::cuda(0);
  cudaStream_t raw = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&raw, cudaStreamNonBlocking), cudaSuccess);
  {
    Stream w = Stream::from_native(gpu, raw);
    EXPECT_EQ(w.native_handle(), static_cast<void*>(raw));
    EXPECT_EQ(w.device(), gpu);
    EXPECT_TRUE(Stream::from_native(gpu, raw) == w) << "a second wrapper of the same live handle";
    EXPECT_FALSE(Stream::create(gpu) == w);
    kernels::cuda::busy_wait(100'000'000, raw);  // foreign work, queued without defer
    EXPECT_FALSE(w.query());
    Event e = w.record();
    EXPECT_FALSE(e.query());
    e.synchronize();
    EXPECT_TRUE(w.query());
    Stream ours = Stream::create(gpu);
    kernels::cuda::busy_wait(100'000'000, static_cast<cudaStream_t>(ours.native_handle()));
    w.wait(ours.record());  // the foreign stream now waits for ours
    w.synchronize();
    EXPECT_TRUE(ours.query());
  }
  EXPECT_EQ(cudaStreamQuery(raw), cudaSuccess) << "the foreign stream must outlive its wrapper";
  EXPECT_EQ(cudaStreamDestroy(raw), cudaSuccess);
}

// Defer work queued on a wrapped stream runs after the foreign work queued on it before, in order,
// without any host synchronization in between.
TEST(CudaStream, FromNativeOrdersDeferWorkAfterForeignWork) {
  DEFER_SKIP_WITHOUT_GPU();
  const Device gpu = Device::cuda(0);
  cudaStream_t raw = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&raw, cudaStreamNonBlocking), cudaSuccess);
  {
    Stream w = Stream::from_native(gpu, raw);
    StreamGuard guard(w);
    const int64_t n = 1 << 20;
    Tensor x = empty({n}, DType::f32, gpu);
    const float value = 3.5f;
    std::uint32_t bits = 0;
    std::memcpy(&bits, &value, sizeof bits);
    kernels::cuda::busy_wait(200'000'000, raw);
    kernels::cuda::fill(x.data_ptr(), n, sizeof(float), bits, raw);  // a foreign kernel produces x
    const Tensor y = wait(mul(x, 2.f));                                // a defer kernel, queued after it
    const std::vector<float> host = to_vector(y);
    for (std::size_t i = 0; i < host.size(); i += 4099) ASSERT_EQ(host[i], 7.f) << i;
  }
  ASSERT_EQ(cudaStreamSynchronize(raw), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(raw), cudaSuccess);
}

// Dropping the last handle of a wrapper with work still queued does not block the host, and the
// blocks the allocator cached for it go back to the shared pool once that work is over.
TEST(CudaStream, DroppingAWrapperNeitherBlocksNorStrandsItsCachedBlocks) {
  DEFER_SKIP_WITHOUT_GPU();
  const Device gpu = Device::cuda(0);
  empty_cache(gpu);
  const std::size_t reserved_before = memory_stats(gpu).reserved_bytes;
  cudaStream_t raw = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&raw, cudaStreamNonBlocking), cudaSuccess);
  auto w = std::make_optional(Stream::from_native(gpu, raw));
  {
    StreamGuard guard(*w);
    Tensor t = empty({1 << 20}, DType::f32, gpu);  // a new block, cached for the wrapper when freed
  }
  EXPECT_GT(memory_stats(gpu).reserved_bytes, reserved_before);
  kernels::cuda::busy_wait(200'000'000, raw);
  const auto t0 = Clock::now();
  w.reset();
  EXPECT_LT(seconds_since(t0), 0.1) << "dropping a wrapper waited for its stream";
  ASSERT_EQ(cudaStreamSynchronize(raw), cudaSuccess);  // also runs what the wrapper queued behind the work
  empty_cache(gpu);
  EXPECT_EQ(memory_stats(gpu).reserved_bytes, reserved_before) << "the wrapper's cached block was stranded";
  EXPECT_EQ(cudaStreamDestroy(raw), cudaSuccess);
}

// The legacy default stream is wrapped when named explicitly (cudaStreamLegacy; 0 is ambiguous).
TEST(CudaStream, FromNativeTakesTheLegacyDefaultStreamByName) {
  DEFER_SKIP_WITHOUT_GPU();
  const Device gpu = Device::cuda(0);
  Stream legacy = Stream::from_native(gpu, static_cast<void*>(cudaStreamLegacy));
  StreamGuard guard(legacy);
  const Tensor y = wait(add(from_vector({1.f, 2.f}, {2}, gpu), 1.f));
  EXPECT_EQ(to_vector(y), (std::vector<float>{2.f, 3.f}));
}
#endif
