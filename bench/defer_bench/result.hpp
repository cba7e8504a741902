#pragma once
// What one (workload, size, mode) case measured, and what the whole run was.
#include <cstdint>
#include <string>
#include <vector>

namespace defer_bench {

struct CaseResult {
  std::string workload;     // "transformer"
  std::string size;         // "1x128x768/12h"
  std::string description;  // of the workload
  std::string mode;         // "eager", "deferred", "fused", "graph"
  int repeats = 0;                  // timed repeats
  std::int64_t steps_per_repeat = 0;
  double median_s = 0, min_s = 0, max_s = 0;  // seconds per step over the repeats
  double cpu_s = 0;                 // process CPU seconds per step (all threads), median
  double speedup = 0;               // eager's median / this median
  double kernel_launches = 0;       // defer::stats() deltas per step
  double fused_kernels = 0;
  double graph_launches = 0;
  double bytes_per_second = 0;      // 0: not meaningful for this workload
  double flops_per_second = 0;      // 0: not meaningful for this workload
  double max_rel_error = 0;         // against eager: max |result - eager| / max |eager|
  bool matches = true;              // max_rel_error within the tolerance
  double checksum = 0;              // the sum of the result's elements
};

struct RunContext {
  std::string date;          // local time, ISO 8601
  std::string host_name;
  std::string executable;
  std::string device;        // "cpu", "cuda:0"
  std::string device_name;   // "AMD EPYC, 2 threads", "NVIDIA H100 80GB HBM3 (sm_90)"
  std::string clock;         // "steady_clock" or "cuda_event"
  std::string stream;        // "own" (a stream created for the run) or "default" (--default-stream)
  std::string build_type;    // "release" or "debug"
  int num_cpus = 0;
  bool quick = false;
  int repeats = 0;
  int warmup = 0;
  double tolerance = 0;
  bool all_match = true;
};

}  // namespace defer_bench
