// deferred_fill: builds a small deferred pipeline, shows that building it ran nothing, then waits it
// on a second stream and checks the answer against a closed form.
//
// The computation: the mean and variance of a die with n faces (1..n, each with probability 1/n),
// as expectations sum_k p_k * x_k. The values and the probabilities are tensors made on the device;
// the expectations are taken on the host. n is a power of two, so every number involved is exact in
// float and in double and the result must equal the closed form (n + 1) / 2, (n^2 - 1) / 12.
//
//   deferred_fill [--device cpu|cuda|cuda:N]     (default: defer::default_device())
#include <charconv>
#include <cstdio>
#include <cstdint>
#include <exception>
#include <optional>
#include <string_view>
#include <vector>

#include <defer/defer.hpp>

namespace {

constexpr std::int64_t kFaces = 1024;  // a power of two: 1/kFaces is exact in float

struct Moments {
  double mean;
  double variance;
};

// Parses cpu, cuda or cuda:N; nullopt for anything else (the caller prints the usage).
std::optional<defer::Device> parse_device(std::string_view s) {
  if (s == "cpu") return defer::Device::cpu();
  if (s == "cuda") return defer::Device::cuda(0);
  int index = -1;
  if (s.starts_with("cuda:") && s.size() > 5) {
    auto [end, ec] = std::from_chars(s.data() + 5, s.data() + s.size(), index);
    if (ec == std::errc() && end == s.data() + s.size() && index >= 0) return defer::Device::cuda(index);
  }
  return std::nullopt;
}

// E[X] = (n + 1) / 2 and Var[X] = (n^2 - 1) / 12 for X uniform on 1..n.
constexpr Moments closed_form() {
  constexpr double n = static_cast<double>(kFaces);
  return {(n + 1) / 2, (n * n - 1) / 12};
}

int usage(const char* argv0) {
  std::fprintf(stderr, "usage: %s [--device cpu|cuda|cuda:N]\n", argv0);
  return 2;
}

}  // namespace

int main(int argc, char** argv) try {
  std::optional<defer::Device> chosen;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--device" && i + 1 < argc) arg = argv[++i];
    else if (arg.starts_with("--device=")) arg.remove_prefix(9);
    else return usage(argv[0]);
    if (!(chosen = parse_device(arg))) return usage(argv[0]);
  }
  // An explicit CUDA request on a machine without a GPU throws DeviceError below: never a fallback.
  const defer::Device device = chosen ? *chosen : defer::default_device();
  // A stream of our own to wait on later. Creating it also checks that the device is usable.
  const defer::Stream side = defer::Stream::create(device);

  // Step 1: describe the work. Each awaitable() only records a callable and its arguments.
  defer::Await<defer::Tensor> faces = defer::awaitable(
      [](std::int64_t count, defer::Device d) {
        std::vector<float> x(static_cast<std::size_t>(count));
        for (std::size_t k = 0; k < x.size(); ++k) x[k] = static_cast<float>(k + 1);
        return defer::from_vector(x, {count}, d);
      },
      kFaces, device);
  defer::Await<defer::Tensor> probabilities = defer::awaitable(
      [](std::int64_t count, defer::Device d) {
        return defer::full({count}, 1.0f / static_cast<float>(count), defer::DType::f32, d);
      },
      kFaces, device);
  // The two Awaits are dependencies: they are waited (on the same stream) before this fn gets the
  // tensors. to_vector finishes the work queued on the stream, then copies to the host.
  defer::Await<Moments> moments = defer::awaitable(
      [](const defer::Tensor& x, const defer::Tensor& p) {
        const std::vector<float> xs = defer::to_vector(x), ps = defer::to_vector(p);
        double ex = 0, ex2 = 0;
        for (std::size_t k = 0; k < xs.size(); ++k) {
          ex += double(ps[k]) * xs[k];
          ex2 += double(ps[k]) * xs[k] * xs[k];
        }
        return Moments{ex, ex2 - ex * ex};
      },
      faces, probabilities);
  // then(): a deferred check of the result against the closed form.
  defer::Await<bool> exact = defer::then(moments, [](const Moments& m) {
    return m.mean == closed_form().mean && m.variance == closed_form().variance;
  });

  // Nothing has run and nothing was allocated yet: deferral costs only the description.
  std::printf("device: %s\n", device.str().c_str());
  std::printf("before wait: awaits_run=%llu, allocated=%zu bytes\n",
              static_cast<unsigned long long>(defer::stats().awaits_run), defer::memory_stats(device).allocated_bytes);

  // Step 2: wait on the stream of our own. All four fns run now, on this thread, with `side`
  // current, so the fills and copies are queued on it.
  const bool ok = defer::wait(exact, side);
  const Moments& m = defer::wait(moments, side);  // cached: runs nothing again
  std::printf("after wait:  awaits_run=%llu\n", static_cast<unsigned long long>(defer::stats().awaits_run));
  std::printf("die with %lld faces: mean=%.4f (closed form %.4f), variance=%.4f (closed form %.4f): %s\n",
              static_cast<long long>(kFaces), m.mean, closed_form().mean, m.variance, closed_form().variance,
              ok ? "exact" : "MISMATCH");

  const defer::MemoryStats mem = defer::memory_stats(device);
  std::printf("memory on %s: allocated=%zu reserved=%zu peak=%zu bytes\n", device.str().c_str(),
              mem.allocated_bytes, mem.reserved_bytes, mem.peak_allocated_bytes);
  return ok ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s: error: %s\n", argc > 0 ? argv[0] : "deferred_fill", e.what());
  return 1;
}
