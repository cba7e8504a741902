#pragma once
// A fused element-wise program: what a chain (or DAG) of element-wise ops over one output shape
// becomes at wait time. Both backends run the same program: the CPU interprets it over cache-sized
// chunks, CUDA compiles generated source with NVRTC. Kernels know nothing of graphs or Awaits.
//
// The program is in SSA form: instruction i defines value i. Scalars and buffer pointers are
// arguments of the run, never part of the program, so that one compiled kernel serves every
// scalar value and every size (ArrayFire's lesson: key compiled kernels by structure only).
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <defer/dtype.hpp>

#include "op_table.hpp"

namespace defer::kernels {

// Caps of one fused program (ArrayFire's lesson: bound kernel size and kernel-argument bytes). The
// planner splits a larger element-wise graph into several programs; it never fails for size. 64
// scalars (256 bytes of the kernel argument) let a chain of scalar ops grow to the instruction cap.
inline constexpr int kMaxFusedInputs = 16;
inline constexpr int kMaxFusedOutputs = 8;
inline constexpr int kMaxFusedScalars = 64;
inline constexpr int kMaxFusedInstructions = 256;

enum class FusedKind : std::uint8_t {
  load,  // value = input[a] at the element (broadcast per the layout), converted to f32
  op,    // value = the element-wise op's function (kernels/elementwise_math.h) of its operands
};

struct FusedInstr {
  FusedKind kind = FusedKind::load;
  ElementwiseOp op = ElementwiseOp::neg;  // kind == op
  // kind == op: the dtype of the op's result (a cast's target). The value is rounded through it, as
  // the op's own tensor would hold it, so that a fused program computes bit for bit what the ops
  // compute one by one: an f16 chain rounds after every op, fused or not.
  DType dtype = DType::f32;
  // load: a is the input. op: the operand values, the first info(op).tensors of a, b, c.
  std::uint16_t a = 0, b = 0, c = 0;
  std::uint16_t s = 0;  // op: its first scalar; it reads scalars s .. s + info(op).scalars - 1
};

// A program may end in a reduction: the element-wise code is evaluated over a domain (the reduce
// input's shape, FusedLayout::shape) and `value` is reduced along one axis of it (the split is
// FusedLayout::reduce), with the semantics of the unfused reduce kernels: sum, mean = sum / n, max
// and min that propagate NaN; sums accumulate in double. The element-wise intermediate never
// exists in memory. (argmax is never fused: its result is an index.)
struct FusedReduction {
  ReduceOp op = ReduceOp::sum;
  std::uint16_t value = 0;  // the SSA value reduced
};

// Every value is computed in f32 and rounded through its op's result dtype (FusedInstr::dtype).
// Inputs are loaded from their dtype (input_dtypes) and outputs stored in theirs (output_dtypes),
// with the conversions of elementwise_math.h.
struct FusedProgram {
  std::vector<FusedInstr> code;
  std::vector<std::uint16_t> outputs;  // value indices written, one output buffer each
  std::uint16_t num_inputs = 0;
  std::uint16_t num_scalars = 0;
  std::vector<DType> input_dtypes;   // one per input
  std::vector<DType> output_dtypes;  // one per output
  // When set, `outputs` is exactly {reduction->value} and its one buffer holds outer * inner
  // reduced elements (FusedLayout::reduce) instead of one element per domain element.
  std::optional<FusedReduction> reduction;
};

// How each input is indexed by the output's row-major multi-index (dims collapsed by the caller):
// input i reads element sum_d index[d] * strides[i][d]; a stride of 0 broadcasts that dim.
// Outputs are contiguous with `shape`.
//
// For a program with a reduction, `shape` is the domain the element-wise code runs over, and
// `reduce` splits the domain's flat row-major index e = (o * n + k) * inner + i: the output element
// o * inner + i reduces the n elements k = 0..n-1. The split is given separately because the
// caller may have collapsed `shape` (only outer * n * inner == numel() must hold); kernels index
// the domain by e and use shape and strides only to read the inputs.
struct FusedLayout {
  struct ReduceAxis {
    std::int64_t outer = 1, n = 1, inner = 1;
  };
  int ndim = 0;
  std::array<std::int64_t, kMaxDims> shape{};
  std::vector<std::array<std::int64_t, kMaxDims>> strides;  // one per input
  ReduceAxis reduce;  // read only when the program has a reduction
  std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[static_cast<std::size_t>(d)];
    return n;
  }
};

// How a kernel reads one input, from the layout's shape and that input's strides (extent-1 dims are
// ignored): flat reads element i of a buffer laid out like the output; uniform reads element 0 for
// every i (every stride 0: a broadcast scalar); strided computes the offset from the multi-index.
// The one classifier behind both backends and the structure key.
enum class InputAccess : std::uint8_t { flat, uniform, strided };
InputAccess input_access(const FusedLayout& layout, std::size_t input) noexcept;

// The structure of a program and layout that generated code depends on: the instructions, the
// outputs, the counts, the dtypes, each input's InputAccess and, when one is strided, ndim; for a
// reduction its op, its value and whether the reduced rows are contiguous (inner == 1); never sizes,
// strides, pointers or scalar values. Equal keys mean equal generated source: the CUDA kernel cache
// and the replay key use it. Validates first (std::invalid_argument).
std::string structure_key(const FusedProgram& program, const FusedLayout& layout);

// Throws std::invalid_argument when the program is malformed (an operand defined later than its
// use, an input or scalar index out of range, an op or dtype code out of range, no outputs, dtypes
// not given for every input and output), the layout does not fit it (ndim outside [0, kMaxDims], a
// negative extent, strides not given for every input), a cap is exceeded, or a reduction's outputs
// are not exactly {value}, its op is not sum, mean, max or min, or layout.reduce has a negative size
// or does not split the domain (outer * n * inner != numel()).
void validate(const FusedProgram& program, const FusedLayout& layout);

}  // namespace defer::kernels
