// The CPU backend: each call queues one task on the CPU stream's worker (kernels/cpu). f16 and bf16
// operands of the reductions, softmax and layer_norm are converted to f32 inside the task and the
// result rounded once on the way out (matmul's kernel converts as it packs).
#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

#include "cpu/copy.hpp"
#include "cpu/fill.hpp"
#include "cpu/fused.hpp"
#include "cpu/ops.hpp"
#include "dtype_dispatch.hpp"
#include "integer_elementwise.hpp"
#include "runtime/backend.hpp"
#include "runtime/cpu/cpu_stream.hpp"

namespace defer::detail {
namespace {

using kernels::ReduceOp;

// n elements of dtype as f32: the buffer itself for f32, else a converted copy.
class F32View {
 public:
  F32View(DType dtype, const void* data, std::int64_t n) {
    if (dtype == DType::f32) {
      data_ = static_cast<const float*>(data);
      return;
    }
    copy_.resize(static_cast<std::size_t>(n));
    kernels::dispatch(dtype, [&](auto tag) {
      using Tag = decltype(tag);
      const auto* src = static_cast<const typename Tag::storage*>(data);
      for (std::int64_t i = 0; i < n; ++i) copy_[static_cast<std::size_t>(i)] = Tag::load(src[i]);
    });
    data_ = copy_.data();
  }
  const float* data() const { return data_; }

 private:
  std::vector<float> copy_;
  const float* data_ = nullptr;
};

// x's elements under a strided axis as f32, and the axis to read them with: x itself for f32; else
// what the strides reach converted into a compact buffer, dense in the logical order except that a
// broadcast axis (stride 0) stays one element wide (and keeps stride 0). Contiguous inputs convert
// to a dense buffer, so the kernels keep their unit-stride loops.
class F32Axis {
 public:
  F32Axis(DType dtype, const void* data, const kernels::StridedAxis& axis) : axis_(axis) {
    if (dtype == DType::f32) {
      data_ = static_cast<const float*>(data);
      return;
    }
    const std::int64_t outer = axis.outer_stride == 0 ? 1 : axis.outer, n = axis.n_stride == 0 ? 1 : axis.n,
                       inner = axis.inner_stride == 0 ? 1 : axis.inner;
    const std::int64_t count = std::max<std::int64_t>(outer * n * inner, 0);
    copy_.resize(static_cast<std::size_t>(count));
    kernels::dispatch(dtype, [&](auto tag) {
      using Tag = decltype(tag);
      const auto* src = static_cast<const typename Tag::storage*>(data);
      float* dst = copy_.data();
      if (axis.is_contiguous()) {  // one flat pass
        for (std::int64_t k = 0; k < count; ++k) dst[k] = Tag::load(src[k]);
        return;
      }
      for (std::int64_t o = 0; o < outer; ++o)
        for (std::int64_t j = 0; j < n; ++j) {
          const auto* row = src + o * axis.outer_stride + j * axis.n_stride;
          for (std::int64_t i = 0; i < inner; ++i) *dst++ = Tag::load(row[i * axis.inner_stride]);
        }
    });
    data_ = copy_.data();
    axis_.outer_stride = axis.outer_stride == 0 ? 0 : n * inner;
    axis_.n_stride = axis.n_stride == 0 ? 0 : inner;
    axis_.inner_stride = axis.inner_stride == 0 ? 0 : 1;
  }
  const float* data() const { return data_; }
  const kernels::StridedAxis& axis() const { return axis_; }

 private:
  std::vector<float> copy_;
  const float* data_ = nullptr;
  kernels::StridedAxis axis_;
};

// An f32 output of n elements for a result of dtype: written in place for f32, else staged and
// rounded once by finish().
class F32Out {
 public:
  F32Out(DType dtype, void* data, std::int64_t n) : dtype_(dtype), out_(data), n_(n) {
    if (dtype != DType::f32) staged_.resize(static_cast<std::size_t>(n));
  }
  float* data() { return dtype_ == DType::f32 ? static_cast<float*>(out_) : staged_.data(); }
  void finish() {
    if (dtype_ == DType::f32) return;
    kernels::dispatch(dtype_, [&](auto tag) {
      using Tag = decltype(tag);
      auto* dst = static_cast<typename Tag::storage*>(out_);
      for (std::int64_t i = 0; i < n_; ++i) dst[i] = Tag::store(staged_[static_cast<std::size_t>(i)]);
    });
  }

 private:
  DType dtype_;
  void* out_;
  std::int64_t n_;
  std::vector<float> staged_;
};

class CpuBackend final : public Backend {
 public:
  void run_fused(std::shared_ptr<const kernels::FusedProgram> program, std::shared_ptr<const kernels::FusedLayout> layout,
                 std::vector<const void*> inputs, std::vector<void*> outputs, std::vector<float> scalars,
                 StreamImpl& stream) override {
    enqueue_cpu(stream, [program = std::move(program), layout = std::move(layout), in = std::move(inputs),
                         out = std::move(outputs), scalars = std::move(scalars)] {
      kernels::cpu::run_fused(*program, *layout, in.data(), out.data(), scalars.data());
    });
  }

  void integer_elementwise(kernels::ElementwiseOp op, std::shared_ptr<const kernels::FusedLayout> layout,
                           std::vector<const void*> inputs, std::vector<DType> input_dtypes, std::int64_t scalar,
                           void* out, DType out_dtype, StreamImpl& stream) override {
    enqueue_cpu(stream, [=, layout = std::move(layout), in = std::move(inputs), dtypes = std::move(input_dtypes)] {
      // An odometer over the output's multi-index keeps every input's offset.
      const int nd = layout->ndim;
      const std::int64_t n = layout->numel();
      std::int64_t idx[kernels::kMaxDims] = {};
      std::int64_t offset[kernels::kMaxOpTensors] = {};
      for (std::int64_t i = 0; i < n; ++i) {
        std::int64_t v[kernels::kMaxOpTensors] = {};
        for (std::size_t k = 0; k < in.size(); ++k) v[k] = kernels::integer_load(in[k], dtypes[k], offset[k]);
        kernels::integer_store(out, out_dtype, i, kernels::integer_op(op, v[0], v[1], v[2], scalar));
        for (int d = nd - 1; d >= 0; --d) {
          const auto du = static_cast<std::size_t>(d);
          if (++idx[d] < layout->shape[du]) {
            for (std::size_t k = 0; k < in.size(); ++k) offset[k] += layout->strides[k][du];
            break;
          }
          for (std::size_t k = 0; k < in.size(); ++k) offset[k] -= (layout->shape[du] - 1) * layout->strides[k][du];
          idx[d] = 0;
        }
      }
    });
  }

  void copy_strided(std::size_t element_bytes, const kernels::CopyLayout& layout, const void* src, void* dst,
                    StreamImpl& stream) override {
    enqueue_cpu(stream, [=] { kernels::cpu::copy_strided(element_bytes, layout, src, dst); });
  }

  void fill(void* data, std::int64_t n, std::size_t element_bytes, std::uint64_t bits, StreamImpl& stream) override {
    enqueue_cpu(stream, [=] { kernels::cpu::fill(data, n, element_bytes, bits); });
  }

  void arange(void* data, std::int64_t n, DType dtype, StreamImpl& stream) override {
    enqueue_cpu(stream, [=] { kernels::cpu::arange(data, n, dtype); });
  }

  void reduce(ReduceOp op, DType dtype, const void* x, void* out, const kernels::StridedAxis& axis,
              StreamImpl& stream) override {
    enqueue_cpu(stream, [=] {
      const F32Axis in(dtype, x, axis);
      if (op == ReduceOp::argmax) {
        kernels::cpu::argmax(in.data(), static_cast<std::int64_t*>(out), in.axis());
        return;
      }
      F32Out result(dtype, out, axis.outer * axis.inner);
      kernels::cpu::reduce(op, in.data(), result.data(), in.axis());
      result.finish();
    });
  }

  void softmax(DType dtype, const void* x, void* out, const kernels::StridedAxis& axis, StreamImpl& stream) override {
    enqueue_cpu(stream, [=] {
      const F32Axis in(dtype, x, axis);
      F32Out result(dtype, out, axis.numel());
      kernels::cpu::softmax(in.data(), result.data(), in.axis());
      result.finish();
    });
  }

  void layer_norm(DType dtype, const void* x, const void* gamma, const void* beta, void* out,
                  const kernels::StridedAxis& axis, float eps, StreamImpl& stream) override {
    enqueue_cpu(stream, [=] {
      const F32Axis in(dtype, x, axis);
      const F32View g(dtype, gamma, axis.n), b(dtype, beta, axis.n);
      F32Out result(dtype, out, axis.outer * axis.n);
      kernels::cpu::layer_norm(in.data(), g.data(), b.data(), result.data(), in.axis(), eps);
      result.finish();
    });
  }

  void matmul(DType dtype, const void* a, const void* b, void* c, const kernels::MatmulLayout& layout,
              StreamImpl& stream) override {
    // The kernel reads strided f16 / bf16 operands itself, converting what it packs (no whole-buffer
    // conversion), and rounds each product's f32 result once.
    enqueue_cpu(stream, [=] { kernels::cpu::matmul(dtype, a, b, c, layout); });
  }

  std::optional<IndexFault> index_select(const void* x, std::size_t element_bytes, const void* index, DType index_dtype,
                                         std::int64_t outer, std::int64_t extent, std::int64_t count, std::int64_t inner,
                                         void* out, StreamImpl& stream) override {
    auto fault = std::make_shared<std::int64_t>(-1);
    enqueue_cpu(stream, [=] {
      *fault = kernels::cpu::index_select(x, element_bytes, index, index_dtype, outer, extent, count, inner, out);
    });
    stream.synchronize();  // the wait reports a bad index: it needs the task's answer
    if (*fault < 0) return std::nullopt;
    std::int64_t value = 0;
    if (index_dtype == DType::i32) value = static_cast<const std::int32_t*>(index)[*fault];
    else value = static_cast<const std::int64_t*>(index)[*fault];
    return IndexFault{*fault, value};
  }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend backend;
  return backend;
}

}  // namespace defer::detail
