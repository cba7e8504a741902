// CPU matmul and transpose.
//
// matmul is a packed, cache-blocked GEMM in the usual three-level scheme: a KC x NC block of B is
// packed into NR-column panels (L2/L3 resident), an MC x KC block of A into MR-row panels (L2),
// and a register-blocked micro-kernel computes an MR x NR tile of C from one A panel and one B
// panel (the B panel, KC x NR, stays in L1). Packing pads the edges with zeros, so the
// micro-kernel always runs full tiles; partial tiles are written back element by element.
// Accumulation is in float, k-order within a tile.
//
// The micro-kernel is written with GCC vector extensions and compiled twice: for the baseline ISA
// (SSE2 on x86-64: a 4 x 8 tile) and, on x86 with runtime dispatch, for AVX2+FMA (a 6 x 16 tile).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "cpu/ops.hpp"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define DEFER_CPU_MATMUL_X86_DISPATCH 1
#endif

namespace defer::kernels::cpu {

namespace detail {
// Testing hook, deliberately not in ops.hpp: force the portable kernel (true) or let matmul pick
// the best one for this CPU (false, the default). Returns whether an ISA-specific kernel exists
// on this CPU, i.e. whether the two settings run different code.
bool matmul_force_portable(bool force) noexcept;
}  // namespace detail

namespace {

using v8f = float __attribute__((vector_size(32)));

constexpr std::int64_t kKC = 256;   // depth of a packed block
constexpr std::int64_t kMC = 96;    // rows of A per packed block (a multiple of both MRs)
constexpr std::int64_t kNC = 2048;  // columns of B per packed block (a multiple of both NRs)

std::atomic<bool> g_force_portable{false};

// C[0:mr, 0:nr] (+)= Ap panel x Bp panel. Ap is kc x MR (MR values per k step), Bp is kc x NR.
template <int MR, int NV>
[[gnu::always_inline]] inline void micro_kernel(std::int64_t kc, const float* ap, const float* bp, float* c,
                                                std::int64_t ldc, std::int64_t mr, std::int64_t nr,
                                                bool accumulate) {
  constexpr int NR = 8 * NV;
  v8f acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = v8f{};
  for (std::int64_t p = 0; p < kc; ++p) {
    v8f b[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&b[v], bp + p * NR + 8 * v, sizeof(v8f));
    for (int r = 0; r < MR; ++r) {
      const float a = ap[p * MR + r];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  if (mr == MR && nr == NR) {
    for (int r = 0; r < MR; ++r) {
      float* crow = c + r * ldc;
      for (int v = 0; v < NV; ++v) {
        v8f cv = acc[r][v];
        if (accumulate) {
          v8f old;
          std::memcpy(&old, crow + 8 * v, sizeof(v8f));
          cv += old;
        }
        std::memcpy(crow + 8 * v, &cv, sizeof(v8f));
      }
    }
  } else {
    float tile[MR][NR];
    std::memcpy(tile, acc, sizeof(tile));
    for (std::int64_t r = 0; r < mr; ++r) {
      float* crow = c + r * ldc;
      if (accumulate)
        for (std::int64_t j = 0; j < nr; ++j) crow[j] += tile[r][j];
      else
        for (std::int64_t j = 0; j < nr; ++j) crow[j] = tile[r][j];
    }
  }
}

// A[0:mc, 0:kc] (row stride lda) into MR-row panels, zero-padded to a multiple of MR rows.
template <int MR>
[[gnu::always_inline]] inline void pack_a(const float* a, std::int64_t lda, std::int64_t mc, std::int64_t kc,
                                          float* ap) {
  for (std::int64_t i0 = 0; i0 < mc; i0 += MR) {
    const std::int64_t rows = std::min<std::int64_t>(MR, mc - i0);
    float* panel = ap + i0 * kc;
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* arow = a + (i0 + r) * lda;
      for (std::int64_t p = 0; p < kc; ++p) panel[p * MR + r] = arow[p];
    }
    for (std::int64_t r = rows; r < MR; ++r)
      for (std::int64_t p = 0; p < kc; ++p) panel[p * MR + r] = 0.f;
  }
}

// B[0:kc, 0:nc] (row stride ldb) into NR-column panels, zero-padded to a multiple of NR columns.
template <int NR>
[[gnu::always_inline]] inline void pack_b(const float* b, std::int64_t ldb, std::int64_t kc, std::int64_t nc,
                                          float* bp) {
  for (std::int64_t j0 = 0; j0 < nc; j0 += NR) {
    const std::int64_t cols = std::min<std::int64_t>(NR, nc - j0);
    float* panel = bp + j0 * kc;
    for (std::int64_t p = 0; p < kc; ++p) {
      const float* brow = b + p * ldb + j0;
      float* dst = panel + p * NR;
      if (cols == NR) {
        for (int j = 0; j < NR; ++j) dst[j] = brow[j];
      } else {
        for (std::int64_t j = 0; j < cols; ++j) dst[j] = brow[j];
        for (std::int64_t j = cols; j < NR; ++j) dst[j] = 0.f;
      }
    }
  }
}

constexpr std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

// C[m, n] = A[m, k] x B[k, n], all row-major with the given row strides; m, n, k > 0.
template <int MR, int NV>
[[gnu::always_inline]] inline void gemm(const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float* c,
                                        std::int64_t ldc, std::int64_t m, std::int64_t k, std::int64_t n) {
  constexpr int NR = 8 * NV;
  static_assert(kMC % MR == 0 && kNC % NR == 0);
  const std::int64_t kc_max = std::min(kKC, k);
  const std::int64_t mc_max = std::min(kMC, round_up(m, MR));
  const std::int64_t nc_max = std::min(kNC, round_up(n, NR));
  const std::unique_ptr<float[]> abuf(new float[static_cast<std::size_t>(mc_max * kc_max)]);
  const std::unique_ptr<float[]> bbuf(new float[static_cast<std::size_t>(kc_max * nc_max)]);
  for (std::int64_t j0 = 0; j0 < n; j0 += kNC) {
    const std::int64_t nc = std::min(kNC, n - j0);
    for (std::int64_t p0 = 0; p0 < k; p0 += kKC) {
      const std::int64_t kc = std::min(kKC, k - p0);
      const bool accumulate = p0 > 0;
      pack_b<NR>(b + p0 * ldb + j0, ldb, kc, nc, bbuf.get());
      for (std::int64_t i0 = 0; i0 < m; i0 += kMC) {
        const std::int64_t mc = std::min(kMC, m - i0);
        pack_a<MR>(a + i0 * lda + p0, lda, mc, kc, abuf.get());
        for (std::int64_t jr = 0; jr < nc; jr += NR) {
          const float* bp = bbuf.get() + jr * kc;
          const std::int64_t nr = std::min<std::int64_t>(NR, nc - jr);
          for (std::int64_t ir = 0; ir < mc; ir += MR) {
            const std::int64_t mr = std::min<std::int64_t>(MR, mc - ir);
            micro_kernel<MR, NV>(kc, abuf.get() + ir * kc, bp, c + (i0 + ir) * ldc + j0 + jr, ldc, mr, nr,
                                 accumulate);
          }
        }
      }
    }
  }
}

using GemmFn = void (*)(const float*, std::int64_t, const float*, std::int64_t, float*, std::int64_t, std::int64_t,
                        std::int64_t, std::int64_t);

void gemm_portable(const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float* c, std::int64_t ldc,
                   std::int64_t m, std::int64_t k, std::int64_t n) {
  gemm<4, 1>(a, lda, b, ldb, c, ldc, m, k, n);
}

#ifdef DEFER_CPU_MATMUL_X86_DISPATCH
[[gnu::target("avx2,fma")]] void gemm_avx2(const float* a, std::int64_t lda, const float* b, std::int64_t ldb,
                                           float* c, std::int64_t ldc, std::int64_t m, std::int64_t k,
                                           std::int64_t n) {
  gemm<6, 2>(a, lda, b, ldb, c, ldc, m, k, n);
}

bool have_avx2() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}
#endif

GemmFn pick_gemm() {
#ifdef DEFER_CPU_MATMUL_X86_DISPATCH
  if (!g_force_portable.load(std::memory_order_relaxed) && have_avx2()) return gemm_avx2;
#endif
  return gemm_portable;
}

}  // namespace

bool detail::matmul_force_portable(bool force) noexcept {
  g_force_portable.store(force, std::memory_order_relaxed);
#ifdef DEFER_CPU_MATMUL_X86_DISPATCH
  return have_avx2();
#else
  return false;
#endif
}

void matmul(const float* a, const float* b, float* c, std::int64_t batch, std::int64_t m, std::int64_t k,
            std::int64_t n, std::int64_t a_batch_stride, std::int64_t b_batch_stride) {
  if (batch <= 0 || m <= 0 || n <= 0) return;
  if (k <= 0) {
    std::fill_n(c, batch * m * n, 0.f);
    return;
  }
  const GemmFn fn = pick_gemm();
  // A shared B over back-to-back A matrices is one tall GEMM: [batch * m, k] x [k, n].
  if (batch > 1 && b_batch_stride == 0 && a_batch_stride == m * k) {
    fn(a, k, b, n, c, n, batch * m, k, n);
    return;
  }
  for (std::int64_t i = 0; i < batch; ++i)
    fn(a + i * a_batch_stride, k, b + i * b_batch_stride, n, c + i * m * n, n, m, k, n);
}

namespace {

template <class T>
void transpose_as(const T* x, T* out, std::int64_t batch, std::int64_t rows, std::int64_t cols) {
  if (rows == 1 || cols == 1) {  // a vector: the same elements in the same order
    std::copy_n(x, batch * rows * cols, out);
    return;
  }
  constexpr std::int64_t kTile = 32;
  for (std::int64_t bi = 0; bi < batch; ++bi) {
    const T* xs = x + bi * rows * cols;
    T* os = out + bi * rows * cols;
    for (std::int64_t r0 = 0; r0 < rows; r0 += kTile) {
      const std::int64_t r1 = std::min(rows, r0 + kTile);
      for (std::int64_t c0 = 0; c0 < cols; c0 += kTile) {
        const std::int64_t c1 = std::min(cols, c0 + kTile);
        for (std::int64_t c = c0; c < c1; ++c)
          for (std::int64_t r = r0; r < r1; ++r) os[c * rows + r] = xs[r * cols + c];
      }
    }
  }
}

}  // namespace

void transpose(std::size_t element_bytes, const void* x, void* out, std::int64_t batch, std::int64_t rows,
               std::int64_t cols) {
  if (batch <= 0 || rows <= 0 || cols <= 0) return;
  switch (element_bytes) {
    case 1: return transpose_as(static_cast<const std::uint8_t*>(x), static_cast<std::uint8_t*>(out), batch, rows, cols);
    case 2: return transpose_as(static_cast<const std::uint16_t*>(x), static_cast<std::uint16_t*>(out), batch, rows, cols);
    case 4: return transpose_as(static_cast<const std::uint32_t*>(x), static_cast<std::uint32_t*>(out), batch, rows, cols);
    case 8: return transpose_as(static_cast<const std::uint64_t*>(x), static_cast<std::uint64_t*>(out), batch, rows, cols);
    default: throw std::invalid_argument("transpose: no kernel for elements of " + std::to_string(element_bytes) + " bytes");
  }
}

}  // namespace defer::kernels::cpu
