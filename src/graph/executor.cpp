#include "graph/executor.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>

#include <defer/detail/stats_counters.hpp>

#include "graph/fused_kernel.hpp"
#include "integer_elementwise.hpp"
#include "runtime/backend.hpp"
#include "runtime/copy.hpp"
#include "runtime/fault_injection.hpp"
#include "runtime/stream_capture.hpp"
#include "runtime/tensor_impl.hpp"

namespace defer::detail {

namespace {
std::atomic<bool>& launch_log() {
  static std::atomic<bool> enabled = [] {
    const char* v = std::getenv("DEFER_LOG");
    return v != nullptr && *v != '\0' && *v != '0';
  }();
  return enabled;
}
}  // namespace

void count_launch(bool fused) noexcept {
  if (StreamCapture::capturing()) return;
  auto& counters = stats_counters();
  counters.kernel_launches.fetch_add(1, std::memory_order_relaxed);
  if (fused) counters.fused_kernels.fetch_add(1, std::memory_order_relaxed);
}

bool launch_log_enabled() noexcept { return launch_log().load(std::memory_order_relaxed); }
void set_launch_log(bool on) noexcept { launch_log().store(on, std::memory_order_relaxed); }

namespace {

void log_launch(const OpSpec& spec, const std::vector<Tensor>& in, const TensorMeta& out, const StreamImpl& stream,
                const char* reason) {
  std::string operands;
  for (const Tensor& t : in) operands += (operands.empty() ? "" : ", ") + shape_str(t.shape());
  std::fprintf(stderr, "defer: launch %s(%s) -> %s on %s stream %llu (%s)\n", op_name(spec).c_str(), operands.c_str(),
               describe(out).c_str(), stream.device().str().c_str(), static_cast<unsigned long long>(stream.id()), reason);
}

// out[o, j, i] = x[o, index[j], i] over the dim `dim` of x: index_select, and embedding (dim 0 of
// the weight, the ids flattened). Returns what std::out_of_range must say when an index is bad.
std::optional<std::string> launch_index(const OpSpec& spec, const Tensor& x, const Tensor& index, Tensor& out,
                                        StreamImpl& stream) {
  const int dim = spec.kind == OpKind::embedding ? 0 : normalize_dim("index_select", spec.dim, x.shape().size());
  const AxisSplit axis = split_at(x.shape(), dim);
  const std::int64_t count = index.numel();
  const std::optional<IndexFault> fault =
      backend_for(stream.device())
          .index_select(x.data_ptr(), dtype_size(x.dtype()), index.data_ptr(), index.dtype(), axis.outer, axis.n, count,
                        axis.inner, out.data_ptr(), stream);
  if (!fault) return std::nullopt;
  return std::string(short_name(spec)) + ": index " + std::to_string(fault->value) + " (at position " +
         std::to_string(fault->position) + " of the indices) is out of range for dim " + std::to_string(dim) +
         " of extent " + std::to_string(axis.n) + " (shape " + shape_str(x.shape()) + ")";
}

// An element-wise op on integer data: exact, unfused (kernels/integer_elementwise.hpp).
Tensor launch_integer(const OpSpec& spec, const std::vector<Tensor>& inputs, DType data, const TensorMeta& out_meta,
                      StreamImpl& stream) {
  Tensor out = allocate_tensor(out_meta.shape, out_meta.dtype, stream, op_name(spec).c_str());
  if (out.numel() == 0) return out;
  std::vector<Shape> shapes, strides;
  std::vector<const void*> pointers;
  std::vector<DType> dtypes;
  for (const Tensor& t : inputs) {
    shapes.push_back(t.shape());
    strides.push_back(t.is_contiguous() ? Shape{} : t.strides());
    pointers.push_back(t.data_ptr());
    dtypes.push_back(t.dtype());
  }
  auto layout = std::make_shared<kernels::FusedLayout>(make_fused_layout(out_meta.shape, shapes, strides));
  backend_for(stream.device())
      .integer_elementwise(spec.op, std::move(layout), std::move(pointers), std::move(dtypes),
                           kernels::integer_scalar(spec.scalars[0], data), out.data_ptr(), out.dtype(), stream);
  count_launch(false);
  return out;
}

// A contiguous copy of `t` when it is strided, for kernels that read dense rows: a counted launch,
// which DEFER_LOG explains.
Tensor dense(const OpSpec& spec, const Tensor& t, std::size_t operand, StreamImpl& stream, const char* why) {
  if (t.is_contiguous()) return t;
  if (launch_log_enabled())
    std::fprintf(stderr, "defer: launch contiguous(%s strides %s) for operand %zu of %s on %s stream %llu (%s)\n",
                 shape_str(t.shape()).c_str(), shape_str(t.strides()).c_str(), operand + 1, op_name(spec).c_str(),
                 stream.device().str().c_str(), static_cast<unsigned long long>(stream.id()), why);
  return contiguous_copy(t, stream);
}

// How the reductions, softmax and layer_norm read x around `dim`: in place through its strides when
// the dims around dim collapse to one stride each side (graph/shape_rules.hpp: strided_axis); else
// x becomes a dense copy of itself (a counted launch that DEFER_LOG explains), read contiguously.
kernels::StridedAxis read_axis(const OpSpec& spec, Tensor& x, int dim, StreamImpl& stream) {
  if (const std::optional<kernels::StridedAxis> axis = strided_axis(x.shape(), x.strides(), dim)) return *axis;
  const std::string why = "the dims around dim " + std::to_string(dim) + " do not collapse to one stride";
  x = dense(spec, x, 0, stream, why.c_str());
  const AxisSplit split = split_at(x.shape(), dim);
  return kernels::StridedAxis::contiguous(split.outer, split.n, split.inner);
}

// The op's kernel, queued on `stream` (on the tensors' device). Index ops return the message of the
// bad index they found (the kernel ran, and counts as a launch, all the same).
std::optional<std::string> launch_kernel(const OpSpec& spec, const std::vector<Tensor>& in, Tensor& out,
                                         StreamImpl& stream) {
  Backend& backend = backend_for(stream.device());
  const Tensor& x = in[0];
  switch (spec.kind) {
    case OpKind::reduce: {
      Tensor xs = x;
      const kernels::StridedAxis axis =
          read_axis(spec, xs, normalize_dim("reduce", spec.dim, x.shape().size()), stream);
      backend.reduce(spec.reduce, xs.dtype(), xs.data_ptr(), out.data_ptr(), axis, stream);
      return std::nullopt;
    }
    case OpKind::softmax: {
      Tensor xs = x;
      const kernels::StridedAxis axis =
          read_axis(spec, xs, normalize_dim("softmax", spec.dim, x.shape().size()), stream);
      backend.softmax(xs.dtype(), xs.data_ptr(), out.data_ptr(), axis, stream);
      return std::nullopt;
    }
    case OpKind::layer_norm: {
      // x through its strides over the last dim; gamma and beta are read as dense rows.
      Tensor xs = x;
      const kernels::StridedAxis axis =
          read_axis(spec, xs, normalize_dim("layer_norm", -1, x.shape().size()), stream);
      const Tensor gamma = dense(spec, in[1], 1, stream, "layer_norm reads gamma as a dense row");
      const Tensor beta = dense(spec, in[2], 2, stream, "layer_norm reads beta as a dense row");
      backend.layer_norm(xs.dtype(), xs.data_ptr(), gamma.data_ptr(), beta.data_ptr(), out.data_ptr(), axis,
                         spec.scalars[0], stream);
      return std::nullopt;
    }
    case OpKind::matmul: {
      // Operands are read in place (row- or column-major matrices, any batch strides); only one the
      // kernels cannot express is copied first, with the reason in DEFER_LOG.
      Tensor ab[2] = {x, in[1]};
      for (std::size_t i = 0; i < 2; ++i)
        if (const char* why = kernels::matmul_copy_reason(ab[i].shape(), ab[i].strides(), i == 1))
          ab[i] = dense(spec, ab[i], i, stream, why);
      const kernels::MatmulLayout layout =
          kernels::make_matmul_layout(ab[0].shape(), ab[0].strides(), ab[1].shape(), ab[1].strides());
      backend.matmul(x.dtype(), ab[0].data_ptr(), ab[1].data_ptr(), out.data_ptr(), layout, stream);
      return std::nullopt;
    }
    case OpKind::cat: {
      // Each input copied into its slice of the output: one strided copy per non-empty input.
      const auto d = static_cast<std::size_t>(normalize_dim("cat", spec.dim, out.shape().size()));
      std::int64_t at = 0;
      for (const Tensor& t : in) {
        if (t.numel() > 0) {
          const kernels::CopyLayout layout = kernels::make_copy_layout(t.shape(), t.strides(), out.strides());
          void* dst = static_cast<char*>(out.data_ptr()) +
                      at * out.strides()[d] * static_cast<std::int64_t>(dtype_size(out.dtype()));
          backend.copy_strided(dtype_size(t.dtype()), layout, t.data_ptr(), dst, stream);
          count_launch(false);
        }
        at += t.shape()[d];
      }
      return std::nullopt;
    }
    case OpKind::index_select:
    case OpKind::embedding: return launch_index(spec, x, in[1], out, stream);
    case OpKind::view:
    case OpKind::copy:
    case OpKind::elementwise:
    case OpKind::to_device: break;
  }
  throw std::logic_error(std::string("launch_kernel: ") + op_name(spec) + " is not a kernel of its own");
}

// A view: no launch, the input's storage under a new layout. Only a reshape that no strides can
// express copies first.
Tensor make_view_of(const OpSpec& spec, const Tensor& x, StreamImpl& stream) {
  std::optional<Strided> out = apply_view(spec.view, spec.args, Strided{x.shape(), x.strides(), x.storage_offset()});
  if (out) return make_view(x, std::move(out->shape), std::move(out->strides), out->offset);
  const Tensor copy = dense(spec, x, 0, stream, "reshape: the strides do not allow a view");
  out = apply_view(spec.view, spec.args, Strided{copy.shape(), copy.strides(), copy.storage_offset()});
  return make_view(copy, std::move(out->shape), std::move(out->strides), out->offset);
}

// Reductions (argmax too), softmax and layer_norm read x through its strides around their dim,
// copying it themselves only where those do not collapse (read_axis), and copy strided gamma and
// beta of layer_norm; launch_op passes their operands as they are.
bool reads_axis_strides(OpKind kind) {
  return kind == OpKind::reduce || kind == OpKind::softmax || kind == OpKind::layer_norm;
}

}  // namespace

Tensor launch_op(const OpSpec& spec, const std::vector<Tensor>& strided_inputs, const TensorMeta& out_meta,
                 StreamImpl& stream, const char* reason) {
  if (spec.kind == OpKind::view) return make_view_of(spec, strided_inputs[0], stream);  // not a launch
  check_injected_launch_fault(short_name(spec));  // tests: runtime/fault_injection.hpp
  if (spec.kind == OpKind::copy) {
    if (strided_inputs[0].is_contiguous()) return strided_inputs[0];  // already dense: no launch
    if (launch_log_enabled()) log_launch(spec, strided_inputs, out_meta, stream, reason);
    return contiguous_copy(strided_inputs[0], stream);
  }
  if (launch_log_enabled()) log_launch(spec, strided_inputs, out_meta, stream, reason);
  if (spec.kind == OpKind::to_device) {
    // A device copy moves one dense span: a strided source is gathered on its own device first.
    const Tensor& src = strided_inputs[0];
    const Tensor dense_src = src.device() == out_meta.device
                                 ? src
                                 : dense(spec, src, 0, *current_stream_impl(src.device()), "a device copy moves one dense span");
    return copy_to_device(dense_src, out_meta.shape, out_meta.device, stream);
  }
  // Element-wise kernels and cat read any strides in place, matmul the strides BLAS can express (it
  // copies an operand itself otherwise), reductions, softmax and layer_norm the strides around their
  // dim (reads_axis_strides); the others read dense rows.
  const bool reads_strides = spec.kind == OpKind::elementwise || spec.kind == OpKind::cat || spec.kind == OpKind::matmul ||
                             reads_axis_strides(spec.kind);
  std::vector<Tensor> inputs;
  inputs.reserve(strided_inputs.size());
  for (std::size_t i = 0; i < strided_inputs.size(); ++i)
    inputs.push_back(reads_strides ? strided_inputs[i] : dense(spec, strided_inputs[i], i, stream, "the kernel reads dense rows"));
  if (spec.kind == OpKind::elementwise) {
    const DType data = data_dtype(spec, inputs);
    if (kernels::integer_path(spec.op, data, out_meta.dtype)) return launch_integer(spec, inputs, data, out_meta, stream);
    std::vector<const Tensor*> in;
    for (const Tensor& t : inputs) in.push_back(&t);
    return launch_fused(single_op_kernel(spec, inputs, out_meta), in, stream, reason, /*log=*/false)[0];
  }
  Tensor out = allocate_tensor(out_meta.shape, out_meta.dtype, stream, op_name(spec).c_str());
  // Nothing to compute; but indices are checked even when the rows they pick are empty.
  const bool index_op = spec.kind == OpKind::index_select || spec.kind == OpKind::embedding;
  if (out.numel() == 0 && !(index_op && inputs[1].numel() > 0)) return out;
  const std::optional<std::string> bad_index = launch_kernel(spec, inputs, out, stream);
  if (spec.kind != OpKind::cat) count_launch(false);  // cat counts its copies itself
  if (bad_index) throw std::out_of_range(*bad_index);
  return out;
}

}  // namespace defer::detail
