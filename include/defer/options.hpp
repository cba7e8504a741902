#pragma once
// Process-wide switches of what a wait does. Both are on by default; benchmarks turn them off to
// measure what they buy, tests pin them. They take effect at the next wait (a plan already running
// is not affected) and are safe to flip from any thread.
namespace defer {

// Fusion of element-wise subgraphs (and their reduction epilogues) into one kernel at wait time.
// DEFER_FUSION=0 in the environment turns it off at start.
bool fusion_enabled() noexcept;
void set_fusion_enabled(bool on) noexcept;

// Replay of repeated plans: a plan whose structure and shapes were seen before is not planned
// again, and on CUDA runs as one captured graph launch (Stats::graph_launches). DEFER_GRAPHS=0 in
// the environment turns it off at start.
bool graphs_enabled() noexcept;
void set_graphs_enabled(bool on) noexcept;

}  // namespace defer
