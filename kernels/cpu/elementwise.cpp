// CPU element-wise kernels. Each op is a small functor; the switch on the op happens once per
// call, outside the loops, so every loop body is a single inlined expression that the compiler can
// vectorize (the transcendental ones stay scalar calls into libm, which is where their time goes).
// Buffers may alias exactly (out == x): every loop reads element i before it writes element i.
#include <cmath>
#include <cstdint>

#include "cpu/elementwise_math.hpp"
#include "cpu/ops.hpp"

namespace defer::kernels::cpu {
namespace {

using math::with_binary;
using math::with_unary;

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
