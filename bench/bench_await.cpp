// Await host overhead, side by side with the standard library's nearest equivalent:
// std::async(std::launch::deferred, ...) turned into a std::shared_future (a copyable handle to a
// value computed once, on the first get(), on the calling thread: the same contract as an Await
// without the streams).
//
// Benchmarks come in pairs named BM_<What>/defer and BM_<What>/std so that they sort together.
// After the usual console output, main() prints a table of the median (or, without repetitions,
// the single) CPU time per op of each pair and the ratio std/defer, against the goals of the
// issue: every defer op at least 2x cheaper than its std equivalent, a ready wait under 10 ns.
//
//   ./bench_await --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// Everything runs on the calling thread; tensors live on the CPU device (Device::cpu()), so no GPU
// is needed. A first wait(aw) without a stream runs fn on the current stream of default_device()
// (the CPU without a GPU or with DEFER_DEVICE=cpu; the trivial functions here launch nothing
// either way); a ready Await<Tensor> waited without a stream is checked against the current stream
// of the tensor's device, the CPU. The table uses CPU time: the benchmarks never block, and the
// machines this ran on were shared. The display is always the console reporter (JSON still works
// through --benchmark_out=FILE --benchmark_out_format=json).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <future>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <unistd.h>

#include <defer/defer.hpp>

namespace {

// The trivial deferred function of every case. A plain function (not a lambda) so that both sides
// store the same kind of callable: a function pointer.
int trivial(int x) { return x + 1; }
int add_one(const int& x) { return x + 1; }
int sum2(int a, int b) { return a + b; }

constexpr int kChain = 16;  // steps of the then() chain

// ---- creating: nothing runs ---------------------------------------------------------------------
// Each iteration creates one handle and destroys it (a creation cannot be measured apart from its
// destruction without keeping millions of states alive, which would measure the allocator instead).

void BM_Create_defer(benchmark::State& state) {
  int i = 0;
  for (auto _ : state) {
    auto aw = defer::awaitable(trivial, i++);
    benchmark::DoNotOptimize(aw);
  }
}

void BM_Create_std(benchmark::State& state) {
  int i = 0;
  for (auto _ : state) {
    auto sf = std::async(std::launch::deferred, trivial, i++).share();
    benchmark::DoNotOptimize(sf);
  }
}

// Reference, not a pair: the one heap allocation (and release) that every creation above pays, a
// make_shared of a block the size of the state behind awaitable(trivial, int) (144 bytes with GCC
// 12 on x86-64, plus the shared_ptr control block). std::async pays two: its state and its result.
void BM_Create_floor_alloc(benchmark::State& state) {
  for (auto _ : state) {
    auto p = std::make_shared_for_overwrite<std::array<unsigned char, 144>>();
    benchmark::DoNotOptimize(p);
  }
}

// ---- creating, then the first wait (fn runs once) -----------------------------------------------

void BM_CreateWait_defer(benchmark::State& state) {
  int i = 0;
  for (auto _ : state) {
    auto aw = defer::awaitable(trivial, i++);
    benchmark::DoNotOptimize(defer::wait(aw));
  }
}

void BM_CreateWait_std(benchmark::State& state) {
  int i = 0;
  for (auto _ : state) {
    auto sf = std::async(std::launch::deferred, trivial, i++).share();
    benchmark::DoNotOptimize(sf.get());
  }
}

// ---- waiting a ready value again (the same handle every time) -----------------------------------

void BM_WaitReady_defer(benchmark::State& state) {
  auto aw = defer::awaitable(trivial, 41);
  defer::wait(aw);  // fn runs here, once
  for (auto _ : state) benchmark::DoNotOptimize(defer::wait(aw));
}

// A deferred shared_future: every get() goes through the deferred state's completion hook
// (a call_once that has already run) before it reads the result.
void BM_WaitReady_std(benchmark::State& state) {
  auto sf = std::async(std::launch::deferred, trivial, 41).share();
  sf.get();
  for (auto _ : state) benchmark::DoNotOptimize(sf.get());
}

// The cheapest ready shared_future the standard library has: one made ready by a promise.
void BM_WaitReady_std_promise(benchmark::State& state) {
  std::promise<int> p;
  p.set_value(42);
  auto sf = p.get_future().share();
  for (auto _ : state) benchmark::DoNotOptimize(sf.get());
}

// A ready Await<Tensor> (a CPU tensor, made by nowait on the current CPU stream) waited again on the
// stream that produced it: the completion check finds the same stream and orders nothing.
void BM_WaitReadyTensor_defer_stream(benchmark::State& state) {
  const defer::Device cpu = defer::Device::cpu();
  const defer::Stream producer = defer::current_stream(cpu);
  defer::Await<defer::Tensor> aw = defer::nowait(defer::from_vector({1.f, 2.f, 3.f, 4.f}, {4}, cpu));
  defer::wait(aw, producer);
  for (auto _ : state) benchmark::DoNotOptimize(defer::wait(aw, producer));
  producer.synchronize();
}

// The same with wait(aw): the current stream of each completion's device (here the CPU stream that
// produced the tensor) is looked up per wait instead of being passed in.
void BM_WaitReadyTensor_defer_current(benchmark::State& state) {
  const defer::Device cpu = defer::Device::cpu();
  defer::Await<defer::Tensor> aw = defer::nowait(defer::from_vector({1.f, 2.f, 3.f, 4.f}, {4}, cpu));
  defer::wait(aw);
  for (auto _ : state) benchmark::DoNotOptimize(defer::wait(aw));
  defer::current_stream(cpu).synchronize();
}

void BM_WaitReadyTensor_std(benchmark::State& state) {
  const defer::Device cpu = defer::Device::cpu();
  defer::Tensor t = defer::from_vector({1.f, 2.f, 3.f, 4.f}, {4}, cpu);
  auto sf = std::async(std::launch::deferred, [t] { return t; }).share();
  sf.get();
  for (auto _ : state) benchmark::DoNotOptimize(sf.get());
  defer::current_stream(cpu).synchronize();
}

// ---- an already ready value ---------------------------------------------------------------------
// The standard library has no std::make_ready_future (it was proposed in the Concurrency TS,
// std::experimental::make_ready_future, and never made it into the standard), so the nearest
// equivalent of nowait(v) is a promise: set_value, get_future, share.

void BM_Nowait_defer(benchmark::State& state) {
  int i = 0;
  for (auto _ : state) {
    auto aw = defer::nowait(i++);
    benchmark::DoNotOptimize(aw);
  }
}

void BM_Nowait_std(benchmark::State& state) {
  int i = 0;
  for (auto _ : state) {
    std::promise<int> p;
    p.set_value(i++);
    auto sf = p.get_future().share();
    benchmark::DoNotOptimize(sf);
  }
}

// ---- a then() chain of 16 steps, created and waited ---------------------------------------------
// One op = the whole chain: an awaitable and 16 then() steps (17 states), one wait that runs all
// 17 functions, and the destruction of the chain. The std chain: 17 deferred futures, each step's
// function calling get() on the previous one.

void BM_Then16_defer(benchmark::State& state) {
  int i = 0;
  for (auto _ : state) {
    defer::Await<int> aw = defer::awaitable(trivial, i++);
    for (int k = 0; k < kChain; ++k) aw = defer::then(aw, add_one);
    benchmark::DoNotOptimize(defer::wait(aw));
  }
}

void BM_Then16_std(benchmark::State& state) {
  int i = 0;
  for (auto _ : state) {
    std::shared_future<int> sf = std::async(std::launch::deferred, trivial, i++).share();
    for (int k = 0; k < kChain; ++k)
      sf = std::async(std::launch::deferred, [prev = std::move(sf)] { return add_one(prev.get()); }).share();
    benchmark::DoNotOptimize(sf.get());
  }
}

// ---- a deferred fn with one Await dependency, waited --------------------------------------------
// defer: fn(int, int) bound to (Await<int>, int); the wait runs the dependency first, then fn with
// its value. std: the dependent's function calls get() on the dependency's shared_future.

void BM_Dep_defer(benchmark::State& state) {
  int i = 0;
  for (auto _ : state) {
    auto dep = defer::awaitable(trivial, i++);
    auto aw = defer::awaitable(sum2, dep, 2);
    benchmark::DoNotOptimize(defer::wait(aw));
  }
}

void BM_Dep_std(benchmark::State& state) {
  int i = 0;
  for (auto _ : state) {
    auto dep = std::async(std::launch::deferred, trivial, i++).share();
    auto sf = std::async(std::launch::deferred, [dep](int b) { return sum2(dep.get(), b); }, 2).share();
    benchmark::DoNotOptimize(sf.get());
  }
}

// ---- registration and the ratio table ------------------------------------------------------------

struct Case {
  const char* name;
  void (*fn)(benchmark::State&);
};

const Case kCases[] = {
    {"BM_Create/defer", BM_Create_defer},
    {"BM_Create/std", BM_Create_std},
    {"BM_Create/floor_alloc", BM_Create_floor_alloc},
    {"BM_CreateWait/defer", BM_CreateWait_defer},
    {"BM_CreateWait/std", BM_CreateWait_std},
    {"BM_WaitReady/defer", BM_WaitReady_defer},
    {"BM_WaitReady/std", BM_WaitReady_std},
    {"BM_WaitReady/std_promise", BM_WaitReady_std_promise},
    {"BM_WaitReadyTensor/defer_stream", BM_WaitReadyTensor_defer_stream},
    {"BM_WaitReadyTensor/defer_current", BM_WaitReadyTensor_defer_current},
    {"BM_WaitReadyTensor/std", BM_WaitReadyTensor_std},
    {"BM_Nowait/defer", BM_Nowait_defer},
    {"BM_Nowait/std", BM_Nowait_std},
    {"BM_Then16/defer", BM_Then16_defer},
    {"BM_Then16/std", BM_Then16_std},
    {"BM_Dep/defer", BM_Dep_defer},
    {"BM_Dep/std", BM_Dep_std},
};

// The rows of the table: which defer benchmark is compared with which std one.
struct Row {
  const char* defer_name;
  const char* std_name;
  bool ready_wait;  // also held to the 10 ns goal
};

const Row kRows[] = {
    {"BM_Create/defer", "BM_Create/std", false},
    {"BM_CreateWait/defer", "BM_CreateWait/std", false},
    {"BM_WaitReady/defer", "BM_WaitReady/std", true},
    {"BM_WaitReady/defer", "BM_WaitReady/std_promise", true},
    {"BM_WaitReadyTensor/defer_stream", "BM_WaitReadyTensor/std", true},
    {"BM_WaitReadyTensor/defer_current", "BM_WaitReadyTensor/std", true},
    {"BM_Nowait/defer", "BM_Nowait/std", false},
    {"BM_Then16/defer", "BM_Then16/std", false},
    {"BM_Dep/defer", "BM_Dep/std", false},
};

// The console reporter, plus a memory of each benchmark's CPU time per op: the median aggregate
// when repetitions were asked for, else the median of the runs seen. Prints the table at the end.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  explicit RatioReporter(OutputOptions options) : ConsoleReporter(options) {}

  void ReportRuns(const std::vector<Run>& reports) override {
    ConsoleReporter::ReportRuns(reports);
    for (const Run& r : reports) {
      if (r.error_occurred) continue;
      const std::string& name = r.run_name.function_name;
      if (r.run_type == Run::RT_Aggregate) {
        if (r.aggregate_name == "median") medians_[name] = r.GetAdjustedCPUTime();
      } else {
        runs_[name].push_back(r.GetAdjustedCPUTime());
      }
    }
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    std::FILE* out = stdout;
    std::fflush(out);
    std::fprintf(out,
                 "\nCPU ns per op (median of the repetitions); goals: std/defer >= 2, a ready wait < 10 ns\n"
                 "%-34s %10s  %-26s %10s %10s  %s\n",
                 "defer", "ns", "std", "ns", "std/defer", "goal");
    for (const Row& row : kRows) {
      const double d = time_of(row.defer_name), s = time_of(row.std_name);
      if (d < 0 || s < 0) continue;  // filtered out
      const double ratio = s / d;
      std::string verdict = ratio >= 2.0 ? "ok" : "MISSED (< 2x)";
      if (row.ready_wait) verdict += d < 10.0 ? ", < 10 ns ok" : ", >= 10 ns MISSED";
      std::fprintf(out, "%-34s %10.2f  %-26s %10.2f %10.2f  %s\n", row.defer_name, d, row.std_name, s, ratio,
                   verdict.c_str());
    }
    if (const double floor = time_of("BM_Create/floor_alloc"); floor >= 0)
      std::fprintf(out, "reference: one make_shared of a state-sized block (BM_Create/floor_alloc): %.2f ns\n", floor);
    std::fflush(out);
  }

 private:
  double time_of(const std::string& name) {
    if (auto it = medians_.find(name); it != medians_.end()) return it->second;
    auto it = runs_.find(name);
    if (it == runs_.end() || it->second.empty()) return -1;
    std::vector<double> v = it->second;
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  }

  std::map<std::string, double> medians_;
  std::map<std::string, std::vector<double>> runs_;
};

// Google Benchmark does not expose how it reads --benchmark_color for its own console reporter, so
// this one reads it the same way: auto (a terminal gets colors), or true/false (yes/no, 1/0).
benchmark::ConsoleReporter::OutputOptions console_options(int argc, char** argv) {
  bool color = isatty(fileno(stdout)) != 0;
  constexpr std::string_view flag = "--benchmark_color=";
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.substr(0, flag.size()) != flag) continue;
    const std::string_view value = arg.substr(flag.size());
    if (value == "true" || value == "yes" || value == "1") color = true;
    if (value == "false" || value == "no" || value == "0") color = false;
  }
  return color ? benchmark::ConsoleReporter::OO_ColorTabular : benchmark::ConsoleReporter::OO_Tabular;
}

}  // namespace

int main(int argc, char** argv) {
  const auto options = console_options(argc, argv);  // before Initialize removes the flags it knows
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  for (const Case& c : kCases) benchmark::RegisterBenchmark(c.name, c.fn)->Unit(benchmark::kNanosecond);
  RatioReporter reporter(options);
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
