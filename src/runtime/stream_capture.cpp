#include "runtime/stream_capture.hpp"

#include <utility>

#include "runtime/cpu/cpu_stream.hpp"
#ifdef DEFER_HAVE_CUDA
#include <cuda_runtime.h>

#include "runtime/cuda/cuda_check.hpp"
#include "runtime/cuda/cuda_device_guard.hpp"
#include "runtime/cuda/cuda_stream.hpp"
#endif

namespace defer::detail {
namespace {
thread_local StreamCapture* open_capture = nullptr;  // this thread's innermost open capture

#ifdef DEFER_HAVE_CUDA
// This thread's private streams to capture on, one per device, destroyed with the thread.
class CaptureStreams {
 public:
  CaptureStreams() = default;
  CaptureStreams(const CaptureStreams&) = delete;
  CaptureStreams& operator=(const CaptureStreams&) = delete;
  ~CaptureStreams() {
    for (std::size_t d = 0; d < streams_.size(); ++d) {
      if (streams_[d] == nullptr) continue;
      CudaDeviceGuard guard(static_cast<int>(d));
      cudaStreamDestroy(streams_[d]);  // nothing to report from a destructor
    }
  }
  cudaStream_t get(int device) {
    const auto d = static_cast<std::size_t>(device);
    if (streams_.size() <= d) streams_.resize(d + 1, nullptr);
    if (streams_[d] == nullptr) {
      CudaDeviceGuard guard(device);
      DEFER_CUDA_CHECK(cudaStreamCreateWithFlags(&streams_[d], cudaStreamNonBlocking));
    }
    return streams_[d];
  }

 private:
  std::vector<cudaStream_t> streams_;
};
thread_local CaptureStreams capture_streams;
#endif
}  // namespace

GraphExec::~GraphExec() {
#ifdef DEFER_HAVE_CUDA
  if (exec_ != nullptr) {
    CudaDeviceGuard guard(device_);
    cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));  // nothing to report from a destructor
  }
#endif
}

StreamCapture::StreamCapture(StreamImpl& stream) : stream_(stream), previous_(open_capture) {
#ifdef DEFER_HAVE_CUDA
  if (stream.device().is_cuda()) {
    // Relaxed: the pool may still call cudaMalloc on a miss while the plan is captured.
    CudaDeviceGuard guard(stream.device().index());
    cudaStream_t capture = capture_streams.get(stream.device().index());
    DEFER_CUDA_CHECK(cudaStreamBeginCapture(capture, cudaStreamCaptureModeRelaxed));
    capture_stream_ = capture;
  }
#endif
  open_capture = this;
}

StreamCapture::~StreamCapture() {
  open_capture = previous_;
  if (open_) end_cuda_capture();
}

StreamCapture* StreamCapture::active_for(const StreamImpl& stream) noexcept {
  StreamCapture* c = open_capture;
  return c != nullptr && &c->stream_ == &stream ? c : nullptr;
}

bool StreamCapture::capturing() noexcept { return open_capture != nullptr; }

void StreamCapture::end_cuda_capture() noexcept {
  open_ = false;
#ifdef DEFER_HAVE_CUDA
  if (stream_.device().is_cuda()) {
    CudaDeviceGuard guard(stream_.device().index());
    cudaGraph_t graph = nullptr;
    if (cudaStreamEndCapture(static_cast<cudaStream_t>(capture_stream_), &graph) == cudaSuccess && graph != nullptr)
      cudaGraphDestroy(graph);
    cudaGetLastError();  // an invalidated capture leaves its error behind: it was reported already
  }
#endif
}

std::size_t StreamCapture::launch([[maybe_unused]] GraphExec& exec) {
  open_capture = previous_;
  open_ = false;
#ifdef DEFER_HAVE_CUDA
  if (stream_.device().is_cuda()) {
    CudaDeviceGuard guard(stream_.device().index());
    const cudaStream_t s = cuda_handle(stream_);  // the real stream: this capture is closed
    cudaGraph_t raw = nullptr;
    DEFER_CUDA_CHECK(cudaStreamEndCapture(static_cast<cudaStream_t>(capture_stream_), &raw));
    std::unique_ptr<CUgraph_st, decltype(&cudaGraphDestroy)> graph(raw, &cudaGraphDestroy);
    std::size_t nodes = 0;
    DEFER_CUDA_CHECK(cudaGraphGetNodes(graph.get(), nullptr, &nodes));
    auto current = static_cast<cudaGraphExec_t>(exec.exec_);
    if (current != nullptr) {
      // Same topology as the last capture (the plan's key guarantees it): patch the parameters.
      cudaGraphExecUpdateResultInfo info{};
      if (cudaGraphExecUpdate(current, graph.get(), &info) != cudaSuccess) {
        cudaGetLastError();
        cudaGraphExecDestroy(current);
        current = nullptr;
        exec.exec_ = nullptr;
      }
    }
    if (current == nullptr) {
      DEFER_CUDA_CHECK(cudaGraphInstantiate(&current, graph.get(), 0));
      exec.exec_ = current;
      exec.device_ = stream_.device().index();
    }
    DEFER_CUDA_CHECK(cudaGraphLaunch(current, s));
    return nodes;
  }
#endif
  // The CPU's graph: one queue task that runs the recorded tasks in order. A task that throws
  // stops the rest, as a failed kernel would leave a CUDA stream's later work meaningless.
  const std::size_t n = tasks_.size();
  enqueue_cpu(stream_, [tasks = std::move(tasks_)] {
    for (const auto& task : tasks) task();
  });
  return n;
}

}  // namespace defer::detail
