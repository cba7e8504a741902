#pragma once
// CUDA kernels with the meaning of kernels/cpu/ops.hpp. Each launcher queues its kernel on `stream`,
// checks the launch (DEFER_CUDA_CHECK) and never synchronizes. The current device must be the
// stream's device (the CUDA backend guards it). f16 and bf16 data is loaded to f32, computed in f32
// and rounded once on the store (kernels/dtype_dispatch.hpp). Element-wise ops are fused programs,
// also when they run alone (kernels/cuda/fused/cuda_fused_launch.hpp).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include <defer/dtype.hpp>

#include "fusion/fused_program.hpp"
#include "op_table.hpp"

namespace defer::kernels::cuda {

// sum, mean, max, min (out of dtype) or argmax (out i64) over the middle axis of x [outer, n, inner]
// of dtype f32, f16 or bf16.
void reduce(ReduceOp op, DType dtype, const void* x, void* out, std::int64_t outer, std::int64_t n, std::int64_t inner,
            cudaStream_t stream);
void softmax(DType dtype, const void* x, void* out, std::int64_t outer, std::int64_t n, std::int64_t inner,
             cudaStream_t stream);
void layer_norm(DType dtype, const void* x, const void* gamma, const void* beta, void* out, std::int64_t rows,
                std::int64_t cols, float eps, cudaStream_t stream);
// cuBLAS strided-batched GEMM (f32: SGEMM; f16/bf16: GemmEx with f32 compute) on a handle already
// bound to the stream and its workspace.
void matmul(cublasHandle_t handle, DType dtype, const void* a, const void* b, void* c, std::int64_t batch,
            std::int64_t m, std::int64_t k, std::int64_t n, std::int64_t a_batch_stride, std::int64_t b_batch_stride);
// out[b] = x[b]^T, elements of 1, 2, 4 or 8 bytes.
void transpose(std::size_t element_bytes, const void* x, void* out, std::int64_t batch, std::int64_t rows,
               std::int64_t cols, cudaStream_t stream);
// out[o, j, i] = x[o, index[j], i]. Never reads or writes out of bounds: a thread whose index is
// outside [0, extent) writes nothing and lowers *fault (device memory holding INT64_MAX before the
// launch) to its position j with atomicMin, so *fault ends as the first bad position.
void index_select(const void* x, std::size_t element_bytes, const void* index, DType index_dtype, std::int64_t outer,
                  std::int64_t extent, std::int64_t count, std::int64_t inner, void* out, long long* fault,
                  cudaStream_t stream);
// An element-wise op on integer data, exact in 64-bit integers (kernels/integer_elementwise.hpp):
// inputs[k] of dtypes[k] read through layout.strides[k].
void integer_elementwise(ElementwiseOp op, const FusedLayout& layout, const void* const* inputs, const DType* dtypes,
                         int count, std::int64_t scalar, void* out, DType out_dtype, cudaStream_t stream);

}  // namespace defer::kernels::cuda
