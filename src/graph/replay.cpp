#include "graph/replay.hpp"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include <defer/detail/stats_counters.hpp>
#include <defer/mode.hpp>
#include <defer/options.hpp>

#include "graph/executor.hpp"
#include "graph/fusion_planner.hpp"
#include "runtime/stream_capture.hpp"

namespace defer::detail {
namespace {

// Where a step reads a tensor: a node of the plan (by its index in the order) or one of the plan's
// external inputs (by order of first use).
struct Ref {
  bool external;
  std::uint32_t index;
};

struct Step {
  bool fused = false;
  std::size_t node = 0;  // an op step: the node it computes
  OpSpec spec{OpKind::elementwise};
  std::optional<TensorMeta> out;
  FusedKernel kernel;                // a fused step
  std::vector<std::size_t> outputs;  // a fused step: the nodes it writes, in program output order
  std::vector<Ref> inputs;
};

// A plan whose capture failed this many times in a row is not tried again: it runs the normal way
// (a failure is usually an error the normal path reports anyway, or a capture CUDA refuses).
constexpr int kMaxReplayFailures = 3;

struct ReplayPlan {
  std::vector<Step> steps;
  std::vector<bool> published;  // per node: gets a tensor (else a fused member nobody holds)
  std::mutex busy;              // one replay at a time: a CUDA executable graph is not thread-safe
  GraphExec exec;
  std::atomic<int> failures{0};  // consecutive failed replays (changed under `busy`; explain() reads it)
};

// The structure of a claimed plan, and the external inputs in the order the key numbers them.
struct Signature {
  std::string key;
  Device device = Device::cpu();  // where every tensor the plan reads is
  std::vector<AwaitState<Tensor>*> external;
  NodeIndex node_index;
  std::unordered_map<const AwaitStateBase*, std::uint32_t> external_index;
};

template <class T>
void append(std::string& key, const T& v) {
  char bytes[sizeof(T)];
  std::memcpy(bytes, &v, sizeof(T));
  key.append(bytes, sizeof(T));
}

// The plan's key, or nullopt when the plan cannot be replayed. Every tensor the plan reads must be
// on one device (sig.device), so that the whole plan runs on one stream.
std::optional<Signature> signature(const std::vector<OpNode*>& order) {
  Signature sig;
  sig.key.reserve(order.size() * 40);
  sig.node_index = index_of(order);
  for (const OpNode* node : order) {
    const OpSpec& spec = node->spec();
    if (spec.kind == OpKind::to_device) return std::nullopt;  // copies order themselves across streams
    // Index ops check their indices on the host after the copy: they cannot run inside a capture.
    if (spec.kind == OpKind::index_select || spec.kind == OpKind::embedding) return std::nullopt;
    append(sig.key, spec.kind);
    append(sig.key, spec.op);
    append(sig.key, spec.reduce);
    append(sig.key, spec.scalars);  // a CUDA graph holds scalars as kernel parameters: part of the key
    append(sig.key, spec.dtype);
    append(sig.key, spec.dim);
    append(sig.key, spec.keepdim);
    append(sig.key, spec.view);
    append(sig.key, static_cast<std::uint32_t>(spec.args.size()));
    for (std::int64_t a : spec.args) append(sig.key, a);
    append(sig.key, static_cast<std::uint32_t>(node->inputs().size()));
    for (AwaitState<Tensor>* in : node->inputs()) {
      auto n = sig.node_index.find(in);
      if (n != sig.node_index.end()) {
        append(sig.key, 'n');
        append(sig.key, static_cast<std::uint32_t>(n->second));
        continue;
      }
      auto [e, inserted] = sig.external_index.emplace(in, static_cast<std::uint32_t>(sig.external.size()));
      append(sig.key, 'e');
      append(sig.key, e->second);
      if (!inserted) continue;
      if (in->status() != AwaitStatus::ready) return std::nullopt;  // a failed input: report it normally
      const Tensor& t = in->value();
      if (!t.defined()) return std::nullopt;
      if (sig.external.empty()) sig.device = t.device();
      else if (!(t.device() == sig.device)) return std::nullopt;
      sig.external.push_back(in);
      append(sig.key, t.dtype());
      append(sig.key, static_cast<std::uint32_t>(t.shape().size()));
      for (std::int64_t extent : t.shape()) append(sig.key, extent);
      // Fused layouts and views are built from the strides: plans of other strides never mix.
      append(sig.key, t.is_contiguous());
      if (!t.is_contiguous())
        for (std::int64_t stride : t.strides()) append(sig.key, stride);
    }
  }
  if (sig.external.empty()) return std::nullopt;  // reads no tensor: nothing worth replaying
  // Which nodes somebody outside the plan holds: fusion writes them.
  const PlanRefs refs = plan_refs(order, sig.node_index);
  for (std::size_t i = 0; i < order.size(); ++i) append(sig.key, refs.held(i));
  append(sig.key, sig.device.is_cuda());
  append(sig.key, sig.device.index());
  append(sig.key, fusion_enabled());
  return sig;
}

// Plans `order` once more, the normal way, and records the launches as steps.
std::shared_ptr<ReplayPlan> build_plan(const std::vector<OpNode*>& order, const Signature& sig) {
  const std::optional<std::vector<TensorMeta>> meta = plan_meta(order, sig.node_index);
  if (!meta) return nullptr;  // an invalid op: the normal path reports it where it belongs
  auto plan = std::make_shared<ReplayPlan>();
  auto ref = [&](const AwaitStateBase* s) {
    auto n = sig.node_index.find(s);
    if (n != sig.node_index.end()) return Ref{false, static_cast<std::uint32_t>(n->second)};
    return Ref{true, sig.external_index.at(s)};
  };
  const FusionPlan fusion = plan_and_build(order);
  plan->published.assign(order.size(), true);
  for (std::size_t i = 0; i < order.size(); ++i) {
    const int g = fusion.group_of.empty() ? -1 : fusion.group_of[i];
    Step step;
    if (g < 0) {
      step.node = i;
      step.spec = order[i]->spec();
      step.out = (*meta)[i];
      for (AwaitState<Tensor>* s : order[i]->inputs()) step.inputs.push_back(ref(s));
    } else {
      const FusionGroup& group = fusion.groups[static_cast<std::size_t>(g)];
      if (group.members.back() != order[i]) continue;  // launched with its group's last member
      step.fused = true;
      step.kernel = group.kernel;
      for (AwaitState<Tensor>* s : group.inputs) step.inputs.push_back(ref(s));
      for (std::size_t m = 0; m < group.members.size(); ++m) {
        const std::size_t node = sig.node_index.at(group.members[m]);
        plan->published[node] = group.materialize[m];
        if (group.materialize[m]) step.outputs.push_back(node);
      }
    }
    plan->steps.push_back(std::move(step));
  }
  return plan;
}

// The least recently used structures, bounded. An entry without a plan was seen once.
class PlanCache {
 public:
  static PlanCache& global() {
    static PlanCache* cache = new PlanCache;  // never destroyed: no CUDA call after the runtime's teardown
    return *cache;
  }

  // The plan for `key`; null when this is the first sighting (which is then remembered).
  std::shared_ptr<ReplayPlan> find(const std::string& key, bool& seen_before) {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      seen_before = false;
      lru_.push_front(key);
      entries_.emplace(key, Entry{nullptr, lru_.begin()});
      evict();
      return nullptr;
    }
    seen_before = true;
    lru_.splice(lru_.begin(), lru_, it->second.lru);
    return it->second.plan;
  }

  // What find() would say, without counting a sighting or touching the recency order; a plan known
  // to fail is reported as not replayable.
  bool replayable(const std::string& key) {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(key);
    return it != entries_.end() && (!it->second.plan || it->second.plan->failures < kMaxReplayFailures);
  }

  void store(const std::string& key, std::shared_ptr<ReplayPlan> plan) {
    std::lock_guard lock(mutex_);
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      lru_.push_front(key);
      it = entries_.emplace(key, Entry{nullptr, lru_.begin()}).first;
      evict();
    }
    if (!it->second.plan) it->second.plan = std::move(plan);
  }

  void clear() {
    std::lock_guard lock(mutex_);
    entries_.clear();
    lru_.clear();
  }

 private:
  struct Entry {
    std::shared_ptr<ReplayPlan> plan;
    std::list<std::string>::iterator lru;
  };
  void evict() {
    while (entries_.size() > kMaxReplayPlans) {
      entries_.erase(lru_.back());
      lru_.pop_back();
    }
  }
  std::mutex mutex_;
  std::unordered_map<std::string, Entry> entries_;
  std::list<std::string> lru_;  // most recent first
};

// Queues the plan's steps as one captured launch. Returns the tensors of the nodes, or nullopt when
// anything failed before the launch (then nothing was queued).
std::optional<std::vector<Tensor>> launch_replay(ReplayPlan& plan, const Signature& sig, std::size_t nodes,
                                                 StreamImpl& stream, const char* reason) {
  std::vector<Tensor> values(nodes);
  try {
    // Order the stream after the inputs' producers before capturing: waits are not recorded.
    for (AwaitState<Tensor>* s : sig.external) settle(*s, &stream);
    StreamCapture capture(stream);
    auto tensor = [&](Ref r) -> const Tensor& { return r.external ? sig.external[r.index]->value() : values[r.index]; };
    for (const Step& step : plan.steps) {
      if (step.fused) {
        std::vector<const Tensor*> in;
        for (Ref r : step.inputs) in.push_back(&tensor(r));
        std::vector<Tensor> out = launch_fused(step.kernel, in, stream, "replay");
        for (std::size_t k = 0; k < step.outputs.size(); ++k) values[step.outputs[k]] = std::move(out[k]);
      } else {
        std::vector<Tensor> in;
        for (Ref r : step.inputs) in.push_back(tensor(r));
        values[step.node] = launch_op(step.spec, in, *step.out, stream, "replay");
      }
    }
    const std::size_t kernels = capture.launch(plan.exec);
    stats_counters().graph_launches.fetch_add(1, std::memory_order_relaxed);
    if (launch_log_enabled())
      std::fprintf(stderr, "defer: graph launch of %zu kernel(s) for %zu op(s) on %s stream %llu (%s)\n", kernels, nodes,
                   stream.device().str().c_str(), static_cast<unsigned long long>(stream.id()), reason);
  } catch (const std::exception& e) {
    ++plan.failures;
    if (launch_log_enabled())
      std::fprintf(stderr, "defer: replay failed (%d time(s) in a row), running the plan normally: %s\n", plan.failures.load(),
                   e.what());
    return std::nullopt;  // the normal path runs the plan and reports the error per node
  } catch (...) {
    ++plan.failures;
    return std::nullopt;
  }
  plan.failures = 0;
  return values;
}

}  // namespace

bool would_replay(const std::vector<OpNode*>& order) {
  if (!graphs_enabled() || mode() == Mode::eager || order.size() < 2) return false;
  const std::optional<Signature> sig = signature(order);
  return sig && PlanCache::global().replayable(sig->key);
}

bool try_replay(const std::vector<OpNode*>& order, StreamImpl& wait_stream, const char* reason) {
  if (!graphs_enabled() || mode() == Mode::eager || order.size() < 2) return false;
  std::optional<Signature> sig = signature(order);
  if (!sig) return false;
  // The plan runs where its tensors are: on the wait's stream when that is their device, else on
  // their device's current stream (as the normal path does, see stream_for).
  StreamImpl& stream = stream_for(sig->device, wait_stream);
  bool seen_before = false;
  std::shared_ptr<ReplayPlan> plan = PlanCache::global().find(sig->key, seen_before);
  if (!seen_before) return false;  // the first run plans normally (and compiles what it needs)
  if (!plan) {
    plan = build_plan(order, *sig);
    if (!plan) return false;
    PlanCache::global().store(sig->key, plan);
  }
  std::unique_lock busy(plan->busy, std::try_to_lock);
  if (!busy.owns_lock() || plan->failures >= kMaxReplayFailures) return false;
  std::optional<std::vector<Tensor>> values = launch_replay(*plan, *sig, order.size(), stream, reason);
  if (!values) return false;
  busy.unlock();

  Completion done{stream.device(), stream.id(), stream.record()};
  // Members nobody holds never get a tensor. They go back to pending first: publishing their
  // consumers releases the consumers' inputs, which may destroy them.
  for (std::size_t i = 0; i < order.size(); ++i)
    if (!plan->published[i]) order[i]->unclaim();
  for (std::size_t i = 0; i < order.size(); ++i) {
    if (!plan->published[i]) continue;
    try {
      order[i]->publish(std::move((*values)[i]), done);
    } catch (...) {
      order[i]->fail(std::current_exception());
    }
  }
  return true;
}

void clear_replay_cache() { PlanCache::global().clear(); }

}  // namespace defer::detail
