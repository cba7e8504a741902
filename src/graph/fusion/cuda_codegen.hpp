#pragma once
// CUDA C++ source for a fused element-wise program (kernels/fusion/fused_program.hpp), compiled at
// run time by NVRTC. Host code only: nothing here needs a GPU. A program that ends in a reduction
// becomes a reduce kernel: the element-wise body runs per domain element inside the reduce loops
// (rows per warp or block, or coalesced column tiles, picked per launch from the sizes).
//
// The generated source depends on the program and on the *structure* of its layout (how each input
// is read: flat, one broadcast element, or through strides; and ndim when strides are used), never
// on sizes, strides, pointers or scalar values: those travel in the kernel's one argument, a struct
// passed by value whose byte image pack_cuda_args() builds. cuda_kernel_key() captures exactly what
// the source depends on, so equal keys always mean equal source (the test checks this).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "fusion/fused_program.hpp"

namespace defer::detail {

// Caps of one generated kernel. A bigger program is rejected with std::invalid_argument so that the
// planner splits it. 16 + 8 pointers, 16 scalars and the strides of 16 inputs over kMaxDims dims
// keep the kernel argument under 1.4 KB (the launch copies it), and 256 instructions keep NVRTC's
// compile time in the hundreds of milliseconds.
inline constexpr int kCudaFusedMaxInputs = kernels::kMaxFusedInputs;
inline constexpr int kCudaFusedMaxOutputs = kernels::kMaxFusedOutputs;
inline constexpr int kCudaFusedMaxScalars = kernels::kMaxFusedScalars;
inline constexpr int kCudaFusedMaxInstructions = kernels::kMaxFusedInstructions;

// Threads per block of every generated kernel (also its __launch_bounds__).
inline constexpr int kCudaFusedThreads = 256;

// Bumped whenever the generated source changes for an unchanged key: it is part of the disk cache's
// file key, so kernels compiled by an older defer are never loaded.
inline constexpr std::uint32_t kCudaCodegenVersion = 2;

// How the kernel reads one input, from the layout's shape and that input's strides (extent-1
// dimensions are ignored): flat reads element i of a buffer laid out like the output; uniform reads
// element 0 for every i (every stride 0: a broadcast scalar); strided computes the offset from the
// multi-index and the strides.
enum class CudaInputAccess : std::uint8_t { flat, uniform, strided };
CudaInputAccess cuda_input_access(const kernels::FusedLayout& layout, int input) noexcept;

// Throws std::invalid_argument when the program or layout is malformed (an operand defined later
// than its use, an input, scalar or value index out of range, an unknown kind or op, no outputs,
// ndim outside [0, kMaxDims], a negative extent, strides not given for every input) or exceeds a cap.
void check_cuda_fusable(const kernels::FusedProgram& program, const kernels::FusedLayout& layout);

// The structure the generated source depends on, as a compact byte string: the instructions, the
// outputs, the input and scalar counts, each input's CudaInputAccess and, when an input is strided,
// ndim; for a reduction its op, its value and whether layout.reduce.inner == 1. Checks the program
// first (check_cuda_fusable). Cheap enough to compute at every launch.
std::string cuda_kernel_key(const kernels::FusedProgram& program, const kernels::FusedLayout& layout);

// A kernel name derived from the key ("defer_fused_" and 16 hex digits).
std::string cuda_kernel_name(const std::string& key);

// Self-contained CUDA C++ (no #include: only what NVRTC provides built in) defining
// `extern "C" __global__ void <kernel_name>(const Args)`. Checks the program first.
std::string generate_cuda_source(const kernels::FusedProgram& program, const kernels::FusedLayout& layout,
                                 const std::string& kernel_name);

// The kernel argument's size in bytes for this program and layout; at most kCudaFusedMaxArgBytes.
std::size_t cuda_args_size(const kernels::FusedProgram& program, const kernels::FusedLayout& layout);
// (A reduction's three extra words, its split, fit because it has one output, not eight.)
inline constexpr std::size_t kCudaFusedMaxArgBytes =
    8 * (kCudaFusedMaxInputs + kCudaFusedMaxOutputs + 2 + kernels::kMaxDims * (1 + kCudaFusedMaxInputs)) +
    4 * kCudaFusedMaxScalars;
static_assert(kCudaFusedMaxOutputs >= 1 + 3);

// What pack_cuda_args decided for this launch, besides the bytes.
struct CudaArgsInfo {
  std::size_t bytes = 0;
  bool vec4 = false;     // the float4 path runs (structure allows it and every pointer is 16-byte aligned;
                         // for a reduction: inner == 1, n % 4 == 0 and every flat input aligned)
  bool index32 = false;  // strided offsets use 32-bit arithmetic (every index and offset fits)
  // What a grid-stride loop should cover: n, or about n / 4 with vec4; for a reduction, the
  // outer * inner outputs.
  std::int64_t work_items = 0;
  // Blocks of kCudaFusedThreads that give every work item its own thread (element-wise), or every
  // output row or column tile its own warp or block (reduction); the launcher caps it, the kernel's
  // grid-stride loops cover the rest.
  std::int64_t blocks = 0;
};

// Writes the kernel argument's byte image into `buffer` (8-byte aligned, at least cuda_args_size
// bytes): inputs[num_inputs], outputs[outputs.size()], scalars[num_scalars], and the layout's sizes
// (and, for a reduction, its split and the strategy chosen from the sizes).
// Does not check the program (the caller computed its key, which did).
CudaArgsInfo pack_cuda_args(const kernels::FusedProgram& program, const kernels::FusedLayout& layout,
                            const float* const* inputs, float* const* outputs, const float* scalars,
                            std::span<std::byte> buffer);

}  // namespace defer::detail
