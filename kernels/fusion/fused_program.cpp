#include "fusion/fused_program.hpp"

#include <cstddef>
#include <stdexcept>
#include <string>

namespace defer::kernels {
namespace {

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument("fused program: " + what); }

std::string str(std::int64_t v) { return std::to_string(v); }

std::string at(std::size_t i) { return "instruction " + std::to_string(i); }

bool known_dtype(DType t) { return static_cast<std::size_t>(t) < detail::kDTypeCount; }

void check_caps(const FusedProgram& program) {
  auto cap = [](std::size_t have, int limit, const char* what) {
    if (have > static_cast<std::size_t>(limit))
      fail(str(static_cast<std::int64_t>(have)) + " " + what + " exceed the cap of " + str(limit));
  };
  cap(program.num_inputs, kMaxFusedInputs, "inputs");
  cap(program.outputs.size(), kMaxFusedOutputs, "outputs");
  cap(program.num_scalars, kMaxFusedScalars, "scalars");
  cap(program.code.size(), kMaxFusedInstructions, "instructions");
}

}  // namespace

InputAccess input_access(const FusedLayout& layout, std::size_t input) noexcept {
  const auto& strides = layout.strides[input];
  bool flat = true;
  bool uniform = true;
  std::int64_t expected = 1;
  for (int d = layout.ndim - 1; d >= 0; --d) {
    const auto u = static_cast<std::size_t>(d);
    const std::int64_t extent = layout.shape[u];
    if (extent != 1) {  // dims of extent 1 never move the index: their strides do not matter
      if (strides[u] != expected) flat = false;
      if (strides[u] != 0) uniform = false;
    }
    expected *= extent;
  }
  if (flat) return InputAccess::flat;
  return uniform ? InputAccess::uniform : InputAccess::strided;
}

void validate(const FusedProgram& program, const FusedLayout& layout) {
  check_caps(program);
  if (program.outputs.empty()) fail("has no outputs");
  if (layout.ndim < 0 || layout.ndim > kMaxDims)
    fail("layout ndim " + str(layout.ndim) + " is outside [0, " + str(kMaxDims) + "]");
  for (int d = 0; d < layout.ndim; ++d)
    if (layout.shape[static_cast<std::size_t>(d)] < 0)
      fail("layout dimension " + str(d) + " has negative extent " + str(layout.shape[static_cast<std::size_t>(d)]));
  if (layout.strides.size() != program.num_inputs)
    fail("layout has strides for " + str(static_cast<std::int64_t>(layout.strides.size())) + " inputs, the program has " +
         str(program.num_inputs));
  if (program.input_dtypes.size() != program.num_inputs || program.output_dtypes.size() != program.outputs.size())
    fail("dtypes are not given for every input and output");
  for (DType t : program.input_dtypes)
    if (!known_dtype(t)) fail("an input has unknown dtype code " + str(static_cast<int>(t)));
  for (DType t : program.output_dtypes)
    if (!known_dtype(t)) fail("an output has unknown dtype code " + str(static_cast<int>(t)));

  const std::size_t count = program.code.size();
  for (std::size_t i = 0; i < count; ++i) {
    const FusedInstr& in = program.code[i];
    if (in.kind == FusedKind::load) {
      if (in.a >= program.num_inputs)
        fail(at(i) + " (load) loads input " + str(in.a) + ", but there are " + str(program.num_inputs) + " inputs");
      continue;
    }
    if (in.kind != FusedKind::op) fail(at(i) + " has unknown kind " + str(static_cast<int>(in.kind)));
    if (static_cast<unsigned>(in.op) >= kElementwiseOpCount)
      fail(at(i) + " has op code " + str(static_cast<int>(in.op)) + ", not an element-wise op");
    const ElementwiseInfo& op = info(in.op);
    const std::uint16_t operands[] = {in.a, in.b, in.c};
    for (int k = 0; k < op.tensors; ++k)
      if (operands[k] >= i)
        fail(at(i) + " (" + op.name + ") reads value " + str(operands[k]) + " as operand " + str(k + 1) +
             ", which is not defined before it");
    if (op.scalars > 0 && in.s + op.scalars > program.num_scalars)
      fail(at(i) + " (" + op.name + ") reads scalars " + str(in.s) + ".." + str(in.s + op.scalars - 1) + ", but there are " +
           str(program.num_scalars) + " scalars");
    if (!known_dtype(in.dtype))
      fail(at(i) + " (" + op.name + ") has a result of unknown dtype code " + str(static_cast<int>(in.dtype)));
  }
  for (std::size_t j = 0; j < program.outputs.size(); ++j)
    if (program.outputs[j] >= count)
      fail("output " + str(static_cast<std::int64_t>(j)) + " is value " + str(program.outputs[j]) +
           ", but the program defines " + str(static_cast<std::int64_t>(count)) + " values");
  if (program.reduction) {
    const FusedReduction& r = *program.reduction;
    if (r.op != ReduceOp::sum && r.op != ReduceOp::mean && r.op != ReduceOp::max && r.op != ReduceOp::min)
      fail("reduction has op code " + str(static_cast<int>(r.op)) + ", not sum, mean, max or min");
    if (r.value >= count)
      fail("reduction reduces value " + str(r.value) + ", but the program defines " + str(static_cast<std::int64_t>(count)) +
           " values");
    if (program.outputs.size() != 1 || program.outputs[0] != r.value)
      fail("a program with a reduction must have exactly one output, the reduced value " + str(r.value));
    const FusedLayout::ReduceAxis& axis = layout.reduce;
    std::string split = "[";  // (built piecewise: GCC 12 warns falsely of overlapping copies otherwise)
    split += str(axis.outer) + ", " + str(axis.n) + ", " + str(axis.inner) + "]";
    if (axis.outer < 0 || axis.n < 0 || axis.inner < 0) fail("reduction split " + split + " has a negative size");
    if (axis.outer * axis.n * axis.inner != layout.numel())
      fail("reduction split " + split + " does not cover the domain's " + str(layout.numel()) + " elements");
  }
}

// Grammar, one token per item: "n<inputs>s<scalars>d<ndim>:" (ndim 0 unless an input is strided),
// per input its access ('f', 'u', 'g') and dtype code, then per instruction "L<input>" or
// "O<op>" with ".<value>" per operand and "s<scalar>" when it has scalars ("T<dtype>" after an op
// whose result is not f32), per output "=<value>.<dtype>", and for a reduction
// "R<op>.<value>" and 'r' when the reduced rows are contiguous (inner == 1) or 'c' when they are
// columns.
std::string structure_key(const FusedProgram& program, const FusedLayout& layout) {
  validate(program, layout);
  std::string key;
  key.reserve(16 + 3 * program.num_inputs + program.code.size() * 12 + program.outputs.size() * 5);
  // One token: a tag and a number. (Appended piecewise: GCC 12 warns falsely of overlapping copies
  // in `char + std::string` chains.)
  auto put = [&key](char tag, long long v) {
    key += tag;
    key += std::to_string(v);
  };
  bool strided = false;
  for (std::size_t i = 0; i < program.num_inputs; ++i) strided = strided || input_access(layout, i) == InputAccess::strided;
  put('n', program.num_inputs);
  put('s', program.num_scalars);
  put('d', strided ? layout.ndim : 0);
  key += ':';
  for (std::size_t i = 0; i < program.num_inputs; ++i) {
    const InputAccess access = input_access(layout, i);
    put(access == InputAccess::flat ? 'f' : access == InputAccess::uniform ? 'u' : 'g',
        static_cast<int>(program.input_dtypes[i]));
  }
  for (const FusedInstr& in : program.code) {
    if (in.kind == FusedKind::load) {
      put('L', in.a);
      continue;
    }
    // Only the fields the op reads: programs that differ in unread fields generate the same source.
    const ElementwiseInfo& op = info(in.op);
    const std::uint16_t operands[] = {in.a, in.b, in.c};
    put('O', static_cast<int>(in.op));
    for (int k = 0; k < op.tensors; ++k) put('.', operands[k]);
    if (op.scalars > 0) put('s', in.s);
    if (in.dtype != DType::f32) put('T', static_cast<int>(in.dtype));
  }
  for (std::size_t j = 0; j < program.outputs.size(); ++j) {
    put('=', program.outputs[j]);
    put('.', static_cast<int>(program.output_dtypes[j]));
  }
  if (program.reduction) {
    put('R', static_cast<int>(program.reduction->op));
    put('.', program.reduction->value);
    key += layout.reduce.inner == 1 ? 'r' : 'c';
  }
  return key;
}

}  // namespace defer::kernels
