#pragma once
// The [outer, n, inner] view of a strided tensor around one dim, read in place by the reductions,
// argmax, softmax and layer_norm (over the last dim: inner == 1) of both backends: element
// x[o, j, i] is at x + o * outer_stride + j * n_stride + i * inner_stride (strides in elements, any
// integer: 0 for a broadcast axis, negative allowed). Outputs stay contiguous in the logical order:
// [outer, inner] for a reduction, [outer, n, inner] for softmax and layer_norm.
//
// The graph layer builds it (graph/shape_rules.hpp: strided_axis) when the dims before the reduced
// one collapse into one uniformly strided axis and those after it into another; otherwise it copies
// the operand first. C++17: CUDA sources include it.
#include <cstdint>

namespace defer::kernels {

struct StridedAxis {
  std::int64_t outer = 1, n = 1, inner = 1;                   // extents
  std::int64_t outer_stride = 1, n_stride = 1, inner_stride = 1;  // in elements

  // A dense row-major [outer, n, inner] buffer.
  static constexpr StridedAxis contiguous(std::int64_t outer, std::int64_t n, std::int64_t inner) noexcept {
    return StridedAxis{outer, n, inner, n * inner, inner, 1};
  }
  constexpr std::int64_t numel() const noexcept { return outer * n * inner; }
  // Whether it reads a dense row-major buffer: every axis of extent > 1 has its contiguous stride.
  constexpr bool is_contiguous() const noexcept {
    return (outer <= 1 || outer_stride == n * inner) && (n <= 1 || n_stride == inner) && (inner <= 1 || inner_stride == 1);
  }
  // The offset of x[o, j, i] from x, in elements.
  constexpr std::int64_t offset(std::int64_t o, std::int64_t j, std::int64_t i) const noexcept {
    return o * outer_stride + j * n_stride + i * inner_stride;
  }
};

}  // namespace defer::kernels
