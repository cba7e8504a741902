#include "graph/shape_rules.hpp"

#include <algorithm>
#include <optional>
#include <stdexcept>
#include <utility>

#include "runtime/tensor_impl.hpp"

namespace defer::detail {
namespace {

[[noreturn]] void fail(const char* op, const std::string& what) { throw std::invalid_argument(std::string(op) + ": " + what); }

int64_t product(const Shape& s, std::size_t from, std::size_t to) {
  int64_t p = 1;
  for (std::size_t i = from; i < to; ++i) p *= s[i];
  return p;
}

}  // namespace

TensorMeta meta_of(const Tensor& t) {
  TensorMeta m{t.shape(), t.dtype(), t.device()};
  if (!t.is_contiguous()) m.strides = t.strides();
  return m;
}

Shape strides_of(const TensorMeta& m) { return m.strides.empty() ? contiguous_strides(m.shape) : m.strides; }

std::string describe(const TensorMeta& m) { return shape_str(m.shape) + " " + dtype_name(m.dtype) + " " + m.device.str(); }

std::string describe_all(const std::vector<TensorMeta>& inputs) {
  std::string all;
  for (const TensorMeta& x : inputs) all += (all.empty() ? "" : ", ") + describe(x);
  return all;
}

void check_same_device(const char* op, const std::vector<TensorMeta>& inputs) {
  for (const TensorMeta& m : inputs)
    if (!(m.device == inputs[0].device))
      fail(op, "operands are on different devices (" + describe_all(inputs) + "); copy them with to() first");
}

void check_same_dtype(const char* op, const TensorMeta& a, const TensorMeta& b) {
  if (a.dtype != b.dtype)
    fail(op, std::string("operands have different dtypes, ") + dtype_name(a.dtype) + " and " + dtype_name(b.dtype) + " (" +
                 describe(a) + ", " + describe(b) + "); cast one with to(x, DType)");
}

void check_floating(const char* op, const TensorMeta& a) {
  if (!is_floating(a.dtype))
    fail(op, std::string("takes f32, f16 or bf16 tensors, got ") + describe(a) + "; cast it with to(x, DType::f32)");
}

void check_index(const char* op, const TensorMeta& index) {
  if (!is_integer(index.dtype)) fail(op, "indices must be i32 or i64, got " + describe(index));
}

Shape broadcast_shapes(const char* op, const std::vector<const Shape*>& shapes) {
  std::size_t rank = 0;
  for (const Shape* s : shapes) rank = std::max(rank, s->size());
  Shape out(rank, 1);
  for (std::size_t i = 0; i < rank; ++i) {
    for (const Shape* s : shapes) {
      const int64_t x = i < rank - s->size() ? 1 : (*s)[i - (rank - s->size())];
      if (x == 1) continue;
      if (out[i] != 1 && out[i] != x) {
        std::string all;
        for (const Shape* t : shapes) all += (all.empty() ? "" : " and ") + shape_str(*t);
        fail(op, "shapes " + all + " do not broadcast (dim " + std::to_string(i) + ": " + std::to_string(out[i]) +
                     " vs " + std::to_string(x) + ")");
      }
      out[i] = x;
    }
  }
  return out;
}

TensorMeta elementwise_meta(kernels::ElementwiseOp op, DType cast_to, const std::vector<TensorMeta>& in) {
  const kernels::ElementwiseInfo& info = kernels::info(op);
  const char* name = info.name;
  check_same_device(name, in);
  const int condition = kernels::condition_operand(op);
  const TensorMeta* data = nullptr;  // the first data operand
  std::vector<const Shape*> shapes;
  for (std::size_t i = 0; i < in.size(); ++i) {
    shapes.push_back(&in[i].shape);
    if (static_cast<int>(i) == condition) {
      if (in[i].dtype != DType::boolean)
        fail(name, std::string(op == kernels::ElementwiseOp::where ? "the condition" : "the mask") +
                       " must be boolean, got " + describe(in[i]));
      continue;
    }
    if (data == nullptr) data = &in[i];
    else check_same_dtype(name, *data, in[i]);
  }
  if (info.data == kernels::OpData::floating) check_floating(name, *data);
  DType dtype = data->dtype;
  if (info.result == kernels::OpResult::boolean) dtype = DType::boolean;
  if (info.result == kernels::OpResult::cast) dtype = cast_to;
  return TensorMeta{broadcast_shapes(name, shapes), dtype, in[0].device};
}

kernels::FusedLayout make_fused_layout(const Shape& out, const std::vector<Shape>& inputs,
                                       const std::vector<Shape>& input_strides) {
  // The common case first: no input broadcast, none strided, one flat dim.
  bool flat_inputs = true;
  for (std::size_t i = 0; i < inputs.size() && flat_inputs; ++i)
    flat_inputs = inputs[i] == out && input_strides[i].empty();
  // No elements (the other extents may multiply past int64): one empty dim, nothing is read.
  if (flat_inputs || numel_of(out) == 0) {
    kernels::FusedLayout flat;
    const int64_t n = numel_of(out);
    flat.ndim = n == 1 ? 0 : 1;
    flat.shape[0] = n;
    flat.strides.assign(inputs.size(), {1});
    return flat;
  }
  const std::size_t rank = out.size();
  std::vector<std::vector<int64_t>> strides(inputs.size(), std::vector<int64_t>(rank, 0));
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Shape own = input_strides[i].empty() ? contiguous_strides(inputs[i]) : input_strides[i];
    for (std::size_t k = 0; k < inputs[i].size(); ++k) {
      const std::size_t d = inputs[i].size() - 1 - k;
      strides[i][rank - 1 - k] = inputs[i][d] == 1 ? 0 : own[d];  // an extent-1 dim broadcasts
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

int normalize_dim(const char* op, int dim, std::size_t rank) {
  const int r = static_cast<int>(rank);
  if (dim < -r || dim >= r || r == 0)
    fail(op, "dim " + std::to_string(dim) + " is out of range for a tensor of " + std::to_string(r) + " dims");
  return dim < 0 ? dim + r : dim;
}

TensorMeta reduce_meta(const char* op, const TensorMeta& a, int dim, bool keepdim, bool needs_elements, DType result) {
  check_floating(op, a);
  const int d = normalize_dim(op, dim, a.shape.size());
  if (needs_elements && a.shape[static_cast<std::size_t>(d)] == 0)
    fail(op, "dim " + std::to_string(dim) + " of " + shape_str(a.shape) + " has no elements to reduce");
  Shape out = a.shape;
  if (keepdim) out[static_cast<std::size_t>(d)] = 1;
  else out.erase(out.begin() + d);
  return TensorMeta{std::move(out), result, a.device};
}

TensorMeta softmax_meta(const TensorMeta& a, int dim) {
  check_floating("softmax", a);
  normalize_dim("softmax", dim, a.shape.size());
  return a;
}

TensorMeta matmul_meta(const TensorMeta& a, const TensorMeta& b) {
  check_same_device("matmul", {a, b});
  check_same_dtype("matmul", a, b);
  check_floating("matmul", a);
  // As torch.matmul: a 1-D first operand is a row vector [1, k], a 1-D second one a column vector
  // [k, 1] (the added dim is removed from the result); the batch dims broadcast.
  const auto ra = a.shape.size(), rb = b.shape.size();
  const std::string shapes = shape_str(a.shape) + " x " + shape_str(b.shape);
  if (ra == 0 || rb == 0) fail("matmul", "takes operands of at least 1 dim, got a 0-d operand: " + shapes);
  const int64_t k = a.shape[ra - 1];
  const int64_t kb = rb == 1 ? b.shape[0] : b.shape[rb - 2];
  if (kb != k)
    fail("matmul", "inner dims differ (" + std::to_string(k) + " vs " + std::to_string(kb) + "): " + shapes);
  const std::size_t na = ra > 2 ? ra - 2 : 0, nb = rb > 2 ? rb - 2 : 0, nbatch = std::max(na, nb);
  Shape out(nbatch, 1);
  for (std::size_t d = 0; d < nbatch; ++d) {
    const int64_t ea = d < nbatch - na ? 1 : a.shape[d - (nbatch - na)];
    const int64_t eb = d < nbatch - nb ? 1 : b.shape[d - (nbatch - nb)];
    if (ea != eb && ea != 1 && eb != 1) {
      const Shape batch_a(a.shape.begin(), a.shape.begin() + static_cast<std::ptrdiff_t>(na));
      const Shape batch_b(b.shape.begin(), b.shape.begin() + static_cast<std::ptrdiff_t>(nb));
      fail("matmul", "batch dims " + shape_str(batch_a) + " and " + shape_str(batch_b) + " do not broadcast (" +
                         std::to_string(ea) + " vs " + std::to_string(eb) + "): " + shapes);
    }
    out[d] = ea == 1 ? eb : ea;
  }
  if (ra >= 2) out.push_back(a.shape[ra - 2]);
  if (rb >= 2) out.push_back(b.shape[rb - 1]);
  return TensorMeta{std::move(out), a.dtype, a.device};
}

TensorMeta cat_meta(const std::vector<TensorMeta>& in, int dim) {
  if (in.empty()) fail("cat", "needs at least one tensor");
  check_same_device("cat", in);
  const TensorMeta& first = in[0];
  const int d = normalize_dim("cat", dim, first.shape.size());
  Shape out = first.shape;
  out[static_cast<std::size_t>(d)] = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    check_same_dtype("cat", first, in[i]);
    bool same = in[i].shape.size() == first.shape.size();
    for (std::size_t k = 0; same && k < first.shape.size(); ++k)
      same = k == static_cast<std::size_t>(d) || in[i].shape[k] == first.shape[k];
    if (!same)
      fail("cat", "tensor " + std::to_string(i + 1) + " has shape " + shape_str(in[i].shape) + ", tensor 1 " +
                      shape_str(first.shape) + ": all extents but dim " + std::to_string(dim) + " must agree");
    if (__builtin_add_overflow(out[static_cast<std::size_t>(d)], in[i].shape[static_cast<std::size_t>(d)],
                               &out[static_cast<std::size_t>(d)]))
      fail("cat", "the extent of dim " + std::to_string(dim) + " overflows int64");
  }
  return TensorMeta{std::move(out), first.dtype, first.device};
}

TensorMeta layer_norm_meta(const TensorMeta& x, const TensorMeta& gamma, const TensorMeta& beta) {
  check_same_device("layer_norm", {x, gamma, beta});
  check_same_dtype("layer_norm", x, gamma);
  check_same_dtype("layer_norm", x, beta);
  check_floating("layer_norm", x);
  if (x.shape.empty()) fail("layer_norm", "needs at least 1 dim, got " + shape_str(x.shape));
  const Shape last{x.shape.back()};
  if (gamma.shape != last || beta.shape != last)
    fail("layer_norm", "gamma " + shape_str(gamma.shape) + " and beta " + shape_str(beta.shape) + " must be " +
                           shape_str(last) + " for x " + shape_str(x.shape));
  return x;
}

TensorMeta index_select_meta(const TensorMeta& a, int dim, const TensorMeta& index) {
  check_same_device("index_select", {a, index});
  check_index("index_select", index);
  if (index.shape.size() != 1) fail("index_select", "the index must be 1-D, got " + describe(index));
  const int d = normalize_dim("index_select", dim, a.shape.size());
  Shape out = a.shape;
  out[static_cast<std::size_t>(d)] = index.shape[0];
  return TensorMeta{std::move(out), a.dtype, a.device};
}

TensorMeta embedding_meta(const TensorMeta& weight, const TensorMeta& ids) {
  check_same_device("embedding", {weight, ids});
  check_index("embedding", ids);
  if (weight.shape.size() != 2) fail("embedding", "the weight must be 2-D [V, D], got " + describe(weight));
  Shape out = ids.shape;
  out.push_back(weight.shape[1]);
  return TensorMeta{std::move(out), weight.dtype, weight.device};
}

int64_t numel_of(const Shape& s) {
  // A 0 extent first: the other extents of an empty shape may multiply past int64.
  return std::find(s.begin(), s.end(), 0) != s.end() ? 0 : product(s, 0, s.size());
}

AxisSplit split_at(const Shape& s, int dim) {
  const auto d = static_cast<std::size_t>(dim);
  return AxisSplit{product(s, 0, d), s[d], product(s, d + 1, s.size())};
}

namespace {

// The dims [from, to) as one axis, when they step through memory as one: every dim of extent > 1
// is its inner neighbour's stride times that neighbour's extent apart. Its stride is the innermost
// such dim's; `fallback` when all extents are 1 (any stride reads the one element).
std::optional<std::pair<int64_t, int64_t>> collapse(const Shape& shape, const Shape& strides, std::size_t from,
                                                    std::size_t to, int64_t fallback) {
  int64_t extent = 1, stride = fallback;
  bool any = false;
  for (std::size_t d = from; d < to; ++d) {
    if (shape[d] == 1) continue;
    if (any && stride != strides[d] * shape[d]) return std::nullopt;
    extent *= shape[d];
    stride = strides[d];
    any = true;
  }
  return std::pair{extent, stride};
}

}  // namespace

std::optional<kernels::StridedAxis> strided_axis(const Shape& shape, const Shape& strides, int dim) {
  const AxisSplit split = split_at(shape, dim);
  if (numel_of(shape) == 0) return kernels::StridedAxis::contiguous(split.outer, split.n, split.inner);
  const auto d = static_cast<std::size_t>(dim);
  const auto outer = collapse(shape, strides, 0, d, split.n * split.inner);
  const auto inner = collapse(shape, strides, d + 1, shape.size(), 1);
  if (!outer || !inner) return std::nullopt;
  return kernels::StridedAxis{outer->first, shape[d], inner->first, outer->second, strides[d], inner->second};
}

}  // namespace defer::detail
