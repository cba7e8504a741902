// A real second process for the fused-kernel disk cache. Builds one representative fused program
// (8 instructions: a contiguous input, a broadcast row input, 2 scalars), asks the process-global
// FusedKernelCache for its sm_90 kernel (get(): compiles with NVRTC or reads the disk cache, and
// writes the disk file; it never loads the kernel, so no GPU is needed) and prints the counters:
//
//   compiles=<n> disk_hits=<n> disk_writes=<n>
//
// CTest runs it twice with one fresh DEFER_CACHE_DIR: the first run must compile and write the
// file (named by a hash of the generated source: FusedKernelCache::disk_file), the second must read
// it and compile nothing (tests/CMakeLists.txt).
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <string>

#include "fusion/fused_program.hpp"
#include "cuda/fused/cuda_codegen.hpp"
#include "cuda/fused/kernel_cache.hpp"

namespace {

using defer::DType;
using defer::kernels::ElementwiseOp;
using defer::kernels::FusedInstr;
using defer::kernels::FusedKind;
using defer::kernels::FusedLayout;
using defer::kernels::FusedProgram;

constexpr int kArch = 90;

FusedInstr load(std::uint16_t input) {
  FusedInstr in;
  in.kind = FusedKind::load;
  in.a = input;
  return in;
}
// op of values a (and b) and scalar s.
FusedInstr op(ElementwiseOp o, std::uint16_t a, std::uint16_t b = 0, std::uint16_t s = 0) {
  FusedInstr in;
  in.kind = FusedKind::op;
  in.op = o;
  in.a = a;
  in.b = b;
  in.s = s;
  return in;
}

// out = max(tanh(gelu(x + bias) * s0) + s1, x), with bias a row broadcast over the rows of x; all f32.
FusedProgram representative_program() {
  FusedProgram p;
  p.num_inputs = 2;
  p.num_scalars = 2;
  p.code = {
      load(0),                                   // v0 = x
      load(1),                                   // v1 = bias (broadcast)
      op(ElementwiseOp::add, 0, 1),              // v2 = v0 + v1
      op(ElementwiseOp::gelu, 2),                // v3 = gelu(v2)
      op(ElementwiseOp::mul_scalar, 3, 0, 0),    // v4 = v3 * s0
      op(ElementwiseOp::tanh, 4),                // v5 = tanh(v4)
      op(ElementwiseOp::add_scalar, 5, 0, 1),    // v6 = v5 + s1
      op(ElementwiseOp::maximum, 6, 0),          // v7 = max(v6, v0)
  };
  p.outputs = {7};
  p.input_dtypes = {DType::f32, DType::f32};
  p.output_dtypes = {DType::f32};
  return p;
}

// x: [64, 128] contiguous; bias: one row of 128, stride 0 over the rows.
FusedLayout representative_layout() {
  FusedLayout l;
  l.ndim = 2;
  l.shape[0] = 64;
  l.shape[1] = 128;
  l.strides.resize(2);
  l.strides[0][0] = 128;
  l.strides[0][1] = 1;
  l.strides[1][0] = 0;
  l.strides[1][1] = 1;
  return l;
}

}  // namespace

int main() {
  try {
    auto& cache = defer::detail::FusedKernelCache::global();
    if (cache.disk_dir().empty()) {
      std::cerr << "fusion_cache_probe: no usable disk cache directory (set DEFER_CACHE_DIR)\n";
      return 2;
    }
    const FusedProgram program = representative_program();
    const FusedLayout layout = representative_layout();
    const std::string key = defer::kernels::structure_key(program, layout);
    const defer::detail::CachedKernel& kernel = cache.get(key, kArch, program, layout);
    if (kernel.binary.ptx.empty()) {
      std::cerr << "fusion_cache_probe: the cached kernel has no PTX\n";
      return 3;
    }
    std::error_code ec;
    // The disk file is named by the generated source (which embeds the math and spells every op).
    const std::string source = defer::detail::generate_cuda_source(program, layout, kernel.name);
    const std::filesystem::path file = cache.disk_file(source, kArch);
    if (!std::filesystem::is_regular_file(file, ec)) {
      std::cerr << "fusion_cache_probe: no disk file at " << file << "\n";
      return 4;
    }
    const defer::detail::KernelCacheCounters c = cache.counters();
    std::cout << "dir=" << cache.disk_dir().string() << " file=" << file.filename().string()
              << " ptx_bytes=" << kernel.binary.ptx.size() << " cubin_bytes=" << kernel.binary.cubin.size() << "\n";
    std::cout << "compiles=" << c.compiles << " disk_hits=" << c.disk_hits << " disk_writes=" << c.disk_writes
              << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "fusion_cache_probe: " << e.what() << "\n";
    return 1;
  }
}
