#include "runtime/copy.hpp"

#include <cstring>

#include "runtime/cpu/cpu_stream.hpp"
#ifdef DEFER_HAVE_CUDA
#include "runtime/cuda/cuda_check.hpp"
#include "runtime/cuda/cuda_device_guard.hpp"
#include "runtime/cuda/cuda_stream.hpp"
#endif

namespace defer::detail {

void copy_async(void* dst, const void* src, std::size_t bytes, StreamImpl& stream) {
  if (bytes == 0) return;
#ifdef DEFER_HAVE_CUDA
  if (stream.device().is_cuda()) {
    CudaDeviceGuard guard(stream.device().index());
    DEFER_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, cuda_handle(stream)));
    return;
  }
#endif
  enqueue_cpu(stream, [dst, src, bytes] { std::memcpy(dst, src, bytes); });
}

void copy_from_host_async(void* dst, std::shared_ptr<const std::vector<unsigned char>> host, StreamImpl& stream) {
  if (host->empty()) return;
#ifdef DEFER_HAVE_CUDA
  if (stream.device().is_cuda()) {
    copy_async(dst, host->data(), host->size(), stream);
    return;
  }
#endif
  enqueue_cpu(stream, [dst, host = std::move(host)] { std::memcpy(dst, host->data(), host->size()); });
}

void copy_blocking(void* dst, const void* src, std::size_t bytes, Device src_device) {
  if (bytes == 0) return;
#ifdef DEFER_HAVE_CUDA
  if (src_device.is_cuda()) {
    CudaDeviceGuard guard(src_device.index());
    DEFER_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
    return;
  }
#endif
  (void)src_device;
  std::memcpy(dst, src, bytes);
}

}  // namespace defer::detail
