#pragma once
// Shape, dtype and device rules of every op: what an op's output looks like, and the
// std::invalid_argument (naming the op and the shapes) for inputs it cannot take. Used at call time
// when the operands' shapes are known, and again at run time for operands that were not.
#include <optional>
#include <string>
#include <vector>

#include <defer/tensor.hpp>

#include "fusion/fused_program.hpp"
#include "op_table.hpp"
#include "runtime/backend.hpp"
#include "strided_axis.hpp"

namespace defer::detail {

// What a tensor looks like, known before it exists.
struct TensorMeta {
  Shape shape;
  DType dtype;
  Device device;
  Shape strides = {};  // empty: contiguous (every op result but a view)
};

// What t looks like (strides only when it is not contiguous).
TensorMeta meta_of(const Tensor& t);
// m's strides, the contiguous ones when m.strides is empty.
Shape strides_of(const TensorMeta& m);

std::string describe(const TensorMeta& m);  // "[2, 3] f32 cpu"

// Throws std::invalid_argument("<op>: ...") unless every input is on one device.
void check_same_device(const char* op, const std::vector<TensorMeta>& inputs);
// ... unless a and b have one dtype (the message names both).
void check_same_dtype(const char* op, const TensorMeta& a, const TensorMeta& b);
// ... unless a is f32, f16 or bf16.
void check_floating(const char* op, const TensorMeta& a);

// The NumPy broadcast of several shapes, or std::invalid_argument naming the op and the shapes.
Shape broadcast_shapes(const char* op, const std::vector<const Shape*>& shapes);
// An element-wise op's output: the operands broadcast, data operands of one dtype (floating where
// the op table says so), a boolean condition or mask where the op has one; the dtype per the op
// table (cast_to for `to`).
TensorMeta elementwise_meta(kernels::ElementwiseOp op, DType cast_to, const std::vector<TensorMeta>& inputs);
// How each input is indexed by the output of a broadcast: the output shape and every input's
// strides (0 where broadcast) collapsed into as few dims as possible (std::invalid_argument if more
// than kMaxDims remain). The layout of every element-wise kernel.
// strides[i] empty: input i is contiguous.
kernels::FusedLayout make_fused_layout(const Shape& out, const std::vector<Shape>& inputs,
                                       const std::vector<Shape>& strides);

// Normalizes a possibly negative dim for a tensor of `rank` dims, or throws naming the op.
int normalize_dim(const char* op, int dim, std::size_t rank);
// `result`: the output's dtype (the input's, or i64 for argmax).
TensorMeta reduce_meta(const char* op, const TensorMeta& a, int dim, bool keepdim, bool needs_elements, DType result);
TensorMeta softmax_meta(const TensorMeta& a, int dim);
TensorMeta matmul_meta(const TensorMeta& a, const TensorMeta& b);
TensorMeta cat_meta(const std::vector<TensorMeta>& in, int dim);
TensorMeta layer_norm_meta(const TensorMeta& x, const TensorMeta& gamma, const TensorMeta& beta);
TensorMeta index_select_meta(const TensorMeta& a, int dim, const TensorMeta& index);
TensorMeta embedding_meta(const TensorMeta& weight, const TensorMeta& ids);

// The element count of a shape (validated elsewhere: see checked_numel for untrusted shapes).
int64_t numel_of(const Shape& s);

// [outer, n, inner] view of a shape around `dim`.
AxisSplit split_at(const Shape& s, int dim);
// The same view of a strided tensor (dim normalized), read in place: x[o, j, i] at o * outer_stride +
// j * n_stride + i * inner_stride (kernels/strided_axis.hpp), when the dims before `dim` collapse
// into one uniformly strided axis and those after it into another (extent-1 dims ignored; an empty
// tensor trivially); std::nullopt otherwise (the kernel then needs a dense copy).
std::optional<kernels::StridedAxis> strided_axis(const Shape& shape, const Shape& strides, int dim);

}  // namespace defer::detail
