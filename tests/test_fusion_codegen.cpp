// Fused element-wise kernels for CUDA: generated source, NVRTC compilation, the kernel argument, the
// in-memory and disk kernel caches, and the launcher. Everything but loading and launching runs
// without a GPU: NVRTC compiles programs over every op of the op table and every dtype, element-wise
// and with every fusable reduction, with flat, uniform and strided inputs and the vector path, to PTX
// and CUBIN for sm_90 and sm_80 here, on CI (the project's only check of generated CUDA source). The
// GPU cases compare fused kernels with the CPU and with the same ops launched one at a time, and skip
// without a GPU.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <defer/defer.hpp>

#include "cpu/fused.hpp"
#include "fusion/fused_program.hpp"
#include "cuda/fused/cuda_codegen.hpp"
#include "cuda/fused/cuda_fused_launch.hpp"
#include "cuda/fused/kernel_cache.hpp"
#include "cuda/fused/nvrtc_compiler.hpp"
#include "op_table.hpp"
#include "support/dtype_bytes.hpp"
#include "support/one_op.hpp"

namespace {

namespace fs = std::filesystem;
using defer::DType;
using defer::detail::compile_to_ptx;
using defer::detail::CompiledProgram;
using defer::detail::cuda_args_layout;
using defer::detail::cuda_kernel_name;
using defer::detail::cuda_vector4_type;
using defer::detail::FusedKernelCache;
using defer::detail::generate_cuda_source;
using defer::detail::kCudaFusedMaxArgBytes;
using defer::detail::pack_cuda_args;
using defer::kernels::ElementwiseOp;
using defer::kernels::FusedInstr;
using defer::kernels::FusedKind;
using defer::kernels::FusedLayout;
using defer::kernels::FusedProgram;
using defer::kernels::FusedReduction;
using defer::kernels::InputAccess;
using defer::kernels::kMaxDims;
using defer::kernels::kMaxFusedInputs;
using defer::kernels::kMaxFusedInstructions;
using defer::kernels::kMaxFusedOutputs;
using defer::kernels::kMaxFusedScalars;
using defer::kernels::ReduceOp;
using defer::kernels::structure_key;
using defer::testing::all_dtypes;
using defer::testing::decode;
using defer::testing::encode;
using defer::testing::kBinaryOps;
using defer::testing::kScalarOps;
using defer::testing::kUnaryOps;
using defer::testing::round_to;
using defer::testing::scalar_form;
using i64 = std::int64_t;
using u16 = std::uint16_t;
using Strides = std::array<i64, kMaxDims>;
using ArgBuffer = std::array<std::byte, kCudaFusedMaxArgBytes>;

// ---- the tables ----------------------------------------------------------------------------------

// Every row of the op table.
std::vector<ElementwiseOp> all_ops() {
  std::vector<ElementwiseOp> v;
  for (unsigned i = 0; i < defer::kernels::kElementwiseOpCount; ++i) v.push_back(static_cast<ElementwiseOp>(i));
  return v;
}

// The reductions a fused program may end in: the rows of the reduce table whose result has the
// data's dtype (sum, mean, max, min; argmax's index result is never fused).
std::vector<ReduceOp> fused_reduce_ops() {
  std::vector<ReduceOp> v;
  for (unsigned i = 0; i < defer::kernels::kReduceOpCount; ++i)
    if (defer::kernels::kReduceOps[i].result == defer::kernels::OpResult::same) v.push_back(static_cast<ReduceOp>(i));
  return v;
}

std::string dname(DType t) { return defer::dtype_name(t); }

// ---- building programs ---------------------------------------------------------------------------

// Builds a FusedProgram one SSA value at a time. Instructions are canonical: operand fields past the
// op's tensor count and the scalar field of an op without scalars stay 0. An op's result dtype
// (the dtype its value is rounded through) is f32 unless results() or typed() say otherwise.
class Builder {
 public:
  explicit Builder(int inputs, int scalars = 0, DType dtype = DType::f32)
      : Builder(std::vector<DType>(static_cast<std::size_t>(inputs), dtype), scalars) {}
  Builder(std::vector<DType> input_dtypes, int scalars) {
    p_.num_inputs = static_cast<u16>(input_dtypes.size());
    p_.num_scalars = static_cast<u16>(scalars);
    p_.input_dtypes = std::move(input_dtypes);
  }
  u16 load(int input) {
    FusedInstr in;
    in.kind = FusedKind::load;
    in.a = static_cast<u16>(input);
    return push(in);
  }
  // op of its tensor operands, reading scalars s, s + 1, ... (as many as its row takes).
  u16 apply(ElementwiseOp op, const std::vector<u16>& operands, int s = 0) {
    const defer::kernels::ElementwiseInfo& row = defer::kernels::info(op);
    EXPECT_EQ(static_cast<int>(operands.size()), row.tensors) << row.id;
    FusedInstr in;
    in.kind = FusedKind::op;
    in.op = op;
    in.dtype = result_;
    u16* fields[] = {&in.a, &in.b, &in.c};
    for (std::size_t k = 0; k < operands.size() && k < 3; ++k) *fields[k] = operands[k];
    if (row.scalars > 0) in.s = static_cast<u16>(s);
    return push(in);
  }
  u16 unary(ElementwiseOp op, u16 a) { return apply(op, {a}); }
  u16 binary(ElementwiseOp op, u16 a, u16 b) { return apply(op, {a, b}); }
  // The tensor-scalar form of a binary op (add -> add_scalar) reading scalar s.
  u16 scalar(ElementwiseOp binary_op, u16 a, int s) { return apply(scalar_form(binary_op), {a}, s); }
  u16 cast(u16 a, DType to) {
    FusedInstr in;
    in.kind = FusedKind::op;
    in.op = ElementwiseOp::to;
    in.dtype = to;
    in.a = a;
    return push(in);
  }
  // The result dtype of the ops added from now on.
  Builder& results(DType t) {
    result_ = t;
    return *this;
  }
  // Value v (an op) rounded through dtype t instead.
  u16 typed(u16 v, DType t) {
    p_.code[v].dtype = t;
    return v;
  }
  Builder& output(u16 v, DType dtype = DType::f32) {
    p_.outputs.push_back(v);
    p_.output_dtypes.push_back(dtype);
    return *this;
  }
  const FusedProgram& program() const { return p_; }

 private:
  u16 push(const FusedInstr& ins) {
    p_.code.push_back(ins);
    return static_cast<u16>(p_.code.size() - 1);
  }
  FusedProgram p_;
  DType result_ = DType::f32;
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
FusedLayout make_layout(const std::vector<i64>& shape, int inputs, const std::map<int, std::vector<i64>>& strides = {}) {
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

// `layout` with the reduce split of dim `dim` of `dims` (the layout's shape may be collapsed).
FusedLayout with_reduce(FusedLayout l, const std::vector<i64>& dims, int dim) {
  l.reduce = {1, dims[static_cast<std::size_t>(dim)], 1};
  for (int d = 0; d < dim; ++d) l.reduce.outer *= dims[static_cast<std::size_t>(d)];
  for (std::size_t d = static_cast<std::size_t>(dim) + 1; d < dims.size(); ++d) l.reduce.inner *= dims[d];
  return l;
}

// The program's first output, reduced (in that output's dtype).
FusedProgram reducing(FusedProgram p, ReduceOp op) {
  p.reduction = FusedReduction{op, p.outputs.front()};
  p.outputs = {p.outputs.front()};
  p.output_dtypes = {p.output_dtypes.front()};
  return p;
}

// v0 = load in0, then every unary op of the table applied in turn.
FusedProgram every_unary_chain() {
  Builder b(1);
  u16 v = b.load(0);
  for (const ElementwiseOp op : kUnaryOps) v = b.unary(op, v);
  return b.output(v).program();
}

// Every binary op, on two tensors and in its tensor-scalar form, summed into one output.
FusedProgram every_binary_program() {
  Builder b(2, static_cast<int>(kBinaryOps.size()));
  const u16 x = b.load(0), y = b.load(1);
  u16 acc = x;
  int s = 0;
  for (const ElementwiseOp op : kBinaryOps) {
    acc = b.binary(ElementwiseOp::add, acc, b.binary(op, x, y));
    acc = b.binary(ElementwiseOp::add, acc, b.scalar(op, y, s++));
  }
  return b.output(acc).program();
}

// One instruction per row of the op table (`to` once per dtype), every result folded into a
// running f32 sum; data operands read an f32 and an f16 input, conditions and masks a boolean one;
// scalars are given out in order and reused once the cap is reached. Each result has its row's
// dtype: boolean for comparisons, the target for casts, f32, f16 and bf16 in turn for the others.
// The sum is stored as every dtype of `outputs`.
FusedProgram every_op_program(const std::vector<DType>& outputs) {
  Builder b({DType::f32, DType::f16, DType::boolean}, kMaxFusedScalars);
  const u16 x = b.load(0), y = b.load(1), cond = b.load(2);
  u16 acc = x;
  int s = 0;
  const std::vector<DType> floating = defer::testing::floating_dtypes();
  std::size_t turn = 0;
  for (const ElementwiseOp op : all_ops()) {
    const defer::kernels::ElementwiseInfo& row = defer::kernels::info(op);
    if (op == ElementwiseOp::to) {
      for (const DType t : all_dtypes()) acc = b.binary(ElementwiseOp::add, acc, b.cast(y, t));
      continue;
    }
    std::vector<u16> operands;
    for (int k = 0; k < row.tensors; ++k)
      operands.push_back(defer::kernels::condition_operand(op) == k ? cond : (k % 2 == 0 ? x : y));
    if (s + row.scalars > kMaxFusedScalars) s = 0;
    const DType result = row.result == defer::kernels::OpResult::boolean ? DType::boolean : floating[turn++ % floating.size()];
    acc = b.binary(ElementwiseOp::add, acc, b.typed(b.apply(op, operands, s), result));
    s += row.scalars;
  }
  for (const DType t : outputs) b.output(acc, t);
  return b.program();
}

// A program over three inputs of one dtype (x, y and u, a broadcast scalar when the layout says so):
// a comparison, where, masked_fill and a cast through the dtype, and f32 arithmetic, stored as the
// dtype (output 0) and as boolean (output 1). Every value it computes is exact for integer and
// boolean data of small magnitude.
FusedProgram dtype_program(DType t) {
  Builder b({t, t, t}, 1);
  const u16 x = b.load(0), y = b.load(1), u = b.load(2);
  const u16 c = b.typed(b.binary(ElementwiseOp::lt, x, y), DType::boolean);
  const u16 w = b.typed(b.apply(ElementwiseOp::where, {c, x, u}), t);
  const u16 m = b.typed(b.apply(ElementwiseOp::masked_fill, {w, c}, 0), t);
  const u16 r = b.cast(m, t);
  const u16 f = b.binary(ElementwiseOp::add, b.cast(x, DType::f32), b.binary(ElementwiseOp::mul, y, u));
  return b.output(b.typed(b.binary(ElementwiseOp::add, r, f), t), t).output(c, DType::boolean).program();
}

// The program with every op's result in dtype t (a chain of t as the planner builds it: every value
// rounded through t, as the ops' own tensors would hold it).
FusedProgram with_results(FusedProgram p, DType t) {
  for (FusedInstr& ins : p.code)
    if (ins.kind == FusedKind::op && ins.op != ElementwiseOp::to) ins.dtype = t;
  return p;
}

// The typical shape of a fused chain: a bias, an activation, a scale, a residual (8 instructions).
FusedProgram typical_eight_op_program() {
  Builder b(3, 2);
  const u16 x = b.load(0), bias = b.load(1), residual = b.load(2);
  const u16 h = b.binary(ElementwiseOp::add, x, bias);
  const u16 g = b.unary(ElementwiseOp::gelu, h);
  const u16 s = b.scalar(ElementwiseOp::mul, g, 0);
  const u16 r = b.binary(ElementwiseOp::add, s, residual);
  const u16 c = b.scalar(ElementwiseOp::minimum, r, 1);
  return b.output(c).program();
}

// A chain of `length` instructions cycling through the unary, binary and scalar ops of the table.
FusedProgram long_chain(int length) {
  Builder b(2, 1);
  u16 v = b.load(0);
  const u16 w = b.load(1);
  for (int i = 2; i < length; ++i) {
    const auto u = static_cast<std::size_t>(i);
    switch (i % 4) {
      case 0: v = b.unary(kUnaryOps[u % kUnaryOps.size()], v); break;
      case 1: v = b.binary(kBinaryOps[u % kBinaryOps.size()], v, w); break;
      case 2: v = b.apply(kScalarOps[u % kScalarOps.size()], {v}, 0); break;
      default: v = b.unary(ElementwiseOp::tanh, v); break;
    }
  }
  return b.output(v).program();
}

// v = silu(x * y + bias) * s0, reduced: the typical fused prologue (bias broadcast over rows).
FusedProgram reduce_chain(ReduceOp op) {
  Builder b(3, 1);
  const u16 x = b.load(0), y = b.load(1), bias = b.load(2);
  const u16 v = b.scalar(
      ElementwiseOp::mul,
      b.unary(ElementwiseOp::silu, b.binary(ElementwiseOp::add, b.binary(ElementwiseOp::mul, x, y), bias)), 0);
  return reducing(b.output(v).program(), op);
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// ---- compiling -----------------------------------------------------------------------------------

// Compiled sources by (source, arch), shared by every test of this process: a program compiled by
// one test is not compiled again by another.
const CompiledProgram& compiled(const std::string& source, const std::string& name, int arch) {
  static std::mutex mutex;
  static std::map<std::pair<std::string, int>, std::shared_ptr<const CompiledProgram>> done;
  const auto key = std::make_pair(source, arch);
  {
    std::lock_guard lock(mutex);
    if (auto it = done.find(key); it != done.end()) return *it->second;
  }
  auto result = std::make_shared<const CompiledProgram>(compile_to_ptx(source, name, arch));  // throws on failure
  std::lock_guard lock(mutex);
  return *done.emplace(key, std::move(result)).first->second;
}

// What NVRTC must have produced for a generated kernel.
void check_compiled(const CompiledProgram& out, const std::string& name, int arch, const std::string& what) {
  EXPECT_TRUE(contains(out.ptx, ".entry " + name)) << what;
  EXPECT_TRUE(contains(out.ptx, ".target sm_" + std::to_string(arch))) << what;
  EXPECT_FALSE(out.cubin.empty()) << "NVRTC " << defer::detail::nvrtc_version() << " made no CUBIN for sm_" << arch << ": "
                                  << what;
  // The kernel never spills the argument or the SSA values to local memory.
  EXPECT_FALSE(contains(out.ptx, ".local")) << what;
  // and compiles without a warning.
  EXPECT_TRUE(out.log.find_first_not_of('\0') == std::string::npos) << what << ": " << out.log;
}

// Compiles the generated source for sm_<arch> and checks what NVRTC produced.
CompiledProgram compile_checked(const FusedProgram& p, const FusedLayout& l, int arch) {
  const std::string name = cuda_kernel_name(structure_key(p, l));
  const std::string source = generate_cuda_source(p, l, name);
  const CompiledProgram& out = compiled(source, name, arch);
  check_compiled(out, name, arch, "sm_" + std::to_string(arch));
  return out;
}

struct CompileJob {
  FusedProgram program;
  FusedLayout layout;
  int arch = 90;
  std::string what;
};

// Compiles every job, on as many threads as there are cores (NVRTC is thread safe; a kernel takes
// a fraction of a second), then checks each on the test's thread. A compile error fails the test
// with NVRTC's log and the numbered source.
void compile_all(const std::vector<CompileJob>& jobs) {
  struct Result {
    std::string name;
    const CompiledProgram* binary = nullptr;
    std::string error;
  };
  std::vector<Result> results(jobs.size());
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t j = next.fetch_add(1); j < jobs.size(); j = next.fetch_add(1)) {
      try {
        results[j].name = cuda_kernel_name(structure_key(jobs[j].program, jobs[j].layout));
        const std::string source = generate_cuda_source(jobs[j].program, jobs[j].layout, results[j].name);
        results[j].binary = &compiled(source, results[j].name, jobs[j].arch);
      } catch (const std::exception& e) {
        results[j].error = e.what();
      }
    }
  };
  const std::size_t threads =
      std::max<std::size_t>(1, std::min<std::size_t>(jobs.size(), std::max(1u, std::thread::hardware_concurrency())));
  std::vector<std::thread> pool;
  for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const std::string what = jobs[j].what + " (sm_" + std::to_string(jobs[j].arch) + ")";
    if (!results[j].error.empty()) {
      ADD_FAILURE() << what << ": " << results[j].error;
      continue;
    }
    check_compiled(*results[j].binary, results[j].name, jobs[j].arch, what);
  }
}

// ---- generated source compiles -----------------------------------------------------------------

TEST(FusionCodegen, EveryOpOfTheTableCompilesForSm90AndSm80) {
  std::vector<DType> with_vectors;  // every output dtype that has a vector type: the vector path
  for (const DType t : all_dtypes())
    if (cuda_vector4_type(t) != nullptr) with_vectors.push_back(t);
  const FusedProgram every_dtype = every_op_program(all_dtypes());
  const FusedProgram vector_path = every_op_program(with_vectors);
  const FusedLayout l = make_layout({1000}, 3);

  // Every row is in the program, and its function is called in the source.
  std::set<ElementwiseOp> used;
  std::set<DType> casts;
  for (const FusedInstr& ins : every_dtype.code) {
    if (ins.kind != FusedKind::op) continue;
    used.insert(ins.op);
    if (ins.op == ElementwiseOp::to) casts.insert(ins.dtype);
  }
  EXPECT_EQ(used.size(), defer::kernels::kElementwiseOpCount);
  EXPECT_EQ(casts.size(), all_dtypes().size());
  const std::string source = generate_cuda_source(every_dtype, l, "k");
  const std::string body = source.substr(source.find("defer_body("));  // past the embedded math
  for (const ElementwiseOp op : all_ops()) {
    if (op == ElementwiseOp::to) continue;
    EXPECT_TRUE(contains(body, std::string(defer::kernels::info(op).fn) + "(v")) << defer::kernels::info(op).id;
  }
  for (const DType t : all_dtypes()) {
    // every result dtype but f32 rounds (a cast to f32 is the value itself)
    EXPECT_EQ(contains(body, "defer_round_" + dname(t) + "("), t != DType::f32) << dname(t);
    EXPECT_TRUE(contains(source, "= defer_store_" + dname(t) + "(")) << dname(t);
  }
  EXPECT_TRUE(contains(body, "defer_round_f16(defer_")) << "an op's result rounded through f16";
  EXPECT_TRUE(contains(body, "defer_round_boolean(defer_lt(v0, v1))"));
  EXPECT_TRUE(contains(body, "= v1;")) << "the cast to f32 of an f16 value";
  int scalars = 0;  // every row's scalars, each its own while they fit under the cap
  for (const ElementwiseOp op : all_ops()) scalars += defer::kernels::info(op).scalars;
  for (int k = 0; k < std::min(scalars, kMaxFusedScalars); ++k)
    EXPECT_TRUE(contains(source, "a.s[" + std::to_string(k) + "]")) << k;
  EXPECT_TRUE(contains(source, "  float s[" + std::to_string(kMaxFusedScalars) + "];"));
  EXPECT_FALSE(contains(source, "a.flags & 1")) << "an i64 output has no vector path";
  const std::string vector_source = generate_cuda_source(vector_path, l, "k");
  EXPECT_TRUE(contains(vector_source, "a.flags & 1"));
  for (const DType t : with_vectors)
    EXPECT_TRUE(contains(vector_source, std::string("static_cast<") + cuda_vector4_type(t) + "*>(a.out[")) << dname(t);

  std::vector<CompileJob> jobs;
  for (const int arch : {90, 80}) {
    jobs.push_back({every_dtype, l, arch, "every op, stored as every dtype"});
    jobs.push_back({vector_path, l, arch, "every op, the vector path"});
    jobs.push_back({every_dtype, make_layout({8, 125}, 3, {{1, {0, 1}}, {2, {0, 0}}}), arch,
                    "every op, strided and uniform inputs"});
  }
  compile_all(jobs);
}

TEST(FusionCodegen, EveryBinaryOpAndScalarOpCompiles) {
  const FusedProgram p = every_binary_program();
  compile_checked(p, make_layout({64, 33}, 2), 90);
  compile_checked(p, make_layout({64, 33}, 2, {{1, {0, 1}}}), 80);
}

// Every dtype as the inputs' and outputs' dtype: flat inputs with a uniform one (the vector path
// where the dtype has a vector type), and a strided one, for sm_90 and sm_80.
TEST(FusionCodegen, EveryDTypeCompilesElementWise) {
  const FusedLayout flat = make_layout({64, 33}, 3, {{2, {0, 0}}});
  const FusedLayout strided = make_layout({64, 33}, 3, {{1, {0, 1}}, {2, {0, 0}}});
  ASSERT_EQ(defer::kernels::input_access(flat, 0), InputAccess::flat);
  ASSERT_EQ(defer::kernels::input_access(flat, 2), InputAccess::uniform);
  ASSERT_EQ(defer::kernels::input_access(strided, 1), InputAccess::strided);
  std::vector<CompileJob> jobs;
  for (const DType t : all_dtypes()) {
    SCOPED_TRACE(dname(t));
    const FusedProgram p = dtype_program(t);
    const std::string source = generate_cuda_source(p, flat, "k");
    const std::string storage = "defer_" + dname(t) + "_t";
    EXPECT_TRUE(contains(source, "defer_load_" + dname(t) + "(static_cast<const " + storage + "*>(a.in[0])[k])"));
    EXPECT_TRUE(contains(source, "static_cast<" + storage + "*>(a.out[0])[e] = defer_store_" + dname(t) + "(v)"));
    EXPECT_EQ(contains(source, "= defer_round_" + dname(t) + "("), t != DType::f32);
    EXPECT_TRUE(contains(source, "= defer_round_boolean(defer_lt(v0, v1));"));
    if (const char* vec = cuda_vector4_type(t)) {
      EXPECT_TRUE(contains(source, "const " + std::string(vec) + " p0 = static_cast<const " + vec + "*>(a.in[0])[q];"));
      EXPECT_TRUE(contains(source, "static_cast<" + std::string(vec) + "*>(a.out[0])[q] = r0;"));
      EXPECT_TRUE(contains(source, "static_cast<uchar4*>(a.out[1])[q] = r1;"));  // the boolean output
      EXPECT_TRUE(contains(source, "defer_load_" + dname(t) + "(p1.w)"));
    } else {
      EXPECT_FALSE(contains(source, "a.flags & 1")) << "no vector type: no vector path";
    }
    const std::string strided_source = generate_cuda_source(p, strided, "k");
    EXPECT_TRUE(contains(strided_source, "defer_strided<unsigned int>"));
    EXPECT_FALSE(contains(strided_source, "a.flags & 1"));
    for (const int arch : {90, 80}) {
      jobs.push_back({p, flat, arch, dname(t) + ", flat and uniform inputs"});
      jobs.push_back({p, strided, arch, dname(t) + ", a strided input"});
    }
  }
  compile_all(jobs);
}

// Every dtype x every fusable reduction: contiguous rows (vector loads where the dtype has a vector
// type) and column tiles over a strided input, for sm_90; for sm_80 every dtype with both row
// shapes, the reductions taking turns (a reduce kernel takes about half a second of NVRTC, and the
// op changes only its accumulator's three helper functions).
TEST(FusionCodegen, EveryDTypeCompilesWithEveryReduction) {
  const std::vector<i64> rows_dims = {64, 256}, columns_dims = {300, 64};
  const FusedLayout rows = with_reduce(make_layout(rows_dims, 3, {{2, {0, 0}}}), rows_dims, 1);
  const FusedLayout columns = with_reduce(make_layout(columns_dims, 3, {{1, {0, 1}}, {2, {0, 0}}}), columns_dims, 0);
  std::vector<CompileJob> jobs;
  std::size_t turn = 0;
  for (const DType t : all_dtypes()) {
    for (const ReduceOp op : fused_reduce_ops()) {
      const std::string what = std::string(defer::kernels::name(op)) + " of " + dname(t);
      SCOPED_TRACE(what);
      const FusedProgram p = reducing(dtype_program(t), op);
      const std::string rows_source = generate_cuda_source(p, rows, "k");
      EXPECT_TRUE(contains(rows_source, "defer_rows<long long>(a, u)"));
      EXPECT_FALSE(contains(rows_source, "defer_columns"));
      EXPECT_TRUE(contains(rows_source, "defer_out0(a, r, defer_finish(acc, a.len))"));
      EXPECT_TRUE(contains(rows_source, "static_cast<defer_" + dname(t) + "_t*>(a.out[0])[e] = defer_store_" + dname(t)));
      const bool max_or_min = op == ReduceOp::max || op == ReduceOp::min;
      EXPECT_TRUE(contains(rows_source, max_or_min ? "typedef float Acc" : "typedef double Acc"));
      if (const char* vec = cuda_vector4_type(t)) {
        EXPECT_TRUE(contains(rows_source, "static_cast<const " + std::string(vec) + "*>(a.in[0])[base4 + q]"));
      } else {
        EXPECT_FALSE(contains(rows_source, "base4"));
      }
      const std::string columns_source = generate_cuda_source(p, columns, "k");
      EXPECT_TRUE(contains(columns_source, "defer_columns<unsigned int>(a, u)"));
      EXPECT_TRUE(contains(columns_source, "defer_rows<long long>(a, u)"));
      EXPECT_FALSE(contains(columns_source, "base4"));
      jobs.push_back({p, rows, 90, what + ", contiguous rows"});
      jobs.push_back({p, columns, 90, what + ", column tiles over a strided input"});
      if (op == fused_reduce_ops()[turn % fused_reduce_ops().size()]) {
        jobs.push_back({p, rows, 80, what + ", contiguous rows"});
        jobs.push_back({p, columns, 80, what + ", column tiles over a strided input"});
      }
    }
    ++turn;
  }
  compile_all(jobs);
  EXPECT_EQ(jobs.size(), all_dtypes().size() * (2 * fused_reduce_ops().size() + 2));
}

// One kernel that loads and stores every dtype at once: each flat input and output moves as its
// own vector type (an i64 input only when it is uniform: it has none), or, with a flat i64 input,
// nothing does.
TEST(FusionCodegen, MixedDTypesInOneKernelCompile) {
  const std::vector<DType> dtypes = all_dtypes();
  Builder b(dtypes, 1);
  std::vector<u16> loads;
  for (std::size_t i = 0; i < dtypes.size(); ++i) loads.push_back(b.load(static_cast<int>(i)));
  u16 acc = loads[0];
  for (std::size_t i = 1; i < loads.size(); ++i) acc = b.binary(ElementwiseOp::add, acc, loads[i]);
  acc = b.scalar(ElementwiseOp::mul, acc, 0);
  std::vector<DType> vector_outputs;
  for (const DType t : dtypes)
    if (cuda_vector4_type(t) != nullptr) vector_outputs.push_back(t);
  Builder with_vectors = b;
  for (const DType t : vector_outputs) with_vectors.output(acc, t);
  for (const DType t : dtypes) b.output(acc, t);

  std::map<int, std::vector<i64>> i64_uniform;
  for (std::size_t i = 0; i < dtypes.size(); ++i)
    if (cuda_vector4_type(dtypes[i]) == nullptr) i64_uniform[static_cast<int>(i)] = {0, 0};
  const int n = static_cast<int>(dtypes.size());
  const FusedLayout all_flat = make_layout({16, 64}, n);
  const FusedLayout vectors = make_layout({16, 64}, n, i64_uniform);
  const std::string vector_source = generate_cuda_source(with_vectors.program(), vectors, "k");
  EXPECT_TRUE(contains(vector_source, "a.flags & 1"));
  for (std::size_t i = 0; i < dtypes.size(); ++i) {
    if (const char* vec = cuda_vector4_type(dtypes[i])) {
      const std::string in = "static_cast<const " + std::string(vec) + "*>(a.in[" + std::to_string(i) + "])";
      EXPECT_TRUE(contains(vector_source, in)) << dname(dtypes[i]);
    }
  }
  EXPECT_FALSE(contains(generate_cuda_source(with_vectors.program(), all_flat, "k"), "a.flags & 1"));
  EXPECT_FALSE(contains(generate_cuda_source(b.program(), vectors, "k"), "a.flags & 1"));
  std::vector<CompileJob> jobs;
  for (const int arch : {90, 80}) {
    jobs.push_back({with_vectors.program(), vectors, arch, "every dtype in, every vector dtype out"});
    jobs.push_back({b.program(), all_flat, arch, "every dtype in and out"});
  }
  jobs.push_back({b.program(), make_layout({4, 4, 64}, n, {{1, {0, 64, 1}}, {4, {1, 4, 16}}}), 90,
                  "every dtype in and out, strided"});
  compile_all(jobs);
}

TEST(FusionCodegen, BroadcastingLayoutsCompile) {
  Builder b(4, 1);
  const u16 x = b.load(0), row = b.load(1), col = b.load(2), one = b.load(3);
  const u16 v = b.binary(ElementwiseOp::mul, b.binary(ElementwiseOp::add, x, row), b.binary(ElementwiseOp::sub, col, one));
  const FusedProgram p = b.output(b.scalar(ElementwiseOp::div, v, 0)).program();

  // [7, 5]: a row vector, a column vector and a single element broadcast over the output.
  const FusedLayout broadcast = make_layout({7, 5}, 4, {{1, {0, 1}}, {2, {1, 0}}, {3, {0, 0}}});
  EXPECT_EQ(defer::kernels::input_access(broadcast, 0), InputAccess::flat);
  EXPECT_EQ(defer::kernels::input_access(broadcast, 1), InputAccess::strided);
  EXPECT_EQ(defer::kernels::input_access(broadcast, 2), InputAccess::strided);
  EXPECT_EQ(defer::kernels::input_access(broadcast, 3), InputAccess::uniform);
  const std::string source = generate_cuda_source(p, broadcast, "k");
  EXPECT_TRUE(contains(source, "defer_strided<unsigned int>"));
  EXPECT_TRUE(contains(source, "defer_strided<long long>"));

  // A transposed input, a broadcast middle dim, and only uniform/flat inputs (the float4 path).
  const FusedLayout vec = make_layout({3, 4, 5}, 4, {{3, {0, 0, 0}}});
  EXPECT_TRUE(contains(generate_cuda_source(p, vec, "k"), "float4"));

  // Every dimension strided, and a 0-d layout.
  const std::vector<i64> eight = {2, 3, 2, 3, 2, 3, 2, 3};
  const std::vector<i64> padded = {0, 1, 0, 3, 6, 18, 36, 108};
  // Only uniform inputs (every element reads element 0): the vector path stores vectors and loads
  // none, element-wise and in a reduction's rows.
  const FusedLayout all_uniform = make_layout({8, 64}, 4, {{0, {0, 0}}, {1, {0, 0}}, {2, {0, 0}}, {3, {0, 0}}});
  const std::string uniform_source = generate_cuda_source(p, all_uniform, "k");
  EXPECT_TRUE(contains(uniform_source, "a.flags & 1"));
  EXPECT_FALSE(contains(uniform_source, "static_cast<const float4*>"));
  const FusedProgram summed = reducing(p, ReduceOp::sum);
  const FusedLayout uniform_rows = with_reduce(all_uniform, {8, 64}, 1);
  // vector rows that load no flat input declare no base address (NVRTC would warn of it unused)
  EXPECT_FALSE(contains(generate_cuda_source(summed, uniform_rows, "k"), "base4"));
  compile_all({{p, all_uniform, 90, "only uniform inputs"},
               {summed, uniform_rows, 90, "a reduction of only uniform inputs"},
               {p, broadcast, 90, "row, column and scalar broadcasts"},
               {p, make_layout({3, 4, 5}, 4, {{0, {1, 3, 12}}, {1, {20, 0, 1}}}), 90, "transposed, broadcast middle"},
               {p, vec, 90, "flat and uniform"},
               {p, make_layout(eight, 4, {{0, padded}, {1, padded}, {2, padded}}), 90, "eight strided dims"},
               {p, make_layout({}, 4), 80, "0-d"}});
}

TEST(FusionCodegen, MultipleOutputsCompile) {
  Builder b(2, 1);
  const u16 x = b.load(0), y = b.load(1);
  const u16 sum = b.binary(ElementwiseOp::add, x, y);
  const u16 act = b.unary(ElementwiseOp::silu, sum);
  const u16 scaled = b.scalar(ElementwiseOp::mul, act, 0);
  b.output(sum).output(act).output(scaled).output(x);
  const FusedLayout l = make_layout({1 << 20}, 2);
  const std::string source = generate_cuda_source(b.program(), l, "k");
  for (int k = 0; k < 4; ++k) {
    const std::string ks = std::to_string(k);
    EXPECT_TRUE(contains(source, "defer_out" + ks + "(a, i, y[" + ks + "]);"));
    EXPECT_TRUE(contains(source, "static_cast<float4*>(a.out[" + ks + "])[q] = r" + ks + ";"));
  }
  compile_all({{b.program(), l, 90, "four outputs"},
               {b.program(), make_layout({8, 128}, 2, {{1, {0, 1}}}), 80, "four outputs, strided"}});
}

TEST(FusionCodegen, FortyInstructionChainCompiles) {
  const FusedProgram p = long_chain(40);
  ASSERT_EQ(p.code.size(), 40u);
  compile_all({{p, make_layout({4096}, 2), 90, "40 instructions"},
               {p, make_layout({64, 64}, 2, {{1, {1, 64}}}), 90, "40 instructions, transposed"}});
}

TEST(FusionCodegen, SourceIsSelfContainedAndHasNoValues) {
  const FusedProgram p = typical_eight_op_program();
  const std::string source = generate_cuda_source(p, make_layout({98765}, 3), "my_kernel");
  // The math of kernels/elementwise_math.h, verbatim; its only #includes are for the host compilers
  // (#if !defined(__CUDACC_RTC__)), and nothing else includes anything.
  const std::string math = defer::detail::kElementwiseMathSource;
  const std::size_t at = source.find(math);
  ASSERT_NE(at, std::string::npos);
  EXPECT_TRUE(contains(math, "#if defined(__CUDACC_RTC__)"));
  std::string rest = source;
  rest.erase(at, math.size());
  EXPECT_FALSE(contains(rest, "#include")) << rest;
  EXPECT_TRUE(contains(source, "extern \"C\" __global__ void __launch_bounds__(256) my_kernel(const Args a)"));
  EXPECT_FALSE(contains(source, "98765"));  // sizes are arguments
  EXPECT_TRUE(contains(source, "a.s[0]"));  // scalars are arguments
  EXPECT_TRUE(contains(source, "a.s[1]"));
  compile_checked(p, make_layout({98765}, 3), 90);  // with no include path
}

TEST(FusionCodegen, ReductionsCompileForSm90) {
  std::vector<CompileJob> jobs;
  for (const ReduceOp op : fused_reduce_ops()) {
    SCOPED_TRACE(defer::kernels::name(op));
    const std::string what = defer::kernels::name(op);
    const FusedProgram p = reduce_chain(op);
    // rows, contiguous (inner == 1): flat inputs, a uniform one: float4 loads
    const FusedLayout rows = with_reduce(make_layout({64, 256}, 3, {{2, {0, 0}}}), {64, 256}, 1);
    const std::string rows_source = generate_cuda_source(p, rows, "k");
    EXPECT_TRUE(contains(rows_source, "defer_rows<long long>(a, u)"));
    EXPECT_TRUE(contains(rows_source, "static_cast<const float4*>"));
    EXPECT_FALSE(contains(rows_source, "defer_columns"));
    const bool max_or_min = op == ReduceOp::max || op == ReduceOp::min;
    EXPECT_TRUE(contains(rows_source, max_or_min ? "typedef float Acc" : "typedef double Acc"));
    // rows with a broadcast bias (strided input): offsets from the flat index, 32- or 64-bit
    const FusedLayout bias_rows = with_reduce(make_layout({64, 256}, 3, {{2, {0, 1}}}), {64, 256}, 1);
    EXPECT_TRUE(contains(generate_cuda_source(p, bias_rows, "k"), "defer_rows<unsigned int>(a, u)"));
    // reduced over the first or a middle dim: column tiles and strided rows, both in one source
    const FusedLayout columns = with_reduce(make_layout({300, 64}, 3, {{2, {0, 1}}}), {300, 64}, 0);
    const std::string columns_source = generate_cuda_source(p, columns, "k");
    EXPECT_TRUE(contains(columns_source, "defer_columns<unsigned int>(a, u)"));
    EXPECT_TRUE(contains(columns_source, "defer_rows<long long>(a, u)"));
    EXPECT_FALSE(contains(columns_source, "static_cast<const float4*>"));
    const FusedLayout middle = with_reduce(make_layout({4, 30, 5}, 3, {{1, {150, 1, 30}}}), {4, 30, 5}, 1);
    jobs.push_back({p, rows, 90, what + ", rows"});
    jobs.push_back({p, bias_rows, 90, what + ", rows with a strided bias"});
    jobs.push_back({p, columns, 90, what + ", columns"});
    jobs.push_back({p, middle, 90, what + ", a middle dim"});
  }
  // the reduced value is a plain load, and a 40-instruction chain
  Builder b(1);
  const FusedProgram load_only = reducing(b.output(b.load(0)).program(), ReduceOp::sum);
  jobs.push_back({load_only, with_reduce(make_layout({1000}, 1), {1000}, 0), 90, "a plain load"});
  jobs.push_back({reducing(long_chain(40), ReduceOp::mean),
                  with_reduce(make_layout({64, 64}, 2, {{1, {1, 64}}}), {64, 64}, 0), 90, "a 40-instruction chain"});
  compile_all(jobs);
}

// ---- the structure key -------------------------------------------------------------------------

TEST(FusionKey, IgnoresSizesAndScalarValuesButNotStructure) {
  const FusedProgram p = typical_eight_op_program();
  // Sizes: only how each input is read matters.
  EXPECT_EQ(structure_key(p, make_layout({10}, 3)), structure_key(p, make_layout({1 << 24}, 3)));
  EXPECT_EQ(structure_key(p, make_layout({10}, 3)), structure_key(p, make_layout({4, 5, 6}, 3)));
  const FusedLayout bias_a = make_layout({8, 16}, 3, {{1, {0, 1}}});
  const FusedLayout bias_b = make_layout({300, 700}, 3, {{1, {0, 1}}});
  EXPECT_EQ(structure_key(p, bias_a), structure_key(p, bias_b));
  EXPECT_EQ(generate_cuda_source(p, bias_a, "k"), generate_cuda_source(p, bias_b, "k"));
  // Scalar values never reach the key or the source; they are packed per launch.
  alignas(16) ArgBuffer buf1{}, buf2{};
  const void* in[3] = {nullptr, nullptr, nullptr};
  void* out[1] = {nullptr};
  const float s1[2] = {1.f, 2.f}, s2[2] = {-7.f, 1e30f};
  pack_cuda_args(p, bias_a, in, out, s1, buf1);
  pack_cuda_args(p, bias_a, in, out, s2, buf2);
  EXPECT_NE(buf1, buf2);

  // Structure: the access pattern, ndim when strided, ops, operands, scalars read, outputs, counts.
  const std::string key = structure_key(p, make_layout({10}, 3));
  EXPECT_NE(structure_key(p, make_layout({8, 16}, 3)), structure_key(p, bias_a));
  EXPECT_NE(structure_key(p, bias_a), structure_key(p, make_layout({2, 8, 16}, 3, {{1, {0, 0, 1}}})));
  EXPECT_NE(key, structure_key(p, make_layout({10}, 3, {{2, {0}}})));
  FusedProgram q = p;
  ASSERT_EQ(q.code[4].op, ElementwiseOp::gelu);
  q.code[4].op = ElementwiseOp::gelu_tanh;
  EXPECT_NE(key, structure_key(q, make_layout({10}, 3)));
  q = p;
  q.outputs.push_back(3);
  q.output_dtypes.push_back(DType::f32);
  EXPECT_NE(key, structure_key(q, make_layout({10}, 3)));
  q = p;
  ASSERT_EQ(q.code[5].op, ElementwiseOp::mul_scalar);
  q.code[5].s = 1;  // another scalar
  EXPECT_NE(key, structure_key(q, make_layout({10}, 3)));
  q = p;
  ASSERT_EQ(q.code[6].op, ElementwiseOp::add);
  q.code[6].b = 1;  // another operand
  EXPECT_NE(key, structure_key(q, make_layout({10}, 3)));
  q = p;
  q.num_scalars = 3;
  EXPECT_NE(key, structure_key(q, make_layout({10}, 3)));
}

// Every dtype of every input, of every output, of every cast and of every op's result is part of the
// key, and of the source: the key of each variant differs from every other's, and so does its source.
TEST(FusionKey, DTypesArePartOfTheKey) {
  const FusedLayout l = make_layout({8, 16}, 3, {{1, {0, 1}}, {2, {0, 0}}});
  std::vector<std::pair<std::string, FusedProgram>> variants = {{"all f32", typical_eight_op_program()}};
  for (const DType t : all_dtypes()) {
    Builder b(3, 2);
    b.output(b.binary(ElementwiseOp::add, b.cast(b.load(0), t), b.load(1)));
    variants.emplace_back("cast to " + dname(t), b.program());
    if (t == DType::f32) continue;
    for (std::size_t i = 0; i < 3; ++i) {
      FusedProgram p = typical_eight_op_program();
      p.input_dtypes[i] = t;
      variants.emplace_back("input " + std::to_string(i) + " " + dname(t), p);
    }
    FusedProgram p = typical_eight_op_program();
    p.output_dtypes[0] = t;
    variants.emplace_back("output " + dname(t), p);
    p = typical_eight_op_program();
    p.code[4].dtype = t;  // gelu's result rounded through t
    variants.emplace_back("gelu's result " + dname(t), p);
  }
  std::map<std::string, std::string> key_seen, source_seen;
  for (const auto& [what, p] : variants) {
    const std::string key = structure_key(p, l);
    const std::string source = generate_cuda_source(p, l, "k");
    const auto [k, key_new] = key_seen.emplace(key, what);
    EXPECT_TRUE(key_new) << what << " and " << k->second << " have one key";
    const auto [s, source_new] = source_seen.emplace(source, what);
    EXPECT_TRUE(source_new) << what << " and " << s->second << " have one source";
  }
  EXPECT_EQ(key_seen.size(), 1 + 6 * (all_dtypes().size() - 1) + 1);
}

// The property the cache relies on: equal keys always mean equal source, and (for canonical
// instructions, whose unused operand fields are 0) different keys mean different source, so the
// key neither merges two kernels nor splits one. Random programs over every dtype, casts, the ops
// of the table and reductions, on random layouts that often share a structure.
TEST(FusionKey, EqualKeysMeanEqualSourceAndOtherKeysOtherSource) {
  std::mt19937 rng(1234);
  const std::vector<DType> dtypes = all_dtypes();
  const std::vector<ElementwiseOp> ops = all_ops();
  const std::vector<ReduceOp> reduce_ops = fused_reduce_ops();
  auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  std::map<std::string, std::string> source_of, key_of;
  int shared = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    const int inputs = 1 + static_cast<int>(pick(3));
    std::vector<DType> input_dtypes;
    for (int i = 0; i < inputs; ++i) input_dtypes.push_back(pick(4) == 0 ? dtypes[pick(dtypes.size())] : DType::f32);
    Builder b(input_dtypes, 2);
    std::vector<u16> values;
    for (int i = 0; i < inputs; ++i) values.push_back(b.load(i));
    const int extra = static_cast<int>(pick(3));
    for (int i = 0; i < extra; ++i) {
      const u16 a = values[pick(values.size())];
      switch (pick(4)) {
        case 0: values.push_back(b.unary(kUnaryOps[pick(2)], a)); break;
        case 1: values.push_back(b.scalar(ElementwiseOp::add, a, static_cast<int>(pick(2)))); break;
        case 2: values.push_back(b.cast(a, pick(2) ? DType::f16 : DType::i32)); break;
        default: {
          const ElementwiseOp op = ops[pick(ops.size())];
          const auto& row = defer::kernels::info(op);
          if (op == ElementwiseOp::to) {
            values.push_back(b.cast(a, dtypes[pick(dtypes.size())]));
            break;
          }
          std::vector<u16> operands;
          for (int k = 0; k < row.tensors; ++k) operands.push_back(values[pick(values.size())]);
          values.push_back(b.apply(op, operands, row.scalars == 2 ? 0 : static_cast<int>(pick(2))));
        }
      }
      if (values.back() >= inputs && b.program().code[values.back()].op != ElementwiseOp::to && pick(4) == 0)
        b.typed(values.back(), dtypes[pick(dtypes.size())]);
    }
    b.output(values.back(), pick(3) == 0 ? dtypes[pick(dtypes.size())] : DType::f32);
    std::vector<i64> shape;
    const int ndim = static_cast<int>(pick(4));
    for (int d = 0; d < ndim; ++d) shape.push_back(1 + static_cast<i64>(pick(3)));
    std::map<int, std::vector<i64>> strides;
    for (int i = 0; i < inputs; ++i) {
      if (pick(2)) continue;
      std::vector<i64> s;
      for (int d = 0; d < ndim; ++d) s.push_back(static_cast<i64>(pick(4)));
      strides[i] = s;
    }
    FusedLayout l = make_layout(shape, inputs, strides);
    FusedProgram p = b.program();
    if (ndim > 0 && pick(3) == 0) {
      p = reducing(p, reduce_ops[pick(reduce_ops.size())]);
      l = with_reduce(l, shape, static_cast<int>(pick(static_cast<std::size_t>(ndim))));
    }
    const std::string key = structure_key(p, l);
    const std::string source = generate_cuda_source(p, l, "k");
    auto [it, inserted] = source_of.emplace(key, source);
    if (!inserted) {
      ++shared;
      ASSERT_EQ(it->second, source) << "two layouts with one key generate different source: " << key;
    }
    auto [other, new_source] = key_of.emplace(source, key);
    if (!new_source) {
      ASSERT_EQ(other->second, key) << "one source under two keys";
    }
  }
  EXPECT_GT(shared, 500);
  EXPECT_GT(source_of.size(), 500u);
}

TEST(FusionKey, ReductionsKeyOpValueAndRowShapeButNotSizes) {
  const FusedProgram sum = reduce_chain(ReduceOp::sum);
  auto key = [](const FusedProgram& p, const std::vector<i64>& dims, int dim) {
    return structure_key(p, with_reduce(make_layout(dims, 3, {{2, {0, 0}}}), dims, dim));
  };
  const std::string rows = key(sum, {8, 100}, 1), columns = key(sum, {100, 8}, 0);
  EXPECT_EQ(rows, key(sum, {3000, 7}, 1));
  EXPECT_EQ(rows, key(sum, {1, 5}, 1));
  EXPECT_EQ(columns, key(sum, {7, 3000}, 0));
  EXPECT_EQ(columns, key(sum, {5, 2}, 0));
  EXPECT_EQ(generate_cuda_source(sum, with_reduce(make_layout({8, 100}, 3, {{2, {0, 0}}}), {8, 100}, 1), "k"),
            generate_cuda_source(sum, with_reduce(make_layout({3000, 7}, 3, {{2, {0, 0}}}), {3000, 7}, 1), "k"));
  std::vector<std::string> keys = {rows, columns};
  for (const ReduceOp op : fused_reduce_ops())
    if (op != ReduceOp::sum) keys.push_back(key(reduce_chain(op), {8, 100}, 1));
  FusedProgram element_wise = sum;
  element_wise.reduction.reset();
  keys.push_back(structure_key(element_wise, make_layout({8, 100}, 3, {{2, {0, 0}}})));
  FusedProgram other_value = sum;
  other_value.reduction->value = 4;
  other_value.outputs = {4};
  keys.push_back(key(other_value, {8, 100}, 1));
  FusedProgram other_dtype = sum;
  other_dtype.output_dtypes = {DType::bf16};
  keys.push_back(key(other_dtype, {8, 100}, 1));
  std::sort(keys.begin(), keys.end());
  EXPECT_EQ(std::unique(keys.begin(), keys.end()), keys.end());
  EXPECT_EQ(keys.size(), 3 + fused_reduce_ops().size() + 1);
}

// ---- the kernel argument -----------------------------------------------------------------------

i64 word(const ArgBuffer& buf, std::size_t index) {
  i64 v = 0;
  std::memcpy(&v, buf.data() + 8 * index, 8);
  return v;
}

TEST(FusionArgs, PackedBytesMatchTheGeneratedStruct) {
  const FusedProgram p = typical_eight_op_program();
  // in1 strided (a row vector), in2 uniform: Args = in[3], out[1], n, flags, shape[2], stride[1][2], s[2].
  const FusedLayout l = make_layout({6, 10}, 3, {{1, {0, 1}}, {2, {0, 0}}});
  const defer::detail::CudaArgsLayout shape = cuda_args_layout(p, l);
  EXPECT_EQ(shape.inputs, 3);
  EXPECT_EQ(shape.outputs, 1);
  EXPECT_EQ(shape.scalars, 2);
  EXPECT_EQ(shape.ndim, 2);
  EXPECT_EQ(shape.strided, 1);
  EXPECT_FALSE(shape.reduce);
  const std::size_t size = shape.bytes();
  EXPECT_EQ(size, 8u * (3 + 1 + 2 + 2 + 2) + 4 * 2);
  EXPECT_TRUE(contains(generate_cuda_source(p, l, "k"), "static_assert(sizeof(Args) == " + std::to_string(size)));

  alignas(16) ArgBuffer buf{};
  alignas(16) float storage[64];
  const void* in[3] = {storage, storage + 4, storage + 8};
  void* out[1] = {storage + 16};
  const float scalars[2] = {0.5f, -3.f};
  const auto info = pack_cuda_args(p, l, in, out, scalars, buf);
  EXPECT_EQ(info.bytes, size);
  EXPECT_FALSE(info.vec4);  // a strided input
  EXPECT_TRUE(info.index32);
  EXPECT_EQ(info.work_items, 60);
  EXPECT_EQ(info.blocks, 1);
  EXPECT_EQ(word(buf, 0), reinterpret_cast<i64>(in[0]));
  EXPECT_EQ(word(buf, 1), reinterpret_cast<i64>(in[1]));
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
  EXPECT_EQ(cuda_args_layout(p, flat).bytes(), 8u * (3 + 1 + 2) + 8);
  EXPECT_TRUE(contains(generate_cuda_source(p, flat, "k"), "static_assert(sizeof(Args) == " + std::to_string(8 * 6 + 8)));
  const void* odd_uniform[3] = {storage, storage + 4, storage + 9};
  auto v = pack_cuda_args(p, flat, odd_uniform, out, scalars, buf);
  EXPECT_TRUE(v.vec4);
  EXPECT_FALSE(v.index32);  // no strided input
  EXPECT_EQ(v.work_items, 15);
  EXPECT_EQ(word(buf, 5), 1);
  std::memcpy(s, buf.data() + 48, sizeof s);
  EXPECT_EQ(s[1], -3.f);
  const void* misaligned[3] = {storage + 1, storage + 4, storage + 8};
  v = pack_cuda_args(p, flat, misaligned, out, scalars, buf);
  EXPECT_FALSE(v.vec4);
  EXPECT_EQ(v.work_items, 60);
  EXPECT_EQ(word(buf, 5), 0);

  // 64-bit offsets when a stride is negative or an offset passes 2^31 - 1.
  EXPECT_FALSE(pack_cuda_args(p, make_layout({6, 10}, 3, {{1, {0, -1}}}), in, out, scalars, buf).index32);
  EXPECT_EQ(word(buf, 5), 0);
  EXPECT_FALSE(pack_cuda_args(p, make_layout({3, 10}, 3, {{1, {i64{1} << 30, 1}}}), in, out, scalars, buf).index32);
  EXPECT_TRUE(pack_cuda_args(p, make_layout({2, 10}, 3, {{1, {i64{1} << 30, 1}}}), in, out, scalars, buf).index32);
  // ... or when the domain itself has more than 2^31 - 1 elements.
  EXPECT_FALSE(
      pack_cuda_args(p, make_layout({i64{1} << 16, i64{1} << 16}, 3, {{1, {0, 1}}}), in, out, scalars, buf).index32);
}

// The vector path moves four elements of each flat input's and output's own dtype: it runs when
// every one of those pointers is aligned to four of its elements (16 bytes of f32 or i32, 8 of f16
// or bf16, 4 of boolean) and never for i64 data (no vector type); uniform and unused inputs do not
// matter.
TEST(FusionArgs, VectorPathNeedsFourElementsOfAlignmentPerDType) {
  alignas(64) static std::byte storage[8192];
  alignas(16) ArgBuffer buf{};
  for (const DType t : all_dtypes()) {
    SCOPED_TRACE(dname(t));
    const std::size_t e = defer::dtype_size(t);
    // in0 flat, in1 uniform, in2 flat but unused; Args = in[3], out[1], n, flags
    Builder b({t, t, t}, 0);
    b.output(b.binary(ElementwiseOp::add, b.load(0), b.load(1)), t);
    const FusedProgram& p = b.program();
    const FusedLayout l = make_layout({6, 10}, 3, {{1, {0, 0}}});
    const bool has_vector = cuda_vector4_type(t) != nullptr;
    EXPECT_EQ(contains(generate_cuda_source(p, l, "k"), "a.flags & 1"), has_vector);
    for (std::size_t shift = 0; shift < 9; ++shift) {
      const void* in[3] = {storage + shift * e, storage + 1024 + e, storage + 2048 + e};
      void* out[1] = {storage + 4096};
      const auto info = pack_cuda_args(p, l, in, out, nullptr, buf);
      const bool want = has_vector && shift % 4 == 0;
      EXPECT_EQ(info.vec4, want) << "input shifted by " << shift << " elements";
      EXPECT_EQ(word(buf, 5), want ? 1 : 0) << shift;
      EXPECT_EQ(info.work_items, want ? 15 : 60) << shift;
      EXPECT_EQ(info.blocks, 1);
      EXPECT_EQ(word(buf, 4), 60);
      // The output's alignment counts as much.
      const void* aligned[3] = {storage, storage + 1024 + e, storage + 2048 + e};
      void* shifted[1] = {storage + 4096 + shift * e};
      EXPECT_EQ(pack_cuda_args(p, l, aligned, shifted, nullptr, buf).vec4, want) << "output shifted by " << shift;
    }
    // Four elements of the dtype, not 16 bytes: half of a float4's alignment is enough for f16.
    if (has_vector && e < 16) {
      const void* in[3] = {storage + 4 * e, storage + 1024 + e, storage + 2048 + e};
      void* out[1] = {storage + 4096 + 4 * e};
      EXPECT_TRUE(pack_cuda_args(p, l, in, out, nullptr, buf).vec4);
    }
  }
  // Mixed dtypes: each pointer to its own dtype's alignment. An f16 input at 8 bytes, an f32
  // output at 16, a boolean output at 4, an i64 input read uniformly.
  Builder b({DType::f16, DType::i64}, 0);
  const u16 v = b.binary(ElementwiseOp::mul, b.load(0), b.load(1));
  b.output(v, DType::f32).output(b.binary(ElementwiseOp::gt, v, b.load(0)), DType::boolean);
  const FusedLayout l = make_layout({1000}, 2, {{1, {0}}});
  EXPECT_TRUE(contains(generate_cuda_source(b.program(), l, "k"), "a.flags & 1"));
  const void* in[2] = {storage + 8, storage + 1024 + 8};
  void* out[2] = {storage + 2048 + 16, storage + 4096 + 4};
  EXPECT_TRUE(pack_cuda_args(b.program(), l, in, out, nullptr, buf).vec4);
  const void* f16_odd[2] = {storage + 2, storage + 1024};
  EXPECT_FALSE(pack_cuda_args(b.program(), l, f16_odd, out, nullptr, buf).vec4);
  void* f32_half[2] = {storage + 2048 + 8, storage + 4096 + 4};
  EXPECT_FALSE(pack_cuda_args(b.program(), l, in, f32_half, nullptr, buf).vec4);
  void* bool_odd[2] = {storage + 2048 + 16, storage + 4096 + 2};
  EXPECT_FALSE(pack_cuda_args(b.program(), l, in, bool_odd, nullptr, buf).vec4);
  // The same i64 input read flat: no vector path in the source, none at launch.
  const FusedLayout flat = make_layout({1000}, 2);
  EXPECT_FALSE(contains(generate_cuda_source(b.program(), flat, "k"), "a.flags & 1"));
  EXPECT_FALSE(pack_cuda_args(b.program(), flat, in, out, nullptr, buf).vec4);
}

TEST(FusionArgs, ReductionPacksItsSplitAndStrategy) {
  const FusedProgram p = reduce_chain(ReduceOp::mean);
  // Args = in[3], out[1], n, flags, outer, len, inner, s[1] (no strided input)
  auto layout = [](const std::vector<i64>& dims, int dim) {
    return with_reduce(make_layout(dims, 3, {{2, {0, 0}}}), dims, dim);
  };
  const FusedLayout rows = layout({50, 256}, 1);
  EXPECT_TRUE(cuda_args_layout(p, rows).reduce);
  EXPECT_EQ(cuda_args_layout(p, rows).bytes(), 8u * (3 + 1 + 2 + 3) + 8);
  EXPECT_TRUE(contains(generate_cuda_source(p, rows, "k"), "static_assert(sizeof(Args) == " + std::to_string(8 * 9 + 8)));
  alignas(16) ArgBuffer buf{};
  alignas(16) float storage[64];
  const void* in[3] = {storage, storage + 4, storage + 9};
  void* out[1] = {storage + 17};  // a reduction's output need not be aligned for float4 loads
  const float scalar = 2.f;
  auto info = pack_cuda_args(p, rows, in, out, &scalar, buf);
  EXPECT_TRUE(info.vec4);
  EXPECT_EQ(word(buf, 4), 50 * 256);  // n, the domain
  EXPECT_EQ(word(buf, 5), 1);         // flags: float4 rows, a warp per row
  EXPECT_EQ(word(buf, 6), 50);        // outer, len, inner
  EXPECT_EQ(word(buf, 7), 256);
  EXPECT_EQ(word(buf, 8), 1);
  float s = 0;
  std::memcpy(&s, buf.data() + 72, sizeof s);
  EXPECT_EQ(s, 2.f);
  EXPECT_EQ(info.work_items, 50);
  EXPECT_EQ(info.blocks, 7);  // eight warps, eight rows per block
  // rows of a length that is no multiple of 4, or a misaligned input: no float4
  EXPECT_FALSE(pack_cuda_args(p, layout({50, 255}, 1), in, out, &scalar, buf).vec4);
  const void* misaligned[3] = {storage + 1, storage + 4, storage + 9};
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
  // wide inner but few tiles of long columns: rows again (a block each, strided)
  info = pack_cuda_args(p, layout({2, 9000, 40}, 1), in, out, &scalar, buf);
  EXPECT_EQ(word(buf, 5), 4);
  EXPECT_EQ(info.blocks, 80);

  // Per dtype: vector rows need the inputs aligned to four of their elements (never i64), whatever
  // the output's dtype and alignment.
  alignas(64) static std::byte bytes[4096];
  for (const DType t : all_dtypes()) {
    SCOPED_TRACE(dname(t));
    const FusedProgram q = reducing(dtype_program(t), ReduceOp::sum);
    const std::size_t e = defer::dtype_size(t);
    const bool has_vector = cuda_vector4_type(t) != nullptr;
    const void* aligned[3] = {bytes, bytes + 1024, bytes + 2048 + e};
    const void* shifted[3] = {bytes, bytes + 1024 + e, bytes + 2048};
    void* odd_out[1] = {bytes + 3072 + 1};
    EXPECT_EQ(pack_cuda_args(q, rows, aligned, odd_out, &scalar, buf).vec4, has_vector);
    EXPECT_EQ(word(buf, 5), has_vector ? 1 : 0);
    EXPECT_FALSE(pack_cuda_args(q, rows, shifted, odd_out, &scalar, buf).vec4);
    EXPECT_FALSE(pack_cuda_args(q, layout({50, 258}, 1), aligned, odd_out, &scalar, buf).vec4);
  }
}

// ---- caps and malformed programs ---------------------------------------------------------------

TEST(FusionCaps, BiggerProgramsAreRejectedForThePlannerToSplit) {
  {
    Builder b(kMaxFusedInputs + 1);
    b.output(b.load(0));
    EXPECT_THROW(structure_key(b.program(), make_layout({4}, kMaxFusedInputs + 1)), std::invalid_argument);
  }
  {
    Builder b(1);
    const auto v = b.load(0);
    for (int k = 0; k <= kMaxFusedOutputs; ++k) b.output(v);
    EXPECT_THROW(generate_cuda_source(b.program(), make_layout({4}, 1), "k"), std::invalid_argument);
  }
  {
    Builder b(1, kMaxFusedScalars + 1);
    b.output(b.load(0));
    EXPECT_THROW(structure_key(b.program(), make_layout({4}, 1)), std::invalid_argument);
  }
  {
    const FusedProgram p = long_chain(kMaxFusedInstructions + 1);
    FusedKernelCache cache{fs::path()};
    EXPECT_THROW(cache.get(p, make_layout({4}, 2), 90), std::invalid_argument);
    EXPECT_EQ(cache.counters().compiles, 0u);
    EXPECT_NO_THROW(structure_key(long_chain(kMaxFusedInstructions), make_layout({4}, 2)));
  }
  {  // exactly at every cap is fine, and its argument is the largest
    Builder b(kMaxFusedInputs, kMaxFusedScalars);
    u16 v = b.load(0);
    for (int i = 1; i < kMaxFusedInputs; ++i) v = b.binary(ElementwiseOp::add, v, b.load(i));
    for (int s = 0; s < kMaxFusedScalars; ++s) v = b.scalar(ElementwiseOp::mul, v, s);
    for (int k = 0; k < kMaxFusedOutputs; ++k) b.output(v);
    std::map<int, std::vector<i64>> strides;
    for (int i = 0; i < kMaxFusedInputs; ++i) strides[i] = {1, 2, 4, 8, 16, 32, 64, 128};
    const FusedLayout l = make_layout({2, 2, 2, 2, 2, 2, 2, 2}, kMaxFusedInputs, strides);
    EXPECT_EQ(cuda_args_layout(b.program(), l).bytes(), kCudaFusedMaxArgBytes);
    compile_checked(b.program(), l, 90);
  }
}

TEST(FusionCaps, MalformedProgramsAreRejected) {
  const FusedLayout l = make_layout({4}, 1);
  auto rejects = [&](const FusedProgram& p, const FusedLayout& layout, const char* what) {
    EXPECT_THROW(structure_key(p, layout), std::invalid_argument) << what;
    EXPECT_THROW(defer::kernels::validate(p, layout), std::invalid_argument) << what;
    EXPECT_THROW(generate_cuda_source(p, layout, "k"), std::invalid_argument) << what;
  };
  Builder ok(1, 1);
  ok.output(ok.scalar(ElementwiseOp::add, ok.load(0), 0));
  EXPECT_NO_THROW(structure_key(ok.program(), l));

  FusedProgram p = ok.program();
  p.outputs.clear();
  p.output_dtypes.clear();
  rejects(p, l, "no outputs");
  p = ok.program();
  p.code[1].a = 1;
  rejects(p, l, "uses itself");
  p = ok.program();
  p.code[1].s = 1;
  rejects(p, l, "scalar out of range");
  p = ok.program();
  p.code[0].a = 1;
  rejects(p, l, "input out of range");
  p = ok.program();
  p.code[1].op = static_cast<ElementwiseOp>(defer::kernels::kElementwiseOpCount);
  rejects(p, l, "op out of range");
  p = ok.program();
  p.code[1].kind = static_cast<FusedKind>(9);
  rejects(p, l, "kind out of range");
  p = ok.program();
  p.outputs[0] = 2;
  rejects(p, l, "undefined output");
  rejects(ok.program(), make_layout({4}, 2), "strides for two inputs");
  FusedLayout bad = l;
  bad.ndim = kMaxDims + 1;
  rejects(ok.program(), bad, "ndim above the cap");
  bad = l;
  bad.shape[0] = -1;
  rejects(ok.program(), bad, "a negative extent");
  // dtypes: one per input and output, each a dtype of the table; a cast's target too
  const auto unknown = static_cast<DType>(defer::detail::kDTypeCount);
  p = ok.program();
  p.input_dtypes.clear();
  rejects(p, l, "no input dtypes");
  p = ok.program();
  p.output_dtypes.push_back(DType::f32);
  rejects(p, l, "two output dtypes for one output");
  p = ok.program();
  p.input_dtypes[0] = unknown;
  rejects(p, l, "unknown input dtype");
  p = ok.program();
  p.output_dtypes[0] = unknown;
  rejects(p, l, "unknown output dtype");
  Builder cast(1);
  cast.output(cast.cast(cast.load(0), DType::f16));
  EXPECT_NO_THROW(structure_key(cast.program(), l));
  p = cast.program();
  p.code[1].dtype = unknown;
  rejects(p, l, "a cast to an unknown dtype");
  p = ok.program();
  p.code[1].dtype = unknown;
  rejects(p, l, "an op's result of an unknown dtype");
  // a three-operand op reads all three
  Builder three(1);
  const u16 x = three.load(0);
  three.output(three.apply(ElementwiseOp::where, {x, x, x}));
  EXPECT_NO_THROW(structure_key(three.program(), l));
  p = three.program();
  p.code[1].c = 1;
  rejects(p, l, "where's third operand is itself");
  // an op of two scalars needs both
  Builder clamp(1, 2);
  clamp.output(clamp.apply(ElementwiseOp::clamp, {clamp.load(0)}, 0));
  EXPECT_NO_THROW(structure_key(clamp.program(), l));
  p = clamp.program();
  p.code[1].s = 1;
  rejects(p, l, "clamp's second scalar out of range");
}

TEST(FusionCaps, MalformedReductionsAreRejected) {
  const FusedLayout l = with_reduce(make_layout({8, 100}, 3), {8, 100}, 1);
  FusedProgram p = reduce_chain(ReduceOp::sum);
  EXPECT_NO_THROW(structure_key(p, l));
  FusedProgram bad = p;
  bad.outputs = {0};
  EXPECT_THROW(structure_key(bad, l), std::invalid_argument);
  bad.outputs = {p.outputs[0], p.outputs[0]};
  bad.output_dtypes = {DType::f32, DType::f32};
  EXPECT_THROW(structure_key(bad, l), std::invalid_argument);
  bad = p;
  bad.reduction->op = static_cast<ReduceOp>(7);
  EXPECT_THROW(generate_cuda_source(bad, l, "k"), std::invalid_argument);
  bad = p;
  bad.reduction->op = ReduceOp::argmax;  // an index result is never fused
  EXPECT_THROW(generate_cuda_source(bad, l, "k"), std::invalid_argument);
  FusedLayout split = l;
  split.reduce.n = 99;
  EXPECT_THROW(structure_key(p, split), std::invalid_argument);
  split = l;
  split.reduce = {-8, -100, 1};
  EXPECT_THROW(structure_key(p, split), std::invalid_argument);
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
  const std::string name = cuda_kernel_name(structure_key(p, l));
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

// The source the cache generates for a program: named after its structure key.
std::string cache_source(const FusedProgram& p, const FusedLayout& l) {
  return generate_cuda_source(p, l, cuda_kernel_name(structure_key(p, l)));
}

TEST(KernelCache, SecondLookupIsAMemoryHitWhateverTheSizes) {
  FusedKernelCache cache{fs::path()};  // no disk cache
  EXPECT_TRUE(cache.disk_dir().empty());
  EXPECT_TRUE(cache.disk_file(cache_source(typical_eight_op_program(), make_layout({100}, 3)), 90).empty());
  const FusedProgram p = typical_eight_op_program();
  const auto& first = cache.get(p, make_layout({100}, 3), 90);
  const auto& second = cache.get(p, make_layout({7, 9, 11}, 3), 90);
  EXPECT_EQ(&first, &second);
  auto c = cache.counters();
  EXPECT_EQ(c.compiles, 1u);
  EXPECT_EQ(c.memory_hits, 1u);
  EXPECT_EQ(c.disk_hits, 0u);
  EXPECT_EQ(c.disk_writes, 0u);
  // Another architecture, another structure or another dtype compiles again.
  cache.get(p, make_layout({100}, 3), 80);
  cache.get(p, make_layout({10, 10}, 3, {{1, {0, 1}}}), 90);
  FusedProgram half = p;
  half.output_dtypes[0] = DType::f16;
  const auto& third = cache.get(half, make_layout({100}, 3), 90);
  c = cache.counters();
  EXPECT_EQ(c.compiles, 4u);
  EXPECT_EQ(c.memory_hits, 1u);
  EXPECT_TRUE(contains(first.binary.ptx, ".entry " + first.name));
  EXPECT_EQ(first.name, cuda_kernel_name(structure_key(p, make_layout({100}, 3))));
  EXPECT_NE(third.name, first.name);
  EXPECT_EQ(first.binary.arch, 90);
}

TEST(KernelCache, DiskCacheWarmsASecondProcessAndSurvivesCorruption) {
  TempDir dir;
  ScopedEnv env("DEFER_CACHE_DIR", dir.path().c_str());
  const FusedProgram p = typical_eight_op_program();
  const FusedLayout l = make_layout({1000}, 3, {{1, {0}}});
  const std::string key = structure_key(p, l);
  const std::string source = cache_source(p, l);

  CompiledProgram compiled_once;
  fs::path file;
  {  // the first process compiles and writes
    FusedKernelCache cache;
    EXPECT_EQ(cache.disk_dir(), dir.path());
    compiled_once = cache.get(p, l, 90).binary;
    const auto c = cache.counters();
    EXPECT_EQ(c.compiles, 1u);
    EXPECT_EQ(c.disk_writes, 1u);
    file = cache.disk_file(source, 90);
    ASSERT_TRUE(fs::exists(file));
    EXPECT_EQ(file.parent_path(), dir.path());
    EXPECT_EQ(kernel_files(dir.path()).size(), 1u);  // no temporary file left behind
  }
  {  // the second process reads it without compiling
    FusedKernelCache cache;
    const auto& k = cache.get(p, make_layout({5}, 3, {{1, {0}}}), 90);
    const auto c = cache.counters();
    EXPECT_EQ(c.compiles, 0u);
    EXPECT_EQ(c.disk_hits, 1u);
    EXPECT_EQ(c.disk_writes, 0u);
    EXPECT_EQ(k.binary.ptx, compiled_once.ptx);
    EXPECT_EQ(k.binary.cubin, compiled_once.cubin);
    EXPECT_EQ(k.binary.arch, 90);
    EXPECT_EQ(k.name, cuda_kernel_name(key));
    // Another architecture is another file.
    EXPECT_NE(cache.disk_file(source, 80), file);
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
    EXPECT_EQ(k.binary.ptx, compiled_once.ptx);
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
  {
    std::ofstream(file, std::ios::binary | std::ios::trunc).flush();
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
  EXPECT_EQ(kernel_files(dir.path()).size(), 1u);
}

// The disk file is named by the generated source (which embeds kernels/elementwise_math.h and spells
// every op and dtype), the NVRTC version, the architecture and the format: one character of source
// is another file, the same source is the same file whatever program or key it came from.
TEST(KernelCache, DiskFileIsNamedByTheGeneratedSource) {
  TempDir dir;
  FusedKernelCache cache(dir.path());
  const FusedProgram p = typical_eight_op_program();
  const FusedLayout l = make_layout({1000}, 3);
  const std::string source = cache_source(p, l);
  const fs::path file = cache.disk_file(source, 90);
  EXPECT_EQ(file.parent_path(), dir.path());
  const std::string stem = file.filename().string();
  EXPECT_EQ(stem.rfind("sm90-", 0), 0u) << stem;
  EXPECT_EQ(file.extension(), ".kernel");
  EXPECT_EQ(cache.disk_file(std::string(source), 90), file);
  EXPECT_EQ(FusedKernelCache(dir.path()).disk_file(source, 90), file) << "the name depends on nothing else";
  std::string one_more = source;
  one_more += ' ';
  EXPECT_NE(cache.disk_file(one_more, 90), file);
  std::string one_changed = source;
  one_changed[one_changed.size() / 2] ^= 1;
  EXPECT_NE(cache.disk_file(one_changed, 90), file);
  EXPECT_NE(cache.disk_file(source, 80), file);
  // Sizes never change the source, so never the file.
  EXPECT_EQ(cache.disk_file(cache_source(p, make_layout({7, 3}, 3)), 90), file);
}

// A renumbered op table, another math file or another dtype keeps a structure key's spelling but
// changes the generated source: a kernel compiled for one source is never loaded for another, even
// under the same key, and a file planted under another source's name is ignored and rewritten.
TEST(KernelCache, AFileWrittenForOneSourceIsNeverLoadedForAnother) {
  TempDir dir;
  const FusedLayout l = make_layout({1000}, 3, {{1, {0}}});
  const FusedProgram a = typical_eight_op_program();
  const std::string key = structure_key(a, l);
  const std::string name = cuda_kernel_name(key);
  // Under a's key: another op code in instruction 4 (what renumbering gelu would look like), or
  // another output dtype.
  FusedProgram other_op = a;
  ASSERT_EQ(other_op.code[4].op, ElementwiseOp::gelu);
  other_op.code[4].op = ElementwiseOp::gelu_tanh;
  FusedProgram other_dtype = a;
  other_dtype.output_dtypes[0] = DType::bf16;
  const std::string source_a = generate_cuda_source(a, l, name);
  ASSERT_NE(generate_cuda_source(other_op, l, name), source_a);
  ASSERT_NE(generate_cuda_source(other_dtype, l, name), source_a);

  CompiledProgram binary_a;
  {
    FusedKernelCache cache(dir.path());
    binary_a = cache.get(key, 90, a, l).binary;
    EXPECT_EQ(cache.counters().compiles, 1u);
    EXPECT_EQ(cache.counters().disk_writes, 1u);
    ASSERT_TRUE(fs::exists(cache.disk_file(source_a, 90)));
  }
  for (const FusedProgram* other : {&other_op, &other_dtype}) {
    const std::string source = generate_cuda_source(*other, l, name);
    {  // a second process asks for the same key with another source: it compiles its own
      FusedKernelCache cache(dir.path());
      EXPECT_NE(cache.disk_file(source, 90), cache.disk_file(source_a, 90));
      const auto& k = cache.get(key, 90, *other, l);
      EXPECT_EQ(cache.counters().compiles, 1u);
      EXPECT_EQ(cache.counters().disk_hits, 0u);
      EXPECT_EQ(cache.counters().disk_writes, 1u);
      EXPECT_EQ(k.name, name);
      EXPECT_NE(k.binary.ptx, binary_a.ptx);
      EXPECT_TRUE(fs::exists(cache.disk_file(source, 90)));
    }
    {  // a's file copied over the other's: its identity names a's source, so it is not loaded
      FusedKernelCache cache(dir.path());
      fs::copy_file(cache.disk_file(source_a, 90), cache.disk_file(source, 90), fs::copy_options::overwrite_existing);
      const auto& k = cache.get(key, 90, *other, l);
      EXPECT_EQ(cache.counters().compiles, 1u);
      EXPECT_EQ(cache.counters().disk_hits, 0u);
      EXPECT_EQ(cache.counters().disk_writes, 1u);
      EXPECT_NE(k.binary.ptx, binary_a.ptx);
    }
    {  // rewritten: it is the other's own file again
      FusedKernelCache cache(dir.path());
      const auto& k = cache.get(key, 90, *other, l);
      EXPECT_EQ(cache.counters().compiles, 0u);
      EXPECT_EQ(cache.counters().disk_hits, 1u);
      EXPECT_NE(k.binary.ptx, binary_a.ptx);
    }
  }
  {  // and a's own file still serves a
    FusedKernelCache cache(dir.path());
    const auto& k = cache.get(key, 90, a, l);
    EXPECT_EQ(cache.counters().compiles, 0u);
    EXPECT_EQ(cache.counters().disk_hits, 1u);
    EXPECT_EQ(k.binary.ptx, binary_a.ptx);
  }
  EXPECT_EQ(kernel_files(dir.path()).size(), 3u);
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
  {  // a relative XDG_CACHE_HOME is ignored (the spec says so)
    ScopedEnv a("DEFER_CACHE_DIR", nullptr);
    ScopedEnv b("XDG_CACHE_HOME", "relative/cache");
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

// Concurrent processes share one directory: two caches (as two processes would) compiling the same
// and different structures at once leave one good file per source and no temporary files.
TEST(KernelCache, ConcurrentWritersLeaveOneGoodFilePerSource) {
  TempDir dir;
  const FusedProgram p = typical_eight_op_program();
  FusedProgram q = p;
  q.output_dtypes[0] = DType::f16;
  const FusedLayout l = make_layout({64}, 3);
  {
    FusedKernelCache first(dir.path()), second(dir.path());
    std::vector<std::thread> threads;
    threads.emplace_back([&] { first.get(p, l, 90); });
    threads.emplace_back([&] { second.get(p, l, 90); });
    threads.emplace_back([&] { second.get(q, l, 90); });
    for (auto& t : threads) t.join();
    EXPECT_EQ(first.counters().compiles + second.counters().compiles + first.counters().disk_hits +
                  second.counters().disk_hits,
              3u);
  }
  EXPECT_EQ(kernel_files(dir.path()).size(), 2u);
  FusedKernelCache warm(dir.path());
  warm.get(p, l, 90);
  warm.get(q, l, 90);
  EXPECT_EQ(warm.counters().compiles, 0u);
  EXPECT_EQ(warm.counters().disk_hits, 2u);
}

// ---- on a GPU: loading and launching -----------------------------------------------------------

#define CHECK_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call

// `bytes` of device memory (plus slack for misaligned views).
struct DeviceBuffer {
  explicit DeviceBuffer(std::size_t bytes) {
    void* raw = nullptr;
    if (cudaMalloc(&raw, bytes + 64) == cudaSuccess) ptr = static_cast<std::byte*>(raw);
  }
  ~DeviceBuffer() {
    if (ptr) (void)cudaFree(ptr);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  std::byte* ptr = nullptr;
};

// n values that dtype t holds exactly and that are never 0 for floats: either sign, magnitude in
// [0.1, 3) for floating dtypes; integers in [-50, 50]; booleans 0 or 1.
std::vector<float> random_values(DType t, std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(0.1f, 3.f);
  std::vector<float> v(n);
  for (auto& x : v) {
    if (t == DType::boolean) x = static_cast<float>(rng() % 2);
    else if (defer::is_integer(t)) x = static_cast<float>(static_cast<int>(rng() % 101) - 50);
    else x = round_to(t, rng() % 2 ? dist(rng) : -dist(rng));
  }
  return v;
}

// Output poison: NaN for floating dtypes, 0x5a bytes (no small integer, no boolean) for the others.
unsigned char poison_byte(DType t) { return defer::is_floating(t) ? 0xff : 0x5a; }

// A program of one instruction `ins` (an op) over f32 inputs, its operands renumbered to inputs
// 0, 1, 2 and its scalars to 0, 1; the result f32.
FusedProgram one_op_program(const FusedInstr& ins) {
  const defer::kernels::ElementwiseInfo& row = defer::kernels::info(ins.op);
  Builder b(row.tensors, row.scalars);
  std::vector<u16> operands;
  for (int k = 0; k < row.tensors; ++k) operands.push_back(b.load(k));
  FusedProgram p = b.program();
  FusedInstr op = ins;
  u16* fields[] = {&op.a, &op.b, &op.c};
  for (int k = 0; k < 3; ++k) *fields[k] = k < row.tensors ? operands[static_cast<std::size_t>(k)] : u16{0};
  op.s = 0;
  p.code.push_back(op);
  p.outputs = {static_cast<u16>(p.code.size() - 1)};
  p.output_dtypes = {DType::f32};
  return p;
}

FusedLayout contiguous(i64 n, int inputs) { return make_layout({n}, inputs); }

// The program evaluated op by op: each instruction a one-instruction program run by the CPU
// backend's interpreter (the loads gathered per the layout), every output rounded to its dtype.
// inputs[i] holds the values of input i's storage (exact in its dtype).
std::vector<std::vector<float>> cpu_reference(const FusedProgram& p, const FusedLayout& l,
                                              const std::vector<std::vector<float>>& inputs,
                                              const std::vector<float>& scalars) {
  const i64 n = l.numel();
  std::vector<std::vector<float>> v(p.code.size(), std::vector<float>(static_cast<std::size_t>(n)));
  for (std::size_t i = 0; i < p.code.size(); ++i) {
    const FusedInstr& ins = p.code[i];
    auto& out = v[i];
    if (ins.kind == FusedKind::load) {
      for (i64 e = 0; e < n; ++e) {
        i64 rest = e, offset = 0;
        for (int d = l.ndim - 1; d >= 0; --d) {
          const auto u = static_cast<std::size_t>(d);
          offset += (rest % l.shape[u]) * l.strides[ins.a][u];
          rest /= l.shape[u];
        }
        out[static_cast<std::size_t>(e)] = inputs[ins.a][static_cast<std::size_t>(offset)];
      }
      continue;
    }
    const defer::kernels::ElementwiseInfo& row = defer::kernels::info(ins.op);
    const u16 operands[] = {ins.a, ins.b, ins.c};
    std::vector<const void*> in;
    for (int k = 0; k < row.tensors; ++k) in.push_back(v[operands[k]].data());
    void* outs[] = {out.data()};
    defer::kernels::cpu::run_fused(one_op_program(ins), contiguous(n, row.tensors), in.data(), outs,
                                   row.scalars > 0 ? scalars.data() + ins.s : nullptr);
  }
  std::vector<std::vector<float>> outs;
  for (std::size_t k = 0; k < p.outputs.size(); ++k) {
    outs.push_back(v[p.outputs[k]]);
    for (float& x : outs.back()) x = round_to(p.output_dtypes[k], x);
  }
  return outs;
}

// Elements of an input the layout reads (non-negative strides).
std::size_t input_extent(const FusedLayout& l, std::size_t input) {
  i64 extent = 1;
  for (int d = 0; d < l.ndim; ++d) {
    const auto u = static_cast<std::size_t>(d);
    extent += (l.shape[u] - 1) * l.strides[input][u];
  }
  return static_cast<std::size_t>(std::max<i64>(extent, 1));
}

// Uploaded inputs of a program: random values of each input's dtype, each `shift` elements past an
// aligned address (shift != 0 takes the scalar path).
struct DeviceInputs {
  std::vector<std::vector<float>> values;
  std::vector<std::vector<std::byte>> host;  // the values' storage bytes
  std::vector<std::unique_ptr<DeviceBuffer>> buffers;
  std::vector<const void*> device, host_ptrs;
};
void upload_inputs(const FusedProgram& p, const FusedLayout& l, std::size_t shift, std::uint32_t seed,
                   DeviceInputs& in) {
  for (std::size_t i = 0; i < p.num_inputs; ++i) {
    const DType t = p.input_dtypes[i];
    const std::size_t e = defer::dtype_size(t);
    in.values.push_back(random_values(t, input_extent(l, i), seed + static_cast<std::uint32_t>(i)));
    in.host.push_back(encode(t, in.values.back()));
    in.buffers.push_back(std::make_unique<DeviceBuffer>(in.host.back().size() + shift * e));
    ASSERT_NE(in.buffers.back()->ptr, nullptr);
    CHECK_CUDA(cudaMemcpy(in.buffers.back()->ptr + shift * e, in.host.back().data(), in.host.back().size(),
                          cudaMemcpyHostToDevice));
    in.device.push_back(in.buffers.back()->ptr + shift * e);
    in.host_ptrs.push_back(in.host.back().data());
  }
}

std::vector<float> scalars_of(const FusedProgram& p) {
  std::vector<float> s;
  for (int k = 0; k < p.num_scalars; ++k) s.push_back(0.25f + 0.5f * static_cast<float>(k));
  return s;
}

// got (the raw bytes of n elements of dtype t) against want (f32 values exact in t): floats within
// rtol * max(1, |want|) (NaN meets NaN), integers and booleans exactly.
void expect_output(DType t, const std::byte* got_bytes, const std::vector<float>& want, double rtol,
                   const std::string& what) {
  const std::vector<float> got = decode(t, got_bytes, want.size());
  for (std::size_t e = 0; e < want.size(); ++e) {
    if (t == DType::boolean) {
      ASSERT_EQ(static_cast<int>(got_bytes[e]), static_cast<int>(want[e])) << what << " element " << e;
    } else if (!defer::is_floating(t)) {
      ASSERT_EQ(got[e], want[e]) << what << " element " << e;
    } else if (std::isnan(want[e])) {
      ASSERT_TRUE(std::isnan(got[e])) << what << " element " << e << ": " << got[e];
    } else {
      ASSERT_NEAR(got[e], want[e], rtol * std::max(1.f, std::fabs(want[e]))) << what << " element " << e;
    }
  }
}

double tolerance(DType t) { return t == DType::f32 ? 2e-5 : 1e-2; }

// Runs the program fused on the GPU, every input and output `shift` elements of its dtype past an
// aligned address (shift != 0 takes the scalar path), outputs poisoned, and compares with the CPU
// reference; nothing is written past an output's end.
void expect_fused_matches_cpu(const FusedProgram& p, const FusedLayout& l, std::size_t shift, std::uint32_t seed) {
  const auto n = static_cast<std::size_t>(l.numel());
  DeviceInputs in;
  upload_inputs(p, l, shift, seed, in);
  if (::testing::Test::HasFatalFailure()) return;
  std::vector<std::unique_ptr<DeviceBuffer>> dev_out;
  std::vector<void*> out_ptrs;
  for (const DType t : p.output_dtypes) {
    const std::size_t e = defer::dtype_size(t);
    dev_out.push_back(std::make_unique<DeviceBuffer>((n + shift + 4) * e));
    ASSERT_NE(dev_out.back()->ptr, nullptr);
    CHECK_CUDA(cudaMemset(dev_out.back()->ptr, poison_byte(t), (n + shift + 4) * e));
    out_ptrs.push_back(dev_out.back()->ptr + shift * e);
  }
  const std::vector<float> scalars = scalars_of(p);
  CHECK_CUDA(cudaDeviceSynchronize());  // the copies and memsets above, before another stream reads
  cudaStream_t stream = nullptr;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  defer::detail::launch_fused_cuda(p, l, in.device.data(), out_ptrs.data(), scalars.data(), stream, 0);
  CHECK_CUDA(cudaStreamSynchronize(stream));
  CHECK_CUDA(cudaStreamDestroy(stream));
  const auto expected = cpu_reference(p, l, in.values, scalars);
  for (std::size_t k = 0; k < p.outputs.size(); ++k) {
    const DType t = p.output_dtypes[k];
    const std::size_t e = defer::dtype_size(t);
    std::vector<std::byte> got((n + 4) * e);
    CHECK_CUDA(cudaMemcpy(got.data(), out_ptrs[k], got.size(), cudaMemcpyDeviceToHost));
    expect_output(t, got.data(), expected[k], tolerance(t), "output " + std::to_string(k) + " (" + dname(t) + ")");
    for (std::size_t b = n * e; b < got.size(); ++b)
      ASSERT_EQ(static_cast<unsigned char>(got[b]), poison_byte(t)) << "output " << k << " written past its end";
  }
}

TEST(FusedLaunchGpu, MatchesTheCpuReference) {
  if (!defer::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const FusedProgram chain = every_unary_chain();
  for (const std::size_t shift : {0u, 1u}) {
    SCOPED_TRACE("shift " + std::to_string(shift));
    expect_fused_matches_cpu(chain, make_layout({1003}, 1), shift, 1);  // float4 + tail, or scalar
    expect_fused_matches_cpu(every_binary_program(), make_layout({37, 41}, 2), shift, 2);
    expect_fused_matches_cpu(typical_eight_op_program(), make_layout({64, 96}, 3, {{1, {0, 1}}, {2, {1, 64}}}), shift, 3);
    expect_fused_matches_cpu(typical_eight_op_program(), make_layout({5, 7, 9}, 3, {{1, {0, 0, 0}}}), shift, 4);
    expect_fused_matches_cpu(long_chain(40), make_layout({3, 1, 333}, 2, {{1, {0, 0, 1}}}), shift, 5);
    // (integer outputs of a sum of transcendentals could truncate differently after a last-bit
    // difference of the two devices' math libraries: they have exact programs below)
    expect_fused_matches_cpu(every_op_program({DType::f32, DType::f16, DType::bf16, DType::boolean}),
                             make_layout({515}, 3), shift, 6);
    if (HasFatalFailure()) return;
  }
  // Multiple outputs, some of them intermediates, and a 0-d layout.
  Builder b(2, 1);
  const u16 x = b.load(0), y = b.load(1);
  const u16 sum = b.binary(ElementwiseOp::add, x, y);
  b.output(sum).output(b.unary(ElementwiseOp::gelu, sum)).output(b.scalar(ElementwiseOp::maximum, x, 0));
  expect_fused_matches_cpu(b.program(), make_layout({2049}, 2), 0, 7);
  expect_fused_matches_cpu(b.program(), make_layout({}, 2), 0, 8);
}

// Every dtype in and out: the typed loads and stores, the vector path of each vector type (shift 0)
// and the scalar path (shift 1), strided and uniform inputs, half-precision chains rounding once.
TEST(FusedLaunchGpu, EveryDTypeMatchesTheCpuReference) {
  if (!defer::cuda_available()) GTEST_SKIP() << "no CUDA device";
  std::uint32_t seed = 100;
  for (const DType t : all_dtypes())
    for (const std::size_t shift : {0u, 1u}) {
      SCOPED_TRACE(dname(t) + ", shift " + std::to_string(shift));
      const FusedProgram p = dtype_program(t);
      expect_fused_matches_cpu(p, make_layout({37, 41}, 3, {{2, {0, 0}}}), shift, ++seed);
      expect_fused_matches_cpu(p, make_layout({37, 41}, 3, {{1, {0, 1}}, {2, {0, 0}}}), shift, ++seed);
      expect_fused_matches_cpu(p, make_layout({6, 7, 9}, 3, {{0, {1, 6, 42}}}), shift, ++seed);
      if (HasFatalFailure()) return;
    }
  for (const DType half : {DType::f16, DType::bf16})
    for (const std::size_t shift : {0u, 1u}) {
      SCOPED_TRACE(dname(half) + " chains, shift " + std::to_string(shift));
      // as the planner builds them: every op's result rounded through the dtype
      FusedProgram chain = with_results(every_unary_chain(), half);
      chain.input_dtypes = {half};
      chain.output_dtypes = {half};
      expect_fused_matches_cpu(chain, make_layout({1003}, 1), shift, ++seed);
      FusedProgram typical = with_results(typical_eight_op_program(), half);
      typical.input_dtypes = {half, half, DType::f32};
      typical.output_dtypes = {half};
      expect_fused_matches_cpu(typical, make_layout({64, 96}, 3, {{1, {0, 1}}}), shift, ++seed);
      // and computed in f32 throughout, rounded once at the store
      FusedProgram once = every_unary_chain();
      once.input_dtypes = {half};
      once.output_dtypes = {half};
      expect_fused_matches_cpu(once, make_layout({1003}, 1), shift, ++seed);
      if (HasFatalFailure()) return;
    }
  // Every dtype loaded and stored by one kernel, the i64 input uniform (every other moves as a vector)
  const std::vector<DType> dtypes = all_dtypes();
  Builder b(dtypes, 1);
  u16 acc = b.load(0);
  for (std::size_t i = 1; i < dtypes.size(); ++i) acc = b.binary(ElementwiseOp::add, acc, b.load(static_cast<int>(i)));
  acc = b.scalar(ElementwiseOp::mul, acc, 0);
  std::map<int, std::vector<i64>> uniform;
  for (std::size_t i = 0; i < dtypes.size(); ++i) {
    if (cuda_vector4_type(dtypes[i]) == nullptr) uniform[static_cast<int>(i)] = {0};
    else b.output(acc, dtypes[i]);
  }
  for (const std::size_t shift : {0u, 1u})
    expect_fused_matches_cpu(b.program(), make_layout({1001}, static_cast<int>(dtypes.size()), uniform), shift, ++seed);
}

TEST(FusedLaunchGpu, SixtyFourBitOffsetsWork) {
  if (!defer::cuda_available()) GTEST_SKIP() << "no CUDA device";
  // A negative stride forces the 64-bit index arithmetic: in0 read back to front.
  Builder b(2);
  b.output(b.binary(ElementwiseOp::sub, b.load(0), b.load(1)));
  FusedLayout l = make_layout({1000}, 2);
  const std::vector<float> host = random_values(DType::f32, 1000, 9), other = random_values(DType::f32, 1000, 10);
  DeviceBuffer a(4000), c(4000), out(4000);
  ASSERT_NE(a.ptr, nullptr);
  CHECK_CUDA(cudaMemcpy(a.ptr, host.data(), 4000, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(c.ptr, other.data(), 4000, cudaMemcpyHostToDevice));
  l.strides[0][0] = -1;  // with a pointer to in0's last element
  const void* in[2] = {a.ptr + 999 * sizeof(float), c.ptr};
  void* outs[1] = {out.ptr};
  defer::detail::launch_fused_cuda(b.program(), l, in, outs, nullptr, nullptr, 0);
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<float> got(1000);
  CHECK_CUDA(cudaMemcpy(got.data(), out.ptr, 4000, cudaMemcpyDeviceToHost));
  for (std::size_t i = 0; i < 1000; ++i) ASSERT_EQ(got[i], host[999 - i] - other[i]) << i;
}

// Fusion never changes rounding: the fused kernel equals the same ops launched one at a time (each
// a one-instruction fused program, as the runtime runs an op alone) bit for bit, for f32 and for
// f16 and bf16 chains, whose every value is rounded through the dtype fused or not.
TEST(FusedLaunchGpu, BitIdenticalToTheOpsOneAtATime) {
  if (!defer::cuda_available()) GTEST_SKIP() << "no CUDA device";
  Builder b(2, 3);
  const u16 x = b.load(0), y = b.load(1);
  u16 v = b.binary(ElementwiseOp::mul, x, y);
  v = b.binary(ElementwiseOp::add, v, x);  // mul then add: must not become an FMA
  // (every unary op of |v|, so that log and sqrt see their domain and few elements end NaN)
  for (const ElementwiseOp op : kUnaryOps)
    v = b.binary(ElementwiseOp::add, b.unary(op, b.unary(ElementwiseOp::abs, v)), y);
  for (const ElementwiseOp op : kBinaryOps) v = b.binary(op, v, y);
  for (const ElementwiseOp op : kScalarOps) v = b.apply(op, {v}, 0);
  v = b.apply(ElementwiseOp::clamp, {v}, 1);
  v = b.scalar(ElementwiseOp::div, v, 2);
  b.output(v);
  constexpr i64 n = 4099;
  const std::vector<float> scalars = {2.f, -1.f, 1.7f};
  for (const DType t : defer::testing::floating_dtypes()) {
    SCOPED_TRACE(dname(t));
    FusedProgram p = with_results(b.program(), t);
    p.output_dtypes = {t};
    // f32 inputs holding values of t (so that both paths read the same values)
    std::vector<float> hx = random_values(t, n, 11), hy = random_values(t, n, 12);
    DeviceBuffer dx(n * 4), dy(n * 4), fused(n * 4);
    ASSERT_NE(dx.ptr, nullptr);
    CHECK_CUDA(cudaMemcpy(dx.ptr, hx.data(), n * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(dy.ptr, hy.data(), n * 4, cudaMemcpyHostToDevice));
    const void* in[2] = {dx.ptr, dy.ptr};
    void* out[1] = {fused.ptr};
    defer::detail::launch_fused_cuda(p, make_layout({n}, 2), in, out, scalars.data(), nullptr, 0);
    // The same instructions one kernel each, every value in its own f32 buffer.
    std::vector<std::unique_ptr<DeviceBuffer>> values;
    std::vector<const void*> value_ptr;
    for (const FusedInstr& ins : p.code) {
      if (ins.kind == FusedKind::load) {
        values.emplace_back();
        value_ptr.push_back(in[ins.a]);
        continue;
      }
      values.push_back(std::make_unique<DeviceBuffer>(n * 4));
      ASSERT_NE(values.back()->ptr, nullptr);
      const defer::kernels::ElementwiseInfo& row = defer::kernels::info(ins.op);
      const u16 operands[] = {ins.a, ins.b, ins.c};
      std::vector<const void*> args;
      for (int k = 0; k < row.tensors; ++k) args.push_back(value_ptr[operands[k]]);
      void* result[1] = {values.back()->ptr};
      defer::detail::launch_fused_cuda(one_op_program(ins), contiguous(n, row.tensors), args.data(), result,
                                       scalars.data() + ins.s, nullptr, 0);
      value_ptr.push_back(values.back()->ptr);
    }
    CHECK_CUDA(cudaDeviceSynchronize());
    std::vector<std::byte> fused_bytes(static_cast<std::size_t>(n) * defer::dtype_size(t));
    std::vector<float> r(n);
    CHECK_CUDA(cudaMemcpy(fused_bytes.data(), fused.ptr, fused_bytes.size(), cudaMemcpyDeviceToHost));
    CHECK_CUDA(cudaMemcpy(r.data(), value_ptr.back(), n * 4, cudaMemcpyDeviceToHost));
    const std::vector<float> a = decode(t, fused_bytes.data(), static_cast<std::size_t>(n));
    std::size_t nans = 0;
    for (i64 i = 0; i < n; ++i) {
      const auto u = static_cast<std::size_t>(i);
      if (std::isnan(r[u])) {
        ++nans;
        ASSERT_TRUE(std::isnan(a[u])) << i;
      } else {
        ASSERT_EQ(a[u], r[u]) << i;
      }
    }
    EXPECT_LT(nans, static_cast<std::size_t>(n) / 4) << "mostly NaN: the comparison says little";
  }
}

// A fused reduction on the GPU against the CPU's fused reduction (both accumulate sums in double),
// every input `shift` elements past an aligned address (shift != 0 takes the scalar loads), the
// output poisoned so that an unwritten element fails, and nothing written past its end.
void expect_reduce_matches_cpu(const FusedProgram& p, const FusedLayout& l, std::size_t shift, std::uint32_t seed) {
  const auto outputs = static_cast<std::size_t>(l.reduce.outer * l.reduce.inner);
  DeviceInputs in;
  upload_inputs(p, l, shift, seed, in);
  if (::testing::Test::HasFatalFailure()) return;
  const DType t = p.output_dtypes[0];
  const std::size_t e = defer::dtype_size(t);
  DeviceBuffer dev_out((outputs + 4) * e);
  ASSERT_NE(dev_out.ptr, nullptr);
  CHECK_CUDA(cudaMemset(dev_out.ptr, poison_byte(t), (outputs + 4) * e));
  const std::vector<float> scalars = scalars_of(p);
  void* out_ptr = dev_out.ptr;
  defer::detail::launch_fused_cuda(p, l, in.device.data(), &out_ptr, scalars.data(), nullptr, 0);
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<std::byte> got((outputs + 4) * e), want(outputs * e);
  CHECK_CUDA(cudaMemcpy(got.data(), dev_out.ptr, got.size(), cudaMemcpyDeviceToHost));
  void* want_ptr = want.data();
  defer::kernels::cpu::run_fused(p, l, in.host_ptrs.data(), &want_ptr, scalars.data());
  const std::vector<float> want_values = decode(t, want.data(), outputs);
  const std::vector<float> got_values = decode(t, got.data(), outputs);
  const double tol = t == DType::f32 ? 1e-5 : 1e-2;
  for (std::size_t r = 0; r < outputs; ++r) {
    if (std::isnan(want_values[r])) {
      ASSERT_TRUE(std::isnan(got_values[r])) << "output " << r;
    } else {
      ASSERT_NEAR(got_values[r], want_values[r], tol * (std::fabs(want_values[r]) + 1.0)) << "output " << r << " of "
                                                                                           << outputs;
    }
  }
  for (std::size_t b = outputs * e; b < got.size(); ++b)
    ASSERT_EQ(static_cast<unsigned char>(got[b]), poison_byte(t)) << "written past the end: byte " << b;
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
  for (const ReduceOp op : fused_reduce_ops())
    for (const Domain& d : domains)
      for (const std::size_t shift : {0u, 1u}) {
        SCOPED_TRACE(std::string(defer::kernels::name(op)) + ", " + d.what + ", shift " + std::to_string(shift));
        // in0 contiguous, in1 contiguous, in2 a bias broadcast over the reduced dim's neighbours
        FusedLayout l = with_reduce(make_layout(d.dims, 3), d.dims, d.dim);
        Strides bias{};
        bias[d.dims.size() - 1] = 1;
        l.strides[2] = bias;
        expect_reduce_matches_cpu(reduce_chain(op), l, shift, ++seed);
        Builder b(1);
        expect_reduce_matches_cpu(reducing(b.output(b.load(0)).program(), op),
                                  with_reduce(make_layout(d.dims, 1), d.dims, d.dim), shift, ++seed);
        if (::testing::Test::HasFatalFailure()) return;
      }
  // f16 and bf16 data: loaded as their own vectors, reduced in f32/double, stored rounding once.
  for (const DType half : {DType::f16, DType::bf16})
    for (const ReduceOp op : fused_reduce_ops())
      for (const Domain& d : {domains[0], domains[1], domains[4], domains[6]})
        for (const std::size_t shift : {0u, 1u}) {
          SCOPED_TRACE(dname(half) + " " + defer::kernels::name(op) + ", " + d.what + ", shift " + std::to_string(shift));
          FusedProgram p = reduce_chain(op);
          p.input_dtypes = {half, half, half};
          p.output_dtypes = {half};
          FusedLayout l = with_reduce(make_layout(d.dims, 3), d.dims, d.dim);
          Strides bias{};
          bias[d.dims.size() - 1] = 1;
          l.strides[2] = bias;
          expect_reduce_matches_cpu(p, l, shift, ++seed);
          if (::testing::Test::HasFatalFailure()) return;
        }
}

TEST(FusedLaunchGpu, ReductionNaNsAndEmptyRows) {
  if (!defer::cuda_available()) GTEST_SKIP() << "no CUDA device";
  // log of the negative elements: NaN in (nearly) every row, for every op and strategy
  Builder b(1);
  const FusedProgram logs = b.output(b.unary(ElementwiseOp::log, b.load(0))).program();
  for (const ReduceOp op : fused_reduce_ops()) {
    SCOPED_TRACE(defer::kernels::name(op));
    expect_reduce_matches_cpu(reducing(logs, op), with_reduce(make_layout({64, 100}, 1), {64, 100}, 1), 0, 1);
    expect_reduce_matches_cpu(reducing(logs, op), with_reduce(make_layout({100, 64}, 1), {100, 64}, 0), 0, 2);
    // n == 0: the empty reduction is written (0 for sum, NaN for mean, max and min), inputs unread
    const FusedLayout empty = with_reduce(make_layout({3, 0, 40}, 1, {{0, {0, 0, 0}}}), {3, 0, 40}, 1);
    DeviceBuffer out(124 * sizeof(float));
    CHECK_CUDA(cudaMemset(out.ptr, 0x7f, 124 * sizeof(float)));
    const void* in[1] = {nullptr};
    void* outs[1] = {out.ptr};
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
  const void* in[1] = {nullptr};
  void* out[1] = {nullptr};
  EXPECT_NO_THROW(defer::detail::launch_fused_cuda(b.program(), make_layout({0, 5}, 1), in, out, nullptr, nullptr, 0));
  FusedProgram bad = b.program();
  bad.outputs.clear();
  bad.output_dtypes.clear();
  EXPECT_THROW(defer::detail::launch_fused_cuda(bad, make_layout({4}, 1), in, out, nullptr, nullptr, 0),
               std::invalid_argument);
}

}  // namespace
