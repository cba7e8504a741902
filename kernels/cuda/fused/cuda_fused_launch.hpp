#pragma once
// Launches a fused element-wise program on a CUDA stream through the process's kernel cache.
#include <cuda_runtime_api.h>

#include "fusion/fused_program.hpp"

namespace defer::detail {

// Runs `program` over `layout` on `stream` of `device`: inputs[num_inputs] (element pointers of the
// program's input dtypes, read per the layout), outputs[outputs.size()] (of the output dtypes,
// contiguous, numel() elements each; for a reduction one output of layout.reduce.outer *
// layout.reduce.inner elements), scalars[num_scalars] (copied into the kernel's argument: the host
// array may be reused as soon as this returns). Compiles, or reads from the disk cache, the first
// time a structure meets an architecture. Queues the kernel and returns: never synchronizes.
// Throws std::invalid_argument for a malformed program (kernels::validate), defer::Error when
// NVRTC fails, defer::DeviceError when loading or launching fails.
void launch_fused_cuda(const kernels::FusedProgram& program, const kernels::FusedLayout& layout,
                       const void* const* inputs, void* const* outputs, const float* scalars, cudaStream_t stream,
                       int device);

// A device's architecture (major * 10 + minor) and multiprocessor count, queried once per device.
struct CudaDeviceShape {
  int arch = 0;
  int multiprocessors = 0;
};
CudaDeviceShape cuda_device_shape(int device);

}  // namespace defer::detail
