// The kernel argument of a generated fused kernel and the launch policy (see cuda_codegen.hpp):
// which vector and index paths run, and how many blocks, decided per launch from sizes and pointers.
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "cuda/fused/cuda_codegen.hpp"

namespace defer::detail {
namespace {

using kernels::FusedInstr;
using kernels::FusedKind;
using kernels::FusedLayout;
using kernels::FusedProgram;
using kernels::InputAccess;

static_assert(sizeof(void*) == 8, "the kernel argument layout assumes 64-bit pointers");

// Rows longer than this get a whole block, shorter ones a warp (eight rows per block), as in
// kernels/cuda/reduce.cu.
constexpr std::int64_t kWarpRowMax = 1024;
constexpr std::int64_t kRowsPerWarpBlock = kCudaFusedThreads / 32;

// p starts a vector of four elements of dtype.
bool vector_aligned(const void* p, DType dtype) {
  return reinterpret_cast<std::uintptr_t>(p) % (4 * dtype_size(dtype)) == 0;
}

void put_word(std::span<std::byte> buffer, std::size_t word, const void* value) {
  std::memcpy(buffer.data() + 8 * word, value, 8);
}

}  // namespace

const char* cuda_vector4_type(DType dtype) noexcept {
  switch (dtype) {
    case DType::f32: return "float4";
    case DType::i32: return "int4";
    case DType::f16:
    case DType::bf16: return "ushort4";
    case DType::boolean: return "uchar4";
    case DType::i64: return nullptr;
  }
  return nullptr;
}

CudaArgsLayout cuda_args_layout(const FusedProgram& program, const FusedLayout& layout) {
  CudaArgsLayout s;
  s.inputs = program.num_inputs;
  s.outputs = static_cast<int>(program.outputs.size());
  s.scalars = program.num_scalars;
  for (int i = 0; i < s.inputs; ++i)
    if (kernels::input_access(layout, static_cast<std::size_t>(i)) == InputAccess::strided) ++s.strided;
  s.ndim = s.strided > 0 ? layout.ndim : 0;
  s.reduce = program.reduction.has_value();
  return s;
}

std::string cuda_kernel_name(const std::string& key) {
  std::uint64_t h = 14695981039346656037ull;  // FNV-1a
  for (const char c : key) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string name = "defer_fused_";
  for (int shift = 60; shift >= 0; shift -= 4) name.push_back(kHex[(h >> shift) & 0xf]);
  return name;
}

CudaArgsInfo pack_cuda_args(const FusedProgram& program, const FusedLayout& layout, const void* const* inputs,
                            void* const* outputs, const float* scalars, std::span<std::byte> buffer) {
  const CudaArgsLayout shape = cuda_args_layout(program, layout);
  CudaArgsInfo info;
  info.bytes = shape.bytes();
  if (buffer.size() < info.bytes || (reinterpret_cast<std::uintptr_t>(buffer.data()) & 7u) != 0)
    throw std::invalid_argument("defer: pack_cuda_args: the buffer is too small or not 8-byte aligned");
  std::memset(buffer.data(), 0, info.bytes);
  const std::int64_t n = layout.numel();

  std::vector<bool> used(program.num_inputs, false);
  for (const FusedInstr& ins : program.code)
    if (ins.kind == FusedKind::load) used[ins.a] = true;

  // The generated kernel has a vector path only without strided inputs and with a vector type for
  // every flat input and output dtype; it runs when each of those pointers starts a vector.
  bool vec4 = shape.strided == 0;
  for (DType t : program.output_dtypes) vec4 = vec4 && cuda_vector4_type(t) != nullptr;
  bool index32 = n <= std::numeric_limits<std::int32_t>::max();
  std::size_t word = 0;
  for (int i = 0; i < shape.inputs; ++i) {
    const void* p = inputs[i];
    put_word(buffer, word++, &p);
    const auto u = static_cast<std::size_t>(i);
    if (!used[u]) continue;
    switch (kernels::input_access(layout, u)) {
      case InputAccess::flat:
        vec4 = vec4 && cuda_vector4_type(program.input_dtypes[u]) != nullptr && vector_aligned(p, program.input_dtypes[u]);
        break;
      case InputAccess::uniform: break;
      case InputAccess::strided: {
        // 32-bit offsets when every stride is non-negative and the largest offset fits.
        constexpr std::int64_t kLimit = std::numeric_limits<std::int32_t>::max();
        std::int64_t max_offset = 0;
        for (int d = 0; d < layout.ndim && index32; ++d) {
          const auto du = static_cast<std::size_t>(d);
          const std::int64_t s = layout.strides[u][du];
          const std::int64_t extent = layout.shape[du];
          if (extent <= 1) continue;
          if (s < 0 || (s > 0 && extent - 1 > (kLimit - max_offset) / s)) index32 = false;
          else max_offset += (extent - 1) * s;
        }
        break;
      }
    }
  }
  const bool vec4_inputs = vec4;  // a reduction's vector loads do not touch its output
  for (int k = 0; k < shape.outputs; ++k) {
    void* p = outputs[k];
    put_word(buffer, word++, &p);
    vec4 = vec4 && vector_aligned(p, program.output_dtypes[static_cast<std::size_t>(k)]);
  }
  put_word(buffer, word++, &n);
  const FusedLayout::ReduceAxis& ax = layout.reduce;
  std::int64_t strategy = 0;  // flag bits 2 and 3 of a reduction
  if (shape.reduce) {
    // Vector rows need inner == 1 (the source has them only then) and rows that start a vector.
    vec4 = vec4_inputs && ax.inner == 1 && ax.n % 4 == 0;
    const std::int64_t rows = ax.outer * ax.inner;
    const std::int64_t col_tiles = (ax.inner + 31) / 32;
    // As kernels/cuda/reduce.cu: column tiles when inner is wide enough for coalesced warps and
    // there are enough tiles to fill the GPU (or rows are short); else a group per output, a warp
    // for rows of up to kWarpRowMax elements, the block for longer ones.
    if (ax.inner >= 32 && (ax.outer * col_tiles >= 128 || ax.n < 4096)) {
      strategy = 8;
      info.blocks = ax.outer * col_tiles;
    } else if (ax.n > kWarpRowMax) {
      strategy = 4;
      info.blocks = rows;
    } else {
      info.blocks = (rows + kRowsPerWarpBlock - 1) / kRowsPerWarpBlock;
    }
  }
  const std::int64_t flags = (vec4 ? 1 : 0) | (index32 && shape.strided > 0 ? 2 : 0) | strategy;
  put_word(buffer, word++, &flags);
  if (shape.reduce) {
    put_word(buffer, word++, &ax.outer);
    put_word(buffer, word++, &ax.n);
    put_word(buffer, word++, &ax.inner);
  }
  if (shape.strided > 0) {
    for (int d = 0; d < shape.ndim; ++d) put_word(buffer, word++, &layout.shape[static_cast<std::size_t>(d)]);
    for (int i = 0; i < shape.inputs; ++i) {
      if (kernels::input_access(layout, static_cast<std::size_t>(i)) != InputAccess::strided) continue;
      for (int d = 0; d < shape.ndim; ++d)
        put_word(buffer, word++, &layout.strides[static_cast<std::size_t>(i)][static_cast<std::size_t>(d)]);
    }
  }
  if (shape.scalars > 0) std::memcpy(buffer.data() + 8 * word, scalars, 4 * static_cast<std::size_t>(shape.scalars));

  info.vec4 = vec4;
  info.index32 = index32 && shape.strided > 0;
  if (shape.reduce) {
    info.work_items = ax.outer * ax.inner;
  } else {
    info.work_items = vec4 ? (n + 3) / 4 : n;
    info.blocks = (info.work_items + kCudaFusedThreads - 1) / kCudaFusedThreads;
  }
  return info;
}

}  // namespace defer::detail
