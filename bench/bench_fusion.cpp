// Fusion of element-wise chains at wait time: EAGER vs DEFERRED (fusion off) vs DEFERRED + FUSED,
// side by side in one run, next to a plain memcpy of the same size as the bandwidth reference.
//
// Cases (each name ends in the variant, so the three of a case read together):
//   BM_memcpy/<size>            the bandwidth reference: on the CPU std::memcpy of page-aligned host
//                               buffers of <size> floats on the main thread; on a GPU
//                               cudaMemcpyAsync device to device, timed with CUDA events.
//   BM_memcpy_pool/<size>       the same copy split over defer's CPU ThreadPool in the task size the
//                               fused kernel uses (the fused CPU kernel runs on that pool for outputs of
//                               2^18 elements and more; the one-op kernels run on one thread).
//   BM_chain/<flavour>/N=<n>/<size>/...
//                               a chain of n dependent element-wise ops on x (and a second tensor y):
//                               "mix" repeats scalar mul/add, relu, sigmoid, tanh and x + y (the chain
//                               the project goal names); "arith" leaves out sigmoid and tanh, so that it
//                               stays memory-bound. Only the chain's end is held, so a fused chain never
//                               writes its intermediates.
//   BM_mlp/<size>/...           one MLP step, x[b,d] -> matmul W1[d,4d] + b1 -> gelu -> matmul
//                               W2[4d,d] + b2 -> layer_norm, at "small" (b=8, d=64: launch bound) and
//                               "medium" (b=64, d=256: matmul bound). Every step builds the graph again.
//
// Variants: eager (ModeGuard(Mode::eager): every op launches at its call), deferred (the default
// mode with set_fusion_enabled(false) and set_graphs_enabled(false): the wait launches one kernel
// per op), fused (deferred with fusion on, graph replay off), and for the MLP also replayed (fusion
// and graph replay on, the library's default: from the second step on the plan is not planned
// again and runs as one graph launch; on the CPU one queue task).
//
// Each step builds the ops on inputs that already exist and waits the result. On the CPU a step is
// timed with the wall clock around it and the stream's synchronize (kernels run on the stream's
// worker thread and the pool); on a GPU with CUDA events recorded on the stream before the step's
// first op and after its wait (UseManualTime in both cases).
//
// Counters:
//   launches/step  defer::stats().kernel_launches delta per step (a fused kernel counts once; kernels
//                  inside a replayed graph do not count);
//   graphs/step    defer::stats().graph_launches delta per step;
//   fused/step     defer::stats().fused_kernels delta per step;
//   bytes_per_second  for chains: what a perfect fused kernel must move, i.e. every input read once
//                  and the output written once (2 or 3 tensors of <size> floats), the same figure in
//                  all three variants so that the rates compare directly; for memcpy: read + write.
//   FLOP/s         for the MLP: the two matmuls (2*m*n*k each).
//
// At the end main prints a summary: per chain the eager / deferred / fused times, eager/fused (the
// project goal: >= 3x for the chain of 8 at 2^22 on the CPU) and the fused GB/s as a fraction of the
// memcpy GB/s of the same size. The summary uses the last (reported) run of each case.
//
// Run: ./bench_fusion    (about 40 s on 2 cores; DEFER_BENCH_LARGE=1 adds 2^24-element chains and
// copies; --benchmark_filter=... picks cases; DEFER_BENCH_MIN_TIME=<seconds> runs each case longer:
// --benchmark_min_time does not, since a MinTime set per case takes precedence over the flag).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <map>
#include <new>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <defer/defer.hpp>
#ifdef DEFER_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#include "cpu/thread_pool.hpp"
#include "graph/op_node.hpp"
#include "runtime/stream_impl.hpp"

namespace {

// Seconds of wall time per case (at least one step): coverage over precision. DEFER_BENCH_MIN_TIME
// overrides it.
double min_time() {
  static const double t = [] {
    const char* v = std::getenv("DEFER_BENCH_MIN_TIME");
    const double parsed = v != nullptr ? std::atof(v) : 0.0;
    return parsed > 0.0 ? parsed : 0.1;
  }();
  return t;
}

constexpr std::int64_t kF32 = 4;

using defer::Mode;
using defer::Shape;
using defer::TensorAwait;
using Clock = std::chrono::steady_clock;

enum class Variant { eager, deferred, fused, replayed };
constexpr Variant kVariants[] = {Variant::eager, Variant::deferred, Variant::fused};
constexpr Variant kVariantsWithReplay[] = {Variant::eager, Variant::deferred, Variant::fused, Variant::replayed};

const char* variant_name(Variant v) {
  switch (v) {
    case Variant::eager: return "eager";
    case Variant::deferred: return "deferred";
    case Variant::fused: return "fused";
    case Variant::replayed: return "replayed";
  }
  return "?";
}

bool large_sizes_enabled() {
  const char* v = std::getenv("DEFER_BENCH_LARGE");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

std::vector<int> size_exponents() {
  std::vector<int> e = {10, 14, 18, 22};
  if (large_sizes_enabled()) e.push_back(24);
  return e;
}

std::string size_label(int exponent) { return "2^" + std::to_string(exponent); }

// ---- what the summary reads: the last run of each case (the one the console shows).
struct Measured {
  double seconds_per_step = 0;
  double bytes_per_second = 0;  // 0: not reported
  double launches_per_step = 0;
  double graphs_per_step = 0;
};

std::map<std::string, Measured>& measured() {
  static std::map<std::string, Measured> m;
  return m;
}

// ---- inputs: seeded values in +-[0.1, 1] * scale, made once per (shape, seed, scale), held as
// ready Awaits so that the timed loop does not wrap tensors into new Awaits.
using InputKey = std::tuple<Shape, unsigned, float>;

std::map<InputKey, TensorAwait>& inputs() {
  static std::map<InputKey, TensorAwait> held;
  return held;
}

const TensorAwait& input(const Shape& shape, unsigned seed, float scale = 1.f) {
  InputKey key{shape, seed, scale};
  if (auto it = inputs().find(key); it != inputs().end()) return it->second;
  std::int64_t n = 1;
  for (std::int64_t e : shape) n *= e;
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> magnitude(0.1f, 1.0f);
  std::vector<float> values(static_cast<std::size_t>(n));
  for (float& v : values) {
    const float m = magnitude(gen) * scale;
    v = (gen() & 1u) != 0 ? -m : m;
  }
  const defer::Device dev = defer::default_device();
  defer::Tensor t = defer::from_vector(values, shape, dev);
  defer::current_stream(dev).synchronize();  // uploads are not part of any case
  return inputs().emplace(std::move(key), TensorAwait(std::move(t))).first->second;
}

// Sets the process-wide fusion and graph-replay switches for one case and restores them afterwards.
class Switches {
 public:
  Switches(bool fusion, bool graphs) : fusion_(defer::fusion_enabled()), graphs_(defer::graphs_enabled()) {
    defer::set_fusion_enabled(fusion);
    defer::set_graphs_enabled(graphs);
  }
  ~Switches() {
    defer::set_fusion_enabled(fusion_);
    defer::set_graphs_enabled(graphs_);
  }
  Switches(const Switches&) = delete;
  Switches& operator=(const Switches&) = delete;

 private:
  bool fusion_, graphs_;
};

// Times steps on a device: CUDA events around each step on the stream (the GPU's own clock, from
// before the first launch to after the last kernel, including any idle gap while the host builds
// and plans), the wall clock around the step and its synchronize on the CPU.
class StepTimer {
 public:
  explicit StepTimer(const defer::Stream& stream) : stream_(stream) {
#ifdef DEFER_HAVE_CUDA
    if (stream.device().is_cuda()) {
      cudaEventCreate(&start_);
      cudaEventCreate(&stop_);
    }
#endif
  }
  ~StepTimer() {
#ifdef DEFER_HAVE_CUDA
    if (start_ != nullptr) {
      cudaEventDestroy(start_);
      cudaEventDestroy(stop_);
    }
#endif
  }
  StepTimer(const StepTimer&) = delete;
  StepTimer& operator=(const StepTimer&) = delete;

  template <class Step>
  double seconds(const Step& step) {
#ifdef DEFER_HAVE_CUDA
    if (start_ != nullptr) {
      const auto s = static_cast<cudaStream_t>(stream_.impl().native_handle());
      cudaEventRecord(start_, s);
      step();
      cudaEventRecord(stop_, s);
      cudaEventSynchronize(stop_);
      float ms = 0.f;
      cudaEventElapsedTime(&ms, start_, stop_);
      return static_cast<double>(ms) * 1e-3;
    }
#endif
    const Clock::time_point t0 = Clock::now();
    step();
    stream_.synchronize();
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }

 private:
  const defer::Stream& stream_;
#ifdef DEFER_HAVE_CUDA
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
#endif
};

// Runs the benchmark's timed loop, one `step` per iteration timed by `timer` (manual time);
// returns the total of the step times.
template <class Step>
double run_timed(benchmark::State& state, StepTimer& timer, const Step& step) {
  double seconds = 0;
  for (auto _ : state) {
    const double t = timer.seconds(step);
    state.SetIterationTime(t);
    seconds += t;
  }
  return seconds;
}

// One case: `build` returns the Await to complete; each step builds, waits and synchronizes.
template <class Build>
void run_case(benchmark::State& state, const std::string& key, Variant v, const Build& build, std::int64_t bytes,
              std::int64_t flops) {
  const defer::Device dev = defer::default_device();
  const defer::Stream stream = defer::current_stream(dev);
  stream.synchronize();
  const Switches switches(v == Variant::fused || v == Variant::replayed, v == Variant::replayed);
  const defer::ModeGuard mode(v == Variant::eager ? Mode::eager : Mode::deferred);
  for (int i = 0; i < 2; ++i) {  // Untimed: the inputs, the allocator's cache, the program and plan caches
    TensorAwait warm = build();
    benchmark::DoNotOptimize(defer::wait(warm).data_ptr());
    stream.synchronize();
  }
  const defer::Stats before = defer::stats();
  StepTimer timer(stream);
  const double seconds = run_timed(state, timer, [&] {
    TensorAwait result = build();
    benchmark::DoNotOptimize(defer::wait(result).data_ptr());
  });
  const defer::Stats after = defer::stats();
  const auto steps = static_cast<double>(state.iterations());
  const double launches = static_cast<double>(after.kernel_launches - before.kernel_launches) / steps;
  state.counters["launches/step"] = benchmark::Counter(launches);
  state.counters["fused/step"] =
      benchmark::Counter(static_cast<double>(after.fused_kernels - before.fused_kernels) / steps);
  const double graphs = static_cast<double>(after.graph_launches - before.graph_launches) / steps;
  state.counters["graphs/step"] = benchmark::Counter(graphs);
  if (bytes > 0) state.SetBytesProcessed(state.iterations() * bytes);
  if (flops > 0)
    state.counters["FLOP/s"] = benchmark::Counter(static_cast<double>(flops), benchmark::Counter::kIsIterationInvariantRate);
  measured()[key] = Measured{seconds / steps, bytes > 0 ? static_cast<double>(bytes) * steps / seconds : 0.0, launches,
                             graphs};
}

template <class Build, std::size_t N>
void register_variants(const std::string& base, const Variant (&variants)[N], const Build& build, std::int64_t bytes,
                       std::int64_t flops = 0) {
  for (Variant v : variants) {
    const std::string key = base + "/" + variant_name(v);
    benchmark::RegisterBenchmark(key.c_str(),
                                 [key, v, build, bytes, flops](benchmark::State& st) {
                                   run_case(st, key, v, build, bytes, flops);
                                 })
        ->MinTime(min_time())
        ->UseManualTime()  // StepTimer's: the kernels run on other threads or the GPU
        ->Unit(benchmark::kMicrosecond);
  }
}

// ---- the copy reference: host buffers, no defer involved. Both buffers are page-aligned: glibc 2.36's
// memcpy on this AMD EPYC (rep movsb) runs ~25x slower below 2^16 floats when the destination sits
// a few bytes after the source modulo 4096, which is what two std::vectors from the heap give.
struct PageBuffer {
  explicit PageBuffer(std::int64_t n, float value) {
    const auto bytes = (static_cast<std::size_t>(n) * sizeof(float) + 4095) / 4096 * 4096;
    data = static_cast<float*>(std::aligned_alloc(4096, bytes));
    if (data == nullptr) throw std::bad_alloc();
    std::fill(data, data + n, value);  // touched: no page faults in the timed loop
  }
  ~PageBuffer() { std::free(data); }
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;
  float* data = nullptr;
};

// Copies n floats per step with `copy(dst, src)` and records the case.
template <class Copy>
void register_copy(const std::string& key, std::int64_t n, Copy copy) {
  const std::int64_t bytes = 2 * n * kF32;  // read once + written once
  benchmark::RegisterBenchmark(key.c_str(),
                               [key, n, bytes, copy](benchmark::State& state) {
                                 const PageBuffer src(n, 1.f);
                                 const PageBuffer dst(n, 0.f);
                                 const Clock::time_point start = Clock::now();
                                 for (auto _ : state) {
                                   copy(dst.data, static_cast<const float*>(src.data));
                                   benchmark::DoNotOptimize(dst.data);
                                   benchmark::ClobberMemory();
                                 }
                                 const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
                                 const auto steps = static_cast<double>(state.iterations());
                                 state.SetBytesProcessed(state.iterations() * bytes);
                                 measured()[key] = Measured{seconds / steps, static_cast<double>(bytes) * steps / seconds, 0};
                               })
      ->MinTime(min_time())
      ->UseRealTime()
      ->Unit(benchmark::kMicrosecond);
}

#ifdef DEFER_HAVE_CUDA
// The GPU's copy reference: cudaMemcpyAsync device to device of n floats, timed with CUDA events.
void register_device_copy(const std::string& key, std::int64_t n) {
  const std::int64_t bytes = 2 * n * kF32;
  benchmark::RegisterBenchmark(key.c_str(),
                               [key, n, bytes](benchmark::State& state) {
                                 const defer::Device dev = defer::default_device();
                                 const defer::Tensor src = defer::full({n}, 1.f, defer::DType::f32, dev);
                                 defer::Tensor dst = defer::full({n}, 0.f, defer::DType::f32, dev);
                                 const defer::Stream stream = defer::current_stream(dev);
                                 const auto s = static_cast<cudaStream_t>(stream.impl().native_handle());
                                 StepTimer timer(stream);
                                 const double seconds = run_timed(state, timer, [&] {
                                   cudaMemcpyAsync(dst.data_ptr(), src.data_ptr(), static_cast<std::size_t>(bytes / 2),
                                                   cudaMemcpyDeviceToDevice, s);
                                 });
                                 const auto steps = static_cast<double>(state.iterations());
                                 state.SetBytesProcessed(state.iterations() * bytes);
                                 measured()[key] = Measured{seconds / steps, static_cast<double>(bytes) * steps / seconds, 0};
                               })
      ->MinTime(min_time())
      ->UseManualTime()
      ->Unit(benchmark::kMicrosecond);
}
#endif

void register_memcpy(int exponent) {
  const std::int64_t n = std::int64_t{1} << exponent;
#ifdef DEFER_HAVE_CUDA
  if (defer::default_device().is_cuda()) {  // on a GPU the reference is a device copy
    register_device_copy("BM_memcpy/" + size_label(exponent), n);
    return;
  }
#endif
  register_copy("BM_memcpy/" + size_label(exponent), n, [n](float* dst, const float* src) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
  });
  // The same copy over the pool the fused CPU kernel splits large outputs with, in its task size
  // (2^15 elements), so that a fused chain can also be read against a copy that uses every core.
  register_copy("BM_memcpy_pool/" + size_label(exponent), n, [n](float* dst, const float* src) {
    constexpr std::int64_t kTask = std::int64_t{1} << 15;
    defer::kernels::cpu::ThreadPool::shared().parallel_for((n + kTask - 1) / kTask, [&](std::int64_t t, unsigned) {
      const std::int64_t lo = t * kTask;
      const std::int64_t len = std::min(kTask, n - lo);
      std::memcpy(dst + lo, src + lo, static_cast<std::size_t>(len) * sizeof(float));
    });
  });
}

// ---- chains. Two flavours, each a repeating pattern of 8 steps (step i applies pattern[i % 8]):
//   mix    what the project goal names: scalar mul/add, relu, sigmoid, tanh and x + y. sigmoid and
//          tanh are libm calls per element (expf, tanhf), so this chain is bound by arithmetic, not
//          memory, from N = 8 on (the first tanh is step 7);
//   arith  scalar mul/add, relu and x + y only: cheap steps, so the chain is bound by memory traffic
//          and shows what fusion saves where it can.
// The values stay bounded in both (sigmoid/tanh squash them, or every cycle scales them below 1), so
// no step runs into inf or NaN.
enum class Step { mul_09, mul_05, mul_075, mul_15, add_01, add_y, relu, sigmoid, tanh };
using Pattern = std::array<Step, 8>;
constexpr Pattern kMix = {Step::mul_09, Step::add_y, Step::relu,  Step::add_01,
                          Step::sigmoid, Step::mul_15, Step::tanh, Step::add_y};
constexpr Pattern kArith = {Step::mul_09, Step::add_y, Step::relu, Step::add_01,
                            Step::mul_05, Step::add_y, Step::relu, Step::mul_075};

TensorAwait apply(Step s, const TensorAwait& t, const TensorAwait& y) {
  switch (s) {
    case Step::mul_09: return defer::mul(t, 0.9f);
    case Step::mul_05: return defer::mul(t, 0.5f);
    case Step::mul_075: return defer::mul(t, 0.75f);
    case Step::mul_15: return defer::mul(t, 1.5f);
    case Step::add_01: return defer::add(t, 0.1f);
    case Step::add_y: return defer::add(t, y);
    case Step::relu: return defer::relu(t);
    case Step::sigmoid: return defer::sigmoid(t);
    case Step::tanh: return defer::tanh(t);
  }
  return t;
}

struct Flavour {
  const char* name;
  Pattern pattern;
};
constexpr Flavour kFlavours[] = {{"mix", kMix}, {"arith", kArith}};

constexpr int kChainLengths[] = {1, 2, 4, 8, 16, 32};

std::string chain_base(const char* flavour, int length, int exponent) {
  return std::string("BM_chain/") + flavour + "/N=" + std::to_string(length) + "/" + size_label(exponent);
}

void register_chains(int exponent) {
  const std::int64_t n = std::int64_t{1} << exponent;
  const Shape shape{n};
  for (const Flavour& f : kFlavours) {
    for (int length : kChainLengths) {
      bool reads_y = false;
      for (int i = 0; i < length; ++i) reads_y = reads_y || f.pattern[static_cast<std::size_t>(i % 8)] == Step::add_y;
      const std::int64_t bytes = ((reads_y ? 2 : 1) + 1) * n * kF32;  // x (and y) read once, output written once
      const Pattern pattern = f.pattern;
      register_variants(
          chain_base(f.name, length, exponent), kVariants,
          [shape, length, pattern] {
            const TensorAwait& x = input(shape, 1);
            const TensorAwait& y = input(shape, 2);
            TensorAwait t = apply(pattern[0], x, y);
            for (int i = 1; i < length; ++i)  // each step drops the previous one: only the end is held
              t = apply(pattern[static_cast<std::size_t>(i % 8)], t, y);
            return t;
          },
          bytes);
    }
  }
}

// ---- the MLP step.
struct MlpSize {
  const char* name;
  std::int64_t batch, model;  // hidden = 4 * model
};
constexpr MlpSize kMlpSizes[] = {{"small", 8, 64}, {"medium", 64, 256}};

void register_mlp(const MlpSize& size) {
  const std::int64_t b = size.batch, d = size.model, h = 4 * size.model;
  const std::int64_t flops = 2 * b * d * h * 2;  // two matmuls
  const float s1 = 1.f / std::sqrt(static_cast<float>(d)), s2 = 1.f / std::sqrt(static_cast<float>(h));
  register_variants(
      std::string("BM_mlp/") + size.name, kVariantsWithReplay,
      [b, d, h, s1, s2] {
        const TensorAwait& x = input({b, d}, 11);
        const TensorAwait& w1 = input({d, h}, 12, s1);
        const TensorAwait& b1 = input({h}, 13, 0.1f);
        const TensorAwait& w2 = input({h, d}, 14, s2);
        const TensorAwait& b2 = input({d}, 15, 0.1f);
        const TensorAwait& gamma = input({d}, 16);
        const TensorAwait& beta = input({d}, 17, 0.1f);
        TensorAwait hidden = defer::gelu(defer::matmul(x, w1) + b1);
        TensorAwait o = defer::matmul(hidden, w2) + b2;
        return defer::layer_norm(o, gamma, beta);
      },
      0, flops);
}

void register_all() {
  for (int e : size_exponents()) {
    register_memcpy(e);
    register_chains(e);
  }
  for (const MlpSize& size : kMlpSizes) register_mlp(size);
}

// ---- the summary.
const Measured* find(const std::string& key) {
  auto it = measured().find(key);
  return it == measured().end() ? nullptr : &it->second;
}

std::string fmt_time(double s) {
  char buf[32];
  if (s >= 1.0)
    std::snprintf(buf, sizeof buf, "%.3g s", s);
  else if (s >= 1e-3)
    std::snprintf(buf, sizeof buf, "%.3g ms", s * 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.3g us", s * 1e6);
  return buf;
}

void print_summary() {
  std::printf("\nSummary (wall time per step; eager/fused and deferred/fused: how many times faster fused is;\n"
              "launches e / f: kernel launches per step eager / fused (deferred = eager); fused GB/s: the bytes a\n"
              "perfect fused kernel moves, per second; %% memcpy: of the 1-thread memcpy GB/s at that size;\n"
              "%% pool: of the memcpy split over the pool; GB = 10^9 bytes, while the console's G/s above are GiB/s)\n");
  for (const Flavour& f : kFlavours) {
    std::printf("\nchain '%s'\n", f.name);
    std::printf("%-5s %3s | %10s %10s %10s | %11s %14s | %8s %8s | %10s %11s %8s %7s\n", "size", "N", "eager",
                "deferred", "fused", "eager/fused", "deferred/fused", "launch e", "launch f", "fused GB/s", "memcpy GB/s",
                "% memcpy", "% pool");
    for (int e : size_exponents()) {
      const Measured* copy = find("BM_memcpy/" + size_label(e));
      const Measured* pool = find("BM_memcpy_pool/" + size_label(e));
      for (int length : kChainLengths) {
        const std::string base = chain_base(f.name, length, e);
        const Measured* ea = find(base + "/eager");
        const Measured* de = find(base + "/deferred");
        const Measured* fu = find(base + "/fused");
        if (ea == nullptr || de == nullptr || fu == nullptr) continue;
        // A reference that was filtered out prints as "-".
        auto percent_of = [&](const Measured* ref) {
          char buf[16];
          if (ref == nullptr) return std::string("-");
          std::snprintf(buf, sizeof buf, "%.0f%%", 100.0 * fu->bytes_per_second / ref->bytes_per_second);
          return std::string(buf);
        };
        char copy_gbs[16] = "-";
        if (copy != nullptr) std::snprintf(copy_gbs, sizeof copy_gbs, "%.2f", copy->bytes_per_second * 1e-9);
        std::printf("%-5s %3d | %10s %10s %10s | %11.2f %14.2f | %8.1f %8.1f | %10.2f %11s %8s %7s\n",
                    size_label(e).c_str(), length, fmt_time(ea->seconds_per_step).c_str(),
                    fmt_time(de->seconds_per_step).c_str(), fmt_time(fu->seconds_per_step).c_str(),
                    ea->seconds_per_step / fu->seconds_per_step, de->seconds_per_step / fu->seconds_per_step,
                    ea->launches_per_step, fu->launches_per_step, fu->bytes_per_second * 1e-9, copy_gbs,
                    percent_of(copy).c_str(), percent_of(pool).c_str());
      }
    }
  }

  std::printf("\n");
  for (const Flavour& f : kFlavours) {
    const std::string goal = chain_base(f.name, 8, 22);
    const Measured* ea = find(goal + "/eager");
    const Measured* fu = find(goal + "/fused");
    if (ea == nullptr || fu == nullptr) continue;
    const double ratio = ea->seconds_per_step / fu->seconds_per_step;
    std::printf("Goal: chain '%s' of 8 at 2^22, eager / fused = %.2fx (goal >= 3x on the CPU: %s)%s\n", f.name, ratio,
                ratio >= 3.0 ? "met" : "MISSED",
                std::strcmp(f.name, "mix") == 0 ? "  <- the chain the goal names" : "");
  }

  for (const MlpSize& size : kMlpSizes) {
    const std::string base = std::string("BM_mlp/") + size.name;
    const Measured* me = find(base + "/eager");
    const Measured* md = find(base + "/deferred");
    const Measured* mf = find(base + "/fused");
    const Measured* mr = find(base + "/replayed");
    if (me == nullptr || md == nullptr || mf == nullptr || mr == nullptr) continue;
    std::printf("MLP step %-6s: eager %s (%.0f launches), deferred %s (%.0f), fused %s (%.0f), replayed %s (%.0f launches, "
                "%.0f graph); eager/fused = %.2f, eager/replayed = %.2f\n",
                size.name, fmt_time(me->seconds_per_step).c_str(), me->launches_per_step,
                fmt_time(md->seconds_per_step).c_str(), md->launches_per_step, fmt_time(mf->seconds_per_step).c_str(),
                mf->launches_per_step, fmt_time(mr->seconds_per_step).c_str(), mr->launches_per_step, mr->graphs_per_step,
                me->seconds_per_step / mf->seconds_per_step, me->seconds_per_step / mr->seconds_per_step);
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("defer_device", defer::default_device().str());
  benchmark::AddCustomContext("defer_bench_large", large_sizes_enabled() ? "1" : "0");
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  print_summary();
  benchmark::Shutdown();
  // Release the inputs while the runtime (streams, allocator) is certainly still alive.
  defer::current_stream(defer::default_device()).synchronize();
  inputs().clear();
  return 0;
}
