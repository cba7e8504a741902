#pragma once
// A pending tensor op: the Await state behind every op result. It holds its input Awaits and what
// its output will look like; nothing runs until a wait. Waiting any node plans the pending subgraph
// beneath it (see planner.cpp) and launches it on the wait's stream.
#include <optional>
#include <string>
#include <vector>

#include <defer/await.hpp>

#include "graph/shape_rules.hpp"
#include "graph/view_rules.hpp"
#include "op_table.hpp"

namespace defer::detail {

using kernels::ElementwiseOp;
using kernels::OpKind;
using kernels::ReduceOp;

// What a node computes; the kinds and ops are those of the op table (kernels/op_table.hpp).
struct OpSpec {
  OpKind kind;
  ElementwiseOp op = ElementwiseOp::neg;  // elementwise
  ReduceOp reduce = ReduceOp::sum;
  float scalars[kernels::kMaxOpScalars] = {};  // an element-wise op's scalars; layer_norm: eps
  int dim = 0;                                 // reduce, softmax, index_select, cat: the dim as given
  bool keepdim = false;
  DType dtype = DType::f32;       // elementwise `to`: the dtype cast to
  Device target = Device::cpu();  // to_device: the destination
  ViewOp view = ViewOp::view;     // view: which one
  std::vector<int64_t> args = {}; // view: its arguments (view_rules.hpp)
};

std::string op_name(const OpSpec& spec);       // "add", "sum(dim=1)", "to(cuda:0)", "to(f16)", ...
const char* short_name(const OpSpec& spec) noexcept;  // "add", "sum", "to": names ops in errors
// The output of `spec` for inputs that look like `in`, or std::invalid_argument naming the op and
// the shapes. Run at call time when every operand's shape is known, and always at run time.
TensorMeta infer_meta(const OpSpec& spec, const std::vector<TensorMeta>& in);
// A reshape's output shape (one -1 resolved), for a reshape node; nullopt for any other node.
std::optional<Shape> reshaped_shape(const OpSpec& spec, const TensorMeta& in);
// The dtype of an element-wise node's data (its first operand that is not a condition or mask).
DType data_dtype(const OpSpec& spec, const std::vector<TensorMeta>& in);
DType data_dtype(const OpSpec& spec, const std::vector<Tensor>& in);
// An element-wise node on integer data that must run exactly in integers, unfused
// (kernels/integer_elementwise.hpp); `in` and `out` as infer_meta's.
bool on_integer_path(const OpSpec& spec, const std::vector<TensorMeta>& in, const TensorMeta& out);
// An element-wise node's scalars as a fused program reads them: each takes the data's dtype (docs/api.md
// section 9: rounded to f16 or bf16, 0 or 1 for boolean data).
std::vector<float> fused_scalars(const OpSpec& spec, DType data);

class OpNode final : public AwaitState<Tensor> {
 public:
  OpNode(OpSpec spec, const std::vector<Await<Tensor>>& inputs, std::optional<TensorMeta> meta);

  const OpSpec& spec() const noexcept { return spec_; }
  // The output's shape, dtype and device when known at call time (all operand shapes were known).
  const std::optional<TensorMeta>& meta() const noexcept { return meta_; }
  // The input states, valid while this node is pending (its dependencies own them).
  const std::vector<AwaitState<Tensor>*>& inputs() const noexcept { return inputs_; }

  // Plans and launches the pending subgraph rooted here (this node is claimed by the caller).
  void run(StreamImpl& stream) noexcept override;

  // For the planner: launch this node (inputs done) on `stream`, then publish it.
  void execute(StreamImpl& stream, const char* reason);
  // For a fused launch that computed this node: its tensor and where it was produced.
  void publish(Tensor value, const Completion& done);
  void fail(std::exception_ptr error) noexcept;

 private:
  OpSpec spec_;
  std::optional<TensorMeta> meta_;
  std::vector<AwaitState<Tensor>*> inputs_;
};

// The node behind an Await, or null when it is not an op result.
OpNode* as_node(AwaitStateBase* state) noexcept;
// The shape, dtype and device of an Await<Tensor> when known without running anything.
std::optional<TensorMeta> known_meta(const Await<Tensor>& a);

// Plans the pending subgraph under `root` (claimed), runs what it needs and launches it in
// topological order. Throws only for errors of the planner itself; op errors are cached per node.
void plan_and_launch(OpNode& root, StreamImpl& stream);
// The same for several roots at once (wait_all), all claimed by the caller.
void plan_and_launch(const std::vector<OpNode*>& roots, StreamImpl& stream);

// The stream a node runs on: the wait's stream when on the node's device, else that device's
// current stream.
StreamImpl& stream_for(Device d, StreamImpl& wait_stream);

}  // namespace defer::detail
