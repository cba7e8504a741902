#pragma once
// The per-op math of the CPU element-wise kernels, shared by the one-op kernels (elementwise.cpp)
// and the fused-program interpreter (fused.cpp) so that a fused chain gives bit-for-bit the same
// results as the same ops run one by one. Each op is a small functor; with_unary / with_binary
// switch on the op once and hand the functor to a loop written by the caller, so the loop body is
// a single inlined expression that the compiler can vectorize. Internal to kernels/cpu.
#include <cmath>

#include "op_kinds.hpp"

namespace defer::kernels::cpu::math {

inline constexpr double kInvSqrt2 = 0.70710678118654752440;
inline constexpr double kSqrt2OverPi = 0.79788456080286535588;

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

}  // namespace defer::kernels::cpu::math
