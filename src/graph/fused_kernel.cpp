#include "graph/fused_kernel.hpp"

#include <cstdint>
#include <cstdio>
#include <unordered_map>

#include "graph/executor.hpp"
#include "runtime/backend.hpp"
#include "runtime/fault_injection.hpp"
#include "runtime/tensor_impl.hpp"

namespace defer::detail {

namespace {

// The one-op program of an op over inputs of these dtypes. It depends on nothing else (shapes and
// scalars are the layout's and the launch's), so each thread keeps the few it meets: a single op
// then allocates no program, which matters for small tensors (launch-bound).
std::shared_ptr<const kernels::FusedProgram> one_op_program(ElementwiseOp op, const std::vector<Tensor>& in, DType out) {
  std::uint64_t key = static_cast<std::uint64_t>(op) << 8 | static_cast<std::uint64_t>(out);
  for (const Tensor& t : in) key = key << 8 | static_cast<std::uint64_t>(t.dtype());
  key = key << 4 | in.size();  // at most 3 inputs: 8 + 8 + 24 + 4 bits
  thread_local std::unordered_map<std::uint64_t, std::shared_ptr<const kernels::FusedProgram>> cache;
  auto [it, inserted] = cache.try_emplace(key);
  if (!inserted) return it->second;
  auto program = std::make_shared<kernels::FusedProgram>();
  for (std::size_t i = 0; i < in.size(); ++i) {
    kernels::FusedInstr load;  // a load of input i
    load.a = static_cast<std::uint16_t>(i);
    program->code.push_back(load);
    program->input_dtypes.push_back(in[i].dtype());
  }
  program->code.push_back({kernels::FusedKind::op, op, out, 0, 1, 2, 0});
  program->outputs.push_back(static_cast<std::uint16_t>(in.size()));
  program->output_dtypes.push_back(out);
  program->num_inputs = static_cast<std::uint16_t>(in.size());
  program->num_scalars = static_cast<std::uint16_t>(kernels::info(op).scalars);
  it->second = std::move(program);
  return it->second;
}

}  // namespace

FusedKernel single_op_kernel(const OpSpec& spec, const std::vector<Tensor>& in, const TensorMeta& out) {
  std::vector<Shape> shapes, strides;
  shapes.reserve(in.size());
  strides.reserve(in.size());
  for (const Tensor& t : in) {
    shapes.push_back(t.shape());
    strides.push_back(t.is_contiguous() ? Shape{} : t.strides());
  }
  FusedKernel kernel;
  kernel.program = one_op_program(spec.op, in, out.dtype);
  kernel.layout = std::make_shared<kernels::FusedLayout>(make_fused_layout(out.shape, shapes, strides));
  kernel.scalars = fused_scalars(spec, data_dtype(spec, in));
  kernel.out_shape = out.shape;
  kernel.ops = short_name(spec);  // (launch_op logs a single op under its full name)
  kernel.op_count = 1;
  return kernel;
}

std::vector<Tensor> launch_fused(const FusedKernel& kernel, const std::vector<const Tensor*>& inputs,
                                 StreamImpl& stream, const char* reason, bool log) {
  const bool fused = kernel.op_count > 1;
  if (fused) check_injected_launch_fault("fused");  // tests: runtime/fault_injection.hpp
  std::vector<const void*> in;
  in.reserve(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = *inputs[i];
    const int64_t offset = kernel.input_offsets.empty() ? 0 : kernel.input_offsets[i];
    in.push_back(static_cast<const char*>(t.data_ptr()) + offset * static_cast<int64_t>(dtype_size(t.dtype())));
  }
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
