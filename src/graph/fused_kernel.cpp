#include "graph/fused_kernel.hpp"

#include <cstdio>

#include "graph/executor.hpp"
#include "runtime/backend.hpp"
#include "runtime/fault_injection.hpp"
#include "runtime/tensor_impl.hpp"

namespace defer::detail {

FusedKernel single_op_kernel(const OpSpec& spec, const std::vector<TensorMeta>& in, const TensorMeta& out) {
  const kernels::ElementwiseInfo& info = kernels::info(spec.op);
  auto program = std::make_shared<kernels::FusedProgram>();
  std::vector<Shape> shapes;
  for (std::size_t i = 0; i < in.size(); ++i) {
    kernels::FusedInstr load;  // a load of input i
    load.a = static_cast<std::uint16_t>(i);
    program->code.push_back(load);
    program->input_dtypes.push_back(in[i].dtype);
    shapes.push_back(in[i].shape);
  }
  kernels::FusedInstr op{kernels::FusedKind::op, spec.op, out.dtype, 0, 1, 2, 0};
  program->code.push_back(op);
  program->outputs.push_back(static_cast<std::uint16_t>(in.size()));
  program->output_dtypes.push_back(out.dtype);
  program->num_inputs = static_cast<std::uint16_t>(in.size());
  program->num_scalars = static_cast<std::uint16_t>(info.scalars);
  FusedKernel kernel;
  kernel.layout = std::make_shared<kernels::FusedLayout>(make_fused_layout(out.shape, shapes));
  kernel.program = std::move(program);
  kernel.scalars = fused_scalars(spec, in);
  kernel.out_shape = out.shape;
  kernel.ops = op_name(spec);
  kernel.op_count = 1;
  return kernel;
}

std::vector<Tensor> launch_fused(const FusedKernel& kernel, const std::vector<const Tensor*>& inputs,
                                 StreamImpl& stream, const char* reason, bool log) {
  const bool fused = kernel.op_count > 1;
  if (fused) check_injected_launch_fault("fused");  // tests: runtime/fault_injection.hpp
  std::vector<const void*> in;
  in.reserve(inputs.size());
  for (const Tensor* t : inputs) in.push_back(t->data_ptr());
  std::vector<Tensor> outputs;
  std::vector<void*> out;
  for (DType dtype : kernel.program->output_dtypes) {
    outputs.push_back(allocate_tensor(kernel.out_shape, dtype, stream, fused ? "fused" : kernel.ops.c_str()));
    out.push_back(outputs.back().data_ptr());
  }
  if (log && launch_log_enabled()) {
    std::fprintf(stderr, "defer: launch fused(%s) -> %s, %zu output(s) on %s stream %llu (%s)\n", kernel.ops.c_str(),
                 shape_str(kernel.out_shape).c_str(), out.size(), stream.device().str().c_str(),
                 static_cast<unsigned long long>(stream.id()), reason);
  }
  if (kernel.layout->numel() == 0) return outputs;
  backend_for(stream.device()).run_fused(kernel.program, kernel.layout, std::move(in), std::move(out), kernel.scalars, stream);
  count_launch(fused);
  return outputs;
}

}  // namespace defer::detail
