// index_select and embedding on the CPU: a validation pass over the indices, then row copies.
#include <cstdint>
#include <cstring>

#include "cpu/ops.hpp"

namespace defer::kernels::cpu {
namespace {

template <class I>
std::int64_t first_out_of_range(const I* index, std::int64_t count, std::int64_t extent) {
  for (std::int64_t j = 0; j < count; ++j)
    if (index[j] < 0 || static_cast<std::int64_t>(index[j]) >= extent) return j;
  return -1;
}

template <class I>
void gather_rows(const unsigned char* x, std::size_t row_bytes, const I* index, std::int64_t outer,
                 std::int64_t extent, std::int64_t count, unsigned char* out) {
  for (std::int64_t o = 0; o < outer; ++o) {
    const unsigned char* src = x + static_cast<std::size_t>(o * extent) * row_bytes;
    unsigned char* dst = out + static_cast<std::size_t>(o * count) * row_bytes;
    for (std::int64_t j = 0; j < count; ++j)
      std::memcpy(dst + static_cast<std::size_t>(j) * row_bytes, src + static_cast<std::size_t>(index[j]) * row_bytes,
                  row_bytes);
  }
}

template <class I>
std::int64_t run(const void* x, std::size_t element_bytes, const I* index, std::int64_t outer, std::int64_t extent,
                 std::int64_t count, std::int64_t inner, void* out) {
  const std::int64_t bad = first_out_of_range(index, count, extent);
  if (bad >= 0 || element_bytes * static_cast<std::size_t>(inner) == 0) return bad;  // (empty rows: nothing to copy)
  gather_rows(static_cast<const unsigned char*>(x), element_bytes * static_cast<std::size_t>(inner), index, outer,
              extent, count, static_cast<unsigned char*>(out));
  return -1;
}

}  // namespace

std::int64_t index_select(const void* x, std::size_t element_bytes, const void* index, DType index_dtype,
                          std::int64_t outer, std::int64_t extent, std::int64_t count, std::int64_t inner, void* out) {
  if (index_dtype == DType::i32)
    return run(x, element_bytes, static_cast<const std::int32_t*>(index), outer, extent, count, inner, out);
  return run(x, element_bytes, static_cast<const std::int64_t*>(index), outer, extent, count, inner, out);
}

}  // namespace defer::kernels::cpu
