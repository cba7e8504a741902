// Deterministic inputs. A small xorshift generator instead of <random>'s distributions: the
// standard leaves uniform_real_distribution's algorithm to the library, so its values could differ
// between standard libraries, and the bench's inputs (and hence its checksums) should not.
#include <vector>

#include "workload.hpp"

namespace defer_bench {

defer::TensorAwait random_tensor(const defer::Shape& shape, std::uint32_t seed, float scale, defer::Device device,
                                 float offset) {
  std::int64_t n = 1;
  for (std::int64_t e : shape) n *= e;
  std::vector<float> values(static_cast<std::size_t>(n));
  std::uint64_t state = 0x9E3779B97F4A7C15ull ^ (std::uint64_t{seed} * 0xBF58476D1CE4E5B9ull);
  for (float& v : values) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    const double unit = static_cast<double>(state >> 11) * 0x1.0p-53;  // [0, 1)
    v = static_cast<float>(offset + (2.0 * unit - 1.0) * scale);
  }
  defer::Tensor t = defer::from_vector(values, shape, device);
  defer::current_stream(device).synchronize();  // uploads are no part of any timed step
  return defer::TensorAwait(std::move(t));
}

}  // namespace defer_bench
