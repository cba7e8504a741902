#include "graph/fusion/cuda_codegen.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string_view>
#include <vector>

namespace defer::detail {
namespace {

using kernels::BinaryOp;
using kernels::FusedInstr;
using kernels::FusedKind;
using kernels::FusedLayout;
using kernels::FusedProgram;
using kernels::kMaxDims;
using kernels::UnaryOp;

constexpr int kUnaryOpCount = static_cast<int>(UnaryOp::gelu_tanh) + 1;
constexpr int kBinaryOpCount = static_cast<int>(BinaryOp::minimum) + 1;
constexpr int kReduceOpCount = static_cast<int>(kernels::ReduceOp::max) + 1;

static_assert(sizeof(void*) == 8, "the kernel argument layout assumes 64-bit pointers");

[[noreturn]] void reject(const std::string& why) {
  throw std::invalid_argument("defer: fused CUDA kernel: " + why);
}

std::string str(std::int64_t v) { return std::to_string(v); }

// The kernel argument, as the generated struct declares it: 8-byte words first (pointers, n, flags,
// shape, strides), then the float scalars, so that no field is ever padded and the host can write
// the same bytes without knowing any ABI rule beyond "arrays are contiguous".
struct ArgsShape {
  int inputs = 0;
  int outputs = 0;
  int scalars = 0;
  int ndim = 0;     // dims of shape/stride words; 0 when no input is strided
  int strided = 0;  // inputs read through strides
  bool reduce = false;  // three more words: the reduce split (outer, len, inner)
  std::size_t words() const {
    return static_cast<std::size_t>(inputs + outputs + 2 + (reduce ? 3 : 0) + (strided > 0 ? ndim * (1 + strided) : 0));
  }
  std::size_t bytes() const {
    const std::size_t raw = 8 * words() + 4 * static_cast<std::size_t>(scalars);
    return (raw + 7) / 8 * 8;
  }
};

ArgsShape args_shape(const FusedProgram& program, const FusedLayout& layout) {
  ArgsShape s;
  s.inputs = program.num_inputs;
  s.outputs = static_cast<int>(program.outputs.size());
  s.scalars = program.num_scalars;
  for (int i = 0; i < s.inputs; ++i)
    if (cuda_input_access(layout, i) == CudaInputAccess::strided) ++s.strided;
  s.ndim = s.strided > 0 ? layout.ndim : 0;
  s.reduce = program.reduction.has_value();
  return s;
}

void put_u16(std::string& out, std::uint16_t v) {
  out.push_back(static_cast<char>(v & 0xff));
  out.push_back(static_cast<char>(v >> 8));
}

// ---- source pieces ---------------------------------------------------------------------------

// The element-wise math of kernels/cuda/elementwise.cu, written the same way (see the comments
// there), so that a fused kernel and the unfused kernels agree bit for bit. Where a product leaves a
// helper it is formed with __fmul_rn, and every binary op uses the _rn intrinsics: NVCC never
// contracts those into an FMA, so fusing never merges the rounding of two separate ops.
constexpr std::string_view kHelpers = R"(// exp only ever sees a non-positive argument: no overflow, and 1 - sigmoid is never formed.
__device__ __forceinline__ float defer_sigmoid(float x) {
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  const float e = expf(x);
  return e / (1.f + e);
}
__device__ __forceinline__ float defer_relu(float x) { return x < 0.f ? 0.f : x; }  // NaN passes through
__device__ __forceinline__ float defer_silu(float x) { return __fmul_rn(x, defer_sigmoid(x)); }
// x * Phi(x) = 0.5 x erfc(z), z = -x / sqrt 2 formed in double; the part of z lost to float rounding
// (dz) is added back to first order (erfc' = -2/sqrt(pi) exp(-z^2)).
__device__ __forceinline__ float defer_gelu(float x) {
  const double zd = -0.70710678118654752440 * static_cast<double>(x);
  const float z = static_cast<float>(zd);
  const float dz = fabsf(z) < 16.f ? static_cast<float>(zd - static_cast<double>(z)) : 0.f;
  const float tail = erfcf(z) - 1.1283791670955126f * expf(-z * z) * dz;
  return __fmul_rn(__fmul_rn(0.5f, x), tail);
}
// 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3); 2u formed in double.
__device__ __forceinline__ float defer_gelu_tanh(float x) {
  const double xd = x;
  const float two_u = static_cast<float>(1.5957691216057307117 * xd * (1.0 + 0.044715 * xd * xd));
  return __fmul_rn(x, defer_sigmoid(two_u));
}
// fmaxf/fminf drop a NaN operand; maximum/minimum propagate it (a + b is NaN when either is).
__device__ __forceinline__ float defer_maximum(float a, float b) { return (a != a || b != b) ? a + b : fmaxf(a, b); }
__device__ __forceinline__ float defer_minimum(float a, float b) { return (a != a || b != b) ? a + b : fminf(a, b); }
)";

std::string unary_expr(UnaryOp op, const std::string& x) {
  switch (op) {
    case UnaryOp::neg: return "-" + x;
    case UnaryOp::abs: return "fabsf(" + x + ")";
    case UnaryOp::exp: return "expf(" + x + ")";
    case UnaryOp::log: return "logf(" + x + ")";
    case UnaryOp::sqrt: return "sqrtf(" + x + ")";
    case UnaryOp::tanh: return "tanhf(" + x + ")";
    case UnaryOp::sigmoid: return "defer_sigmoid(" + x + ")";
    case UnaryOp::relu: return "defer_relu(" + x + ")";
    case UnaryOp::silu: return "defer_silu(" + x + ")";
    case UnaryOp::gelu: return "defer_gelu(" + x + ")";
    case UnaryOp::gelu_tanh: return "defer_gelu_tanh(" + x + ")";
  }
  reject("unknown unary op");  // unreachable after check_cuda_fusable
}

std::string binary_expr(BinaryOp op, const std::string& a, const std::string& b) {
  const std::string args = "(" + a + ", " + b + ")";
  switch (op) {
    case BinaryOp::add: return "__fadd_rn" + args;
    case BinaryOp::sub: return "__fsub_rn" + args;
    case BinaryOp::mul: return "__fmul_rn" + args;
    case BinaryOp::div: return "__fdiv_rn" + args;
    case BinaryOp::maximum: return "defer_maximum" + args;
    case BinaryOp::minimum: return "defer_minimum" + args;
  }
  reject("unknown binary op");  // unreachable after check_cuda_fusable
}

const char* access_name(CudaInputAccess a) {
  switch (a) {
    case CudaInputAccess::flat: return "flat";
    case CudaInputAccess::uniform: return "uniform (broadcast element 0)";
    case CudaInputAccess::strided: return "strided";
  }
  return "?";
}

// Everything the generator needs to know about the inputs, derived once.
struct InputPlan {
  std::vector<CudaInputAccess> access;
  std::vector<bool> used;          // loaded by some instruction
  std::vector<int> strided_slot;   // index into Args::stride, or -1
  bool vec4_capable = true;        // no input is strided
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
    p.access[u] = cuda_input_access(layout, i);
    if (p.access[u] == CudaInputAccess::strided) {
      p.strided_slot[u] = slot++;
      p.vec4_capable = false;
    }
  }
  return p;
}

class SourceWriter {
 public:
  SourceWriter(const FusedProgram& program, const FusedLayout& layout, const std::string& name)
      : program_(program), layout_(layout), name_(name), inputs_(plan_inputs(program, layout)),
        shape_(args_shape(program, layout)) {}

  std::string write() {
    header();
    args_struct();
    out_ += kHelpers;
    out_ += "\n";
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
    line("// defer: fused element-wise kernel generated at run time (src/graph/fusion/cuda_codegen.cpp).");
    line("// Only the program's structure is in this source: pointers, sizes, strides and scalar values");
    line("// are fields of the kernel's argument.");
    line("// Program (SSA, value i is defined by instruction i):");
    for (std::size_t i = 0; i < program_.code.size(); ++i) {
      const FusedInstr& ins = program_.code[i];
      std::string text = "//   " + value(i) + " = ";
      switch (ins.kind) {
        case FusedKind::load: text += "load in" + str(ins.a); break;
        case FusedKind::unary: text += std::string(kernels::name(static_cast<UnaryOp>(ins.op))) + " " + value(ins.a); break;
        case FusedKind::binary:
          text += std::string(kernels::name(static_cast<BinaryOp>(ins.op))) + " " + value(ins.a) + ", " + value(ins.b);
          break;
        case FusedKind::binary_scalar:
          text += std::string(kernels::name(static_cast<BinaryOp>(ins.op))) + " " + value(ins.a) + ", s" + str(ins.b);
          break;
      }
      line(text);
    }
    for (std::size_t k = 0; k < program_.outputs.size(); ++k)
      line("//   out" + std::to_string(k) + " = " + value(program_.outputs[k]));
    if (program_.reduction)
      line("//   reduced: " + std::string(kernels::name(program_.reduction->op)) + " of " +
           value(program_.reduction->value) + (contiguous_rows() ? " along contiguous rows (inner == 1)" : " along a strided axis"));
    for (int i = 0; i < program_.num_inputs; ++i) {
      const auto u = static_cast<std::size_t>(i);
      std::string text = "// in" + str(i) + ": " + access_name(inputs_.access[u]);
      if (inputs_.access[u] == CudaInputAccess::strided) text += " over " + str(layout_.ndim) + " dims";
      if (!inputs_.used[u]) text += ", unused";
      line(text);
    }
    line("");
  }

  void args_struct() {
    line("struct Args {");
    if (shape_.inputs > 0) line("  const float* in[" + str(shape_.inputs) + "];");
    line("  float* out[" + str(shape_.outputs) + "];");
    if (shape_.reduce) {
      line("  long long n;      // elements of the domain");
      line("  long long flags;  // bit 0: float4 loads; bit 1: strided offsets fit in 32 bits; bit 2: a block (not a");
      line("                    // warp) per output row; bit 3: column tiles instead of rows");
      line("  long long outer, len, inner;  // the reduce split: e = (o * len + k) * inner + i");
    } else {
      line("  long long n;      // elements of the output");
      line("  long long flags;  // bit 0: the float4 path runs; bit 1: strided offsets fit in 32 bits");
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

  // defer_body computes the outputs of one element from its input values x (0 for unused inputs).
  void body() {
    const int nin = std::max(1, shape_.inputs);
    line("__device__ __forceinline__ void defer_body(const Args& a, const float (&x)[" + str(nin) + "], float (&y)[" +
         str(shape_.outputs) + "]) {");
    if (shape_.scalars == 0) line("  (void)a;");
    for (std::size_t i = 0; i < program_.code.size(); ++i) {
      const FusedInstr& ins = program_.code[i];
      std::string rhs;
      switch (ins.kind) {
        case FusedKind::load: rhs = "x[" + str(ins.a) + "]"; break;
        case FusedKind::unary: rhs = unary_expr(static_cast<UnaryOp>(ins.op), value(ins.a)); break;
        case FusedKind::binary: rhs = binary_expr(static_cast<BinaryOp>(ins.op), value(ins.a), value(ins.b)); break;
        case FusedKind::binary_scalar:
          rhs = binary_expr(static_cast<BinaryOp>(ins.op), value(ins.a), "a.s[" + str(ins.b) + "]");
          break;
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
      if (inputs_.used[u] && inputs_.access[u] == CudaInputAccess::uniform)
        line(indent + "const float u" + str(i) + " = a.in[" + str(i) + "][0];");
    }
  }

  // The initializer of x for element i; `strided_offset(slot)` names a strided input's offset.
  std::string x_init(const std::string& flat_index, bool strided_offsets) const {
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
        case CudaInputAccess::flat: s += "a.in[" + str(i) + "][" + flat_index + "]"; break;
        case CudaInputAccess::uniform: s += "u" + str(i); break;
        case CudaInputAccess::strided:
          s += strided_offsets ? "a.in[" + str(i) + "][o" + str(inputs_.strided_slot[u]) + "]" : "0.f";
          break;
      }
    }
    return s + "}";
  }

  void store_outputs(const std::string& indent, const std::string& index) {
    for (std::size_t k = 0; k < program_.outputs.size(); ++k)
      line(indent + "a.out[" + std::to_string(k) + "][" + index + "] = y[" + std::to_string(k) + "];");
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

  // Every flat input and every output is 16-byte aligned (bit 0 of flags, checked at launch): the
  // first n / 4 * 4 elements move as float4, the tail loop does the rest.
  void vec4_loop() {
    line("  if (a.flags & 1) {");
    line("    const long long n4 = a.n >> 2;");
    line("    for (long long q = first; q < n4; q += step) {");
    for (int i = 0; i < shape_.inputs; ++i) {
      const auto u = static_cast<std::size_t>(i);
      if (inputs_.used[u] && inputs_.access[u] == CudaInputAccess::flat)
        line("      const float4 p" + str(i) + " = reinterpret_cast<const float4*>(a.in[" + str(i) + "])[q];");
    }
    for (std::size_t k = 0; k < program_.outputs.size(); ++k) line("      float4 r" + std::to_string(k) + ";");
    for (const char lane : {'x', 'y', 'z', 'w'}) {
      std::string x = "{";
      const int nin = std::max(1, shape_.inputs);
      for (int i = 0; i < nin; ++i) {
        if (i > 0) x += ", ";
        const auto u = static_cast<std::size_t>(i);
        if (i >= shape_.inputs || !inputs_.used[u])
          x += "0.f";
        else if (inputs_.access[u] == CudaInputAccess::uniform)
          x += "u" + str(i);
        else
          x += "p" + str(i) + "." + lane;
      }
      x += "}";
      line("      {");
      line("        const float x[" + str(nin) + "] = " + x + ";");
      line("        float y[" + str(shape_.outputs) + "];");
      line("        defer_body(a, x, y);");
      for (std::size_t k = 0; k < program_.outputs.size(); ++k)
        line("        r" + std::to_string(k) + "." + lane + " = y[" + std::to_string(k) + "];");
      line("      }");
    }
    for (std::size_t k = 0; k < program_.outputs.size(); ++k)
      line("      reinterpret_cast<float4*>(a.out[" + std::to_string(k) + "])[q] = r" + std::to_string(k) + ";");
    line("    }");
    line("    done = n4 << 2;");
    line("  }");
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
  bool reduce_max() const { return program_.reduction->op == kernels::ReduceOp::max; }

  void reduction_helpers() {
    if (reduce_max()) {
      // (NVRTC has no <cmath>: -inf and NaN are spelled as bit patterns.)
      line("typedef float Acc;");
      line("__device__ __forceinline__ Acc defer_identity() { return __int_as_float(0xff800000); }  // -inf");
      line("__device__ __forceinline__ Acc defer_combine(Acc a, Acc b) { return defer_maximum(a, b); }");
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
    line("  const float x[" + str(std::max(1, shape_.inputs)) + "] = " + reduce_x_init() + ";");
    line("  float y[1];");
    line("  defer_body(a, x, y);");
    line("  return y[0];");
    line("}");
    line("");
  }

  // x for defer_value: flat inputs at e, uniform ones from u, strided ones at their offsets.
  std::string reduce_x_init() const {
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
        case CudaInputAccess::flat: s += "a.in[" + str(i) + "][e]"; break;
        case CudaInputAccess::uniform: s += "u[" + str(i) + "]"; break;
        case CudaInputAccess::strided: s += "a.in[" + str(i) + "][o" + str(inputs_.strided_slot[u]) + "]"; break;
      }
    }
    return s + "}";
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

  // float4 loads of a contiguous row (inner == 1, every input flat or uniform): the host sets
  // flag bit 0 only when len % 4 == 0 and every flat input is 16-byte aligned, so that a row's
  // first element starts a float4.
  bool rows_vec4() const { return contiguous_rows() && inputs_.vec4_capable; }

  void vec4_fold(const std::string& indent) {
    line(indent + "const long long base4 = base >> 2, len4 = a.len >> 2;");
    line(indent + "for (long long q = lane; q < len4; q += group) {");
    for (int i = 0; i < shape_.inputs; ++i) {
      const auto u = static_cast<std::size_t>(i);
      if (inputs_.used[u] && inputs_.access[u] == CudaInputAccess::flat)
        line(indent + "  const float4 p" + str(i) + " = reinterpret_cast<const float4*>(a.in[" + str(i) + "])[base4 + q];");
    }
    for (const char lane : {'x', 'y', 'z', 'w'}) {
      std::string x = "{";
      const int nin = std::max(1, shape_.inputs);
      for (int i = 0; i < nin; ++i) {
        if (i > 0) x += ", ";
        const auto u = static_cast<std::size_t>(i);
        if (i >= shape_.inputs || !inputs_.used[u]) x += "0.f";
        else if (inputs_.access[u] == CudaInputAccess::uniform) x += "u[" + str(i) + "]";
        else {
          x += 'p';
          x += str(i);
          x += '.';
          x += lane;
        }
      }
      line(indent + "  {");
      line(indent + "    const float x[" + str(nin) + "] = " + x + "};");
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
    line("    if (lane == 0 && r < outputs) a.out[0][r] = defer_finish(acc, a.len);");
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
    line("      a.out[0][o * a.inner + i] = defer_finish(acc, a.len);");
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
      if (i < shape_.inputs && inputs_.used[k] && inputs_.access[k] == CudaInputAccess::uniform)
        u += "a.n > 0 ? a.in[" + str(i) + "][0] : 0.f";
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
  ArgsShape shape_;
  std::string out_;
};

// Rows longer than this get a whole block, shorter ones a warp (eight rows per block), as in
// kernels/cuda/reduce.cu.
constexpr std::int64_t kWarpRowMax = 1024;
constexpr std::int64_t kRowsPerWarpBlock = kCudaFusedThreads / 32;

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

void put_word(std::span<std::byte> buffer, std::size_t word, const void* value) {
  std::memcpy(buffer.data() + 8 * word, value, 8);
}

}  // namespace

CudaInputAccess cuda_input_access(const FusedLayout& layout, int input) noexcept {
  const auto& strides = layout.strides[static_cast<std::size_t>(input)];
  bool flat = true;
  bool uniform = true;
  std::int64_t expected = 1;
  for (int d = layout.ndim - 1; d >= 0; --d) {
    const auto u = static_cast<std::size_t>(d);
    const std::int64_t extent = layout.shape[u];
    if (extent != 1) {
      if (strides[u] != expected) flat = false;
      if (strides[u] != 0) uniform = false;
    }
    expected *= extent;
  }
  if (flat) return CudaInputAccess::flat;
  return uniform ? CudaInputAccess::uniform : CudaInputAccess::strided;
}

void check_cuda_fusable(const FusedProgram& program, const FusedLayout& layout) {
  if (program.num_inputs > kCudaFusedMaxInputs)
    reject(str(program.num_inputs) + " inputs exceed the cap of " + str(kCudaFusedMaxInputs));
  if (program.outputs.size() > static_cast<std::size_t>(kCudaFusedMaxOutputs))
    reject(str(static_cast<std::int64_t>(program.outputs.size())) + " outputs exceed the cap of " +
           str(kCudaFusedMaxOutputs));
  if (program.num_scalars > kCudaFusedMaxScalars)
    reject(str(program.num_scalars) + " scalars exceed the cap of " + str(kCudaFusedMaxScalars));
  if (program.code.size() > static_cast<std::size_t>(kCudaFusedMaxInstructions))
    reject(str(static_cast<std::int64_t>(program.code.size())) + " instructions exceed the cap of " +
           str(kCudaFusedMaxInstructions));
  if (program.outputs.empty()) reject("the program has no outputs");
  for (std::size_t i = 0; i < program.code.size(); ++i) {
    const FusedInstr& ins = program.code[i];
    const std::string at = "instruction " + std::to_string(i) + ": ";
    switch (ins.kind) {
      case FusedKind::load:
        if (ins.a >= program.num_inputs) reject(at + "input " + str(ins.a) + " out of range");
        break;
      case FusedKind::unary:
        if (ins.op >= kUnaryOpCount) reject(at + "unknown unary op " + str(ins.op));
        if (ins.a >= i) reject(at + "operand v" + str(ins.a) + " is not defined before its use");
        break;
      case FusedKind::binary:
        if (ins.op >= kBinaryOpCount) reject(at + "unknown binary op " + str(ins.op));
        if (ins.a >= i || ins.b >= i) reject(at + "an operand is not defined before its use");
        break;
      case FusedKind::binary_scalar:
        if (ins.op >= kBinaryOpCount) reject(at + "unknown binary op " + str(ins.op));
        if (ins.a >= i) reject(at + "operand v" + str(ins.a) + " is not defined before its use");
        if (ins.b >= program.num_scalars) reject(at + "scalar " + str(ins.b) + " out of range");
        break;
      default: reject(at + "unknown kind " + str(static_cast<int>(ins.kind)));
    }
  }
  for (const std::uint16_t v : program.outputs)
    if (v >= program.code.size()) reject("output value v" + str(v) + " is not defined");
  if (layout.ndim < 0 || layout.ndim > kMaxDims)
    reject("layout ndim " + str(layout.ndim) + " is outside [0, " + str(kMaxDims) + "]");
  for (int d = 0; d < layout.ndim; ++d)
    if (layout.shape[static_cast<std::size_t>(d)] < 0) reject("layout has a negative extent");
  if (layout.strides.size() != program.num_inputs)
    reject("layout has strides for " + str(static_cast<std::int64_t>(layout.strides.size())) + " inputs, the program " +
           str(program.num_inputs));
  if (program.reduction) {
    const kernels::FusedReduction& r = *program.reduction;
    if (static_cast<int>(r.op) >= kReduceOpCount) reject("unknown reduce op " + str(static_cast<int>(r.op)));
    if (program.outputs.size() != 1 || program.outputs[0] != r.value)
      reject("a reduction's only output must be its reduced value v" + str(r.value));
    const FusedLayout::ReduceAxis& ax = layout.reduce;
    if (ax.outer < 0 || ax.n < 0 || ax.inner < 0 || ax.outer * ax.n * ax.inner != layout.numel())
      reject("reduce split [" + str(ax.outer) + ", " + str(ax.n) + ", " + str(ax.inner) + "] does not split the domain of " +
             str(layout.numel()) + " elements");
  }
}

std::string cuda_kernel_key(const FusedProgram& program, const FusedLayout& layout) {
  check_cuda_fusable(program, layout);
  std::string key;
  key.reserve(10 + program.num_inputs + 6 * program.code.size() + 2 * program.outputs.size());
  put_u16(key, program.num_inputs);
  put_u16(key, program.num_scalars);
  put_u16(key, static_cast<std::uint16_t>(program.code.size()));
  put_u16(key, static_cast<std::uint16_t>(program.outputs.size()));
  bool strided = false;
  for (int i = 0; i < program.num_inputs; ++i) {
    const CudaInputAccess a = cuda_input_access(layout, i);
    strided = strided || a == CudaInputAccess::strided;
    key.push_back(static_cast<char>(a));
  }
  // ndim shapes the source only through the strided inputs' index arithmetic.
  key.push_back(static_cast<char>(strided ? layout.ndim : 0));
  for (const FusedInstr& ins : program.code) {
    key.push_back(static_cast<char>(ins.kind));
    key.push_back(static_cast<char>(ins.op));
    put_u16(key, ins.a);
    put_u16(key, ins.b);
  }
  for (const std::uint16_t v : program.outputs) put_u16(key, v);
  // A reduction: its op, its value and whether its rows are contiguous (the source specializes
  // inner == 1); nothing for an element-wise program, whose keys are as before.
  if (program.reduction) {
    key.push_back('R');
    key.push_back(static_cast<char>(program.reduction->op));
    put_u16(key, program.reduction->value);
    key.push_back(static_cast<char>(layout.reduce.inner == 1 ? 1 : 2));
  }
  return key;
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

std::string generate_cuda_source(const FusedProgram& program, const FusedLayout& layout,
                                 const std::string& kernel_name) {
  check_cuda_fusable(program, layout);
  return SourceWriter(program, layout, kernel_name).write();
}

std::size_t cuda_args_size(const FusedProgram& program, const FusedLayout& layout) {
  return args_shape(program, layout).bytes();
}

CudaArgsInfo pack_cuda_args(const FusedProgram& program, const FusedLayout& layout, const float* const* inputs,
                            float* const* outputs, const float* scalars, std::span<std::byte> buffer) {
  const ArgsShape shape = args_shape(program, layout);
  CudaArgsInfo info;
  info.bytes = shape.bytes();
  if (buffer.size() < info.bytes || (reinterpret_cast<std::uintptr_t>(buffer.data()) & 7u) != 0)
    throw std::invalid_argument("defer: pack_cuda_args: the buffer is too small or not 8-byte aligned");
  std::memset(buffer.data(), 0, info.bytes);
  const std::int64_t n = layout.numel();

  std::vector<bool> used(program.num_inputs, false);
  for (const FusedInstr& ins : program.code)
    if (ins.kind == FusedKind::load) used[ins.a] = true;

  bool vec4 = shape.strided == 0;  // the generated kernel has a float4 path only then
  bool index32 = n <= std::numeric_limits<std::int32_t>::max();
  std::size_t word = 0;
  for (int i = 0; i < shape.inputs; ++i) {
    const float* p = inputs[i];
    put_word(buffer, word++, &p);
    if (!used[static_cast<std::size_t>(i)]) continue;
    switch (cuda_input_access(layout, i)) {
      case CudaInputAccess::flat: vec4 = vec4 && aligned16(p); break;
      case CudaInputAccess::uniform: break;
      case CudaInputAccess::strided: {
        // 32-bit offsets when every stride is non-negative and the largest offset fits.
        constexpr std::int64_t kLimit = std::numeric_limits<std::int32_t>::max();
        std::int64_t max_offset = 0;
        for (int d = 0; d < layout.ndim && index32; ++d) {
          const auto u = static_cast<std::size_t>(d);
          const std::int64_t s = layout.strides[static_cast<std::size_t>(i)][u];
          const std::int64_t extent = layout.shape[u];
          if (extent <= 1) continue;
          if (s < 0 || (s > 0 && extent - 1 > (kLimit - max_offset) / s)) index32 = false;
          else max_offset += (extent - 1) * s;
        }
        break;
      }
    }
  }
  const bool vec4_inputs = vec4;  // a reduction's float4 loads do not touch its output
  for (int k = 0; k < shape.outputs; ++k) {
    float* p = outputs[k];
    put_word(buffer, word++, &p);
    vec4 = vec4 && aligned16(p);
  }
  put_word(buffer, word++, &n);
  const FusedLayout::ReduceAxis& ax = layout.reduce;
  std::int64_t strategy = 0;  // flag bits 2 and 3 of a reduction
  if (shape.reduce) {
    // float4 rows need inner == 1 (the source has them only then) and rows that start on a float4.
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
      if (cuda_input_access(layout, i) != CudaInputAccess::strided) continue;
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
