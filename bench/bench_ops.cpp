// Per-op EAGER vs DEFERRED timings of the tensor ops (docs/api.md sections 5-6), side by side in one run.
//
// Every case builds its op(s) on input tensors that already exist, then completes the work: a wait
// on the result (which in deferred mode plans and launches the pending graph) and a synchronize of
// the current stream of the device. On the CPU backend kernels run asynchronously on the stream's
// worker thread, so without the synchronize a case would time only the queueing.
//
// Counters per case:
//   launches/iter  defer::stats().kernel_launches delta divided by the iterations;
//   bytes_per_second  the f32 bytes an op must read and write (inputs once, output once);
//   FLOP/s  for matmul (2*m*n*k per product).
//
// The device is defer::default_device(): DEFER_DEVICE=cpu|cuda|cuda:N picks it, else cuda:0 when
// available, else the CPU.
//
// Run: ./bench_ops   (each case runs for at least kMinTime seconds of wall time, after one untimed
// round that creates its inputs; pass --benchmark_filter=... to
// pick cases, --benchmark_min_time=... to run longer).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <defer/defer.hpp>

namespace {

constexpr double kMinTime = 0.2;  // seconds (wall) per case: the whole binary stays well under a minute

using defer::Mode;
using defer::Shape;
using defer::TensorAwait;

const char* mode_name(Mode m) { return m == Mode::eager ? "eager" : "deferred"; }

std::int64_t numel_of(const Shape& s) {
  std::int64_t n = 1;
  for (std::int64_t e : s) n *= e;
  return n;
}

// A seeded tensor of non-zero values in +-[0.1, 1.0], made once per (shape, seed) and kept for the
// whole run. It is held as a ready Await, so that the timed loop does not wrap a Tensor into a new
// nowait Await on every op call.
std::map<std::pair<Shape, unsigned>, TensorAwait>& input_cache() {
  static std::map<std::pair<Shape, unsigned>, TensorAwait> cache;
  return cache;
}

const TensorAwait& input(const Shape& shape, unsigned seed) {
  auto& cache = input_cache();
  auto key = std::make_pair(shape, seed);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> magnitude(0.1f, 1.0f);
  std::bernoulli_distribution negative(0.5);
  std::vector<float> values(static_cast<std::size_t>(numel_of(shape)));
  for (float& v : values) v = negative(gen) ? -magnitude(gen) : magnitude(gen);
  const defer::Device dev = defer::default_device();
  defer::Tensor t = defer::from_vector(values, shape, dev);
  defer::current_stream(dev).synchronize();  // the upload is not part of any case
  return cache.emplace(std::move(key), TensorAwait(std::move(t))).first->second;
}

// Runs `build` (which returns the Await to complete) in mode m once per iteration, then waits it
// and synchronizes the device's current stream. bytes/flops are per iteration (0: not reported).
template <class Build>
void run_case(benchmark::State& state, Mode m, Build build, std::int64_t bytes, std::int64_t flops = 0) {
  const defer::Device dev = defer::default_device();
  const defer::Stream stream = defer::current_stream(dev);
  stream.synchronize();
  const defer::ModeGuard guard(m);
  {  // One untimed round: creates the cached inputs and warms the allocator's cache for the outputs.
    TensorAwait warm = build();
    benchmark::DoNotOptimize(defer::wait(warm).data_ptr());
    stream.synchronize();
  }
  const std::uint64_t launches_before = defer::stats().kernel_launches;
  for (auto _ : state) {
    TensorAwait result = build();
    const defer::Tensor& t = defer::wait(result);
    benchmark::DoNotOptimize(t.data_ptr());
    stream.synchronize();
  }
  const std::uint64_t launches = defer::stats().kernel_launches - launches_before;
  const auto iters = static_cast<double>(state.iterations());
  state.counters["launches/iter"] = benchmark::Counter(static_cast<double>(launches) / iters);
  if (bytes > 0) state.SetBytesProcessed(state.iterations() * bytes);
  if (flops > 0)
    state.counters["FLOP/s"] = benchmark::Counter(static_cast<double>(flops), benchmark::Counter::kIsIterationInvariantRate);
}

constexpr std::int64_t kF32 = 4;

// Registers name/<size>/eager then name/<size>/deferred, so the two read side by side.
template <class Build>
void register_pair(const std::string& op, const std::string& size, Build build, std::int64_t bytes,
                   std::int64_t flops = 0) {
  for (Mode m : {Mode::eager, Mode::deferred}) {
    const std::string name = "BM_" + op + "/" + size + "/" + mode_name(m);
    benchmark::RegisterBenchmark(name.c_str(),
                                 [m, build, bytes, flops](benchmark::State& st) { run_case(st, m, build, bytes, flops); })
        ->MinTime(kMinTime)
        ->UseRealTime()  // the kernels run on the stream's worker thread: main-thread CPU time misleads
        ->Unit(benchmark::kMicrosecond);
  }
}

struct Size {
  std::string label;  // "1K" or "1M" elements
  std::int64_t rows, cols;
};

void register_all() {
  const std::vector<Size> sizes = {{"1K", 32, 32}, {"1M", 1024, 1024}};
  for (const Size& sz : sizes) {
    const Shape shape{sz.rows, sz.cols};
    const std::int64_t n = sz.rows * sz.cols;
    // Inputs are created lazily by the first (untimed) round of a case (input() caches them).
    register_pair("add", sz.label, [shape] { return defer::add(input(shape, 1), input(shape, 2)); }, 3 * n * kF32);
    register_pair("gelu", sz.label, [shape] { return defer::gelu(input(shape, 1)); }, 2 * n * kF32);
    register_pair("mul_scalar", sz.label, [shape] { return defer::mul(input(shape, 1), 1.5f); }, 2 * n * kF32);
    register_pair("sum_lastdim", sz.label, [shape] { return defer::sum(input(shape, 1), -1); }, (n + sz.rows) * kF32);
    register_pair("softmax_lastdim", sz.label, [shape] { return defer::softmax(input(shape, 1), -1); }, 2 * n * kF32);
    const Shape row{sz.cols};
    register_pair(
        "layer_norm", sz.label,
        [shape, row] { return defer::layer_norm(input(shape, 1), input(row, 3), input(row, 4)); },
        (2 * n + 2 * sz.cols) * kF32);
    // transpose is a view (it launches nothing): "transpose" times contiguous(transpose(x)), a real
    // copy of the transposed layout into a dense tensor. (Deferred, that two-op graph is replayed
    // after the first wait: a graph launch, so launches/iter reads 0 there.)
    register_pair("transpose", sz.label, [shape] { return defer::contiguous(defer::transpose(input(shape, 1))); },
                  2 * n * kF32);
  }

  // matmul: 32x32 and 256x256 (square); bytes = both operands read once + the product written.
  for (std::int64_t d : {std::int64_t{32}, std::int64_t{256}}) {
    const Shape shape{d, d};
    const std::string label = std::to_string(d) + "x" + std::to_string(d);
    register_pair("matmul", label, [shape] { return defer::matmul(input(shape, 1), input(shape, 2)); },
                  3 * d * d * kF32, 2 * d * d * d);
  }

  // A chain of 8 dependent element-wise ops. No fusion exists yet, so deferred launches the same 8
  // kernels as eager (launches/iter is 8 in both); deferred additionally walks the pending graph at
  // the wait. Fusing such chains into one kernel comes in a later issue.
  for (const Size& sz : sizes) {
    const Shape shape{sz.rows, sz.cols};
    const std::int64_t n = sz.rows * sz.cols;
    register_pair(
        "chain8_elementwise", sz.label,
        [shape] {
          const TensorAwait& x = input(shape, 1);
          const TensorAwait& y = input(shape, 2);
          TensorAwait t = defer::add(x, y);  // 1
          t = defer::mul(t, 0.5f);           // 2
          t = defer::gelu(t);                // 3
          t = defer::sub(t, y);              // 4
          t = defer::tanh(t);                // 5
          t = defer::mul(t, x);              // 6
          t = defer::add(t, 1.0f);           // 7
          t = defer::relu(t);                // 8
          return t;
        },
        // What the 8 separate kernels move: 4 binary (2 reads + 1 write), 4 unary/scalar (1 + 1).
        (4 * 3 + 4 * 2) * n * kF32);
  }

  // A branch that is built but never waited: only `main` = x + y is used. Eager launches the
  // branch's three kernels at the calls and pays for them; deferred never launches them (the
  // branch's pending nodes are dropped with their Awaits). Bytes count only the useful add.
  for (const Size& sz : sizes) {
    const Shape shape{sz.rows, sz.cols};
    const std::int64_t n = sz.rows * sz.cols;
    register_pair(
        "UnwaitedBranch", sz.label,
        [shape] {
          const TensorAwait& x = input(shape, 1);
          const TensorAwait& y = input(shape, 2);
          TensorAwait branch = defer::softmax(defer::gelu(defer::mul(x, 2.0f)), -1);  // never waited
          benchmark::DoNotOptimize(branch);
          return defer::add(x, y);
        },
        3 * n * kF32);
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("defer_device", defer::default_device().str());
  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  // Release the inputs while the runtime (streams, allocator) is certainly still alive.
  defer::current_stream(defer::default_device()).synchronize();
  input_cache().clear();
  return 0;
}
