#include "timing.hpp"

#include <chrono>
#include <ctime>
#include <stdexcept>
#include <string>

#if DEFER_BENCH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace defer_bench {
namespace {

class SteadyClockTimer final : public StepTimer {
 public:
  explicit SteadyClockTimer(defer::Stream stream) : stream_(std::move(stream)) {}
  void begin() override { start_ = std::chrono::steady_clock::now(); }
  double end_seconds() override {
    stream_.synchronize();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  const char* clock_name() const override { return "steady_clock"; }

 private:
  defer::Stream stream_;
  std::chrono::steady_clock::time_point start_;
};

#if DEFER_BENCH_CUDA
void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(e));
}

// Events recorded on the stream's cudaStream_t (defer::Stream::native_handle()).
class CudaEventTimer final : public StepTimer {
 public:
  explicit CudaEventTimer(defer::Stream stream) : stream_(std::move(stream)) {
    check(cudaSetDevice(stream_.device().index()), "cudaSetDevice");
    check(cudaEventCreate(&start_), "cudaEventCreate");
    check(cudaEventCreate(&stop_), "cudaEventCreate");
  }
  ~CudaEventTimer() override {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  CudaEventTimer(const CudaEventTimer&) = delete;
  CudaEventTimer& operator=(const CudaEventTimer&) = delete;

  void begin() override { check(cudaEventRecord(start_, handle()), "cudaEventRecord"); }
  double end_seconds() override {
    check(cudaEventRecord(stop_, handle()), "cudaEventRecord");
    check(cudaEventSynchronize(stop_), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
    return static_cast<double>(ms) * 1e-3;
  }
  const char* clock_name() const override { return "cuda_event"; }

 private:
  cudaStream_t handle() const { return static_cast<cudaStream_t>(stream_.native_handle()); }
  defer::Stream stream_;
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
};
#endif

}  // namespace

std::unique_ptr<StepTimer> make_step_timer(const defer::Stream& stream) {
#if DEFER_BENCH_CUDA
  if (stream.device().is_cuda()) return std::make_unique<CudaEventTimer>(stream);
#endif
  // Without the CUDA runtime linked (a CPU-only build) there is no CUDA stream to time.
  return std::make_unique<SteadyClockTimer>(stream);
}

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

}  // namespace defer_bench
