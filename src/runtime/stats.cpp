// The process-wide counters of docs/api.md section 6. Relaxed atomics: they count, they order nothing.
#include <defer/stats.hpp>

#include <defer/detail/stats_counters.hpp>

namespace defer {
namespace detail {
StatsCounters& stats_counters() noexcept {
  static StatsCounters counters;
  return counters;
}
}  // namespace detail

Stats stats() {
  auto& c = detail::stats_counters();
  return Stats{c.kernel_launches.load(std::memory_order_relaxed), c.fused_kernels.load(std::memory_order_relaxed),
               c.graph_launches.load(std::memory_order_relaxed), c.awaits_run.load(std::memory_order_relaxed)};
}

void reset_stats() {
  auto& c = detail::stats_counters();
  c.kernel_launches.store(0, std::memory_order_relaxed);
  c.fused_kernels.store(0, std::memory_order_relaxed);
  c.graph_launches.store(0, std::memory_order_relaxed);
  c.awaits_run.store(0, std::memory_order_relaxed);
}

}  // namespace defer
