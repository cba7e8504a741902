#pragma once
// Times one step, synchronization included, on the stream the step's work is queued on.
//   CPU:  std::chrono::steady_clock from before the step is built until the stream has finished it.
//   CUDA: a CUDA event recorded on the stream before the step and one after it; the host waits for
//         the second (the step's synchronization) and the time is cudaEventElapsedTime. The stream
//         is idle when the first event is recorded, so the span also covers the host's work of
//         building, planning and launching the step, during which the GPU waits: it is the step's
//         time as the GPU sees it, free of the host clock's scheduling noise.
#include <memory>

#include <defer/stream.hpp>

namespace defer_bench {

class StepTimer {
 public:
  virtual ~StepTimer() = default;
  virtual void begin() = 0;
  virtual double end_seconds() = 0;  // synchronizes the stream, then returns the step's seconds
  virtual const char* clock_name() const = 0;
};

// The timer for `stream`'s device: CUDA events on a CUDA stream, steady_clock on the CPU.
std::unique_ptr<StepTimer> make_step_timer(const defer::Stream& stream);

// Process CPU time (all threads: the caller, the stream's worker and the CPU kernels' pool), seconds.
double process_cpu_seconds();

}  // namespace defer_bench
