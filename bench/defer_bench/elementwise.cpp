// Element-wise chains: eight dependent element-wise ops on x and a second tensor y, of which only
// the end is kept. Eager and deferred launch one kernel per op and write every intermediate; fused
// runs the chain as one kernel that reads x and y once and writes the result once.
//   chain8      cheap ops only (scalar mul/add, relu, x + y): bound by memory traffic, where fusion
//               saves the most;
//   chain8_mix  with sigmoid and tanh, as in an activation-heavy model: on the CPU bound by their
//               arithmetic, so fusion saves less there;
//   chain8_f16, chain8_bf16
//               chain8 on half-precision tensors: half the bytes of chain8 move (the math is f32 in
//               registers), so on a GPU a fused chain should process about twice the elements per
//               second of the f32 one at sizes bound by memory (2^24 on CUDA).
#include <array>
#include <string>

#include "workload.hpp"

namespace defer_bench {
namespace {

using defer::TensorAwait;

TensorAwait chain8(const TensorAwait& x, const TensorAwait& y) {
  TensorAwait t = x * 0.9f;
  t = t + y;
  t = defer::relu(t);
  t = t + 0.1f;
  t = t * 0.5f;
  t = t + y;
  t = defer::relu(t);
  return t * 0.75f;
}

TensorAwait chain8_mix(const TensorAwait& x, const TensorAwait& y) {
  TensorAwait t = x * 0.9f;
  t = t + y;
  t = defer::relu(t);
  t = t + 0.1f;
  t = defer::sigmoid(t);
  t = t * 1.5f;
  t = defer::tanh(t);
  return t + y;
}

std::string pow2(int e) { return "2^" + std::to_string(e); }

template <class Chain>
Workload make_chain(const char* name, const char* description, int exponent, defer::Device device, Chain chain,
                    defer::DType dtype = defer::DType::f32) {
  const std::int64_t n = std::int64_t{1} << exponent;
  Workload w;
  w.name = name;
  w.size = pow2(exponent);
  w.description = description;
  // x and y read once, the result written once
  w.bytes_per_step = 3.0 * static_cast<double>(n) * static_cast<double>(defer::dtype_size(dtype));
  w.min_tolerance = dtype == defer::DType::f16 ? 1e-2 : dtype == defer::DType::bf16 ? 5e-2 : 0.0;
  w.prepare = [n, device, chain, dtype] {
    TensorAwait x = random_tensor({n}, 11, 1.f, device);
    TensorAwait y = random_tensor({n}, 12, 1.f, device);
    if (dtype != defer::DType::f32) {  // the inputs are made in f32 and cast once, outside the steps
      x = defer::wait(defer::to(x, dtype));
      y = defer::wait(defer::to(y, dtype));
    }
    return std::function<TensorAwait()>([x, y, chain] { return chain(x, y); });
  };
  return w;
}

}  // namespace

void add_elementwise_workloads(std::vector<Workload>& out, bool quick, defer::Device device) {
  const std::array<int, 4> full = {12, 16, 20, 22};
  const std::array<int, 2> small = {12, 16};
  for (int e : quick ? std::vector<int>(small.begin(), small.end()) : std::vector<int>(full.begin(), full.end()))
    out.push_back(make_chain("chain8", "8 cheap element-wise ops on x[n], y[n] (mul, add, relu, x + y)", e, device,
                             chain8));
  for (int e : quick ? std::vector<int>{12} : std::vector<int>{12, 16, 20, 22})
    out.push_back(make_chain("chain8_mix", "8 element-wise ops on x[n], y[n] with sigmoid and tanh", e, device,
                             chain8_mix));
  // Half precision, and f32 at the same size for the ratio, at 2^24 on a GPU (bound by memory).
  const bool gpu = device.kind() == defer::DeviceKind::cuda;
  std::vector<int> half = quick ? std::vector<int>{12} : std::vector<int>{16, 20};
  if (gpu && !quick) half.push_back(24);
  if (gpu && !quick)
    out.push_back(make_chain("chain8", "8 cheap element-wise ops on x[n], y[n] (mul, add, relu, x + y)", 24, device,
                             chain8));
  for (int e : half) {
    out.push_back(make_chain("chain8_f16", "chain8 on f16 x[n], y[n] (computed in f32, stored in f16)", e, device,
                             chain8, defer::DType::f16));
    out.push_back(make_chain("chain8_bf16", "chain8 on bf16 x[n], y[n] (computed in f32, stored in bf16)", e, device,
                             chain8, defer::DType::bf16));
  }
}

}  // namespace defer_bench
