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
#include "matmul_layout.hpp"
#include "op_table.hpp"
#include "strided_axis.hpp"

namespace defer::kernels::cuda {

// sum, mean, max, min (out of dtype) or argmax (out i64) over the middle axis of x of dtype f32, f16
// or bf16, read in place through the StridedAxis (kernels/strided_axis.hpp; any strides); out is
// contiguous [outer, inner]. The overloads with plain extents take a dense x [outer, n, inner].
void reduce(ReduceOp op, DType dtype, const void* x, void* out, const StridedAxis& axis, cudaStream_t stream);
void reduce(ReduceOp op, DType dtype, const void* x, void* out, std::int64_t outer, std::int64_t n, std::int64_t inner,
            cudaStream_t stream);
// out contiguous [outer, n, inner]; it may be x only when x is dense.
void softmax(DType dtype, const void* x, void* out, const StridedAxis& axis, cudaStream_t stream);
void softmax(DType dtype, const void* x, void* out, std::int64_t outer, std::int64_t n, std::int64_t inner,
             cudaStream_t stream);
// Over the last axis: rows = axis.outer, cols = axis.n, axis.inner == 1 (else std::invalid_argument);
// gamma, beta contiguous [cols]; out contiguous [rows, cols].
void layer_norm(DType dtype, const void* x, const void* gamma, const void* beta, void* out, const StridedAxis& axis,
                float eps, cudaStream_t stream);
void layer_norm(DType dtype, const void* x, const void* gamma, const void* beta, void* out, std::int64_t rows,
                std::int64_t cols, float eps, cudaStream_t stream);
// c = a x b over the layout (kernels/matmul_layout.hpp), operands read in place (cuBLAS transpose
// flags and leading dimensions), c contiguous: cuBLAS strided-batched GEMMs with f32 compute (f16 /
// bf16 on tensor cores, rounded once) on a handle already bound to the stream and its workspace.
void matmul(cublasHandle_t handle, DType dtype, const void* a, const void* b, void* c, const MatmulLayout& layout);
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
