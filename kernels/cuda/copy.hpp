#pragma once
// The CUDA strided copy (kernels/strided_copy.hpp): queued on `stream`, launch checked, never
// synchronizes.
#include <cuda_runtime_api.h>

#include <cstddef>

#include "strided_copy.hpp"

namespace defer::kernels::cuda {

void copy_strided(std::size_t element_bytes, const CopyLayout& layout, const void* src, void* dst, cudaStream_t stream);

}  // namespace defer::kernels::cuda
