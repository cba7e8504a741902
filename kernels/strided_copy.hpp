#pragma once
// A copy between two strided views of one shape: contiguous(), cat, gathers before a device copy or
// a download. Element size only matters (1, 2, 4 or 8 bytes): a copy never converts, so every dtype
// is copied bit for bit. The layout is collapsed first (dims merged where both sides allow, extent-1
// dims dropped), so a permuted [B, L, H, D] copy runs as few, long inner rows.
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "op_table.hpp"

namespace defer::kernels {

struct CopyLayout {
  int ndim = 0;  // 0: one element
  std::array<std::int64_t, kMaxDims> shape{}, src{}, dst{};  // extents; strides in elements
  std::int64_t numel() const noexcept {
    std::int64_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= shape[static_cast<std::size_t>(d)];
    return n;
  }
};

// The collapsed layout of a copy of `shape` from src_strides to dst_strides (all of one rank).
// Throws std::invalid_argument when more than kMaxDims dims remain after collapsing.
inline CopyLayout make_copy_layout(const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& src_strides,
                                   const std::vector<std::int64_t>& dst_strides) {
  CopyLayout out;
  std::vector<std::int64_t> ext, s, t;
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (!ext.empty() && s.back() == src_strides[d] * shape[d] && t.back() == dst_strides[d] * shape[d]) {
      ext.back() *= shape[d];  // the previous dim steps over this one exactly, on both sides
      s.back() = src_strides[d];
      t.back() = dst_strides[d];
      continue;
    }
    ext.push_back(shape[d]);
    s.push_back(src_strides[d]);
    t.push_back(dst_strides[d]);
  }
  if (ext.size() > static_cast<std::size_t>(kMaxDims))
    throw std::invalid_argument("copy: " + std::to_string(ext.size()) + " dims remain after collapsing; at most " +
                                std::to_string(kMaxDims) + " are supported");
  out.ndim = static_cast<int>(ext.size());
  for (std::size_t d = 0; d < ext.size(); ++d) {
    out.shape[d] = ext[d];
    out.src[d] = s[d];
    out.dst[d] = t[d];
  }
  for (std::int64_t e : shape)
    if (e == 0) out.ndim = 1, out.shape[0] = 0;  // nothing to copy
  return out;
}

}  // namespace defer::kernels
