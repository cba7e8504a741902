#include "cpu/fill.hpp"

#include <algorithm>

namespace defer::kernels::cpu {

void fill(void* data, std::int64_t n, DType dtype, float value) {
  if (dtype == DType::f32) {
    std::fill_n(static_cast<float*>(data), n, value);
  } else {
    std::fill_n(static_cast<std::int32_t*>(data), n, static_cast<std::int32_t>(value));
  }
}

}  // namespace defer::kernels::cpu
