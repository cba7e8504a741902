// The stream-ordered caching allocator: reuse on the same stream without synchronization, no reuse
// while another stream that used a block may still run, accounting, cache release, out of memory.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <thread>

#include <defer/defer.hpp>

#include "runtime/stream_ordered_pool.hpp"
#include "test_util.hpp"

using namespace defer;
using namespace defer::testing;

namespace {

const Device cpu = Device::cpu();

Tensor alloc_on(const Stream& s, int64_t n) {
  StreamGuard g(s);
  return empty({n}, DType::f32, s.device());
}

// Blocks a CPU stream until the returned promise is fulfilled.
std::shared_ptr<std::promise<void>> block(const Stream& s) {
  auto gate = std::make_shared<std::promise<void>>();
  auto opened = gate->get_future().share();
  enqueue(s, [opened] { opened.wait(); });
  return gate;
}

class Allocator : public ::testing::Test {
 protected:
  void SetUp() override {
    empty_cache(cpu);
    baseline_ = memory_stats(cpu);
  }
  void TearDown() override {
    detail::pool_for(cpu).fail_system_allocations(0);
    detail::pool_for(cpu).fail_requests(0, 0);
    EXPECT_EQ(memory_stats(cpu).allocated_bytes, baseline_.allocated_bytes) << "a test leaked tensors";
  }
  MemoryStats baseline_{};
};

}  // namespace

TEST_F(Allocator, SameStreamReusesAFreedBlockAtOnce) {
  Stream s = Stream::create(cpu);
  enqueue_sleep(s, 100);  // the stream is busy: reuse must not wait for it
  void* first = nullptr;
  {
    Tensor t = alloc_on(s, 1000);
    first = t.data_ptr();
  }
  const auto reserved = memory_stats(cpu).reserved_bytes;
  const auto t0 = std::chrono::steady_clock::now();
  Tensor again = alloc_on(s, 1000);
  EXPECT_LT(seconds_since(t0), 0.05) << "reuse synchronized with the stream";
  EXPECT_EQ(again.data_ptr(), first);
  EXPECT_EQ(memory_stats(cpu).reserved_bytes, reserved) << "reuse asked the system for memory";
  EXPECT_FALSE(s.query());
  s.synchronize();
}

TEST_F(Allocator, AnotherStreamDoesNotTakeABlockItsStreamMayStillUse) {
  Stream a = Stream::create(cpu);
  Stream b = Stream::create(cpu);
  auto gate = block(a);  // work on a that "uses" the block is still pending
  void* first = nullptr;
  {
    Tensor t = alloc_on(a, 4096);
    first = t.data_ptr();
  }
  Tensor on_b = alloc_on(b, 4096);
  EXPECT_NE(on_b.data_ptr(), first);
  gate->set_value();
  a.synchronize();
}

TEST_F(Allocator, RecordedUseDelaysReuseUntilThatStreamIsDone) {
  Stream a = Stream::create(cpu);
  Stream b = Stream::create(cpu);
  void* first = nullptr;
  auto gate = block(b);
  {
    Tensor t = alloc_on(a, 2048);
    first = t.data_ptr();
    record_stream(t, b);  // b will read t after the gate opens
    enqueue(b, [p = t.data_ptr()] { static_cast<float*>(p)[0] += 1.f; });
  }
  // Freed while b may still use it: neither a nor a third stream may get it.
  Tensor on_a = alloc_on(a, 2048);
  EXPECT_NE(on_a.data_ptr(), first);
  Stream c = Stream::create(cpu);
  Tensor on_c = alloc_on(c, 2048);
  EXPECT_NE(on_c.data_ptr(), first);
  gate->set_value();
  b.synchronize();
  // Now every use has finished: any stream may reuse it.
  Tensor later = alloc_on(c, 2048);
  EXPECT_EQ(later.data_ptr(), first);
}

TEST_F(Allocator, PoisonedBlocksAreNeverReusedEarly) {
  // Stress: a consumer stream reads each block after a delay; the producer frees it immediately and
  // allocates again, poisoning new blocks. Early reuse would make the consumer read poison.
  Stream producer = Stream::create(cpu);
  Stream consumer = Stream::create(cpu);
  std::atomic<int> corrupt{0};
  for (int round = 0; round < 200; ++round) {
    const float value = static_cast<float>(round + 1);
    {
      Tensor t = alloc_on(producer, 256);
      float* p = static_cast<float*>(t.data_ptr());
      enqueue(producer, [p, value] { std::fill_n(p, 256, value); });
      consumer.wait(producer.record());
      record_stream(t, consumer);
      enqueue(consumer, [p, value, &corrupt] {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        for (int i = 0; i < 256; ++i)
          if (p[i] != value) ++corrupt;
      });
    }
    Tensor poison = alloc_on(producer, 256);
    float* q = static_cast<float*>(poison.data_ptr());
    enqueue(producer, [q] { std::fill_n(q, 256, -999.f); });
  }
  consumer.synchronize();
  producer.synchronize();
  EXPECT_EQ(corrupt.load(), 0);
}

TEST_F(Allocator, StatsAccountAndReturnToBaseline) {
  Stream s = Stream::create(cpu);
  {
    Tensor a = alloc_on(s, 100);   // 400 bytes -> one 512-byte block
    Tensor b = alloc_on(s, 1000);  // 4000 bytes -> 4096
    const auto during = memory_stats(cpu);
    EXPECT_EQ(during.allocated_bytes, baseline_.allocated_bytes + 512 + 4096);
    EXPECT_GE(during.reserved_bytes, during.allocated_bytes);
    EXPECT_GE(during.peak_allocated_bytes, during.allocated_bytes);
  }
  const auto after = memory_stats(cpu);
  EXPECT_EQ(after.allocated_bytes, baseline_.allocated_bytes);
  EXPECT_GE(after.peak_allocated_bytes, baseline_.allocated_bytes + 512 + 4096);
  EXPECT_GE(after.reserved_bytes, baseline_.reserved_bytes + 512 + 4096) << "freed blocks should stay cached";
  s.synchronize();
  empty_cache(cpu);
  EXPECT_EQ(memory_stats(cpu).reserved_bytes, baseline_.reserved_bytes);
  reset_peak_memory_stats(cpu);
  EXPECT_EQ(memory_stats(cpu).peak_allocated_bytes, memory_stats(cpu).allocated_bytes);
}

TEST_F(Allocator, EmptyCacheWaitsForStreamsStillUsingCachedBlocks) {
  Stream s = Stream::create(cpu);
  std::atomic<bool> finished{false};
  {
    Tensor t = alloc_on(s, 1 << 16);
    float* p = static_cast<float*>(t.data_ptr());
    enqueue_sleep(s, 100);
    enqueue(s, [p, &finished] {
      std::fill_n(p, 1 << 16, 1.f);  // would be a use after free if the block were released now
      finished = true;
    });
  }
  empty_cache(cpu);
  EXPECT_TRUE(finished.load());
}

TEST_F(Allocator, ADestroyedStreamsCacheServesOtherStreams) {
  void* first = nullptr;
  {
    Stream s = Stream::create(cpu);
    Tensor t = alloc_on(s, 3000);
    first = t.data_ptr();
  }
  Stream other = Stream::create(cpu);
  Tensor t = alloc_on(other, 3000);
  EXPECT_EQ(t.data_ptr(), first);
}

TEST_F(Allocator, ImpossibleRequestThrowsOutOfMemoryNamingTheBytes) {
  const int64_t huge = int64_t{1} << 58;  // elements: 2^60 bytes
  try {
    empty({huge}, DType::f32, cpu);
    FAIL() << "no OutOfMemory";
  } catch (const OutOfMemory& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(std::to_string(uint64_t{1} << 60)), std::string::npos) << msg;
    EXPECT_NE(msg.find("free"), std::string::npos) << msg;
    EXPECT_NE(msg.find("cpu"), std::string::npos) << msg;
    EXPECT_EQ(e.requested_bytes(), std::size_t{1} << 60);
  }
  // Nothing is lost and the runtime keeps working.
  EXPECT_EQ(memory_stats(cpu).allocated_bytes, baseline_.allocated_bytes);
  EXPECT_EQ(to_vector(from_vector({1.f, 2.f, 3.f}, {3}, cpu)), (std::vector<float>{1.f, 2.f, 3.f}));
}

TEST_F(Allocator, SystemFailureEmptiesTheCacheAndRetriesOnce) {
  Stream s = Stream::create(cpu);
  { Tensor cached = alloc_on(s, 1 << 18); }  // 1 MiB block cached for s
  const auto cached_reserved = memory_stats(cpu).reserved_bytes;
  ASSERT_GE(cached_reserved, baseline_.reserved_bytes + (std::size_t{1} << 20));
  detail::pool_for(cpu).fail_system_allocations(1);
  Tensor t = alloc_on(s, 100);  // no cached block fits: the system fails once, the cache goes, retry
  EXPECT_EQ(memory_stats(cpu).reserved_bytes, baseline_.reserved_bytes + 512);
  detail::pool_for(cpu).fail_system_allocations(2);
  EXPECT_THROW(alloc_on(s, 200000), OutOfMemory);
  EXPECT_EQ(memory_stats(cpu).allocated_bytes, baseline_.allocated_bytes + 512);
}

TEST_F(Allocator, InjectedRequestFailureThrowsAndLosesNothing) {
  Stream s = Stream::create(cpu);
  Tensor keep = from_vector({4.f, 5.f}, {2}, cpu);
  detail::pool_for(cpu).fail_requests(2, 1);  // the second request from now fails
  Tensor first = alloc_on(s, 10);
  EXPECT_THROW(alloc_on(s, 10), OutOfMemory);
  Tensor third = alloc_on(s, 10);
  EXPECT_TRUE(third.defined());
  EXPECT_EQ(to_vector(keep), (std::vector<float>{4.f, 5.f}));
}

TEST_F(Allocator, RoundingKeepsSmallAndLargeGranules) {
  using detail::StreamOrderedPool;
  EXPECT_EQ(StreamOrderedPool::round_size(1), 512u);
  EXPECT_EQ(StreamOrderedPool::round_size(512), 512u);
  EXPECT_EQ(StreamOrderedPool::round_size(513), 1024u);
  EXPECT_EQ(StreamOrderedPool::round_size(1 << 20), std::size_t{2} << 20);
  EXPECT_EQ(StreamOrderedPool::round_size((2 << 20) + 1), std::size_t{4} << 20);
}

TEST_F(Allocator, ZeroSizeTensorsHoldNoMemory) {
  Tensor t = empty({0, 5}, DType::f32, cpu);
  EXPECT_EQ(t.numel(), 0);
  EXPECT_EQ(t.data_ptr(), nullptr);
  EXPECT_EQ(memory_stats(cpu).allocated_bytes, baseline_.allocated_bytes);
}

TEST_F(Allocator, ConcurrentAllocationFromManyThreads) {
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([i] {
      Stream s = Stream::create(cpu);
      StreamGuard g(s);
      for (int k = 0; k < 200; ++k) {
        Tensor t = full({64 + (k % 7) * 100 + i}, static_cast<float>(k), DType::f32, cpu);
        if (k % 50 == 0) {
          EXPECT_EQ(to_vector(t)[0], static_cast<float>(k));
        }
      }
      s.synchronize();
    });
  }
  for (auto& t : threads) t.join();
}

TEST_F(Allocator, PoisonedBlocksAreNeverReusedEarlyByOpsWaitedOnOtherStreams) {
  // The same stress through the op layer: results produced on one stream, waited on several others
  // (wait(aw, s) records the use), read there late, and dropped at once. The producer keeps
  // allocating and poisoning; memory reused before a reader finished would show up as poison.
  Stream producer = Stream::create(cpu);
  std::vector<Stream> readers{Stream::create(cpu), Stream::create(cpu), Stream::create(cpu)};
  std::atomic<int> corrupt{0}, checked{0};
  const Tensor x = from_vector(std::vector<float>(1024, 1.f), {1024}, cpu);
  current_stream(cpu).synchronize();  // x is read on `producer` as a plain Tensor: upload it first
  for (int round = 0; round < 100; ++round) {
    const float value = static_cast<float>(round + 2);
    {
      TensorAwait y;
      {
        StreamGuard on(producer);
        y = TensorAwait(x) * value;
        wait(y);  // produced on `producer`
      }
      const Stream& r = readers[static_cast<std::size_t>(round) % readers.size()];
      const float* p = static_cast<const float*>(wait(y, r).data_ptr());
      enqueue(r, [p, value, &corrupt, &checked] {
        std::this_thread::sleep_for(std::chrono::microseconds(300));
        for (int i = 0; i < 1024; ++i)
          if (p[i] != value) {
            ++corrupt;
            break;
          }
        ++checked;
      });
    }  // y dropped while the reader is still pending
    StreamGuard on(producer);
    Tensor poison = full({1024}, -777.f, DType::f32, cpu);
  }
  for (auto& r : readers) r.synchronize();
  producer.synchronize();
  EXPECT_EQ(checked.load(), 100);
  EXPECT_EQ(corrupt.load(), 0) << "a block was reused while a stream that used it was pending";
}
