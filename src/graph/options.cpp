// The process-wide switches of defer/options.hpp: read from the environment once, then atomics.
#include <defer/options.hpp>

#include <atomic>
#include <cstdlib>
#include <string_view>

namespace defer {
namespace {

// On unless the variable is set to "0".
bool env_switch(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr || std::string_view(v) != "0";
}

std::atomic<bool>& fusion_switch() {
  static std::atomic<bool> on{env_switch("DEFER_FUSION")};
  return on;
}

std::atomic<bool>& graphs_switch() {
  static std::atomic<bool> on{env_switch("DEFER_GRAPHS")};
  return on;
}

}  // namespace

bool fusion_enabled() noexcept { return fusion_switch().load(std::memory_order_relaxed); }
void set_fusion_enabled(bool on) noexcept { fusion_switch().store(on, std::memory_order_relaxed); }
bool graphs_enabled() noexcept { return graphs_switch().load(std::memory_order_relaxed); }
void set_graphs_enabled(bool on) noexcept { graphs_switch().store(on, std::memory_order_relaxed); }

}  // namespace defer
