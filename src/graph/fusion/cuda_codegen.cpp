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
  std::size_t words() const {
    return static_cast<std::size_t>(inputs + outputs + 2 + (strided > 0 ? ndim * (1 + strided) : 0));
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
    if (shape_.strided > 0) strided_loop();
    kernel();
    return std::move(out_);
  }

 private:
  void line(const std::string& s) {
    out_ += s;
    out_ += '\n';
  }

  std::string value(std::size_t v) const { return "v" + std::to_string(v); }

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
    line("  long long n;      // elements of the output");
    line("  long long flags;  // bit 0: the float4 path runs; bit 1: strided offsets fit in 32 bits");
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

  // Elements in [first, n) by a grid stride, reading strided inputs at offsets computed from the
  // row-major multi-index, in Index arithmetic (32-bit when the host proved every offset fits: a
  // 64-bit division costs several times a 32-bit one).
  void strided_loop() {
    line("template <class Index>");
    line("__device__ __forceinline__ void defer_strided(const Args& a, long long first, long long step) {");
    uniform_loads("  ");
    line("  for (long long i = first; i < a.n; i += step) {");
    line("    Index rest = static_cast<Index>(i);");
    for (int j = 0; j < shape_.strided; ++j) line("    Index o" + str(j) + " = 0;");
    for (int d = shape_.ndim - 1; d >= 0; --d) {
      const std::string dd = str(d);
      std::string coord = "rest";
      if (d > 0) {
        line("    {");
        line("      const Index extent = static_cast<Index>(a.shape[" + dd + "]);");
        line("      const Index quotient = rest / extent;");
        line("      const Index c = rest - quotient * extent;");
        line("      rest = quotient;");
        coord = "c";
      }
      const std::string indent = d > 0 ? "      " : "    ";
      for (int j = 0; j < shape_.strided; ++j)
        line(indent + "o" + str(j) + " += " + coord + " * static_cast<Index>(a.stride[" + str(j) + "][" + dd + "]);");
      if (d > 0) line("    }");
    }
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

  const FusedProgram& program_;
  const FusedLayout& layout_;
  const std::string& name_;
  InputPlan inputs_;
  ArgsShape shape_;
  std::string out_;
};

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
  for (int k = 0; k < shape.outputs; ++k) {
    float* p = outputs[k];
    put_word(buffer, word++, &p);
    vec4 = vec4 && aligned16(p);
  }
  put_word(buffer, word++, &n);
  const std::int64_t flags = (vec4 ? 1 : 0) | (index32 && shape.strided > 0 ? 2 : 0);
  put_word(buffer, word++, &flags);
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
  info.work_items = vec4 ? (n + 3) / 4 : n;
  return info;
}

}  // namespace defer::detail
