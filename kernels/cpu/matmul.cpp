// CPU matmul (kernels/matmul_layout.hpp): batches of products of strided f32, f16 or bf16 operands.
//
// Each product is a packed, cache-blocked GEMM in the usual three-level scheme: a KC x NC block of
// B is packed into NR-column panels (L2/L3 resident), an MC x KC block of A into MR-row panels (L2),
// and a register-blocked micro-kernel computes an MR x NR tile of C from one A panel and one B
// panel (the B panel, KC x NR, stays in L1). Packing reads an operand row-major or column-major
// (a transposed view) with any leading dimension, always along the unit stride, and converts f16 /
// bf16 to float on the way: a transposed or half-precision operand costs nothing beyond the packing
// every product does anyway. Packing pads the edges with zeros, so the micro-kernel always runs
// full tiles; partial tiles are written back element by element. Accumulation is in float, k-order
// within a tile; an f16 / bf16 product is accumulated in a float block and rounded once into C.
// Products run one after another in C's order, each at its operands' batch offsets.
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
#include <type_traits>
#include <vector>

#include "cpu/ops.hpp"
#include "dtype_dispatch.hpp"

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

// The storage of one f16 / bf16 element, as distinct types (both are 16 bits).
struct F16 {
  std::uint16_t bits;
};
struct BF16 {
  std::uint16_t bits;
};

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

// An operand element of type T (float, or the storage of f16 / bf16) read as float, and a float
// result stored as f16 / bf16 (rounded to nearest even).
template <class T>
[[gnu::always_inline]] inline float load(T v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else if constexpr (std::is_same_v<T, F16>) return DTypeTag<DType::f16>::load(v.bits);
  else return DTypeTag<DType::bf16>::load(v.bits);
}
template <class T>
[[gnu::always_inline]] inline T store(float x) {
  if constexpr (std::is_same_v<T, F16>) return F16{DTypeTag<DType::f16>::store(x)};
  else return BF16{DTypeTag<DType::bf16>::store(x)};
}

// dst[0:W] = src[0:count] as float, zero-padded: one unit-stride run of a packed panel. A full run
// (the common case) has a compile-time length, which the compiler unrolls and vectorizes.
template <int W, class T>
[[gnu::always_inline]] inline void load_run(const T* src, std::int64_t count, float* dst) {
  if (count == W) {
    for (int i = 0; i < W; ++i) dst[i] = load(src[i]);
    return;
  }
  for (std::int64_t i = 0; i < count; ++i) dst[i] = load(src[i]);
  for (std::int64_t i = count; i < W; ++i) dst[i] = 0.f;
}

// A[0:mc, 0:kc] (element (i, p) at a[i * rs + p * cs], rs or cs 1) into MR-row panels as float,
// zero-padded to a multiple of MR rows. Either way the source is read along its unit stride.
template <int MR, class T>
[[gnu::always_inline]] inline void pack_a(const T* a, std::int64_t rs, std::int64_t cs, std::int64_t mc,
                                          std::int64_t kc, float* ap) {
  for (std::int64_t i0 = 0; i0 < mc; i0 += MR) {
    const std::int64_t rows = std::min<std::int64_t>(MR, mc - i0);
    float* panel = ap + i0 * kc;
    if (cs == 1) {  // row-major: rows of A are contiguous
      for (std::int64_t r = 0; r < rows; ++r) {
        const T* arow = a + (i0 + r) * rs;
        for (std::int64_t p = 0; p < kc; ++p) panel[p * MR + r] = load(arow[p]);
      }
      for (std::int64_t r = rows; r < MR; ++r)
        for (std::int64_t p = 0; p < kc; ++p) panel[p * MR + r] = 0.f;
    } else {  // column-major (a transposed view): columns of A are contiguous
      for (std::int64_t p = 0; p < kc; ++p) {
        load_run<MR>(a + p * cs + i0, rows, panel + p * MR);
      }
    }
  }
}

// B[0:kc, 0:nc] (element (p, j) at b[p * rs + j * cs], rs or cs 1) into NR-column panels as float,
// zero-padded to a multiple of NR columns.
template <int NR, class T>
[[gnu::always_inline]] inline void pack_b(const T* b, std::int64_t rs, std::int64_t cs, std::int64_t kc,
                                          std::int64_t nc, float* bp) {
  for (std::int64_t j0 = 0; j0 < nc; j0 += NR) {
    const std::int64_t cols = std::min<std::int64_t>(NR, nc - j0);
    float* panel = bp + j0 * kc;
    if (cs == 1) {  // row-major: rows of B are contiguous
      for (std::int64_t p = 0; p < kc; ++p) {
        load_run<NR>(b + p * rs + j0, cols, panel + p * NR);
      }
    } else {  // column-major (a transposed view): columns of B are contiguous
      for (std::int64_t j = 0; j < cols; ++j) {
        const T* bcol = b + (j0 + j) * cs;
        for (std::int64_t p = 0; p < kc; ++p) panel[p * NR + j] = load(bcol[p]);
      }
      for (std::int64_t p = 0; p < kc; ++p)
        for (std::int64_t j = cols; j < NR; ++j) panel[p * NR + j] = 0.f;
    }
  }
}

constexpr std::int64_t round_up(std::int64_t x, std::int64_t m) { return (x + m - 1) / m * m; }

// The packing buffers of one matmul call, sized for its largest blocks and reused by every product.
template <int MR, int NR>
struct PackBuffers {
  std::unique_ptr<float[]> a, b;
  PackBuffers(std::int64_t m, std::int64_t k, std::int64_t n)
      : a(new float[static_cast<std::size_t>(std::min(kMC, round_up(m, MR)) * std::min(kKC, k))]),
        b(new float[static_cast<std::size_t>(std::min(kKC, k) * std::min(kNC, round_up(n, NR)))]) {}
};

// C[m, n] (row stride ldc) = A[m, k] x B[k, n], A and B read through their strides (see pack_a,
// pack_b); m, n, k > 0.
template <int MR, int NV, class T>
[[gnu::always_inline]] inline void gemm(const T* a, std::int64_t ars, std::int64_t acs, const T* b, std::int64_t brs,
                                        std::int64_t bcs, float* c, std::int64_t ldc, std::int64_t m, std::int64_t k,
                                        std::int64_t n, PackBuffers<MR, 8 * NV>& buf) {
  constexpr int NR = 8 * NV;
  static_assert(kMC % MR == 0 && kNC % NR == 0);
  for (std::int64_t j0 = 0; j0 < n; j0 += kNC) {
    const std::int64_t nc = std::min(kNC, n - j0);
    for (std::int64_t p0 = 0; p0 < k; p0 += kKC) {
      const std::int64_t kc = std::min(kKC, k - p0);
      const bool accumulate = p0 > 0;
      pack_b<NR>(b + p0 * brs + j0 * bcs, brs, bcs, kc, nc, buf.b.get());
      for (std::int64_t i0 = 0; i0 < m; i0 += kMC) {
        const std::int64_t mc = std::min(kMC, m - i0);
        pack_a<MR>(a + i0 * ars + p0 * acs, ars, acs, mc, kc, buf.a.get());
        for (std::int64_t jr = 0; jr < nc; jr += NR) {
          const float* bp = buf.b.get() + jr * kc;
          const std::int64_t nr = std::min<std::int64_t>(NR, nc - jr);
          for (std::int64_t ir = 0; ir < mc; ir += MR) {
            const std::int64_t mr = std::min<std::int64_t>(MR, mc - ir);
            micro_kernel<MR, NV>(kc, buf.a.get() + ir * kc, bp, c + (i0 + ir) * ldc + j0 + jr, ldc, mr, nr,
                                 accumulate);
          }
        }
      }
    }
  }
}

// Every product of the layout (m, k, n > 0), batch by batch in c's order. A float result is written
// in place; an f16 / bf16 one is accumulated in a float [m, n] block and rounded once into c.
template <int MR, int NV, class T>
[[gnu::always_inline]] inline void gemm_batches(const T* a, const T* b, T* c, const MatmulLayout& l) {
  PackBuffers<MR, 8 * NV> buf(l.m, l.k, l.n);
  const std::int64_t mn = l.m * l.n;
  std::unique_ptr<float[]> staged;
  if constexpr (!std::is_same_v<T, float>) staged.reset(new float[static_cast<std::size_t>(mn)]);
  const std::size_t nb = l.batch.size();
  std::vector<std::int64_t> idx(nb, 0);
  std::int64_t ao = 0, bo = 0;  // the current product's offsets in a and b
  const std::int64_t count = l.batch_count();
  for (std::int64_t q = 0; q < count; ++q) {
    if constexpr (std::is_same_v<T, float>) {
      gemm<MR, NV>(a + ao, l.a.row, l.a.col, b + bo, l.b.row, l.b.col, c + q * mn, l.n, l.m, l.k, l.n, buf);
    } else {
      gemm<MR, NV>(a + ao, l.a.row, l.a.col, b + bo, l.b.row, l.b.col, staged.get(), l.n, l.m, l.k, l.n, buf);
      T* out = c + q * mn;
      for (std::int64_t i = 0; i < mn; ++i) out[i] = store<T>(staged[static_cast<std::size_t>(i)]);
    }
    for (std::size_t d = nb; d-- > 0;) {  // the next batch index, innermost dim first
      if (++idx[d] < l.batch[d]) {
        ao += l.a.batch[d];
        bo += l.b.batch[d];
        break;
      }
      ao -= (l.batch[d] - 1) * l.a.batch[d];
      bo -= (l.batch[d] - 1) * l.b.batch[d];
      idx[d] = 0;
    }
  }
}

// One entry point per ISA; T is picked at run time.
template <int MR, int NV>
[[gnu::always_inline]] inline void gemm_dtype(DType dtype, const void* a, const void* b, void* c,
                                              const MatmulLayout& l) {
  switch (dtype) {
    case DType::f32:
      return gemm_batches<MR, NV>(static_cast<const float*>(a), static_cast<const float*>(b), static_cast<float*>(c),
                                  l);
    case DType::f16:
      return gemm_batches<MR, NV>(static_cast<const F16*>(a), static_cast<const F16*>(b), static_cast<F16*>(c), l);
    case DType::bf16:
      return gemm_batches<MR, NV>(static_cast<const BF16*>(a), static_cast<const BF16*>(b), static_cast<BF16*>(c), l);
    case DType::i32:
    case DType::i64:
    case DType::boolean: break;
  }
  throw std::invalid_argument(std::string("defer::kernels::cpu::matmul: ") + dtype_name(dtype) +
                              " is not a floating dtype");
}

using GemmFn = void (*)(DType, const void*, const void*, void*, const MatmulLayout&);

void gemm_portable(DType dtype, const void* a, const void* b, void* c, const MatmulLayout& l) {
  gemm_dtype<4, 1>(dtype, a, b, c, l);
}

#ifdef DEFER_CPU_MATMUL_X86_DISPATCH
[[gnu::target("avx2,fma")]] void gemm_avx2(DType dtype, const void* a, const void* b, void* c, const MatmulLayout& l) {
  gemm_dtype<6, 2>(dtype, a, b, c, l);
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

void matmul(DType dtype, const void* a, const void* b, void* c, const MatmulLayout& layout) {
  if (dtype != DType::f32 && dtype != DType::f16 && dtype != DType::bf16)
    throw std::invalid_argument(std::string("defer::kernels::cpu::matmul: ") + dtype_name(dtype) +
                                " is not a floating dtype");
  const std::int64_t count = layout.batch_count();
  if (count <= 0 || layout.m <= 0 || layout.n <= 0) return;
  if (layout.k <= 0) {  // an empty sum: zeros (+0 is all-zero bits in every floating dtype)
    std::memset(c, 0, static_cast<std::size_t>(count * layout.m * layout.n) * dtype_size(dtype));
    return;
  }
  pick_gemm()(dtype, a, b, c, layout);
}

}  // namespace defer::kernels::cpu
