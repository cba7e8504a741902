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
using kernels::BinaryOp;
using kernels::ReduceOp;
using kernels::UnaryOp;

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

TensorAwait unary(UnaryOp op, const TensorAwait& a) {
  OpSpec s{OpKind::unary};
  s.unary = op;
  return make_op(s, {a});
}

TensorAwait binary(BinaryOp op, const TensorAwait& a, const TensorAwait& b) {
  OpSpec s{OpKind::binary};
  s.binary = op;
  return make_op(s, {a, b});
}

TensorAwait binary_scalar(BinaryOp op, const TensorAwait& a, float scalar) {
  OpSpec s{OpKind::binary_scalar};
  s.binary = op;
  s.scalar = scalar;
  return make_op(s, {a});
}

TensorAwait reduction(ReduceOp op, const TensorAwait& a, int dim, bool keepdim) {
  OpSpec s{OpKind::reduce};
  s.reduce = op;
  s.dim = dim;
  s.keepdim = keepdim;
  return make_op(s, {a});
}

}  // namespace

TensorAwait add(const TensorAwait& a, const TensorAwait& b) { return binary(BinaryOp::add, a, b); }
TensorAwait sub(const TensorAwait& a, const TensorAwait& b) { return binary(BinaryOp::sub, a, b); }
TensorAwait mul(const TensorAwait& a, const TensorAwait& b) { return binary(BinaryOp::mul, a, b); }
TensorAwait div(const TensorAwait& a, const TensorAwait& b) { return binary(BinaryOp::div, a, b); }
TensorAwait maximum(const TensorAwait& a, const TensorAwait& b) { return binary(BinaryOp::maximum, a, b); }
TensorAwait minimum(const TensorAwait& a, const TensorAwait& b) { return binary(BinaryOp::minimum, a, b); }

TensorAwait add(const TensorAwait& a, float s) { return binary_scalar(BinaryOp::add, a, s); }
TensorAwait sub(const TensorAwait& a, float s) { return binary_scalar(BinaryOp::sub, a, s); }
TensorAwait mul(const TensorAwait& a, float s) { return binary_scalar(BinaryOp::mul, a, s); }
TensorAwait div(const TensorAwait& a, float s) { return binary_scalar(BinaryOp::div, a, s); }

TensorAwait neg(const TensorAwait& a) { return unary(UnaryOp::neg, a); }
TensorAwait abs(const TensorAwait& a) { return unary(UnaryOp::abs, a); }
TensorAwait exp(const TensorAwait& a) { return unary(UnaryOp::exp, a); }
TensorAwait log(const TensorAwait& a) { return unary(UnaryOp::log, a); }
TensorAwait sqrt(const TensorAwait& a) { return unary(UnaryOp::sqrt, a); }
TensorAwait tanh(const TensorAwait& a) { return unary(UnaryOp::tanh, a); }
TensorAwait sigmoid(const TensorAwait& a) { return unary(UnaryOp::sigmoid, a); }
TensorAwait relu(const TensorAwait& a) { return unary(UnaryOp::relu, a); }
TensorAwait silu(const TensorAwait& a) { return unary(UnaryOp::silu, a); }
TensorAwait gelu(const TensorAwait& a) { return unary(UnaryOp::gelu, a); }
TensorAwait gelu_tanh(const TensorAwait& a) { return unary(UnaryOp::gelu_tanh, a); }

TensorAwait matmul(const TensorAwait& a, const TensorAwait& b) { return make_op(OpSpec{OpKind::matmul}, {a, b}); }
TensorAwait transpose(const TensorAwait& a) { return make_op(OpSpec{OpKind::transpose}, {a}); }
TensorAwait sum(const TensorAwait& a, int dim, bool keepdim) { return reduction(ReduceOp::sum, a, dim, keepdim); }
TensorAwait mean(const TensorAwait& a, int dim, bool keepdim) { return reduction(ReduceOp::mean, a, dim, keepdim); }
TensorAwait max(const TensorAwait& a, int dim, bool keepdim) { return reduction(ReduceOp::max, a, dim, keepdim); }

TensorAwait softmax(const TensorAwait& a, int dim) {
  OpSpec s{OpKind::softmax};
  s.dim = dim;
  return make_op(s, {a});
}

TensorAwait layer_norm(const TensorAwait& x, const TensorAwait& gamma, const TensorAwait& beta, float eps) {
  if (!(eps >= 0.f)) throw std::invalid_argument("layer_norm: eps must be >= 0, got " + std::to_string(eps));
  OpSpec s{OpKind::layer_norm};
  s.scalar = eps;
  return make_op(s, {x, gamma, beta});
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
