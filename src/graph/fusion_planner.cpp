#include "graph/fusion_planner.hpp"

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <unordered_map>

#include <defer/detail/stats_counters.hpp>

#include "cpu/fused.hpp"
#include "graph/executor.hpp"
#include "runtime/cpu/cpu_stream.hpp"
#include "runtime/fault_injection.hpp"
#include "runtime/tensor_impl.hpp"
#ifdef DEFER_HAVE_CUDA
#include "graph/fusion/cuda_fused_launch.hpp"
#include "runtime/cuda/cuda_stream.hpp"
#endif

namespace defer::detail {
namespace {

bool is_elementwise(OpKind k) { return k == OpKind::unary || k == OpKind::binary || k == OpKind::binary_scalar; }

std::int64_t numel_of(const Shape& s) {
  std::int64_t n = 1;
  for (std::int64_t e : s) n *= e;
  return n;
}

struct GroupBudget {  // what a group uses of the fused-kernel caps
  int instructions = 0, inputs = 0, scalars = 0;
  int held = 0;  // members somebody outside the plan holds: outputs of the kernel
  std::vector<const AwaitStateBase*> seen_inputs;
};

}  // namespace

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
        in.push_back(TensorMeta{t.shape(), t.dtype(), t.device()});
      }
      meta.push_back(infer_meta(node->spec(), in));
    }
  } catch (...) {
    return std::nullopt;
  }
  return meta;
}

FusionPlan plan_fusion(const std::vector<OpNode*>& order) {
  const std::size_t n = order.size();
  FusionPlan plan;
  plan.group_of.assign(n, -1);
  const NodeIndex index = index_of(order);
  const std::optional<std::vector<TensorMeta>> metas = plan_meta(order, index);
  if (!metas) return plan;  // nothing fused: the per-node path reports the error where it belongs
  const std::vector<TensorMeta>& meta = *metas;
  for (std::size_t i = 0; i < n; ++i) plan.shapes.emplace(order[i], meta[i].shape);

  const PlanRefs refs = plan_refs(order, index);
  std::vector<bool> closed;
  std::vector<GroupBudget> budget;
  for (std::size_t i = 0; i < n; ++i) {
    OpNode* node = order[i];
    std::vector<std::size_t> pending;  // inputs computed in this plan
    for (AwaitState<Tensor>* s : node->inputs()) {
      auto it = index.find(s);
      if (it != index.end()) pending.push_back(it->second);
    }
    auto close_inputs = [&] {
      for (std::size_t j : pending)
        if (plan.group_of[j] >= 0) closed[static_cast<std::size_t>(plan.group_of[j])] = true;
    };
    if (node->spec().kind == OpKind::reduce && meta[i].dtype == DType::f32 && pending.size() == 1) {
      // An element-wise prologue: the reduction joins the group that computes its input when that
      // input is the group's latest member, only the reduction reads it, and the group has no
      // other output (a fused reduction writes exactly one tensor). Nothing joins after it.
      const std::size_t j = pending[0];
      const int g = plan.group_of[j];
      if (g >= 0 && !closed[static_cast<std::size_t>(g)] && plan.groups[static_cast<std::size_t>(g)].members.back() == order[j] &&
          !refs.held(j) && refs.internal[j] == 1 && budget[static_cast<std::size_t>(g)].held == 0 && numel_of(meta[j].shape) > 0 &&
          budget[static_cast<std::size_t>(g)].instructions < kernels::kMaxFusedInstructions) {
        FusionGroup& group = plan.groups[static_cast<std::size_t>(g)];
        group.members.push_back(node);
        ++budget[static_cast<std::size_t>(g)].instructions;
        closed[static_cast<std::size_t>(g)] = true;
        plan.group_of[i] = g;
        continue;
      }
    }
    if (!is_elementwise(node->spec().kind) || meta[i].dtype != DType::f32) {
      close_inputs();
      continue;
    }
    int g = -1;
    bool one_group = !pending.empty();
    for (std::size_t j : pending) {
      if (plan.group_of[j] < 0 || (g >= 0 && plan.group_of[j] != g)) one_group = false;
      g = plan.group_of[j];
    }
    // What adding the node to group `target` costs in instructions, inputs and scalars. Inputs from
    // outside the group (leaves, or nodes of other groups) are loads.
    auto cost = [&](const GroupBudget& b, int target) {
      GroupBudget c = b;
      ++c.instructions;
      if (node->spec().kind == OpKind::binary_scalar) ++c.scalars;
      if (refs.held(i)) ++c.held;
      for (AwaitState<Tensor>* s : node->inputs()) {
        auto it = index.find(s);
        if (it != index.end() && plan.group_of[it->second] == target) continue;
        if (std::find(c.seen_inputs.begin(), c.seen_inputs.end(), s) != c.seen_inputs.end()) continue;
        c.seen_inputs.push_back(s);
        ++c.inputs;
        ++c.instructions;  // its load
      }
      return c;
    };
    bool join = one_group && !closed[static_cast<std::size_t>(g)] &&
                plan.groups[static_cast<std::size_t>(g)].shape == meta[i].shape;
    GroupBudget after;
    if (join) {
      after = cost(budget[static_cast<std::size_t>(g)], g);
      // The node may end the group, and a group's last member is always an output.
      const int outputs = after.held + (refs.held(i) ? 0 : 1);
      join = after.instructions <= kernels::kMaxFusedInstructions && after.inputs <= kernels::kMaxFusedInputs &&
             after.scalars <= kernels::kMaxFusedScalars && outputs <= kernels::kMaxFusedOutputs;
    }
    if (!join) {
      close_inputs();
      g = static_cast<int>(plan.groups.size());
      plan.groups.push_back(FusionGroup{});
      plan.groups.back().shape = meta[i].shape;
      closed.push_back(false);
      budget.push_back(GroupBudget{});
      after = cost(budget.back(), g);
    }
    budget[static_cast<std::size_t>(g)] = std::move(after);
    plan.groups[static_cast<std::size_t>(g)].members.push_back(node);
    plan.group_of[i] = g;
  }

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
  for (std::size_t i = 0; i < n; ++i) {
    if (plan.group_of[i] < 0) continue;
    plan.group_of[i] = renumber[static_cast<std::size_t>(plan.group_of[i])];
    if (plan.group_of[i] < 0) continue;
    FusionGroup& group = plan.groups[static_cast<std::size_t>(plan.group_of[i])];
    group.materialize.push_back(materialize[i] || order[i] == group.members.back());
  }
  return plan;
}

bool build_program(FusionGroup& group, const FusionPlan& plan) {
  auto program = std::make_shared<kernels::FusedProgram>();
  std::vector<float> scalars;
  std::unordered_map<const AwaitStateBase*, std::uint16_t> value_of;  // members and loaded inputs
  std::vector<Shape> input_shapes;
  auto value = [&](AwaitState<Tensor>* s) -> std::uint16_t {
    auto it = value_of.find(s);
    if (it != value_of.end()) return it->second;
    const auto input = static_cast<std::uint16_t>(group.inputs.size());
    group.inputs.push_back(s);
    auto planned = plan.shapes.find(s);  // a node of this plan: not run yet
    input_shapes.push_back(planned != plan.shapes.end() ? planned->second : s->value().shape());
    program->code.push_back({kernels::FusedKind::load, 0, input, 0});
    const auto v = static_cast<std::uint16_t>(program->code.size() - 1);
    value_of.emplace(s, v);
    return v;
  };
  for (std::size_t m = 0; m < group.members.size(); ++m) {
    OpNode* node = group.members[m];
    const OpSpec& spec = node->spec();
    if (spec.kind == OpKind::reduce) {  // the group's last member: reduces its input's value
      program->reduction = kernels::FusedReduction{spec.reduce, value_of.at(node->inputs()[0])};
      continue;
    }
    kernels::FusedInstr instr{kernels::FusedKind::unary};
    if (spec.kind == OpKind::unary) {
      instr = {kernels::FusedKind::unary, static_cast<std::uint8_t>(spec.unary), value(node->inputs()[0]), 0};
    } else if (spec.kind == OpKind::binary) {
      const std::uint16_t a = value(node->inputs()[0]);
      instr = {kernels::FusedKind::binary, static_cast<std::uint8_t>(spec.binary), a, value(node->inputs()[1])};
    } else {
      const auto k = static_cast<std::uint16_t>(scalars.size());
      scalars.push_back(spec.scalar);
      instr = {kernels::FusedKind::binary_scalar, static_cast<std::uint8_t>(spec.binary), value(node->inputs()[0]), k};
    }
    program->code.push_back(instr);
    value_of.emplace(node, static_cast<std::uint16_t>(program->code.size() - 1));
    if (group.materialize[m]) program->outputs.push_back(static_cast<std::uint16_t>(program->code.size() - 1));
  }
  if (program->reduction) {
    // A member the reduction does not read is still needed outside the group: no single kernel.
    if (!program->outputs.empty()) {
      group.inputs.clear();
      return false;
    }
    program->outputs.push_back(program->reduction->value);
  }
  program->num_inputs = static_cast<std::uint16_t>(group.inputs.size());
  program->num_scalars = static_cast<std::uint16_t>(scalars.size());
  if (program->outputs.size() > static_cast<std::size_t>(kernels::kMaxFusedOutputs) ||
      program->code.size() > static_cast<std::size_t>(kernels::kMaxFusedInstructions) ||
      group.inputs.size() > static_cast<std::size_t>(kernels::kMaxFusedInputs)) {
    group.inputs.clear();
    return false;
  }
  try {
    auto layout = std::make_shared<kernels::FusedLayout>(make_fused_layout(group.shape, input_shapes));
    group.kernel.out_shape = group.shape;
    if (program->reduction) {
      const OpNode* reduce = group.members.back();
      const AxisSplit axis =
          split_at(group.shape, normalize_dim("reduce", reduce->spec().dim, group.shape.size()));
      layout->reduce = kernels::FusedLayout::ReduceAxis{axis.outer, axis.n, axis.inner};
      group.kernel.out_shape = plan.shapes.at(reduce);
    }
    kernels::validate(*program, *layout);
    group.kernel.program = std::move(program);
    group.kernel.layout = std::move(layout);
    group.kernel.scalars = std::move(scalars);
    for (OpNode* node : group.members)
      group.kernel.ops += (group.kernel.ops.empty() ? "" : ", ") + std::string(short_name(node->spec()));
    return true;
  } catch (const std::invalid_argument&) {
    group.inputs.clear();
    return false;
  }
}

std::vector<Tensor> launch_fused(const FusedKernel& kernel, const std::vector<const Tensor*>& inputs,
                                 StreamImpl& stream, const char* reason) {
  check_injected_launch_fault("fused");  // tests: runtime/fault_injection.hpp
  std::vector<const float*> in;
  in.reserve(inputs.size());
  for (const Tensor* t : inputs) in.push_back(static_cast<const float*>(t->data_ptr()));
  std::vector<Tensor> outputs;
  std::vector<float*> out;
  for (std::size_t j = 0; j < kernel.program->outputs.size(); ++j) {
    outputs.push_back(allocate_tensor(kernel.out_shape, DType::f32, stream, "fused"));
    out.push_back(static_cast<float*>(outputs.back().data_ptr()));
  }
  const Device device = stream.device();
  if (launch_log_enabled()) {
    std::fprintf(stderr, "defer: launch fused(%s) -> %s, %zu output(s) on %s stream %llu (%s)\n", kernel.ops.c_str(),
                 shape_str(kernel.out_shape).c_str(), out.size(), device.str().c_str(),
                 static_cast<unsigned long long>(stream.id()), reason);
  }
  if (kernel.layout->numel() == 0) return outputs;
#ifdef DEFER_HAVE_CUDA
  if (device.is_cuda()) {
    launch_fused_cuda(*kernel.program, *kernel.layout, in.data(), out.data(), kernel.scalars.data(), cuda_handle(stream),
                      device.index());
  } else
#endif
  {
    enqueue_cpu(stream, [program = kernel.program, layout = kernel.layout, in, out, scalars = kernel.scalars] {
      kernels::cpu::run_fused(*program, *layout, in.data(), out.data(), scalars.data());
    });
  }
  count_launch(true);
  return outputs;
}

void launch_group(FusionGroup& group, StreamImpl& wait_stream, const char* reason) {
  std::vector<Tensor> outputs;
  std::optional<Completion> done;
  std::exception_ptr error;
  try {
    for (AwaitState<Tensor>* s : group.inputs)  // a failed input fails the group with its own error
      if (s->status() == AwaitStatus::failed) std::rethrow_exception(s->error());
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
