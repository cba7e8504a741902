#pragma once
// The CPU strided copy (kernels/strided_copy.hpp).
#include <cstddef>

#include "strided_copy.hpp"

namespace defer::kernels::cpu {

// dst[i] = src[i] over the layout, elements of element_bytes (1, 2, 4 or 8). Large copies are split
// across the shared pool by outer rows.
void copy_strided(std::size_t element_bytes, const CopyLayout& layout, const void* src, void* dst);

}  // namespace defer::kernels::cpu
