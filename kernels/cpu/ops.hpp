#pragma once
// CPU kernels: plain functions over contiguous row-major buffers (matmul, the reductions, softmax
// and layer_norm: strided inputs), run by a CPU stream's worker. They are the reference the CUDA kernels are compared with, so accuracy
// comes before speed: reductions accumulate in double. Element-wise ops are fused programs
// (cpu/fused.hpp), also when they run alone.
#include <cstddef>
#include <cstdint>

#include <defer/dtype.hpp>

#include "matmul_layout.hpp"
#include "op_table.hpp"
#include "strided_axis.hpp"

namespace defer::kernels::cpu {

// Reductions, softmax and layer norm read x through a StridedAxis (kernels/strided_axis.hpp: x[o, j, i]
// at o * outer_stride + j * n_stride + i * inner_stride, any strides) and write out contiguous; the
// overloads with plain extents take a dense row-major x.
//
// out[o, i] = op over j of x[o, j, i]; out is [outer, inner].
// mean of n == 0 elements is NaN, sum is 0; max and min require n > 0 (checked by the op layer).
// op is sum, mean, max or min (argmax below; else std::invalid_argument).
void reduce(ReduceOp op, const float* x, float* out, const StridedAxis& axis);
void reduce(ReduceOp op, const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner);
// out[o, i] = the first j where x[o, j, i] is largest (a NaN counts as largest); n > 0.
void argmax(const float* x, std::int64_t* out, const StridedAxis& axis);
void argmax(const float* x, std::int64_t* out, std::int64_t outer, std::int64_t n, std::int64_t inner);
// Numerically stable softmax over the middle axis; out is [outer, n, inner] (out[o, j, i] at
// (o * n + j) * inner + i). out must not overlap a strided x.
void softmax(const float* x, float* out, const StridedAxis& axis);
void softmax(const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner);
// Layer norm over the last axis: rows = axis.outer, cols = axis.n, axis.inner == 1 (else
// std::invalid_argument); (x - mean) / sqrt(var + eps) * gamma + beta with the biased variance;
// gamma, beta contiguous [cols], out contiguous [rows, cols].
void layer_norm(const float* x, const float* gamma, const float* beta, float* out, const StridedAxis& axis, float eps);
void layer_norm(const float* x, const float* gamma, const float* beta, float* out, std::int64_t rows,
                std::int64_t cols, float eps);
// c = a x b over the layout (kernels/matmul_layout.hpp): a and b read in place through their strides
// (row- or column-major matrices, any batch offsets), c contiguous; all of dtype f32, f16 or bf16
// (else std::invalid_argument), accumulated in float, f16 / bf16 rounded once. k == 0 gives zeros.
void matmul(DType dtype, const void* a, const void* b, void* c, const MatmulLayout& layout);

// out[o, j, i] = x[o, index[j], i] for x [outer, extent, inner] and out [outer, count, inner], elements
// of element_bytes; index holds `count` i32 or i64 values. Checks every index against [0, extent)
// before copying anything: returns the position of the first one outside it (nothing copied), or -1.
std::int64_t index_select(const void* x, std::size_t element_bytes, const void* index, DType index_dtype,
                          std::int64_t outer, std::int64_t extent, std::int64_t count, std::int64_t inner, void* out);

}  // namespace defer::kernels::cpu
