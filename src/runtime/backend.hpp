#pragma once
// The backend interface: everything the graph layer asks of a device kind, in terms of buffers and
// sizes. One implementation per DeviceKind (runtime/cpu/cpu_backend.cpp, runtime/cuda/cuda_backend.cpp),
// found through backend_for(); the graph layer never asks which device it is on. A new backend is
// a folder with its streams, memory and this interface, plus one line in backend.cpp.
//
// Every call queues work on `stream` (the stream's device is the backend's) and returns without
// waiting for it, except index_select, which must report bad indices to the wait that runs it.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include <defer/device.hpp>
#include <defer/dtype.hpp>

#include "fusion/fused_program.hpp"
#include "matmul_layout.hpp"
#include "strided_axis.hpp"
#include "strided_copy.hpp"
#include "runtime/stream_impl.hpp"

namespace defer::detail {

// [outer, n, inner]: the view of a shape around one dim.
struct AxisSplit {
  std::int64_t outer, n, inner;
};

// The first index outside [0, extent) that index_select found: its position and value.
struct IndexFault {
  std::int64_t position, value;
};

class Backend {
 public:
  virtual ~Backend() = default;

  // A fused element-wise program (also a single element-wise op): inputs and outputs are element
  // pointers of the program's dtypes, valid until the work has run.
  virtual void run_fused(std::shared_ptr<const kernels::FusedProgram> program,
                         std::shared_ptr<const kernels::FusedLayout> layout, std::vector<const void*> inputs,
                         std::vector<void*> outputs, std::vector<float> scalars, StreamImpl& stream) = 0;
  // An element-wise op on integer data, computed exactly (kernels/integer_elementwise.hpp): inputs
  // of input_dtypes read through the layout's strides, `scalar` already in the data's dtype.
  virtual void integer_elementwise(kernels::ElementwiseOp op, std::shared_ptr<const kernels::FusedLayout> layout,
                                   std::vector<const void*> inputs, std::vector<DType> input_dtypes,
                                   std::int64_t scalar, void* out, DType out_dtype, StreamImpl& stream) = 0;
  // dst = src over a strided layout, elements of element_bytes copied bit for bit.
  virtual void copy_strided(std::size_t element_bytes, const kernels::CopyLayout& layout, const void* src, void* dst,
                            StreamImpl& stream) = 0;
  // n elements of element_bytes set to the low bytes of `bits`.
  virtual void fill(void* data, std::int64_t n, std::size_t element_bytes, std::uint64_t bits, StreamImpl& stream) = 0;
  // data[i] = i as dtype.
  virtual void arange(void* data, std::int64_t n, DType dtype, StreamImpl& stream) = 0;
  // sum, mean, max, min (out: dtype) or argmax (out: i64) of x (dtype: f32, f16 or bf16) over the
  // middle axis; f16/bf16 are computed in f32 and rounded once. x is read in place through the
  // axis's strides (kernels/strided_axis.hpp: any, 0 and negative included); out is contiguous
  // [outer, inner].
  virtual void reduce(kernels::ReduceOp op, DType dtype, const void* x, void* out, const kernels::StridedAxis& axis,
                      StreamImpl& stream) = 0;
  // out contiguous [outer, n, inner].
  virtual void softmax(DType dtype, const void* x, void* out, const kernels::StridedAxis& axis, StreamImpl& stream) = 0;
  // Over the last axis: x read through axis (rows = axis.outer, cols = axis.n, axis.inner == 1);
  // gamma, beta contiguous [cols]; out contiguous [rows, cols]; all of dtype.
  virtual void layer_norm(DType dtype, const void* x, const void* gamma, const void* beta, void* out,
                          const kernels::StridedAxis& axis, float eps, StreamImpl& stream) = 0;
  // c = a x b over the layout (kernels/matmul_layout.hpp: m, k, n, the broadcast batch dims with
  // each operand's batch strides, each operand's row- or column-major matrix strides), a and b read
  // in place, c contiguous. Accumulates in f32 whatever the dtype.
  virtual void matmul(DType dtype, const void* a, const void* b, void* c, const kernels::MatmulLayout& layout,
                      StreamImpl& stream) = 0;
  // out[o, j, i] = x[o, index[j], i] (x [outer, extent, inner], out [outer, count, inner]). Never
  // reads or writes out of bounds: it waits for the stream to reach the end of the copy and returns
  // the first index outside [0, extent), if any (the output is then unspecified).
  virtual std::optional<IndexFault> index_select(const void* x, std::size_t element_bytes, const void* index,
                                                 DType index_dtype, std::int64_t outer, std::int64_t extent,
                                                 std::int64_t count, std::int64_t inner, void* out,
                                                 StreamImpl& stream) = 0;
};

// The backend of d's kind.
Backend& backend_for(const Device& d);

Backend& cpu_backend();
Backend& cuda_backend();  // only in builds with the CUDA backend

}  // namespace defer::detail
