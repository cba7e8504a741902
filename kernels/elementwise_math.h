// The math of every element-wise op, written once (C++17, host and device). Three compilers read
// this file: the host compiler for the CPU kernels, nvcc for the CUDA kernels, and NVRTC, into whose
// generated sources CMake embeds this very text (cmake/DeferEmbed.cmake,
// kernels/cuda/fused/cuda_source_writer.cpp); the compiled-kernel disk cache is keyed by a hash of the
// generated source, this text included. So the CPU, the CUDA kernels and the fused CUDA
// kernels compute each op with the same formula, and fused and unfused CUDA results agree bit for
// bit by construction.
//
// Rules for this file: only what NVRTC provides built in (no #include under NVRTC, no std::), the
// float math functions by their C names (expf, erfcf, ...), every op a function of floats named in
// kernels/op_table.hpp. All arithmetic is f32; every +, -, *, / goes through defer_fadd & co, which
// on the device are the _rn intrinsics: NVCC never contracts those into an FMA, so fusing ops never
// merges two roundings (the host build uses -ffp-contract=off for the same reason).
#pragma once

#if defined(__CUDACC_RTC__)
#define DEFER_MATH __device__ __forceinline__
#else
#include <math.h>
#include <string.h>
#if defined(__CUDACC__)
#define DEFER_MATH __host__ __device__ __forceinline__
#else
#define DEFER_MATH inline
#endif
#endif

// ---- f32 bits and exact arithmetic ----------------------------------------------------------------

DEFER_MATH unsigned int defer_bits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  unsigned int u;
  memcpy(&u, &x, sizeof u);
  return u;
#endif
}

DEFER_MATH float defer_from_bits(unsigned int u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
#endif
}

#ifdef __CUDA_ARCH__
DEFER_MATH float defer_fadd(float a, float b) { return __fadd_rn(a, b); }
DEFER_MATH float defer_fsub(float a, float b) { return __fsub_rn(a, b); }
DEFER_MATH float defer_fmul(float a, float b) { return __fmul_rn(a, b); }
DEFER_MATH float defer_fdiv(float a, float b) { return __fdiv_rn(a, b); }
#else
DEFER_MATH float defer_fadd(float a, float b) { return a + b; }
DEFER_MATH float defer_fsub(float a, float b) { return a - b; }
DEFER_MATH float defer_fmul(float a, float b) { return a * b; }
DEFER_MATH float defer_fdiv(float a, float b) { return a / b; }
#endif

// ---- storage types: load (to f32), store (from f32, rounding once) and round (f32 -> f32 through
// the dtype), one set per dtype of include/defer/dtype.hpp ---------------------------------------

typedef float defer_f32_t;
typedef int defer_i32_t;
typedef unsigned short defer_f16_t;
typedef unsigned short defer_bf16_t;
typedef long long defer_i64_t;
typedef unsigned char defer_boolean_t;

// IEEE binary16 <-> f32. f32 -> f16 rounds to nearest even; overflow gives infinity; NaN stays a
// (quiet) NaN with its sign. The host forms are branch-free (every case computed, one selected), so
// that loops over them vectorize.
DEFER_MATH float defer_load_f16(defer_f16_t h) {
#ifdef __CUDA_ARCH__
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  const unsigned int sign = (static_cast<unsigned int>(h) & 0x8000u) << 16;
  const unsigned int exponent = (h >> 10) & 0x1fu;
  const unsigned int mantissa = h & 0x3ffu;
  // zero or subnormal: mantissa * 2^-24, exact in f32
  const unsigned int tiny = defer_bits(static_cast<float>(mantissa) * 5.9604644775390625e-8f);
  unsigned int u = ((exponent + 112u) << 23) | (mantissa << 13);
  u = exponent == 0x1fu ? 0x7f800000u | (mantissa << 13) : u;  // inf, NaN
  u = exponent == 0 ? tiny : u;
  return defer_from_bits(sign | u);
#endif
}

DEFER_MATH defer_f16_t defer_store_f16(float x) {
#ifdef __CUDA_ARCH__
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
  return h;
#else
  const unsigned int u = defer_bits(x);
  const unsigned int sign = (u >> 16) & 0x8000u;
  const unsigned int magnitude = u & 0x7fffffffu;
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even; a carry
  // out of the mantissa correctly bumps the exponent (65520 and up becomes infinity).
  const unsigned int odd = (magnitude >> 13) & 1u;
  unsigned int h = (magnitude - 0x38000000u + 0xfffu + odd) >> 13;
  // Below f16's smallest normal (2^-14): adding 0.5 puts the 2^-24 unit at the last mantissa bit
  // of the sum, so the f32 addition itself rounds to nearest even; the mantissa bits are the result.
  const unsigned int tiny = defer_bits(defer_fadd(defer_from_bits(magnitude), 0.5f)) - 0x3f000000u;
  h = magnitude < 0x38800000u ? tiny : h;
  h = magnitude >= 0x47800000u ? 0x7c00u : h;                                  // >= 65536: inf
  h = magnitude > 0x7f800000u ? 0x7e00u | ((magnitude >> 13) & 0x3ffu) : h;  // NaN: quiet
  return static_cast<defer_f16_t>(sign | h);
#endif
}

// bfloat16 is the upper half of an f32.
DEFER_MATH float defer_load_bf16(defer_bf16_t b) { return defer_from_bits(static_cast<unsigned int>(b) << 16); }

DEFER_MATH defer_bf16_t defer_store_bf16(float x) {
  const unsigned int u = defer_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<defer_bf16_t>((u >> 16) | 0x40u);  // quiet NaN
  return static_cast<defer_bf16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// f32 -> integers truncate toward zero; NaN gives 0 and values beyond the range saturate (defined
// behaviour on both devices, where C++ leaves it undefined).
DEFER_MATH defer_i32_t defer_store_i32(float x) {
  if (x != x) return 0;
  if (x >= 2147483648.f) return 2147483647;
  if (x < -2147483648.f) return -2147483647 - 1;
  return static_cast<int>(x);
}
DEFER_MATH defer_i64_t defer_store_i64(float x) {
  if (x != x) return 0;
  if (x >= 9223372036854775808.f) return 9223372036854775807LL;
  if (x < -9223372036854775808.f) return -9223372036854775807LL - 1;
  return static_cast<long long>(x);
}
DEFER_MATH float defer_load_i32(defer_i32_t v) { return static_cast<float>(v); }
DEFER_MATH float defer_load_i64(defer_i64_t v) { return static_cast<float>(v); }

// Nonzero (NaN included) is true.
DEFER_MATH defer_boolean_t defer_store_boolean(float x) { return x != 0.f ? 1 : 0; }
DEFER_MATH float defer_load_boolean(defer_boolean_t v) { return v != 0 ? 1.f : 0.f; }

DEFER_MATH float defer_load_f32(defer_f32_t v) { return v; }
DEFER_MATH defer_f32_t defer_store_f32(float x) { return x; }

// round_<dtype>(x): x as the dtype would hold it, back in f32 (what a cast computes when its result
// is read again inside a fused kernel). Exact for integers too: every f32 beyond 2^24 is an integer.
DEFER_MATH float defer_round_f32(float x) { return x; }
DEFER_MATH float defer_round_f16(float x) { return defer_load_f16(defer_store_f16(x)); }
DEFER_MATH float defer_round_bf16(float x) { return defer_load_bf16(defer_store_bf16(x)); }
DEFER_MATH float defer_round_i32(float x) { return defer_load_i32(defer_store_i32(x)); }
DEFER_MATH float defer_round_i64(float x) { return defer_load_i64(defer_store_i64(x)); }
DEFER_MATH float defer_round_boolean(float x) { return defer_load_boolean(defer_store_boolean(x)); }

// ---- unary ops --------------------------------------------------------------------------------------

DEFER_MATH float defer_neg(float x) { return -x; }
DEFER_MATH float defer_abs(float x) { return fabsf(x); }
DEFER_MATH float defer_exp(float x) { return expf(x); }
DEFER_MATH float defer_log(float x) { return logf(x); }
DEFER_MATH float defer_sqrt(float x) { return sqrtf(x); }
// 1 / sqrt(x), each step correctly rounded (the device's rsqrtf is approximate).
DEFER_MATH float defer_rsqrt(float x) { return defer_fdiv(1.f, sqrtf(x)); }
DEFER_MATH float defer_tanh(float x) { return tanhf(x); }
DEFER_MATH float defer_erf(float x) { return erff(x); }

// exp only ever sees a non-positive argument: no overflow, and 1 - sigmoid is never formed, so the
// negative tail keeps its relative accuracy. NaN: e is NaN, so is the result.
DEFER_MATH float defer_sigmoid(float x) {
  const float e = expf(-fabsf(x));
  const float r = defer_fdiv(1.f, defer_fadd(1.f, e));
  return x >= 0.f ? r : defer_fmul(e, r);
}

// NaN < 0 is false, so NaN passes through.
DEFER_MATH float defer_relu(float x) { return x < 0.f ? 0.f : x; }
DEFER_MATH float defer_silu(float x) { return defer_fmul(x, defer_sigmoid(x)); }

// Exact GELU, x * Phi(x) = 0.5 x erfc(z) with z = -x / sqrt 2. erfc keeps the negative tail (where
// 1 + erf cancels); z is formed in double and, where the tail is steep (z > 2: a rounded argument's
// relative error is amplified by about 2 z^2), the part of it lost to f32 rounding (dz) is added
// back to first order (erfc' = -2/sqrt(pi) exp(-z^2)). Below that the amplification keeps the error
// under 1e-6 relative without the extra exp.
DEFER_MATH float defer_gelu(float x) {
  const double zd = -0.70710678118654752440 * static_cast<double>(x);
  const float z = static_cast<float>(zd);
  float tail = erfcf(z);
  if (z > 2.f && z < 16.f) {
    const float dz = static_cast<float>(zd - static_cast<double>(z));
    tail = defer_fsub(tail, defer_fmul(defer_fmul(1.1283791670955126f, expf(-defer_fmul(z, z))), dz));
  }
  return defer_fmul(defer_fmul(0.5f, x), tail);
}

// 0.5 x (1 + tanh(u)) = x sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3): 1 + tanh does not
// cancel for negative x this way. 2u is formed in double.
DEFER_MATH float defer_gelu_tanh(float x) {
  const double xd = x;
  const float two_u = static_cast<float>(1.5957691216057307117 * xd * (1.0 + 0.044715 * xd * xd));
  return defer_fmul(x, defer_sigmoid(two_u));
}

// log(1 + exp(x)) as max(x, 0) + log1p(exp(-|x|)): exp never overflows, and for very negative x the
// result keeps its relative accuracy (log1p(e) ~ e).
DEFER_MATH float defer_softplus(float x) {
  return defer_fadd(x > 0.f ? x : 0.f, log1pf(expf(-fabsf(x))));
}

// ---- binary ops and ops with scalars ------------------------------------------------------------------

DEFER_MATH float defer_add(float a, float b) { return defer_fadd(a, b); }
DEFER_MATH float defer_sub(float a, float b) { return defer_fsub(a, b); }
DEFER_MATH float defer_mul(float a, float b) { return defer_fmul(a, b); }
DEFER_MATH float defer_div(float a, float b) { return defer_fdiv(a, b); }
// NaN in either operand gives NaN (torch.maximum / torch.minimum); a + b is NaN when either is.
DEFER_MATH float defer_maximum(float a, float b) { return (a != a || b != b) ? defer_fadd(a, b) : (a > b ? a : b); }
DEFER_MATH float defer_minimum(float a, float b) { return (a != a || b != b) ? defer_fadd(a, b) : (a < b ? a : b); }
DEFER_MATH float defer_pow(float x, float exponent) { return powf(x, exponent); }
// min(max(x, lo), hi) as torch.clamp: NaN stays NaN; lo > hi gives hi.
DEFER_MATH float defer_clamp(float x, float lo, float hi) {
  if (x != x) return x;
  const float low = x < lo ? lo : x;
  return low > hi ? hi : low;
}

// Comparisons give 1 or 0 (stored as boolean); every comparison with NaN is false but ne.
DEFER_MATH float defer_eq(float a, float b) { return a == b ? 1.f : 0.f; }
DEFER_MATH float defer_ne(float a, float b) { return a != b ? 1.f : 0.f; }
DEFER_MATH float defer_lt(float a, float b) { return a < b ? 1.f : 0.f; }
DEFER_MATH float defer_le(float a, float b) { return a <= b ? 1.f : 0.f; }
DEFER_MATH float defer_gt(float a, float b) { return a > b ? 1.f : 0.f; }
DEFER_MATH float defer_ge(float a, float b) { return a >= b ? 1.f : 0.f; }

DEFER_MATH float defer_where(float condition, float a, float b) { return condition != 0.f ? a : b; }
DEFER_MATH float defer_masked_fill(float a, float mask, float value) { return mask != 0.f ? value : a; }
