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

#include "op_kinds.hpp"

namespace defer::kernels {

// Caps of one fused program (ArrayFire's lesson: bound kernel size and kernel-argument bytes). The
// planner splits a larger element-wise graph into several programs; it never fails for size.
inline constexpr int kMaxFusedInputs = 16;
inline constexpr int kMaxFusedOutputs = 8;
inline constexpr int kMaxFusedScalars = 16;
inline constexpr int kMaxFusedInstructions = 256;

enum class FusedKind : std::uint8_t {
  load,           // value = input[a] at the element (broadcast per the layout)
  unary,          // value = UnaryOp(op)(value a)
  binary,         // value = BinaryOp(op)(value a, value b)
  binary_scalar,  // value = BinaryOp(op)(value a, scalars[b])
};

struct FusedInstr {
  FusedKind kind;
  std::uint8_t op = 0;  // a UnaryOp or BinaryOp, by kind
  std::uint16_t a = 0;  // load: input index; otherwise the (first) operand's value index
  std::uint16_t b = 0;  // binary: second operand's value index; binary_scalar: scalar index
};

// A program may end in a reduction: the element-wise code is evaluated over a domain (the reduce
// input's shape, FusedLayout::shape) and `value` is reduced along one axis of it (the split is
// FusedLayout::reduce), with the semantics of the unfused reduce kernels: sum, mean = sum / n, max
// that propagates NaN; sums accumulate in double. The element-wise intermediate never exists in
// memory.
struct FusedReduction {
  ReduceOp op = ReduceOp::sum;
  std::uint16_t value = 0;  // the SSA value reduced
};

struct FusedProgram {
  std::vector<FusedInstr> code;
  std::vector<std::uint16_t> outputs;  // value indices written, one output buffer each
  std::uint16_t num_inputs = 0;
  std::uint16_t num_scalars = 0;
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
  // True when every input is read contiguously with the output (no broadcasting at all).
  bool all_contiguous() const noexcept;
};

// The structure of a program and layout that a compiled kernel depends on: the instructions, the
// outputs, the counts, ndim, and per input whether it is read contiguously with the output (a flat
// index) or through the strides (passed as kernel arguments); for a reduction its op, its value and
// whether the reduced rows are contiguous (inner == 1, which the kernels specialize); never sizes,
// strides or scalar values. Equal keys share one compiled kernel.
std::string structure_key(const FusedProgram& program, const FusedLayout& layout);

// Throws std::invalid_argument when the program is malformed (an operand defined later than its
// use, an input or scalar index out of range, an op code out of range, no outputs), or when a
// reduction's outputs are not exactly {value}, its op is out of range, or layout.reduce has a
// negative size or does not split the domain (outer * n * inner != numel()).
void validate(const FusedProgram& program, const FusedLayout& layout);

}  // namespace defer::kernels
