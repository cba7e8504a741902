// explain(): the pending graph behind an Await<Tensor> and what a wait would launch now. The launch
// list comes from the planner itself (fusion_planner.hpp's plan_and_build, replay.hpp's
// would_replay), so the kernel count it prints is the count a wait adds to Stats::kernel_launches
// (or the one graph launch of a replay). A diagnostic: it reads the graph without claiming it, so
// a graph another thread is running at the same time may be described as it was a moment before.
#include <exception>
#include <sstream>
#include <unordered_map>

#include <defer/ops.hpp>

#include "graph/fusion_planner.hpp"
#include "graph/op_node.hpp"
#include "graph/replay.hpp"

namespace defer {
namespace {

using detail::AwaitState;
using detail::OpNode;

// The per-node listing is cut to the last this many lines; graphs of this many nodes or more get
// the summary first.
constexpr std::size_t kMaxLines = 200;
constexpr std::size_t kSummaryNodes = 1000;

std::string status_of(detail::AwaitStateBase& s) {
  switch (s.status()) {
    case detail::AwaitStatus::pending: return "pending";
    case detail::AwaitStatus::running: return "running";
    case detail::AwaitStatus::ready: return "ready";
    case detail::AwaitStatus::failed:
      try {
        std::rethrow_exception(s.error());
      } catch (const std::exception& e) {
        return std::string("failed: ") + e.what();
      } catch (...) {
        return "failed";
      }
  }
  return "?";
}

// The listing: one line per distinct state (inputs first), and the pending op nodes in topological
// order (what a wait would plan).
struct Walk {
  std::vector<std::string> lines;
  std::vector<OpNode*> order;
};

Walk walk(AwaitState<Tensor>* root) {
  Walk w;
  std::unordered_map<const void*, std::size_t> numbered;
  std::unordered_map<const void*, bool> seen;
  struct Frame {
    AwaitState<Tensor>* state;
    std::size_t next;
  };
  std::vector<Frame> stack{{root, 0}};
  seen.emplace(root, true);
  while (!stack.empty()) {  // iterative post-order: deep graphs must not recurse
    Frame& f = stack.back();
    OpNode* node = detail::as_node(f.state);
    const bool pending = node && f.state->status() == detail::AwaitStatus::pending;
    if (pending && f.next < node->inputs().size()) {
      AwaitState<Tensor>* in = node->inputs()[f.next++];
      if (seen.emplace(in, true).second) stack.push_back({in, 0});
      continue;
    }
    const std::size_t id = numbered.size();
    numbered[f.state] = id;
    std::ostringstream line;
    line << "%" << id << " = ";
    if (node) {
      line << detail::op_name(node->spec());
      if (pending) {
        line << "(";
        for (std::size_t i = 0; i < node->inputs().size(); ++i) line << (i ? ", " : "") << "%" << numbered[node->inputs()[i]];
        line << ")";
        w.order.push_back(node);
      }
      if (node->meta()) line << " -> " << detail::describe(*node->meta());
      else if (f.state->status() == detail::AwaitStatus::ready) line << " -> " << shape_str(f.state->value().shape());
      else line << " -> shape known when its inputs run";
    } else if (f.state->status() == detail::AwaitStatus::ready && f.state->value().defined()) {
      const Tensor& v = f.state->value();
      line << (f.state->is_nowait() ? "tensor " : "awaited tensor ") << shape_str(v.shape()) << " " << dtype_name(v.dtype())
           << " " << v.device().str();
    } else {
      line << "awaitable (runs first, shape unknown until then)";
    }
    line << "  [" << status_of(*f.state) << "]";
    w.lines.push_back(line.str());
    stack.pop_back();
  }
  return w;
}

// One launch of the plan: its description and the bytes it writes.
struct Launch {
  std::string text;
  std::int64_t bytes = 0;
  bool fused = false;
  bool kernel = true;  // false: a copy between devices (not a kernel launch)
};

// An index op with at least one index (executor.cpp checks those even for an empty result).
bool picks_rows(const OpNode& node, const std::vector<detail::TensorMeta>& meta, const detail::NodeIndex& index) {
  const detail::OpKind kind = node.spec().kind;
  if (kind != detail::OpKind::index_select && kind != detail::OpKind::embedding) return false;
  AwaitState<Tensor>* ids = node.inputs()[1];
  auto planned = index.find(ids);
  return detail::numel_of(planned != index.end() ? meta[planned->second].shape : ids->value().shape()) > 0;
}

std::vector<Launch> launches_of(const std::vector<OpNode*>& order) {
  std::vector<Launch> out;
  const detail::NodeIndex index = detail::index_of(order);
  const std::optional<std::vector<detail::TensorMeta>> meta = detail::plan_meta(order, index);
  const detail::FusionPlan fusion = detail::plan_and_build(order);
  for (std::size_t i = 0; i < order.size(); ++i) {
    const int g = fusion.group_of.empty() ? -1 : fusion.group_of[i];
    if (g >= 0) {
      const detail::FusionGroup& group = fusion.groups[static_cast<std::size_t>(g)];
      if (group.members.back() != order[i]) continue;  // launched with its group's last member
      Launch l;
      l.fused = true;
      std::int64_t per_output = detail::numel_of(group.kernel.out_shape);
      if (per_output == 0 || group.kernel.layout->numel() == 0) continue;  // nothing to compute
      for (DType t : group.kernel.program->output_dtypes) l.bytes += per_output * static_cast<std::int64_t>(dtype_size(t));
      l.text = "fused(" + group.kernel.ops + ") -> " + shape_str(group.kernel.out_shape) + ", " +
               std::to_string(group.kernel.program->outputs.size()) + " output(s)";
      out.push_back(std::move(l));
      continue;
    }
    Launch l;
    l.text = detail::op_name(order[i]->spec());
    l.kernel = order[i]->spec().kind != detail::OpKind::to_device;
    if (meta) {
      const detail::TensorMeta& m = (*meta)[i];
      // An empty result launches nothing, but indices are checked even when they pick empty rows.
      if (detail::numel_of(m.shape) == 0 && !picks_rows(*order[i], *meta, index)) continue;
      l.bytes = detail::numel_of(m.shape) * static_cast<std::int64_t>(dtype_size(m.dtype));
      l.text += " -> " + detail::describe(m);
    }
    if (!l.kernel) l.text += " (a copy, not a kernel)";
    out.push_back(std::move(l));
  }
  return out;
}

}  // namespace

std::string explain(const TensorAwait& t) {
  if (!t.valid()) return "empty Await\n";
  const Walk w = walk(t.state().get());
  std::ostringstream out;
  if (w.order.empty()) {
    for (std::size_t i = w.lines.size() - std::min(w.lines.size(), kMaxLines); i < w.lines.size(); ++i)
      out << w.lines[i] << "\n";
    out << "a wait launches nothing: the result is " << status_of(*t.state()) << "\n";
    return out.str();
  }
  const std::vector<Launch> launches = launches_of(w.order);
  std::size_t kernels = 0, fused = 0;
  std::int64_t bytes = 0;
  for (const Launch& l : launches) {
    kernels += l.kernel ? 1 : 0;
    fused += l.fused ? 1 : 0;
    bytes += l.bytes;
  }
  const bool replay = detail::would_replay(w.order);
  std::ostringstream summary;
  summary << w.order.size() << " pending op" << (w.order.size() == 1 ? "" : "s") << "; a wait launches ";
  if (replay) summary << "1 graph replaying ";
  summary << kernels << " kernel" << (kernels == 1 ? "" : "s") << " (" << fused << " fused) writing " << bytes
          << " bytes\n";

  const bool big = w.order.size() >= kSummaryNodes;
  if (big) out << summary.str();
  const std::size_t shown = std::min(w.lines.size(), big ? std::size_t{0} : kMaxLines);
  if (shown < w.lines.size()) out << "... " << (w.lines.size() - shown) << " lines of the graph not shown\n";
  for (std::size_t i = w.lines.size() - shown; i < w.lines.size(); ++i) out << w.lines[i] << "\n";
  if (!big) out << summary.str();
  out << (replay ? "replayed kernels:\n" : "launches:\n");
  for (const Launch& l : launches) out << "  " << l.text << "\n";
  return out.str();
}

}  // namespace defer
