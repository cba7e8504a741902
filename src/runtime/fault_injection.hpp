#pragma once
// Launch-failure injection for tests. The runtime calls check_injected_launch_fault() at each of its
// kernel launch points (executor.cpp: launch_op; fusion_planner.cpp: launch_fused) right before a
// kernel is queued. When armed with fail_launch_after(k), the k-th such call from then on throws
// defer::DeviceError naming the op, exactly as a failed device launch would, and the injection
// disarms itself. Unarmed, the check is one relaxed atomic load.
#include <atomic>
#include <cstdint>

namespace defer::detail {

namespace fault_detail {
inline std::atomic<bool> launch_armed{false};
void on_launch(const char* op);  // counts, and throws when the armed launch comes up
}  // namespace fault_detail

// Arms the injection: the k-th launch check from now (1-based) throws DeviceError. k <= 0 disarms.
void fail_launch_after(long k);
// Launch checks seen since the process started (armed or not: while counting is on, see below).
std::uint64_t launch_checks() noexcept;
// Counting costs an atomic increment per launch; tests that measure a workload turn it on.
void count_launches(bool on) noexcept;

inline void check_injected_launch_fault(const char* op) {
  if (fault_detail::launch_armed.load(std::memory_order_relaxed)) fault_detail::on_launch(op);
}

}  // namespace defer::detail
