// What a wait does with a pending op graph: find the pending subgraph under the waited node, make
// sure everything it reads exists, claim it, and launch it in topological order on the wait's stream.
// Each shared subexpression runs once, nothing that the waited node does not need runs at all.
#include <algorithm>
#include <atomic>
#include <memory>
#include <cstdlib>
#include <stdexcept>
#include <string_view>
#include <unordered_set>

#include <defer/mode.hpp>
#include <defer/options.hpp>

#include "graph/fusion_planner.hpp"
#include "graph/op_node.hpp"
#include "graph/replay.hpp"
#include "runtime/stream_impl.hpp"

namespace defer::detail {
namespace {

struct Pending {
  std::vector<OpNode*> order;  // pending nodes, inputs before consumers, the root last
  // Per node of `order`: a reference that keeps it alive while we block on it (null for the roots,
  // which the caller holds). Another thread's run may release the last other reference.
  std::vector<std::shared_ptr<AwaitStateBase>> owners;
  std::vector<AwaitStateBase*> leaves;        // pending non-op inputs (awaitables): run them first
  std::shared_ptr<AwaitStateBase> busy;       // a state another thread is running
};

// Iterative post-order walk of the pending nodes under the roots (deep graphs must not recurse).
// The roots are claimed by the caller: they are expanded wherever they are met, also as inputs.
Pending collect(const std::vector<OpNode*>& roots) {
  Pending p;
  const std::unordered_set<const AwaitStateBase*> claimed(roots.begin(), roots.end());
  std::unordered_set<AwaitStateBase*> seen;
  struct Frame {
    OpNode* node;
    std::size_t next;
    std::shared_ptr<AwaitStateBase> owner;
  };
  std::vector<Frame> stack;
  for (OpNode* root : roots) {
    if (!seen.insert(root).second) continue;
    stack.push_back({root, 0, nullptr});
    while (!stack.empty()) {
      Frame& f = stack.back();
      if (f.next == f.node->inputs().size()) {
        p.order.push_back(f.node);
        p.owners.push_back(std::move(f.owner));
        stack.pop_back();
        continue;
      }
      // An op node's deps are its inputs, in order: the dep is the owning reference.
      const std::shared_ptr<AwaitStateBase>& dep = f.node->deps()[f.next].state;
      AwaitStateBase* in = f.node->inputs()[f.next++];
      if (!seen.insert(in).second) continue;
      const AwaitStatus status = in->status();
      if (status == AwaitStatus::ready || status == AwaitStatus::failed) continue;
      if (status == AwaitStatus::running && !claimed.count(in)) {
        p.busy = dep;
        return p;
      }
      if (OpNode* n = as_node(in)) stack.push_back({n, 0, dep});
      else p.leaves.push_back(in);
    }
  }
  return p;
}

std::size_t index_in(const std::vector<OpNode*>& order, const OpNode* node) {
  return static_cast<std::size_t>(std::find(order.begin(), order.end(), node) - order.begin());
}

}  // namespace

void plan_and_launch(OpNode& root, StreamImpl& stream) {
  bool inputs_done = true;
  for (AwaitStateBase* in : root.inputs()) inputs_done = inputs_done && in->done();
  if (inputs_done) {  // the common eager case: one node, nothing to plan
    root.execute(stream, mode() == Mode::eager ? "eager op" : "wait");
    return;
  }
  plan_and_launch(std::vector<OpNode*>{&root}, stream);
}

void plan_and_launch(const std::vector<OpNode*>& roots, StreamImpl& stream) {
  // Why these kernels launch, for DEFER_LOG: an eager op's call, or a wait of a deferred graph.
  const char* reason = mode() == Mode::eager ? "eager op" : roots.size() > 1 ? "wait_all" : "wait";
  const std::unordered_set<const OpNode*> is_root(roots.begin(), roots.end());
  Pending plan;
  for (;;) {
    plan = collect(roots);
    if (plan.busy) {
      // Another thread runs part of our graph: wait for it holding nothing but the roots, then look again.
      if (plan.busy->runner() == std::this_thread::get_id())
        throw std::logic_error("wait: an op graph was waited from inside the fn of one of its own inputs");
      plan.busy->block_until_done();
      continue;
    }
    if (!plan.leaves.empty()) {
      for (AwaitStateBase* leaf : plan.leaves) drive(*leaf, stream);
      continue;
    }
    // Claim every node but the roots, inputs first. If one was claimed by another thread
    // meanwhile, give ours back, wait for it, and plan again.
    std::vector<OpNode*> claimed;
    std::shared_ptr<AwaitStateBase> lost;
    for (std::size_t i = 0; i < plan.order.size(); ++i) {
      OpNode* n = plan.order[i];
      if (is_root.count(n)) continue;
      if (!n->try_claim()) {
        lost = plan.owners[i];
        break;
      }
      claimed.push_back(n);
    }
    if (!lost) {
      // Everything is claimed (kept alive by its consumers, up to the roots the caller holds). Drop
      // the extra references: fusion and replay read reference counts to tell who else holds a node.
      plan.owners.clear();
      break;
    }
    for (OpNode* n : claimed) n->unclaim();
    lost->block_until_done();
  }
  // A structure waited before replays without planning, as one captured launch.
  if (try_replay(plan.order, stream, reason)) return;
  // Element-wise subgraphs run as fused kernels, launched when their last member comes up in the
  // topological order; everything else runs its own kernel. An error in one node is cached there
  // and reaches its consumers through their inputs; nodes that do not depend on it still run.
  FusionPlan fusion;
  if (fusion_enabled()) fusion = plan_fusion(plan.order);
  for (FusionGroup& group : fusion.groups)
    if (!build_program(group, fusion))
      for (OpNode* member : group.members) fusion.group_of[index_in(plan.order, member)] = -1;
  for (std::size_t i = 0; i < plan.order.size(); ++i) {
    const int g = fusion.group_of.empty() ? -1 : fusion.group_of[i];
    if (g < 0) {
      plan.order[i]->execute(stream, reason);
    } else if (fusion.groups[static_cast<std::size_t>(g)].members.back() == plan.order[i]) {
      launch_group(fusion.groups[static_cast<std::size_t>(g)], stream, reason);
    }
  }
}

}  // namespace defer::detail
