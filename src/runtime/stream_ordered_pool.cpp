#include "runtime/stream_ordered_pool.hpp"

#include <algorithm>
#include <cstdio>
#include <string>

#include <defer/errors.hpp>

namespace defer::detail {
namespace {

constexpr std::size_t kSmallGranule = 512;              // small blocks: multiples of 512 bytes
constexpr std::size_t kLargeThreshold = 1 << 20;        // from 1 MiB on ...
constexpr std::size_t kLargeGranule = 2 << 20;          // ... multiples of 2 MiB

std::string format_bytes(std::size_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 6) {
    v /= 1024.0;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f %s (%zu bytes)", v, units[u], bytes);
  return buf;
}

}  // namespace

StreamOrderedPool::StreamOrderedPool(Device device, std::unique_ptr<SystemMemory> system)
    : device_(device), system_(std::move(system)) {}

std::size_t StreamOrderedPool::round_size(std::size_t bytes) {
  const std::size_t granule = bytes < kLargeThreshold ? kSmallGranule : kLargeGranule;
  if (bytes > SIZE_MAX - granule) return SIZE_MAX;  // cannot be satisfied; fails as out of memory
  return (bytes + granule - 1) / granule * granule;
}

// The smallest cached block that fits, unless it would waste more than half of itself.
Block* StreamOrderedPool::take_best_fit(FreeList& list, std::size_t size) {
  auto it = list.lower_bound(size);
  if (it == list.end() || it->first / 2 > size) return nullptr;
  Block* b = it->second;
  list.erase(it);
  return b;
}

void StreamOrderedPool::poll_pending_locked() {
  auto done = [&](PendingBlock& p) {
    // Events complete in stream order; drop the ones that completed so the next poll does less.
    std::erase_if(p.events, [](const std::shared_ptr<EventImpl>& e) {
      try {
        return e->query();
      } catch (...) {
        return false;  // a failed stream keeps its blocks: never reuse memory of unknown state
      }
    });
    if (!p.events.empty()) return false;
    idle_.emplace(p.block->size, p.block);
    return true;
  };
  std::erase_if(pending_, done);
}

void* StreamOrderedPool::system_allocate(std::size_t size) {
  std::uint64_t failing = failing_system_allocations_.load(std::memory_order_relaxed);
  while (failing > 0) {
    if (failing_system_allocations_.compare_exchange_weak(failing, failing - 1)) return nullptr;
  }
  return system_->allocate(size);
}

void StreamOrderedPool::throw_out_of_memory(std::size_t requested, const char* why) {
  const std::size_t free = system_->free_bytes();
  std::size_t reserved;
  {
    std::lock_guard lock(mutex_);
    reserved = reserved_;
  }
  throw OutOfMemory("defer: out of memory on " + device_.str() + ": tried to allocate " + format_bytes(requested) +
                        "; " + format_bytes(free) + " free on the device, " + format_bytes(reserved) +
                        " reserved by defer" + why,
                    requested, free);
}

Block* StreamOrderedPool::allocate(std::size_t bytes, StreamImpl& stream) {
  const std::size_t size = round_size(bytes);
  bool injected;
  {
    std::lock_guard lock(mutex_);
    ++requests_;
    injected = requests_ >= fail_first_ && requests_ <= fail_last_;
    if (!injected) {
      if (!pending_.empty()) poll_pending_locked();
      auto& mine = streams_[stream.id()];
      if (mine.stream.expired()) mine.stream = stream.weak_from_this();
      Block* b = take_best_fit(mine.free, size);
      if (!b) b = take_best_fit(idle_, size);
      if (b) {
        b->owner = stream.id();
        allocated_ += b->size;
        peak_ = std::max(peak_, allocated_);
        return b;
      }
    }
  }
  if (injected) throw_out_of_memory(bytes, " (injected failure)");

  void* p = system_allocate(size);
  if (!p) {
    empty_cache();  // give every cached block back to the system, then try once more
    p = system_allocate(size);
    if (!p) throw_out_of_memory(bytes, "");
  }
  auto* b = new Block{p, size, stream.id(), {}};
  std::lock_guard lock(mutex_);
  reserved_ += size;
  allocated_ += size;
  peak_ = std::max(peak_, allocated_);
  return b;
}

void StreamOrderedPool::deallocate(Block* b) noexcept {
  // The streams that used the block are let go after unlocking (`users` is declared before the
  // lock, so it is destroyed after it): dropping the last handle of a stream runs its destructor,
  // which waits for its work and comes back here (stream_destroyed).
  std::vector<std::shared_ptr<StreamImpl>> users;
  std::lock_guard lock(mutex_);
  allocated_ -= b->size;
  if (!b->other_uses.empty()) {
    users.swap(b->other_uses);
    PendingBlock pending{b, {}};
    try {
      for (auto& s : users) pending.events.push_back(s->record());
      pending_.push_back(std::move(pending));
    } catch (...) {
      // Cannot prove the other streams are done with it: never reuse it (leaked, not corrupted).
    }
    return;
  }
  auto owner = streams_.find(b->owner);
  if (owner != streams_.end()) {
    owner->second.free.emplace(b->size, b);
  } else {
    idle_.emplace(b->size, b);  // its stream is gone, and its queued work finished before that
  }
}

void StreamOrderedPool::record_use(Block* b, StreamImpl& stream) {
  if (stream.id() == b->owner) return;
  std::lock_guard lock(mutex_);
  for (const auto& s : b->other_uses)
    if (s->id() == stream.id()) return;
  b->other_uses.push_back(stream.shared_from_this());
}

void StreamOrderedPool::stream_destroyed(std::uint64_t stream_id) noexcept {
  std::lock_guard lock(mutex_);
  auto it = streams_.find(stream_id);
  if (it == streams_.end()) return;
  idle_.merge(it->second.free);
  streams_.erase(it);
}

void StreamOrderedPool::empty_cache() {
  // Collect under the lock, wait and free outside it: waiting on a stream while holding the lock
  // would stall every allocation of the device.
  std::vector<Block*> release;
  std::vector<std::shared_ptr<StreamImpl>> to_drain;
  {
    std::lock_guard lock(mutex_);
    poll_pending_locked();
    for (auto& [id, pool] : streams_) {
      if (pool.free.empty()) continue;
      auto s = pool.stream.lock();
      if (!s) continue;  // being destroyed: its blocks move to the idle pool when it is done
      to_drain.push_back(std::move(s));
      for (auto& [size, b] : pool.free) release.push_back(b);
      pool.free.clear();
    }
    for (auto& [size, b] : idle_) release.push_back(b);
    idle_.clear();
  }
  // A block cached for a stream may still be used by work queued on that stream.
  for (auto& s : to_drain) {
    try {
      s->synchronize();
    } catch (...) {
      // A failed stream: its work is over either way.
    }
  }
  std::size_t released = 0;
  for (Block* b : release) {
    system_->deallocate(b->ptr, b->size);
    released += b->size;
    delete b;
  }
  std::lock_guard lock(mutex_);
  reserved_ -= released;
}

MemoryStats StreamOrderedPool::stats() {
  std::lock_guard lock(mutex_);
  return MemoryStats{allocated_, reserved_, peak_};
}

void StreamOrderedPool::reset_peak() {
  std::lock_guard lock(mutex_);
  peak_ = allocated_;
}

void StreamOrderedPool::fail_system_allocations(std::uint64_t count) {
  failing_system_allocations_.store(count, std::memory_order_relaxed);
}

void StreamOrderedPool::fail_requests(std::uint64_t first, std::uint64_t count) {
  std::lock_guard lock(mutex_);
  fail_first_ = count == 0 ? 0 : requests_ + first;
  fail_last_ = count == 0 ? 0 : requests_ + first + count - 1;
}

StreamOrderedPool& pool_for(Device d) {
  require_available(d);
  // Leaked on purpose: memory must outlive every tensor, including those in static objects, and
  // cudaFree during the CUDA runtime's unloading fails.
  static auto* pools = [] {
    auto* v = new std::vector<StreamOrderedPool*>;
    v->push_back(new StreamOrderedPool(Device::cpu(), make_cpu_system_memory()));
#ifdef DEFER_HAVE_CUDA
    for (int i = 0; i < cuda_device_count(); ++i)
      v->push_back(new StreamOrderedPool(Device::cuda(i), make_cuda_system_memory(i)));
#endif
    return v;
  }();
  return *(*pools)[d.is_cpu() ? 0 : static_cast<std::size_t>(d.index()) + 1];
}

void StreamImpl::release_cached_blocks() noexcept {
  try {
    pool_for(device()).stream_destroyed(id());
  } catch (...) {
  }
}

}  // namespace defer::detail

namespace defer {

MemoryStats memory_stats(Device d) { return detail::pool_for(d).stats(); }
void empty_cache(Device d) { detail::pool_for(d).empty_cache(); }
void reset_peak_memory_stats(Device d) { detail::pool_for(d).reset_peak(); }

}  // namespace defer
