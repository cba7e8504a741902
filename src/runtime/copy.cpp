#include "runtime/copy.hpp"

#include <cstring>

#include <defer/detail/stats_counters.hpp>

#include "runtime/backend.hpp"
#include "runtime/cpu/cpu_stream.hpp"
#include "runtime/stream_capture.hpp"
#include "runtime/tensor_impl.hpp"
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

Tensor contiguous_copy(const Tensor& t, StreamImpl& stream) {
  if (t.impl()->contiguous) return t;
  Tensor out = allocate_tensor(t.shape(), t.dtype(), stream, "contiguous");
  if (out.numel() == 0) return out;
  const kernels::CopyLayout layout = kernels::make_copy_layout(t.shape(), t.strides(), out.strides());
  backend_for(stream.device()).copy_strided(dtype_size(t.dtype()), layout, t.data_ptr(), out.data_ptr(), stream);
  if (!StreamCapture::capturing()) stats_counters().kernel_launches.fetch_add(1, std::memory_order_relaxed);
  return out;
}

Tensor copy_to_device(const Tensor& src, const Shape& shape, Device device, StreamImpl& dst_stream) {
  if (src.device() == device) return src;
  Tensor out = allocate_tensor(shape, src.dtype(), dst_stream, "to");
  StreamImpl& src_stream = *current_stream_impl(src.device());
  if (src.device().is_cpu()) {
    // Pageable host memory is staged by cudaMemcpyAsync at call time, so a CPU source must be
    // complete before the copy is issued.
    src_stream.synchronize();
    copy_async(out.data_ptr(), src.data_ptr(), src.nbytes(), dst_stream);
  } else {
    // The destination waits for the source's producer; the source's stream then waits for the copy,
    // so the source's memory is not reused (on its own stream) before the copy has read it.
    dst_stream.wait(src_stream.record());
    if (dst_stream.device().is_cpu()) {
      // Runs on the CPU queue's worker after the CUDA producer, so a blocking copy is fine there;
      // the task holds `src`, keeping its memory alive until the copy has read it.
      enqueue_cpu(dst_stream, [src, dst = out.data_ptr()] { copy_blocking(dst, src.data_ptr(), src.nbytes(), src.device()); });
    } else {
      copy_async(out.data_ptr(), src.data_ptr(), src.nbytes(), dst_stream);
      src_stream.wait(dst_stream.record());
    }
  }
  return out;
}

}  // namespace defer::detail
