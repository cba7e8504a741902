#include "graph/op_node.hpp"

#include <stdexcept>

#include "dtype_dispatch.hpp"
#include "graph/executor.hpp"
#include "integer_elementwise.hpp"
#include "runtime/stream_impl.hpp"
#include "runtime/tensor_impl.hpp"

namespace defer::detail {
const char* short_name(const OpSpec& spec) noexcept {
  switch (spec.kind) {
    case OpKind::elementwise: return kernels::name(spec.op);
    case OpKind::reduce: return kernels::name(spec.reduce);
    case OpKind::view: return view_name(spec.view);
    default: return kernels::name(spec.kind);
  }
}

namespace {
// Results of ops other than views are contiguous, whatever their operands' strides.
TensorMeta dense_meta(TensorMeta m) {
  m.strides.clear();
  return m;
}
}  // namespace

std::optional<Shape> reshaped_shape(const OpSpec& spec, const TensorMeta& in) {
  if (spec.kind != OpKind::view || spec.view != ViewOp::reshape) return std::nullopt;
  // The shape a reshape gives, whatever the strides: that of the contiguous input.
  return apply_view(ViewOp::reshape, spec.args, Strided{in.shape, contiguous_strides(in.shape), 0})->shape;
}

TensorMeta infer_meta(const OpSpec& spec, const std::vector<TensorMeta>& in) {
  switch (spec.kind) {
    case OpKind::elementwise: {
      TensorMeta out = elementwise_meta(spec.op, spec.dtype, in);
      if (out.shape.size() > static_cast<std::size_t>(kernels::kMaxDims)) {
        // The kernels' limit, checked at the call: the operands must index with at most kMaxDims
        // dims once merged (only possible to exceed with more dims than that).
        std::vector<Shape> shapes, strides;
        for (const TensorMeta& m : in) {
          shapes.push_back(m.shape);
          strides.push_back(m.strides);
        }
        try {
          make_fused_layout(out.shape, shapes, strides);
        } catch (const std::invalid_argument& e) {
          throw std::invalid_argument(std::string(kernels::info(spec.op).name) + ": " + e.what());
        }
      }
      return out;
    }
    case OpKind::reduce: {
      const bool index = kernels::kReduceOps[static_cast<unsigned>(spec.reduce)].result == kernels::OpResult::index;
      return reduce_meta(short_name(spec), in[0], spec.dim, spec.keepdim,
                         spec.reduce != ReduceOp::sum && spec.reduce != ReduceOp::mean, index ? DType::i64 : in[0].dtype);
    }
    case OpKind::softmax: return dense_meta(softmax_meta(in[0], spec.dim));
    case OpKind::layer_norm: return dense_meta(layer_norm_meta(in[0], in[1], in[2]));
    case OpKind::matmul: return matmul_meta(in[0], in[1]);
    case OpKind::view: {
      const Strided in_layout{in[0].shape, strides_of(in[0]), 0};
      const std::optional<Strided> out = apply_view(spec.view, spec.args, in_layout);
      if (!out) return TensorMeta{*reshaped_shape(spec, in[0]), in[0].dtype, in[0].device};  // copied, then viewed
      TensorMeta m{out->shape, in[0].dtype, in[0].device};
      if (!is_contiguous(out->shape, out->strides)) m.strides = out->strides;
      return m;
    }
    case OpKind::copy: return TensorMeta{in[0].shape, in[0].dtype, in[0].device};
    case OpKind::cat: return cat_meta(in, spec.dim);
    case OpKind::index_select: return index_select_meta(in[0], spec.dim, in[1]);
    case OpKind::embedding: return embedding_meta(in[0], in[1]);
    case OpKind::to_device:  // the same tensor when it is there already, else a dense copy
      return in[0].device == spec.target ? in[0] : TensorMeta{in[0].shape, in[0].dtype, spec.target};
  }
  throw std::logic_error("unknown op kind");
}

// The first operand that is not a condition.
DType data_dtype(const OpSpec& spec, const std::vector<TensorMeta>& in) { return in[kernels::data_operand(spec.op)].dtype; }
DType data_dtype(const OpSpec& spec, const std::vector<Tensor>& in) { return in[kernels::data_operand(spec.op)].dtype(); }

bool on_integer_path(const OpSpec& spec, const std::vector<TensorMeta>& in, const TensorMeta& out) {
  return spec.kind == OpKind::elementwise && kernels::integer_path(spec.op, data_dtype(spec, in), out.dtype);
}

std::vector<float> fused_scalars(const OpSpec& spec, DType data) {
  const int count = kernels::info(spec.op).scalars;
  std::vector<float> scalars(spec.scalars, spec.scalars + count);
  kernels::dispatch(data, [&](auto tag) {
    for (float& s : scalars) s = decltype(tag)::round(s);
  });
  return scalars;
}

std::string op_name(const OpSpec& spec) {
  switch (spec.kind) {
    case OpKind::elementwise: {
      const kernels::ElementwiseInfo& info = kernels::info(spec.op);
      if (info.result == kernels::OpResult::cast) return std::string("to(") + dtype_name(spec.dtype) + ")";
      std::string name = info.name;
      if (info.scalars == 0) return name;
      name += "(scalar";
      name += info.scalars > 1 ? "s=" : "=";
      for (int k = 0; k < info.scalars; ++k) name += (k ? ", " : "") + std::to_string(spec.scalars[k]);
      return name + ")";
    }
    case OpKind::reduce:
      return std::string(kernels::name(spec.reduce)) + "(dim=" + std::to_string(spec.dim) + (spec.keepdim ? ", keepdim)" : ")");
    case OpKind::softmax: return "softmax(dim=" + std::to_string(spec.dim) + ")";
    case OpKind::index_select: return "index_select(dim=" + std::to_string(spec.dim) + ")";
    case OpKind::cat: return "cat(dim=" + std::to_string(spec.dim) + ")";
    case OpKind::view: return std::string(view_name(spec.view)) + shape_str(spec.args);
    case OpKind::to_device: return "to(" + spec.target.str() + ")";
    default: return kernels::name(spec.kind);
  }
}

OpNode::OpNode(OpSpec spec, const std::vector<Await<Tensor>>& inputs, std::optional<TensorMeta> meta)
    : AwaitState<Tensor>(false), spec_(spec), meta_(std::move(meta)) {
  inputs_.reserve(inputs.size());
  for (const auto& in : inputs) {
    // Op inputs are planned together with this node; anything else (a nowait, an awaitable) is
    // waited first by the driver.
    add_dep(in.state(), as_node(in.state().get()) == nullptr);
    inputs_.push_back(in.state().get());
  }
}

OpNode* as_node(AwaitStateBase* state) noexcept { return dynamic_cast<OpNode*>(state); }

std::optional<TensorMeta> known_meta(const Await<Tensor>& a) {
  AwaitState<Tensor>* state = a.state().get();
  if (state->status() == AwaitStatus::ready) {
    const Tensor& t = state->value();
    if (!t.defined()) return std::nullopt;  // reported by the op that receives it
    return meta_of(t);
  }
  if (OpNode* n = as_node(state)) return n->meta();
  return std::nullopt;
}

StreamImpl& stream_for(Device d, StreamImpl& wait_stream) {
  return wait_stream.device() == d ? wait_stream : *current_stream_impl(d);
}

void OpNode::run(StreamImpl& stream) noexcept {
  try {
    plan_and_launch(*this, stream);
  } catch (...) {
    if (!done()) fail(std::current_exception());
  }
}

void OpNode::execute(StreamImpl& wait_stream, const char* reason) {
  std::exception_ptr error;
  try {
    std::vector<Tensor> in;
    std::vector<TensorMeta> metas;
    in.reserve(inputs_.size());
    metas.reserve(inputs_.size());
    for (std::size_t i = 0; i < inputs_.size(); ++i) {
      AwaitState<Tensor>* s = inputs_[i];
      if (s->status() == AwaitStatus::failed) std::rethrow_exception(s->error());
      const Tensor& t = s->value();
      if (!t.defined())
        throw std::invalid_argument(std::string(short_name(spec_)) + ": operand " + std::to_string(i + 1) + " is an undefined tensor");
      in.push_back(t);
      metas.push_back(meta_of(t));
    }
    const TensorMeta out = infer_meta(spec_, metas);
    StreamImpl& stream = stream_for(out.device, wait_stream);
    // Order this stream after the inputs' producers (an event wait, no host blocking). A copy to
    // another device orders itself in the executor, on the source's side.
    for (AwaitState<Tensor>* s : inputs_) settle(*s, spec_.kind == OpKind::to_device ? nullptr : &stream);
    value_.emplace(launch_op(spec_, in, out, stream, reason));
    add_completion(Completion{out.device, stream.id(), stream.record()});
  } catch (...) {
    error = std::current_exception();
  }
  inputs_.clear();
  finish(std::move(error));
}

void OpNode::publish(Tensor value, const Completion& done) {
  value_.emplace(std::move(value));
  add_completion(done);
  inputs_.clear();
  finish(nullptr);
}

void OpNode::fail(std::exception_ptr error) noexcept {
  inputs_.clear();
  finish(std::move(error));
}

}  // namespace defer::detail
