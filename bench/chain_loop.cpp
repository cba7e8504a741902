// defer-chain-loop: defer-bench's element-wise chains (bench/defer_bench/elementwise.cpp) written by
// hand as one fused loop, the baseline "what a programmer gets from plain C++ and -O3": the same ops
// in the same order, computed in f32 and stored once, one pass over x and y, the range split
// statically over a few persistent threads. No hand vectorization: sigmoid and tanh are libm's
// expf and tanhf, element by element, f16 is the compiler's _Float16; the compiler vectorizes what
// it can by itself, for the ISA the library's element-wise loops use (baseline x86-64 or AVX2,
// picked at run time).
//
// It is timed as defer-bench times a step (warm-up steps, then repeats of enough steps to last
// --repeat-ms, each step timed on the steady clock; the median over the repeats) and checked
// against the same chain evaluated in double precision. It prints JSON in defer-bench's layout on
// stdout, for bench/cpu_compare.py.
//
//   defer-chain-loop [--repeats N] [--warmup N] [--repeat-ms MS] [--threads N] [CASE ...]
//
// A CASE is "workload/2^e" (chain8, chain8_mix, chain8_f16 or chain8_bf16); by default every
// workload at 2^12, 2^16, 2^20 and 2^22.
#include <algorithm>
#include <barrier>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

// ---- the chains, element by element; T is float for the timed loop and double for the check.
// The scalars are the f32 constants defer-bench uses, so the double chain differs only by rounding.

template <class T>
T relu(T t) {
  return t > T(0) ? t : T(0);
}

struct Chain8 {
  // Cheap ops: each thread's part must be large for the hand-off to pay.
  static constexpr std::int64_t kMinPerThread = 16384;
  template <class T>
  static T apply(T x, T y) {
    T t = x * T(0.9f);
    t = t + y;
    t = relu(t);
    t = t + T(0.1f);
    t = t * T(0.5f);
    t = t + y;
    t = relu(t);
    return t * T(0.75f);
  }
};

struct Chain8Mix {
  static constexpr std::int64_t kMinPerThread = 1024;  // two libm calls an element: worth splitting early
  template <class T>
  static T apply(T x, T y) {
    T t = x * T(0.9f);
    t = t + y;
    t = relu(t);
    t = t + T(0.1f);
    t = T(1) / (T(1) + std::exp(-t));  // sigmoid
    t = t * T(1.5f);
    t = std::tanh(t);
    return t + y;
  }
};

// ---- storage types: the math is f32 in registers, rounded once on the store.

struct Bf16 {
  std::uint16_t bits;
};

float to_float(float v) { return v; }
float to_float(_Float16 v) { return static_cast<float>(v); }
float to_float(Bf16 v) { return std::bit_cast<float>(static_cast<std::uint32_t>(v.bits) << 16); }

template <class S>
S from_float(float v);
template <>
float from_float<float>(float v) {
  return v;
}
template <>
_Float16 from_float<_Float16>(float v) {
  return static_cast<_Float16>(v);
}
template <>
Bf16 from_float<Bf16>(float v) {  // round to nearest even; a NaN stays a (quiet) NaN
  const auto u = std::bit_cast<std::uint32_t>(v);
  if (std::isnan(v)) return Bf16{static_cast<std::uint16_t>((u >> 16) | 0x40)};
  return Bf16{static_cast<std::uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16)};
}

// ---- threads

// Persistent workers, so that a step pays a wake-up, not a thread creation. run(parts, part) calls
// part(i, parts) for every i < parts, part 0 on the calling thread and the others on the workers.
class Team {
 public:
  explicit Team(int threads) : start_(threads), done_(threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { work(i); });
  }
  ~Team() {
    stop_ = true;
    start_.arrive_and_wait();
    for (std::thread& t : workers_) t.join();
  }
  Team(const Team&) = delete;
  Team& operator=(const Team&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void run(int parts, const std::function<void(int, int)>& part) {
    if (parts <= 1) return part(0, 1);  // a single part needs no other thread
    job_ = &part;
    parts_ = parts;
    start_.arrive_and_wait();  // the barrier's phase publishes job_ and parts_ to the workers
    part(0, parts);
    done_.arrive_and_wait();
  }

 private:
  void work(int index) {
    for (;;) {
      start_.arrive_and_wait();
      if (stop_) return;
      if (index < parts_) (*job_)(index, parts_);
      done_.arrive_and_wait();
    }
  }

  std::barrier<> start_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int, int)>* job_ = nullptr;
  int parts_ = 0;
  bool stop_ = false;
};

// The loop over one part. Always inlined into the functions below, so that it is compiled for
// their ISA.
template <class Chain, class S>
[[gnu::always_inline]] inline void chain_range(const S* x, const S* y, S* out, std::int64_t begin, std::int64_t end) {
  for (std::int64_t j = begin; j < end; ++j) out[j] = from_float<S>(Chain::apply(to_float(x[j]), to_float(y[j])));
}

// The library's element-wise loops are compiled for the baseline ISA and for AVX2, picked at run
// time (kernels/cpu/fused.cpp); the loop gets the same two versions and the same choice, through
// the compiler's function multiversioning.
#if defined(__x86_64__)
#define CHAIN_LOOP_VERSIONS __attribute__((target_clones("avx2", "default")))
#else
#define CHAIN_LOOP_VERSIONS
#endif

template <class S>
using RangeFn = void (*)(const S*, const S*, S*, std::int64_t, std::int64_t);

CHAIN_LOOP_VERSIONS void chain8_f32(const float* x, const float* y, float* out, std::int64_t begin, std::int64_t end) {
  chain_range<Chain8>(x, y, out, begin, end);
}
CHAIN_LOOP_VERSIONS void chain8_mix_f32(const float* x, const float* y, float* out, std::int64_t begin,
                                        std::int64_t end) {
  chain_range<Chain8Mix>(x, y, out, begin, end);
}
CHAIN_LOOP_VERSIONS void chain8_f16(const _Float16* x, const _Float16* y, _Float16* out, std::int64_t begin,
                                    std::int64_t end) {
  chain_range<Chain8>(x, y, out, begin, end);
}
CHAIN_LOOP_VERSIONS void chain8_bf16(const Bf16* x, const Bf16* y, Bf16* out, std::int64_t begin, std::int64_t end) {
  chain_range<Chain8>(x, y, out, begin, end);
}

// One step: out = chain(x, y) in one pass, split into contiguous parts of whole cache lines.
template <class Chain, class S>
void fused_step(Team& team, RangeFn<S> range, const std::vector<S>& x, const std::vector<S>& y, std::vector<S>& out) {
  const auto n = static_cast<std::int64_t>(x.size());
  const int parts = static_cast<int>(std::clamp<std::int64_t>(n / Chain::kMinPerThread, 1, team.size()));
  team.run(parts, [&](int i, int count) {
    constexpr std::int64_t kLine = 64 / sizeof(S);
    const auto bound = [&](int k) { return std::min(n, (n * k / count + kLine - 1) / kLine * kLine); };
    range(x.data(), y.data(), out.data(), bound(i), bound(i + 1));
  });
}

// ---- timing and checking

struct Settings {
  int repeats = 7;
  int warmup = 3;
  double repeat_s = 0.025;
  int threads = 0;
};

struct Result {
  std::string workload, size;
  double median_s = 0, min_s = 0, max_s = 0;
  std::int64_t steps_per_repeat = 0;
  double bytes_per_second = 0, max_rel_error = 0, checksum = 0;
  bool matches = false;
};

// Uniform in [-1, 1), from mt19937 (whose sequence the standard fixes) and an explicit mapping.
std::vector<float> uniform(std::int64_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& e : v) e = static_cast<float>(gen() >> 8) * 0x1.0p-23f - 1.f;
  return v;
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

template <class Chain, class S>
Result run_case(const std::string& workload, int exponent, double tolerance, RangeFn<S> range, Team& team,
                const Settings& s) {
  using clock = std::chrono::steady_clock;
  const std::int64_t n = std::int64_t{1} << exponent;
  const std::vector<float> xf = uniform(n, 11), yf = uniform(n, 12);
  std::vector<S> x(xf.size()), y(yf.size()), out(xf.size());
  std::transform(xf.begin(), xf.end(), x.begin(), from_float<S>);
  std::transform(yf.begin(), yf.end(), y.begin(), from_float<S>);

  const auto timed_step = [&] {
    const clock::time_point t0 = clock::now();
    fused_step<Chain>(team, range, x, y, out);
    return std::chrono::duration<double>(clock::now() - t0).count();
  };
  double step_s = 0;
  for (int i = 0; i < s.warmup; ++i) step_s = timed_step();
  Result r;
  r.workload = workload;
  r.size = "2^" + std::to_string(exponent);
  r.steps_per_repeat =
      static_cast<std::int64_t>(std::clamp(std::ceil(s.repeat_s / std::max(step_s, 1e-7)), 1.0, 100000.0));
  std::vector<double> per_step;
  for (int rep = 0; rep < s.repeats; ++rep) {
    double total = 0;
    for (std::int64_t k = 0; k < r.steps_per_repeat; ++k) total += timed_step();
    per_step.push_back(total / static_cast<double>(r.steps_per_repeat));
  }
  r.median_s = median_of(per_step);
  r.min_s = *std::min_element(per_step.begin(), per_step.end());
  r.max_s = *std::max_element(per_step.begin(), per_step.end());
  r.bytes_per_second = 3.0 * static_cast<double>(n) * static_cast<double>(sizeof(S)) / r.median_s;

  // max |got - want| / max |want| against the chain in double on the stored (rounded) inputs, as
  // defer-bench measures its errors.
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    const double want = Chain::apply(static_cast<double>(to_float(x[i])), static_cast<double>(to_float(y[i])));
    const double got = to_float(out[i]);
    worst = std::isnan(got) ? std::numeric_limits<double>::infinity() : std::max(worst, std::abs(got - want));
    scale = std::max(scale, std::abs(want));
    r.checksum += got;
  }
  r.max_rel_error = worst == 0 ? 0 : scale > 0 ? worst / scale : std::numeric_limits<double>::infinity();
  r.matches = r.max_rel_error <= tolerance;
  return r;
}

Result run_named(std::string_view name, int exponent, Team& team, const Settings& s) {
  // The tolerances of defer-bench: its default 1e-4 for f32, the dtype's floor for f16 and bf16.
  if (name == "chain8") return run_case<Chain8, float>("chain8", exponent, 1e-4, chain8_f32, team, s);
  if (name == "chain8_mix") return run_case<Chain8Mix, float>("chain8_mix", exponent, 1e-4, chain8_mix_f32, team, s);
  if (name == "chain8_f16") return run_case<Chain8, _Float16>("chain8_f16", exponent, 1e-2, chain8_f16, team, s);
  if (name == "chain8_bf16") return run_case<Chain8, Bf16>("chain8_bf16", exponent, 5e-2, chain8_bf16, team, s);
  throw std::logic_error("unknown workload '" + std::string(name) + "'");  // parse_case let it through
}

// ---- command line and report

struct Case {
  std::string name;
  int exponent;
};

template <class T>
T parse_number(std::string_view flag, const std::string& value, T lowest) {
  std::size_t used = 0;
  const T v = std::is_integral_v<T> ? static_cast<T>(std::stoi(value, &used)) : static_cast<T>(std::stod(value, &used));
  if (used != value.size() || v < lowest)
    throw std::invalid_argument(std::string(flag) + ": expected a number >= " + std::to_string(lowest) + ", got '" +
                                value + "'");
  return v;
}

constexpr std::string_view kWorkloads[] = {"chain8", "chain8_mix", "chain8_f16", "chain8_bf16"};

Case parse_case(std::string_view text) {
  const auto slash = text.find("/2^");
  const std::string name(text.substr(0, slash));
  if (slash == std::string_view::npos || std::find(std::begin(kWorkloads), std::end(kWorkloads), name) == std::end(kWorkloads))
    throw std::invalid_argument("expected chain8, chain8_mix, chain8_f16 or chain8_bf16 /2^e, got '" + std::string(text) + "'");
  const int e = parse_number("case", std::string(text.substr(slash + 3)), 0);
  if (e > 30) throw std::invalid_argument("case: 2^" + std::to_string(e) + " elements is too many");
  return Case{name, e};
}

// JSON has no infinity: an infinite error is written as null.
std::string number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void print_json(const std::vector<Result>& results, const Settings& s) {
  std::printf("{\n  \"context\": {\n    \"executable\": \"defer-chain-loop\",\n    \"compiler\": \"%s\",\n"
              "    \"threads\": %d,\n    \"clock\": \"steady_clock\",\n    \"repetitions\": %d,\n"
              "    \"warmup_steps\": %d\n  },\n  \"benchmarks\": [",
              __VERSION__, s.threads, s.repeats, s.warmup);
  for (std::size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    std::printf("%s\n    {\"name\": \"%s/%s/loop_median\", \"workload\": \"%s\", \"size\": \"%s\", \"mode\": \"loop\", "
                "\"repetitions\": %d, \"iterations\": %lld, \"real_time\": %.9g, \"min_real_time\": %.9g, "
                "\"max_real_time\": %.9g, \"time_unit\": \"us\", \"bytes_per_second\": %.9g, "
                "\"max_rel_error\": %s, \"matches_double\": %s, \"checksum\": %s}",
                i == 0 ? "" : ",", r.workload.c_str(), r.size.c_str(), r.workload.c_str(), r.size.c_str(), s.repeats,
                static_cast<long long>(r.steps_per_repeat), r.median_s * 1e6, r.min_s * 1e6, r.max_s * 1e6,
                r.bytes_per_second, number(r.max_rel_error).c_str(), r.matches ? "true" : "false",
                number(r.checksum).c_str());
  }
  std::printf("\n  ]\n}\n");
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  std::vector<Case> cases;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string_view arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        std::printf("usage: %s [--repeats N] [--warmup N] [--repeat-ms MS] [--threads N] [workload/2^e ...]\n"
                    "workloads: chain8 chain8_mix chain8_f16 chain8_bf16; default: each at 2^12 2^16 2^20 2^22\n",
                    argv[0]);
        return 0;
      }
      if (arg.starts_with("--")) {
        if (i + 1 == argc) throw std::invalid_argument("missing value for " + std::string(arg));
        const std::string value = argv[++i];
        if (arg == "--repeats") s.repeats = parse_number(arg, value, 1);
        else if (arg == "--warmup") s.warmup = parse_number(arg, value, 1);
        else if (arg == "--repeat-ms") s.repeat_s = parse_number(arg, value, 0.0) * 1e-3;
        else if (arg == "--threads") s.threads = parse_number(arg, value, 1);
        else throw std::invalid_argument("unknown argument " + std::string(arg));
      } else {
        cases.push_back(parse_case(arg));
      }
    }
  } catch (const std::exception& e) {  // std::stoi's own exceptions included
    std::fprintf(stderr, "defer-chain-loop: %s (--help for usage)\n", e.what());
    return 2;
  }
  if (cases.empty())
    for (std::string_view name : kWorkloads)
      for (int e : {12, 16, 20, 22}) cases.push_back(Case{std::string(name), e});
  if (s.threads == 0) s.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  Team team(s.threads);
  std::vector<Result> results;
  for (const Case& c : cases) results.push_back(run_named(c.name, c.exponent, team, s));
  print_json(results, s);
  for (const Result& r : results)
    if (!r.matches) {
      std::fprintf(stderr, "defer-chain-loop: %s %s: error %.3g against double precision\n", r.workload.c_str(),
                   r.size.c_str(), r.max_rel_error);
      return 1;
    }
  return 0;
}
