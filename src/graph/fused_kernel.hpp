#pragma once
// A fused element-wise kernel ready to launch, independent of the graph nodes it was built from (a
// replayed plan keeps it), and its launch on any backend. A single element-wise op runs as a
// one-op FusedKernel too: every element-wise result, fused or not, is computed by the same code.
#include <memory>
#include <string>
#include <vector>

#include <defer/tensor.hpp>

#include "fusion/fused_program.hpp"
#include "graph/op_node.hpp"
#include "runtime/stream_impl.hpp"

namespace defer::detail {

struct FusedKernel {
  std::shared_ptr<const kernels::FusedProgram> program;
  std::shared_ptr<const kernels::FusedLayout> layout;
  std::vector<float> scalars;
  // Per input, elements to add to its data pointer (a view's offset inside a fused group: a slice
  // or select between members); empty: none.
  std::vector<int64_t> input_offsets;
  Shape out_shape;  // the shape of every output
  std::string ops;  // the ops it computes, for DEFER_LOG
  int op_count = 0; // more than one: a fused kernel (Stats::fused_kernels)
};

// The kernel of one element-wise node over `in`, its output like `out`.
FusedKernel single_op_kernel(const OpSpec& spec, const std::vector<Tensor>& in, const TensorMeta& out);

// Allocates the kernel's outputs on `stream` and queues it, reading `inputs` (in the program's
// input order, all on the stream's device and ordered on it). Counts the launch; logs it unless
// `log` is false (a single op is logged by launch_op under its own name).
std::vector<Tensor> launch_fused(const FusedKernel& kernel, const std::vector<const Tensor*>& inputs,
                                 StreamImpl& stream, const char* reason, bool log = true);

}  // namespace defer::detail
