// CPU element-wise kernels. Each op is a small functor; the switch on the op happens once per
// call, outside the loops, so every loop body is a single inlined expression that the compiler can
// vectorize (the transcendental ones stay scalar calls into libm, which is where their time goes).
// Buffers may alias exactly (out == x): every loop reads element i before it writes element i.
#include <cmath>
#include <cstdint>

#include "cpu/ops.hpp"

namespace defer::kernels::cpu {
namespace {

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kSqrt2OverPi = 0.79788456080286535588;

// 1 / (1 + exp(-x)) without overflow: exp is only ever taken of -|x| <= 0, and for x < 0 the
// result is e / (1 + e), which keeps full relative accuracy deep into the negative tail.
inline float sigmoid_f(float x) {
  const float e = std::exp(-std::fabs(x));
  const float r = 1.f / (1.f + e);
  return x >= 0.f ? r : e * r;  // NaN: e is NaN, so is e * r
}

inline double sigmoid_d(double x) {
  const double e = std::exp(-std::fabs(x));
  const double r = 1.0 / (1.0 + e);
  return x >= 0.0 ? r : e * r;
}

// ---- unary ops
struct Neg {
  float operator()(float x) const { return -x; }
};
struct Abs {
  float operator()(float x) const { return std::fabs(x); }
};
struct Exp {
  float operator()(float x) const { return std::exp(x); }
};
struct Log {
  float operator()(float x) const { return std::log(x); }
};
struct Sqrt {
  float operator()(float x) const { return std::sqrt(x); }
};
struct Tanh {
  float operator()(float x) const { return std::tanh(x); }
};
struct Sigmoid {
  float operator()(float x) const { return sigmoid_f(x); }
};
struct Relu {
  // NaN < 0 is false, so NaN passes through.
  float operator()(float x) const { return x < 0.f ? 0.f : x; }
};
struct Silu {
  float operator()(float x) const { return x * sigmoid_f(x); }
};
// Exact GELU, x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), written with erfc so that the negative
// tail (where 1 + erf cancels) keeps its relative accuracy; in double because the tail is steep
// (a float argument's rounding would be amplified by ~x^2).
struct Gelu {
  float operator()(float x) const {
    const double xd = x;
    return static_cast<float>(0.5 * xd * std::erfc(-xd * kInvSqrt2));
  }
};
// 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3); 1 + tanh(u) = 2 sigmoid(2u), which
// does not cancel for negative x.
struct GeluTanh {
  float operator()(float x) const {
    const double xd = x;
    const double u = kSqrt2OverPi * (xd + 0.044715 * xd * xd * xd);
    return static_cast<float>(xd * sigmoid_d(2.0 * u));
  }
};

// ---- binary ops
struct Add {
  float operator()(float a, float b) const { return a + b; }
};
struct Sub {
  float operator()(float a, float b) const { return a - b; }
};
struct Mul {
  float operator()(float a, float b) const { return a * b; }
};
struct Div {
  float operator()(float a, float b) const { return a / b; }
};
// NaN in either operand gives NaN (torch.maximum / torch.minimum).
struct Max {
  float operator()(float a, float b) const { return (a > b || a != a) ? a : b; }
};
struct Min {
  float operator()(float a, float b) const { return (a < b || a != a) ? a : b; }
};

template <class Fn>
void with_unary(UnaryOp op, Fn&& fn) {
  switch (op) {
    case UnaryOp::neg: return fn(Neg{});
    case UnaryOp::abs: return fn(Abs{});
    case UnaryOp::exp: return fn(Exp{});
    case UnaryOp::log: return fn(Log{});
    case UnaryOp::sqrt: return fn(Sqrt{});
    case UnaryOp::tanh: return fn(Tanh{});
    case UnaryOp::sigmoid: return fn(Sigmoid{});
    case UnaryOp::relu: return fn(Relu{});
    case UnaryOp::silu: return fn(Silu{});
    case UnaryOp::gelu: return fn(Gelu{});
    case UnaryOp::gelu_tanh: return fn(GeluTanh{});
  }
}

template <class Fn>
void with_binary(BinaryOp op, Fn&& fn) {
  switch (op) {
    case BinaryOp::add: return fn(Add{});
    case BinaryOp::sub: return fn(Sub{});
    case BinaryOp::mul: return fn(Mul{});
    case BinaryOp::div: return fn(Div{});
    case BinaryOp::maximum: return fn(Max{});
    case BinaryOp::minimum: return fn(Min{});
  }
}

template <class F>
void map_unary(F f, const float* x, float* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = f(x[i]);
}

// One row of a broadcast op: n outputs, inputs advancing by sa and sb elements. The common stride
// patterns get loops of their own so that they vectorize.
template <class F>
void binary_row(F f, const float* a, std::int64_t sa, const float* b, std::int64_t sb, float* out, std::int64_t n) {
  if (sa == 1 && sb == 1) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = f(a[i], b[i]);
  } else if (sa == 0 && sb == 1) {
    const float av = a[0];
    for (std::int64_t i = 0; i < n; ++i) out[i] = f(av, b[i]);
  } else if (sa == 1 && sb == 0) {
    const float bv = b[0];
    for (std::int64_t i = 0; i < n; ++i) out[i] = f(a[i], bv);
  } else if (sa == 0 && sb == 0) {
    const float v = f(a[0], b[0]);
    for (std::int64_t i = 0; i < n; ++i) out[i] = v;
  } else {
    for (std::int64_t i = 0; i < n; ++i) out[i] = f(a[i * sa], b[i * sb]);
  }
}

// Walks the output's rows (all dimensions but the last) with an odometer, keeping the two input
// offsets up to date incrementally, and hands each row to binary_row.
template <class F>
void binary_broadcast(F f, const float* a, const float* b, float* out, std::int64_t n, const Broadcast& bc) {
  const int nd = bc.ndim;
  if (nd <= 0) {
    if (n > 0) out[0] = f(a[0], b[0]);
    return;
  }
  std::int64_t rows = 1;
  for (int d = 0; d < nd; ++d) {
    if (bc.shape[d] <= 0) return;
    if (d < nd - 1) rows *= bc.shape[d];
  }
  const std::int64_t inner = bc.shape[nd - 1];
  const std::int64_t sa = bc.stride[0][nd - 1];
  const std::int64_t sb = bc.stride[1][nd - 1];
  std::int64_t idx[kMaxDims] = {};
  std::int64_t off_a = 0;
  std::int64_t off_b = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    binary_row(f, a + off_a, sa, b + off_b, sb, out + r * inner, inner);
    for (int d = nd - 2; d >= 0; --d) {
      if (++idx[d] < bc.shape[d]) {
        off_a += bc.stride[0][d];
        off_b += bc.stride[1][d];
        break;
      }
      idx[d] = 0;
      off_a -= (bc.shape[d] - 1) * bc.stride[0][d];
      off_b -= (bc.shape[d] - 1) * bc.stride[1][d];
    }
  }
}

}  // namespace

void unary(UnaryOp op, const float* x, float* out, std::int64_t n) {
  if (n <= 0) return;
  with_unary(op, [&](auto f) { map_unary(f, x, out, n); });
}

void binary_scalar(BinaryOp op, const float* x, float s, float* out, std::int64_t n) {
  if (n <= 0) return;
  with_binary(op, [&](auto f) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = f(x[i], s);
  });
}

void binary(BinaryOp op, const float* a, const float* b, float* out, std::int64_t n, const Broadcast* bc) {
  if (bc == nullptr) {
    if (n <= 0) return;
    with_binary(op, [&](auto f) {
      for (std::int64_t i = 0; i < n; ++i) out[i] = f(a[i], b[i]);
    });
    return;
  }
  with_binary(op, [&](auto f) { binary_broadcast(f, a, b, out, n, *bc); });
}

}  // namespace defer::kernels::cpu
