// The public tensor ops: check operands at call time, create a pending node, and in eager mode
// launch it at once.
#include <defer/ops.hpp>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "graph/op_node.hpp"
#include "runtime/stream_impl.hpp"

namespace defer {
namespace {

using detail::OpKind;
using detail::OpNode;
using detail::OpSpec;
using detail::TensorMeta;
using kernels::ElementwiseOp;
using kernels::ReduceOp;

TensorAwait make_op(const OpSpec& spec, const std::vector<TensorAwait>& inputs) {
  const char* name = detail::short_name(spec);
  std::vector<TensorMeta> metas;
  metas.reserve(inputs.size());
  bool all_known = true;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].valid())
      throw std::invalid_argument(std::string(name) + ": operand " + std::to_string(i + 1) + " is an empty Await");
    auto* state = inputs[i].state().get();
    if (state->status() == detail::AwaitStatus::ready && !state->value().defined())
      throw std::invalid_argument(std::string(name) + ": operand " + std::to_string(i + 1) + " is an undefined tensor");
    auto meta = detail::known_meta(inputs[i]);
    if (meta) metas.push_back(std::move(*meta));
    else all_known = false;
  }
  std::optional<TensorMeta> out;
  if (all_known) out = detail::infer_meta(spec, metas);  // throws std::invalid_argument on bad operands

  auto node = std::make_shared<OpNode>(spec, inputs, std::move(out));
  if (mode() == Mode::eager) {
    const Device d = node->meta() ? node->meta()->device : default_device();
    detail::drive(*node, *detail::current_stream_impl(d));
    if (node->status() == detail::AwaitStatus::failed) std::rethrow_exception(node->error());
  }
  return TensorAwait(std::move(node));
}

TensorAwait elementwise(ElementwiseOp op, const std::vector<TensorAwait>& inputs, float s0 = 0.f, float s1 = 0.f) {
  OpSpec s{OpKind::elementwise};
  s.op = op;
  s.scalars[0] = s0;
  s.scalars[1] = s1;
  return make_op(s, inputs);
}

TensorAwait reduction(ReduceOp op, const TensorAwait& a, int dim, bool keepdim) {
  OpSpec s{OpKind::reduce};
  s.reduce = op;
  s.dim = dim;
  s.keepdim = keepdim;
  return make_op(s, {a});
}

}  // namespace

// The element-wise ops of the op table (kernels/op_table.hpp), one function per row by its
// operand counts; casts (`to`) are written out below.
#define DEFER_OP_1_0(id, api) \
  TensorAwait api(const TensorAwait& a) { return elementwise(ElementwiseOp::id, {a}); }
#define DEFER_OP_2_0(id, api) \
  TensorAwait api(const TensorAwait& a, const TensorAwait& b) { return elementwise(ElementwiseOp::id, {a, b}); }
#define DEFER_OP_3_0(id, api)                                                            \
  TensorAwait api(const TensorAwait& a, const TensorAwait& b, const TensorAwait& c) { \
    return elementwise(ElementwiseOp::id, {a, b, c});                                   \
  }
#define DEFER_OP_1_1(id, api) \
  TensorAwait api(const TensorAwait& a, float s) { return elementwise(ElementwiseOp::id, {a}, s); }
#define DEFER_OP_1_2(id, api) \
  TensorAwait api(const TensorAwait& a, float s0, float s1) { return elementwise(ElementwiseOp::id, {a}, s0, s1); }
#define DEFER_OP_2_1(id, api) \
  TensorAwait api(const TensorAwait& a, const TensorAwait& b, float s) { return elementwise(ElementwiseOp::id, {a, b}, s); }
#define DEFER_OP_same(id, api, tensors, scalars) DEFER_OP_##tensors##_##scalars(id, api)
#define DEFER_OP_boolean(id, api, tensors, scalars) DEFER_OP_##tensors##_##scalars(id, api)
#define DEFER_OP_cast(id, api, tensors, scalars)
#define DEFER_OP_ROW(id, api, tensors, scalars, fn, result, data) DEFER_OP_##result(id, api, tensors, scalars)
DEFER_ELEMENTWISE_OPS(DEFER_OP_ROW)
#undef DEFER_OP_ROW
#undef DEFER_OP_cast
#undef DEFER_OP_boolean
#undef DEFER_OP_same
#undef DEFER_OP_2_1
#undef DEFER_OP_1_2
#undef DEFER_OP_1_1
#undef DEFER_OP_3_0
#undef DEFER_OP_2_0
#undef DEFER_OP_1_0

TensorAwait to(const TensorAwait& a, DType dtype) {
  if (static_cast<std::size_t>(dtype) >= detail::kDTypeCount)
    throw std::invalid_argument("to: unknown dtype code " + std::to_string(static_cast<int>(dtype)));
  OpSpec s{OpKind::elementwise};
  s.op = ElementwiseOp::to;
  s.dtype = dtype;
  return make_op(s, {a});
}

TensorAwait matmul(const TensorAwait& a, const TensorAwait& b) { return make_op(OpSpec{OpKind::matmul}, {a, b}); }

namespace {

TensorAwait view_op(detail::ViewOp op, const TensorAwait& a, std::vector<int64_t> args) {
  OpSpec s{OpKind::view};
  s.view = op;
  s.args = std::move(args);
  return make_op(s, {a});
}

int dim_arg(const char* op, int64_t dim) {
  if (dim < INT32_MIN || dim > INT32_MAX) throw std::invalid_argument(std::string(op) + ": dim " + std::to_string(dim) + " is out of range");
  return static_cast<int>(dim);
}

}  // namespace

TensorAwait reshape(const TensorAwait& a, Shape shape) { return view_op(detail::ViewOp::reshape, a, std::move(shape)); }
TensorAwait view(const TensorAwait& a, Shape shape) { return view_op(detail::ViewOp::view, a, std::move(shape)); }
TensorAwait permute(const TensorAwait& a, std::vector<int64_t> dims) { return view_op(detail::ViewOp::permute, a, std::move(dims)); }
TensorAwait transpose(const TensorAwait& a, int64_t d0, int64_t d1) { return view_op(detail::ViewOp::transpose, a, {d0, d1}); }
TensorAwait transpose(const TensorAwait& a) {
  if (auto meta = detail::known_meta(a); meta && meta->shape.size() < 2)
    throw std::invalid_argument("transpose: needs at least 2 dims, got " + shape_str(meta->shape));
  return view_op(detail::ViewOp::transpose, a, {-2, -1});
}
TensorAwait unsqueeze(const TensorAwait& a, int64_t dim) { return view_op(detail::ViewOp::unsqueeze, a, {dim}); }
TensorAwait squeeze(const TensorAwait& a, int64_t dim) { return view_op(detail::ViewOp::squeeze, a, {dim}); }
TensorAwait expand(const TensorAwait& a, Shape shape) { return view_op(detail::ViewOp::expand, a, std::move(shape)); }
TensorAwait slice(const TensorAwait& a, int64_t dim, int64_t start, int64_t end, int64_t step) {
  return view_op(detail::ViewOp::slice, a, {dim, start, end, step});
}
TensorAwait select(const TensorAwait& a, int64_t dim, int64_t index) { return view_op(detail::ViewOp::select, a, {dim, index}); }

std::vector<TensorAwait> split(const TensorAwait& a, int64_t size, int64_t dim) {
  if (size < 1) throw std::invalid_argument("split: size must be >= 1, got " + std::to_string(size));
  const std::optional<TensorMeta> meta = detail::known_meta(a);
  if (!meta) throw std::invalid_argument("split: the operand's shape must be known at the call (wait it first)");
  const int d = detail::normalize_dim("split", dim_arg("split", dim), meta->shape.size());
  const int64_t extent = meta->shape[static_cast<std::size_t>(d)];
  std::vector<TensorAwait> parts;
  for (int64_t start = 0; start < extent || (extent == 0 && parts.empty()); start += size)
    parts.push_back(slice(a, d, start, std::min(start + size, extent)));
  return parts;
}

TensorAwait contiguous(const TensorAwait& a) {
  if (!a.valid()) throw std::invalid_argument("contiguous: operand 1 is an empty Await");
  auto* state = a.state().get();
  if (state->status() == detail::AwaitStatus::ready && state->value().defined() && state->value().is_contiguous()) return a;
  if (auto meta = detail::known_meta(a); meta && meta->strides.empty()) return a;  // a pending result known dense
  return make_op(OpSpec{OpKind::copy}, {a});
}

TensorAwait cat(const std::vector<TensorAwait>& xs, int64_t dim) {
  if (xs.empty()) throw std::invalid_argument("cat: needs at least one tensor");
  OpSpec s{OpKind::cat};
  s.dim = dim_arg("cat", dim);
  return make_op(s, xs);
}
TensorAwait sum(const TensorAwait& a, int dim, bool keepdim) { return reduction(ReduceOp::sum, a, dim, keepdim); }
TensorAwait mean(const TensorAwait& a, int dim, bool keepdim) { return reduction(ReduceOp::mean, a, dim, keepdim); }
TensorAwait max(const TensorAwait& a, int dim, bool keepdim) { return reduction(ReduceOp::max, a, dim, keepdim); }
TensorAwait min(const TensorAwait& a, int dim, bool keepdim) { return reduction(ReduceOp::min, a, dim, keepdim); }
TensorAwait argmax(const TensorAwait& a, int dim, bool keepdim) { return reduction(ReduceOp::argmax, a, dim, keepdim); }

TensorAwait softmax(const TensorAwait& a, int dim) {
  OpSpec s{OpKind::softmax};
  s.dim = dim;
  return make_op(s, {a});
}

TensorAwait layer_norm(const TensorAwait& x, const TensorAwait& gamma, const TensorAwait& beta, float eps) {
  if (!(eps >= 0.f)) throw std::invalid_argument("layer_norm: eps must be >= 0, got " + std::to_string(eps));
  OpSpec s{OpKind::layer_norm};
  s.scalars[0] = eps;
  return make_op(s, {x, gamma, beta});
}

TensorAwait index_select(const TensorAwait& a, int64_t dim, const TensorAwait& index) {
  OpSpec s{OpKind::index_select};
  if (dim < INT32_MIN || dim > INT32_MAX)
    throw std::invalid_argument("index_select: dim " + std::to_string(dim) + " is out of range");
  s.dim = static_cast<int>(dim);
  return make_op(s, {a, index});
}

TensorAwait embedding(const TensorAwait& weight, const TensorAwait& ids) {
  return make_op(OpSpec{OpKind::embedding}, {weight, ids});
}

TensorAwait to(const TensorAwait& a, Device d) {
  detail::require_available(d);  // DeviceError at call time for a device this machine lacks
  OpSpec s{OpKind::to_device};
  s.target = d;
  return make_op(s, {a});
}

namespace {

// `explicit_stream`: the stream wait_all was given, or null for the default (the plan then runs on
// the current stream of the default device and each result is ordered on its own device's
// current stream, as a plain wait does).
std::vector<Tensor> wait_all_on(const std::vector<TensorAwait>& results, detail::StreamImpl* explicit_stream) {
  detail::StreamImpl& stream = explicit_stream != nullptr ? *explicit_stream : detail::wait_stream();
  // Claim the pending op results as the roots of one plan; anything else (done, running elsewhere,
  // not an op) is left to the per-result waits below.
  std::vector<OpNode*> roots;
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (!results[i].valid()) throw std::invalid_argument("wait_all: result " + std::to_string(i + 1) + " is an empty Await");
    OpNode* node = detail::as_node(results[i].state().get());
    if (node && std::find(roots.begin(), roots.end(), node) == roots.end() && node->try_claim()) roots.push_back(node);
  }
  if (!roots.empty()) {
    try {
      detail::plan_and_launch(roots, stream);
    } catch (...) {
      for (OpNode* root : roots)
        if (!root->done()) root->fail(std::current_exception());
    }
  }
  std::vector<Tensor> out;
  out.reserve(results.size());
  std::exception_ptr first_error;
  for (const TensorAwait& r : results) {
    try {
      out.push_back(detail::wait_impl(r, explicit_stream));
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
      out.emplace_back();
    }
  }
  if (first_error) std::rethrow_exception(first_error);
  return out;
}

}  // namespace

std::vector<Tensor> wait_all(const std::vector<TensorAwait>& results) {
  return wait_all_on(results, nullptr);
}
std::vector<Tensor> wait_all(const std::vector<TensorAwait>& results, const Stream& s) {
  return wait_all_on(results, &s.impl());
}

TensorAwait operator+(const TensorAwait& a, const TensorAwait& b) { return add(a, b); }
TensorAwait operator-(const TensorAwait& a, const TensorAwait& b) { return sub(a, b); }
TensorAwait operator*(const TensorAwait& a, const TensorAwait& b) { return mul(a, b); }
TensorAwait operator/(const TensorAwait& a, const TensorAwait& b) { return div(a, b); }
TensorAwait operator+(const TensorAwait& a, float s) { return add(a, s); }
TensorAwait operator-(const TensorAwait& a, float s) { return sub(a, s); }
TensorAwait operator*(const TensorAwait& a, float s) { return mul(a, s); }
TensorAwait operator/(const TensorAwait& a, float s) { return div(a, s); }
TensorAwait operator+(float s, const TensorAwait& a) { return add(a, s); }
TensorAwait operator-(float s, const TensorAwait& a) { return add(neg(a), s); }
TensorAwait operator*(float s, const TensorAwait& a) { return mul(a, s); }
TensorAwait operator-(const TensorAwait& a) { return neg(a); }

}  // namespace defer
