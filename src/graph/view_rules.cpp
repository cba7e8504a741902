#include "graph/view_rules.hpp"

#include <algorithm>
#include <stdexcept>

#include "graph/shape_rules.hpp"
#include "op_table.hpp"
#include "strided_copy.hpp"
#include "runtime/tensor_impl.hpp"

namespace defer::detail {
namespace {

[[noreturn]] void fail(ViewOp op, const std::string& what) {
  throw std::invalid_argument(std::string(view_name(op)) + ": " + what);
}

// A dim in [-rank, rank) (or [-rank - 1, rank] when `inserting`), normalized.
int64_t dim_of(ViewOp op, int64_t dim, std::size_t rank, const Shape& shape, bool inserting = false) {
  const auto r = static_cast<int64_t>(rank) + (inserting ? 1 : 0);
  if (dim < -r || dim >= r || r == 0)
    fail(op, "dim " + std::to_string(dim) + " is out of range for shape " + shape_str(shape) + " (" +
                 std::to_string(rank) + " dims)");
  return dim < 0 ? dim + r : dim;
}

// Shape with at most one -1 resolved against `numel`.
Shape resolve_shape(ViewOp op, const Shape& in, const Shape& requested) {
  Shape out = requested;
  std::optional<std::size_t> infer;
  bool empty = false;
  for (std::size_t d = 0; d < out.size(); ++d) {
    if (out[d] == -1) {
      if (infer) fail(op, "only one extent may be -1, got " + shape_str(requested));
      infer = d;
    } else if (out[d] < 0) {
      fail(op, "invalid extent " + std::to_string(out[d]) + " in shape " + shape_str(requested));
    }
    empty = empty || out[d] == 0;
  }
  int64_t known = empty ? 0 : 1;  // a 0 extent makes the count 0, whatever the others
  for (std::size_t d = 0; d < out.size() && !empty; ++d)
    if (out[d] != -1 && __builtin_mul_overflow(known, out[d], &known))
      fail(op, "the element count of shape " + shape_str(requested) + " overflows int64");
  const int64_t numel = numel_of(in);
  if (infer) {
    if (known == 0 || numel % known != 0)
      fail(op, "shape " + shape_str(requested) + " is invalid for " + shape_str(in) + " (" + std::to_string(numel) +
                   " elements)");
    out[*infer] = numel / known;
  } else if (known != numel) {
    fail(op, "shape " + shape_str(requested) + " (" + std::to_string(known) + " elements) is invalid for " +
                 shape_str(in) + " (" + std::to_string(numel) + " elements)");
  }
  return out;
}

// The kernels index at most kMaxDims dims once the dims that step over each other are merged: a
// view with more is refused at the call, where the error belongs, not by whatever reads it later.
Strided checked_rank(ViewOp op, Strided out) {
  if (out.shape.size() <= static_cast<std::size_t>(kernels::kMaxDims) || numel_of(out.shape) == 0) return out;
  try {
    kernels::make_copy_layout(out.shape, out.strides, out.strides);  // merges as every kernel does
  } catch (const std::invalid_argument& e) {
    fail(op, "the result " + shape_str(out.shape) + " (strides " + shape_str(out.strides) +
                 ") is beyond what the kernels index (" + e.what() + ")");
  }
  return out;
}

}  // namespace

const char* view_name(ViewOp op) noexcept {
  switch (op) {
    case ViewOp::reshape: return "reshape";
    case ViewOp::view: return "view";
    case ViewOp::permute: return "permute";
    case ViewOp::transpose: return "transpose";
    case ViewOp::unsqueeze: return "unsqueeze";
    case ViewOp::squeeze: return "squeeze";
    case ViewOp::expand: return "expand";
    case ViewOp::slice: return "slice";
    case ViewOp::select: return "select";
  }
  return "view";
}

std::optional<Shape> view_strides(const Shape& old_shape, const Shape& old_strides, const Shape& shape) {
  if (numel_of(old_shape) == 0 || old_shape.empty()) return contiguous_strides(shape);
  Shape strides(shape.size(), 0);
  auto view_d = static_cast<int64_t>(shape.size()) - 1;
  int64_t chunk_stride = old_strides.back();  // the stride of the innermost dim of the current run
  int64_t tensor_numel = 1, view_numel = 1;
  for (auto d = static_cast<int64_t>(old_shape.size()) - 1; d >= 0; --d) {
    const auto ud = static_cast<std::size_t>(d);
    tensor_numel *= old_shape[ud];
    // A run ends where the next outer dim does not step exactly over this run.
    const bool run_ends =
        d == 0 || (old_shape[ud - 1] != 1 && old_strides[ud - 1] != tensor_numel * chunk_stride);
    if (!run_ends) continue;
    while (view_d >= 0 && (view_numel < tensor_numel || shape[static_cast<std::size_t>(view_d)] == 1)) {
      strides[static_cast<std::size_t>(view_d)] = view_numel * chunk_stride;
      view_numel *= shape[static_cast<std::size_t>(view_d)];
      --view_d;
    }
    if (view_numel != tensor_numel) return std::nullopt;
    if (d > 0) {
      chunk_stride = old_strides[ud - 1];
      tensor_numel = 1;
      view_numel = 1;
    }
  }
  if (view_d != -1) return std::nullopt;
  return strides;
}

std::optional<Strided> apply_view(ViewOp op, const std::vector<int64_t>& args, const Strided& in) {
  std::optional<Strided> out = apply_view_unchecked(op, args, in);
  if (out) out = checked_rank(op, std::move(*out));
  return out;
}

std::optional<Strided> apply_view_unchecked(ViewOp op, const std::vector<int64_t>& args, const Strided& in) {
  Strided out = in;
  const std::size_t rank = in.shape.size();
  switch (op) {
    case ViewOp::reshape:
    case ViewOp::view: {
      out.shape = resolve_shape(op, in.shape, args);
      std::optional<Shape> strides = view_strides(in.shape, in.strides, out.shape);
      if (!strides) {
        if (op == ViewOp::reshape) return std::nullopt;
        fail(op, "the strides " + shape_str(in.strides) + " of shape " + shape_str(in.shape) +
                     " do not allow a view as " + shape_str(out.shape) + "; use reshape() (it copies) or contiguous()");
      }
      out.strides = std::move(*strides);
      return out;
    }
    case ViewOp::permute: {
      if (args.size() != rank)
        fail(op, "got " + std::to_string(args.size()) + " dims " + shape_str(args) + " for shape " + shape_str(in.shape));
      std::vector<bool> seen(rank, false);
      for (std::size_t i = 0; i < rank; ++i) {
        const auto d = static_cast<std::size_t>(dim_of(op, args[i], rank, in.shape));
        if (seen[d]) fail(op, "dim " + std::to_string(args[i]) + " repeats in " + shape_str(args));
        seen[d] = true;
        out.shape[i] = in.shape[d];
        out.strides[i] = in.strides[d];
      }
      return out;
    }
    case ViewOp::transpose: {
      const auto a = static_cast<std::size_t>(dim_of(op, args[0], rank, in.shape));
      const auto b = static_cast<std::size_t>(dim_of(op, args[1], rank, in.shape));
      std::swap(out.shape[a], out.shape[b]);
      std::swap(out.strides[a], out.strides[b]);
      return out;
    }
    case ViewOp::unsqueeze: {
      const auto d = static_cast<std::size_t>(dim_of(op, args[0], rank, in.shape, /*inserting=*/true));
      const int64_t stride = d < rank ? in.shape[d] * in.strides[d] : 1;
      out.shape.insert(out.shape.begin() + static_cast<std::ptrdiff_t>(d), 1);
      out.strides.insert(out.strides.begin() + static_cast<std::ptrdiff_t>(d), stride);
      return out;
    }
    case ViewOp::squeeze: {
      const auto d = static_cast<std::size_t>(dim_of(op, args[0], rank, in.shape));
      if (in.shape[d] != 1)
        fail(op, "dim " + std::to_string(args[0]) + " of shape " + shape_str(in.shape) + " has extent " +
                     std::to_string(in.shape[d]) + ", not 1");
      out.shape.erase(out.shape.begin() + static_cast<std::ptrdiff_t>(d));
      out.strides.erase(out.strides.begin() + static_cast<std::ptrdiff_t>(d));
      return out;
    }
    case ViewOp::expand: {
      if (args.size() < rank)
        fail(op, "shape " + shape_str(args) + " has fewer dims than the tensor's " + shape_str(in.shape));
      const std::size_t lead = args.size() - rank;
      out.shape.assign(args.size(), 0);
      out.strides.assign(args.size(), 0);
      for (std::size_t i = 0; i < args.size(); ++i) {
        const int64_t want = args[i];
        if (i < lead) {
          if (want < 0) fail(op, "a new leading dim cannot be " + std::to_string(want) + " in " + shape_str(args));
          out.shape[i] = want;  // stride 0: every index reads the same elements
        } else {
          const std::size_t j = i - lead;
          if (want == -1 || want == in.shape[j]) {
            out.shape[i] = in.shape[j];
            out.strides[i] = in.strides[j];
          } else if (in.shape[j] == 1 && want >= 0) {
            out.shape[i] = want;
          } else {
            fail(op, "cannot expand shape " + shape_str(in.shape) + " to " + shape_str(args) + " (dim " +
                         std::to_string(i) + ": " + std::to_string(in.shape[j]) + " to " + std::to_string(want) + ")");
          }
        }
      }
      int64_t numel = 1;
      if (std::find(out.shape.begin(), out.shape.end(), 0) == out.shape.end())
        for (int64_t e : out.shape)
          if (__builtin_mul_overflow(numel, e, &numel))
            fail(op, "the element count of shape " + shape_str(args) + " overflows int64");
      return out;
    }
    case ViewOp::slice: {
      const auto d = static_cast<std::size_t>(dim_of(op, args[0], rank, in.shape));
      const int64_t extent = in.shape[d];
      int64_t start = args[1], end = args[2];
      const int64_t step = args[3];
      if (step < 1) fail(op, "step must be >= 1, got " + std::to_string(step) + " (shape " + shape_str(in.shape) + ")");
      // Python's rules: negative positions count from the end; then both are clamped to [0, extent].
      if (start < 0) start += extent;
      if (end < 0) end += extent;
      start = std::clamp<int64_t>(start, 0, extent);
      end = std::clamp<int64_t>(end, start, extent);
      // Written so that no step, however large, overflows: the count is 1 + (end - start - 1) / step.
      out.shape[d] = end == start ? 0 : 1 + (end - start - 1) / step;
      // With fewer than two elements the stride never moves the index: keep the input's.
      if (out.shape[d] > 1 && __builtin_mul_overflow(in.strides[d], step, &out.strides[d]))
        fail(op, "step " + std::to_string(step) + " times the stride " + std::to_string(in.strides[d]) + " overflows int64");
      if (out.shape[d] > 0) out.offset += start * in.strides[d];
      return out;
    }
    case ViewOp::select: {
      const auto d = static_cast<std::size_t>(dim_of(op, args[0], rank, in.shape));
      const int64_t extent = in.shape[d];
      int64_t index = args[1];
      if (index < -extent || index >= extent)
        fail(op, "index " + std::to_string(args[1]) + " is out of range for dim " + std::to_string(args[0]) +
                     " of shape " + shape_str(in.shape) + " (extent " + std::to_string(extent) + ")");
      if (index < 0) index += extent;
      out.offset += index * in.strides[d];
      out.shape.erase(out.shape.begin() + static_cast<std::ptrdiff_t>(d));
      out.strides.erase(out.strides.begin() + static_cast<std::ptrdiff_t>(d));
      return out;
    }
  }
  return out;
}

}  // namespace defer::detail
