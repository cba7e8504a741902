#pragma once
// Views (docs/api.md section 8): reshape, view, permute, transpose, unsqueeze, squeeze, expand, slice
// and select map a strided layout (shape, strides, offset in elements) to another one over the same
// storage. They never launch anything: a view of a materialized tensor is a new handle on its
// storage, and a view of a pending result is resolved when that result exists. Only reshape of a
// layout that no strides can express (say, flattening a transposed tensor) needs a copy first.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <defer/tensor.hpp>

namespace defer::detail {

enum class ViewOp : std::uint8_t { reshape, view, permute, transpose, unsqueeze, squeeze, expand, slice, select };

const char* view_name(ViewOp op) noexcept;  // "reshape", "permute", ...

struct Strided {
  Shape shape, strides;
  int64_t offset = 0;  // elements from the layout's origin
};

// The layout `op` with `args` makes of `in`, or std::invalid_argument naming the op, the shape and the
// offending value. args: reshape/view/expand: the shape; permute: the dims; transpose: d0, d1;
// unsqueeze/squeeze: dim; slice: dim, start, end, step; select: dim, index.
// For reshape, nullopt when the strides do not allow a view (the caller copies first, after which
// they always do); for view that case throws.
// A result with more than kMaxDims dims that do not merge is refused (the kernels' limit).
std::optional<Strided> apply_view(ViewOp op, const std::vector<int64_t>& args, const Strided& in);
// The same without the rank check (fusion carries layouts through several views).
std::optional<Strided> apply_view_unchecked(ViewOp op, const std::vector<int64_t>& args, const Strided& in);

// The strides of `shape` viewing a layout of old_shape/old_strides (same element count), or nullopt
// when no strides can express it (PyTorch's rule: dims may be merged or split only within runs that
// are contiguous with each other).
std::optional<Shape> view_strides(const Shape& old_shape, const Shape& old_strides, const Shape& shape);

}  // namespace defer::detail
