#pragma once
// Internals of the CPU fused interpreter shared by its two drivers: fused.cpp (element-wise
// outputs) and fused_reduce.cpp (a program ending in a reduction). Not part of the kernel API.
//
// Per call, a plan maps every value the outputs need to where a chunk of it lives: a slice of a
// contiguous input (no copy), a slice of an output (computed in place), or a chunk buffer of
// scratch, reused once the value's last reader has run. Per chunk, broadcast inputs are gathered
// into their buffers, each instruction runs as one loop over the chunk, and outputs that were not
// computed in place are copied out.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "cpu/fused.hpp"
#include "fusion/fused_program.hpp"

namespace defer::kernels::cpu::fused_internal {

using i64 = std::int64_t;

// Elements one thread takes from the pool at a time: long enough for the hardware prefetchers to
// stream, short enough to balance two to a few dozen threads.
inline constexpr i64 kTaskElements = i64{1} << 15;

// How one input is read, with the dimensions that do not matter to it collapsed: extent-1 dims
// dropped, and neighbours merged where the outer one steps exactly over the inner one (which also
// merges runs of broadcast dims). A contiguous input collapses to one dim of stride 1.
struct Strided {
  int ndim = 0;
  i64 shape[kMaxDims] = {};
  i64 stride[kMaxDims] = {};
  bool contiguous() const { return ndim == 0 || (ndim == 1 && stride[0] == 1); }
};

enum class Where : std::uint8_t { input, buffer, output };

// Where a chunk of a value lives: input `index` or output `index` at the chunk's start, or chunk
// buffer `index` of the thread's scratch.
struct Ref {
  Where where = Where::buffer;
  std::int32_t index = 0;
};

struct Step {
  FusedKind kind;
  ElementwiseOp op;
  DType dtype;      // load: the input's dtype; op == to: the dtype cast to
  Ref dst;
  Ref src[kMaxOpTensors];  // op: its operands
  std::int32_t arg;        // load: the input; op: its first scalar
};

// Output `output` takes the chunk of a value at `src`, converted to its dtype.
struct Copy {
  std::int32_t output;
  Ref src;
  DType dtype;
};

struct Plan {
  std::vector<Step> steps;     // gathering loads and computations, in program order
  std::vector<Copy> copies;    // outputs not computed in place
  std::vector<Strided> reads;  // per input
  int buffers = 0;             // chunk buffers per thread
};

// The plan and the vectors that building it needs, kept per thread and reused, so that a call
// allocates nothing once its thread has seen a program as large (small tensors are launch bound).
struct Planner {
  Plan plan;
  std::vector<std::uint16_t> canon;   // repeated loads of one input map to the first
  std::vector<int> first_load;        // per input
  std::vector<char> needed;
  std::vector<int> out_slot;          // the output a value is computed into, or -1
  std::vector<int> last_use;          // the last instruction reading a value
  std::vector<Ref> where;
  std::vector<std::int32_t> free_buffers;
  std::vector<float> scratch;         // the single-threaded path's chunk buffers

  // outputs == nullptr: nothing is computed into an output; plan.copies[j].src then says where
  // output j's value lives in a chunk, for a caller that reads it there (the reduction driver).
  const Plan& make(const FusedProgram& program, const FusedLayout& layout, const void* const* inputs,
                   void* const* outputs);
};

// The per-instruction loop of the ISA picked at run time (baseline SSE2 or AVX2): out[i] = the op
// of a[i], b[i], c[i] (as many as it takes) and its scalars.
struct Loops {
  void (*op)(ElementwiseOp, DType, const float*, const float*, const float*, const float*, float*, i64);
};
const Loops& loops();

// Whether the AVX2 variants should run: the CPU has AVX2 and the testing hook does not forbid it.
bool use_avx2();

// Copies elements [start, start + len) of a strided input of `dtype` to out, converted to f32.
void gather(const void* src, DType dtype, const Strided& s, i64 start, i64 len, float* __restrict out);
// Converts len floats to `dtype` at out (an element pointer of that dtype).
void store(const float* src, DType dtype, i64 len, void* out);

// Aligns a pointer up to a cache line.
inline float* cache_line_aligned(float* p) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  return p + (64 - addr % 64) % 64 / sizeof(float);
}

// Floats from one chunk buffer to the next in scratch. Buffers start on cache lines and one line
// more than a chunk apart: chunks of a power-of-two size would otherwise put every buffer at the
// same address modulo 4 KiB, and a loop's loads would keep waiting on its stores to an unrelated
// buffer ("4K aliasing").
inline i64 buffer_stride(i64 chunk) { return (chunk + 15) / 16 * 16 + 16; }

// Uninitialized floats starting on a cache line.
class Scratch {
 public:
  explicit Scratch(std::size_t floats)
      : raw_(std::make_unique_for_overwrite<float[]>(floats + 16)), data_(cache_line_aligned(raw_.get())) {}
  float* data() const { return data_; }

 private:
  std::unique_ptr<float[]> raw_;
  float* data_;
};

struct Interpreter {
  const Plan& plan;
  const Loops& loops;
  const void* const* inputs;
  void* const* outputs;  // null for a plan made without outputs
  const float* scalars;
  i64 stride;  // floats from one chunk buffer to the next in scratch

  // Where element `start` of a value lives in the chunk that starts there. Values live in inputs
  // and outputs only where those are f32 (Planner::make).
  const float* source(Ref r, i64 start, float* scratch) const {
    switch (r.where) {
      case Where::input: return static_cast<const float*>(inputs[r.index]) + start;
      case Where::output: return static_cast<const float*>(outputs[r.index]) + start;
      case Where::buffer: break;
    }
    return scratch + r.index * stride;
  }

  // Runs the steps for elements [start, start + len), len <= chunk, with `scratch` holding
  // plan.buffers chunks; outputs not computed in place are left where plan.copies says.
  void compute(i64 start, i64 len, float* scratch) const {
    auto dst = [&](Ref r) -> float* {
      return r.where == Where::output ? static_cast<float*>(outputs[r.index]) + start : scratch + r.index * stride;
    };
    for (const Step& st : plan.steps) {
      float* out = dst(st.dst);
      if (st.kind == FusedKind::load) {
        gather(inputs[st.arg], st.dtype, plan.reads[static_cast<std::size_t>(st.arg)], start, len, out);
        continue;
      }
      loops.op(st.op, st.dtype, source(st.src[0], start, scratch), source(st.src[1], start, scratch),
               source(st.src[2], start, scratch), scalars + st.arg, out, len);
    }
  }

  // compute(), then the copies to the outputs.
  void run(i64 start, i64 len, float* scratch) const {
    compute(start, len, scratch);
    for (const Copy& c : plan.copies) {
      const float* from = source(c.src, start, scratch);
      auto* to = static_cast<unsigned char*>(outputs[c.output]) + start * static_cast<i64>(dtype_size(c.dtype));
      if (static_cast<const void*>(from) != static_cast<const void*>(to)) store(from, c.dtype, len, to);
    }
  }
};

// Runs a program that ends in a reduction (fused_reduce.cpp); run_fused's preconditions hold.
void run_fused_reduction(const FusedProgram& program, const FusedLayout& layout, const void* const* inputs,
                         void* output, const float* scalars, const FusedRunOptions& options);

}  // namespace defer::kernels::cpu::fused_internal
