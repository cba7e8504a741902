#pragma once
#include <cstdint>

#include <defer/tensor.hpp>

namespace defer::kernels::cpu {

// Sets n elements of dtype at data to value (converted to dtype).
void fill(void* data, std::int64_t n, DType dtype, float value);

}  // namespace defer::kernels::cpu
