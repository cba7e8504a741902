#pragma once
// The layout of one matmul as torch.matmul (docs/api.md section 8), read in place from strided
// operands: c[batch..., m, n] = a[batch..., m, k] x b[batch..., k, n], the batch dims broadcast.
//
// Each operand's matrices are row-major with a leading dimension (col == 1, rows `row` apart) or
// column-major, i.e. a transposed view (row == 1, columns `col` apart), which is what BLAS and
// cuBLAS express with their transpose flags: a transposed or permuted operand costs no copy. Its
// matrices sit at batch offsets given per batch dim (0 where the operand is broadcast). c is always
// contiguous. The batch dims are collapsed: extent-1 dims dropped, neighbours merged where both
// operands step through them as through one dim, and a trailing batch dim over which b is shared
// and a's row-major matrices lie back to back folded into m (one tall product).
//
// make_matmul_layout builds it from shapes and strides (1-D operands as torch: a row vector first,
// a column vector second); matmul_copy_reason says why an operand cannot be read so (the executor
// copies that one). C++17: CUDA sources include it.
#include <algorithm>
#include <cstdint>
#include <vector>

namespace defer::kernels {

struct MatmulOperand {
  // Element (i, j) of a matrix is at i * row + j * col from the matrix's start. Either col == 1 and
  // row >= max(1, columns) (row-major, leading dimension row) or row == 1 and col >= max(1, rows)
  // (column-major: a transposed view, leading dimension col); both may hold where an extent is 1.
  std::int64_t row = 0, col = 1;
  std::vector<std::int64_t> batch;  // one stride per MatmulLayout::batch dim, in elements; 0: broadcast

  // Which of the two forms BLAS is given, for matrices of `columns` columns, and its leading dimension.
  bool row_major(std::int64_t columns) const noexcept { return col == 1 && row >= std::max<std::int64_t>(columns, 1); }
  std::int64_t ld(std::int64_t columns) const noexcept { return row_major(columns) ? row : col; }
};

struct MatmulLayout {
  std::int64_t m = 0, k = 0, n = 0;
  // The collapsed batch extents, outermost first (none: one product). Product q (row-major over
  // them) of c is at q * m * n, rows n apart.
  std::vector<std::int64_t> batch;
  MatmulOperand a, b;  // a: [m, k] matrices, b: [k, n] matrices

  std::int64_t batch_count() const noexcept {
    std::int64_t count = 1;
    for (const std::int64_t e : batch) count *= e;
    return count;
  }
};

namespace matmul_detail {

// Strides (sr, sc) of an [r, c] matrix in the form MatmulOperand describes (the stride of an
// extent-1 dim is never used and is set to fit), or why there is none.
inline const char* normalize_matrix(std::int64_t r, std::int64_t c, std::int64_t& sr, std::int64_t& sc) {
  if (c <= 1) sc = 1;
  if (r <= 1) sr = sc == 1 ? std::max<std::int64_t>(c, 1) : 1;
  if (sr < 0 || sc < 0) return "matmul: a negative matrix stride; BLAS cannot express it";
  if (sc == 1 && sr >= std::max<std::int64_t>(c, 1)) return nullptr;
  if (sr == 1 && sc >= std::max<std::int64_t>(r, 1)) return nullptr;
  if (sr != 1 && sc != 1) return "matmul: its matrix dims have neither a unit row stride nor a unit column stride";
  return "matmul: its matrix rows or columns overlap (a leading dimension below the row length, as from an expanded "
         "matrix dim); BLAS cannot express it";
}

// An operand as a matrix stack: 1-D promoted ([k] -> [1, k] first, [k, 1] second).
struct Matrices {
  std::vector<std::int64_t> shape, strides;
};

inline Matrices promote(const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& strides, bool second) {
  if (shape.size() != 1) return Matrices{shape, strides};
  if (second) return Matrices{{shape[0], 1}, {strides[0], 1}};
  return Matrices{{1, shape[0]}, {0, strides[0]}};
}

}  // namespace matmul_detail

// Why the kernels cannot read this operand of matmul in place (nullptr: they can, or it is empty):
// matrix dims with neither a unit row nor a unit column stride, overlapping rows, or a negative
// batch stride. `second`: whether it is b (which matters for a 1-D operand). At least 1-D.
inline const char* matmul_copy_reason(const std::vector<std::int64_t>& shape,
                                      const std::vector<std::int64_t>& strides, bool second) {
  for (const std::int64_t e : shape)
    if (e == 0) return nullptr;  // no element is read
  matmul_detail::Matrices x = matmul_detail::promote(shape, strides, second);
  const std::size_t rank = x.shape.size();
  for (std::size_t d = 0; d + 2 < rank; ++d)
    if (x.shape[d] != 1 && x.strides[d] < 0) return "matmul: a negative batch stride";
  return matmul_detail::normalize_matrix(x.shape[rank - 2], x.shape[rank - 1], x.strides[rank - 2],
                                         x.strides[rank - 1]);
}

// The layout of matmul(a, b) for operands that matmul_copy_reason accepts and shapes that
// matmul's shape rule accepts.
inline MatmulLayout make_matmul_layout(const std::vector<std::int64_t>& a_shape,
                                       const std::vector<std::int64_t>& a_strides,
                                       const std::vector<std::int64_t>& b_shape,
                                       const std::vector<std::int64_t>& b_strides) {
  matmul_detail::Matrices a = matmul_detail::promote(a_shape, a_strides, false);
  matmul_detail::Matrices b = matmul_detail::promote(b_shape, b_strides, true);
  const std::size_t ra = a.shape.size(), rb = b.shape.size();
  MatmulLayout l;
  l.m = a.shape[ra - 2];
  l.k = a.shape[ra - 1];
  l.n = b.shape[rb - 1];
  l.a.row = a.strides[ra - 2];
  l.a.col = a.strides[ra - 1];
  l.b.row = b.strides[rb - 2];
  l.b.col = b.strides[rb - 1];
  matmul_detail::normalize_matrix(l.m, l.k, l.a.row, l.a.col);
  matmul_detail::normalize_matrix(l.k, l.n, l.b.row, l.b.col);

  // Batch dims, right-aligned, outermost first; extent-1 dims (of the result) dropped, and an
  // operand's extent-1 dim broadcast with stride 0.
  const std::size_t na = ra - 2, nb = rb - 2, nbatch = std::max(na, nb);
  for (std::size_t d = 0; d < nbatch; ++d) {
    const bool in_a = d >= nbatch - na, in_b = d >= nbatch - nb;
    const std::int64_t ea = in_a ? a.shape[d - (nbatch - na)] : 1, eb = in_b ? b.shape[d - (nbatch - nb)] : 1;
    const std::int64_t extent = ea == 1 ? eb : ea;
    if (extent == 1) continue;
    const std::int64_t sa = ea == 1 ? 0 : a.strides[d - (nbatch - na)];
    const std::int64_t sb = eb == 1 ? 0 : b.strides[d - (nbatch - nb)];
    if (!l.batch.empty() && l.a.batch.back() == sa * extent && l.b.batch.back() == sb * extent) {
      l.batch.back() *= extent;  // the outer dim steps over this one exactly, in both operands
      l.a.batch.back() = sa;
      l.b.batch.back() = sb;
      continue;
    }
    l.batch.push_back(extent);
    l.a.batch.push_back(sa);
    l.b.batch.push_back(sb);
  }
  // b shared over the innermost batch dim while a's row-major matrices follow each other with its
  // row stride: the batch is more rows of one product.
  while (!l.batch.empty() && l.b.batch.back() == 0 && l.a.row_major(l.k)) {
    const std::int64_t sa = l.a.batch.back();
    if (l.m == 1 ? sa < std::max<std::int64_t>(l.k, 1) : sa != l.m * l.a.row) break;
    if (l.m == 1) l.a.row = sa;
    l.m *= l.batch.back();
    l.batch.pop_back();
    l.a.batch.pop_back();
    l.b.batch.pop_back();
  }
  return l;
}

}  // namespace defer::kernels
