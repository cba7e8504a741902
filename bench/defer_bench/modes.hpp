#pragma once
// The four ways defer-bench runs every workload, and the switches each one sets.
#include <array>
#include <optional>

#include <defer/mode.hpp>

namespace defer_bench {

enum class RunMode {
  eager,     // ModeGuard(Mode::eager): every op launches one kernel at its call
  deferred,  // the default deferred mode, fusion and graph replay off: the wait launches one kernel per op
  fused,     // deferred + fusion of element-wise subgraphs, graph replay off
  graph,     // deferred + fusion + replay of repeated plans (one CUDA graph launch on CUDA)
};

inline constexpr std::array<RunMode, 4> kRunModes = {RunMode::eager, RunMode::deferred, RunMode::fused,
                                                     RunMode::graph};

const char* mode_name(RunMode m);  // "eager", "deferred", "fused", "graph"

// RAII: sets this thread's mode and the process-wide fusion and graph switches (defer/options.hpp)
// for one mode, and restores all three afterwards.
class ModeScope {
 public:
  explicit ModeScope(RunMode m);
  ~ModeScope();
  ModeScope(const ModeScope&) = delete;
  ModeScope& operator=(const ModeScope&) = delete;

 private:
  bool fusion_before_;
  bool graphs_before_;
  std::optional<defer::ModeGuard> mode_;
};

}  // namespace defer_bench
