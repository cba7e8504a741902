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

struct Measured {
  CaseResult result;
  std::vector<float> output;  // the last step's result, on the host
  std::vector<float> first;   // the first step's result (eager: the reference)
};

Measured measure(const Workload& w, const std::function<defer::TensorAwait()>& step, RunMode mode,
                 const RunSettings& settings, StepTimer& timer) {
  Measured m;
  CaseResult& r = m.result;
  r.workload = w.name;
  r.size = w.size;
  r.description = w.description;
  r.mode = mode_name(mode);
  r.repeats = settings.repeats;

  const ModeScope scope(mode);
  // Warm-up: untimed except for the last step, which sizes the repeats.
  double step_s = 0;
  for (int i = 0; i < settings.warmup; ++i) {
    timer.begin();
    const defer::Tensor out = defer::wait(step());
    step_s = timer.end_seconds();
    if (i == 0) m.first = defer::to_vector(out);
  }
  const double steps = std::ceil(settings.repeat_s / std::max(step_s, 1e-7));
  r.steps_per_repeat = static_cast<std::int64_t>(std::clamp(steps, 1.0, 100000.0));

  std::vector<double> per_step, cpu_per_step;
  defer::Tensor last;
  const defer::Stats before = defer::stats();
  for (int rep = 0; rep < settings.repeats; ++rep) {
    const double cpu_start = process_cpu_seconds();
    double total = 0;
    for (std::int64_t k = 0; k < r.steps_per_repeat; ++k) {
      timer.begin();
      last = defer::wait(step());
      total += timer.end_seconds();
    }
    const auto n = static_cast<double>(r.steps_per_repeat);
    per_step.push_back(total / n);
    cpu_per_step.push_back((process_cpu_seconds() - cpu_start) / n);
  }
  const defer::Stats after = defer::stats();
  const double timed_steps = static_cast<double>(settings.repeats) * static_cast<double>(r.steps_per_repeat);
  r.kernel_launches = static_cast<double>(after.kernel_launches - before.kernel_launches) / timed_steps;
  r.fused_kernels = static_cast<double>(after.fused_kernels - before.fused_kernels) / timed_steps;
  r.graph_launches = static_cast<double>(after.graph_launches - before.graph_launches) / timed_steps;
  r.median_s = median_of(per_step);
  r.min_s = *std::min_element(per_step.begin(), per_step.end());
  r.max_s = *std::max_element(per_step.begin(), per_step.end());
  r.cpu_s = median_of(cpu_per_step);
  if (w.bytes_per_step > 0) r.bytes_per_second = w.bytes_per_step / r.median_s;
  if (w.flops_per_step > 0) r.flops_per_second = w.flops_per_step / r.median_s;
  m.output = defer::to_vector(last);
  r.checksum = checksum_of(m.output);
  return m;
}

}  // namespace

std::vector<CaseResult> run_suite(const std::vector<Workload>& workloads, const RunSettings& settings,
                                  defer::Device device, StepTimer& timer, Progress& progress) {
  std::vector<CaseResult> results;
  for (const Workload& w : workloads) {
    const std::function<defer::TensorAwait()> step = w.prepare();
    std::vector<float> reference;  // eager's first step
    double eager_median = 0;
    for (RunMode mode : kRunModes) {
      progress.next(w.name + " " + w.size + " " + mode_name(mode));
      CaseResult r;
      try {
        Measured m = measure(w, step, mode, settings, timer);
        r = std::move(m.result);
        if (mode == RunMode::eager) {
          reference = std::move(m.first);
          eager_median = r.median_s;
        }
        // Eager is compared with its own first step: the kernels must be deterministic too.
        r.max_rel_error = reference.empty() ? std::numeric_limits<double>::infinity()
                                            : max_relative_error(m.output, reference);
      } catch (const std::exception& e) {
        // A failing mode is reported and fails the run, but the other cases still run.
        progress.clear();
        std::fprintf(stderr, "defer-bench: %s %s %s failed: %s\n", w.name.c_str(), w.size.c_str(), mode_name(mode),
                     e.what());
        r.workload = w.name;
        r.size = w.size;
        r.description = w.description;
        r.mode = mode_name(mode);
        r.max_rel_error = std::numeric_limits<double>::infinity();
      }
      r.matches = r.max_rel_error <= settings.tolerance;
      r.speedup = r.median_s > 0 && eager_median > 0 ? eager_median / r.median_s : 0;
      results.push_back(std::move(r));
    }
    defer::current_stream(device).synchronize();  // the step (and its inputs) go out of scope here
  }
  return results;
}

}  // namespace defer_bench
