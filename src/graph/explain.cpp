// explain(): the pending graph behind an Await<Tensor>, one line per distinct state (inputs
// first), and what a wait would launch now.
#include <exception>
#include <sstream>
#include <unordered_map>

#include <defer/ops.hpp>

#include "graph/op_node.hpp"

namespace defer {
namespace {

constexpr std::size_t kMaxLines = 200;

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

}  // namespace

std::string explain(const TensorAwait& t) {
  if (!t.valid()) return "empty Await\n";
  using detail::AwaitState;
  using detail::OpNode;
  // Iterative post-order walk; pending nodes expand into their inputs, everything else is a leaf.
  std::unordered_map<const void*, std::size_t> ids;
  std::vector<std::string> lines;
  std::size_t launches = 0;
  std::vector<std::string> launched_ops;
  struct Frame {
    AwaitState<Tensor>* state;
    std::size_t next;
  };
  std::vector<Frame> stack{{t.state().get(), 0}};
  ids.emplace(t.state().get(), 0);  // provisional; renumbered when emitted
  std::size_t next_id = 0;
  std::unordered_map<const void*, std::size_t> numbered;
  while (!stack.empty()) {
    Frame& f = stack.back();
    OpNode* node = detail::as_node(f.state);
    const bool expand = node && f.state->status() == detail::AwaitStatus::pending;
    if (expand && f.next < node->inputs().size()) {
      AwaitState<Tensor>* in = node->inputs()[f.next++];
      if (ids.emplace(in, 0).second) stack.push_back({in, 0});
      continue;
    }
    const std::size_t id = next_id++;
    numbered[f.state] = id;
    std::ostringstream line;
    line << "%" << id << " = ";
    if (node) {
      line << detail::op_name(node->spec());
      if (expand) {
        line << "(";
        for (std::size_t i = 0; i < node->inputs().size(); ++i) line << (i ? ", " : "") << "%" << numbered[node->inputs()[i]];
        line << ")";
        ++launches;
        launched_ops.push_back(detail::short_name(node->spec()));
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
    lines.push_back(line.str());
    stack.pop_back();
  }
  std::ostringstream out;
  const std::size_t shown = std::min(lines.size(), kMaxLines);
  for (std::size_t i = lines.size() - shown; i < lines.size(); ++i) out << lines[i] << "\n";
  if (shown < lines.size()) out << "... " << (lines.size() - shown) << " earlier lines not shown\n";
  if (launches == 0) {
    out << "a wait launches nothing: the result is " << status_of(*t.state()) << "\n";
  } else {
    out << "a wait would launch " << launches << " kernel" << (launches == 1 ? "" : "s") << ":";
    for (const auto& op : launched_ops) out << " " << op;
    out << "\n";
  }
  return out.str();
}

}  // namespace defer
