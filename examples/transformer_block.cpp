// transformer_block: inference through one transformer encoder block, written with defer.
//
// The block (pre-norm, as in GPT-2 and ViT), for x of shape [batch, seq, hidden]:
//
//   h  = layer_norm(x)
//   x2 = x + multi_head_attention(h)
//   y  = x2 + mlp(layer_norm(x2))          mlp(z) = gelu(z · W1 + c1) · W2 + c2
//
// What to look for:
//   1. Calling the ops records them; nothing runs and no kernel is launched (in the default,
//      deferred mode).
//   2. One wait runs the whole block: the planner sees every op at once and fuses the element-wise
//      ones (bias adds, scaling, gelu, residuals) into fewer kernels.
//   3. The same code in eager mode (one kernel per op, at its call) gives the same numbers.
//
// It prints the output's checksum, the launches of each mode, and the largest difference from eager;
// the exit status is 1 if that difference exceeds 1e-4 of the output's scale.
//
//   transformer_block [--device cpu|cuda|cuda:N]     (default: defer::default_device())
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <optional>
#include <string_view>
#include <vector>

#include <defer/defer.hpp>

using defer::Device;
using defer::Tensor;
using defer::TensorAwait;

namespace {

// A small BERT-like block.
constexpr std::int64_t kBatch = 2;
constexpr std::int64_t kSeq = 64;
constexpr std::int64_t kHidden = 256;
constexpr std::int64_t kHeads = 4;
constexpr std::int64_t kHeadDim = kHidden / kHeads;
constexpr std::int64_t kMlp = 4 * kHidden;

// ---- Weights ----------------------------------------------------------------------------------
// Deterministic pseudo-random values: the same on every machine and in every run, so that the
// printed checksum can be compared between runs.
class Random {
 public:
  explicit Random(std::uint64_t seed) : state_(seed) {}
  float uniform(float lo, float hi) {  // in [lo, hi)
    state_ = state_ * 6364136223846793005ull + 1442695040888963407ull;
    const double unit = static_cast<double>(state_ >> 11) * 0x1.0p-53;
    return static_cast<float>(lo + (hi - lo) * unit);
  }

 private:
  std::uint64_t state_;
};

Tensor random_tensor(Random& rng, const defer::Shape& shape, float lo, float hi, Device device) {
  std::int64_t n = 1;
  for (std::int64_t e : shape) n *= e;
  std::vector<float> values(static_cast<std::size_t>(n));
  for (float& v : values) v = rng.uniform(lo, hi);
  return defer::from_vector(values, shape, device);
}

struct Weights {
  Tensor ln1_gamma, ln1_beta;  // [hidden]
  Tensor wq, wk, wv, wo;       // [hidden, hidden]: the query, key, value and output projections
  Tensor bq, bk, bv, bo;       // [hidden]
  Tensor ln2_gamma, ln2_beta;  // [hidden]
  Tensor w1, c1;               // [hidden, mlp], [mlp]
  Tensor w2, c2;               // [mlp, hidden], [hidden]
};

// Matrices uniform in +-1/sqrt(fan-in), so that activations stay of order one.
Weights make_weights(Random& rng, Device device) {
  const auto matrix = [&](std::int64_t rows, std::int64_t cols) {
    const float a = 1.f / std::sqrt(static_cast<float>(rows));
    return random_tensor(rng, {rows, cols}, -a, a, device);
  };
  const auto bias = [&](std::int64_t n) { return random_tensor(rng, {n}, -0.1f, 0.1f, device); };
  const auto gamma = [&](std::int64_t n) { return random_tensor(rng, {n}, 0.9f, 1.1f, device); };
  Weights w;
  w.ln1_gamma = gamma(kHidden);
  w.ln1_beta = bias(kHidden);
  w.wq = matrix(kHidden, kHidden);
  w.wk = matrix(kHidden, kHidden);
  w.wv = matrix(kHidden, kHidden);
  w.wo = matrix(kHidden, kHidden);
  w.bq = bias(kHidden);
  w.bk = bias(kHidden);
  w.bv = bias(kHidden);
  w.bo = bias(kHidden);
  w.ln2_gamma = gamma(kHidden);
  w.ln2_beta = bias(kHidden);
  w.w1 = matrix(kHidden, kMlp);
  w.c1 = bias(kMlp);
  w.w2 = matrix(kMlp, kHidden);
  w.c2 = bias(kHidden);
  return w;
}

// ---- The block ---------------------------------------------------------------------------------
// Plain code on Await<Tensor>s. In deferred mode each line only records an op (shapes are checked
// here, at the call); in eager mode each line launches its kernel.
// [batch, seq, hidden] -> [batch, heads, seq, head_dim]: a view (no copy) that splits the hidden
// dim into heads and swaps the seq and heads dims.
TensorAwait split_heads(const TensorAwait& t) {
  return defer::transpose(defer::view(t, {kBatch, kSeq, kHeads, kHeadDim}), 1, 2);
}

TensorAwait self_attention(const TensorAwait& h, const Weights& w) {
  const float scale = 1.f / std::sqrt(static_cast<float>(kHeadDim));
  // [batch, seq, hidden] · [hidden, hidden]: the 2-D weight is shared across the batch.
  TensorAwait q = split_heads(defer::matmul(h, w.wq) + w.bq);          // [batch, heads, seq, head_dim]
  TensorAwait k = split_heads(defer::matmul(h, w.wk) + w.bk);
  TensorAwait v = split_heads(defer::matmul(h, w.wv) + w.bv);
  TensorAwait scores = defer::matmul(q, defer::transpose(k)) * scale;  // [batch, heads, seq, seq]
  TensorAwait p = defer::softmax(scores, -1);                           // each row sums to 1
  TensorAwait o = defer::matmul(p, v);                                  // [batch, heads, seq, head_dim]
  // Back to [batch, seq, hidden]: the transpose is a view, the reshape of it copies once.
  TensorAwait merged = defer::reshape(defer::transpose(o, 1, 2), {kBatch, kSeq, kHidden});
  return defer::matmul(merged, w.wo) + w.bo;
}

TensorAwait mlp(const TensorAwait& z, const Weights& w) {
  TensorAwait up = defer::gelu(defer::matmul(z, w.w1) + w.c1);  // [batch, seq, mlp]
  return defer::matmul(up, w.w2) + w.c2;                        // [batch, seq, hidden]
}

TensorAwait encoder_block(const TensorAwait& x, const Weights& w) {
  TensorAwait x2 = x + self_attention(defer::layer_norm(x, w.ln1_gamma, w.ln1_beta), w);
  return x2 + mlp(defer::layer_norm(x2, w.ln2_gamma, w.ln2_beta), w);
}

// ---- Command line and checks ------------------------------------------------------------------
std::optional<Device> parse_device(std::string_view s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  int index = -1;
  if (s.starts_with("cuda:") && s.size() > 5) {
    auto [end, ec] = std::from_chars(s.data() + 5, s.data() + s.size(), index);
    if (ec == std::errc() && end == s.data() + s.size() && index >= 0) return Device::cuda(index);
  }
  return std::nullopt;
}

// max |a - b| / max |b|: the difference relative to the output's scale.
double max_relative_difference(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return scale > 0 ? worst / scale : worst;
}

}  // namespace

int main(int argc, char** argv) try {
  std::optional<Device> chosen;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--device" && i + 1 < argc) arg = argv[++i];
    else if (arg.starts_with("--device=")) arg.remove_prefix(9);
    else arg = {};
    if (arg.empty() || !(chosen = parse_device(arg))) {
      std::fprintf(stderr, "usage: %s [--device cpu|cuda|cuda:N]\n", argv[0]);
      return 2;
    }
  }
  // An explicit CUDA request on a machine without a GPU throws DeviceError: never a fallback.
  const Device device = chosen ? *chosen : defer::default_device();

  Random rng(2026);
  const Weights weights = make_weights(rng, device);
  const Tensor x = random_tensor(rng, {kBatch, kSeq, kHidden}, -1.f, 1.f, device);
  std::printf("device: %s; encoder block: batch %lld, seq %lld, hidden %lld, %lld heads, mlp %lld\n",
              device.str().c_str(), static_cast<long long>(kBatch), static_cast<long long>(kSeq),
              static_cast<long long>(kHidden), static_cast<long long>(kHeads), static_cast<long long>(kMlp));

  // 1. Deferred (the default mode): building the block records ops and launches nothing.
  defer::reset_stats();
  const TensorAwait y = encoder_block(x, weights);
  std::printf("deferred: recorded the block, %llu kernels launched so far\n",
              static_cast<unsigned long long>(defer::stats().kernel_launches));

  // 2. The wait plans everything y needs and launches it; to_vector copies the result to the host.
  const Tensor out = defer::wait(y);
  const std::vector<float> result = defer::to_vector(out);
  const defer::Stats deferred_stats = defer::stats();
  std::printf("deferred: waited, %llu kernels launched (%llu of them fused from several ops)\n",
              static_cast<unsigned long long>(deferred_stats.kernel_launches),
              static_cast<unsigned long long>(deferred_stats.fused_kernels));

  // 3. The same function in eager mode: every op launches its own kernel at its call.
  std::vector<float> reference;
  {
    const defer::ModeGuard eager(defer::Mode::eager);
    defer::reset_stats();
    reference = defer::to_vector(defer::wait(encoder_block(x, weights)));
    std::printf("eager:    %llu kernels launched, one per op\n",
                static_cast<unsigned long long>(defer::stats().kernel_launches));
  }

  // 4. The two must agree.
  double checksum = 0;
  for (float v : result) checksum += v;
  const double difference = max_relative_difference(result, reference);
  const bool ok = difference <= 1e-4;
  std::printf("output %s, checksum %.6f\n", defer::shape_str(out.shape()).c_str(), checksum);
  std::printf("max |deferred - eager| / max |eager| = %.3g: %s\n", difference, ok ? "match" : "MISMATCH");
  return ok ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "%s: error: %s\n", argc > 0 ? argv[0] : "transformer_block", e.what());
  return 1;
}
