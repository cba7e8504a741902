#pragma once
// Fusion at wait time: which pending element-wise nodes of a plan run together as one fused kernel,
// which of them are materialized (their tensor is written), and the FusedProgram that computes them.
#include <cstddef>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "fusion/fused_program.hpp"
#include "graph/op_node.hpp"

namespace defer::detail {

// What a fused launch needs, independent of the nodes it was built from: a replayed plan keeps it.
struct FusedKernel {
  std::shared_ptr<kernels::FusedProgram> program;
  std::shared_ptr<kernels::FusedLayout> layout;
  std::vector<float> scalars;
  Shape out_shape;  // the shape of every output
  std::string ops;  // the fused ops, for DEFER_LOG
};

// Allocates the kernel's outputs on `stream` and queues it, reading `inputs` (in the program's
// input order, all on the stream's device and ordered on it). Counts and logs the launch.
std::vector<Tensor> launch_fused(const FusedKernel& kernel, const std::vector<const Tensor*>& inputs,
                                 StreamImpl& stream, const char* reason);

// A group of element-wise nodes over one shape, in topological order, possibly ended by a
// reduction (sum, mean or max) that reads the latest member: its element-wise prologue.
struct FusionGroup {
  std::vector<OpNode*> members;
  std::vector<bool> materialize;            // per member: write its tensor
  std::vector<AwaitState<Tensor>*> inputs;  // the group's external inputs (done states)
  FusedKernel kernel;                       // built by build_program
  Shape shape;                              // of the element-wise members (the reduction's domain)
};

struct FusionPlan {
  std::vector<int> group_of;  // per node of the plan's order: its group, or -1 (runs unfused)
  std::vector<FusionGroup> groups;
  // The output shape of every node of the plan: groups are built before the nodes they read ran.
  std::unordered_map<const AwaitStateBase*, Shape> shapes;
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
// `order`). A node joins the group of its pending inputs when they all belong to one open group of
// its shape and the caps allow; a group that a node outside it consumes is closed, which keeps the
// groups acyclic. Groups of a single node are dissolved (the node runs its own kernel). Returns an
// empty plan (nothing fused) when any node's shape cannot be inferred: the per-node path then
// reports the error where it belongs.
FusionPlan plan_fusion(const std::vector<OpNode*>& order);

// Builds groups[g]'s program, layout and scalars. Returns false when the result would exceed the
// fused-kernel caps (the group then runs unfused).
bool build_program(FusionGroup& group, const FusionPlan& plan);

// Launches a built group on `stream` and publishes its materialized members; the others go back
// to pending (nobody holds them: they die with their consumers). Errors are cached in the
// materialized members.
void launch_group(FusionGroup& group, StreamImpl& wait_stream, const char* reason);

}  // namespace defer::detail
