// Fused element-wise kernels for CUDA: generated source, NVRTC compilation, the in-memory and disk
// kernel caches, and the launcher. Everything but loading and launching runs without a GPU: NVRTC
// compiles representative programs to PTX (and CUBIN) for sm_90 and sm_80 here, on CI. The GPU
// cases compare fused kernels with the CPU reference and with the unfused CUDA kernels, and skip
// without a GPU.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <defer/defer.hpp>

#include "cpu/fused.hpp"
#include "cpu/ops.hpp"
#include "cuda/ops.hpp"
#include "fusion/fused_program.hpp"
#include "graph/fusion/cuda_codegen.hpp"
#include "graph/fusion/cuda_fused_launch.hpp"
#include "graph/fusion/kernel_cache.hpp"
#include "graph/fusion/nvrtc_compiler.hpp"

namespace {

namespace fs = std::filesystem;
using defer::detail::compile_to_ptx;
using defer::detail::CompiledProgram;
using defer::detail::cuda_args_size;
using defer::detail::cuda_kernel_key;
using defer::detail::cuda_kernel_name;
using defer::detail::CudaInputAccess;
using defer::detail::FusedKernelCache;
using defer::detail::generate_cuda_source;
using defer::detail::pack_cuda_args;
using defer::kernels::BinaryOp;
using defer::kernels::FusedInstr;
using defer::kernels::FusedKind;
using defer::kernels::FusedLayout;
using defer::kernels::FusedProgram;
using defer::kernels::kMaxDims;
using defer::kernels::ReduceOp;
using defer::kernels::UnaryOp;
using i64 = std::int64_t;
using Strides = std::array<i64, kMaxDims>;

const UnaryOp kUnaryOps[] = {UnaryOp::neg,  UnaryOp::abs,  UnaryOp::exp,     UnaryOp::log,
                             UnaryOp::sqrt, UnaryOp::tanh, UnaryOp::sigmoid, UnaryOp::relu,
                             UnaryOp::silu, UnaryOp::gelu, UnaryOp::gelu_tanh};
const BinaryOp kBinaryOps[] = {BinaryOp::add,     BinaryOp::sub,    BinaryOp::mul,
                               BinaryOp::div,     BinaryOp::maximum, BinaryOp::minimum};

// Builds a FusedProgram one SSA value at a time.
class Builder {
 public:
  explicit Builder(int inputs, int scalars = 0) {
    p_.num_inputs = static_cast<std::uint16_t>(inputs);
    p_.num_scalars = static_cast<std::uint16_t>(scalars);
  }
  std::uint16_t load(int input) { return push({FusedKind::load, 0, static_cast<std::uint16_t>(input), 0}); }
  std::uint16_t unary(UnaryOp op, std::uint16_t a) { return push({FusedKind::unary, static_cast<std::uint8_t>(op), a, 0}); }
  std::uint16_t binary(BinaryOp op, std::uint16_t a, std::uint16_t b) {
    return push({FusedKind::binary, static_cast<std::uint8_t>(op), a, b});
  }
  std::uint16_t scalar(BinaryOp op, std::uint16_t a, int s) {
    return push({FusedKind::binary_scalar, static_cast<std::uint8_t>(op), a, static_cast<std::uint16_t>(s)});
  }
  Builder& output(std::uint16_t v) {
    p_.outputs.push_back(v);
    return *this;
  }
  const FusedProgram& program() const { return p_; }

 private:
  std::uint16_t push(FusedInstr ins) {
    p_.code.push_back(ins);
    return static_cast<std::uint16_t>(p_.code.size() - 1);
  }
  FusedProgram p_;
};

Strides row_major(const std::vector<i64>& shape) {
  Strides s{};
  i64 step = 1;
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    s[static_cast<std::size_t>(d)] = step;
    step *= shape[static_cast<std::size_t>(d)];
  }
  return s;
}

// A layout over `shape`; inputs without explicit strides are contiguous.
FusedLayout make_layout(const std::vector<i64>& shape, int inputs, std::map<int, std::vector<i64>> strides = {}) {
  FusedLayout l;
  l.ndim = static_cast<int>(shape.size());
  for (std::size_t d = 0; d < shape.size(); ++d) l.shape[d] = shape[d];
  for (int i = 0; i < inputs; ++i) {
    Strides s = row_major(shape);
    if (auto it = strides.find(i); it != strides.end()) {
      s = Strides{};
      for (std::size_t d = 0; d < it->second.size(); ++d) s[d] = it->second[d];
    }
    l.strides.push_back(s);
  }
  return l;
}

// v0 = load in0, then every unary op applied in turn.
FusedProgram every_unary_chain() {
  Builder b(1);
  std::uint16_t v = b.load(0);
  for (const UnaryOp op : kUnaryOps) v = b.unary(op, v);
  return b.output(v).program();
}

// Every binary op, on two tensors and with a scalar, summed into one output.
FusedProgram every_binary_program() {
  Builder b(2, static_cast<int>(std::size(kBinaryOps)));
  const std::uint16_t x = b.load(0), y = b.load(1);
  std::uint16_t acc = x;
  int s = 0;
  for (const BinaryOp op : kBinaryOps) {
    acc = b.binary(BinaryOp::add, acc, b.binary(op, x, y));
    acc = b.binary(BinaryOp::add, acc, b.scalar(op, y, s++));
  }
  return b.output(acc).program();
}

// The typical shape of a fused chain: a bias, an activation, a scale, a residual (8 instructions).
FusedProgram typical_eight_op_program() {
  Builder b(3, 2);
  const std::uint16_t x = b.load(0), bias = b.load(1), residual = b.load(2);
  const std::uint16_t h = b.binary(BinaryOp::add, x, bias);
  const std::uint16_t g = b.unary(UnaryOp::gelu, h);
  const std::uint16_t s = b.scalar(BinaryOp::mul, g, 0);
  const std::uint16_t r = b.binary(BinaryOp::add, s, residual);
  const std::uint16_t c = b.scalar(BinaryOp::minimum, r, 1);
  return b.output(c).program();
}

// A chain of `length` instructions cycling through the ops.
FusedProgram long_chain(int length) {
  Builder b(2, 1);
  std::uint16_t v = b.load(0);
  const std::uint16_t w = b.load(1);
  int i = 2;
  while (i < length) {
    const int pick = i % 4;
    if (pick == 0) v = b.unary(kUnaryOps[static_cast<std::size_t>(i) % std::size(kUnaryOps)], v);
    else if (pick == 1) v = b.binary(kBinaryOps[static_cast<std::size_t>(i) % std::size(kBinaryOps)], v, w);
    else if (pick == 2) v = b.scalar(BinaryOp::mul, v, 0);
    else v = b.unary(UnaryOp::tanh, v);
    ++i;
  }
  return b.output(v).program();
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// Compiles the generated source for sm_<arch> and checks what NVRTC produced.
CompiledProgram compile_checked(const FusedProgram& p, const FusedLayout& l, int arch) {
  const std::string name = cuda_kernel_name(cuda_kernel_key(p, l));
  const std::string source = generate_cuda_source(p, l, name);
  CompiledProgram out = compile_to_ptx(source, name, arch);
  EXPECT_TRUE(contains(out.ptx, ".entry " + name)) << source;
  EXPECT_TRUE(contains(out.ptx, ".target sm_" + std::to_string(arch)));
  EXPECT_FALSE(out.cubin.empty()) << "NVRTC " << defer::detail::nvrtc_version() << " made no CUBIN for sm_" << arch;
  // The kernel never spills the argument or the SSA values to local memory.
  EXPECT_FALSE(contains(out.ptx, ".local")) << out.ptx;
  return out;
}

// ---- generated source compiles -----------------------------------------------------------------

TEST(FusionCodegen, EveryUnaryOpCompilesForSm90AndSm80) {
  const FusedProgram p = every_unary_chain();
  const FusedLayout l = make_layout({1000}, 1);
  compile_checked(p, l, 90);
  compile_checked(p, l, 80);
  const std::string source = generate_cuda_source(p, l, "k");
  EXPECT_TRUE(contains(source, "erfcf(z)"));  // exact gelu, as in kernels/cuda/elementwise.cu
  EXPECT_TRUE(contains(source, "defer_gelu_tanh(v10)"));
}

TEST(FusionCodegen, EveryBinaryOpAndScalarOpCompiles) {
  const FusedProgram p = every_binary_program();
  compile_checked(p, make_layout({64, 33}, 2), 90);
  compile_checked(p, make_layout({64, 33}, 2, {{1, {0, 1}}}), 80);
}

TEST(FusionCodegen, BroadcastingLayoutsCompile) {
  Builder b(4, 1);
  const std::uint16_t x = b.load(0), row = b.load(1), col = b.load(2), one = b.load(3);
  const std::uint16_t v = b.binary(BinaryOp::mul, b.binary(BinaryOp::add, x, row), b.binary(BinaryOp::sub, col, one));
  const FusedProgram p = b.output(b.scalar(BinaryOp::div, v, 0)).program();

  // [7, 5]: a row vector, a column vector and a single element broadcast over the output.
  const FusedLayout broadcast = make_layout({7, 5}, 4, {{1, {0, 1}}, {2, {1, 0}}, {3, {0, 0}}});
  EXPECT_EQ(defer::detail::cuda_input_access(broadcast, 0), CudaInputAccess::flat);
  EXPECT_EQ(defer::detail::cuda_input_access(broadcast, 1), CudaInputAccess::strided);
  EXPECT_EQ(defer::detail::cuda_input_access(broadcast, 2), CudaInputAccess::strided);
  EXPECT_EQ(defer::detail::cuda_input_access(broadcast, 3), CudaInputAccess::uniform);
  compile_checked(p, broadcast, 90);
  const std::string source = generate_cuda_source(p, broadcast, "k");
  EXPECT_TRUE(contains(source, "defer_strided<unsigned int>"));
  EXPECT_TRUE(contains(source, "defer_strided<long long>"));

  // A transposed input, a broadcast middle dim, and only uniform/flat inputs (the float4 path).
  compile_checked(p, make_layout({3, 4, 5}, 4, {{0, {1, 3, 12}}, {1, {20, 0, 1}}}), 90);
  const FusedLayout vec = make_layout({3, 4, 5}, 4, {{3, {0, 0, 0}}});
  compile_checked(p, vec, 90);
  EXPECT_TRUE(contains(generate_cuda_source(p, vec, "k"), "float4"));

  // Every dimension strided, and a 0-d layout.
  const std::vector<i64> eight = {2, 3, 2, 3, 2, 3, 2, 3};
  std::vector<i64> padded = {0, 1, 0, 3, 6, 18, 36, 108};
  compile_checked(p, make_layout(eight, 4, {{0, padded}, {1, padded}, {2, padded}}), 90);
  compile_checked(p, make_layout({}, 4), 80);
}

TEST(FusionCodegen, MultipleOutputsCompile) {
  Builder b(2, 1);
  const std::uint16_t x = b.load(0), y = b.load(1);
  const std::uint16_t sum = b.binary(BinaryOp::add, x, y);
  const std::uint16_t act = b.unary(UnaryOp::silu, sum);
  const std::uint16_t scaled = b.scalar(BinaryOp::mul, act, 0);
  b.output(sum).output(act).output(scaled).output(x);
  const FusedLayout l = make_layout({1 << 20}, 2);
  compile_checked(b.program(), l, 90);
  const std::string source = generate_cuda_source(b.program(), l, "k");
  for (int k = 0; k < 4; ++k) EXPECT_TRUE(contains(source, "a.out[" + std::to_string(k) + "][i] = y[" + std::to_string(k) + "]"));
  compile_checked(b.program(), make_layout({8, 128}, 2, {{1, {0, 1}}}), 80);
}

TEST(FusionCodegen, FortyInstructionChainCompiles) {
  const FusedProgram p = long_chain(40);
  ASSERT_EQ(p.code.size(), 40u);
  compile_checked(p, make_layout({4096}, 2), 90);
  compile_checked(p, make_layout({64, 64}, 2, {{1, {1, 64}}}), 90);
}

TEST(FusionCodegen, SourceIsSelfContainedAndHasNoValues) {
  const FusedProgram p = typical_eight_op_program();
  const std::string source = generate_cuda_source(p, make_layout({12345}, 3), "my_kernel");
  EXPECT_FALSE(contains(source, "#include"));
  EXPECT_TRUE(contains(source, "extern \"C\" __global__ void __launch_bounds__(256) my_kernel(const Args a)"));
  EXPECT_FALSE(contains(source, "12345"));  // sizes are arguments
  EXPECT_TRUE(contains(source, "a.s[0]"));  // scalars are arguments
  EXPECT_TRUE(contains(source, "a.s[1]"));
}

// ---- the structure key -------------------------------------------------------------------------

TEST(FusionKey, IgnoresSizesAndScalarValuesButNotStructure) {
  const FusedProgram p = typical_eight_op_program();
  // Sizes: only how each input is read matters.
  EXPECT_EQ(cuda_kernel_key(p, make_layout({10}, 3)), cuda_kernel_key(p, make_layout({1 << 24}, 3)));
  EXPECT_EQ(cuda_kernel_key(p, make_layout({10}, 3)), cuda_kernel_key(p, make_layout({4, 5, 6}, 3)));
  const FusedLayout bias_a = make_layout({8, 16}, 3, {{1, {0, 1}}});
  const FusedLayout bias_b = make_layout({300, 700}, 3, {{1, {0, 1}}});
  EXPECT_EQ(cuda_kernel_key(p, bias_a), cuda_kernel_key(p, bias_b));
  EXPECT_EQ(generate_cuda_source(p, bias_a, "k"), generate_cuda_source(p, bias_b, "k"));
  // Scalar values never reach the key or the source; they are packed per launch.
  alignas(16) std::array<std::byte, defer::detail::kCudaFusedMaxArgBytes> buf1{}, buf2{};
  const float* in[3] = {nullptr, nullptr, nullptr};
  float* out[1] = {nullptr};
  const float s1[2] = {1.f, 2.f}, s2[2] = {-7.f, 1e30f};
  pack_cuda_args(p, bias_a, in, out, s1, buf1);
  pack_cuda_args(p, bias_a, in, out, s2, buf2);
  EXPECT_NE(buf1, buf2);

  // Structure: the access pattern, ndim when strided, ops, operands, outputs, counts.
  EXPECT_NE(cuda_kernel_key(p, make_layout({8, 16}, 3)), cuda_kernel_key(p, bias_a));
  EXPECT_NE(cuda_kernel_key(p, bias_a), cuda_kernel_key(p, make_layout({2, 8, 16}, 3, {{1, {0, 0, 1}}})));
  EXPECT_NE(cuda_kernel_key(p, make_layout({10}, 3)), cuda_kernel_key(p, make_layout({10}, 3, {{2, {0}}})));
  FusedProgram q = p;
  q.code[4].op = static_cast<std::uint8_t>(UnaryOp::gelu_tanh);
  EXPECT_NE(cuda_kernel_key(p, make_layout({10}, 3)), cuda_kernel_key(q, make_layout({10}, 3)));
  q = p;
  q.outputs.push_back(3);
  EXPECT_NE(cuda_kernel_key(p, make_layout({10}, 3)), cuda_kernel_key(q, make_layout({10}, 3)));
  q = p;
  q.code[5].b = 1;
  EXPECT_NE(cuda_kernel_key(p, make_layout({10}, 3)), cuda_kernel_key(q, make_layout({10}, 3)));
}

// The property the cache relies on: equal keys always mean equal source.
TEST(FusionKey, EqualKeysMeanEqualSource) {
  std::mt19937 rng(1234);
  std::map<std::string, std::string> source_of;
  int shared = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int inputs = 1 + static_cast<int>(rng() % 3);
    Builder b(inputs, 1);
    std::vector<std::uint16_t> values;
    for (int i = 0; i < inputs; ++i) values.push_back(b.load(i));
    const int extra = static_cast<int>(rng() % 3);
    for (int i = 0; i < extra; ++i) {
      const auto a = values[rng() % values.size()];
      values.push_back(rng() % 2 ? b.unary(kUnaryOps[rng() % 2], a) : b.scalar(BinaryOp::add, a, 0));
    }
    b.output(values.back());
    std::vector<i64> shape;
    const int ndim = static_cast<int>(rng() % 4);
    for (int d = 0; d < ndim; ++d) shape.push_back(1 + static_cast<i64>(rng() % 3));
    std::map<int, std::vector<i64>> strides;
    for (int i = 0; i < inputs; ++i) {
      if (rng() % 2) continue;
      std::vector<i64> s;
      for (int d = 0; d < ndim; ++d) s.push_back(static_cast<i64>(rng() % 4));
      strides[i] = s;
    }
    const FusedLayout l = make_layout(shape, inputs, strides);
    const std::string key = cuda_kernel_key(b.program(), l);
    const std::string source = generate_cuda_source(b.program(), l, "k");
    auto [it, inserted] = source_of.emplace(key, source);
    if (!inserted) {
      ++shared;
      ASSERT_EQ(it->second, source) << "two layouts with one key generate different source";
    }
  }
  EXPECT_GT(shared, 50);
}

// ---- the kernel argument -----------------------------------------------------------------------

i64 word(const std::array<std::byte, defer::detail::kCudaFusedMaxArgBytes>& buf, std::size_t index) {
  i64 v = 0;
  std::memcpy(&v, buf.data() + 8 * index, 8);
  return v;
}

TEST(FusionArgs, PackedBytesMatchTheGeneratedStruct) {
  const FusedProgram p = typical_eight_op_program();
  // in1 strided (a row vector), in2 uniform: Args = in[3], out[1], n, flags, shape[2], stride[1][2], s[2].
  const FusedLayout l = make_layout({6, 10}, 3, {{1, {0, 1}}, {2, {0, 0}}});
  const std::size_t size = cuda_args_size(p, l);
  EXPECT_EQ(size, 8u * (3 + 1 + 2 + 2 + 2) + 4 * 2);
  EXPECT_TRUE(contains(generate_cuda_source(p, l, "k"), "static_assert(sizeof(Args) == " + std::to_string(size)));

  alignas(16) std::array<std::byte, defer::detail::kCudaFusedMaxArgBytes> buf{};
  alignas(16) float storage[64];
  const float* in[3] = {storage, storage + 4, storage + 8};
  float* out[1] = {storage + 16};
  const float scalars[2] = {0.5f, -3.f};
  const auto info = pack_cuda_args(p, l, in, out, scalars, buf);
  EXPECT_EQ(info.bytes, size);
  EXPECT_FALSE(info.vec4);  // a strided input
  EXPECT_TRUE(info.index32);
  EXPECT_EQ(info.work_items, 60);
  EXPECT_EQ(word(buf, 0), reinterpret_cast<i64>(in[0]));
  EXPECT_EQ(word(buf, 2), reinterpret_cast<i64>(in[2]));
  EXPECT_EQ(word(buf, 3), reinterpret_cast<i64>(out[0]));
  EXPECT_EQ(word(buf, 4), 60);  // n
  EXPECT_EQ(word(buf, 5), 2);   // flags: 32-bit offsets
  EXPECT_EQ(word(buf, 6), 6);   // shape
  EXPECT_EQ(word(buf, 7), 10);
  EXPECT_EQ(word(buf, 8), 0);  // in1's strides
  EXPECT_EQ(word(buf, 9), 1);
  float s[2];
  std::memcpy(s, buf.data() + 80, sizeof s);
  EXPECT_EQ(s[0], 0.5f);
  EXPECT_EQ(s[1], -3.f);

  // Contiguous: float4 when every flat pointer is 16-byte aligned (the uniform one need not be).
  const FusedLayout flat = make_layout({6, 10}, 3, {{2, {0, 0}}});
  EXPECT_EQ(cuda_args_size(p, flat), 8u * (3 + 1 + 2) + 8);
  const float* odd_uniform[3] = {storage, storage + 4, storage + 9};
  auto v = pack_cuda_args(p, flat, odd_uniform, out, scalars, buf);
  EXPECT_TRUE(v.vec4);
  EXPECT_EQ(v.work_items, 15);
  EXPECT_EQ(word(buf, 5), 1);
  const float* misaligned[3] = {storage + 1, storage + 4, storage + 8};
  v = pack_cuda_args(p, flat, misaligned, out, scalars, buf);
  EXPECT_FALSE(v.vec4);
  EXPECT_EQ(v.work_items, 60);

  // 64-bit offsets when a stride is negative or an offset passes 2^31 - 1.
  EXPECT_FALSE(pack_cuda_args(p, make_layout({6, 10}, 3, {{1, {0, -1}}}), in, out, scalars, buf).index32);
  EXPECT_FALSE(pack_cuda_args(p, make_layout({3, 10}, 3, {{1, {i64{1} << 30, 1}}}), in, out, scalars, buf).index32);
  EXPECT_TRUE(pack_cuda_args(p, make_layout({2, 10}, 3, {{1, {i64{1} << 30, 1}}}), in, out, scalars, buf).index32);
}

// ---- fused reductions ----------------------------------------------------------------------------

// `layout` with the reduce split of dim `dim` of `dims` (the layout's shape may be collapsed).
FusedLayout with_reduce(FusedLayout l, const std::vector<i64>& dims, int dim) {
  l.reduce = {1, dims[static_cast<std::size_t>(dim)], 1};
  for (int d = 0; d < dim; ++d) l.reduce.outer *= dims[static_cast<std::size_t>(d)];
  for (std::size_t d = static_cast<std::size_t>(dim) + 1; d < dims.size(); ++d) l.reduce.inner *= dims[d];
  return l;
}

FusedProgram reducing(FusedProgram p, ReduceOp op) {
  p.reduction = defer::kernels::FusedReduction{op, p.outputs.front()};
  p.outputs = {p.outputs.front()};
  return p;
}

const ReduceOp kReduceOps[] = {ReduceOp::sum, ReduceOp::mean, ReduceOp::max};

// v = silu(x * y + bias) * s0, reduced: the typical fused prologue (bias broadcast over rows).
FusedProgram reduce_chain(ReduceOp op) {
  Builder b(3, 1);
  const std::uint16_t x = b.load(0), y = b.load(1), bias = b.load(2);
  const std::uint16_t v = b.scalar(BinaryOp::mul, b.unary(UnaryOp::silu, b.binary(BinaryOp::add, b.binary(BinaryOp::mul, x, y), bias)), 0);
  return reducing(b.output(v).program(), op);
}

TEST(FusionCodegen, ReductionsCompileForSm90) {
  for (const ReduceOp op : kReduceOps) {
    SCOPED_TRACE(defer::kernels::name(op));
    const FusedProgram p = reduce_chain(op);
    // rows, contiguous (inner == 1): flat inputs, a uniform one: float4 loads
    const FusedLayout rows = with_reduce(make_layout({64, 256}, 3, {{2, {0, 0}}}), {64, 256}, 1);
    compile_checked(p, rows, 90);
    const std::string rows_source = generate_cuda_source(p, rows, "k");
    EXPECT_TRUE(contains(rows_source, "defer_rows<long long>(a, u)"));
    EXPECT_TRUE(contains(rows_source, "reinterpret_cast<const float4*>"));
    EXPECT_FALSE(contains(rows_source, "defer_columns"));
    EXPECT_TRUE(contains(rows_source, op == ReduceOp::max ? "typedef float Acc" : "typedef double Acc"));
    // rows with a broadcast bias (strided input): offsets from the flat index, 32- or 64-bit
    const FusedLayout bias_rows = with_reduce(make_layout({64, 256}, 3, {{2, {0, 1}}}), {64, 256}, 1);
    compile_checked(p, bias_rows, 90);
    EXPECT_TRUE(contains(generate_cuda_source(p, bias_rows, "k"), "defer_rows<unsigned int>(a, u)"));
    // reduced over the first or a middle dim: column tiles and strided rows, both in one source
    const FusedLayout columns = with_reduce(make_layout({300, 64}, 3, {{2, {0, 1}}}), {300, 64}, 0);
    compile_checked(p, columns, 90);
    const std::string columns_source = generate_cuda_source(p, columns, "k");
    EXPECT_TRUE(contains(columns_source, "defer_columns<unsigned int>(a, u)"));
    EXPECT_TRUE(contains(columns_source, "defer_rows<long long>(a, u)"));
    EXPECT_FALSE(contains(columns_source, "reinterpret_cast<const float4*>"));
    const FusedLayout middle = with_reduce(make_layout({4, 30, 5}, 3, {{1, {150, 1, 30}}}), {4, 30, 5}, 1);
    compile_checked(p, middle, 90);
  }
  // the reduced value is a plain load, and a 40-instruction chain
  Builder b(1);
  const FusedProgram load_only = reducing(b.output(b.load(0)).program(), ReduceOp::sum);
  compile_checked(load_only, with_reduce(make_layout({1000}, 1), {1000}, 0), 90);
  compile_checked(reducing(long_chain(40), ReduceOp::mean), with_reduce(make_layout({64, 64}, 2, {{1, {1, 64}}}), {64, 64}, 0), 90);
}

TEST(FusionKey, ReductionsKeyOpValueAndRowShapeButNotSizes) {
  const FusedProgram sum = reduce_chain(ReduceOp::sum);
  auto key = [](const FusedProgram& p, const std::vector<i64>& dims, int dim) {
    return cuda_kernel_key(p, with_reduce(make_layout(dims, 3, {{2, {0, 0}}}), dims, dim));
  };
  const std::string rows = key(sum, {8, 100}, 1), columns = key(sum, {100, 8}, 0);
  EXPECT_EQ(rows, key(sum, {3000, 7}, 1));
  EXPECT_EQ(rows, key(sum, {1, 5}, 1));
  EXPECT_EQ(columns, key(sum, {7, 3000}, 0));
  EXPECT_EQ(columns, key(sum, {5, 2}, 0));
  EXPECT_EQ(generate_cuda_source(sum, with_reduce(make_layout({8, 100}, 3, {{2, {0, 0}}}), {8, 100}, 1), "k"),
            generate_cuda_source(sum, with_reduce(make_layout({3000, 7}, 3, {{2, {0, 0}}}), {3000, 7}, 1), "k"));
  std::vector<std::string> keys = {rows, columns, key(reduce_chain(ReduceOp::mean), {8, 100}, 1),
                                   key(reduce_chain(ReduceOp::max), {8, 100}, 1)};
  FusedProgram element_wise = sum;
  element_wise.reduction.reset();
  keys.push_back(cuda_kernel_key(element_wise, make_layout({8, 100}, 3, {{2, {0, 0}}})));
  FusedProgram other_value = sum;
  other_value.reduction->value = 4;
  other_value.outputs = {4};
  keys.push_back(key(other_value, {8, 100}, 1));
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(std::unique(keys.begin(), keys.end()), keys.end());
}

TEST(FusionArgs, ReductionPacksItsSplitAndStrategy) {
  const FusedProgram p = reduce_chain(ReduceOp::mean);
  // Args = in[3], out[1], n, flags, outer, len, inner, s[1] (no strided input)
  auto layout = [](const std::vector<i64>& dims, int dim) {
    return with_reduce(make_layout(dims, 3, {{2, {0, 0}}}), dims, dim);
  };
  const FusedLayout rows = layout({50, 256}, 1);
  EXPECT_EQ(cuda_args_size(p, rows), 8u * (3 + 1 + 2 + 3) + 8);
  EXPECT_TRUE(contains(generate_cuda_source(p, rows, "k"), "static_assert(sizeof(Args) == " + std::to_string(8 * 9 + 8)));
  alignas(16) std::array<std::byte, defer::detail::kCudaFusedMaxArgBytes> buf{};
  alignas(16) float storage[64];
  const float* in[3] = {storage, storage + 4, storage + 9};
  float* out[1] = {storage + 17};  // a reduction's output need not be aligned for float4 loads
  const float scalar = 2.f;
  auto info = pack_cuda_args(p, rows, in, out, &scalar, buf);
  EXPECT_TRUE(info.vec4);
  EXPECT_EQ(word(buf, 4), 50 * 256);  // n, the domain
  EXPECT_EQ(word(buf, 5), 1);         // flags: float4 rows, a warp per row
  EXPECT_EQ(word(buf, 6), 50);        // outer, len, inner
  EXPECT_EQ(word(buf, 7), 256);
  EXPECT_EQ(word(buf, 8), 1);
  EXPECT_EQ(info.work_items, 50);
  EXPECT_EQ(info.blocks, 7);  // eight warps, eight rows per block
  // rows of a length that is no multiple of 4, or a misaligned input: no float4
  EXPECT_FALSE(pack_cuda_args(p, layout({50, 255}, 1), in, out, &scalar, buf).vec4);
  const float* misaligned[3] = {storage + 1, storage + 4, storage + 9};
  EXPECT_FALSE(pack_cuda_args(p, rows, misaligned, out, &scalar, buf).vec4);
  // long rows: a block per row
  info = pack_cuda_args(p, layout({3, 5000}, 1), in, out, &scalar, buf);
  EXPECT_EQ(word(buf, 5), 1 | 4);
  EXPECT_EQ(info.blocks, 3);
  // wide inner: column tiles, never float4
  info = pack_cuda_args(p, layout({300, 64}, 0), in, out, &scalar, buf);
  EXPECT_EQ(word(buf, 5), 8);
  EXPECT_EQ(info.blocks, 2);
  EXPECT_EQ(word(buf, 6), 1);
  EXPECT_EQ(word(buf, 7), 300);
  EXPECT_EQ(word(buf, 8), 64);
  // narrow inner: strided rows (a warp each)
  info = pack_cuda_args(p, layout({7, 300, 5}, 1), in, out, &scalar, buf);
  EXPECT_EQ(word(buf, 5), 0);
  EXPECT_EQ(info.blocks, 5);  // 35 outputs, 8 per block
}

TEST(FusionCaps, MalformedReductionsAreRejected) {
  const FusedLayout l = with_reduce(make_layout({8, 100}, 3), {8, 100}, 1);
  FusedProgram p = reduce_chain(ReduceOp::sum);
  EXPECT_NO_THROW(cuda_kernel_key(p, l));
  FusedProgram bad = p;
  bad.outputs = {0};
  EXPECT_THROW(cuda_kernel_key(bad, l), std::invalid_argument);
  bad.outputs = {p.outputs[0], p.outputs[0]};
  EXPECT_THROW(cuda_kernel_key(bad, l), std::invalid_argument);
  bad = p;
  bad.reduction->op = static_cast<ReduceOp>(7);
  EXPECT_THROW(generate_cuda_source(bad, l, "k"), std::invalid_argument);
  FusedLayout split = l;
  split.reduce.n = 99;
  EXPECT_THROW(cuda_kernel_key(p, split), std::invalid_argument);
}

// ---- caps and malformed programs ---------------------------------------------------------------

TEST(FusionCaps, BiggerProgramsAreRejectedForThePlannerToSplit) {
  {
    Builder b(defer::detail::kCudaFusedMaxInputs + 1);
    b.output(b.load(0));
    EXPECT_THROW(cuda_kernel_key(b.program(), make_layout({4}, defer::detail::kCudaFusedMaxInputs + 1)),
                 std::invalid_argument);
  }
  {
    Builder b(1);
    const auto v = b.load(0);
    for (int k = 0; k <= defer::detail::kCudaFusedMaxOutputs; ++k) b.output(v);
    EXPECT_THROW(generate_cuda_source(b.program(), make_layout({4}, 1), "k"), std::invalid_argument);
  }
  {
    Builder b(1, defer::detail::kCudaFusedMaxScalars + 1);
    b.output(b.load(0));
    EXPECT_THROW(cuda_kernel_key(b.program(), make_layout({4}, 1)), std::invalid_argument);
  }
  {
    const FusedProgram p = long_chain(defer::detail::kCudaFusedMaxInstructions + 1);
    FusedKernelCache cache{fs::path()};
    EXPECT_THROW(cache.get(p, make_layout({4}, 2), 90), std::invalid_argument);
    EXPECT_NO_THROW(cuda_kernel_key(long_chain(defer::detail::kCudaFusedMaxInstructions), make_layout({4}, 2)));
  }
  {  // exactly at every cap is fine
    Builder b(defer::detail::kCudaFusedMaxInputs, defer::detail::kCudaFusedMaxScalars);
    std::uint16_t v = b.load(0);
    for (int i = 1; i < defer::detail::kCudaFusedMaxInputs; ++i) v = b.binary(BinaryOp::add, v, b.load(i));
    for (int s = 0; s < defer::detail::kCudaFusedMaxScalars; ++s) v = b.scalar(BinaryOp::mul, v, s);
    for (int k = 0; k < defer::detail::kCudaFusedMaxOutputs; ++k) b.output(v);
    std::map<int, std::vector<i64>> strides;
    for (int i = 0; i < defer::detail::kCudaFusedMaxInputs; ++i) strides[i] = {1, 2, 4, 8, 16, 32, 64, 128};
    const FusedLayout l = make_layout({2, 2, 2, 2, 2, 2, 2, 2}, defer::detail::kCudaFusedMaxInputs, strides);
    EXPECT_EQ(cuda_args_size(b.program(), l), defer::detail::kCudaFusedMaxArgBytes);
    compile_checked(b.program(), l, 90);
  }
}

TEST(FusionCaps, MalformedProgramsAreRejected) {
  const FusedLayout l = make_layout({4}, 1);
  auto rejects = [&](const FusedProgram& p, const FusedLayout& layout) {
    EXPECT_THROW(cuda_kernel_key(p, layout), std::invalid_argument);
    EXPECT_THROW(generate_cuda_source(p, layout, "k"), std::invalid_argument);
  };
  Builder ok(1, 1);
  ok.output(ok.scalar(BinaryOp::add, ok.load(0), 0));
  EXPECT_NO_THROW(cuda_kernel_key(ok.program(), l));

  FusedProgram p = ok.program();
  p.outputs.clear();
  rejects(p, l);  // no outputs
  p = ok.program();
  p.code[1].a = 1;
  rejects(p, l);  // uses itself
  p = ok.program();
  p.code[1].b = 1;
  rejects(p, l);  // scalar out of range
  p = ok.program();
  p.code[0].a = 1;
  rejects(p, l);  // input out of range
  p = ok.program();
  p.code[1].op = 6;
  rejects(p, l);  // op out of range
  p = ok.program();
  p.code[1].kind = static_cast<FusedKind>(9);
  rejects(p, l);
  p = ok.program();
  p.outputs[0] = 2;
  rejects(p, l);  // undefined output
  rejects(ok.program(), make_layout({4}, 2));  // strides for two inputs
  FusedLayout bad = l;
  bad.ndim = kMaxDims + 1;
  rejects(ok.program(), bad);
}

// ---- NVRTC -------------------------------------------------------------------------------------

TEST(Nvrtc, CompileFailureCarriesTheLogAndTheNumberedSource) {
  const std::string source =
      "extern \"C\" __global__ void broken(float* x) {\n"
      "  x[0] = undeclared_identifier_42 + 1.f;\n"
      "}\n";
  try {
    compile_to_ptx(source, "broken", 90);
    FAIL() << "a broken source compiled";
  } catch (const defer::Error& e) {
    const std::string what = e.what();
    EXPECT_TRUE(contains(what, "identifier \"undeclared_identifier_42\" is undefined")) << what;  // NVRTC's log
    EXPECT_TRUE(contains(what, "    2 |   x[0] = undeclared_identifier_42 + 1.f;")) << what;  // the source
    EXPECT_TRUE(contains(what, "broken")) << what;
    EXPECT_TRUE(contains(what, "sm_90")) << what;
  }
}

TEST(Nvrtc, CompilesArbitrarySourceAndReportsItsVersion) {
  const CompiledProgram c = compile_to_ptx("extern \"C\" __global__ void fine(float* x) { x[0] = 1.f; }\n", "fine", 90);
  EXPECT_TRUE(contains(c.ptx, ".entry fine"));
  EXPECT_EQ(c.arch, 90);
  EXPECT_NE(defer::detail::nvrtc_version(), "unknown");
}

TEST(Nvrtc, TimeOfOneCompile) {
  const FusedProgram p = typical_eight_op_program();
  const FusedLayout l = make_layout({1024, 1024}, 3, {{1, {0, 1}}});
  const std::string name = cuda_kernel_name(cuda_kernel_key(p, l));
  const std::string source = generate_cuda_source(p, l, name);
  double best = 1e30, total = 0;
  constexpr int kRuns = 3;
  for (int i = 0; i < kRuns; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    const CompiledProgram c = compile_to_ptx(source, name, 90);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, ms);
    total += ms;
    ASSERT_FALSE(c.ptx.empty());
  }
  // Informational only (no timing assertions in tests).
  std::cout << "[ timing ] NVRTC " << defer::detail::nvrtc_version() << ", 8-instruction program (broadcast bias, gelu, "
            << "scale, residual, clamp) to PTX + CUBIN for sm_90: best " << best << " ms, mean " << total / kRuns
            << " ms\n";
  RecordProperty("nvrtc_compile_ms_best", std::to_string(best));
}

// ---- the kernel cache --------------------------------------------------------------------------

// Sets (or unsets, with nullptr) an environment variable for the scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) ::setenv(name, value, 1);
    else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_, old_->c_str(), 1);
    else ::unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

// A fresh directory, removed at the end of the scope.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("defer_fusion_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter.fetch_add(1)));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::vector<fs::path> kernel_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path());
  return files;
}

TEST(KernelCache, SecondLookupIsAMemoryHitWhateverTheSizes) {
  FusedKernelCache cache{fs::path()};  // no disk cache
  EXPECT_TRUE(cache.disk_dir().empty());
  const FusedProgram p = typical_eight_op_program();
  const auto& first = cache.get(p, make_layout({100}, 3), 90);
  const auto& second = cache.get(p, make_layout({7, 9, 11}, 3), 90);
  EXPECT_EQ(&first, &second);
  auto c = cache.counters();
  EXPECT_EQ(c.compiles, 1u);
  EXPECT_EQ(c.memory_hits, 1u);
  EXPECT_EQ(c.disk_hits, 0u);
  EXPECT_EQ(c.disk_writes, 0u);
  // Another architecture or another structure compiles again.
  cache.get(p, make_layout({100}, 3), 80);
  cache.get(p, make_layout({10, 10}, 3, {{1, {0, 1}}}), 90);
  c = cache.counters();
  EXPECT_EQ(c.compiles, 3u);
  EXPECT_TRUE(contains(first.binary.ptx, ".entry " + first.name));
}

TEST(KernelCache, DiskCacheWarmsASecondProcessAndSurvivesCorruption) {
  TempDir dir;
  ScopedEnv env("DEFER_CACHE_DIR", dir.path().c_str());
  const FusedProgram p = typical_eight_op_program();
  const FusedLayout l = make_layout({1000}, 3, {{1, {0}}});
  const std::string key = cuda_kernel_key(p, l);

  CompiledProgram compiled;
  fs::path file;
  {  // the first process compiles and writes
    FusedKernelCache cache;
    EXPECT_EQ(cache.disk_dir(), dir.path());
    compiled = cache.get(p, l, 90).binary;
    const auto c = cache.counters();
    EXPECT_EQ(c.compiles, 1u);
    EXPECT_EQ(c.disk_writes, 1u);
    file = cache.disk_file(key, 90);
    ASSERT_TRUE(fs::exists(file));
    EXPECT_EQ(kernel_files(dir.path()).size(), 1u);  // no temporary file left behind
  }
  {  // the second process reads it without compiling
    FusedKernelCache cache;
    const auto& k = cache.get(p, make_layout({5}, 3, {{1, {0}}}), 90);
    const auto c = cache.counters();
    EXPECT_EQ(c.compiles, 0u);
    EXPECT_EQ(c.disk_hits, 1u);
    EXPECT_EQ(k.binary.ptx, compiled.ptx);
    EXPECT_EQ(k.binary.cubin, compiled.cubin);
    EXPECT_EQ(k.name, cuda_kernel_name(key));
    // Another architecture is another file.
    EXPECT_NE(cache.disk_file(key, 80), file);
  }
  const auto original_size = fs::file_size(file);
  {  // a corrupted byte: ignored, recompiled, rewritten
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(original_size / 2));
    char c = 0;
    f.read(&c, 1);
    f.seekp(static_cast<std::streamoff>(original_size / 2));
    c = static_cast<char>(c ^ 0x5a);
    f.write(&c, 1);
  }
  {
    FusedKernelCache cache;
    const auto& k = cache.get(p, l, 90);
    EXPECT_EQ(cache.counters().compiles, 1u);
    EXPECT_EQ(cache.counters().disk_hits, 0u);
    EXPECT_EQ(cache.counters().disk_writes, 1u);
    EXPECT_EQ(k.binary.ptx, compiled.ptx);
  }
  {  // truncated: the same
    fs::resize_file(file, original_size - 9);
    FusedKernelCache cache;
    cache.get(p, l, 90);
    EXPECT_EQ(cache.counters().compiles, 1u);
    EXPECT_EQ(fs::file_size(file), original_size);
  }
  {  // empty and garbage files too
    std::ofstream(file, std::ios::binary | std::ios::trunc) << "not a kernel";
    FusedKernelCache cache;
    cache.get(p, l, 90);
    EXPECT_EQ(cache.counters().compiles, 1u);
  }
  {  // and the rewritten file is good again
    FusedKernelCache cache;
    cache.get(p, l, 90);
    EXPECT_EQ(cache.counters().compiles, 0u);
    EXPECT_EQ(cache.counters().disk_hits, 1u);
  }
}

TEST(KernelCache, DirectoryComesFromTheEnvironment) {
  {
    ScopedEnv a("DEFER_CACHE_DIR", "/some/where");
    EXPECT_EQ(FusedKernelCache::default_disk_dir(), fs::path("/some/where"));
  }
  {
    ScopedEnv a("DEFER_CACHE_DIR", nullptr);
    ScopedEnv b("XDG_CACHE_HOME", "/xdg");
    EXPECT_EQ(FusedKernelCache::default_disk_dir(), fs::path("/xdg/defer"));
  }
  {
    ScopedEnv a("DEFER_CACHE_DIR", "");
    ScopedEnv b("XDG_CACHE_HOME", nullptr);
    ScopedEnv c("HOME", "/home/someone");
    EXPECT_EQ(FusedKernelCache::default_disk_dir(), fs::path("/home/someone/.cache/defer"));
  }
  {  // created when missing
    TempDir dir;
    ScopedEnv a("DEFER_CACHE_DIR", (dir.path() / "a" / "b").c_str());
    FusedKernelCache cache;
    EXPECT_EQ(cache.disk_dir(), dir.path() / "a" / "b");
    EXPECT_TRUE(fs::is_directory(dir.path() / "a" / "b"));
  }
}

TEST(KernelCache, UnusableDirectoryDisablesTheDiskCacheSilently) {
  TempDir dir;
  const fs::path blocker = dir.path() / "a_file";
  std::ofstream(blocker) << "x";
  ScopedEnv env("DEFER_CACHE_DIR", (blocker / "cache").c_str());  // cannot be created under a file
  FusedKernelCache cache;
  EXPECT_TRUE(cache.disk_dir().empty());
  cache.get(typical_eight_op_program(), make_layout({10}, 3), 90);
  EXPECT_EQ(cache.counters().compiles, 1u);
  EXPECT_EQ(cache.counters().disk_writes, 0u);
}

TEST(KernelCache, ConcurrentLookupsCompileOnce) {
  FusedKernelCache cache{fs::path()};
  const FusedProgram p = every_unary_chain();
  std::vector<std::thread> threads;
  std::vector<const defer::detail::CachedKernel*> got(4);
  for (std::size_t t = 0; t < got.size(); ++t)
    threads.emplace_back([&, t] { got[t] = &cache.get(p, make_layout({static_cast<i64>(100 + t)}, 1), 90); });
  for (auto& t : threads) t.join();
  for (const auto* k : got) EXPECT_EQ(k, got[0]);
  EXPECT_EQ(cache.counters().compiles, 1u);
  EXPECT_EQ(cache.counters().memory_hits, 3u);
}

// ---- on a GPU: loading and launching -----------------------------------------------------------

#define CHECK_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

// A device buffer of n floats (plus slack for misaligned views).
struct DeviceBuffer {
  explicit DeviceBuffer(std::size_t n) {
    void* raw = nullptr;
    if (cudaMalloc(&raw, (n + 4) * sizeof(float)) == cudaSuccess) ptr = static_cast<float*>(raw);
  }
  ~DeviceBuffer() {
    if (ptr) (void)cudaFree(ptr);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  float* ptr = nullptr;
};

std::vector<float> random_values(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(0.1f, 3.f);
  std::vector<float> v(n);
  for (auto& x : v) x = rng() % 2 ? dist(rng) : -dist(rng);
  return v;
}

// The program evaluated op by op with the CPU kernels (the reference).
std::vector<std::vector<float>> cpu_reference(const FusedProgram& p, const FusedLayout& l,
                                              const std::vector<std::vector<float>>& inputs,
                                              const std::vector<float>& scalars) {
  namespace cpu = defer::kernels::cpu;
  const i64 n = l.numel();
  std::vector<std::vector<float>> v(p.code.size(), std::vector<float>(static_cast<std::size_t>(n)));
  for (std::size_t i = 0; i < p.code.size(); ++i) {
    const FusedInstr& ins = p.code[i];
    auto& out = v[i];
    switch (ins.kind) {
      case FusedKind::load:
        for (i64 e = 0; e < n; ++e) {
          i64 rest = e, offset = 0;
          for (int d = l.ndim - 1; d >= 0; --d) {
            const auto u = static_cast<std::size_t>(d);
            offset += (rest % l.shape[u]) * l.strides[ins.a][u];
            rest /= l.shape[u];
          }
          out[static_cast<std::size_t>(e)] = inputs[ins.a][static_cast<std::size_t>(offset)];
        }
        break;
      case FusedKind::unary: cpu::unary(static_cast<UnaryOp>(ins.op), v[ins.a].data(), out.data(), n); break;
      case FusedKind::binary:
        cpu::binary(static_cast<BinaryOp>(ins.op), v[ins.a].data(), v[ins.b].data(), out.data(), n, nullptr);
        break;
      case FusedKind::binary_scalar:
        cpu::binary_scalar(static_cast<BinaryOp>(ins.op), v[ins.a].data(), scalars[ins.b], out.data(), n);
        break;
    }
  }
  std::vector<std::vector<float>> outs;
  for (const auto o : p.outputs) outs.push_back(v[o]);
  return outs;
}

// Runs the program fused on the GPU, with every input and output `shift` floats past an aligned
// address (shift != 0 takes the scalar path), and compares with the CPU reference.
void expect_fused_matches_cpu(const FusedProgram& p, const FusedLayout& l, std::size_t shift, std::uint32_t seed) {
  const i64 n = l.numel();
  std::vector<std::vector<float>> host_in;
  std::vector<std::unique_ptr<DeviceBuffer>> dev_in, dev_out;
  std::vector<const float*> in_ptrs;
  std::vector<float*> out_ptrs;
  for (int i = 0; i < p.num_inputs; ++i) {
    i64 extent = 1;  // elements the input spans
    for (int d = 0; d < l.ndim; ++d) {
      const auto u = static_cast<std::size_t>(d);
      extent += (l.shape[u] - 1) * l.strides[static_cast<std::size_t>(i)][u];
    }
    host_in.push_back(random_values(static_cast<std::size_t>(extent), seed + static_cast<std::uint32_t>(i)));
    dev_in.push_back(std::make_unique<DeviceBuffer>(host_in.back().size()));
    ASSERT_NE(dev_in.back()->ptr, nullptr);
    CHECK_CUDA(cudaMemcpy(dev_in.back()->ptr + shift, host_in.back().data(), host_in.back().size() * sizeof(float),
                          cudaMemcpyHostToDevice));
    in_ptrs.push_back(dev_in.back()->ptr + shift);
  }
  for (std::size_t k = 0; k < p.outputs.size(); ++k) {
    dev_out.push_back(std::make_unique<DeviceBuffer>(static_cast<std::size_t>(n)));
    ASSERT_NE(dev_out.back()->ptr, nullptr);
    CHECK_CUDA(cudaMemset(dev_out.back()->ptr, 0xff, (static_cast<std::size_t>(n) + 4) * sizeof(float)));  // NaN
    out_ptrs.push_back(dev_out.back()->ptr + shift);
  }
  std::vector<float> scalars;
  for (int s = 0; s < p.num_scalars; ++s) scalars.push_back(0.25f + 0.5f * static_cast<float>(s));
  cudaStream_t stream = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  defer::detail::launch_fused_cuda(p, l, in_ptrs.data(), out_ptrs.data(), scalars.data(), stream, 0);
  CHECK_CUDA(cudaStreamSynchronize(stream));
  CHECK_CUDA(cudaStreamDestroy(stream));
  const auto expected = cpu_reference(p, l, host_in, scalars);
  for (std::size_t k = 0; k < p.outputs.size(); ++k) {
    std::vector<float> got(static_cast<std::size_t>(n));
    CHECK_CUDA(cudaMemcpy(got.data(), out_ptrs[k], got.size() * sizeof(float), cudaMemcpyDeviceToHost));
    for (std::size_t e = 0; e < got.size(); ++e) {
      const float want = expected[k][e];
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(got[e])) << "output " << k << " element " << e;
      } else {
        ASSERT_NEAR(got[e], want, 2e-5f * std::max(1.f, std::fabs(want))) << "output " << k << " element " << e;
      }
    }
  }
}

TEST(FusedLaunchGpu, MatchesTheCpuReference) {
  if (!defer::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const FusedProgram chain = every_unary_chain();
  for (const std::size_t shift : {0u, 1u}) {
    SCOPED_TRACE("shift " + std::to_string(shift));
    expect_fused_matches_cpu(chain, make_layout({1003}, 1), shift, 1);                  // float4 + tail, or scalar
    expect_fused_matches_cpu(every_binary_program(), make_layout({37, 41}, 2), shift, 2);
    expect_fused_matches_cpu(typical_eight_op_program(), make_layout({64, 96}, 3, {{1, {0, 1}}, {2, {1, 64}}}), shift, 3);
    expect_fused_matches_cpu(typical_eight_op_program(), make_layout({5, 7, 9}, 3, {{1, {0, 0, 0}}}), shift, 4);
    expect_fused_matches_cpu(long_chain(40), make_layout({3, 1, 333}, 2, {{1, {0, 0, 1}}}), shift, 5);
  }
  // Multiple outputs, some of them intermediates, and a 0-d layout.
  Builder b(2, 1);
  const std::uint16_t x = b.load(0), y = b.load(1);
  const std::uint16_t sum = b.binary(BinaryOp::add, x, y);
  b.output(sum).output(b.unary(UnaryOp::gelu, sum)).output(b.scalar(BinaryOp::maximum, x, 0));
  expect_fused_matches_cpu(b.program(), make_layout({2049}, 2), 0, 6);
  expect_fused_matches_cpu(b.program(), make_layout({}, 2), 0, 7);
}

TEST(FusedLaunchGpu, SixtyFourBitOffsetsWork) {
  if (!defer::cuda_available()) GTEST_SKIP() << "no CUDA device";
  // A negative stride forces the 64-bit index arithmetic: in0 read back to front.
  Builder b(2);
  b.output(b.binary(BinaryOp::sub, b.load(0), b.load(1)));
  FusedLayout l = make_layout({1000}, 2);
  // Read in0 reversed by passing a pointer to its last element and a stride of -1.
  std::vector<float> host = random_values(1000, 9), other = random_values(1000, 10);
  DeviceBuffer a(1000), c(1000), out(1000);
  ASSERT_NE(a.ptr, nullptr);
  CHECK_CUDA(cudaMemcpy(a.ptr, host.data(), 4000, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(c.ptr, other.data(), 4000, cudaMemcpyHostToDevice));
  l.strides[0][0] = -1;
  const float* in[2] = {a.ptr + 999, c.ptr};
  float* outs[1] = {out.ptr};
  defer::detail::launch_fused_cuda(b.program(), l, in, outs, nullptr, nullptr, 0);
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<float> got(1000);
  CHECK_CUDA(cudaMemcpy(got.data(), out.ptr, 4000, cudaMemcpyDeviceToHost));
  for (std::size_t i = 0; i < 1000; ++i) ASSERT_EQ(got[i], host[999 - i] - other[i]) << i;
}

// Fusion never changes rounding: the fused kernel equals the unfused CUDA kernels bit for bit.
TEST(FusedLaunchGpu, BitIdenticalToTheUnfusedKernels) {
  if (!defer::cuda_available()) GTEST_SKIP() << "no CUDA device";
  namespace gpu = defer::kernels::cuda;
  Builder b(2, 1);
  const std::uint16_t x = b.load(0), y = b.load(1);
  std::uint16_t v = b.binary(BinaryOp::mul, x, y);
  v = b.binary(BinaryOp::add, v, x);  // mul then add: must not become an FMA
  for (const UnaryOp op : kUnaryOps) v = b.binary(BinaryOp::add, b.unary(op, v), y);
  v = b.scalar(BinaryOp::div, v, 0);
  const FusedProgram p = b.output(v).program();
  constexpr i64 n = 4099;
  const auto hx = random_values(n, 11), hy = random_values(n, 12);
  DeviceBuffer dx(n), dy(n), fused(n), t0(n), t1(n), t2(n);
  CHECK_CUDA(cudaMemcpy(dx.ptr, hx.data(), n * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(dy.ptr, hy.data(), n * 4, cudaMemcpyHostToDevice));
  const float scalar = 1.7f;
  const float* in[2] = {dx.ptr, dy.ptr};
  float* out[1] = {fused.ptr};
  defer::detail::launch_fused_cuda(p, make_layout({n}, 2), in, out, &scalar, nullptr, 0);
  // The same ops one kernel at a time.
  gpu::binary(BinaryOp::mul, dx.ptr, dy.ptr, t0.ptr, n, nullptr, nullptr);
  gpu::binary(BinaryOp::add, t0.ptr, dx.ptr, t1.ptr, n, nullptr, nullptr);
  for (const UnaryOp op : kUnaryOps) {
    gpu::unary(op, t1.ptr, t2.ptr, n, nullptr);
    gpu::binary(BinaryOp::add, t2.ptr, dy.ptr, t1.ptr, n, nullptr, nullptr);
  }
  gpu::binary_scalar(BinaryOp::div, t1.ptr, scalar, t0.ptr, n, nullptr);
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<float> a(n), r(n);
  CHECK_CUDA(cudaMemcpy(a.data(), fused.ptr, n * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(r.data(), t0.ptr, n * 4, cudaMemcpyDeviceToHost));
  for (i64 i = 0; i < n; ++i) {
    const auto u = static_cast<std::size_t>(i);
    if (std::isnan(r[u])) ASSERT_TRUE(std::isnan(a[u])) << i;
    else ASSERT_EQ(a[u], r[u]) << i;
  }
}

// A fused reduction on the GPU against the CPU's fused reduction (both accumulate sums in double),
// every input `shift` floats past an aligned address (shift != 0 takes the scalar loads), the
// output poisoned with NaN so that an unwritten element fails.
void expect_reduce_matches_cpu(const FusedProgram& p, const FusedLayout& l, std::size_t shift, std::uint32_t seed) {
  const i64 outputs = l.reduce.outer * l.reduce.inner;
  std::vector<std::vector<float>> host_in;
  std::vector<std::unique_ptr<DeviceBuffer>> dev_in;
  std::vector<const float*> in_ptrs, host_ptrs;
  for (int i = 0; i < p.num_inputs; ++i) {
    i64 extent = 1;
    for (int d = 0; d < l.ndim; ++d) {
      const auto u = static_cast<std::size_t>(d);
      extent += (l.shape[u] - 1) * l.strides[static_cast<std::size_t>(i)][u];
    }
    host_in.push_back(random_values(static_cast<std::size_t>(std::max<i64>(extent, 1)), seed + static_cast<std::uint32_t>(i)));
    dev_in.push_back(std::make_unique<DeviceBuffer>(host_in.back().size()));
    ASSERT_NE(dev_in.back()->ptr, nullptr);
    CHECK_CUDA(cudaMemcpy(dev_in.back()->ptr + shift, host_in.back().data(), host_in.back().size() * sizeof(float),
                          cudaMemcpyHostToDevice));
    in_ptrs.push_back(dev_in.back()->ptr + shift);
    host_ptrs.push_back(host_in.back().data());
  }
  DeviceBuffer dev_out(static_cast<std::size_t>(outputs));
  ASSERT_NE(dev_out.ptr, nullptr);
  CHECK_CUDA(cudaMemset(dev_out.ptr, 0xff, (static_cast<std::size_t>(outputs) + 4) * sizeof(float)));  // NaN
  std::vector<float> scalars;
  for (int s = 0; s < p.num_scalars; ++s) scalars.push_back(0.25f + 0.5f * static_cast<float>(s));
  float* out_ptr = dev_out.ptr;
  defer::detail::launch_fused_cuda(p, l, in_ptrs.data(), &out_ptr, scalars.data(), nullptr, 0);
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<float> got(static_cast<std::size_t>(outputs) + 4), want(static_cast<std::size_t>(outputs));
  CHECK_CUDA(cudaMemcpy(got.data(), dev_out.ptr, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  float* want_ptr = want.data();
  defer::kernels::cpu::run_fused(p, l, host_ptrs.data(), &want_ptr, scalars.data());
  for (std::size_t r = 0; r < want.size(); ++r) {
    if (std::isnan(want[r])) {
      ASSERT_TRUE(std::isnan(got[r])) << "output " << r;
    } else {
      ASSERT_NEAR(got[r], want[r], 1e-5 * (std::fabs(want[r]) + 1.0)) << "output " << r << " of " << outputs;
    }
  }
  for (std::size_t r = want.size(); r < got.size(); ++r) ASSERT_TRUE(std::isnan(got[r])) << "written past the end: " << r;
}

TEST(FusedLaunchGpu, ReductionsMatchTheCpuPath) {
  if (!defer::cuda_available()) GTEST_SKIP() << "no CUDA device";
  struct Domain {
    std::vector<i64> dims;
    int dim;
    const char* what;
  };
  const Domain domains[] = {{{300, 256}, 1, "warp rows, float4"},      {{300, 255}, 1, "warp rows, scalar tail"},
                            {{5, 70001}, 1, "block rows"},             {{1, 1 << 20}, 1, "one long row"},
                            {{3000, 64}, 0, "column tiles"},           {{40, 37, 100}, 1, "column tiles, ragged"},
                            {{50, 3000, 5}, 1, "strided rows"},        {{2, 9000, 40}, 1, "few tiles, long: rows"},
                            {{7}, 0, "tiny"}};
  std::uint32_t seed = 20;
  for (const ReduceOp op : kReduceOps)
    for (const Domain& d : domains)
      for (const std::size_t shift : {0u, 1u}) {
        SCOPED_TRACE(std::string(defer::kernels::name(op)) + ", " + d.what + ", shift " + std::to_string(shift));
        // in0 contiguous, in1 contiguous, in2 a bias broadcast over the reduced dim's neighbours
        const FusedLayout base = make_layout(d.dims, 3);
        FusedLayout l = with_reduce(base, d.dims, d.dim);
        Strides bias{};
        bias[d.dims.size() - 1] = 1;
        l.strides[2] = bias;
        expect_reduce_matches_cpu(reduce_chain(op), l, shift, ++seed);
        Builder b(1);
        expect_reduce_matches_cpu(reducing(b.output(b.load(0)).program(), op), with_reduce(make_layout(d.dims, 1), d.dims, d.dim),
                                  shift, ++seed);
        if (::testing::Test::HasFatalFailure()) return;
      }
}

TEST(FusedLaunchGpu, ReductionNaNsAndEmptyRows) {
  if (!defer::cuda_available()) GTEST_SKIP() << "no CUDA device";
  // log of the negative elements: NaN in (nearly) every row, for every op and strategy
  Builder b(1);
  const FusedProgram logs = b.output(b.unary(UnaryOp::log, b.load(0))).program();
  for (const ReduceOp op : kReduceOps) {
    expect_reduce_matches_cpu(reducing(logs, op), with_reduce(make_layout({64, 100}, 1), {64, 100}, 1), 0, 1);
    expect_reduce_matches_cpu(reducing(logs, op), with_reduce(make_layout({100, 64}, 1), {100, 64}, 0), 0, 2);
    // n == 0: the empty reduction is written (0, or NaN for mean and max), input pointers unread
    const FusedLayout empty = with_reduce(make_layout({3, 0, 40}, 1, {{0, {0, 0, 0}}}), {3, 0, 40}, 1);
    DeviceBuffer out(120);
    CHECK_CUDA(cudaMemset(out.ptr, 0x7f, 124 * sizeof(float)));
    const float* in[1] = {nullptr};
    float* outs[1] = {out.ptr};
    defer::detail::launch_fused_cuda(reducing(logs, op), empty, in, outs, nullptr, nullptr, 0);
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<float> got(120);
    CHECK_CUDA(cudaMemcpy(got.data(), out.ptr, 480, cudaMemcpyDeviceToHost));
    for (float g : got) {
      if (op == ReduceOp::sum) ASSERT_EQ(g, 0.f);
      else ASSERT_TRUE(std::isnan(g)) << g;
    }
  }
}

TEST(FusedLaunchGpu, EmptyLaunchDoesNothingAndCapsStillThrow) {
  if (!defer::cuda_available()) GTEST_SKIP() << "no CUDA device";
  Builder b(1);
  b.output(b.load(0));
  const float* in[1] = {nullptr};
  float* out[1] = {nullptr};
  EXPECT_NO_THROW(defer::detail::launch_fused_cuda(b.program(), make_layout({0, 5}, 1), in, out, nullptr, nullptr, 0));
  FusedProgram bad = b.program();
  bad.outputs.clear();
  EXPECT_THROW(defer::detail::launch_fused_cuda(bad, make_layout({4}, 1), in, out, nullptr, nullptr, 0),
               std::invalid_argument);
}

}  // namespace
