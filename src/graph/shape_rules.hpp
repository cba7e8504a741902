#pragma once
// Shape, dtype and device rules of every op: what an op's output looks like, and the
// std::invalid_argument (naming the op and the shapes) for inputs it cannot take. Used at call time
// when the operands' shapes are known, and again at run time for operands that were not.
#include <optional>
#include <string>
#include <vector>

#include <defer/tensor.hpp>

#include "fusion/fused_program.hpp"
#include "op_kinds.hpp"

namespace defer::detail {

// What a tensor looks like, known before it exists.
struct TensorMeta {
  Shape shape;
  DType dtype;
  Device device;
};

std::string describe(const TensorMeta& m);  // "[2, 3] f32 cpu"

// Throws std::invalid_argument("<op>: ...") unless every input is on the same device and is f32
// (or, with any_dtype, shares one dtype).
void check_same_device_and_dtype(const char* op, const std::vector<TensorMeta>& inputs, bool any_dtype = false);

TensorMeta broadcast_meta(const char* op, const TensorMeta& a, const TensorMeta& b);
// How each input is indexed by the output of a broadcast: the output shape and every input's
// strides (0 where broadcast) collapsed into as few dims as possible (std::invalid_argument if more
// than kMaxDims remain). The one routine behind make_broadcast and fused kernels' layouts.
kernels::FusedLayout make_fused_layout(const Shape& out, const std::vector<Shape>& inputs);
// The same for the two inputs of a binary op; nullopt when they are read contiguously.
std::optional<kernels::Broadcast> make_broadcast(const Shape& out, const Shape& a, const Shape& b);

// Normalizes a possibly negative dim for a tensor of `rank` dims, or throws naming the op.
int normalize_dim(const char* op, int dim, std::size_t rank);
TensorMeta reduce_meta(const char* op, const TensorMeta& a, int dim, bool keepdim, bool needs_elements);
TensorMeta matmul_meta(const TensorMeta& a, const TensorMeta& b);
TensorMeta transpose_meta(const TensorMeta& a);
TensorMeta layer_norm_meta(const TensorMeta& x, const TensorMeta& gamma, const TensorMeta& beta);

// [outer, n, inner] view of a shape around `dim`.
struct AxisSplit {
  int64_t outer, n, inner;
};
AxisSplit split_at(const Shape& s, int dim);

}  // namespace defer::detail
