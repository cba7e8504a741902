#pragma once
// The CPU backend of a fused element-wise program: an interpreter that applies the program to
// cache-sized chunks of the output, one instruction at a time over the whole chunk. The switch on
// an instruction's op happens once per chunk, so each instruction is a tight loop that vectorizes
// (the same per-op math as the one-op kernels of ops.hpp, so fused and unfused results are equal),
// and intermediates live in chunk buffers that stay in cache instead of tensors in memory.
// Large outputs are split across cores with the shared ThreadPool. A program that ends in a
// reduction folds each chunk of the reduced value into accumulators while it is in cache
// (fused_reduce.cpp), so the element-wise intermediate never exists in memory.
#include <cstdint>

#include "fusion/fused_program.hpp"

namespace defer::kernels::cpu {

class ThreadPool;

struct FusedRunOptions {
  // Elements per chunk (> 0). Each live intermediate needs one chunk-sized buffer per thread.
  // Small chunks keep every buffer of a chunk in L1 and interleave reading the inputs with the
  // arithmetic finely; 512 was the fastest of 256..8192 for an 8-op chain on an AMD EPYC (Zen 3).
  std::int64_t chunk = 512;
  // Outputs (for a reduction: domains) with at least this many elements are split across the
  // pool's threads.
  std::int64_t parallel_min = std::int64_t{1} << 18;
  // The pool to split with; null: ThreadPool::shared().
  ThreadPool* pool = nullptr;
};

// Evaluates `program` for each of the layout.numel() output elements: outputs[j] receives value
// program.outputs[j] as program.output_dtypes[j], contiguous with layout.shape. inputs[i] holds
// program.input_dtypes[i] elements read through layout.strides[i] (see FusedLayout); scalars[k] is
// the k-th scalar (may be null when the program has none).
// With program.reduction, layout.shape is the domain and outputs[0] receives the
// layout.reduce.outer * layout.reduce.inner reduced values (row-major [outer, inner]), with the
// semantics of the unfused reduce kernel; outputs[0] must not overlap any input.
//
// Preconditions: validate(program, layout) passes (the op layer checks once per program; this
// does not).
// An output may share its buffer with an input only exactly (the same pointer) and only when that
// input is read contiguously; outputs must not overlap each other. Runs on the calling thread
// (a CPU stream's worker) and, for large outputs, the pool's workers; never touches streams.
// Keeps a small per-thread workspace (the plan's vectors and the single-threaded chunk buffers)
// that later calls on the same thread reuse, so small calls do not allocate.
void run_fused(const FusedProgram& program, const FusedLayout& layout, const void* const* inputs,
               void* const* outputs, const float* scalars);
void run_fused(const FusedProgram& program, const FusedLayout& layout, const void* const* inputs,
               void* const* outputs, const float* scalars, const FusedRunOptions& options);

}  // namespace defer::kernels::cpu
