#include "graph/executor.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include <defer/detail/stats_counters.hpp>

#include "cpu/ops.hpp"
#include "runtime/copy.hpp"
#include "runtime/fault_injection.hpp"
#include "runtime/cpu/cpu_stream.hpp"
#include "runtime/stream_capture.hpp"
#include "runtime/tensor_impl.hpp"
#ifdef DEFER_HAVE_CUDA
#include "cuda/ops.hpp"
#include "runtime/cuda/cublas_handle.hpp"
#include "runtime/cuda/cuda_check.hpp"
#include "runtime/cuda/cuda_device_guard.hpp"
#include "runtime/cuda/cuda_stream.hpp"
#endif

namespace defer::detail {

namespace {
std::atomic<bool>& launch_log() {
  static std::atomic<bool> enabled = [] {
    const char* v = std::getenv("DEFER_LOG");
    return v != nullptr && *v != '\0' && *v != '0';
  }();
  return enabled;
}
}  // namespace

void count_launch(bool fused) noexcept {
  if (StreamCapture::capturing()) return;
  auto& counters = stats_counters();
  counters.kernel_launches.fetch_add(1, std::memory_order_relaxed);
  if (fused) counters.fused_kernels.fetch_add(1, std::memory_order_relaxed);
}

bool launch_log_enabled() noexcept { return launch_log().load(std::memory_order_relaxed); }
void set_launch_log(bool on) noexcept { launch_log().store(on, std::memory_order_relaxed); }

namespace {

const float* f32(const Tensor& t) { return static_cast<const float*>(t.data_ptr()); }
float* f32(Tensor& t) { return static_cast<float*>(t.data_ptr()); }

void log_launch(const OpSpec& spec, const std::vector<Tensor>& in, const TensorMeta& out, const StreamImpl& stream,
                const char* reason) {
  std::string operands;
  for (const Tensor& t : in) operands += (operands.empty() ? "" : ", ") + shape_str(t.shape());
  std::fprintf(stderr, "defer: launch %s(%s) -> %s on %s stream %llu (%s)\n", op_name(spec).c_str(), operands.c_str(),
               describe(out).c_str(), stream.device().str().c_str(), static_cast<unsigned long long>(stream.id()), reason);
}

struct Dims {  // the kernel-facing sizes of an op, computed once for both backends
  std::int64_t n = 0;
  AxisSplit axis{1, 1, 1};
  std::int64_t batch = 1, m = 0, k = 0, cols = 0, a_stride = 0, b_stride = 0;
  std::optional<kernels::Broadcast> bc;
};

Dims dims_of(const OpSpec& spec, const std::vector<Tensor>& in, const TensorMeta& out) {
  Dims d;
  d.n = in[0].numel();
  switch (spec.kind) {
    case OpKind::binary:
      d.n = 1;
      for (int64_t e : out.shape) d.n *= e;
      d.bc = make_broadcast(out.shape, in[0].shape(), in[1].shape());
      break;
    case OpKind::reduce:
    case OpKind::softmax: d.axis = split_at(in[0].shape(), normalize_dim("reduce", spec.dim, in[0].shape().size())); break;
    case OpKind::layer_norm:
      d.cols = in[0].shape().back();
      d.batch = d.cols == 0 ? 0 : in[0].numel() / d.cols;
      break;
    case OpKind::matmul: {
      const Shape& a = in[0].shape();
      const Shape& b = in[1].shape();
      d.m = a[a.size() - 2];
      d.k = a.back();
      d.cols = b.back();
      d.batch = out.shape.size() == 3 ? out.shape[0] : 1;
      d.a_stride = a.size() == 3 ? d.m * d.k : 0;
      d.b_stride = b.size() == 3 ? d.k * d.cols : 0;
      break;
    }
    case OpKind::transpose: {
      const Shape& a = in[0].shape();
      d.m = a[a.size() - 2];
      d.cols = a.back();
      d.batch = d.m * d.cols == 0 ? 0 : in[0].numel() / (d.m * d.cols);
      break;
    }
    default: break;
  }
  return d;
}

void launch_cpu(const OpSpec& spec, const std::vector<Tensor>& in, Tensor& out, const Dims& d, StreamImpl& stream) {
  const float* a = f32(in[0]);
  const float* b = in.size() > 1 ? f32(in[1]) : nullptr;
  const float* c = in.size() > 2 ? f32(in[2]) : nullptr;
  float* y = f32(out);
  std::function<void()> task;
  switch (spec.kind) {
    case OpKind::unary: task = [op = spec.unary, a, y, n = d.n] { kernels::cpu::unary(op, a, y, n); }; break;
    case OpKind::binary_scalar:
      task = [op = spec.binary, a, s = spec.scalar, y, n = d.n] { kernels::cpu::binary_scalar(op, a, s, y, n); };
      break;
    case OpKind::binary:
      task = [op = spec.binary, a, b, y, n = d.n, bc = d.bc] { kernels::cpu::binary(op, a, b, y, n, bc ? &*bc : nullptr); };
      break;
    case OpKind::reduce:
      task = [op = spec.reduce, a, y, x = d.axis] { kernels::cpu::reduce(op, a, y, x.outer, x.n, x.inner); };
      break;
    case OpKind::softmax: task = [a, y, x = d.axis] { kernels::cpu::softmax(a, y, x.outer, x.n, x.inner); }; break;
    case OpKind::layer_norm:
      task = [a, b, c, y, rows = d.batch, cols = d.cols, eps = spec.scalar] { kernels::cpu::layer_norm(a, b, c, y, rows, cols, eps); };
      break;
    case OpKind::matmul:
      task = [a, b, y, d] { kernels::cpu::matmul(a, b, y, d.batch, d.m, d.k, d.cols, d.a_stride, d.b_stride); };
      break;
    case OpKind::transpose: task = [a, y, d] { kernels::cpu::transpose(a, y, d.batch, d.m, d.cols); }; break;
    case OpKind::to_device: throw std::logic_error("to_device is a copy, not a kernel");
  }
  enqueue_cpu(stream, std::move(task));
}

#ifdef DEFER_HAVE_CUDA
void launch_cuda(const OpSpec& spec, const std::vector<Tensor>& in, Tensor& out, const Dims& d, StreamImpl& stream) {
  CudaDeviceGuard guard(stream.device().index());
  const cudaStream_t s = cuda_handle(stream);
  const float* a = f32(in[0]);
  const float* b = in.size() > 1 ? f32(in[1]) : nullptr;
  const float* c = in.size() > 2 ? f32(in[2]) : nullptr;
  float* y = f32(out);
  switch (spec.kind) {
    case OpKind::unary: kernels::cuda::unary(spec.unary, a, y, d.n, s); break;
    case OpKind::binary_scalar: kernels::cuda::binary_scalar(spec.binary, a, spec.scalar, y, d.n, s); break;
    case OpKind::binary: kernels::cuda::binary(spec.binary, a, b, y, d.n, d.bc ? &*d.bc : nullptr, s); break;
    case OpKind::reduce: kernels::cuda::reduce(spec.reduce, a, y, d.axis.outer, d.axis.n, d.axis.inner, s); break;
    case OpKind::softmax: kernels::cuda::softmax(a, y, d.axis.outer, d.axis.n, d.axis.inner, s); break;
    case OpKind::layer_norm: kernels::cuda::layer_norm(a, b, c, y, d.batch, d.cols, spec.scalar, s); break;
    case OpKind::matmul:
      kernels::cuda::matmul(cublas_handle(stream), a, b, y, d.batch, d.m, d.k, d.cols, d.a_stride, d.b_stride);
      break;
    case OpKind::transpose: kernels::cuda::transpose(a, y, d.batch, d.m, d.cols, s); break;
    case OpKind::to_device: throw std::logic_error("to_device is a copy, not a kernel");
  }
}
#endif

// A copy to another device, queued on the destination's stream and ordered after the source's
// producer. Pageable host memory is staged by cudaMemcpyAsync at call time, so a CPU source must be
// complete before the copy is issued.
Tensor copy_to_device(const Tensor& src, const TensorMeta& out_meta, StreamImpl& dst_stream) {
  if (src.device() == out_meta.device) return src;
  Tensor out = allocate_tensor(out_meta.shape, out_meta.dtype, dst_stream, "to");
  StreamImpl& src_stream = *current_stream_impl(src.device());
  if (src.device().is_cpu()) {
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

}  // namespace

Tensor launch_op(const OpSpec& spec, const std::vector<Tensor>& inputs, const TensorMeta& out_meta, StreamImpl& stream,
                 const char* reason) {
  check_injected_launch_fault(short_name(spec));  // tests: runtime/fault_injection.hpp
  if (launch_log_enabled()) log_launch(spec, inputs, out_meta, stream, reason);
  if (spec.kind == OpKind::to_device) return copy_to_device(inputs[0], out_meta, stream);
  Tensor out = allocate_tensor(out_meta.shape, out_meta.dtype, stream, op_name(spec).c_str());
  if (out.numel() == 0) return out;  // nothing to compute
  const Dims d = dims_of(spec, inputs, out_meta);
#ifdef DEFER_HAVE_CUDA
  if (stream.device().is_cuda()) {
    launch_cuda(spec, inputs, out, d, stream);
    count_launch(false);
    return out;
  }
#endif
  launch_cpu(spec, inputs, out, d, stream);
  count_launch(false);
  return out;
}

}  // namespace defer::detail
