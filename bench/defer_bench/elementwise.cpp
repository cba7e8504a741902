// Element-wise chains: eight dependent element-wise ops on x and a second tensor y, of which only
// the end is kept. Eager and deferred launch one kernel per op and write every intermediate; fused
// runs the chain as one kernel that reads x and y once and writes the result once.
//   chain8      cheap ops only (scalar mul/add, relu, x + y): bound by memory traffic, where fusion
//               saves the most;
//   chain8_mix  with sigmoid and tanh, as in an activation-heavy model: on the CPU bound by their
//               arithmetic, so fusion saves less there.
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
Workload make_chain(const char* name, const char* description, int exponent, defer::Device device, Chain chain) {
  const std::int64_t n = std::int64_t{1} << exponent;
  Workload w;
  w.name = name;
  w.size = pow2(exponent);
  w.description = description;
  w.bytes_per_step = 3.0 * static_cast<double>(n) * sizeof(float);  // x and y read once, the result written once
  w.prepare = [n, device, chain] {
    const TensorAwait x = random_tensor({n}, 11, 1.f, device);
    const TensorAwait y = random_tensor({n}, 12, 1.f, device);
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
  for (int e : quick ? std::vector<int>{12} : std::vector<int>{12, 16, 20})
    out.push_back(make_chain("chain8_mix", "8 element-wise ops on x[n], y[n] with sigmoid and tanh", e, device,
                             chain8_mix));
}

}  // namespace defer_bench
