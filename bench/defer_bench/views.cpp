// Views made dense: contiguous(permute(x, {0, 2, 1, 3})) of x [batch, seq, heads, head_dim], the
// head split of multi-head attention materialized, in f32 and f16. One strided copy per step (the
// permute is a view); bytes_per_step counts one read and one write of x, so the GB/s column is the
// copy kernel's bandwidth (on a GPU: to compare with the device's copy bandwidth).
#include <string>

#include "workload.hpp"

namespace defer_bench {

void add_view_workloads(std::vector<Workload>& out, bool quick, defer::Device device) {
  const defer::Shape shape = quick ? defer::Shape{1, 32, 4, 16} : defer::Shape{8, 512, 12, 64};
  for (const defer::DType dtype : {defer::DType::f32, defer::DType::f16}) {
    double numel = 1;
    for (std::int64_t e : shape) numel *= static_cast<double>(e);
    Workload w;
    w.name = std::string("permute_copy_") + defer::dtype_name(dtype);
    w.size = std::to_string(shape[0]) + "x" + std::to_string(shape[1]) + "x" + std::to_string(shape[2]) + "x" +
             std::to_string(shape[3]);
    w.description = "contiguous(permute(x, {0, 2, 1, 3})) of x [batch, seq, heads, head_dim]: the strided copy kernel";
    w.bytes_per_step = 2 * numel * static_cast<double>(defer::dtype_size(dtype));
    w.prepare = [shape, dtype, device] {
      const defer::TensorAwait x = defer::to(random_tensor(shape, 31, 1.f, device), dtype);
      defer::wait(x);  // the cast is input preparation, not part of the step
      return std::function<defer::TensorAwait()>([x] { return defer::contiguous(defer::permute(x, {0, 2, 1, 3})); });
    };
    out.push_back(std::move(w));
  }
}

}  // namespace defer_bench
