#pragma once
// The counters behind defer::stats(), for the runtime's own layers.
#include <atomic>
#include <cstdint>

namespace defer::detail {

struct StatsCounters {
  std::atomic<std::uint64_t> kernel_launches{0};
  std::atomic<std::uint64_t> fused_kernels{0};
  std::atomic<std::uint64_t> graph_launches{0};
  std::atomic<std::uint64_t> awaits_run{0};
};

StatsCounters& stats_counters() noexcept;

}  // namespace defer::detail
