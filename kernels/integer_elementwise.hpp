#pragma once
// Element-wise ops on integer data, computed exactly in 64-bit integers: comparisons, where,
// masked_fill and casts between integer dtypes. (Fused programs compute in f32, which holds
// integers exactly only up to 2^24, so the op layer sends these ops here: see integer_path().)
// One definition for both backends: the CPU loop (runtime/cpu/cpu_backend.cpp) and the CUDA kernel
// (kernels/cuda/integer_elementwise.cu) call integer_op per element. C++17, host and device.
#include <cstdint>

#include <defer/dtype.hpp>

#include "elementwise_math.h"
#include "op_table.hpp"

namespace defer::kernels {

// Whether an element-wise op with these data and result dtypes must be computed exactly here: its
// data operands are i32 or i64, unless it is a cast to f32 or boolean (which a fused program does
// exactly: its load rounds once, as the cast must). A cast to f16 or bf16 comes here: through f32 it
// would round twice.
constexpr bool integer_path(ElementwiseOp op, DType data, DType result) {
  return is_integer(data) && !(op == ElementwiseOp::to && (result == DType::f32 || result == DType::boolean));
}

// One element: a, b, c are the operands (booleans as 0 or 1), s the scalar already converted to the
// data's dtype.
DEFER_MATH std::int64_t integer_op(ElementwiseOp op, std::int64_t a, std::int64_t b, std::int64_t c, std::int64_t s) {
  switch (op) {
    case ElementwiseOp::eq: return a == b;
    case ElementwiseOp::ne: return a != b;
    case ElementwiseOp::lt: return a < b;
    case ElementwiseOp::le: return a <= b;
    case ElementwiseOp::gt: return a > b;
    case ElementwiseOp::ge: return a >= b;
    case ElementwiseOp::eq_scalar: return a == s;
    case ElementwiseOp::ne_scalar: return a != s;
    case ElementwiseOp::lt_scalar: return a < s;
    case ElementwiseOp::le_scalar: return a <= s;
    case ElementwiseOp::gt_scalar: return a > s;
    case ElementwiseOp::ge_scalar: return a >= s;
    case ElementwiseOp::where: return a != 0 ? b : c;
    case ElementwiseOp::masked_fill: return b != 0 ? s : a;
    default: return a;  // to: the store converts
  }
}

// Loads element i of an integer or boolean buffer of dtype as int64.
DEFER_MATH std::int64_t integer_load(const void* p, DType dtype, std::int64_t i) {
  switch (dtype) {
    case DType::i32: return static_cast<const std::int32_t*>(p)[i];
    case DType::i64: return static_cast<const std::int64_t*>(p)[i];
    case DType::boolean: return static_cast<const std::uint8_t*>(p)[i] != 0;
    default: return 0;  // not an integer dtype: never sent here
  }
}

// v as an f32 rounded to odd: the 24 leading bits of |v|, the last one set when any bit below was.
// Rounding that to f16 or bf16 (nearest even) gives what rounding v itself would: the sticky bit
// decides the ties the first rounding would otherwise have made.
DEFER_MATH float integer_to_float_odd(std::int64_t v) {
  const std::uint64_t m = v < 0 ? 0ull - static_cast<std::uint64_t>(v) : static_cast<std::uint64_t>(v);
  int shift = 0;
  while ((m >> shift) >= (1ull << 24)) ++shift;
  std::uint64_t kept = m >> shift;
  if ((kept << shift) != m) kept |= 1u;
  const float f = ldexpf(static_cast<float>(kept), shift);  // exact: kept < 2^24
  return v < 0 ? -f : f;
}

// Stores v as dtype: i64 -> i32 wraps (two's complement, as torch), boolean is v != 0, f16 and bf16
// round to nearest even once.
DEFER_MATH void integer_store(void* p, DType dtype, std::int64_t i, std::int64_t v) {
  switch (dtype) {
    case DType::i32: static_cast<std::int32_t*>(p)[i] = static_cast<std::int32_t>(static_cast<std::uint32_t>(v)); return;
    case DType::i64: static_cast<std::int64_t*>(p)[i] = v; return;
    case DType::boolean: static_cast<std::uint8_t*>(p)[i] = v != 0; return;
    case DType::f16: static_cast<std::uint16_t*>(p)[i] = defer_store_f16(integer_to_float_odd(v)); return;
    case DType::bf16: static_cast<std::uint16_t*>(p)[i] = defer_store_bf16(integer_to_float_odd(v)); return;
    case DType::f32: return;  // never sent here (integer_path)
  }
}

// The scalar of a scalar op on integer data, as the data's dtype (truncated, saturated; NaN is 0).
inline std::int64_t integer_scalar(float s, DType data) {
  return data == DType::i32 ? defer_store_i32(s) : defer_store_i64(s);
}

}  // namespace defer::kernels
