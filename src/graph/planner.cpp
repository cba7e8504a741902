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
  std::vector<OpNode*> order;    // pending nodes, inputs before consumers, the root last; all claimed
  std::vector<OpNode*> claimed;  // the nodes of `order` this walk claimed (the caller claimed the roots)
  // Pending non-op inputs (awaitables): run them first. Owning references, taken from the deps of
  // a node we held at the time: once we let go of our claims another thread may release the rest.
  std::vector<std::shared_ptr<AwaitStateBase>> leaves;
  std::shared_ptr<AwaitStateBase> busy;  // a state another thread is running (owning, as above)

  void unclaim_all() noexcept {
    for (OpNode* n : claimed) n->unclaim();
    claimed.clear();
  }
};

// Iterative post-order walk of the pending nodes under the roots (deep graphs must not recurse),
// claiming each node before reading its inputs: a claimed node cannot be run and finished by
// another thread, so its inputs and deps stay as they are while we read them. The roots are
// claimed by the caller: they are expanded wherever they are met, also as inputs. Stops at the
// first state another thread is running (busy); the caller then gives the claims back.
Pending collect(const std::vector<OpNode*>& roots) {
  Pending p;
  const std::unordered_set<const AwaitStateBase*> is_root(roots.begin(), roots.end());
  std::unordered_set<AwaitStateBase*> seen;
  struct Frame {
    OpNode* node;  // claimed: by the caller (a root) or by this walk
    std::size_t next;
  };
  std::vector<Frame> stack;
  try {
    for (OpNode* root : roots) {
      if (!seen.insert(root).second) continue;
      stack.push_back({root, 0});
      while (!stack.empty()) {
        Frame& f = stack.back();
        if (f.next == f.node->inputs().size()) {
          p.order.push_back(f.node);
          stack.pop_back();
          continue;
        }
        // An op node's deps are its inputs, in order: the dep is the owning reference.
        const std::shared_ptr<AwaitStateBase>& dep = f.node->deps()[f.next].state;
        AwaitStateBase* in = f.node->inputs()[f.next++];
        if (!seen.insert(in).second || in->done()) continue;
        OpNode* n = as_node(in);
        if (n != nullptr && (is_root.count(n) || n->try_claim())) {
          if (!is_root.count(n)) p.claimed.push_back(n);
          stack.push_back({n, 0});
          continue;
        }
        if (in->done()) continue;  // finished by another thread just now
        if (in->status() == AwaitStatus::running) {
          p.busy = dep;
          return p;
        }
        p.leaves.push_back(dep);  // a pending awaitable
      }
    }
  } catch (...) {
    p.unclaim_all();
    throw;
  }
  return p;
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
  Pending plan;
  for (;;) {
    plan = collect(roots);
    if (!plan.busy && plan.leaves.empty()) break;  // every node claimed
    // Hold nothing but the roots while other work runs, then look again.
    plan.unclaim_all();
    if (plan.busy) {
      // Another thread runs part of our graph: wait for it.
      if (plan.busy->runner() == std::this_thread::get_id())
        throw std::logic_error("wait: an op graph was waited from inside the fn of one of its own inputs");
      plan.busy->block_until_done();
      continue;
    }
    for (const auto& leaf : plan.leaves) drive(*leaf, stream);
  }
  // A structure waited before replays without planning, as one captured launch.
  if (try_replay(plan.order, stream, reason)) return;
  // Element-wise subgraphs run as fused kernels, launched when their last member comes up in the
  // topological order; everything else runs its own kernel. An error in one node is cached there
  // and reaches its consumers through their inputs; nodes that do not depend on it still run.
  FusionPlan fusion = plan_and_build(plan.order);
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
