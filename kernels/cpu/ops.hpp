#pragma once
// CPU kernels: plain functions over contiguous row-major f32 buffers, run by a CPU stream's worker.
// They are the reference the CUDA kernels are compared with, so accuracy comes before speed:
// reductions accumulate in double.
#include <cstdint>

#include "op_kinds.hpp"

namespace defer::kernels::cpu {

// out[i] = op(x[i])
void unary(UnaryOp op, const float* x, float* out, std::int64_t n);
// out[i] = op(x[i], s)
void binary_scalar(BinaryOp op, const float* x, float s, float* out, std::int64_t n);
// out = op(a, b); bc == nullptr: a, b and out all have n elements (no broadcasting)
void binary(BinaryOp op, const float* a, const float* b, float* out, std::int64_t n, const Broadcast* bc);
// out[o, i] = op over j of x[o, j, i]; x is [outer, n, inner], out is [outer, inner].
// mean of n == 0 elements is NaN, sum is 0; max requires n > 0 (checked by the op layer).
void reduce(ReduceOp op, const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner);
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
// out[b] = x[b]^T for x [batch, rows, cols], out [batch, cols, rows].
void transpose(const float* x, float* out, std::int64_t batch, std::int64_t rows, std::int64_t cols);

}  // namespace defer::kernels::cpu
