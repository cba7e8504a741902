#include "runner.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <limits>
#include <optional>

#include "modes.hpp"

namespace defer_bench {
namespace {

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// max |got - want| / max |want|: the error relative to the result's scale, so that elements near
// zero (where an element-wise relative error means nothing) are judged like the others. A NaN or
// an infinity that eager does not have, or a size mismatch, is an infinite error.
double max_relative_error(const std::vector<float>& got, const std::vector<float>& want) {
  if (got.size() != want.size()) return std::numeric_limits<double>::infinity();
  double scale = 0, worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double w = want[i], g = got[i];
    if (std::isnan(w) != std::isnan(g) || std::isinf(w) != std::isinf(g))
      return std::numeric_limits<double>::infinity();
    if (!std::isfinite(w)) continue;
    scale = std::max(scale, std::abs(w));
    worst = std::max(worst, std::abs(g - w));
  }
  if (worst == 0) return 0;
  return scale > 0 ? worst / scale : std::numeric_limits<double>::infinity();
}

double checksum_of(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += x;
  return s;
}

// One mode of one workload while it runs: its repeats so far and its stats deltas.
struct ModeRun {
  RunMode mode = RunMode::eager;
  bool failed = false;
  std::int64_t steps_per_repeat = 1;
  std::vector<double> per_step, cpu_per_step;
  std::uint64_t launches = 0, fused = 0, graphs = 0;
  std::vector<float> first;  // the first warm-up step's result (eager's is the reference)
  defer::Tensor last;        // the last timed step's result
};

// Untimed warm-up steps (the first deferred steps fill caches: compiled fused kernels, recorded
// plans and graphs, the allocator's pool); the last one is timed to size the repeats.
void warm_up(ModeRun& run, const std::function<defer::TensorAwait()>& step, const RunSettings& settings,
             StepTimer& timer) {
  const ModeScope scope(run.mode);
  double step_s = 0;
  for (int i = 0; i < settings.warmup; ++i) {
    timer.begin();
    const defer::Tensor out = defer::wait(step());
    step_s = timer.end_seconds();
    if (i == 0) run.first = defer::to_vector(out);
  }
  const double steps = std::ceil(settings.repeat_s / std::max(step_s, 1e-7));
  run.steps_per_repeat = static_cast<std::int64_t>(std::clamp(steps, 1.0, 100000.0));
}

// One timed repeat: steps_per_repeat steps, each timed from before its ops are built until its
// work has finished.
void timed_repeat(ModeRun& run, const std::function<defer::TensorAwait()>& step, StepTimer& timer) {
  const ModeScope scope(run.mode);
  const defer::Stats before = defer::stats();
  const double cpu_start = process_cpu_seconds();
  double total = 0;
  for (std::int64_t k = 0; k < run.steps_per_repeat; ++k) {
    timer.begin();
    run.last = defer::wait(step());
    total += timer.end_seconds();
  }
  const auto n = static_cast<double>(run.steps_per_repeat);
  run.cpu_per_step.push_back((process_cpu_seconds() - cpu_start) / n);
  run.per_step.push_back(total / n);
  const defer::Stats after = defer::stats();
  run.launches += after.kernel_launches - before.kernel_launches;
  run.fused += after.fused_kernels - before.fused_kernels;
  run.graphs += after.graph_launches - before.graph_launches;
}

// Runs `what` for one mode; an exception marks the mode failed (reported, the run goes on).
template <class F>
void guarded(ModeRun& run, const Workload& w, Progress& progress, F what) {
  if (run.failed) return;
  try {
    what();
  } catch (const std::exception& e) {
    progress.clear();
    std::fprintf(stderr, "defer-bench: %s %s %s failed: %s\n", w.name.c_str(), w.size.c_str(), mode_name(run.mode),
                 e.what());
    run.failed = true;
  }
}

CaseResult summarize(const Workload& w, const ModeRun& run, const RunSettings& settings,
                     const std::vector<float>& reference) {
  CaseResult r;
  r.workload = w.name;
  r.size = w.size;
  r.description = w.description;
  r.mode = mode_name(run.mode);
  r.repeats = settings.repeats;
  r.max_rel_error = std::numeric_limits<double>::infinity();
  if (run.failed || run.per_step.empty()) return r;
  r.steps_per_repeat = run.steps_per_repeat;
  r.median_s = median_of(run.per_step);
  r.min_s = *std::min_element(run.per_step.begin(), run.per_step.end());
  r.max_s = *std::max_element(run.per_step.begin(), run.per_step.end());
  r.cpu_s = median_of(run.cpu_per_step);
  const double steps = static_cast<double>(run.per_step.size()) * static_cast<double>(run.steps_per_repeat);
  r.kernel_launches = static_cast<double>(run.launches) / steps;
  r.fused_kernels = static_cast<double>(run.fused) / steps;
  r.graph_launches = static_cast<double>(run.graphs) / steps;
  if (w.bytes_per_step > 0) r.bytes_per_second = w.bytes_per_step / r.median_s;
  if (w.flops_per_step > 0) r.flops_per_second = w.flops_per_step / r.median_s;
  const std::vector<float> output = defer::to_vector(run.last);
  r.checksum = checksum_of(output);
  // Eager is compared with its own first step: its kernels must be deterministic too.
  if (!reference.empty()) r.max_rel_error = max_relative_error(output, reference);
  return r;
}

}  // namespace

// The modes' repeats are interleaved (eager, deferred, fused, graph, eager, ...) rather than run
// one mode after the other, so that a change in the machine's load during a workload (other
// processes on a shared box, clock boosts) affects every mode alike and the ratios stay fair.
std::vector<CaseResult> run_suite(const std::vector<Workload>& workloads, const RunSettings& settings,
                                  defer::Device device, StepTimer& timer, Progress& progress) {
  std::vector<CaseResult> results;
  for (const Workload& w : workloads) {
    progress.next(w.name + " " + w.size);
    std::vector<ModeRun> runs;
    for (RunMode mode : kRunModes) {
      runs.emplace_back();
      runs.back().mode = mode;
    }
    try {
      const std::function<defer::TensorAwait()> step = w.prepare();
      for (ModeRun& run : runs) guarded(run, w, progress, [&] { warm_up(run, step, settings, timer); });
      for (int rep = 0; rep < settings.repeats; ++rep)
        for (ModeRun& run : runs) guarded(run, w, progress, [&] { timed_repeat(run, step, timer); });
    } catch (const std::exception& e) {  // preparing the inputs failed: every mode fails
      progress.clear();
      std::fprintf(stderr, "defer-bench: %s %s failed: %s\n", w.name.c_str(), w.size.c_str(), e.what());
      for (ModeRun& run : runs) run.failed = true;
    }
    const std::vector<float>& reference = runs.front().first;  // eager's
    double eager_median = 0;
    for (const ModeRun& run : runs) {
      CaseResult r = summarize(w, run, settings, reference);
      if (run.mode == RunMode::eager) eager_median = r.median_s;
      r.matches = r.max_rel_error <= std::max(settings.tolerance, w.min_tolerance);
      r.speedup = r.median_s > 0 && eager_median > 0 ? eager_median / r.median_s : 0;
      results.push_back(std::move(r));
    }
    defer::current_stream(device).synchronize();  // the inputs go out of scope with this workload
  }
  return results;
}

}  // namespace defer_bench
