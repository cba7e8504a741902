#pragma once
// Test support: the PUBLIC function (include/defer/ops.hpp) of an op-table row, called with tensor
// operands `t` and scalars `s`: generated from the table's columns (`api` names the function,
// `tensors` and `scalars` pick the overload, a cast takes `cast_to`), so a row of a new arity is a
// build error here and a new row needs nothing.
#include <stdexcept>
#include <vector>

#include <defer/ops.hpp>

#include "op_table.hpp"

namespace defer::testing {

inline TensorAwait call_public(kernels::ElementwiseOp op, const std::vector<TensorAwait>& t, const std::vector<float>& s,
                               DType cast_to = DType::f32) {
#define DEFER_CALL_1_0(api) defer::api(t.at(0))
#define DEFER_CALL_2_0(api) defer::api(t.at(0), t.at(1))
#define DEFER_CALL_3_0(api) defer::api(t.at(0), t.at(1), t.at(2))
#define DEFER_CALL_1_1(api) defer::api(t.at(0), s.at(0))
#define DEFER_CALL_1_2(api) defer::api(t.at(0), s.at(0), s.at(1))
#define DEFER_CALL_2_1(api) defer::api(t.at(0), t.at(1), s.at(0))
#define DEFER_CALL_same(api, tensors, scalars) DEFER_CALL_##tensors##_##scalars(api)
#define DEFER_CALL_boolean(api, tensors, scalars) DEFER_CALL_##tensors##_##scalars(api)
#define DEFER_CALL_cast(api, tensors, scalars) defer::api(t.at(0), cast_to)
#define DEFER_CALL_ROW(id, api, tensors, scalars, fn, result, data) \
  case kernels::ElementwiseOp::id: return DEFER_CALL_##result(api, tensors, scalars);
  switch (op) { DEFER_ELEMENTWISE_OPS(DEFER_CALL_ROW) }
#undef DEFER_CALL_ROW
#undef DEFER_CALL_cast
#undef DEFER_CALL_boolean
#undef DEFER_CALL_same
#undef DEFER_CALL_2_1
#undef DEFER_CALL_1_2
#undef DEFER_CALL_1_1
#undef DEFER_CALL_3_0
#undef DEFER_CALL_2_0
#undef DEFER_CALL_1_0
  throw std::logic_error("call_public: not an op of the op table");
}

}  // namespace defer::testing
