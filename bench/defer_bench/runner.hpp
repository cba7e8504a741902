#pragma once
// Runs every workload in every mode, times it and checks it against eager.
#include <vector>

#include <defer/stream.hpp>

#include "options.hpp"
#include "progress.hpp"
#include "result.hpp"
#include "timing.hpp"
#include "workload.hpp"

namespace defer_bench {

struct RunSettings {
  int repeats = 7;          // timed repeats per case
  int warmup = 3;           // untimed steps first (the first deferred steps also fill caches:
                            // compiled fused kernels, captured graphs, the allocator's pool)
  double repeat_s = 0.025;  // a repeat runs ceil(repeat_s / step time) steps, at least one
  double tolerance = 1e-4;  // max relative error against eager
};

// For each workload: prepares its inputs, runs eager, deferred, fused and graph on the current
// stream of `device` (warm-up for each, then the timed repeats interleaved across the modes), and
// compares each mode's result with eager's. Results come in workload order, modes in kRunModes
// order. A mode that throws is reported on stderr and counts as a mismatch; the run goes on.
std::vector<CaseResult> run_suite(const std::vector<Workload>& workloads, const RunSettings& settings,
                                  defer::Device device, StepTimer& timer, Progress& progress);

}  // namespace defer_bench
