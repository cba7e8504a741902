#pragma once
// The op table: every op defer knows, once. The enums, their names and counts, the fused-program
// validator's bounds, the CPU and CUDA element-wise dispatch, the generated CUDA source, the
// table-driven tests and the fuzz grammar are all generated from these lists, so adding an
// element-wise op is one row here, its function in kernels/elementwise_math.h and its declaration in
// include/defer/ops.hpp (docs/adding_an_op.md). C++17: CUDA sources include it.
#include <cstdint>

// Element-wise ops. X(id, api, tensors, scalars, fn, result, data)
//   id       the enumerator of ElementwiseOp
//   api      the public function (include/defer/ops.hpp), also the op's name in errors, explain()
//            and DEFER_LOG; the tensor and scalar forms of an op share it
//   tensors  tensor operands; scalars: float operands after them (runtime values, never in the code)
//   fn       the function of kernels/elementwise_math.h computing one element in f32:
//            fn(tensor operands..., scalars...)
//   result   same: the data operands' dtype; boolean: a comparison; cast: the dtype the op names
//   data     floating: data operands are f32, f16 or bf16; any: any dtype
// Operand roles: `where`'s first operand is a boolean condition and `masked_fill`'s second a
// boolean mask (see condition_operand below); every other operand is data.
// Never reorder rows for the disk cache's sake: op codes are not part of a cached kernel's key,
// the generated source is (kernels/cuda/fused/kernel_cache.cpp).
#define DEFER_ELEMENTWISE_OPS(X)                                  \
  X(neg, neg, 1, 0, defer_neg, same, floating)                    \
  X(abs, abs, 1, 0, defer_abs, same, floating)                    \
  X(exp, exp, 1, 0, defer_exp, same, floating)                    \
  X(log, log, 1, 0, defer_log, same, floating)                    \
  X(sqrt, sqrt, 1, 0, defer_sqrt, same, floating)                 \
  X(rsqrt, rsqrt, 1, 0, defer_rsqrt, same, floating)              \
  X(tanh, tanh, 1, 0, defer_tanh, same, floating)                 \
  X(sigmoid, sigmoid, 1, 0, defer_sigmoid, same, floating)        \
  X(relu, relu, 1, 0, defer_relu, same, floating)                 \
  X(silu, silu, 1, 0, defer_silu, same, floating)                 \
  X(gelu, gelu, 1, 0, defer_gelu, same, floating)                 \
  X(gelu_tanh, gelu_tanh, 1, 0, defer_gelu_tanh, same, floating)  \
  X(erf, erf, 1, 0, defer_erf, same, floating)                    \
  X(softplus, softplus, 1, 0, defer_softplus, same, floating)     \
  X(add, add, 2, 0, defer_add, same, floating)                    \
  X(sub, sub, 2, 0, defer_sub, same, floating)                    \
  X(mul, mul, 2, 0, defer_mul, same, floating)                    \
  X(div, div, 2, 0, defer_div, same, floating)                    \
  X(maximum, maximum, 2, 0, defer_maximum, same, floating)        \
  X(minimum, minimum, 2, 0, defer_minimum, same, floating)        \
  X(add_scalar, add, 1, 1, defer_add, same, floating)             \
  X(sub_scalar, sub, 1, 1, defer_sub, same, floating)             \
  X(mul_scalar, mul, 1, 1, defer_mul, same, floating)             \
  X(div_scalar, div, 1, 1, defer_div, same, floating)             \
  X(maximum_scalar, maximum, 1, 1, defer_maximum, same, floating) \
  X(minimum_scalar, minimum, 1, 1, defer_minimum, same, floating) \
  X(pow_scalar, pow, 1, 1, defer_pow, same, floating)             \
  X(clamp, clamp, 1, 2, defer_clamp, same, floating)              \
  X(eq, eq, 2, 0, defer_eq, boolean, any)                         \
  X(ne, ne, 2, 0, defer_ne, boolean, any)                         \
  X(lt, lt, 2, 0, defer_lt, boolean, any)                         \
  X(le, le, 2, 0, defer_le, boolean, any)                         \
  X(gt, gt, 2, 0, defer_gt, boolean, any)                         \
  X(ge, ge, 2, 0, defer_ge, boolean, any)                         \
  X(eq_scalar, eq, 1, 1, defer_eq, boolean, any)                  \
  X(ne_scalar, ne, 1, 1, defer_ne, boolean, any)                  \
  X(lt_scalar, lt, 1, 1, defer_lt, boolean, any)                  \
  X(le_scalar, le, 1, 1, defer_le, boolean, any)                  \
  X(gt_scalar, gt, 1, 1, defer_gt, boolean, any)                  \
  X(ge_scalar, ge, 1, 1, defer_ge, boolean, any)                  \
  X(where, where, 3, 0, defer_where, same, any)                   \
  X(masked_fill, masked_fill, 2, 1, defer_masked_fill, same, any) \
  X(to, to, 1, 0, defer_round, cast, any)

// Reductions over one dim. X(id, name, result): same (the input's dtype) or index (i64).
#define DEFER_REDUCE_OPS(X) \
  X(sum, sum, same)         \
  X(mean, mean, same)       \
  X(max, max, same)         \
  X(min, min, same)         \
  X(argmax, argmax, index)

// The kinds of graph node. X(id, name): element-wise nodes are one kind whatever their op.
#define DEFER_OP_KINDS(X)         \
  X(elementwise, "elementwise")   \
  X(reduce, "reduce")             \
  X(softmax, "softmax")           \
  X(layer_norm, "layer_norm")     \
  X(matmul, "matmul")             \
  X(view, "view")                 \
  X(copy, "contiguous")           \
  X(cat, "cat")                   \
  X(index_select, "index_select") \
  X(embedding, "embedding")       \
  X(to_device, "to")

namespace defer::kernels {

enum class ElementwiseOp : std::uint8_t {
#define DEFER_ENUM_ROW(id, ...) id,
  DEFER_ELEMENTWISE_OPS(DEFER_ENUM_ROW)
};
enum class ReduceOp : std::uint8_t { DEFER_REDUCE_OPS(DEFER_ENUM_ROW) };
enum class OpKind : std::uint8_t { DEFER_OP_KINDS(DEFER_ENUM_ROW) };
#undef DEFER_ENUM_ROW

enum class OpResult : std::uint8_t { same, boolean, cast, index };
enum class OpData : std::uint8_t { floating, any };

struct ElementwiseInfo {
  const char* id;    // the enumerator's name ("add_scalar")
  const char* name;  // the public name ("add")
  int tensors, scalars;
  const char* fn;  // the function in kernels/elementwise_math.h
  OpResult result;
  OpData data;
};

inline constexpr ElementwiseInfo kElementwiseOps[] = {
#define DEFER_INFO_ROW(id, api, tensors, scalars, fn, result, data) \
  {#id, #api, tensors, scalars, #fn, OpResult::result, OpData::data},
    DEFER_ELEMENTWISE_OPS(DEFER_INFO_ROW)
#undef DEFER_INFO_ROW
};
inline constexpr unsigned kElementwiseOpCount = sizeof(kElementwiseOps) / sizeof(kElementwiseOps[0]);

struct ReduceInfo {
  const char* name;
  OpResult result;
};
inline constexpr ReduceInfo kReduceOps[] = {
#define DEFER_REDUCE_ROW(id, name, result) {#name, OpResult::result},
    DEFER_REDUCE_OPS(DEFER_REDUCE_ROW)
#undef DEFER_REDUCE_ROW
};
inline constexpr unsigned kReduceOpCount = sizeof(kReduceOps) / sizeof(kReduceOps[0]);

inline constexpr const char* kOpKindNames[] = {
#define DEFER_KIND_ROW(id, name) name,
    DEFER_OP_KINDS(DEFER_KIND_ROW)
#undef DEFER_KIND_ROW
};
inline constexpr unsigned kOpKindCount = sizeof(kOpKindNames) / sizeof(kOpKindNames[0]);

constexpr const ElementwiseInfo& info(ElementwiseOp op) noexcept { return kElementwiseOps[static_cast<unsigned>(op)]; }
constexpr const char* name(ElementwiseOp op) noexcept { return info(op).name; }
constexpr const char* name(ReduceOp op) noexcept { return kReduceOps[static_cast<unsigned>(op)].name; }
constexpr const char* name(OpKind kind) noexcept { return kOpKindNames[static_cast<unsigned>(kind)]; }

// The operand that is a boolean condition or mask, or -1: where(cond, a, b), masked_fill(a, mask, v).
constexpr int condition_operand(ElementwiseOp op) noexcept {
  return op == ElementwiseOp::where ? 0 : op == ElementwiseOp::masked_fill ? 1 : -1;
}
// The first data operand (not a condition): its dtype is the op's data dtype.
constexpr unsigned data_operand(ElementwiseOp op) noexcept { return condition_operand(op) == 0 ? 1 : 0; }

inline constexpr int kMaxDims = 8;
// The most tensor operands and scalars of one element-wise op.
inline constexpr int kMaxOpTensors = 3;
inline constexpr int kMaxOpScalars = 2;

}  // namespace defer::kernels
