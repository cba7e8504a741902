#pragma once
// The one dtype dispatch of the kernels, generated from the dtype table (include/defer/dtype.hpp):
// dispatch(dtype, fn) calls fn with a tag whose `storage` is the C type of one element and whose
// load / store / round are that dtype's conversions from kernels/elementwise_math.h. A dtype added
// to the table is dispatched here without a change. C++17: CUDA sources include it.
#include <stdexcept>
#include <string>

#include <defer/dtype.hpp>

#include "elementwise_math.h"

namespace defer::kernels {

template <DType D>
struct DTypeTag;

#define DEFER_DTYPE_TAG(name, ctype, bytes, dl_code, dl_bits, kind)                                    \
  template <>                                                                                        \
  struct DTypeTag<DType::name> {                                                                     \
    using storage = ctype;                                                                           \
    static constexpr DType dtype = DType::name;                                                      \
    static constexpr bool floating = kind == 0; /* usable in device code, unlike is_floating() */    \
    static_assert(sizeof(storage) == bytes, "the dtype table's size disagrees with its C type");     \
    static DEFER_MATH float load(storage v) { return defer_load_##name(v); }                         \
    static DEFER_MATH storage store(float x) { return static_cast<storage>(defer_store_##name(x)); } \
    static DEFER_MATH float round(float x) { return defer_round_##name(x); }                         \
  };
DEFER_DTYPE_TABLE(DEFER_DTYPE_TAG)
#undef DEFER_DTYPE_TAG

// Calls fn(DTypeTag<t>{}) and returns what it returns.
template <class F>
decltype(auto) dispatch(DType t, F&& fn) {
  switch (t) {
#define DEFER_DTYPE_CASE(name, ...) \
  case DType::name: return fn(DTypeTag<DType::name>{});
    DEFER_DTYPE_TABLE(DEFER_DTYPE_CASE)
#undef DEFER_DTYPE_CASE
  }
  throw std::invalid_argument("unknown dtype code " + std::to_string(static_cast<int>(t)));
}

}  // namespace defer::kernels
