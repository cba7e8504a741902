#pragma once
// CPU kernels: plain functions over contiguous row-major buffers, run by a CPU stream's worker.
// They are the reference the CUDA kernels are compared with, so accuracy comes before speed:
// reductions accumulate in double. Element-wise ops are fused programs (cpu/fused.hpp), also when
// they run alone.
#include <cstddef>
#include <cstdint>

#include <defer/dtype.hpp>

#include "op_table.hpp"

namespace defer::kernels::cpu {

// out[o, i] = op over j of x[o, j, i]; x is [outer, n, inner], out is [outer, inner].
// mean of n == 0 elements is NaN, sum is 0; max and min require n > 0 (checked by the op layer).
// op is sum, mean, max or min (argmax below).
void reduce(ReduceOp op, const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner);
// out[o, i] = the first j where x[o, j, i] is largest (a NaN counts as largest); n > 0.
void argmax(const float* x, std::int64_t* out, std::int64_t outer, std::int64_t n, std::int64_t inner);
// Numerically stable softmax over the middle axis of x viewed as [outer, n, inner].
void softmax(const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner);
// Layer norm over the last axis of x viewed as [rows, cols]: (x - mean) / sqrt(var + eps) * gamma + beta,
// with the biased variance.
void layer_norm(const float* x, const float* gamma, const float* beta, float* out, std::int64_t rows,
                std::int64_t cols, float eps);
// c[b] = a[b] x b[b] for b < batch; a[b] is [m, k] at a + b * a_batch_stride (stride 0: shared),
// likewise b[b] [k, n]; c is [batch, m, n] contiguous.
void matmul(const float* a, const float* b, float* c, std::int64_t batch, std::int64_t m, std::int64_t k,
            std::int64_t n, std::int64_t a_batch_stride, std::int64_t b_batch_stride);
// out[b] = x[b]^T for x [batch, rows, cols], out [batch, cols, rows], elements of 1, 2, 4 or 8 bytes.
void transpose(std::size_t element_bytes, const void* x, void* out, std::int64_t batch, std::int64_t rows,
               std::int64_t cols);

// out[o, j, i] = x[o, index[j], i] for x [outer, extent, inner] and out [outer, count, inner], elements
// of element_bytes; index holds `count` i32 or i64 values. Checks every index against [0, extent)
// before copying anything: returns the position of the first one outside it (nothing copied), or -1.
std::int64_t index_select(const void* x, std::size_t element_bytes, const void* index, DType index_dtype,
                          std::int64_t outer, std::int64_t extent, std::int64_t count, std::int64_t inner, void* out);

}  // namespace defer::kernels::cpu
