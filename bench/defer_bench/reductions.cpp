// Row-wise reductions over rows of 1024 floats, each behind an element-wise producer (the pattern
// a model has: a reduction seldom reads a tensor that nothing computed just before):
//   sum         sum(x * x, -1)              a sum of squares, as in an RMS norm
//   softmax     softmax(x * 0.125, -1)      scaled attention scores
//   layer_norm  layer_norm(x + r, g, b)     a residual add, then the norm
#include <string>

#include "workload.hpp"

namespace defer_bench {
namespace {

using defer::TensorAwait;
constexpr std::int64_t kCols = 1024;

std::string rows_label(std::int64_t rows) { return std::to_string(rows) + "x" + std::to_string(kCols); }

}  // namespace

void add_reduction_workloads(std::vector<Workload>& out, bool quick, defer::Device device) {
  const std::vector<std::int64_t> row_counts = quick ? std::vector<std::int64_t>{64, 256}
                                                     : std::vector<std::int64_t>{64, 1024, 4096};
  // Family by family, so that the sizes of one workload come together in the table and chart.
  for (std::int64_t rows : row_counts) {
    const double cells = static_cast<double>(rows * kCols);
    Workload w;
    w.name = "sum";
    w.size = rows_label(rows);
    w.description = "sum(x * x, -1) over rows of 1024";
    w.bytes_per_step = (cells + static_cast<double>(rows)) * sizeof(float);
    w.prepare = [rows, device] {
      const TensorAwait x = random_tensor({rows, kCols}, 21, 1.f, device);
      return std::function<TensorAwait()>([x] { return defer::sum(x * x, -1); });
    };
    out.push_back(std::move(w));
  }
  for (std::int64_t rows : row_counts) {
    const double cells = static_cast<double>(rows * kCols);
    Workload w;
    w.name = "softmax";
    w.size = rows_label(rows);
    w.description = "softmax(x * 0.125, -1) over rows of 1024";
    w.bytes_per_step = 2 * cells * sizeof(float);
    w.prepare = [rows, device] {
      const TensorAwait x = random_tensor({rows, kCols}, 22, 8.f, device);
      return std::function<TensorAwait()>([x] { return defer::softmax(x * 0.125f, -1); });
    };
    out.push_back(std::move(w));
  }
  for (std::int64_t rows : row_counts) {
    const double cells = static_cast<double>(rows * kCols);
    Workload w;
    w.name = "layer_norm";
    w.size = rows_label(rows);
    w.description = "layer_norm(x + r, gamma, beta) over rows of 1024";
    w.bytes_per_step = 3 * cells * sizeof(float);
    w.prepare = [rows, device] {
      const TensorAwait x = random_tensor({rows, kCols}, 23, 1.f, device);
      const TensorAwait r = random_tensor({rows, kCols}, 24, 1.f, device);
      const TensorAwait gamma = random_tensor({kCols}, 25, 0.1f, device, 1.f);
      const TensorAwait beta = random_tensor({kCols}, 26, 0.1f, device);
      return std::function<TensorAwait()>([x, r, gamma, beta] { return defer::layer_norm(x + r, gamma, beta); });
    };
    out.push_back(std::move(w));
  }
}

}  // namespace defer_bench
