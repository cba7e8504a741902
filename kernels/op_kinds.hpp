#pragma once
// The vocabulary shared by both backends' kernels and by the op layer: which element-wise,
// reduction and normalization functions exist, and how an element-wise input is broadcast.
// Kernels know nothing of Awaits or graphs. This header is C++17 so CUDA sources can include it.
#include <cstdint>

namespace defer::kernels {

enum class UnaryOp : std::uint8_t { neg, abs, exp, log, sqrt, tanh, sigmoid, relu, silu, gelu, gelu_tanh };
enum class BinaryOp : std::uint8_t { add, sub, mul, div, maximum, minimum };
enum class ReduceOp : std::uint8_t { sum, mean, max };

inline constexpr int kMaxDims = 8;

// How the inputs of a binary element-wise op are indexed by the output's multi-index: the output
// is row-major with `shape`; input i reads element sum_d index[d] * stride[i][d] (stride 0 where
// it is broadcast). The op layer collapses adjacent dimensions first, so ndim is small.
struct Broadcast {
  int ndim = 0;
  std::int64_t shape[kMaxDims] = {};
  std::int64_t stride[2][kMaxDims] = {};
};

const char* name(UnaryOp op) noexcept;
const char* name(BinaryOp op) noexcept;
const char* name(ReduceOp op) noexcept;

}  // namespace defer::kernels
