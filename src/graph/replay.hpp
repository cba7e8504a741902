#pragma once
// Graph replay: a plan whose structure and shapes repeat (an inference step, step after step) is
// planned once and then replayed. The plan cache is keyed by the plan's structure: every node's op,
// its scalar and dims, how the nodes connect, the shapes and dtypes of the tensors the plan reads,
// which nodes somebody else holds (they decide what fusion materializes), the device and the
// fusion switch. Never by buffer addresses: those are bound anew at every replay.
//
// The first sighting of a structure runs the normal way (it also compiles the fused kernels); the
// second builds a ReplayPlan (the launch steps, fused programs included) and every later one reuses
// it without planning. A replay queues the steps under a StreamCapture: on CUDA one graph launch
// whose parameters are patched with cudaGraphExecUpdate, on the CPU one queue task. It counts in
// Stats::graph_launches, not in kernel_launches. DEFER_GRAPHS=0 / set_graphs_enabled(false) turn
// it off; at most kMaxReplayPlans structures are cached (least recently used evicted).
#include <cstddef>
#include <unordered_set>
#include <vector>

#include "graph/op_node.hpp"

namespace defer::detail {

inline constexpr std::size_t kMaxReplayPlans = 64;

// Runs the claimed plan `order` (topological, the roots last among their inputs, all claimed, every
// input outside it done) as a replay and publishes it. Returns false, having changed nothing, when
// the plan cannot be replayed (graphs off, eager mode, a single node, a copy between devices, an
// input failed or on another device, a structure seen for the first time, the cached plan busy on
// another thread, or an error while capturing): the caller then plans and launches it normally.
bool try_replay(const std::vector<OpNode*>& order, StreamImpl& wait_stream, const char* reason);

// Whether a wait of `order` (as try_replay takes it) would replay it now, for explain(): the same
// conditions, without recording a sighting. A busy plan (another thread replaying it) still counts.
bool would_replay(const std::vector<OpNode*>& order);

// For tests: forget every cached plan (the next sighting of any structure is a first one).
void clear_replay_cache();

}  // namespace defer::detail
