#pragma once
// A workload: one step of work written with defer's public ops, built again at every step from
// inputs made once, so that the same code runs in every mode (eager, deferred, fused, graph).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <defer/defer.hpp>

#include "options.hpp"

namespace defer_bench {

struct Workload {
  std::string name;          // the family: "chain8", "softmax", "transformer", ...
  std::string size;          // the size within the family: "2^20", "256x1024", "1x128x768/12h"
  std::string description;   // one line for the reader of the JSON
  double bytes_per_step = 0; // bytes an ideal kernel moves per step (inputs read once, output written
                             // once); 0 where GB/s means nothing (matmul-bound workloads)
  double flops_per_step = 0; // floating-point operations per step where they define the work (matmuls)
  // The smallest error against eager that --tolerance may demand: in f16 or bf16 eager rounds after
  // every op and a fused kernel only once, so they differ by a few of the dtype's roundings.
  double min_tolerance = 0;
  // Makes the inputs (deterministic pseudo-random values, uploaded to the device) and returns the
  // step: a function that builds the step's ops on those inputs and returns the result to wait. In
  // eager mode the ops run at their call; in the deferred modes at the wait. The runner prepares a
  // workload just before running it and drops the inputs afterwards.
  std::function<std::function<defer::TensorAwait()>()> prepare;
};

// The standard suite on `device`, sized by the options (--quick, --batch/--seq/--hidden/--heads) and
// filtered by --filter (a substring of "name/size"). Nothing is allocated until a workload is prepared.
std::vector<Workload> standard_suite(const Options& options, defer::Device device);

// The families, one file each.
void add_elementwise_workloads(std::vector<Workload>& out, bool quick, defer::Device device);
void add_reduction_workloads(std::vector<Workload>& out, bool quick, defer::Device device);
void add_matmul_workloads(std::vector<Workload>& out, bool quick, defer::Device device);
void add_view_workloads(std::vector<Workload>& out, bool quick, defer::Device device);
void add_transformer_workloads(std::vector<Workload>& out, const std::vector<BlockSize>& sizes, defer::Device device);

// A tensor of `shape` on `device` with values uniform in [offset - scale, offset + scale], from a
// fixed seed: the same seed gives the same values on every machine and in every run.
defer::TensorAwait random_tensor(const defer::Shape& shape, std::uint32_t seed, float scale, defer::Device device,
                                 float offset = 0.f);

}  // namespace defer_bench
