// The chunked interpreter. Per call, a plan maps every value the outputs need to where a chunk of
// it lives: a slice of a contiguous input (no copy), a slice of an output (computed in place), or a
// chunk buffer of scratch, reused once the value's last reader has run. Per chunk, broadcast inputs
// are gathered into their buffers, each instruction runs as one loop over the chunk, and outputs
// that were not computed in place are copied out.
#include "cpu/fused.hpp"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <vector>

#include "cpu/elementwise_math.hpp"
#include "cpu/thread_pool.hpp"

namespace defer::kernels::cpu {
namespace {

using i64 = std::int64_t;

// Elements one thread takes from the pool at a time: long enough for the hardware prefetchers to
// stream, short enough to balance two to a few dozen threads.
constexpr i64 kTaskElements = i64{1} << 15;

// How one input is read, with the dimensions that do not matter to it collapsed: extent-1 dims
// dropped, and neighbours merged where the outer one steps exactly over the inner one (which also
// merges runs of broadcast dims). A contiguous input collapses to one dim of stride 1.
struct Strided {
  int ndim = 0;
  i64 shape[kMaxDims] = {};
  i64 stride[kMaxDims] = {};
  bool contiguous() const { return ndim == 0 || (ndim == 1 && stride[0] == 1); }
};

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

enum class Where : std::uint8_t { input, buffer, output };

// Where a chunk of a value lives: input `index` or output `index` at the chunk's start, or chunk
// buffer `index` of the thread's scratch.
struct Ref {
  Where where = Where::buffer;
  std::int32_t index = 0;
};

struct Step {
  FusedKind kind;
  std::uint8_t op;
  Ref dst;
  Ref a;
  Ref b;               // binary only
  std::int32_t arg;    // load: the input; binary_scalar: the scalar
};

struct Copy {
  std::int32_t output;
  Ref src;
};

struct Plan {
  std::vector<Step> steps;     // loads that gather, then computations, in program order
  std::vector<Copy> copies;    // outputs not computed in place
  std::vector<Strided> reads;  // per input
  int buffers = 0;             // chunk buffers per thread
};

Plan make_plan(const FusedProgram& program, const FusedLayout& layout, const float* const* inputs,
               float* const* outputs) {
  const std::size_t count = program.code.size();
  Plan plan;
  plan.reads.reserve(program.num_inputs);
  for (std::size_t i = 0; i < program.num_inputs; ++i) plan.reads.push_back(collapse(layout, i));

  // Repeated loads of one input are one value.
  std::vector<std::uint16_t> canon(count);
  {
    std::vector<int> first_load(program.num_inputs, -1);
    for (std::size_t v = 0; v < count; ++v) {
      canon[v] = static_cast<std::uint16_t>(v);
      const FusedInstr& in = program.code[v];
      if (in.kind != FusedKind::load) continue;
      int& first = first_load[in.a];
      if (first < 0) first = static_cast<int>(v);
      else canon[v] = static_cast<std::uint16_t>(first);
    }
  }
  auto operands = [&](const FusedInstr& in, std::uint16_t (&ops)[2]) -> int {
    switch (in.kind) {
      case FusedKind::load: return 0;
      case FusedKind::unary:
      case FusedKind::binary_scalar: ops[0] = canon[in.a]; return 1;
      case FusedKind::binary: ops[0] = canon[in.a]; ops[1] = canon[in.b]; return 2;
    }
    return 0;
  };

  // Only what the outputs need runs.
  std::vector<char> needed(count, 0);
  for (std::uint16_t o : program.outputs) needed[canon[o]] = 1;
  for (std::size_t v = count; v-- > 0;) {
    if (!needed[v]) continue;
    std::uint16_t ops[2] = {0, 0};
    const int k = operands(program.code[v], ops);
    for (int j = 0; j < k; ++j) needed[ops[j]] = 1;
  }

  // A computed output value is written straight into its output's slice, unless an output shares
  // its buffer with an input: then a later instruction of the chunk could read an input element
  // already overwritten, so outputs are staged in buffers and copied out after the whole chunk.
  bool in_place = true;
  for (std::size_t j = 0; j < program.outputs.size() && in_place; ++j)
    for (std::size_t i = 0; i < program.num_inputs; ++i)
      if (static_cast<const float*>(outputs[j]) == inputs[i]) in_place = false;
  std::vector<int> out_slot(count, -1);
  if (in_place)
    for (std::size_t j = 0; j < program.outputs.size(); ++j) {
      const std::uint16_t v = canon[program.outputs[j]];
      if (program.code[v].kind != FusedKind::load && out_slot[v] < 0) out_slot[v] = static_cast<int>(j);
    }

  // Last reader of each value; values copied to an output live to the end of the chunk.
  constexpr int kEnd = 1 << 30;
  std::vector<int> last_use(count, -1);
  for (std::size_t v = 0; v < count; ++v) {
    if (!needed[v] || canon[v] != v) continue;
    std::uint16_t ops[2] = {0, 0};
    const int k = operands(program.code[v], ops);
    for (int j = 0; j < k; ++j) last_use[ops[j]] = static_cast<int>(v);
  }
  for (std::uint16_t o : program.outputs)
    if (out_slot[canon[o]] < 0) last_use[canon[o]] = kEnd;

  // Buffers are taken from a free list; an operand's buffer is released only after the result's
  // buffer is chosen, so a result never shares memory with its operands (the loops are restrict).
  std::vector<Ref> where(count);
  std::vector<std::int32_t> free_buffers;
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
      if (plan.reads[in.a].contiguous()) {
        where[v] = {Where::input, in.a};
      } else {
        where[v] = take_buffer();
        plan.steps.push_back({in.kind, 0, where[v], {}, {}, in.a});
      }
      continue;
    }
    where[v] = out_slot[v] >= 0 ? Ref{Where::output, out_slot[v]} : take_buffer();
    std::uint16_t ops[2] = {0, 0};
    const int k = operands(in, ops);
    Step step{in.kind, in.op, where[v], where[ops[0]], {}, 0};
    if (in.kind == FusedKind::binary) step.b = where[ops[1]];
    if (in.kind == FusedKind::binary_scalar) step.arg = in.b;
    plan.steps.push_back(step);
    for (int j = 0; j < k; ++j) {
      const std::uint16_t u = ops[j];
      if (last_use[u] == static_cast<int>(v) && where[u].where == Where::buffer && (j == 0 || ops[0] != u))
        free_buffers.push_back(where[u].index);
    }
  }

  for (std::size_t j = 0; j < program.outputs.size(); ++j) {
    const Ref src = where[canon[program.outputs[j]]];
    if (src.where == Where::output && src.index == static_cast<std::int32_t>(j)) continue;
    plan.copies.push_back({static_cast<std::int32_t>(j), src});
  }
  return plan;
}

template <class F>
void loop_unary(F f, const float* __restrict x, float* __restrict out, i64 n) {
  for (i64 i = 0; i < n; ++i) out[i] = f(x[i]);
}

template <class F>
void loop_binary(F f, const float* __restrict a, const float* __restrict b, float* __restrict out, i64 n) {
  for (i64 i = 0; i < n; ++i) out[i] = f(a[i], b[i]);
}

template <class F>
void loop_scalar(F f, const float* __restrict a, float s, float* __restrict out, i64 n) {
  for (i64 i = 0; i < n; ++i) out[i] = f(a[i], s);
}

// Copies elements [start, start + len) of a strided input to out: an odometer over the collapsed
// multi-index, one run per innermost row, with the common inner strides (broadcast, contiguous) as
// a fill and a memcpy.
void gather(const float* src, const Strided& s, i64 start, i64 len, float* __restrict out) {
  if (s.ndim == 0) {  // one element, or every dim broadcast down to it
    std::fill(out, out + len, src[0]);
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
    const float* p = src + offset;
    float* o = out + done;
    if (step == 0) std::fill(o, o + run, *p);
    else if (step == 1) std::memcpy(o, p, static_cast<std::size_t>(run) * sizeof(float));
    else
      for (i64 k = 0; k < run; ++k) o[k] = p[k * step];
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

struct Interpreter {
  const Plan& plan;
  const float* const* inputs;
  float* const* outputs;
  const float* scalars;
  i64 chunk;  // buffer stride in scratch

  // Runs elements [start, start + len), len <= chunk, with `scratch` holding plan.buffers chunks.
  void run(i64 start, i64 len, float* scratch) const {
    auto src = [&](Ref r) -> const float* {
      switch (r.where) {
        case Where::input: return inputs[r.index] + start;
        case Where::output: return outputs[r.index] + start;
        case Where::buffer: break;
      }
      return scratch + r.index * chunk;
    };
    auto dst = [&](Ref r) -> float* {
      return r.where == Where::output ? outputs[r.index] + start : scratch + r.index * chunk;
    };
    for (const Step& st : plan.steps) {
      float* out = dst(st.dst);
      switch (st.kind) {
        case FusedKind::load: gather(inputs[st.arg], plan.reads[static_cast<std::size_t>(st.arg)], start, len, out); break;
        case FusedKind::unary: {
          const float* x = src(st.a);
          math::with_unary(static_cast<UnaryOp>(st.op), [&](auto f) { loop_unary(f, x, out, len); });
          break;
        }
        case FusedKind::binary: {
          const float* a = src(st.a);
          const float* b = src(st.b);
          math::with_binary(static_cast<BinaryOp>(st.op), [&](auto f) { loop_binary(f, a, b, out, len); });
          break;
        }
        case FusedKind::binary_scalar: {
          const float* a = src(st.a);
          const float s = scalars[st.arg];
          math::with_binary(static_cast<BinaryOp>(st.op), [&](auto f) { loop_scalar(f, a, s, out, len); });
          break;
        }
      }
    }
    for (const Copy& c : plan.copies) {
      const float* from = src(c.src);
      float* to = outputs[c.output] + start;
      if (from != to) std::memmove(to, from, static_cast<std::size_t>(len) * sizeof(float));
    }
  }
};

}  // namespace

void run_fused(const FusedProgram& program, const FusedLayout& layout, const float* const* inputs,
               float* const* outputs, const float* scalars) {
  run_fused(program, layout, inputs, outputs, scalars, FusedRunOptions{});
}

void run_fused(const FusedProgram& program, const FusedLayout& layout, const float* const* inputs,
               float* const* outputs, const float* scalars, const FusedRunOptions& options) {
  const i64 n = layout.numel();
  if (n <= 0) return;
  const Plan plan = make_plan(program, layout, inputs, outputs);
  const i64 chunk = std::min(std::max<i64>(options.chunk, 1), n);
  const i64 chunks = (n + chunk - 1) / chunk;
  const auto per_thread = static_cast<std::size_t>(plan.buffers) * static_cast<std::size_t>(chunk);
  const Interpreter interp{plan, inputs, outputs, scalars, chunk};

  ThreadPool* pool = nullptr;
  if (n >= options.parallel_min && chunks > 1) {
    pool = options.pool != nullptr ? options.pool : &ThreadPool::shared();
    if (pool->num_workers() == 0) pool = nullptr;
  }
  if (pool == nullptr) {
    const auto scratch = std::make_unique_for_overwrite<float[]>(per_thread);
    for (i64 start = 0; start < n; start += chunk) interp.run(start, std::min(chunk, n - start), scratch.get());
    return;
  }

  const i64 per_task = std::max<i64>(1, kTaskElements / chunk) * chunk;
  const i64 tasks = (n + per_task - 1) / per_task;
  const auto scratch = std::make_unique_for_overwrite<float[]>(per_thread * pool->num_slots());
  pool->parallel_for(tasks, [&](i64 task, unsigned slot) {
    float* mine = scratch.get() + per_thread * slot;
    const i64 end = std::min(n, (task + 1) * per_task);
    for (i64 start = task * per_task; start < end; start += chunk)
      interp.run(start, std::min(chunk, end - start), mine);
  });
}

}  // namespace defer::kernels::cpu
