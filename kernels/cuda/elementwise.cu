// Element-wise kernels: unary, binary with a scalar, and binary with NumPy broadcasting.
//
// The op is a functor given as a template argument and chosen by a switch on the host, so a kernel
// body holds no per-element branch on the op. The set of instantiations is small and fixed: one
// contiguous kernel per unary op and per binary op (scalar and tensor), plus a broadcasting kernel
// per binary op in 32-bit and 64-bit index arithmetic.
//
// The math matches kernels/cpu (the reference), written so that float keeps its accuracy where the
// textbook formula cancels: gelu uses erfc (1 + erf(x) loses every digit for x << 0), gelu_tanh uses
// 0.5 * (1 + tanh(u)) == sigmoid(2u), and sigmoid never forms exp of a positive argument. The gelu
// arguments are formed in double (two or three double operations per element) because the tails
// amplify their rounding.
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/ops.hpp"
#include "runtime/cuda/cuda_check.hpp"

namespace defer::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr std::int64_t kMaxBlocks = 65535;

unsigned blocks_for(std::int64_t work) {
  return static_cast<unsigned>(std::min<std::int64_t>((work + kThreads - 1) / kThreads, kMaxBlocks));
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

// ---- unary functors ----------------------------------------------------------------------------

__device__ __forceinline__ float stable_sigmoid(float x) {
  // exp only ever sees a non-positive argument: no overflow, and 1 - sigmoid is never formed.
  // NaN takes the second branch and stays NaN.
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  const float e = expf(x);
  return e / (1.f + e);
}

struct Neg {
  __device__ float operator()(float x) const { return -x; }
};
struct Abs {
  __device__ float operator()(float x) const { return fabsf(x); }
};
struct Exp {
  __device__ float operator()(float x) const { return expf(x); }
};
struct Log {
  __device__ float operator()(float x) const { return logf(x); }
};
struct Sqrt {
  __device__ float operator()(float x) const { return sqrtf(x); }
};
struct Tanh {
  __device__ float operator()(float x) const { return tanhf(x); }
};
struct Sigmoid {
  __device__ float operator()(float x) const { return stable_sigmoid(x); }
};
struct Relu {
  // NaN < 0 is false, so NaN passes through.
  __device__ float operator()(float x) const { return x < 0.f ? 0.f : x; }
};
struct Silu {
  __device__ float operator()(float x) const { return x * stable_sigmoid(x); }
};
struct Gelu {
  // x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) = 0.5 x erfc(z), z = -x / sqrt 2. In the tail erfc is
  // steep (its relative slope is about 2z), so the rounding of z alone would cost ~2z^2 ulp: z is
  // formed in double, and the part that rounding to float dropped (dz) is added back to first order.
  __device__ float operator()(float x) const {
    const double zd = -0.70710678118654752440 * static_cast<double>(x);
    const float z = static_cast<float>(zd);
    const float dz = fabsf(z) < 16.f ? static_cast<float>(zd - static_cast<double>(z)) : 0.f;  // inf - inf
    const float tail = erfcf(z) - 1.1283791670955126f * expf(-z * z) * dz;  // erfc' = -2/sqrt(pi) exp(-z^2)
    return 0.5f * x * tail;
  }
};
struct GeluTanh {
  // 0.5 x (1 + tanh(u)) with u = sqrt(2 / pi) (x + 0.044715 x^3); 0.5 (1 + tanh(u)) = sigmoid(2u).
  // 2u is formed in double: its rounding error, times |2u|, is the result's relative error.
  __device__ float operator()(float x) const {
    const double xd = x;
    const float two_u = static_cast<float>(1.5957691216057307117 * xd * (1.0 + 0.044715 * xd * xd));
    return x * stable_sigmoid(two_u);
  }
};

// ---- binary functors ---------------------------------------------------------------------------

struct Add {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct Sub {
  __device__ float operator()(float a, float b) const { return a - b; }
};
struct Mul {
  __device__ float operator()(float a, float b) const { return a * b; }
};
struct Div {
  __device__ float operator()(float a, float b) const { return a / b; }
};
struct Maximum {
  // fmaxf would drop a NaN operand; maximum propagates it (a + b is NaN when either is).
  __device__ float operator()(float a, float b) const { return (a != a || b != b) ? a + b : fmaxf(a, b); }
};
struct Minimum {
  __device__ float operator()(float a, float b) const { return (a != a || b != b) ? a + b : fminf(a, b); }
};

// A binary functor with its second operand fixed: binary_scalar runs through the unary kernel.
template <class F>
struct WithScalar {
  F f;
  float s;
  __device__ float operator()(float x) const { return f(x, s); }
};

// ---- kernels -----------------------------------------------------------------------------------

// out[i] = f(x[i]). vec4: x and out are 16-byte aligned, so the first n / 4 * 4 elements move as
// float4; the remaining (at most 3) elements, or all of them when !vec4, one by one. x may equal out.
template <class F>
__global__ void __launch_bounds__(kThreads) map1_kernel(F f, const float* x, float* out, std::int64_t n, bool vec4) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  std::int64_t done = 0;
  if (vec4) {
    const std::int64_t n4 = n / 4;
    const auto* x4 = reinterpret_cast<const float4*>(x);
    auto* out4 = reinterpret_cast<float4*>(out);
    for (std::int64_t i = first; i < n4; i += stride) {
      float4 v = x4[i];
      v.x = f(v.x);
      v.y = f(v.y);
      v.z = f(v.z);
      v.w = f(v.w);
      out4[i] = v;
    }
    done = n4 * 4;
  }
  for (std::int64_t i = done + first; i < n; i += stride) out[i] = f(x[i]);
}

// out[i] = f(a[i], b[i]), with the same float4 scheme as map1_kernel.
template <class F>
__global__ void __launch_bounds__(kThreads)
    map2_kernel(F f, const float* a, const float* b, float* out, std::int64_t n, bool vec4) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  std::int64_t done = 0;
  if (vec4) {
    const std::int64_t n4 = n / 4;
    const auto* a4 = reinterpret_cast<const float4*>(a);
    const auto* b4 = reinterpret_cast<const float4*>(b);
    auto* out4 = reinterpret_cast<float4*>(out);
    for (std::int64_t i = first; i < n4; i += stride) {
      const float4 u = a4[i];
      const float4 v = b4[i];
      out4[i] = make_float4(f(u.x, v.x), f(u.y, v.y), f(u.z, v.z), f(u.w, v.w));
    }
    done = n4 * 4;
  }
  for (std::int64_t i = done + first; i < n; i += stride) out[i] = f(a[i], b[i]);
}

// out[i] = f(a[offset_a(i)], b[offset_b(i)]) where the offsets come from the row-major multi-index
// of i in bc.shape. Index is std::uint32_t when the host proved that i and both offsets fit (32-bit
// division is several times cheaper than 64-bit), else std::int64_t. The dimension loop runs over
// the fixed kMaxDims so that every bc field is read at a constant offset of the parameter space.
template <class F, class Index>
__global__ void __launch_bounds__(kThreads)
    broadcast_kernel(F f, const float* a, const float* b, float* out, std::int64_t n, Broadcast bc) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    Index rest = static_cast<Index>(i);
    Index offset_a = 0, offset_b = 0;
#pragma unroll
    for (int d = kMaxDims - 1; d >= 0; --d) {
      if (d < bc.ndim) {
        const Index extent = static_cast<Index>(bc.shape[d]);
        const Index quotient = rest / extent;
        const Index coord = rest - quotient * extent;
        rest = quotient;
        offset_a += coord * static_cast<Index>(bc.stride[0][d]);
        offset_b += coord * static_cast<Index>(bc.stride[1][d]);
      }
    }
    out[i] = f(a[offset_a], b[offset_b]);
  }
}

// ---- host side ---------------------------------------------------------------------------------

template <class Launch>
void dispatch_unary(UnaryOp op, Launch&& launch) {
  switch (op) {
    case UnaryOp::neg: return launch(Neg{});
    case UnaryOp::abs: return launch(Abs{});
    case UnaryOp::exp: return launch(Exp{});
    case UnaryOp::log: return launch(Log{});
    case UnaryOp::sqrt: return launch(Sqrt{});
    case UnaryOp::tanh: return launch(Tanh{});
    case UnaryOp::sigmoid: return launch(Sigmoid{});
    case UnaryOp::relu: return launch(Relu{});
    case UnaryOp::silu: return launch(Silu{});
    case UnaryOp::gelu: return launch(Gelu{});
    case UnaryOp::gelu_tanh: return launch(GeluTanh{});
  }
  throw std::invalid_argument("defer::kernels::cuda::unary: unknown op " + std::to_string(static_cast<int>(op)));
}

template <class Launch>
void dispatch_binary(BinaryOp op, const char* who, Launch&& launch) {
  switch (op) {
    case BinaryOp::add: return launch(Add{});
    case BinaryOp::sub: return launch(Sub{});
    case BinaryOp::mul: return launch(Mul{});
    case BinaryOp::div: return launch(Div{});
    case BinaryOp::maximum: return launch(Maximum{});
    case BinaryOp::minimum: return launch(Minimum{});
  }
  throw std::invalid_argument(std::string("defer::kernels::cuda::") + who + ": unknown op " +
                              std::to_string(static_cast<int>(op)));
}

template <class F>
void launch_map1(F f, const float* x, float* out, std::int64_t n, cudaStream_t stream) {
  const bool vec4 = aligned16(x) && aligned16(out);
  map1_kernel<<<blocks_for(vec4 ? (n + 3) / 4 : n), kThreads, 0, stream>>>(f, x, out, n, vec4);
  DEFER_CUDA_CHECK(cudaGetLastError());
}

// Drops extent-1 dimensions and merges neighbours that both inputs traverse as one (the outer
// stride equals the inner stride times the inner extent, which includes stride 0 for both). A
// descriptor that reduces to nothing or to one dimension of unit strides is the contiguous case.
Broadcast simplify(const Broadcast& in) {
  Broadcast out;
  for (int d = 0; d < in.ndim; ++d) {
    if (in.shape[d] == 1) continue;
    if (out.ndim > 0) {
      const int p = out.ndim - 1;
      if (out.stride[0][p] == in.stride[0][d] * in.shape[d] && out.stride[1][p] == in.stride[1][d] * in.shape[d]) {
        out.shape[p] *= in.shape[d];
        out.stride[0][p] = in.stride[0][d];
        out.stride[1][p] = in.stride[1][d];
        continue;
      }
    }
    out.shape[out.ndim] = in.shape[d];
    out.stride[0][out.ndim] = in.stride[0][d];
    out.stride[1][out.ndim] = in.stride[1][d];
    ++out.ndim;
  }
  return out;
}

// True when every index below n and every offset into a or b fits in 31 bits.
bool fits_32bit(const Broadcast& bc, std::int64_t n) {
  constexpr std::int64_t kLimit = INT32_MAX;
  if (n > kLimit) return false;
  for (int input = 0; input < 2; ++input) {
    std::int64_t max_offset = 0;
    for (int d = 0; d < bc.ndim; ++d) {
      const std::int64_t s = bc.stride[input][d];
      if (s < 0 || (s > 0 && bc.shape[d] - 1 > (kLimit - max_offset) / s)) return false;
      max_offset += (bc.shape[d] - 1) * s;
    }
  }
  return true;
}

}  // namespace

void unary(UnaryOp op, const float* x, float* out, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  dispatch_unary(op, [&](auto f) { launch_map1(f, x, out, n, stream); });
}

void binary_scalar(BinaryOp op, const float* x, float s, float* out, std::int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  dispatch_binary(op, "binary_scalar", [&](auto f) { launch_map1(WithScalar<decltype(f)>{f, s}, x, out, n, stream); });
}

void binary(BinaryOp op, const float* a, const float* b, float* out, std::int64_t n, const Broadcast* bc,
            cudaStream_t stream) {
  if (n <= 0) return;
  Broadcast simple;
  bool contiguous = true;
  if (bc) {
    if (bc->ndim < 0 || bc->ndim > kMaxDims)
      throw std::invalid_argument("defer::kernels::cuda::binary: Broadcast::ndim " + std::to_string(bc->ndim) +
                                  " is outside [0, " + std::to_string(kMaxDims) + "]");
    simple = simplify(*bc);
    contiguous = simple.ndim == 0 || (simple.ndim == 1 && simple.stride[0][0] == 1 && simple.stride[1][0] == 1);
  }
  dispatch_binary(op, "binary", [&](auto f) {
    using F = decltype(f);
    if (contiguous) {
      const bool vec4 = aligned16(a) && aligned16(b) && aligned16(out);
      map2_kernel<<<blocks_for(vec4 ? (n + 3) / 4 : n), kThreads, 0, stream>>>(f, a, b, out, n, vec4);
    } else if (fits_32bit(simple, n)) {
      broadcast_kernel<F, std::uint32_t><<<blocks_for(n), kThreads, 0, stream>>>(f, a, b, out, n, simple);
    } else {
      broadcast_kernel<F, std::int64_t><<<blocks_for(n), kThreads, 0, stream>>>(f, a, b, out, n, simple);
    }
    DEFER_CUDA_CHECK(cudaGetLastError());
  });
}

}  // namespace defer::kernels::cuda
