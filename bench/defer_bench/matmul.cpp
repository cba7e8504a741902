// A linear layer with its activation: gelu(x · W + b), x [m, k], W [k, n], b [n], square sizes.
// The matmul dominates; what deferral can save is the epilogue (the bias add and gelu become one
// kernel when fused) and, with graph replay, the planning and launches.
#include <cmath>
#include <string>

#include "workload.hpp"

namespace defer_bench {

void add_matmul_workloads(std::vector<Workload>& out, bool quick, defer::Device device) {
  using defer::TensorAwait;
  for (std::int64_t n : quick ? std::vector<std::int64_t>{64, 128} : std::vector<std::int64_t>{128, 256, 512}) {
    Workload w;
    w.name = "linear";
    w.size = std::to_string(n) + "^3";
    w.description = "gelu(x[n,n] . W[n,n] + b[n])";
    w.flops_per_step = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
    w.prepare = [n, device] {
      const TensorAwait x = random_tensor({n, n}, 31, 1.f, device);
      const TensorAwait weight = random_tensor({n, n}, 32, 1.f / std::sqrt(static_cast<float>(n)), device);
      const TensorAwait bias = random_tensor({n}, 33, 0.1f, device);
      return std::function<TensorAwait()>([x, weight, bias] { return defer::gelu(defer::matmul(x, weight) + bias); });
    };
    out.push_back(std::move(w));
  }
}

}  // namespace defer_bench
