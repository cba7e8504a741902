#include "runtime/fault_injection.hpp"

#include <mutex>
#include <string>

#include <defer/errors.hpp>

namespace defer::detail {
namespace {

std::mutex mutex;
long remaining = 0;  // armed: launches until the failing one (1 = the next)
bool counting = false;
std::atomic<std::uint64_t> checks{0};

void update_armed_locked() { fault_detail::launch_armed.store(remaining > 0 || counting, std::memory_order_relaxed); }

}  // namespace

void fault_detail::on_launch(const char* op) {
  std::lock_guard lock(mutex);
  checks.fetch_add(1, std::memory_order_relaxed);
  if (remaining <= 0 || --remaining > 0) return;
  update_armed_locked();
  throw DeviceError(std::string("launch of ") + (op ? op : "?") + " failed: injected launch failure (test fault injection)");
}

void fail_launch_after(long k) {
  std::lock_guard lock(mutex);
  remaining = k > 0 ? k : 0;
  update_armed_locked();
}

std::uint64_t launch_checks() noexcept { return checks.load(std::memory_order_relaxed); }

void count_launches(bool on) noexcept {
  std::lock_guard lock(mutex);
  counting = on;
  update_armed_locked();
}

}  // namespace defer::detail
