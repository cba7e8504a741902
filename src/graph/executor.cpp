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

// The op's kernel, queued on `stream` (on the tensors' device). Index ops return the message of the
// bad index they found (the kernel ran, and counts as a launch, all the same).
std::optional<std::string> launch_kernel(const OpSpec& spec, const std::vector<Tensor>& in, Tensor& out,
                                         StreamImpl& stream) {
  Backend& backend = backend_for(stream.device());
  const Tensor& x = in[0];
  switch (spec.kind) {
    case OpKind::reduce: {
      const AxisSplit axis = split_at(x.shape(), normalize_dim("reduce", spec.dim, x.shape().size()));
      backend.reduce(spec.reduce, x.dtype(), x.data_ptr(), out.data_ptr(), axis, stream);
      return std::nullopt;
    }
    case OpKind::softmax: {
      const AxisSplit axis = split_at(x.shape(), normalize_dim("softmax", spec.dim, x.shape().size()));
      backend.softmax(x.dtype(), x.data_ptr(), out.data_ptr(), axis, stream);
      return std::nullopt;
    }
    case OpKind::layer_norm: {
      const std::int64_t cols = x.shape().back();
      backend.layer_norm(x.dtype(), x.data_ptr(), in[1].data_ptr(), in[2].data_ptr(), out.data_ptr(), x.numel() / cols, cols,
                         spec.scalars[0], stream);
      return std::nullopt;
    }
    case OpKind::matmul: {
      const Shape& a = x.shape();
      const Shape& b = in[1].shape();
      MatmulDims d{};
      d.m = a[a.size() - 2];
      d.k = a.back();
      d.n = b.back();
      d.batch = out.shape().size() == 3 ? out.shape()[0] : 1;
      d.a_stride = a.size() == 3 ? d.m * d.k : 0;
      d.b_stride = b.size() == 3 ? d.k * d.n : 0;
      backend.matmul(x.dtype(), x.data_ptr(), in[1].data_ptr(), out.data_ptr(), d, stream);
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
    case OpKind::view:
    case OpKind::copy:
    case OpKind::index_select:
    case OpKind::embedding: return launch_index(spec, x, in[1], out, stream);
    case OpKind::elementwise:
    case OpKind::to_device: break;
  }
  throw std::logic_error(std::string("launch_kernel: ") + op_name(spec) + " is not a kernel of its own");
}

}  // namespace

namespace {

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

// A view: no launch, the input's storage under a new layout. Only a reshape that no strides can
// express copies first.
Tensor make_view_of(const OpSpec& spec, const Tensor& x, StreamImpl& stream) {
  std::optional<Strided> out = apply_view(spec.view, spec.args, Strided{x.shape(), x.strides(), x.storage_offset()});
  if (out) return make_view(x, std::move(out->shape), std::move(out->strides), out->offset);
  const Tensor copy = dense(spec, x, 0, stream, "reshape: the strides do not allow a view");
  out = apply_view(spec.view, spec.args, Strided{copy.shape(), copy.strides(), copy.storage_offset()});
  return make_view(copy, std::move(out->shape), std::move(out->strides), out->offset);
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
  if (spec.kind == OpKind::to_device) return copy_to_device(strided_inputs[0], out_meta.shape, out_meta.device, stream);
  // Element-wise kernels and cat read any strides in place; the others read dense rows.
  const bool reads_strides = spec.kind == OpKind::elementwise || spec.kind == OpKind::cat;
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
