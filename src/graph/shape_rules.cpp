#include "graph/shape_rules.hpp"

#include <algorithm>
#include <stdexcept>

namespace defer::detail {
namespace {

[[noreturn]] void fail(const char* op, const std::string& what) { throw std::invalid_argument(std::string(op) + ": " + what); }

int64_t product(const Shape& s, std::size_t from, std::size_t to) {
  int64_t p = 1;
  for (std::size_t i = from; i < to; ++i) p *= s[i];
  return p;
}

}  // namespace

std::string describe(const TensorMeta& m) { return shape_str(m.shape) + " " + dtype_name(m.dtype) + " " + m.device.str(); }

void check_same_device_and_dtype(const char* op, const std::vector<TensorMeta>& inputs, bool any_dtype) {
  for (const TensorMeta& m : inputs) {
    if (!(m.device == inputs[0].device)) {
      std::string all;
      for (const TensorMeta& x : inputs) all += (all.empty() ? "" : ", ") + describe(x);
      fail(op, "operands are on different devices (" + all + "); copy them with to() first");
    }
    if (any_dtype ? m.dtype != inputs[0].dtype : m.dtype != DType::f32) {
      std::string all;
      for (const TensorMeta& x : inputs) all += (all.empty() ? "" : ", ") + describe(x);
      fail(op, any_dtype ? "operands have different dtypes (" + all + ")"
                         : "takes f32 tensors, got " + all);
    }
  }
}

TensorMeta broadcast_meta(const char* op, const TensorMeta& a, const TensorMeta& b) {
  check_same_device_and_dtype(op, {a, b});
  const std::size_t rank = std::max(a.shape.size(), b.shape.size());
  Shape out(rank);
  for (std::size_t i = 0; i < rank; ++i) {
    const int64_t x = i < rank - a.shape.size() ? 1 : a.shape[i - (rank - a.shape.size())];
    const int64_t y = i < rank - b.shape.size() ? 1 : b.shape[i - (rank - b.shape.size())];
    if (x != y && x != 1 && y != 1)
      fail(op, "shapes " + shape_str(a.shape) + " and " + shape_str(b.shape) + " do not broadcast (dim " +
                   std::to_string(i) + ": " + std::to_string(x) + " vs " + std::to_string(y) + ")");
    out[i] = x == 1 ? y : x;
  }
  return TensorMeta{std::move(out), DType::f32, a.device};
}

kernels::FusedLayout make_fused_layout(const Shape& out, const std::vector<Shape>& inputs) {
  const std::size_t rank = out.size();
  std::vector<std::vector<int64_t>> strides(inputs.size(), std::vector<int64_t>(rank, 0));
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    int64_t stride = 1;
    for (std::size_t k = 0; k < inputs[i].size(); ++k) {
      const int64_t extent = inputs[i][inputs[i].size() - 1 - k];
      strides[i][rank - 1 - k] = extent == 1 ? 0 : stride;
      stride *= extent;
    }
  }
  // Innermost first: merge a dim into its inner neighbour when every input steps through the pair
  // as through one dim.
  std::vector<int64_t> shape_c;
  std::vector<std::vector<int64_t>> strides_c(inputs.size());
  for (std::size_t k = 0; k < rank; ++k) {
    const std::size_t d = rank - 1 - k;
    if (out[d] == 1) continue;
    bool merge = !shape_c.empty();
    for (std::size_t i = 0; merge && i < inputs.size(); ++i) merge = strides[i][d] == strides_c[i].back() * shape_c.back();
    if (merge) {
      shape_c.back() *= out[d];
      continue;
    }
    shape_c.push_back(out[d]);
    for (std::size_t i = 0; i < inputs.size(); ++i) strides_c[i].push_back(strides[i][d]);
  }
  if (shape_c.size() > static_cast<std::size_t>(kernels::kMaxDims))
    throw std::invalid_argument("broadcast: " + shape_str(out) + " needs more than " + std::to_string(kernels::kMaxDims) +
                                " non-mergeable dims");
  kernels::FusedLayout layout;
  layout.ndim = static_cast<int>(shape_c.size());
  layout.strides.resize(inputs.size());
  for (int d = 0; d < layout.ndim; ++d) {
    const std::size_t from = shape_c.size() - 1 - static_cast<std::size_t>(d);
    layout.shape[static_cast<std::size_t>(d)] = shape_c[from];
    for (std::size_t i = 0; i < inputs.size(); ++i) layout.strides[i][static_cast<std::size_t>(d)] = strides_c[i][from];
  }
  return layout;
}

std::optional<kernels::Broadcast> make_broadcast(const Shape& out, const Shape& a, const Shape& b) {
  if (a == out && b == out) return std::nullopt;
  const kernels::FusedLayout layout = make_fused_layout(out, {a, b});
  const auto& sa = layout.strides[0];
  const auto& sb = layout.strides[1];
  if (layout.ndim == 0 || (layout.ndim == 1 && sa[0] == 1 && sb[0] == 1)) return std::nullopt;  // contiguous
  kernels::Broadcast bc;
  bc.ndim = layout.ndim;
  for (std::size_t d = 0; d < static_cast<std::size_t>(layout.ndim); ++d) {
    bc.shape[d] = layout.shape[d];
    bc.stride[0][d] = sa[d];
    bc.stride[1][d] = sb[d];
  }
  return bc;
}

int normalize_dim(const char* op, int dim, std::size_t rank) {
  const int r = static_cast<int>(rank);
  if (dim < -r || dim >= r || r == 0)
    fail(op, "dim " + std::to_string(dim) + " is out of range for a tensor of " + std::to_string(r) + " dims");
  return dim < 0 ? dim + r : dim;
}

TensorMeta reduce_meta(const char* op, const TensorMeta& a, int dim, bool keepdim, bool needs_elements) {
  check_same_device_and_dtype(op, {a});
  const int d = normalize_dim(op, dim, a.shape.size());
  if (needs_elements && a.shape[static_cast<std::size_t>(d)] == 0)
    fail(op, "dim " + std::to_string(dim) + " of " + shape_str(a.shape) + " has no elements to reduce");
  Shape out = a.shape;
  if (keepdim) out[static_cast<std::size_t>(d)] = 1;
  else out.erase(out.begin() + d);
  return TensorMeta{std::move(out), DType::f32, a.device};
}

TensorMeta matmul_meta(const TensorMeta& a, const TensorMeta& b) {
  check_same_device_and_dtype("matmul", {a, b});
  const auto ra = a.shape.size(), rb = b.shape.size();
  const std::string shapes = shape_str(a.shape) + " x " + shape_str(b.shape);
  if (ra < 2 || ra > 3 || rb < 2 || rb > 3) fail("matmul", "takes 2-D or 3-D operands, got " + shapes);
  const int64_t k = a.shape[ra - 1];
  if (b.shape[rb - 2] != k) fail("matmul", "inner dims differ: " + shapes);
  if (ra == 3 && rb == 3 && a.shape[0] != b.shape[0]) fail("matmul", "batch dims differ: " + shapes);
  Shape out;
  if (ra == 3) out.push_back(a.shape[0]);
  else if (rb == 3) out.push_back(b.shape[0]);
  out.push_back(a.shape[ra - 2]);
  out.push_back(b.shape[rb - 1]);
  return TensorMeta{std::move(out), DType::f32, a.device};
}

TensorMeta transpose_meta(const TensorMeta& a) {
  if (a.shape.size() < 2) fail("transpose", "needs at least 2 dims, got " + shape_str(a.shape));
  Shape out = a.shape;
  std::swap(out[out.size() - 1], out[out.size() - 2]);
  return TensorMeta{std::move(out), a.dtype, a.device};
}

TensorMeta layer_norm_meta(const TensorMeta& x, const TensorMeta& gamma, const TensorMeta& beta) {
  check_same_device_and_dtype("layer_norm", {x, gamma, beta});
  if (x.shape.empty()) fail("layer_norm", "needs at least 1 dim, got " + shape_str(x.shape));
  const Shape last{x.shape.back()};
  if (gamma.shape != last || beta.shape != last)
    fail("layer_norm", "gamma " + shape_str(gamma.shape) + " and beta " + shape_str(beta.shape) + " must be " +
                           shape_str(last) + " for x " + shape_str(x.shape));
  return x;
}

AxisSplit split_at(const Shape& s, int dim) {
  const auto d = static_cast<std::size_t>(dim);
  return AxisSplit{product(s, 0, d), s[d], product(s, d + 1, s.size())};
}

}  // namespace defer::detail
