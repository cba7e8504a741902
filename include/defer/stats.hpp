#pragma once
// Process-wide counters (docs/api.md section 6).
#include <cstdint>

namespace defer {

struct Stats {
  std::uint64_t kernel_launches;  // kernels queued individually (a fused kernel counts once)
  std::uint64_t fused_kernels;    // how many of kernel_launches were fused from several ops
  std::uint64_t graph_launches;   // graph replays
  std::uint64_t awaits_run;       // fn executions of awaitable()/then()/op Awaits
};

Stats stats();
void reset_stats();

}  // namespace defer
