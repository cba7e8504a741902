// The chunked interpreter (see cpu/fused_interpreter.hpp): planning, the per-instruction loops,
// gathering strided inputs, and the driver for element-wise outputs. Programs that end in a
// reduction are driven by fused_reduce.cpp over the same plan and loops.
#include "cpu/fused.hpp"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "dtype_dispatch.hpp"
#include "cpu/fused_interpreter.hpp"
#include "cpu/thread_pool.hpp"

namespace defer::kernels::cpu {
namespace fused_internal {
namespace {

Strided collapse(const FusedLayout& layout, std::size_t input) {
  Strided s;
  for (int d = 0; d < layout.ndim; ++d) {
    const auto du = static_cast<std::size_t>(d);
    const i64 extent = layout.shape[du];
    const i64 stride = layout.strides[input][du];
    if (extent == 1) continue;
    if (s.ndim > 0 && s.stride[s.ndim - 1] == stride * extent) {
      s.shape[s.ndim - 1] *= extent;
      s.stride[s.ndim - 1] = stride;
    } else {
      s.shape[s.ndim] = extent;
      s.stride[s.ndim] = stride;
      ++s.ndim;
    }
  }
  return s;
}

}  // namespace

const Plan& Planner::make(const FusedProgram& program, const FusedLayout& layout, const void* const* inputs,
                          void* const* outputs) {
  const std::size_t count = program.code.size();
  plan.steps.clear();
  plan.copies.clear();
  plan.reads.clear();
  plan.buffers = 0;
  for (std::size_t i = 0; i < program.num_inputs; ++i) plan.reads.push_back(collapse(layout, i));

  // Repeated loads of one input are one value.
  canon.resize(count);
  first_load.assign(program.num_inputs, -1);
  for (std::size_t v = 0; v < count; ++v) {
    canon[v] = static_cast<std::uint16_t>(v);
    const FusedInstr& in = program.code[v];
    if (in.kind != FusedKind::load) continue;
    int& first = first_load[in.a];
    if (first < 0) first = static_cast<int>(v);
    else canon[v] = static_cast<std::uint16_t>(first);
  }
  auto operands = [&](const FusedInstr& in, std::uint16_t (&ops)[kMaxOpTensors]) -> int {
    if (in.kind == FusedKind::load) return 0;
    const std::uint16_t values[] = {in.a, in.b, in.c};
    const int k = info(in.op).tensors;
    for (int j = 0; j < k; ++j) ops[j] = canon[values[j]];
    return k;
  };

  // Only what the outputs need runs.
  needed.assign(count, 0);
  for (std::uint16_t o : program.outputs) needed[canon[o]] = 1;
  for (std::size_t v = count; v-- > 0;) {
    if (!needed[v]) continue;
    std::uint16_t ops[kMaxOpTensors] = {};
    const int k = operands(program.code[v], ops);
    for (int j = 0; j < k; ++j) needed[ops[j]] = 1;
  }

  // A computed output value is written straight into its output's slice when the output is f32,
  // unless an output shares its buffer with an input: then a later instruction of the chunk could
  // read an input element already overwritten, so outputs are staged in buffers and copied out
  // after the whole chunk. Outputs of other dtypes are converted from a buffer.
  bool in_place = outputs != nullptr;
  for (std::size_t j = 0; j < program.outputs.size() && in_place; ++j)
    for (std::size_t i = 0; i < program.num_inputs; ++i)
      if (static_cast<const void*>(outputs[j]) == inputs[i]) in_place = false;
  out_slot.assign(count, -1);
  if (in_place)
    for (std::size_t j = 0; j < program.outputs.size(); ++j) {
      const std::uint16_t v = canon[program.outputs[j]];
      if (program.code[v].kind != FusedKind::load && program.output_dtypes[j] == DType::f32 && out_slot[v] < 0)
        out_slot[v] = static_cast<int>(j);
    }

  // Last reader of each value; values copied to an output live to the end of the chunk.
  constexpr int kEnd = 1 << 30;
  last_use.assign(count, -1);
  for (std::size_t v = 0; v < count; ++v) {
    if (!needed[v] || canon[v] != v) continue;
    std::uint16_t ops[kMaxOpTensors] = {};
    const int k = operands(program.code[v], ops);
    for (int j = 0; j < k; ++j) last_use[ops[j]] = static_cast<int>(v);
  }
  for (std::uint16_t o : program.outputs)
    if (out_slot[canon[o]] < 0) last_use[canon[o]] = kEnd;

  // Buffers are taken from a free list; an operand's buffer is released only after the result's
  // buffer is chosen, so a result never shares memory with its operands (the loops are restrict).
  where.assign(count, Ref{});
  free_buffers.clear();
  auto take_buffer = [&]() -> Ref {
    if (!free_buffers.empty()) {
      const std::int32_t b = free_buffers.back();
      free_buffers.pop_back();
      return {Where::buffer, b};
    }
    return {Where::buffer, plan.buffers++};
  };
  for (std::size_t v = 0; v < count; ++v) {
    if (!needed[v] || canon[v] != v) continue;
    const FusedInstr& in = program.code[v];
    if (in.kind == FusedKind::load) {
      const DType dtype = program.input_dtypes[in.a];
      if (plan.reads[in.a].contiguous() && dtype == DType::f32) {
        where[v] = {Where::input, in.a};
      } else {
        where[v] = take_buffer();
        plan.steps.push_back({in.kind, in.op, dtype, where[v], {}, in.a});
      }
      continue;
    }
    where[v] = out_slot[v] >= 0 ? Ref{Where::output, out_slot[v]} : take_buffer();
    std::uint16_t ops[kMaxOpTensors] = {};
    const int k = operands(in, ops);
    Step step{in.kind, in.op, in.dtype, where[v], {}, in.s};
    for (int j = 0; j < k; ++j) step.src[j] = where[ops[j]];
    plan.steps.push_back(step);
    for (int j = 0; j < k; ++j) {
      const std::uint16_t u = ops[j];
      bool first = true;  // an operand read twice by one op is freed once
      for (int i = 0; i < j; ++i) first = first && ops[i] != u;
      if (first && last_use[u] == static_cast<int>(v) && where[u].where == Where::buffer) free_buffers.push_back(where[u].index);
    }
  }

  for (std::size_t j = 0; j < program.outputs.size(); ++j) {
    const Ref src = where[canon[program.outputs[j]]];
    if (src.where == Where::output && src.index == static_cast<std::int32_t>(j)) continue;
    plan.copies.push_back({static_cast<std::int32_t>(j), src, program.output_dtypes[j]});
  }
  return plan;
}

namespace {

// The per-instruction loops, defined twice: for the baseline x86-64 ISA (SSE2, 4 floats a vector)
// and under #pragma GCC target("avx2") (8 floats a vector), picked at run time like matmul's
// kernels. A chain of cheap ops is bound by these loops, not by memory, so the width matters. No
// FMA and no fast-math: every vectorized op rounds exactly as its scalar form in
// kernels/elementwise_math.h. Operands never alias the result (see Planner::make), hence
// __restrict, which spares the loops their run-time overlap checks. One loop per op of the op
// table, generated by DEFER_ELEMENTWISE_OPS: the switch on the op runs once per chunk.
#define DEFER_FUSED_LOOPS                                                                                 \
  template <int Tensors, int Scalars, class F>                                                            \
  void op_loop(F f, const float* __restrict a, const float* __restrict b, const float* __restrict c,      \
               const float* s, float* __restrict out, i64 n) {                                            \
    if constexpr (Tensors == 1 && Scalars == 0) {                                                         \
      for (i64 i = 0; i < n; ++i) out[i] = f(a[i]);                                                       \
    } else if constexpr (Tensors == 1 && Scalars == 1) {                                                  \
      const float s0 = s[0];                                                                              \
      for (i64 i = 0; i < n; ++i) out[i] = f(a[i], s0);                                                   \
    } else if constexpr (Tensors == 1 && Scalars == 2) {                                                  \
      const float s0 = s[0], s1 = s[1];                                                                   \
      for (i64 i = 0; i < n; ++i) out[i] = f(a[i], s0, s1);                                               \
    } else if constexpr (Tensors == 2 && Scalars == 0) {                                                  \
      for (i64 i = 0; i < n; ++i) out[i] = f(a[i], b[i]);                                                 \
    } else if constexpr (Tensors == 2 && Scalars == 1) {                                                  \
      const float s0 = s[0];                                                                              \
      for (i64 i = 0; i < n; ++i) out[i] = f(a[i], b[i], s0);                                             \
    } else {                                                                                              \
      static_assert(Tensors == 3 && Scalars == 0, "an operand count the loops do not cover");             \
      for (i64 i = 0; i < n; ++i) out[i] = f(a[i], b[i], c[i]);                                           \
    }                                                                                                     \
  }                                                                                                       \
  template <OpResult Result, int Tensors, int Scalars, class F>                                           \
  void op_or_cast(F f, DType dtype, const float* a, const float* b, const float* c, const float* s,       \
                  float* out, i64 n) {                                                                    \
    if constexpr (Result == OpResult::cast) {                                                             \
      dispatch(dtype, [&](auto tag) {                                                                     \
        op_loop<1, 0>([](float x) { return decltype(tag)::round(x); }, a, b, c, s, out, n);              \
      });                                                                                                 \
    } else {                                                                                              \
      op_loop<Tensors, Scalars>(f, a, b, c, s, out, n);                                                   \
      if (dtype == DType::f32) return;                                                                    \
      dispatch(dtype, [&](auto tag) { /* the result as its f16, bf16, ... tensor would hold it */        \
        for (i64 i = 0; i < n; ++i) out[i] = decltype(tag)::round(out[i]);                                \
      });                                                                                                 \
    }                                                                                                     \
  }                                                                                                       \
  void op(ElementwiseOp op, DType dtype, const float* a, const float* b, const float* c, const float* s,  \
          float* out, i64 n) {                                                                            \
    switch (op) {                                                                                         \
      DEFER_ELEMENTWISE_OPS(DEFER_LOOP_CASE)                                                              \
    }                                                                                                     \
  }

// `to` is the rounding of its target dtype (its fn names no function); every other op is its fn,
// then the rounding through its result's dtype.
#define DEFER_LOOP_CASE(id, name, tensors, scalars, fn, result, data)                                      \
  case ElementwiseOp::id:                                                                                 \
    op_or_cast<OpResult::result, tensors, scalars>([](auto... x) { return fn(x...); }, dtype, a, b, c, s, out, n); \
    return;

namespace baseline {
DEFER_FUSED_LOOPS
}  // namespace baseline

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define DEFER_FUSED_HAVE_AVX2 1
#pragma GCC push_options
#pragma GCC target("avx2")
namespace avx2 {
DEFER_FUSED_LOOPS
}  // namespace avx2
#pragma GCC pop_options
#endif
#undef DEFER_FUSED_LOOPS
#undef DEFER_LOOP_CASE

constexpr Loops kBaselineLoops{baseline::op};

std::atomic<bool> g_force_portable{false};

}  // namespace

bool use_avx2() {
#ifdef DEFER_FUSED_HAVE_AVX2
  static const bool have_avx2 = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return have_avx2 && !g_force_portable.load(std::memory_order_relaxed);
#else
  return false;
#endif
}

const Loops& loops() {
#ifdef DEFER_FUSED_HAVE_AVX2
  static constexpr Loops kAvx2Loops{avx2::op};
  if (use_avx2()) return kAvx2Loops;
#endif
  return kBaselineLoops;
}

namespace {

// Copies elements [start, start + len) of a strided input to out: an odometer over the collapsed
// multi-index, one run per innermost row, with the common inner strides (broadcast, contiguous) as
// a fill and a copy. Tag: the input's dtype, converted to f32 on the way.
template <class Tag>
void gather_as(const typename Tag::storage* src, const Strided& s, i64 start, i64 len, float* __restrict out) {
  auto load = [](typename Tag::storage v) { return Tag::load(v); };
  if (s.ndim == 0) {  // one element, or every dim broadcast down to it
    std::fill(out, out + len, load(src[0]));
    return;
  }
  const int last = s.ndim - 1;
  i64 idx[kMaxDims];
  i64 offset = 0;
  i64 rest = start;
  for (int d = last; d >= 0; --d) {
    idx[d] = rest % s.shape[d];
    rest /= s.shape[d];
    offset += idx[d] * s.stride[d];
  }
  const i64 inner = s.shape[last];
  const i64 step = s.stride[last];
  for (i64 done = 0;;) {
    const i64 pos = idx[last];
    const i64 run = std::min(inner - pos, len - done);
    const auto* p = src + offset;
    float* o = out + done;
    if (step == 0) {
      std::fill(o, o + run, load(*p));
    } else if (step == 1) {
      if constexpr (Tag::dtype == DType::f32) std::memcpy(o, p, static_cast<std::size_t>(run) * sizeof(float));
      else
        for (i64 k = 0; k < run; ++k) o[k] = load(p[k]);
    } else {
      for (i64 k = 0; k < run; ++k) o[k] = load(p[k * step]);
    }
    done += run;
    if (done == len) return;
    offset -= pos * step;  // back to the row's start, then on to the next row
    idx[last] = 0;
    for (int d = last - 1; d >= 0; --d) {
      if (++idx[d] < s.shape[d]) {
        offset += s.stride[d];
        break;
      }
      idx[d] = 0;
      offset -= (s.shape[d] - 1) * s.stride[d];
    }
  }
}

}  // namespace

void gather(const void* src, DType dtype, const Strided& s, i64 start, i64 len, float* __restrict out) {
  dispatch(dtype, [&](auto tag) {
    using Tag = decltype(tag);
    gather_as<Tag>(static_cast<const typename Tag::storage*>(src), s, start, len, out);
  });
}

void store(const float* src, DType dtype, i64 len, void* out) {
  dispatch(dtype, [&](auto tag) {
    using Tag = decltype(tag);
    auto* to = static_cast<typename Tag::storage*>(out);
    if constexpr (Tag::dtype == DType::f32) std::memmove(to, src, static_cast<std::size_t>(len) * sizeof(float));
    else
      for (i64 i = 0; i < len; ++i) to[i] = Tag::store(src[i]);
  });
}

}  // namespace fused_internal

namespace detail {
// Testing hook, like matmul_force_portable: run the baseline loops even where AVX2 is available.
// Returns whether an AVX2 path exists on this machine.
bool fused_force_portable(bool force) noexcept {
  fused_internal::g_force_portable.store(force, std::memory_order_relaxed);
#ifdef DEFER_FUSED_HAVE_AVX2
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") != 0;
#else
  return false;
#endif
}
}  // namespace detail

void run_fused(const FusedProgram& program, const FusedLayout& layout, const void* const* inputs,
               void* const* outputs, const float* scalars) {
  run_fused(program, layout, inputs, outputs, scalars, FusedRunOptions{});
}

void run_fused(const FusedProgram& program, const FusedLayout& layout, const void* const* inputs,
               void* const* outputs, const float* scalars, const FusedRunOptions& options) {
  using namespace fused_internal;
  if (program.reduction) {
    run_fused_reduction(program, layout, inputs, outputs[0], scalars, options);
    return;
  }
  const i64 n = layout.numel();
  if (n <= 0) return;
  // Per thread: the calling thread plans (and, below the pool's threshold, runs) alone; pool
  // workers only read the plan while this thread waits in parallel_for.
  thread_local Planner planner;
  const Plan& plan = planner.make(program, layout, inputs, outputs);
  // A plan that works in place (contiguous f32 inputs and outputs, no intermediate buffer: a single
  // op, typically) gains nothing from short chunks: each step runs over a whole task's range.
  const i64 chunk = std::min(plan.buffers == 0 && plan.copies.empty() ? kTaskElements : std::max<i64>(options.chunk, 1), n);
  const i64 chunks = (n + chunk - 1) / chunk;
  const i64 stride = buffer_stride(chunk);
  const auto per_thread = static_cast<std::size_t>(plan.buffers) * static_cast<std::size_t>(stride);
  const Interpreter interp{plan, loops(), inputs, outputs, scalars, stride};
  ThreadPool* pool = nullptr;
  if (n >= options.parallel_min && chunks > 1) {
    pool = options.pool != nullptr ? options.pool : &ThreadPool::shared();
    if (pool->num_workers() == 0) pool = nullptr;
  }
  if (pool == nullptr) {
    if (planner.scratch.size() < per_thread + 16) planner.scratch.resize(per_thread + 16);
    float* scratch = cache_line_aligned(planner.scratch.data());
    for (i64 start = 0; start < n; start += chunk) interp.run(start, std::min(chunk, n - start), scratch);
    return;
  }

  const i64 per_task = std::max<i64>(1, kTaskElements / chunk) * chunk;
  const i64 tasks = (n + per_task - 1) / per_task;
  Scratch scratch(per_thread * pool->num_slots());
  pool->parallel_for(tasks, [&](i64 task, unsigned slot) {
    float* mine = scratch.data() + per_thread * slot;
    const i64 end = std::min(n, (task + 1) * per_task);
    for (i64 start = task * per_task; start < end; start += chunk)
      interp.run(start, std::min(chunk, end - start), mine);
  });
}

}  // namespace defer::kernels::cpu
