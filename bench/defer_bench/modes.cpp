#include "modes.hpp"

#include <defer/options.hpp>

namespace defer_bench {

const char* mode_name(RunMode m) {
  switch (m) {
    case RunMode::eager: return "eager";
    case RunMode::deferred: return "deferred";
    case RunMode::fused: return "fused";
    case RunMode::graph: return "graph";
  }
  return "?";
}

ModeScope::ModeScope(RunMode m) : fusion_before_(defer::fusion_enabled()), graphs_before_(defer::graphs_enabled()) {
  defer::set_fusion_enabled(m == RunMode::fused || m == RunMode::graph);
  defer::set_graphs_enabled(m == RunMode::graph);
  mode_.emplace(m == RunMode::eager ? defer::Mode::eager : defer::Mode::deferred);
}

ModeScope::~ModeScope() {
  mode_.reset();
  defer::set_fusion_enabled(fusion_before_);
  defer::set_graphs_enabled(graphs_before_);
}

}  // namespace defer_bench
