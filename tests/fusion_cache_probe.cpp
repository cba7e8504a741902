// A real second process for the fused-kernel disk cache. Builds one representative fused program
// (8 instructions: a contiguous input, a broadcast row input, 2 scalars), asks the process-global
// FusedKernelCache for its sm_90 kernel (get(): compiles with NVRTC or reads the disk cache, and
// writes the disk file; it never loads the kernel, so no GPU is needed) and prints the counters:
//
//   compiles=<n> disk_hits=<n> disk_writes=<n>
//
// CTest runs it twice with one fresh DEFER_CACHE_DIR: the first run must compile and write the
// file, the second must read it and compile nothing (tests/CMakeLists.txt).
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>

#include "fusion/fused_program.hpp"
#include "graph/fusion/cuda_codegen.hpp"
#include "graph/fusion/kernel_cache.hpp"

namespace {

using defer::kernels::BinaryOp;
using defer::kernels::FusedInstr;
using defer::kernels::FusedKind;
using defer::kernels::FusedLayout;
using defer::kernels::FusedProgram;
using defer::kernels::UnaryOp;

constexpr int kArch = 90;

FusedInstr instr(FusedKind kind, std::uint8_t op, std::uint16_t a, std::uint16_t b) {
  return FusedInstr{kind, op, a, b};
}
std::uint8_t op(UnaryOp u) { return static_cast<std::uint8_t>(u); }
std::uint8_t op(BinaryOp b) { return static_cast<std::uint8_t>(b); }

// out = max(tanh(gelu(x + bias) * s0) + s1, x), with bias a row broadcast over the rows of x.
FusedProgram representative_program() {
  FusedProgram p;
  p.num_inputs = 2;
  p.num_scalars = 2;
  p.code = {
      instr(FusedKind::load, 0, 0, 0),                                // v0 = x
      instr(FusedKind::load, 0, 1, 0),                                // v1 = bias (broadcast)
      instr(FusedKind::binary, op(BinaryOp::add), 0, 1),              // v2 = v0 + v1
      instr(FusedKind::unary, op(UnaryOp::gelu), 2, 0),               // v3 = gelu(v2)
      instr(FusedKind::binary_scalar, op(BinaryOp::mul), 3, 0),       // v4 = v3 * s0
      instr(FusedKind::unary, op(UnaryOp::tanh), 4, 0),               // v5 = tanh(v4)
      instr(FusedKind::binary_scalar, op(BinaryOp::add), 5, 1),       // v6 = v5 + s1
      instr(FusedKind::binary, op(BinaryOp::maximum), 6, 0),          // v7 = max(v6, v0)
  };
  p.outputs = {7};
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
    const std::string key = defer::detail::cuda_kernel_key(program, layout);
    const defer::detail::CachedKernel& kernel = cache.get(key, kArch, program, layout);
    if (kernel.binary.ptx.empty()) {
      std::cerr << "fusion_cache_probe: the cached kernel has no PTX\n";
      return 3;
    }
    std::error_code ec;
    const std::filesystem::path file = cache.disk_file(key, kArch);
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
