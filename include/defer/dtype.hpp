#pragma once
// Data types (docs/api.md sections 3 and 9). One table lists every dtype with what varies per dtype; the
// enum, dtype_size, dtype_name, the DLPack codes and the dtype dispatch of the kernels
// (kernels/dtype_dispatch.hpp) are all generated from it, so adding a dtype is one row here plus
// its storage type's conversions (kernels/elementwise_math.h). C++17: CUDA sources include it.
#include <cstddef>
#include <cstdint>

namespace defer {

// X(name, C storage type, bytes, DLPack type code, DLPack bits, kind), kind: 0 floating, 1 integer,
// 2 boolean. f16 (IEEE binary16) and bf16 are stored as their bit patterns; arithmetic on them is
// done in f32 (docs/api.md section 9) with the conversions of kernels/elementwise_math.h. DLPack codes:
// kDLInt 0, kDLUInt 1, kDLFloat 2, kDLBfloat 4, kDLBool 6.
#define DEFER_DTYPE_TABLE(X)           \
  X(f32, float, 4, 2, 32, 0)           \
  X(i32, std::int32_t, 4, 0, 32, 1)    \
  X(f16, std::uint16_t, 2, 2, 16, 0)   \
  X(bf16, std::uint16_t, 2, 4, 16, 0)  \
  X(i64, std::int64_t, 8, 0, 64, 1)    \
  X(boolean, std::uint8_t, 1, 6, 8, 2)

enum class DType : std::uint8_t {
#define DEFER_DTYPE_ENUM(name, ctype, bytes, dl_code, dl_bits, kind) name,
  DEFER_DTYPE_TABLE(DEFER_DTYPE_ENUM)
#undef DEFER_DTYPE_ENUM
};

namespace detail {
struct DTypeInfo {
  const char* name;
  std::size_t size;
  std::uint8_t dlpack_code, dlpack_bits;
  int kind;  // 0 floating, 1 integer, 2 boolean
};
inline constexpr DTypeInfo kDTypes[] = {
#define DEFER_DTYPE_INFO(name, ctype, bytes, dl_code, dl_bits, kind) {#name, bytes, dl_code, dl_bits, kind},
    DEFER_DTYPE_TABLE(DEFER_DTYPE_INFO)
#undef DEFER_DTYPE_INFO
};
inline constexpr std::size_t kDTypeCount = sizeof(kDTypes) / sizeof(kDTypes[0]);
constexpr const DTypeInfo& info(DType t) noexcept { return kDTypes[static_cast<std::size_t>(t)]; }
}  // namespace detail

// Bytes of one element: 4, 4, 2, 2, 8, 1.
constexpr std::size_t dtype_size(DType t) noexcept { return detail::info(t).size; }
// "f32", "i32", "f16", "bf16", "i64", "boolean".
constexpr const char* dtype_name(DType t) noexcept { return detail::info(t).name; }
// f32, f16 and bf16.
constexpr bool is_floating(DType t) noexcept { return detail::info(t).kind == 0; }
// i32 and i64.
constexpr bool is_integer(DType t) noexcept { return detail::info(t).kind == 1; }

}  // namespace defer
