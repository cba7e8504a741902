#include "cpu/copy.hpp"

#include <cstdint>
#include <cstring>

#include "cpu/thread_pool.hpp"

namespace defer::kernels::cpu {

namespace {

template <class E>
void copy_rows(const CopyLayout& l, const E* src, E* dst, std::int64_t first_row, std::int64_t rows) {
  const int last = l.ndim - 1;
  const std::int64_t n = l.shape[static_cast<std::size_t>(last)];
  const std::int64_t ss = l.src[static_cast<std::size_t>(last)], ds = l.dst[static_cast<std::size_t>(last)];
  for (std::int64_t row = first_row; row < first_row + rows; ++row) {
    // The offsets of this row from its multi-index over the outer dims.
    std::int64_t so = 0, dof = 0, rest = row;
    for (int d = last - 1; d >= 0; --d) {
      const auto ud = static_cast<std::size_t>(d);
      const std::int64_t i = rest % l.shape[ud];
      rest /= l.shape[ud];
      so += i * l.src[ud];
      dof += i * l.dst[ud];
    }
    const E* s = src + so;
    E* t = dst + dof;
    if (ss == 1 && ds == 1) {
      std::memcpy(t, s, static_cast<std::size_t>(n) * sizeof(E));
    } else {
      for (std::int64_t j = 0; j < n; ++j) t[j * ds] = s[j * ss];
    }
  }
}

template <class E>
void copy_typed(const CopyLayout& l, const void* src, void* dst) {
  const auto* s = static_cast<const E*>(src);
  auto* t = static_cast<E*>(dst);
  if (l.ndim == 0) {
    *t = *s;
    return;
  }
  const std::int64_t n = l.numel();
  if (n == 0) return;
  const std::int64_t row_len = l.shape[static_cast<std::size_t>(l.ndim - 1)];
  const std::int64_t rows = n / row_len;
  constexpr std::int64_t kParallelBytes = std::int64_t{1} << 20;
  ThreadPool& pool = ThreadPool::shared();
  if (n * static_cast<std::int64_t>(sizeof(E)) < kParallelBytes || rows < 2 || pool.num_workers() == 0) {
    copy_rows(l, s, t, 0, rows);
    return;
  }
  const std::int64_t tasks = static_cast<std::int64_t>(pool.num_slots()) * 4;
  const std::int64_t per = (rows + tasks - 1) / tasks;
  pool.parallel_for((rows + per - 1) / per, [&](std::int64_t task, unsigned) {
    const std::int64_t first = task * per;
    copy_rows(l, s, t, first, first + per <= rows ? per : rows - first);
  });
}

}  // namespace

void copy_strided(std::size_t element_bytes, const CopyLayout& layout, const void* src, void* dst) {
  switch (element_bytes) {
    case 1: return copy_typed<std::uint8_t>(layout, src, dst);
    case 2: return copy_typed<std::uint16_t>(layout, src, dst);
    case 4: return copy_typed<std::uint32_t>(layout, src, dst);
    default: return copy_typed<std::uint64_t>(layout, src, dst);
  }
}

}  // namespace defer::kernels::cpu
