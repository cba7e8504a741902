// The CUDA C++ source of a fused program (see cuda_codegen.hpp): the embedded math of
// kernels/elementwise_math.h, the kernel argument's struct, typed loads and stores per input and
// output, the program's body, and the element-wise or reduce kernel around it.
#include <algorithm>
#include <string>
#include <vector>

#include "cuda/fused/cuda_codegen.hpp"

namespace defer::detail {
namespace {

using kernels::ElementwiseOp;
using kernels::FusedInstr;
using kernels::FusedKind;
using kernels::FusedLayout;
using kernels::FusedProgram;
using kernels::InputAccess;

std::string str(std::int64_t v) { return std::to_string(v); }

// The C type and conversion functions of a dtype in elementwise_math.h: defer_<name>_t,
// defer_load_<name>, defer_store_<name>, defer_round_<name>.
std::string storage_type(DType t) { return std::string("defer_") + dtype_name(t) + "_t"; }

// One instruction's right-hand side: the op's function of its operands and scalars, as the op
// table names it, rounded through the result's dtype unless that is f32; a cast is that rounding.
std::string op_expr(const FusedInstr& ins, const std::vector<std::string>& operands) {
  const kernels::ElementwiseInfo& info = kernels::info(ins.op);
  std::string e;
  if (ins.op == ElementwiseOp::to) {
    e = operands[0];
  } else {
    e = std::string(info.fn) + "(";
    for (int k = 0; k < info.tensors; ++k) e += (k ? ", " : "") + operands[static_cast<std::size_t>(k)];
    for (int k = 0; k < info.scalars; ++k) e += ", a.s[" + str(ins.s + k) + "]";
    e += ")";
  }
  if (ins.dtype == DType::f32) return e;
  return std::string("defer_round_") + dtype_name(ins.dtype) + "(" + e + ")";
}

const char* access_name(InputAccess a) {
  switch (a) {
    case InputAccess::flat: return "flat";
    case InputAccess::uniform: return "uniform (broadcast element 0)";
    case InputAccess::strided: return "strided";
  }
  return "?";
}

// Everything the generator needs to know about the inputs, derived once.
struct InputPlan {
  std::vector<InputAccess> access;
  std::vector<bool> used;          // loaded by some instruction
  std::vector<int> strided_slot;   // index into Args::stride, or -1
  bool vec4_capable = true;        // no input is strided, every flat input and output has a vector type
};

InputPlan plan_inputs(const FusedProgram& program, const FusedLayout& layout) {
  InputPlan p;
  const int n = program.num_inputs;
  p.access.resize(static_cast<std::size_t>(n));
  p.used.assign(static_cast<std::size_t>(n), false);
  p.strided_slot.assign(static_cast<std::size_t>(n), -1);
  for (const FusedInstr& ins : program.code)
    if (ins.kind == FusedKind::load) p.used[ins.a] = true;
  int slot = 0;
  for (int i = 0; i < n; ++i) {
    const auto u = static_cast<std::size_t>(i);
    p.access[u] = kernels::input_access(layout, u);
    if (p.access[u] == InputAccess::strided) {
      p.strided_slot[u] = slot++;
      p.vec4_capable = false;
    }
    if (p.used[u] && p.access[u] == InputAccess::flat && cuda_vector4_type(program.input_dtypes[u]) == nullptr)
      p.vec4_capable = false;
  }
  for (DType t : program.output_dtypes)
    if (cuda_vector4_type(t) == nullptr) p.vec4_capable = false;
  return p;
}

}  // namespace

namespace {

class SourceWriter {
 public:
  SourceWriter(const FusedProgram& program, const FusedLayout& layout, const std::string& name)
      : program_(program), layout_(layout), name_(name), inputs_(plan_inputs(program, layout)),
        shape_(cuda_args_layout(program, layout)) {}

  std::string write() {
    header();
    args_struct();
    out_ += "// ---- kernels/elementwise_math.h, verbatim -----------------------------------------------\n";
    out_ += kElementwiseMathSource;
    out_ += "\n// ---- the program ------------------------------------------------------------------------\n\n";
    io_functions();
    body();
    if (program_.reduction) {
      reduction_helpers();
      value_function();
      rows_function();
      if (!contiguous_rows()) columns_function();
      reduce_kernel();
      return std::move(out_);
    }
    if (shape_.strided > 0) strided_loop();
    kernel();
    return std::move(out_);
  }

 private:
  void line(const std::string& s) {
    out_ += s;
    out_ += '\n';
  }

  std::string value(std::size_t v) const {
    std::string s(1, 'v');  // (not "v" + ...: GCC 12 warns falsely of an overlapping memcpy there)
    s += std::to_string(v);
    return s;
  }

  void header() {
    line("// defer: fused element-wise kernel generated at run time (kernels/cuda/fused/cuda_source_writer.cpp).");
    line("// Only the program's structure is in this source: pointers, sizes, strides and scalar values");
    line("// are fields of the kernel's argument.");
    line("// Program (SSA, value i is defined by instruction i):");
    for (std::size_t i = 0; i < program_.code.size(); ++i) {
      const FusedInstr& ins = program_.code[i];
      std::string text = "//   " + value(i) + " = ";
      if (ins.kind == FusedKind::load) {
        text += "load in" + str(ins.a);
      } else {
        const kernels::ElementwiseInfo& info = kernels::info(ins.op);
        text += info.id;
        if (ins.dtype != DType::f32) text += std::string(" -> ") + dtype_name(ins.dtype);
        const std::uint16_t operands[] = {ins.a, ins.b, ins.c};
        for (int k = 0; k < info.tensors; ++k) text += (k ? ", " : " ") + value(operands[k]);
        for (int k = 0; k < info.scalars; ++k) text += ", s" + str(ins.s + k);
      }
      line(text);
    }
    for (std::size_t k = 0; k < program_.outputs.size(); ++k)
      line("//   out" + std::to_string(k) + " = " + value(program_.outputs[k]) + " as " +
           dtype_name(program_.output_dtypes[k]));
    if (program_.reduction)
      line("//   reduced: " + std::string(kernels::name(program_.reduction->op)) + " of " +
           value(program_.reduction->value) + (contiguous_rows() ? " along contiguous rows (inner == 1)" : " along a strided axis"));
    for (int i = 0; i < program_.num_inputs; ++i) {
      const auto u = static_cast<std::size_t>(i);
      std::string text = "// in" + str(i) + ": " + dtype_name(program_.input_dtypes[u]) + ", " + access_name(inputs_.access[u]);
      if (inputs_.access[u] == InputAccess::strided) text += " over " + str(layout_.ndim) + " dims";
      if (!inputs_.used[u]) text += ", unused";
      line(text);
    }
    line("");
  }

  void args_struct() {
    line("struct Args {");
    if (shape_.inputs > 0) line("  const void* in[" + str(shape_.inputs) + "];  // element pointers of the inputs' dtypes");
    line("  void* out[" + str(shape_.outputs) + "];");
    if (shape_.reduce) {
      line("  long long n;      // elements of the domain");
      line("  long long flags;  // bit 0: vector loads; bit 1: strided offsets fit in 32 bits; bit 2: a block (not a");
      line("                    // warp) per output row; bit 3: column tiles instead of rows");
      line("  long long outer, len, inner;  // the reduce split: e = (o * len + k) * inner + i");
    } else {
      line("  long long n;      // elements of the output");
      line("  long long flags;  // bit 0: the vector path runs; bit 1: strided offsets fit in 32 bits");
    }
    if (shape_.strided > 0) {
      line("  long long shape[" + str(shape_.ndim) + "];");
      line("  long long stride[" + str(shape_.strided) + "][" + str(shape_.ndim) + "];  // of the strided inputs, in order");
    }
    if (shape_.scalars > 0) line("  float s[" + str(shape_.scalars) + "];");
    line("};");
    line("static_assert(sizeof(Args) == " + std::to_string(shape_.bytes()) +
         ", \"defer: the kernel argument's layout differs from the host's\");");
    line("");
  }

  // defer_in<i>(a, k): element k of input i as f32; defer_out<k>(a, e, v): v stored as output k's dtype.
  void io_functions() {
    for (int i = 0; i < shape_.inputs; ++i) {
      const auto u = static_cast<std::size_t>(i);
      if (!inputs_.used[u]) continue;
      const DType t = program_.input_dtypes[u];
      line("__device__ __forceinline__ float defer_in" + str(i) + "(const Args& a, long long k) {");
      line("  return defer_load_" + std::string(dtype_name(t)) + "(static_cast<const " + storage_type(t) + "*>(a.in[" + str(i) +
           "])[k]);");
      line("}");
    }
    for (std::size_t k = 0; k < program_.outputs.size(); ++k) {
      const DType t = program_.output_dtypes[k];
      line("__device__ __forceinline__ void defer_out" + std::to_string(k) + "(const Args& a, long long e, float v) {");
      line("  static_cast<" + storage_type(t) + "*>(a.out[" + std::to_string(k) + "])[e] = defer_store_" +
           std::string(dtype_name(t)) + "(v);");
      line("}");
    }
    line("");
  }

  // defer_body computes the outputs of one element from its input values x (0 for unused inputs).
  void body() {
    const int nin = std::max(1, shape_.inputs);
    line("__device__ __forceinline__ void defer_body(const Args& a, const float (&x)[" + str(nin) + "], float (&y)[" +
         str(shape_.outputs) + "]) {");
    if (shape_.scalars == 0) line("  (void)a;");
    for (std::size_t i = 0; i < program_.code.size(); ++i) {
      const FusedInstr& ins = program_.code[i];
      std::string rhs;
      if (ins.kind == FusedKind::load) {
        rhs = "x[" + str(ins.a) + "]";
      } else {
        rhs = op_expr(ins, {value(ins.a), value(ins.b), value(ins.c)});
      }
      line("  const float " + value(i) + " = " + rhs + ";");
    }
    for (std::size_t k = 0; k < program_.outputs.size(); ++k)
      line("  y[" + std::to_string(k) + "] = " + value(program_.outputs[k]) + ";");
    line("}");
    line("");
  }

  // Declarations of the uniform inputs' values, read once per thread.
  void uniform_loads(const std::string& indent) {
    for (int i = 0; i < program_.num_inputs; ++i) {
      const auto u = static_cast<std::size_t>(i);
      if (inputs_.used[u] && inputs_.access[u] == InputAccess::uniform)
        line(indent + "const float u" + str(i) + " = defer_in" + str(i) + "(a, 0);");
    }
  }

  // The initializer of x for one element: flat inputs at `flat_index`, uniform ones from u<i> (or
  // u[i] when `uniform_array`, the reduce kernel's spelling), strided ones at their offsets o<slot>
  // (0 when !strided_offsets: no strided input exists there), unused ones 0.
  std::string x_init(const std::string& flat_index, bool strided_offsets, bool uniform_array = false) const {
    std::string s = "{";
    const int nin = std::max(1, shape_.inputs);
    for (int i = 0; i < nin; ++i) {
      if (i > 0) s += ", ";
      const auto u = static_cast<std::size_t>(i);
      if (i >= shape_.inputs || !inputs_.used[u]) {
        s += "0.f";
        continue;
      }
      switch (inputs_.access[u]) {
        case InputAccess::flat: s += "defer_in" + str(i) + "(a, " + flat_index + ")"; break;
        case InputAccess::uniform: s += uniform_array ? "u[" + str(i) + "]" : "u" + str(i); break;
        case InputAccess::strided:
          s += strided_offsets ? "defer_in" + str(i) + "(a, o" + str(inputs_.strided_slot[u]) + ")" : "0.f";
          break;
      }
    }
    return s + "}";
  }

  void store_outputs(const std::string& indent, const std::string& index) {
    for (std::size_t k = 0; k < program_.outputs.size(); ++k)
      line(indent + "defer_out" + std::to_string(k) + "(a, " + index + ", y[" + std::to_string(k) + "]);");
  }

  // Declares o0, o1, ... : the offsets of the strided inputs at the domain's flat row-major element
  // `flat`, peeling one coordinate per dim off it (innermost first), in Index arithmetic; every
  // line starts with `in`.
  void strided_offsets(const std::string& flat, const std::string& in) {
    line(in + "Index rest = static_cast<Index>(" + flat + ");");
    for (int j = 0; j < shape_.strided; ++j) line(in + "Index o" + str(j) + " = 0;");
    for (int d = shape_.ndim - 1; d >= 0; --d) {
      const std::string dd = str(d);
      std::string coord = "rest";
      if (d > 0) {
        line(in + "{");
        line(in + "  const Index extent = static_cast<Index>(a.shape[" + dd + "]);");
        line(in + "  const Index quotient = rest / extent;");
        line(in + "  const Index c = rest - quotient * extent;");
        line(in + "  rest = quotient;");
        coord = "c";
      }
      const std::string indent = d > 0 ? in + "  " : in;
      for (int j = 0; j < shape_.strided; ++j)
        line(indent + "o" + str(j) + " += " + coord + " * static_cast<Index>(a.stride[" + str(j) + "][" + dd + "]);");
      if (d > 0) line(in + "}");
    }
  }

  // Elements in [first, n) by a grid stride, reading strided inputs at offsets computed from the
  // row-major multi-index, in Index arithmetic (32-bit when the host proved every offset fits: a
  // 64-bit division costs several times a 32-bit one).
  void strided_loop() {
    line("template <class Index>");
    line("__device__ __forceinline__ void defer_strided(const Args& a, long long first, long long step) {");
    uniform_loads("  ");
    line("  for (long long i = first; i < a.n; i += step) {");
    strided_offsets("i", "    ");
    line("    const float x[" + str(std::max(1, shape_.inputs)) + "] = " + x_init("i", true) + ";");
    line("    float y[" + str(shape_.outputs) + "];");
    line("    defer_body(a, x, y);");
    store_outputs("    ", "i");
    line("  }");
    line("}");
    line("");
  }

  void kernel() {
    line("extern \"C\" __global__ void __launch_bounds__(" + str(kCudaFusedThreads) + ") " + name_ + "(const Args a) {");
    line("  const long long step = static_cast<long long>(gridDim.x) * blockDim.x;");
    line("  const long long first = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;");
    if (shape_.strided > 0) {
      line("  if (a.flags & 2) {");
      line("    defer_strided<unsigned int>(a, first, step);");
      line("  } else {");
      line("    defer_strided<long long>(a, first, step);");
      line("  }");
      line("}");
      return;
    }
    uniform_loads("  ");
    line("  long long done = 0;");
    if (inputs_.vec4_capable) vec4_loop();
    line("  for (long long i = done + first; i < a.n; i += step) {");
    line("    const float x[" + str(std::max(1, shape_.inputs)) + "] = " + x_init("i", false) + ";");
    line("    float y[" + str(shape_.outputs) + "];");
    line("    defer_body(a, x, y);");
    store_outputs("    ", "i");
    line("  }");
    line("}");
  }

  // Every flat input and every output is aligned to four of its elements (bit 0 of flags, checked
  // at launch): the first n / 4 * 4 elements move as 4-element vectors (float4, ushort4 for f16 and
  // bf16: 16 or 8 bytes a load), the tail loop does the rest.
  void vec4_loop() {
    line("  if (a.flags & 1) {");
    line("    const long long n4 = a.n >> 2;");
    line("    for (long long q = first; q < n4; q += step) {");
    vector_loads("      ", "q");
    for (std::size_t k = 0; k < program_.outputs.size(); ++k)
      line("      " + std::string(cuda_vector4_type(program_.output_dtypes[k])) + " r" + std::to_string(k) + ";");
    for (const char lane : {'x', 'y', 'z', 'w'}) {
      line("      {");
      line("        const float x[" + str(std::max(1, shape_.inputs)) + "] = " + vector_x(lane, "u") + ";");
      line("        float y[" + str(shape_.outputs) + "];");
      line("        defer_body(a, x, y);");
      for (std::size_t k = 0; k < program_.outputs.size(); ++k)
        line("        r" + std::to_string(k) + "." + lane + " = defer_store_" + dtype_name(program_.output_dtypes[k]) + "(y[" +
             std::to_string(k) + "]);");
      line("      }");
    }
    for (std::size_t k = 0; k < program_.outputs.size(); ++k) {
      const std::string v = cuda_vector4_type(program_.output_dtypes[k]);
      line("      static_cast<" + v + "*>(a.out[" + std::to_string(k) + "])[q] = r" + std::to_string(k) + ";");
    }
    line("    }");
    line("    done = n4 << 2;");
    line("  }");
  }

  // p<i> = vector `at` of every used flat input.
  void vector_loads(const std::string& indent, const std::string& at) {
    for (int i = 0; i < shape_.inputs; ++i) {
      const auto u = static_cast<std::size_t>(i);
      if (!inputs_.used[u] || inputs_.access[u] != InputAccess::flat) continue;
      const std::string v = cuda_vector4_type(program_.input_dtypes[u]);
      line(indent + "const " + v + " p" + str(i) + " = static_cast<const " + v + "*>(a.in[" + str(i) + "])[" + at + "];");
    }
  }

  // The initializer of x for one lane of the vectors: flat inputs from p<i>.lane, uniform ones
  // from `uniform`<i> (or `uniform`[i] when it ends in '['), unused ones 0.
  std::string vector_x(char lane, const std::string& uniform) const {
    std::string x = "{";
    const int nin = std::max(1, shape_.inputs);
    for (int i = 0; i < nin; ++i) {
      if (i > 0) x += ", ";
      const auto u = static_cast<std::size_t>(i);
      if (i >= shape_.inputs || !inputs_.used[u]) {
        x += "0.f";
      } else if (inputs_.access[u] == InputAccess::uniform) {
        x += uniform == "u[" ? "u[" + str(i) + "]" : uniform + str(i);
      } else {
        x += "defer_load_" + std::string(dtype_name(program_.input_dtypes[u])) + "(p" + str(i) + "." + lane + ")";
      }
    }
    return x + "}";
  }

  // ---- reductions ----------------------------------------------------------------------------
  // The element-wise body runs per domain element inside the reduce loops (defer_value); the value
  // is folded into a per-thread accumulator, then across the threads that share an output. Two
  // strategies, chosen per launch by flags: rows (a warp, or the whole block for long rows, owns
  // output r = o * inner + i and walks k; contiguous when inner == 1, where the source is
  // specialized and may load float4), and column tiles (inner > 1: 32 neighbouring outputs per
  // block, lanes on i so every warp load is coalesced, 8 thread rows splitting k and meeting in
  // shared memory). Accumulation as in kernels/cuda/reduce.cu: double for sum and mean, a NaN-
  // propagating float max.

  bool contiguous_rows() const { return layout_.reduce.inner == 1; }
  void reduction_helpers() {
    const kernels::ReduceOp op = program_.reduction->op;
    if (op == kernels::ReduceOp::max || op == kernels::ReduceOp::min) {
      const bool max = op == kernels::ReduceOp::max;
      // (NVRTC has no <cmath>: infinities and NaN are spelled as bit patterns.)
      line("typedef float Acc;");
      line(std::string("__device__ __forceinline__ Acc defer_identity() { return __int_as_float(") +
           (max ? "0xff800000); }  // -inf" : "0x7f800000); }  // +inf"));
      line(std::string("__device__ __forceinline__ Acc defer_combine(Acc a, Acc b) { return ") +
           (max ? "defer_maximum" : "defer_minimum") + "(a, b); }");
      line("__device__ __forceinline__ float defer_finish(Acc acc, long long n) { return n == 0 ? __int_as_float(0x7fc00000) : acc; }");
    } else {
      line("typedef double Acc;");
      line("__device__ __forceinline__ Acc defer_identity() { return 0.0; }");
      line("__device__ __forceinline__ Acc defer_combine(Acc a, Acc b) { return a + b; }");
      if (program_.reduction->op == kernels::ReduceOp::mean)
        line("__device__ __forceinline__ float defer_finish(Acc acc, long long n) { return n == 0 ? __int_as_float(0x7fc00000) : static_cast<float>(acc / static_cast<double>(n)); }");
      else
        line("__device__ __forceinline__ float defer_finish(Acc acc, long long) { return static_cast<float>(acc); }");
    }
    line("");
  }

  // The reduced value at domain element e; strided inputs' offsets in Index arithmetic.
  void value_function() {
    line("template <class Index>");
    line("__device__ __forceinline__ float defer_value(const Args& a, const float* u, long long e) {");
    if (shape_.strided > 0) strided_offsets("e", "  ");
    line("  const float x[" + str(std::max(1, shape_.inputs)) + "] = " + x_init("e", true, true) + ";");
    line("  float y[1];");
    line("  defer_body(a, x, y);");
    line("  return y[0];");
    line("}");
    line("");
  }

  // Folds elements base + k * step for k = first, first + stride, ... below a.len into acc, four
  // loads in flight per thread.
  void fold_loop(const std::string& indent, const std::string& first, const std::string& stride,
                 const std::string& step) {
    auto at = [&](const std::string& k) { return "defer_value<Index>(a, u, base + (" + k + ") * " + step + ")"; };
    line(indent + "long long k = " + first + ";");
    line(indent + "for (; k + 3 * " + stride + " < a.len; k += 4 * " + stride + ") {");
    line(indent + "  const float v0 = " + at("k") + ";");
    line(indent + "  const float v1 = " + at("k + " + stride) + ";");
    line(indent + "  const float v2 = " + at("k + 2 * " + stride) + ";");
    line(indent + "  const float v3 = " + at("k + 3 * " + stride) + ";");
    line(indent + "  acc = defer_combine(defer_combine(acc, v0), v1);");
    line(indent + "  acc = defer_combine(defer_combine(acc, v2), v3);");
    line(indent + "}");
    line(indent + "for (; k < a.len; k += " + stride + ") acc = defer_combine(acc, " + at("k") + ");");
  }

  // Vector loads of a contiguous row (inner == 1, every input flat or uniform): the host sets
  // flag bit 0 only when len % 4 == 0 and every flat input is aligned to four elements, so that a
  // row's first element starts a vector.
  bool rows_vec4() const { return contiguous_rows() && inputs_.vec4_capable; }

  void vec4_fold(const std::string& indent) {
    bool flat = false;  // base4 addresses the flat inputs' vectors; without any, it is not declared
    for (int i = 0; i < shape_.inputs; ++i)
      flat = flat || (inputs_.used[static_cast<std::size_t>(i)] && inputs_.access[static_cast<std::size_t>(i)] == InputAccess::flat);
    line(indent + (flat ? "const long long base4 = base >> 2, len4 = a.len >> 2;" : "const long long len4 = a.len >> 2;"));
    line(indent + "for (long long q = lane; q < len4; q += group) {");
    vector_loads(indent + "  ", "base4 + q");
    for (const char lane : {'x', 'y', 'z', 'w'}) {
      line(indent + "  {");
      line(indent + "    const float x[" + str(std::max(1, shape_.inputs)) + "] = " + vector_x(lane, "u[") + ";");
      line(indent + "    float y[1];");
      line(indent + "    defer_body(a, x, y);");
      line(indent + "    acc = defer_combine(acc, y[0]);");
      line(indent + "  }");
    }
    line(indent + "}");
  }

  void rows_function() {
    line("// Rows: `group` threads (a warp, or the block: flag bit 2) own output r and walk its len elements.");
    line("template <class Index>");
    line("__device__ __forceinline__ void defer_rows(const Args& a, const float* u) {");
    line("  __shared__ Acc part[" + str(kCudaFusedThreads / 32) + "];");
    line("  const int group = (a.flags & 4) ? " + str(kCudaFusedThreads) + " : 32;");
    line("  const int lane = static_cast<int>(threadIdx.x) & (group - 1);");
    line("  const long long per_block = " + str(kCudaFusedThreads) + " / group;");
    line("  const long long outputs = a.outer * a.inner;");
    line("  for (long long r0 = static_cast<long long>(blockIdx.x) * per_block; r0 < outputs; r0 += static_cast<long long>(gridDim.x) * per_block) {");
    line("    const long long r = r0 + threadIdx.x / group;");
    line("    Acc acc = defer_identity();");
    line("    if (r < outputs) {");
    if (contiguous_rows()) {
      line("      const long long base = r * a.len;");
      if (rows_vec4()) {
        line("      if (a.flags & 1) {");
        vec4_fold("        ");
        line("      } else {");
        fold_loop("        ", "lane", "group", "1");
        line("      }");
      } else {
        fold_loop("      ", "lane", "group", "1");
      }
    } else {
      line("      const long long o = r / a.inner;");
      line("      const long long base = o * a.len * a.inner + (r - o * a.inner);");
      fold_loop("      ", "lane", "group", "a.inner");
    }
    line("    }");
    line("    for (int offset = 16; offset > 0; offset /= 2) acc = defer_combine(acc, __shfl_xor_sync(0xffffffffu, acc, offset));");
    line("    if (group == " + str(kCudaFusedThreads) + ") {  // the warps of the block meet in shared memory");
    line("      if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;");
    line("      __syncthreads();");
    line("      if (threadIdx.x == 0) {");
    line("        acc = part[0];");
    line("        for (int w = 1; w < " + str(kCudaFusedThreads / 32) + "; ++w) acc = defer_combine(acc, part[w]);");
    line("      }");
    line("      __syncthreads();  // part is rewritten for the next row");
    line("    }");
    line("    if (lane == 0 && r < outputs) defer_out0(a, r, defer_finish(acc, a.len));");
    line("  }");
    line("}");
    line("");
  }

  void columns_function() {
    line("// Column tiles: 32 neighbouring outputs (o, i..i+31) per block; lanes walk i (coalesced), the");
    line("// 8 warps split k and meet in shared memory.");
    line("template <class Index>");
    line("__device__ __forceinline__ void defer_columns(const Args& a, const float* u) {");
    line("  __shared__ Acc part[" + str(kCudaFusedThreads / 32) + "][32];");
    line("  const int tx = static_cast<int>(threadIdx.x) & 31, ty = static_cast<int>(threadIdx.x) >> 5;");
    line("  const long long col_tiles = (a.inner + 31) >> 5;");
    line("  const long long tiles = a.outer * col_tiles;");
    line("  for (long long t = blockIdx.x; t < tiles; t += gridDim.x) {");
    line("    const long long o = t / col_tiles;");
    line("    const long long i = (t - o * col_tiles) * 32 + tx;");
    line("    Acc acc = defer_identity();");
    line("    if (i < a.inner) {");
    line("      const long long base = o * a.len * a.inner + i;");
    fold_loop("      ", "ty", str(kCudaFusedThreads / 32), "a.inner");
    line("    }");
    line("    part[ty][tx] = acc;");
    line("    __syncthreads();");
    line("    if (ty == 0 && i < a.inner) {");
    line("      for (int w = 1; w < " + str(kCudaFusedThreads / 32) + "; ++w) acc = defer_combine(acc, part[w][tx]);");
    line("      defer_out0(a, o * a.inner + i, defer_finish(acc, a.len));");
    line("    }");
    line("    __syncthreads();  // part is rewritten by the next tile");
    line("  }");
    line("}");
    line("");
  }

  void reduce_kernel() {
    line("extern \"C\" __global__ void __launch_bounds__(" + str(kCudaFusedThreads) + ") " + name_ + "(const Args a) {");
    // Uniform inputs are read once per thread; not at all for an empty domain (n == 0 with outputs
    // to write), whose input pointers need not point anywhere.
    std::string u = "{";
    const int nin = std::max(1, shape_.inputs);
    for (int i = 0; i < nin; ++i) {
      if (i > 0) u += ", ";
      const auto k = static_cast<std::size_t>(i);
      if (i < shape_.inputs && inputs_.used[k] && inputs_.access[k] == InputAccess::uniform)
        u += "a.n > 0 ? defer_in" + str(i) + "(a, 0) : 0.f";
      else
        u += "0.f";
    }
    line("  const float u[" + str(nin) + "] = " + u + "};");
    auto dispatch = [&](const std::string& fn, const std::string& indent) {
      if (shape_.strided > 0) {
        line(indent + "if (a.flags & 2) " + fn + "<unsigned int>(a, u);");
        line(indent + "else " + fn + "<long long>(a, u);");
      } else {
        line(indent + fn + "<long long>(a, u);");
      }
    };
    if (!contiguous_rows()) {
      line("  if (a.flags & 8) {");
      dispatch("defer_columns", "    ");
      line("    return;");
      line("  }");
    }
    dispatch("defer_rows", "  ");
    line("}");
  }

  const FusedProgram& program_;
  const FusedLayout& layout_;
  const std::string& name_;
  InputPlan inputs_;
  CudaArgsLayout shape_;
  std::string out_;
};

}  // namespace

std::string generate_cuda_source(const FusedProgram& program, const FusedLayout& layout,
                                 const std::string& kernel_name) {
  kernels::validate(program, layout);
  return SourceWriter(program, layout, kernel_name).write();
}

}  // namespace defer::detail
