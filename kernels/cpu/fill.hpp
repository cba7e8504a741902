#pragma once
#include <cstddef>
#include <cstdint>

#include <defer/dtype.hpp>

namespace defer::kernels::cpu {

// Sets n elements of element_bytes (1, 2, 4 or 8) at data to the bit pattern `bits` (its low bytes).
void fill(void* data, std::int64_t n, std::size_t element_bytes, std::uint64_t bits);
// data[i] = i, as dtype (for a floating dtype: i rounded once).
void arange(void* data, std::int64_t n, DType dtype);

}  // namespace defer::kernels::cpu
