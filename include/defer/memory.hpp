#pragma once
// The stream-ordered caching allocator's public face (docs/api.md section 3).
#include <cstddef>

#include <defer/device.hpp>

namespace defer {

struct MemoryStats {
  std::size_t allocated_bytes;       // bytes held by live tensors (block sizes, after rounding)
  std::size_t reserved_bytes;        // bytes held from the system: live plus cached
  std::size_t peak_allocated_bytes;  // high-water mark of allocated_bytes
};

MemoryStats memory_stats(Device d);
// Returns cached memory that no queued work can still use to the system. Waits for the streams that
// last used cached blocks (not for the whole device).
void empty_cache(Device d);
// Resets peak_allocated_bytes to the current allocated_bytes.
void reset_peak_memory_stats(Device d);

}  // namespace defer
