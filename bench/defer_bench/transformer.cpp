// Inference through one transformer encoder block (pre-norm, as in GPT-2 and ViT):
//
//   h   = layer_norm(x, g1, b1)
//   a   = multi-head self-attention(h)            heads of head_dim = hidden / heads
//   x2  = x + a
//   y   = x2 + W2 · gelu(W1 · layer_norm(x2, g2, b2) + c1) + c2     MLP of width 4 * hidden
//
// x is [batch, seq, hidden]. `transformer` writes the attention the natural way, as PyTorch code does:
// q = h · Wq + bq viewed as [batch, seq, heads, head_dim] and transposed to [batch, heads, seq,
// head_dim] (views: no copy), scores = q · transpose(k) * 1/sqrt(head_dim) as one 4-D batched matmul,
// p = softmax(scores, -1), o = p · v, then o transposed back and reshaped to [batch, seq, hidden]
// (one copy) for the output projection.
//
// `transformer_per_head` is the form defer needed before it had views and 4-D matmul, kept to
// measure what they changed: per-head projection weights q_h = h · Wq_h + bq_h with Wq_h
// [hidden, head_dim], scores_h = q_h · transpose(k_h) * 1/sqrt(head_dim), o_h = p_h · v_h, and
// a = sum_h o_h · Wo_h + bo. Mathematically the same block (Wq_h is the h-th block of head_dim
// columns of Wq; concat_h(o_h) · Wo = sum_h o_h · Wo_h); many more, smaller kernels.
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
  TensorAwait wq, wk, wv, wo;                            // [hidden, hidden] (the natural form)
  TensorAwait bq, bk, bv;                                // [hidden]
  std::vector<Head> heads;                               // (the per-head form)
  TensorAwait bo;      // [hidden]
  TensorAwait w1, c1;  // [hidden, 4 hidden], [4 hidden]
  TensorAwait w2, c2;  // [4 hidden, hidden], [hidden]
};

BlockWeights make_weights(const BlockSize& s, defer::Device device, bool per_head) {
  const auto scale = [](std::int64_t fan_in) { return 1.f / std::sqrt(static_cast<float>(fan_in)); };
  std::uint32_t seed = 1000;
  BlockWeights w;
  w.ln1_gamma = random_tensor({s.hidden}, seed++, 0.1f, device, 1.f);
  w.ln1_beta = random_tensor({s.hidden}, seed++, 0.1f, device);
  w.ln2_gamma = random_tensor({s.hidden}, seed++, 0.1f, device, 1.f);
  w.ln2_beta = random_tensor({s.hidden}, seed++, 0.1f, device);
  if (!per_head) {
    w.wq = random_tensor({s.hidden, s.hidden}, seed++, scale(s.hidden), device);
    w.wk = random_tensor({s.hidden, s.hidden}, seed++, scale(s.hidden), device);
    w.wv = random_tensor({s.hidden, s.hidden}, seed++, scale(s.hidden), device);
    w.wo = random_tensor({s.hidden, s.hidden}, seed++, scale(s.hidden), device);
    w.bq = random_tensor({s.hidden}, seed++, 0.1f, device);
    w.bk = random_tensor({s.hidden}, seed++, 0.1f, device);
    w.bv = random_tensor({s.hidden}, seed++, 0.1f, device);
  }
  for (std::int64_t h = 0; per_head && h < s.heads; ++h) {
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

// The MLP half, shared by both forms.
TensorAwait mlp_residual(const TensorAwait& x2, const BlockWeights& w) {
  const TensorAwait up = defer::gelu(defer::matmul(defer::layer_norm(x2, w.ln2_gamma, w.ln2_beta), w.w1) + w.c1);
  return x2 + (defer::matmul(up, w.w2) + w.c2);
}

TensorAwait encoder_block(const TensorAwait& x, const BlockWeights& w, const BlockSize& s) {
  const float score_scale = 1.f / std::sqrt(static_cast<float>(s.head_dim()));
  const TensorAwait h = defer::layer_norm(x, w.ln1_gamma, w.ln1_beta);
  // [batch, seq, hidden] -> [batch, heads, seq, head_dim], a view.
  const auto heads = [&](const TensorAwait& t) {
    return defer::transpose(defer::view(t, {s.batch, s.seq, s.heads, s.head_dim()}), 1, 2);
  };
  const TensorAwait q = heads(defer::matmul(h, w.wq) + w.bq);
  const TensorAwait k = heads(defer::matmul(h, w.wk) + w.bk);
  const TensorAwait v = heads(defer::matmul(h, w.wv) + w.bv);
  const TensorAwait p = defer::softmax(defer::matmul(q, defer::transpose(k)) * score_scale, -1);  // [b, heads, seq, seq]
  const TensorAwait o = defer::reshape(defer::transpose(defer::matmul(p, v), 1, 2), {s.batch, s.seq, s.hidden});
  return mlp_residual(x + (defer::matmul(o, w.wo) + w.bo), w);
}

TensorAwait encoder_block_per_head(const TensorAwait& x, const BlockWeights& w, const BlockSize& s) {
  const float score_scale = 1.f / std::sqrt(static_cast<float>(s.head_dim()));
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
  return mlp_residual(x + attention + w.bo, w);
}

}  // namespace

void add_transformer_workloads(std::vector<Workload>& out, const std::vector<BlockSize>& sizes, defer::Device device) {
  for (const bool per_head : {false, true}) {
    for (const BlockSize& s : sizes) {
      Workload w;
      w.name = per_head ? "transformer_per_head" : "transformer";
      w.size = std::to_string(s.batch) + "x" + std::to_string(s.seq) + "x" + std::to_string(s.hidden) + "/" +
               std::to_string(s.heads) + "h";
      w.description = per_head ? "encoder block written per head (the form before views and 4-D matmul): layer_norm, "
                                 "per-head QKV, softmax attention, output projection, GELU MLP (4x), residuals"
                               : "encoder block, batch x seq x hidden / heads: layer_norm, QKV, view/transpose to heads, "
                                 "4-D batched attention matmuls, softmax, output projection, GELU MLP (4x), residuals";
      const double tokens = static_cast<double>(s.batch * s.seq);
      const double hidden = static_cast<double>(s.hidden);
      // QKV 6 t h^2, scores and p.v 4 t seq h, output projection 2 t h^2, MLP 16 t h^2.
      w.flops_per_step = tokens * hidden * (24.0 * hidden + 4.0 * static_cast<double>(s.seq));
      w.prepare = [s, device, per_head] {
        const TensorAwait x = random_tensor({s.batch, s.seq, s.hidden}, 7, 1.f, device);
        auto weights = std::make_shared<const BlockWeights>(make_weights(s, device, per_head));
        return std::function<TensorAwait()>([x, weights, s, per_head] {
          return per_head ? encoder_block_per_head(x, *weights, s) : encoder_block(x, *weights, s);
        });
      };
      out.push_back(std::move(w));
    }
  }
}

}  // namespace defer_bench
