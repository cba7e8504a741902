#include "cpu/fill.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "dtype_dispatch.hpp"

namespace defer::kernels::cpu {
namespace {

template <class T>
void fill_as(void* data, std::int64_t n, std::uint64_t bits) {
  T value;
  std::memcpy(&value, &bits, sizeof(T));  // the low bytes on a little-endian host
  std::fill_n(static_cast<T*>(data), n, value);
}

}  // namespace

void fill(void* data, std::int64_t n, std::size_t element_bytes, std::uint64_t bits) {
  switch (element_bytes) {
    case 1: return fill_as<std::uint8_t>(data, n, bits);
    case 2: return fill_as<std::uint16_t>(data, n, bits);
    case 4: return fill_as<std::uint32_t>(data, n, bits);
    case 8: return fill_as<std::uint64_t>(data, n, bits);
    default: throw std::invalid_argument("fill: no kernel for elements of " + std::to_string(element_bytes) + " bytes");
  }
}

void arange(void* data, std::int64_t n, DType dtype) {
  dispatch(dtype, [&](auto tag) {
    using Tag = decltype(tag);
    auto* out = static_cast<typename Tag::storage*>(data);
    for (std::int64_t i = 0; i < n; ++i) {
      if constexpr (is_floating(Tag::dtype)) out[i] = Tag::store(static_cast<float>(i));
      else out[i] = static_cast<typename Tag::storage>(i);
    }
  });
}

}  // namespace defer::kernels::cpu
