#pragma once
// Test support: the lists of element-wise ops the tests iterate, taken from the op table, and the
// one-op CPU kernels the kernel tests call. A single element-wise op runs as a one-instruction
// fused program (cpu/fused.hpp) in the runtime; these helpers build exactly that.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu/fused.hpp"
#include "fusion/fused_program.hpp"
#include "op_table.hpp"

namespace defer::testing {

using kernels::ElementwiseOp;
using UnaryOp = kernels::ElementwiseOp;
using BinaryOp = kernels::ElementwiseOp;

// The rows of the op table that satisfy pred(info).
template <class Pred>
std::vector<ElementwiseOp> ops_where(Pred pred) {
  std::vector<ElementwiseOp> ops;
  for (unsigned i = 0; i < kernels::kElementwiseOpCount; ++i)
    if (pred(kernels::kElementwiseOps[i])) ops.push_back(static_cast<ElementwiseOp>(i));
  return ops;
}

// f32 math ops of one tensor operand (neg ... softplus) and of two (add ... minimum).
inline const std::vector<ElementwiseOp> kUnaryOps = ops_where([](const kernels::ElementwiseInfo& i) {
  return i.tensors == 1 && i.scalars == 0 && i.result == kernels::OpResult::same && i.data == kernels::OpData::floating;
});
inline const std::vector<ElementwiseOp> kBinaryOps = ops_where([](const kernels::ElementwiseInfo& i) {
  return i.tensors == 2 && i.scalars == 0 && i.result == kernels::OpResult::same && i.data == kernels::OpData::floating;
});

// f32 math ops of one tensor and one scalar operand (add_scalar ... pow_scalar).
inline const std::vector<ElementwiseOp> kScalarOps = ops_where([](const kernels::ElementwiseInfo& i) {
  return i.tensors == 1 && i.scalars == 1 && i.result == kernels::OpResult::same && i.data == kernels::OpData::floating;
});

// The tensor-scalar row of a binary op (add -> add_scalar).
inline ElementwiseOp scalar_form(ElementwiseOp binary) {
  const std::string api = kernels::name(binary);
  for (ElementwiseOp op : ops_where([&](const kernels::ElementwiseInfo& i) {
         return i.tensors == 1 && i.scalars == 1 && api == i.name;
       }))
    return op;
  throw std::invalid_argument(api + " has no scalar form");
}

inline kernels::FusedInstr load(int input) {
  kernels::FusedInstr in;
  in.kind = kernels::FusedKind::load;
  in.a = static_cast<std::uint16_t>(input);
  return in;
}
// op of values a, b, c (as many as it takes) and scalars s, s + 1, ..., an f32 result
inline kernels::FusedInstr op_instr(ElementwiseOp op, int a, int b = 0, int c = 0, int s = 0) {
  return {kernels::FusedKind::op, op, DType::f32, static_cast<std::uint16_t>(a), static_cast<std::uint16_t>(b),
          static_cast<std::uint16_t>(c), static_cast<std::uint16_t>(s)};
}

// How the inputs of a binary op are indexed by the output's row-major multi-index (stride 0 where
// an input is broadcast).
struct Broadcast {
  int ndim = 0;
  std::int64_t shape[kernels::kMaxDims] = {};
  std::int64_t stride[2][kernels::kMaxDims] = {};
};

namespace one_op {

// A one-instruction f32 program over n contiguous elements (or bc's layout), run by the CPU
// interpreter.
inline void run(ElementwiseOp op, const std::vector<const float*>& in, float* out, std::int64_t n, const float* scalars,
                const Broadcast* bc = nullptr) {
  kernels::FusedProgram p;
  for (std::size_t i = 0; i < in.size(); ++i) {
    p.code.push_back(load(static_cast<int>(i)));
    p.input_dtypes.push_back(DType::f32);
  }
  p.code.push_back(op_instr(op, 0, 1, 2, 0));
  p.outputs = {static_cast<std::uint16_t>(in.size())};
  p.output_dtypes = {DType::f32};
  p.num_inputs = static_cast<std::uint16_t>(in.size());
  p.num_scalars = static_cast<std::uint16_t>(kernels::info(op).scalars);
  kernels::FusedLayout l;
  if (bc != nullptr) {
    l.ndim = bc->ndim;
    for (int d = 0; d < bc->ndim; ++d) l.shape[static_cast<std::size_t>(d)] = bc->shape[d];
    for (std::size_t i = 0; i < in.size(); ++i) {
      l.strides.emplace_back();
      for (int d = 0; d < bc->ndim; ++d) l.strides.back()[static_cast<std::size_t>(d)] = bc->stride[i][d];
    }
  } else {
    l.ndim = 1;
    l.shape[0] = n;
    for (std::size_t i = 0; i < in.size(); ++i) l.strides.push_back({1});
  }
  kernels::validate(p, l);
  std::vector<const void*> inputs(in.begin(), in.end());
  void* outputs[] = {out};
  kernels::cpu::run_fused(p, l, inputs.data(), outputs, scalars);
}

inline void unary(ElementwiseOp op, const float* x, float* out, std::int64_t n) { run(op, {x}, out, n, nullptr); }
// op is a tensor-scalar op (add_scalar).
inline void binary_scalar(ElementwiseOp op, const float* x, float s, float* out, std::int64_t n) {
  run(op, {x}, out, n, &s);
}
// bc == nullptr: a, b and out all have n elements.
inline void binary(ElementwiseOp op, const float* a, const float* b, float* out, std::int64_t n, const Broadcast* bc) {
  run(op, {a, b}, out, n, nullptr, bc);
}

}  // namespace one_op
}  // namespace defer::testing
