#include "cuda/fused/cuda_fused_launch.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "cuda/fused/cuda_codegen.hpp"
#include "cuda/fused/kernel_cache.hpp"
#include "runtime/cuda/cuda_check.hpp"
#include "runtime/cuda/cuda_device_guard.hpp"

namespace defer::detail {
namespace {

// Resident 256-thread blocks per multiprocessor at full occupancy: a grid of one such wave keeps
// every multiprocessor busy, and the grid-stride loops cover the rest of the elements.
constexpr std::int64_t kBlocksPerMultiprocessor = 8;
// A reduce kernel's grid: one block per output row group or column tile up to this many (as
// kernels/cuda/reduce.cu), the grid-stride loops cover the rest. Blocks differ in work (rows of
// one long row vs many short ones), so more than one wave balances better than the cap above.
constexpr std::int64_t kMaxReduceBlocks = 65535;
constexpr int kMaxCachedDevices = 64;

}  // namespace

CudaDeviceShape cuda_device_shape(int device) {
  // Packed as (arch << 32 | multiprocessors), 0 until queried; the query is idempotent, so a race
  // costs at most a second query.
  static std::array<std::atomic<std::uint64_t>, kMaxCachedDevices> cached{};
  const bool cacheable = device >= 0 && device < kMaxCachedDevices;
  if (cacheable) {
    const std::uint64_t packed = cached[static_cast<std::size_t>(device)].load(std::memory_order_relaxed);
    if (packed != 0)
      return CudaDeviceShape{static_cast<int>(packed >> 32), static_cast<int>(packed & 0xffffffffu)};
  }
  int major = 0, minor = 0, sms = 0;
  DEFER_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  DEFER_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  DEFER_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const CudaDeviceShape shape{major * 10 + minor, std::max(1, sms)};
  if (cacheable)
    cached[static_cast<std::size_t>(device)].store(
        (static_cast<std::uint64_t>(shape.arch) << 32) | static_cast<std::uint32_t>(shape.multiprocessors),
        std::memory_order_relaxed);
  return shape;
}

void launch_fused_cuda(const kernels::FusedProgram& program, const kernels::FusedLayout& layout,
                       const void* const* inputs, void* const* outputs, const float* scalars, cudaStream_t stream,
                       int device) {
  const std::string key = kernels::structure_key(program, layout);  // validates the program
  // A reduction writes its outer * inner outputs even over an empty domain (n == 0: the empty
  // reduction); an element-wise program has nothing to do then.
  if (program.reduction ? layout.reduce.outer * layout.reduce.inner == 0 : layout.numel() == 0) return;
  const CudaDeviceShape shape = cuda_device_shape(device);
  CudaDeviceGuard guard(device);  // a cudaKernel_t launches in the current device's context
  const cudaKernel_t kernel = FusedKernelCache::global().kernel(key, shape.arch, program, layout);

  alignas(16) std::array<std::byte, kCudaFusedMaxArgBytes> args;
  const CudaArgsInfo info = pack_cuda_args(program, layout, inputs, outputs, scalars, args);
  const std::int64_t blocks = std::min<std::int64_t>(
      info.blocks, program.reduction ? kMaxReduceBlocks : kBlocksPerMultiprocessor * shape.multiprocessors);
  void* params[] = {args.data()};
  DEFER_CUDA_CHECK(cudaLaunchKernel(reinterpret_cast<const void*>(kernel), dim3(static_cast<unsigned>(blocks)),
                                    dim3(kCudaFusedThreads), params, 0, stream));
}

}  // namespace defer::detail
