#include "graph/fusion_planner.hpp"

#include <algorithm>
#include <functional>
#include <string>
#include <optional>
#include <stdexcept>
#include <unordered_map>

#include <defer/options.hpp>

#include "graph/executor.hpp"

namespace defer::detail {
NodeIndex index_of(const std::vector<OpNode*>& order) {
  NodeIndex index;
  for (std::size_t i = 0; i < order.size(); ++i) index.emplace(order[i], i);
  return index;
}

PlanRefs plan_refs(const std::vector<OpNode*>& order, const NodeIndex& index) {
  PlanRefs refs{std::vector<long>(order.size(), 0), std::vector<long>(order.size(), 0)};
  for (const OpNode* node : order)
    for (const auto& dep : node->deps()) {
      auto it = index.find(dep.state.get());
      if (it == index.end()) continue;
      ++refs.internal[it->second];
      refs.total[it->second] = dep.state.use_count();
    }
  return refs;
}

std::optional<std::vector<TensorMeta>> plan_meta(const std::vector<OpNode*>& order, const NodeIndex& index) {
  std::vector<TensorMeta> meta;
  meta.reserve(order.size());
  try {
    for (const OpNode* node : order) {
      std::vector<TensorMeta> in;
      for (AwaitState<Tensor>* s : node->inputs()) {
        auto it = index.find(s);
        if (it != index.end()) {
          in.push_back(meta[it->second]);
          continue;
        }
        if (s->status() != AwaitStatus::ready || !s->value().defined()) return std::nullopt;
        const Tensor& t = s->value();
        in.push_back(meta_of(t));
      }
      meta.push_back(infer_meta(node->spec(), in));
    }
  } catch (...) {
    return std::nullopt;
  }
  return meta;
}

namespace {

bool fusible(const OpNode* node, const std::vector<TensorMeta>& meta, const NodeIndex& index, std::size_t i) {
  if (node->spec().kind != OpKind::elementwise) return false;
  std::vector<TensorMeta> in;
  for (AwaitState<Tensor>* s : node->inputs()) {
    auto it = index.find(s);
    in.push_back(it != index.end() ? meta[it->second]
                                   : meta_of(s->value()));
  }
  return !on_integer_path(node->spec(), in, meta[i]);
}

// Whether `from` broadcasts to `to` (NumPy rules, aligned at the right).
bool broadcasts_to(const Shape& from, const Shape& to) {
  if (from.size() > to.size()) return false;
  for (std::size_t k = 0; k < from.size(); ++k) {
    const std::int64_t f = from[from.size() - 1 - k];
    if (f != 1 && f != to[to.size() - 1 - k]) return false;
  }
  return true;
}

// The state of planning: groups being grown over the plan's topological order.
struct Planning {
  const std::vector<OpNode*>& order;
  const NodeIndex& index;
  const std::vector<TensorMeta>& meta;
  const PlanRefs& refs;
  FusionPlan& plan;
  std::vector<bool> closed;      // per group: a node outside it consumes a member
  std::vector<long> group_uses;  // per node: reads of it by members of its own group
  // Per node: for a view (or a chain of views) of an open group that nobody else reads, that group:
  // the view joins it, with the views below it (view_chain), when its one consumer merges it.
  std::vector<int> view_group;
  std::vector<std::vector<std::size_t>> view_chain;

  // Plan positions of a node's inputs computed in this plan, once per edge.
  std::vector<std::size_t> pending_inputs(std::size_t i) const {
    std::vector<std::size_t> pending;
    for (AwaitState<Tensor>* s : order[i]->inputs()) {
      auto it = index.find(s);
      if (it != index.end()) pending.push_back(it->second);
    }
    return pending;
  }

  // Whether the caps allow one group of `members` (plan positions, all marked in `in_group`),
  // the last of them `last`.
  bool fits(const std::vector<std::size_t>& members, const std::vector<char>& in_group, std::size_t last) const {
    int instructions = 0, scalars = 0;
    int outputs = refs.held(last) ? 0 : 1;  // the last member is always written
    std::vector<const AwaitStateBase*> inputs;
    for (std::size_t m : members) {
      const OpSpec& spec = order[m]->spec();
      ++instructions;
      if (spec.kind == OpKind::elementwise) scalars += kernels::info(spec.op).scalars;
      if (refs.held(m)) ++outputs;
      for (AwaitState<Tensor>* s : order[m]->inputs()) {
        auto it = index.find(s);
        if (it != index.end() && in_group[it->second]) continue;
        if (std::find(inputs.begin(), inputs.end(), s) == inputs.end()) inputs.push_back(s);
      }
    }
    instructions += static_cast<int>(inputs.size());  // one load each
    return instructions <= kernels::kMaxFusedInstructions &&
           static_cast<int>(inputs.size()) <= kernels::kMaxFusedInputs && scalars <= kernels::kMaxFusedScalars &&
           outputs <= kernels::kMaxFusedOutputs;
  }

  // Whether group g, computed over a smaller shape than its consumer i, can be inlined into i's
  // group: nobody outside holds a member, and every read of one is from inside g or from i.
  bool private_to(int g, std::size_t i) const {
    for (OpNode* member : plan.groups[static_cast<std::size_t>(g)].members) {
      const std::size_t m = index.at(member);
      if (refs.held(m)) return false;
      long uses = group_uses[m];
      for (AwaitState<Tensor>* s : order[i]->inputs()) uses += s == member ? 1 : 0;
      if (uses != refs.internal[m]) return false;  // a later node reads it too
    }
    return true;
  }

  int new_group(const Shape& shape) {
    plan.groups.push_back(FusionGroup{});
    plan.groups.back().shape = shape;
    closed.push_back(false);
    return static_cast<int>(plan.groups.size()) - 1;
  }

  void add(int g, std::size_t i) {
    plan.groups[static_cast<std::size_t>(g)].members.push_back(order[i]);
    plan.group_of[i] = g;
    for (std::size_t j : pending_inputs(i))
      if (plan.group_of[j] == g) ++group_uses[j];
  }

  // A reduction joins the group computing its only input when that input is the group's latest
  // member over the group's whole domain, only the reduction reads it, and nobody holds another
  // member (a fused reduction writes exactly one tensor). Nothing joins after it.
  bool join_as_reduction(std::size_t i, const std::vector<std::size_t>& pending) {
    const OpSpec& spec = order[i]->spec();
    if (spec.kind != OpKind::reduce || spec.reduce == ReduceOp::argmax || pending.size() != 1) return false;
    const std::size_t j = pending[0];
    const int g = plan.group_of[j];
    if (g < 0 || closed[static_cast<std::size_t>(g)]) return false;
    FusionGroup& group = plan.groups[static_cast<std::size_t>(g)];
    if (group.members.back() != order[j] || refs.held(j) || refs.internal[j] != 1) return false;
    if (meta[j].shape != group.shape || numel_of(meta[j].shape) == 0) return false;
    for (OpNode* member : group.members)
      if (refs.held(index.at(member))) return false;
    if (static_cast<int>(group.members.size()) + 1 >= kernels::kMaxFusedInstructions) return false;
    add(g, i);
    closed[static_cast<std::size_t>(g)] = true;
    return true;
  }

  // The group a pending view of an open group leads to, when it may join it: nobody but `reader`
  // reads the view; -1 otherwise.
  int view_into(std::size_t view) const {
    const int g = view_group[view];
    if (g < 0 || closed[static_cast<std::size_t>(g)] || refs.held(view) || refs.internal[view] != 1) return -1;
    return g;
  }

  // A view of a member of an open group whose members nobody else reads (or a view of such a
  // view) waits for its consumer: an element-wise consumer merges the group through it.
  void place_view(std::size_t i, const std::vector<std::size_t>& pending) {
    if (pending.size() == 1) {
      const std::size_t j = pending[0];
      const int g = plan.group_of[j];
      if (g >= 0 && !closed[static_cast<std::size_t>(g)] && private_to(g, i)) {
        view_group[i] = g;
        view_chain[i] = {i};
        return;
      }
      if (g < 0 && view_into(j) >= 0) {
        view_group[i] = view_group[j];
        view_chain[i] = view_chain[j];
        view_chain[i].push_back(i);
        return;
      }
    }
    for (std::size_t j : pending) close_behind(j);
  }

  // Node j is read from outside its group (or from outside the group its view leads to).
  void close_behind(std::size_t j) {
    if (plan.group_of[j] >= 0) closed[static_cast<std::size_t>(plan.group_of[j])] = true;
    else if (view_group[j] >= 0) closed[static_cast<std::size_t>(view_group[j])] = true;
  }

  void place(std::size_t i) {
    const std::vector<std::size_t> pending = pending_inputs(i);
    auto close_inputs_except = [&](int keep) {
      for (std::size_t j : pending) {
        const int g = plan.group_of[j] >= 0 ? plan.group_of[j] : view_group[j];
        if (g >= 0 && g != keep) closed[static_cast<std::size_t>(g)] = true;
      }
    };
    if (order[i]->spec().kind == OpKind::view) {
      place_view(i, pending);
      return;
    }
    if (join_as_reduction(i, pending)) return;
    if (!fusible(order[i], meta, index, i)) {
      close_inputs_except(-1);
      return;
    }
    // The open groups of the pending inputs that can become one group with node i.
    const Shape& shape = meta[i].shape;
    std::vector<int> merge;
    std::vector<std::size_t> views;  // views through which a merged group is read
    for (std::size_t j : pending) {
      int g = plan.group_of[j];
      bool through_view = false;
      if (g < 0) {
        g = view_into(j);
        through_view = g >= 0 && (meta[j].shape == shape || broadcasts_to(meta[j].shape, shape));
        if (!through_view) continue;
      }
      if (closed[static_cast<std::size_t>(g)] || std::find(merge.begin(), merge.end(), g) != merge.end()) continue;
      const Shape& domain = plan.groups[static_cast<std::size_t>(g)].shape;
      if (through_view) {
        merge.push_back(g);
        views.insert(views.end(), view_chain[j].begin(), view_chain[j].end());
      } else if (domain == shape || (broadcasts_to(domain, shape) && private_to(g, i))) {
        merge.push_back(g);
      }
    }
    std::vector<std::size_t> members{i};
    std::vector<char> in_group(order.size(), 0);
    in_group[i] = 1;
    for (std::size_t v : views) {
      members.push_back(v);
      in_group[v] = 1;
    }
    for (int g : merge)
      for (OpNode* member : plan.groups[static_cast<std::size_t>(g)].members) {
        members.push_back(index.at(member));
        in_group[members.back()] = 1;
      }
    if (merge.empty() || !fits(members, in_group, i)) {
      close_inputs_except(-1);  // node i consumes them from outside: split here
      add(new_group(shape), i);
      return;
    }
    // Merge into the first, keeping the members in topological order.
    const int target = merge.front();
    FusionGroup& group = plan.groups[static_cast<std::size_t>(target)];
    for (std::size_t v : views) {
      group.members.push_back(order[v]);
      plan.group_of[v] = target;
    }
    for (std::size_t k = 1; k < merge.size(); ++k) {
      FusionGroup& other = plan.groups[static_cast<std::size_t>(merge[k])];
      for (OpNode* member : other.members) plan.group_of[index.at(member)] = target;
      group.members.insert(group.members.end(), other.members.begin(), other.members.end());
      other.members.clear();
      closed[static_cast<std::size_t>(merge[k])] = true;
    }
    std::sort(group.members.begin(), group.members.end(), [&](OpNode* a, OpNode* b) { return index.at(a) < index.at(b); });
    group.shape = shape;
    // Reads between members of the merged groups are reads inside one group now.
    for (OpNode* member : group.members) group_uses[index.at(member)] = 0;
    for (OpNode* member : group.members)
      for (std::size_t j : pending_inputs(index.at(member)))
        if (plan.group_of[j] == target) ++group_uses[j];
    add(target, i);
    close_inputs_except(target);
  }
};

}  // namespace

FusionPlan plan_fusion(const std::vector<OpNode*>& order) {
  const std::size_t n = order.size();
  FusionPlan plan;
  plan.group_of.assign(n, -1);
  const NodeIndex index = index_of(order);
  const std::optional<std::vector<TensorMeta>> metas = plan_meta(order, index);
  if (!metas) return plan;  // nothing fused: the per-node path reports the error where it belongs
  const std::vector<TensorMeta>& meta = *metas;
  for (std::size_t i = 0; i < n; ++i) plan.metas.emplace(order[i], meta[i]);

  const PlanRefs refs = plan_refs(order, index);
  Planning planning{order, index, meta, refs, plan, {}, std::vector<long>(n, 0), std::vector<int>(n, -1),
                    std::vector<std::vector<std::size_t>>(n)};
  for (std::size_t i = 0; i < n; ++i) planning.place(i);

  // Which members are written: the group's last, those consumed outside the group, and those that
  // somebody outside the plan still holds (they may be waited later and must give this tensor).
  std::vector<bool> materialize(n, false);
  for (std::size_t i = 0; i < n; ++i) {
    if (refs.held(i)) materialize[i] = true;
    for (AwaitState<Tensor>* s : order[i]->inputs()) {
      auto it = index.find(s);
      if (it != index.end() && plan.group_of[it->second] >= 0 && plan.group_of[it->second] != plan.group_of[i])
        materialize[it->second] = true;
    }
  }
  // Dissolve single-node groups (they run their own kernel) and renumber the rest.
  std::vector<FusionGroup> kept;
  std::vector<int> renumber(plan.groups.size(), -1);
  for (std::size_t g = 0; g < plan.groups.size(); ++g) {
    if (plan.groups[g].members.size() < 2) continue;
    renumber[g] = static_cast<int>(kept.size());
    kept.push_back(std::move(plan.groups[g]));
  }
  plan.groups = std::move(kept);
  for (FusionGroup& group : plan.groups)
    for (OpNode* member : group.members)
      group.materialize.push_back(materialize[index.at(member)] || member == group.members.back());
  for (std::size_t i = 0; i < n; ++i)
    if (plan.group_of[i] >= 0) plan.group_of[i] = renumber[static_cast<std::size_t>(plan.group_of[i])];
  return plan;
}

namespace {

// How a member's value is addressed from the group's domain: the views between the member's own
// coordinates and the domain's, applied in order to a layout in the member's coordinates (a
// broadcast into a reader's shape is an expand). Empty: the member is computed over the domain
// itself. A view between element-wise members is an index map, not a materialization: the members
// under it are recomputed through the map, and their loads read through the composed strides.
struct ViewStep {
  ViewOp op;
  std::vector<int64_t> args;
};
using ViewChain = std::vector<ViewStep>;

// The chain of a value read by a node of shape `reader` whose own chain is `outer`.
ViewChain operand_chain(const Shape& operand, const Shape& reader, const ViewChain& outer) {
  ViewChain chain;
  if (operand != reader) chain.push_back({ViewOp::expand, reader});  // NumPy broadcasting
  chain.insert(chain.end(), outer.begin(), outer.end());
  return chain;
}

std::string chain_key(const AwaitStateBase* s, const ViewChain& chain) {
  std::string key(reinterpret_cast<const char*>(&s), sizeof s);
  for (const ViewStep& step : chain) {
    key += static_cast<char>(step.op);
    key += static_cast<char>(step.args.size());
    key.append(reinterpret_cast<const char*>(step.args.data()), step.args.size() * sizeof(int64_t));
  }
  return key;
}

}  // namespace

bool build_program(FusionGroup& group, const FusionPlan& plan) {
  auto program = std::make_shared<kernels::FusedProgram>();
  std::vector<float> scalars;
  std::unordered_map<std::string, std::uint16_t> value_of;  // (state, chain) -> SSA value
  std::vector<Shape> input_shapes, input_strides;
  std::vector<int64_t> input_offsets;
  std::unordered_map<const AwaitStateBase*, bool> is_member;
  for (OpNode* member : group.members) is_member.emplace(member, true);
  auto fail = [&] {
    group.inputs.clear();
    return false;
  };
  auto input_meta = [&](AwaitState<Tensor>* s) {
    auto planned = plan.metas.find(s);  // a node of this plan: not run yet
    return planned != plan.metas.end() ? planned->second : meta_of(s->value());
  };
  struct TooLarge {};
  // The SSA value of `s` addressed through `chain`; members are emitted on first use.
  std::function<std::uint16_t(AwaitState<Tensor>*, const ViewChain&)> value = [&](AwaitState<Tensor>* s,
                                                                                   const ViewChain& chain) -> std::uint16_t {
    const std::string key = chain_key(s, chain);
    if (auto it = value_of.find(key); it != value_of.end()) return it->second;
    if (program->code.size() >= static_cast<std::size_t>(kernels::kMaxFusedInstructions)) throw TooLarge{};
    std::uint16_t v = 0;
    if (is_member.count(s) != 0) {
      OpNode* node = static_cast<OpNode*>(s);
      const OpSpec& spec = node->spec();
      if (spec.kind == OpKind::view) {  // no instruction: the input through one more view
        ViewChain inner{ViewStep{spec.view, spec.args}};
        inner.insert(inner.end(), chain.begin(), chain.end());
        v = value(node->inputs()[0], inner);
      } else {
        const kernels::ElementwiseInfo& info = kernels::info(spec.op);
        const Shape& shape = plan.metas.at(node).shape;
        std::uint16_t operands[kernels::kMaxOpTensors] = {};
        for (int k = 0; k < info.tensors; ++k) {
          AwaitState<Tensor>* in = node->inputs()[static_cast<std::size_t>(k)];
          operands[k] = value(in, operand_chain(input_meta(in).shape, shape, chain));
        }
        const auto first_scalar = static_cast<std::uint16_t>(scalars.size());
        std::vector<TensorMeta> in;
        for (AwaitState<Tensor>* x : node->inputs()) in.push_back(input_meta(x));
        const std::vector<float> own = fused_scalars(spec, data_dtype(spec, in));
        scalars.insert(scalars.end(), own.begin(), own.end());
        // The result's dtype: every value is rounded as the node's own tensor would hold it.
        program->code.push_back(
            {kernels::FusedKind::op, spec.op, plan.metas.at(node).dtype, operands[0], operands[1], operands[2], first_scalar});
        v = static_cast<std::uint16_t>(program->code.size() - 1);
      }
    } else {
      // An external input: its layout carried through the chain into the domain's coordinates.
      const TensorMeta meta = input_meta(s);
      std::optional<Strided> layout = Strided{meta.shape, strides_of(meta), 0};
      for (const ViewStep& step : chain) {
        layout = apply_view(step.op, step.args, *layout);
        if (!layout) throw std::invalid_argument("fusion: a reshape inside the group needs a copy");
      }
      if (layout->shape != group.shape) throw std::invalid_argument("fusion: a load does not cover the domain");
      const auto input = static_cast<std::uint16_t>(group.inputs.size());
      group.inputs.push_back(s);
      input_shapes.push_back(layout->shape);
      input_strides.push_back(std::move(layout->strides));
      input_offsets.push_back(layout->offset);
      program->input_dtypes.push_back(meta.dtype);
      kernels::FusedInstr load;  // a load of the new input
      load.a = input;
      program->code.push_back(load);
      v = static_cast<std::uint16_t>(program->code.size() - 1);
    }
    value_of.emplace(key, v);
    return v;
  };
  try {
    for (std::size_t m = 0; m < group.members.size(); ++m) {
      OpNode* node = group.members[m];
      const OpSpec& spec = node->spec();
      if (spec.kind == OpKind::reduce) {  // the group's last member: reduces its input's value
        program->reduction = kernels::FusedReduction{spec.reduce, value(node->inputs()[0], {})};
        continue;
      }
      if (!group.materialize[m]) continue;  // computed where it is read
      // A written member is computed over the domain itself; a view has no tensor of its own here.
      if (spec.kind == OpKind::view || plan.metas.at(node).shape != group.shape) return fail();
      program->outputs.push_back(value(node, {}));
      program->output_dtypes.push_back(plan.metas.at(node).dtype);
    }
  } catch (const TooLarge&) {
    return fail();
  } catch (const std::invalid_argument&) {
    return fail();
  }
  if (program->reduction) {
    // A member the reduction does not read is still needed outside the group: no single kernel.
    if (!program->outputs.empty()) return fail();
    program->outputs.push_back(program->reduction->value);
    program->output_dtypes.push_back(plan.metas.at(group.members.back()).dtype);
  }
  program->num_inputs = static_cast<std::uint16_t>(group.inputs.size());
  program->num_scalars = static_cast<std::uint16_t>(scalars.size());
  if (program->outputs.size() > static_cast<std::size_t>(kernels::kMaxFusedOutputs) ||
      program->code.size() > static_cast<std::size_t>(kernels::kMaxFusedInstructions) ||
      group.inputs.size() > static_cast<std::size_t>(kernels::kMaxFusedInputs) ||
      scalars.size() > static_cast<std::size_t>(kernels::kMaxFusedScalars))
    return fail();
  try {
    auto layout = std::make_shared<kernels::FusedLayout>(make_fused_layout(group.shape, input_shapes, input_strides));
    group.kernel.out_shape = group.shape;
    if (program->reduction) {
      const OpNode* reduce = group.members.back();
      const AxisSplit axis = split_at(group.shape, normalize_dim("reduce", reduce->spec().dim, group.shape.size()));
      layout->reduce = kernels::FusedLayout::ReduceAxis{axis.outer, axis.n, axis.inner};
      group.kernel.out_shape = plan.metas.at(reduce).shape;
    }
    kernels::validate(*program, *layout);
    group.kernel.program = std::move(program);
    group.kernel.layout = std::move(layout);
    group.kernel.input_offsets = std::move(input_offsets);
    group.kernel.scalars = std::move(scalars);
    group.kernel.op_count = static_cast<int>(group.members.size());
    for (OpNode* node : group.members)
      group.kernel.ops += (group.kernel.ops.empty() ? "" : ", ") + std::string(short_name(node->spec()));
    return true;
  } catch (const std::invalid_argument&) {
    return fail();
  }
}

FusionPlan plan_and_build(const std::vector<OpNode*>& order) {
  FusionPlan fusion;
  if (!fusion_enabled()) return fusion;
  fusion = plan_fusion(order);
  const NodeIndex index = index_of(order);
  for (FusionGroup& group : fusion.groups)
    if (!build_program(group, fusion))
      for (OpNode* member : group.members) fusion.group_of[index.at(member)] = -1;
  return fusion;
}

void launch_group(FusionGroup& group, StreamImpl& wait_stream, const char* reason) {
  // A failed input fails the members that read it, directly or not, and no other: the group runs
  // unfused, each member launching its own kernel or caching its input's error (a DAG's sibling
  // branches need not share their inputs).
  for (AwaitState<Tensor>* s : group.inputs)
    if (s->status() == AwaitStatus::failed) {
      for (OpNode* member : group.members) member->execute(wait_stream, reason);
      return;
    }
  std::vector<Tensor> outputs;
  std::optional<Completion> done;
  std::exception_ptr error;
  try {
    StreamImpl& stream = stream_for(group.inputs.front()->value().device(), wait_stream);
    std::vector<const Tensor*> in;
    for (AwaitState<Tensor>* s : group.inputs) {
      settle(*s, &stream);
      in.push_back(&s->value());
    }
    outputs = launch_fused(group.kernel, in, stream, reason);
    done = Completion{stream.device(), stream.id(), stream.record()};
  } catch (...) {
    error = std::current_exception();
  }
  // Members nobody can wait any more never get a tensor. They go back to pending first: publishing
  // their consumers releases the consumers' inputs, which may destroy them.
  for (std::size_t m = 0; m < group.members.size(); ++m)
    if (!group.materialize[m]) group.members[m]->unclaim();
  std::size_t k = 0;
  for (std::size_t m = 0; m < group.members.size(); ++m) {
    if (!group.materialize[m]) continue;
    OpNode* member = group.members[m];
    if (error) {
      member->fail(error);
      continue;
    }
    try {
      member->publish(std::move(outputs[k++]), *done);
    } catch (...) {
      member->fail(std::current_exception());
    }
  }
}

}  // namespace defer::detail
