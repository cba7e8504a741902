#pragma once
// Stream capture: the work one thread queues on one stream is recorded instead of run, then queued
// as a single launch. On CUDA the thread's kernels for that stream go to a private capture stream of
// the thread (CudaStream::native_handle redirects them), which records them into a CUDA graph; the
// graph is launched on the real stream through a cached executable graph, updated with the new
// capture's parameters (cudaGraphExecUpdate) rather than instantiated again. The real stream never
// enters capture mode, so other threads keep using it meanwhile. On the CPU the recorded tasks
// become one queue task that runs them in order. Graph replay (src/graph/replay.cpp) uses it to
// launch a repeated plan as one unit.
//
// While a capture is open, the capturing thread must not record events on, wait on, or synchronize
// the captured stream: nothing recorded has been queued yet.
#include <functional>
#include <memory>
#include <vector>

#include "runtime/stream_impl.hpp"

namespace defer::detail {

// What a replayed plan keeps between launches: on CUDA the instantiated executable graph (null
// until the first launch). Destroyed with the plan; on the CPU it holds nothing.
class GraphExec {
 public:
  GraphExec() = default;
  ~GraphExec();
  GraphExec(const GraphExec&) = delete;
  GraphExec& operator=(const GraphExec&) = delete;

 private:
  friend class StreamCapture;
  void* exec_ = nullptr;  // cudaGraphExec_t
  int device_ = -1;
};

class StreamCapture {
 public:
  // Starts capturing what this thread queues on `stream`. Throws DeviceError when CUDA refuses.
  explicit StreamCapture(StreamImpl& stream);
  // Discards the recorded work when launch() was not reached (an error during capture).
  ~StreamCapture();
  StreamCapture(const StreamCapture&) = delete;
  StreamCapture& operator=(const StreamCapture&) = delete;

  // Ends the capture and queues everything recorded as one launch on the stream, through `exec`.
  // Returns the number of recorded kernels (CPU tasks or graph nodes).
  std::size_t launch(GraphExec& exec);

  // For enqueue_cpu: the open capture of this thread on `stream`, or null.
  static StreamCapture* active_for(const StreamImpl& stream) noexcept;
  void record_cpu_task(std::function<void()> task) { tasks_.push_back(std::move(task)); }
  // Is this thread capturing (launches then count as part of a graph, not individually)?
  static bool capturing() noexcept;
  // CUDA: the cudaStream_t the capture records (kernels for the captured stream go there).
  void* capture_handle() const noexcept { return capture_stream_; }

 private:
  void end_cuda_capture() noexcept;  // ends and discards an unfinished CUDA capture
  StreamImpl& stream_;
  StreamCapture* previous_;
  std::vector<std::function<void()>> tasks_;  // CPU: the recorded tasks
  void* capture_stream_ = nullptr;            // CUDA: this thread's capture stream of the device
  bool open_ = true;
};

}  // namespace defer::detail
