#pragma once
// Fusion at wait time: which pending element-wise nodes of a plan run together as one fused kernel,
// which of them are materialized (their tensor is written), and the FusedProgram that computes them.
#include <cstddef>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "fusion/fused_program.hpp"
#include "graph/fused_kernel.hpp"
#include "graph/op_node.hpp"

namespace defer::detail {

// A group of element-wise nodes, in topological order, possibly ended by a reduction (sum, mean,
// max or min) that reads the latest member: its element-wise prologue. The group computes over one
// domain, `shape`: its outputs have that shape; members of a smaller shape (a broadcast operand,
// say a [1, 1, L] mask of a [B, L, L] score) are recomputed per domain element and never written.
struct FusionGroup {
  std::vector<OpNode*> members;
  std::vector<bool> materialize;            // per member: write its tensor
  std::vector<AwaitState<Tensor>*> inputs;  // the group's external inputs (done states)
  FusedKernel kernel;                       // built by build_program
  Shape shape;                              // of the element-wise outputs (the reduction's domain)
};

struct FusionPlan {
  std::vector<int> group_of;  // per node of the plan's order: its group, or -1 (runs unfused)
  std::vector<FusionGroup> groups;
  // The output of every node of the plan: groups are built before the nodes they read ran.
  std::unordered_map<const AwaitStateBase*, TensorMeta> metas;
};

// Positions of the nodes of a plan's order.
using NodeIndex = std::unordered_map<const AwaitStateBase*, std::size_t>;
NodeIndex index_of(const std::vector<OpNode*>& order);

// How many references to each node of a plan its own edges hold, against all there are: a node
// somebody outside the plan holds (a waited root, or one with more references than the plan's
// edges) may still be waited, so fusion must write its tensor.
struct PlanRefs {
  std::vector<long> internal, total;
  bool held(std::size_t i) const { return internal[i] == 0 || total[i] > internal[i]; }
};
PlanRefs plan_refs(const std::vector<OpNode*>& order, const NodeIndex& index);

// The output of every node of `order` (topological, inputs outside it done), or nullopt when one
// cannot be inferred: a failed or undefined input, or an invalid op (the per-node path reports it).
std::optional<std::vector<TensorMeta>> plan_meta(const std::vector<OpNode*>& order, const NodeIndex& index);

// Groups the element-wise nodes of `order` (topological, all claimed, every input done or in
// `order`): every connected element-wise subgraph whose intermediates nobody outside holds becomes
// one group, sibling branches included. A node merges the open groups of its pending inputs that
// compute over its shape, and inlines those over a smaller shape that broadcasts to it when all
// their members are private to them (nobody else reads or holds them); the caps split a group
// rather than fail. A group that a node outside it consumes is closed, which keeps the groups
// acyclic. Nodes on the exact integer path (on_integer_path) are never fused. Groups of a single
// node are dissolved (the node runs its own kernel). Returns an empty plan (nothing fused) when any
// node's shape cannot be inferred: the per-node path then reports the error where it belongs.
FusionPlan plan_fusion(const std::vector<OpNode*>& order);

// Builds a group's program, layout and scalars. Returns false when the result would exceed the
// fused-kernel caps (the group then runs unfused).
bool build_program(FusionGroup& group, const FusionPlan& plan);

// Plans fusion (when it is on) and builds every group's program; the nodes of groups that cannot be
// built run unfused (group_of -1). The one entry used by waits, replays and explain().
FusionPlan plan_and_build(const std::vector<OpNode*>& order);

// Launches a built group on `stream` and publishes its materialized members; the others go back
// to pending (nobody holds them: they die with their consumers). Errors are cached in the
// materialized members.
void launch_group(FusionGroup& group, StreamImpl& wait_stream, const char* reason);

}  // namespace defer::detail
