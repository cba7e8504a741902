#pragma once
// CUDA kernels with the same meaning as kernels/cpu/ops.hpp. Each launcher queues its kernel on
// `stream`, checks the launch (DEFER_CUDA_CHECK) and never synchronizes. The current device must
// be the stream's device (the op layer guards it).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "op_kinds.hpp"

namespace defer::kernels::cuda {

void unary(UnaryOp op, const float* x, float* out, std::int64_t n, cudaStream_t stream);
void binary_scalar(BinaryOp op, const float* x, float s, float* out, std::int64_t n, cudaStream_t stream);
void binary(BinaryOp op, const float* a, const float* b, float* out, std::int64_t n, const Broadcast* bc,
            cudaStream_t stream);
void reduce(ReduceOp op, const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner,
            cudaStream_t stream);
void softmax(const float* x, float* out, std::int64_t outer, std::int64_t n, std::int64_t inner, cudaStream_t stream);
void layer_norm(const float* x, const float* gamma, const float* beta, float* out, std::int64_t rows,
                std::int64_t cols, float eps, cudaStream_t stream);
// cuBLAS strided-batched SGEMM on a handle already bound to the stream and its workspace.
void matmul(cublasHandle_t handle, const float* a, const float* b, float* c, std::int64_t batch, std::int64_t m,
            std::int64_t k, std::int64_t n, std::int64_t a_batch_stride, std::int64_t b_batch_stride);
void transpose(const float* x, float* out, std::int64_t batch, std::int64_t rows, std::int64_t cols,
               cudaStream_t stream);

}  // namespace defer::kernels::cuda
