#pragma once
// Test support: matmul products of the kernel tests as kernels/matmul_layout.hpp layouts, row- or
// column-major operands with padded leading dimensions and shared (broadcast) batch dims, and the
// buffer sizes they reach.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <defer/dtype.hpp>

#include "matmul_layout.hpp"

namespace defer::testing {

using i64 = std::int64_t;

// One operand of a test product, [batch..., rows, cols]: row-major, or column-major when transposed
// (a transposed view), its leading dimension padded by `pad`; batches back to back (plus `gap`
// elements) over the dims where it is not shared (stride 0).
inline kernels::MatmulOperand test_operand(i64 rows, i64 cols, bool transposed, i64 pad, const std::vector<i64>& batch,
                                           i64 gap, const std::vector<bool>& shared) {
  kernels::MatmulOperand o;
  if (transposed) o.row = 1, o.col = std::max<i64>(1, rows + pad);
  else o.row = std::max<i64>(1, cols + pad), o.col = 1;
  i64 step = (transposed ? cols * o.col : rows * o.row) + gap;
  o.batch.assign(batch.size(), 0);
  for (std::size_t d = batch.size(); d-- > 0;)
    if (!shared[d]) o.batch[d] = step, step *= batch[d];
  return o;
}

// Elements an operand's buffer needs: one past the largest offset it reaches.
inline i64 operand_span(const kernels::MatmulOperand& o, i64 rows, i64 cols, const std::vector<i64>& batch) {
  if (rows == 0 || cols == 0) return 0;
  i64 last = (rows - 1) * o.row + (cols - 1) * o.col;
  for (std::size_t d = 0; d < batch.size(); ++d) {
    if (batch[d] == 0) return 0;
    last += (batch[d] - 1) * o.batch[d];
  }
  return last + 1;
}

// [batch..., m, k] x [batch..., k, n] (c contiguous), the operands as test_operand lays them out.
struct TestProduct {
  std::vector<i64> batch;
  i64 m, k, n;
  bool a_t = false, b_t = false;  // column-major (transposed) operands
  i64 pad = 0, gap = 0;           // added to every leading dimension, between batches
  std::vector<bool> a_shared = {}, b_shared = {};  // per batch dim; empty: none

  kernels::MatmulLayout layout() const {
    kernels::MatmulLayout l;
    l.m = m, l.k = k, l.n = n, l.batch = batch;
    const std::vector<bool> none(batch.size(), false);
    l.a = test_operand(m, k, a_t, pad, batch, gap, a_shared.empty() ? none : a_shared);
    l.b = test_operand(k, n, b_t, pad, batch, gap, b_shared.empty() ? none : b_shared);
    return l;
  }
  std::string name(DType t) const {
    std::string s = std::string("matmul ") + dtype_name(t) + " batch [";
    for (std::size_t d = 0; d < batch.size(); ++d) s += (d ? ", " : "") + std::to_string(batch[d]);
    s += "] m,k,n [" + std::to_string(m) + ", " + std::to_string(k) + ", " + std::to_string(n) + "]";
    if (a_t) s += " a^T";
    if (b_t) s += " b^T";
    if (pad) s += " pad " + std::to_string(pad);
    if (gap) s += " gap " + std::to_string(gap);
    for (std::size_t d = 0; d < a_shared.size(); ++d) s += a_shared[d] ? " a-shared" + std::to_string(d) : "";
    for (std::size_t d = 0; d < b_shared.size(); ++d) s += b_shared[d] ? " b-shared" + std::to_string(d) : "";
    return s;
  }
};

}  // namespace defer::testing
