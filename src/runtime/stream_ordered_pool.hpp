#pragma once
// The stream-ordered caching allocator (after PyTorch's CUDA caching allocator and RMM's
// stream-ordered pools).
//
// - A block belongs to the stream that allocated it. Freed with no other stream having used it,
//   it returns to that stream's pool at once: later allocations on the same stream are queued after
//   every earlier use, so reuse needs no synchronization at all.
// - A block used by other streams (record_use, the recordStream rule) waits in a pending list until
//   events recorded on each of those streams at free time have completed; then, like blocks of
//   streams that were destroyed, it goes to the idle pool, which any stream may use.
// - The system allocator (cudaMalloc) is called only when no cached block fits. If it fails, the
//   cache is returned to the system and the request retried once; then OutOfMemory.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <defer/memory.hpp>

#include "runtime/storage.hpp"
#include "runtime/stream_impl.hpp"
#include "runtime/system_memory.hpp"

namespace defer::detail {

struct Block {
  void* ptr;
  std::size_t size;     // after rounding: what the block holds
  std::uint64_t owner;  // id of the allocating stream
  std::vector<std::shared_ptr<StreamImpl>> other_uses;  // streams besides the owner that used it
};

class StreamOrderedPool {
 public:
  StreamOrderedPool(Device device, std::unique_ptr<SystemMemory> system);
  ~StreamOrderedPool() = delete;  // pools live until the process exits (see pool_for)

  Block* allocate(std::size_t bytes, StreamImpl& stream);  // bytes > 0
  void deallocate(Block* block) noexcept;
  void record_use(Block* block, StreamImpl& stream);
  void stream_destroyed(std::uint64_t stream_id) noexcept;  // its queued work has finished

  MemoryStats stats();
  void empty_cache();
  void reset_peak();

  // Fault injection for tests: the next `count` calls to the system allocator fail as if it were
  // out of memory; and allocation requests number `first` .. `first + count - 1` from now (1-based)
  // throw OutOfMemory without touching the cache.
  void fail_system_allocations(std::uint64_t count);
  void fail_requests(std::uint64_t first, std::uint64_t count);

  static std::size_t round_size(std::size_t bytes);

 private:
  using FreeList = std::multimap<std::size_t, Block*>;
  struct StreamPool {
    std::weak_ptr<StreamImpl> stream;
    FreeList free;
  };
  struct PendingBlock {
    Block* block;
    std::vector<std::shared_ptr<EventImpl>> events;
  };

  static Block* take_best_fit(FreeList& list, std::size_t size);
  void poll_pending_locked();
  void* system_allocate(std::size_t size);
  [[noreturn]] void throw_out_of_memory(std::size_t requested, const char* why);

  const Device device_;
  const std::unique_ptr<SystemMemory> system_;
  std::mutex mutex_;
  std::unordered_map<std::uint64_t, StreamPool> streams_;  // live streams that allocated here
  FreeList idle_;                                          // every use complete: any stream
  std::vector<PendingBlock> pending_;
  std::size_t allocated_ = 0, reserved_ = 0, peak_ = 0;
  std::atomic<std::uint64_t> failing_system_allocations_{0};
  std::uint64_t requests_ = 0, fail_first_ = 0, fail_last_ = 0;
};

// The pool of a device; created on first use, never destroyed.
StreamOrderedPool& pool_for(Device d);

// RAII owner of one block: destroying it returns the block to its pool, stream ordered.
class Allocation final : public Storage {
 public:
  Allocation(StreamOrderedPool& pool, Block* block) noexcept : Storage(block->ptr, block->size), pool_(&pool), block_(block) {}
  ~Allocation() override { pool_->deallocate(block_); }

  void record_use(StreamImpl& stream) override { pool_->record_use(block_, stream); }

 private:
  StreamOrderedPool* pool_;
  Block* block_;
};

}  // namespace defer::detail
