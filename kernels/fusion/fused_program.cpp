#include "fusion/fused_program.hpp"

#include <cstddef>
#include <stdexcept>
#include <string>

namespace defer::kernels {
namespace {

constexpr unsigned kUnaryOpCount = static_cast<unsigned>(UnaryOp::gelu_tanh) + 1;
constexpr unsigned kBinaryOpCount = static_cast<unsigned>(BinaryOp::minimum) + 1;
constexpr unsigned kReduceOpCount = static_cast<unsigned>(ReduceOp::max) + 1;

// Input i is read contiguously when its flat offset equals the output's flat index: every
// dimension that has more than one element steps by the output's row-major stride. Dimensions of
// extent 0 or 1 never move the index, so their strides do not matter.
bool input_contiguous(const FusedLayout& layout, std::size_t i) {
  const auto& stride = layout.strides[i];
  std::int64_t row_major = 1;
  for (int d = layout.ndim - 1; d >= 0; --d) {
    const auto du = static_cast<std::size_t>(d);
    const std::int64_t extent = layout.shape[du];
    if (extent > 1 && stride[du] != row_major) return false;
    row_major *= extent;
  }
  return true;
}

const char* kind_name(FusedKind kind) {
  switch (kind) {
    case FusedKind::load: return "load";
    case FusedKind::unary: return "unary";
    case FusedKind::binary: return "binary";
    case FusedKind::binary_scalar: return "binary_scalar";
  }
  return "?";
}

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument("fused program: " + what); }

std::string at(std::size_t i, FusedKind kind) {
  return "instruction " + std::to_string(i) + " (" + kind_name(kind) + ")";
}

}  // namespace

bool FusedLayout::all_contiguous() const noexcept {
  for (std::size_t i = 0; i < strides.size(); ++i)
    if (!input_contiguous(*this, i)) return false;
  return true;
}

// Grammar, one token per item, no separators needed because every token starts with a letter:
//   "n<inputs>s<scalars>d<ndim>" then per input 'c' (contiguous) or 'g' (gathered through strides),
//   then per instruction "L<input>", "U<op>.<a>", "B<op>.<a>.<b>" or "S<op>.<a>.<scalar>",
//   then per output "=<value>", then for a reduction "R<op>.<value>" and 'r' when the reduced
//   rows are contiguous (inner == 1) or 'c' when they are columns.
std::string structure_key(const FusedProgram& program, const FusedLayout& layout) {
  std::string key;
  key.reserve(16 + layout.strides.size() + program.code.size() * 8 + program.outputs.size() * 4);
  key += 'n';
  key += std::to_string(program.num_inputs);
  key += 's';
  key += std::to_string(program.num_scalars);
  key += 'd';
  key += std::to_string(layout.ndim);
  key += ':';
  for (std::size_t i = 0; i < layout.strides.size(); ++i) key += input_contiguous(layout, i) ? 'c' : 'g';
  for (const FusedInstr& in : program.code) {
    switch (in.kind) {
      case FusedKind::load:
        key += 'L';
        key += std::to_string(in.a);
        continue;
      case FusedKind::unary:
        key += 'U';
        key += std::to_string(in.op);
        key += '.';
        key += std::to_string(in.a);
        continue;
      case FusedKind::binary: key += 'B'; break;
      case FusedKind::binary_scalar: key += 'S'; break;
      default: key += '?'; break;  // malformed (validate rejects it); still deterministic
    }
    key += std::to_string(in.op);
    key += '.';
    key += std::to_string(in.a);
    key += '.';
    key += std::to_string(in.b);
  }
  for (std::uint16_t out : program.outputs) {
    key += '=';
    key += std::to_string(out);
  }
  if (program.reduction) {
    key += 'R';
    key += std::to_string(static_cast<unsigned>(program.reduction->op));
    key += '.';
    key += std::to_string(program.reduction->value);
    key += layout.reduce.inner == 1 ? 'r' : 'c';
  }
  return key;
}

void validate(const FusedProgram& program, const FusedLayout& layout) {
  if (program.outputs.empty()) fail("has no outputs");
  if (layout.ndim < 0 || layout.ndim > kMaxDims)
    fail("layout ndim " + std::to_string(layout.ndim) + " is outside [0, " + std::to_string(kMaxDims) + "]");
  for (int d = 0; d < layout.ndim; ++d)
    if (layout.shape[static_cast<std::size_t>(d)] < 0)
      fail("layout dimension " + std::to_string(d) + " has negative extent " +
           std::to_string(layout.shape[static_cast<std::size_t>(d)]));
  if (layout.strides.size() != program.num_inputs)
    fail("layout has strides for " + std::to_string(layout.strides.size()) + " inputs, the program has " +
         std::to_string(program.num_inputs));

  const std::size_t count = program.code.size();
  auto check_operand = [&](std::size_t i, FusedKind kind, const char* which, std::uint16_t value) {
    if (value >= i)
      fail(at(i, kind) + " reads value " + std::to_string(value) + " as its " + which +
           " operand, which is not defined before it");
  };
  for (std::size_t i = 0; i < count; ++i) {
    const FusedInstr& in = program.code[i];
    switch (in.kind) {
      case FusedKind::load:
        if (in.a >= program.num_inputs)
          fail(at(i, in.kind) + " loads input " + std::to_string(in.a) + ", but there are " +
               std::to_string(program.num_inputs) + " inputs");
        break;
      case FusedKind::unary:
        if (in.op >= kUnaryOpCount) fail(at(i, in.kind) + " has op code " + std::to_string(in.op) + ", not a UnaryOp");
        check_operand(i, in.kind, "first", in.a);
        break;
      case FusedKind::binary:
        if (in.op >= kBinaryOpCount)
          fail(at(i, in.kind) + " has op code " + std::to_string(in.op) + ", not a BinaryOp");
        check_operand(i, in.kind, "first", in.a);
        check_operand(i, in.kind, "second", in.b);
        break;
      case FusedKind::binary_scalar:
        if (in.op >= kBinaryOpCount)
          fail(at(i, in.kind) + " has op code " + std::to_string(in.op) + ", not a BinaryOp");
        check_operand(i, in.kind, "first", in.a);
        if (in.b >= program.num_scalars)
          fail(at(i, in.kind) + " reads scalar " + std::to_string(in.b) + ", but there are " +
               std::to_string(program.num_scalars) + " scalars");
        break;
      default:
        fail("instruction " + std::to_string(i) + " has unknown kind " +
             std::to_string(static_cast<unsigned>(in.kind)));
    }
  }
  for (std::size_t j = 0; j < program.outputs.size(); ++j)
    if (program.outputs[j] >= count)
      fail("output " + std::to_string(j) + " is value " + std::to_string(program.outputs[j]) + ", but the program defines " +
           std::to_string(count) + " values");
  if (program.reduction) {
    const FusedReduction& r = *program.reduction;
    if (static_cast<unsigned>(r.op) >= kReduceOpCount)
      fail("reduction has op code " + std::to_string(static_cast<unsigned>(r.op)) + ", not a ReduceOp");
    if (r.value >= count)
      fail("reduction reduces value " + std::to_string(r.value) + ", but the program defines " +
           std::to_string(count) + " values");
    if (program.outputs.size() != 1 || program.outputs[0] != r.value)
      fail("a program with a reduction must have exactly one output, the reduced value " + std::to_string(r.value));
    const FusedLayout::ReduceAxis& axis = layout.reduce;
    if (axis.outer < 0 || axis.n < 0 || axis.inner < 0)
      fail("reduction split [" + std::to_string(axis.outer) + ", " + std::to_string(axis.n) + ", " +
           std::to_string(axis.inner) + "] has a negative size");
    if (axis.outer * axis.n * axis.inner != layout.numel())
      fail("reduction split [" + std::to_string(axis.outer) + ", " + std::to_string(axis.n) + ", " +
           std::to_string(axis.inner) + "] does not cover the domain's " + std::to_string(layout.numel()) +
           " elements");
  }
}

}  // namespace defer::kernels
