// Inference through one transformer encoder block (pre-norm, as in GPT-2 and ViT):
//
//   h   = layer_norm(x, g1, b1)
//   a   = multi-head self-attention(h)            heads of head_dim = hidden / heads
//   x2  = x + a
//   y   = x2 + W2 · gelu(W1 · layer_norm(x2, g2, b2) + c1) + c2     MLP of width 4 * hidden
//
// x is [batch, seq, hidden]. defer has no reshape or permute, so the attention is written per head
// with per-head projection weights: q_h = h · Wq_h + bq_h with Wq_h [hidden, head_dim] (the same for
// k and v), scores_h = q_h · transpose(k_h) * 1/sqrt(head_dim), p_h = softmax(scores_h, -1),
// o_h = p_h · v_h, and the output projection a = sum_h o_h · Wo_h + bo with Wo_h [head_dim, hidden].
// This is mathematically identical to the usual concat-heads form: Wq_h is the h-th block of
// head_dim columns of Wq [hidden, hidden], and concat_h(o_h) · Wo = sum_h o_h · Wo_h where Wo_h is
// the h-th block of head_dim rows of Wo. Only the kernels differ (more, smaller matmuls).
//
// The weights are deterministic pseudo-random values scaled by 1/sqrt(fan-in), so activations stay
// of order one through the block.
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "workload.hpp"

namespace defer_bench {
namespace {

using defer::TensorAwait;

struct Head {
  TensorAwait wq, wk, wv;  // [hidden, head_dim]
  TensorAwait bq, bk, bv;  // [head_dim]
  TensorAwait wo;          // [head_dim, hidden]
};

struct BlockWeights {
  TensorAwait ln1_gamma, ln1_beta, ln2_gamma, ln2_beta;  // [hidden]
  std::vector<Head> heads;
  TensorAwait bo;      // [hidden]
  TensorAwait w1, c1;  // [hidden, 4 hidden], [4 hidden]
  TensorAwait w2, c2;  // [4 hidden, hidden], [hidden]
};

BlockWeights make_weights(const BlockSize& s, defer::Device device) {
  const auto scale = [](std::int64_t fan_in) { return 1.f / std::sqrt(static_cast<float>(fan_in)); };
  std::uint32_t seed = 1000;
  BlockWeights w;
  w.ln1_gamma = random_tensor({s.hidden}, seed++, 0.1f, device, 1.f);
  w.ln1_beta = random_tensor({s.hidden}, seed++, 0.1f, device);
  w.ln2_gamma = random_tensor({s.hidden}, seed++, 0.1f, device, 1.f);
  w.ln2_beta = random_tensor({s.hidden}, seed++, 0.1f, device);
  for (std::int64_t h = 0; h < s.heads; ++h) {
    Head head;
    head.wq = random_tensor({s.hidden, s.head_dim()}, seed++, scale(s.hidden), device);
    head.wk = random_tensor({s.hidden, s.head_dim()}, seed++, scale(s.hidden), device);
    head.wv = random_tensor({s.hidden, s.head_dim()}, seed++, scale(s.hidden), device);
    head.bq = random_tensor({s.head_dim()}, seed++, 0.1f, device);
    head.bk = random_tensor({s.head_dim()}, seed++, 0.1f, device);
    head.bv = random_tensor({s.head_dim()}, seed++, 0.1f, device);
    head.wo = random_tensor({s.head_dim(), s.hidden}, seed++, scale(s.hidden), device);
    w.heads.push_back(std::move(head));
  }
  w.bo = random_tensor({s.hidden}, seed++, 0.1f, device);
  w.w1 = random_tensor({s.hidden, s.mlp()}, seed++, scale(s.hidden), device);
  w.c1 = random_tensor({s.mlp()}, seed++, 0.1f, device);
  w.w2 = random_tensor({s.mlp(), s.hidden}, seed++, scale(s.mlp()), device);
  w.c2 = random_tensor({s.hidden}, seed++, 0.1f, device);
  return w;
}

TensorAwait encoder_block(const TensorAwait& x, const BlockWeights& w, std::int64_t head_dim) {
  const float score_scale = 1.f / std::sqrt(static_cast<float>(head_dim));
  const TensorAwait h = defer::layer_norm(x, w.ln1_gamma, w.ln1_beta);
  TensorAwait attention;
  for (const Head& head : w.heads) {
    const TensorAwait q = defer::matmul(h, head.wq) + head.bq;  // [batch, seq, head_dim]
    const TensorAwait k = defer::matmul(h, head.wk) + head.bk;
    const TensorAwait v = defer::matmul(h, head.wv) + head.bv;
    const TensorAwait scores = defer::matmul(q, defer::transpose(k)) * score_scale;  // [batch, seq, seq]
    const TensorAwait p = defer::softmax(scores, -1);
    const TensorAwait projected = defer::matmul(defer::matmul(p, v), head.wo);  // [batch, seq, hidden]
    attention = attention.valid() ? attention + projected : projected;
  }
  const TensorAwait x2 = x + attention + w.bo;
  const TensorAwait up = defer::gelu(defer::matmul(defer::layer_norm(x2, w.ln2_gamma, w.ln2_beta), w.w1) + w.c1);
  return x2 + (defer::matmul(up, w.w2) + w.c2);
}

}  // namespace

void add_transformer_workloads(std::vector<Workload>& out, const std::vector<BlockSize>& sizes, defer::Device device) {
  for (const BlockSize& s : sizes) {
    Workload w;
    w.name = "transformer";
    w.size = std::to_string(s.batch) + "x" + std::to_string(s.seq) + "x" + std::to_string(s.hidden) + "/" +
             std::to_string(s.heads) + "h";
    w.description = "encoder block, batch x seq x hidden / heads: layer_norm, per-head QKV, softmax attention, "
                    "output projection, GELU MLP (4x), residuals";
    const double tokens = static_cast<double>(s.batch * s.seq);
    const double hidden = static_cast<double>(s.hidden);
    // QKV 6 t h^2, scores and p.v 4 t seq h, output projection 2 t h^2, MLP 16 t h^2.
    w.flops_per_step = tokens * hidden * (24.0 * hidden + 4.0 * static_cast<double>(s.seq));
    w.prepare = [s, device] {
      const TensorAwait x = random_tensor({s.batch, s.seq, s.hidden}, 7, 1.f, device);
      auto weights = std::make_shared<const BlockWeights>(make_weights(s, device));
      return std::function<TensorAwait()>(
          [x, weights, head_dim = s.head_dim()] { return encoder_block(x, *weights, head_dim); });
    };
    out.push_back(std::move(w));
  }
}

}  // namespace defer_bench
