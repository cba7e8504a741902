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

struct FusedProgram {
  std::vector<FusedInstr> code;
  std::vector<std::uint16_t> outputs;  // value indices written, one output buffer each
  std::uint16_t num_inputs = 0;
  std::uint16_t num_scalars = 0;
};

// How each input is indexed by the output's row-major multi-index (dims collapsed by the caller):
// input i reads element sum_d index[d] * strides[i][d]; a stride of 0 broadcasts that dim.
// Outputs are contiguous with `shape`.
struct FusedLayout {
  int ndim = 0;
  std::array<std::int64_t, kMaxDims> shape{};
  std::vector<std::array<std::int64_t, kMaxDims>> strides;  // one per input
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
// index) or through the strides (passed as kernel arguments); never sizes, strides or scalar
// values. Equal keys share one compiled kernel.
std::string structure_key(const FusedProgram& program, const FusedLayout& layout);

// Throws std::invalid_argument when the program is malformed (an operand defined later than its
// use, an input or scalar index out of range, an op code out of range, no outputs).
void validate(const FusedProgram& program, const FusedLayout& layout);

}  // namespace defer::kernels
