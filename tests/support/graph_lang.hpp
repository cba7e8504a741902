#pragma once
// A tiny line-based language for op graphs, shared by the libFuzzer target (fuzz/fuzz_graph.cpp), the
// random-graph property tests (tests/test_property.cpp) and its own unit test (tests/test_graph_lang.cpp).
//
//   # a comment; blank lines are ignored; one statement per line
//   x = rand 7 3 4          # f32 [3, 4], values from seed 7 in [-2, 2], never 0 (rank 0..4: `rand 7` is [])
//   p = pos 8 4             # f32 [4], values from seed 8 in [0.25, 2]
//   y = add x p             # binary: add sub mul div maximum minimum (NumPy broadcasting)
//   z = muls y -1.5         # scalar: adds subs muls divs (the scalar on the right)
//   u = gelu z              # unary: neg abs exp log sqrt tanh sigmoid relu silu gelu gelu_tanh
//   s = sum u -1 keep       # reductions: sum mean max DIM [keep]; softmax DIM (no keep)
//   n = layer_norm x g b 1e-5   # eps optional
//   m = matmul x w          # and: t = transpose x
//   mode eager              # mode eager|deferred: the mode of the ops that follow
//   stream 2                # stream 0..3: the current stream (0: the default one) for ops and waits
//   fusion off              # fusion on|off, graphs on|off: the process-wide switches from here on
//   wait u                  # wait one result on the current stream
//   wait_all u s            # wait several together
//   drop y                  # release the handle (its graph node may still feed others)
//
// Names are [A-Za-z_][A-Za-z0-9_]* (at most 32 characters); a name is defined once, before its use.
// Limits keep every program small and fast: at most kMaxStatements statements, rank <= 4, extents
// <= 64, rand/pos at most 4096 elements. A text that breaks a rule throws ParseError naming the line.
// Shape errors are not parse errors: the ops reject them at call time, which is part of what runs.
#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <defer/defer.hpp>

namespace defer::lang {

inline constexpr int kMaxStatements = 256;
inline constexpr int kMaxRank = 4;
inline constexpr int64_t kMaxExtent = 64;
inline constexpr int64_t kMaxLeafElements = 4096;
inline constexpr int64_t kMaxResultElements = 1 << 16;  // an op call whose result is larger is skipped
inline constexpr int64_t kMaxOpCost = 1 << 20;          // ... or whose work (matmul: m*n*k) is larger
inline constexpr int kStreams = 4;

class ParseError : public std::runtime_error {
 public:
  ParseError(int line, const std::string& what)
      : std::runtime_error("line " + std::to_string(line) + ": " + what), line_(line) {}
  int line() const noexcept { return line_; }

 private:
  int line_;
};

enum class Kind {
  rand, pos,                                   // leaves
  unary, binary, scalar,                       // element-wise
  sum, mean, max, softmax, layer_norm, matmul, transpose,
  mode, stream, fusion, graphs, wait, wait_all, drop,  // directives
};

enum class Unary { neg, abs, exp, log, sqrt, tanh, sigmoid, relu, silu, gelu, gelu_tanh };
enum class Binary { add, sub, mul, div, maximum, minimum };

struct Stmt {
  Kind kind{};
  int line = 0;
  int out = -1;            // the defined value's id, or -1 for directives
  std::vector<int> args;   // operand ids (wait/wait_all/drop: the values named)
  Unary unary{};
  Binary binary{};
  float scalar = 0.f;      // scalar ops; layer_norm's eps
  int dim = 0;
  bool keepdim = false;
  bool flag = false;       // mode eager / fusion on / graphs on
  int stream = 0;
  uint32_t seed = 0;
  Shape shape;             // rand / pos
};

struct Program {
  std::vector<std::string> names;  // id -> name
  std::vector<Stmt> stmts;
};

Program parse(std::string_view text);    // throws ParseError
std::string to_text(const Program& p);   // parse(to_text(p)) gives p again
const char* unary_name(Unary u) noexcept;
const char* binary_name(Binary b) noexcept;
// The leaf values of rand/pos: deterministic in (seed, count, positive).
std::vector<float> leaf_values(uint32_t seed, std::size_t count, bool positive);

// What running a program produced for each wait (in the order waited), for comparing runs.
struct Observation {
  int stmt = 0;           // index of the wait statement (or of the op call that failed)
  int id = -1;            // the value's id
  std::string name;       // the value's name
  std::string outcome;    // "ok", "invalid_argument", "logic_error", "OutOfMemory", "DeviceError", "Error", "other"
  std::string message;    // the exception's message, when not ok
  Shape shape;
  std::vector<float> values;
};

struct RunOptions {
  Device device = Device::cpu();
  bool all_eager = false;        // ignore `mode` and run every op eagerly
  bool single_stream = false;    // ignore `stream` (everything on the default stream)
  bool apply_switches = true;    // honour `fusion`/`graphs` (they flip process-wide switches)
  bool wait_leftovers = true;    // at the end, wait every value still held, in definition order
  bool skip_waits = false;       // build the graph only (wait/wait_all do nothing): for explain()
};

struct RunResult {
  std::vector<Observation> observations;
  std::map<int, TensorAwait> held;  // values still held at the end (id -> Await), for explain()
  std::vector<std::string> problems;  // the runtime disagreed with the shape rules: always a bug
};

// The shape an op statement gives for operands of shapes `a` (the contract's rules, written out
// independently of the library); nullopt where the op must reject them.
std::optional<Shape> infer_shape(const Stmt& s, const std::vector<Shape>& a);

// Runs a program: op calls and waits as written. Call-time errors of an op are observations (its
// value stays undefined; statements that use an undefined value are skipped), never crashes.
// Restores the fusion/graphs switches and the mode it found.
RunResult run(const Program& p, const RunOptions& options = {});

// Two runs agree: the same observations, values bit for bit (NaN where the other is NaN).
// Returns "" or a description of the first difference.
std::string compare(const RunResult& a, const RunResult& b);

}  // namespace defer::lang
