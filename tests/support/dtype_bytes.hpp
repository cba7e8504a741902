#pragma once
// Test support: element values of any dtype as f32 and as their storage bytes, with the library's
// own conversions (kernels/dtype_dispatch.hpp), for tests that fill or read raw buffers.
#include <cstddef>
#include <cstring>
#include <vector>

#include <defer/dtype.hpp>

#include "dtype_dispatch.hpp"

namespace defer::testing {

// Every dtype of the dtype table, in its order.
inline std::vector<DType> all_dtypes() {
  std::vector<DType> v;
  for (std::size_t i = 0; i < detail::kDTypeCount; ++i) v.push_back(static_cast<DType>(i));
  return v;
}

// The floating dtypes of the table (f32, f16, bf16).
inline std::vector<DType> floating_dtypes() {
  std::vector<DType> v;
  for (const DType t : all_dtypes())
    if (is_floating(t)) v.push_back(t);
  return v;
}

// x as dtype t holds it, back in f32.
inline float round_to(DType t, float x) {
  return kernels::dispatch(t, [&](auto tag) {
    using Tag = decltype(tag);
    return Tag::load(Tag::store(x));
  });
}

// The storage bytes of values (each exact in t) as dtype t.
inline std::vector<std::byte> encode(DType t, const std::vector<float>& values) {
  std::vector<std::byte> bytes(values.size() * dtype_size(t));
  kernels::dispatch(t, [&](auto tag) {
    using Tag = decltype(tag);
    for (std::size_t i = 0; i < values.size(); ++i) {
      const typename Tag::storage s = Tag::store(values[i]);
      std::memcpy(bytes.data() + i * sizeof s, &s, sizeof s);
    }
  });
  return bytes;
}

// n elements of dtype t at bytes, as f32.
inline std::vector<float> decode(DType t, const std::byte* bytes, std::size_t n) {
  std::vector<float> v(n);
  kernels::dispatch(t, [&](auto tag) {
    using Tag = decltype(tag);
    for (std::size_t i = 0; i < n; ++i) {
      typename Tag::storage s;
      std::memcpy(&s, bytes + i * sizeof s, sizeof s);
      v[i] = Tag::load(s);
    }
  });
  return v;
}

}  // namespace defer::testing
