#pragma once
// A tiny line-based language for op graphs, shared by the libFuzzer target (fuzz/fuzz_graph.cpp), the
// random-graph property tests (tests/test_property.cpp, tests/support/random_graph.hpp) and its own
// unit test (tests/test_graph_lang.cpp).
//
//   # a comment; blank lines are ignored; one statement per line
//   x = rand 7 3 4          # f32 [3, 4], values from seed 7 in [-2, 2], never 0 (rank 0..4: `rand 7` is [])
//   p = pos 8 4             # f32 [4], values from seed 8 in [0.25, 2]
//   i = ids 9 5 2 3         # i64 [2, 3], values from seed 9 in [0, 5); `ids 9 -5 2 3`: in [-5, 0), all
//                           #   out of range as indices (index ops then fail at run time: out_of_range)
//   m = mask 10 3 4         # boolean [3, 4], each element true or false from seed 10
//   r = arange 6 i32        # [6]: 0 .. 5 as the named dtype (f32 i32 f16 bf16 i64 boolean)
//   y = add x p             # element-wise: every row of the op table (kernels/op_table.hpp) by its id,
//   z = add_scalar y -1.5   #   tensor operands first, then its scalars (NumPy broadcasting)
//   c = clamp z -1 1
//   b = gt_scalar x 0.5     # comparisons give boolean
//   w = where b x y         # where COND A B; masked_fill A MASK VALUE
//   t = to x f16            # the cast row `to` takes a dtype name instead of scalars
//   s = sum x -1 keep       # reductions, by the reduce table's names: sum mean max min argmax DIM [keep]
//   q = softmax x 0         # softmax DIM (no keep)
//   n = layer_norm x g b 1e-5   # eps optional
//   k = matmul x v
//   e = index_select x 1 r  # index_select A DIM INDEX (1-D i32/i64)
//   f = embedding x i       # embedding WEIGHT IDS: WEIGHT [V, D], IDS i32/i64 of any shape
//                           # views and copies (docs/api.md section 8), every dtype:
//   t = transpose x         #   the last two dims; `transpose x 0 2`: those two
//   p = permute x 2 0 1     #   permute A DIMS... (as many as A has; `permute s` for a 0-d s)
//   r = reshape x 4 -1      #   reshape A EXTENTS... (one may be -1; none: a 0-d result)
//   v = view x 2 6          #   view A EXTENTS...: rejected where the strides allow no view
//   u = unsqueeze x -1      #   unsqueeze A DIM; squeeze A DIM (that dim's extent must be 1)
//   g = expand u 5 -1 4 7   #   expand A EXTENTS... (-1 keeps an extent; new dims in front)
//   l = slice x 1 -3 100 2  #   slice A DIM START END STEP: Python's rules (step >= 1)
//   c = select x 0 -1       #   select A DIM INDEX (removes DIM)
//   h = split x 2 1 0       #   split A SIZE DIM PART: part PART (from 0) of split(A, SIZE, DIM); a
//                           #     part that split does not make is rejected like a bad argument
//   d = contiguous t        #   a dense copy, or A itself when A is dense
//   j = cat x y z 0         #   cat A B ... DIM (1 to 4 tensors)
//   mode eager              # mode eager|deferred: the mode of the ops that follow
//   stream 2                # stream 0..3: the current stream (0: the default one) for ops and waits
//   fusion off              # fusion on|off, graphs on|off: the process-wide switches from here on
//   wait u                  # wait one result on the current stream
//   wait_all u s            # wait several together
//   drop y                  # release the handle (its graph node may still feed others)
//
// Names are [A-Za-z_][A-Za-z0-9_]* (at most 32 characters); a name is defined once, before its use.
// Limits keep every program small and fast: at most kMaxStatements statements, leaves of rank <= 4,
// extents <= 64 and at most 4096 elements, lists (of extents, dims) of at most kMaxList words. A
// text that breaks a rule throws ParseError naming the line. Shape and dtype errors are not parse
// errors: the ops reject them at call time, which is part of what runs (infer_type predicts which
// calls are rejected). An op call whose result has more than kMaxResultElements elements (a view's
// result too) is skipped.
//
// Layouts: every value has the strides the contract gives it (docs/api.md section 8): leaves and the
// results of ops other than views are dense; a view's strides follow from its operand's; reshape
// is a view where one exists, else dense; contiguous and cat are dense. ValueType carries them.
// Why: `view` is valid only where the strides allow it. Rather than generating view only on values
// known dense, or letting a rejected view pass as long as both modes agree, the language follows the
// layouts itself (rules written from the meaning of a view: an index map, checked element by
// element, not the library's stride algorithm), so infer_type predicts every view rejection exactly
// like any other call-time error, view gets tested on strided values too, and run() checks each
// waited tensor's strides against the rules (a mismatch is a problem: a dense result that came out
// strided, a view that was copied, deferred and eager disagreeing on a layout).
#include <array>
#include <cstdint>
#include <exception>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <defer/defer.hpp>

#include "op_table.hpp"

namespace defer::lang {

inline constexpr int kMaxStatements = 256;
inline constexpr int kMaxRank = 4;
inline constexpr int64_t kMaxExtent = 64;
inline constexpr int64_t kMaxLeafElements = 4096;
inline constexpr int64_t kMaxIdValue = int64_t{1} << 40;  // |MAXVAL| of `ids`: beyond int32 on purpose
inline constexpr int64_t kMaxResultElements = 1 << 16;    // an op call whose result is larger is skipped
inline constexpr int64_t kMaxOpCost = 1 << 20;            // ... or whose work (matmul: m*n*k) is larger
inline constexpr int kStreams = 4;
inline constexpr int kMaxList = 10;                       // extents of reshape/view/expand, dims of permute
inline constexpr int64_t kMaxListExtent = int64_t{1} << 16;  // |extent| in those lists

class ParseError : public std::runtime_error {
 public:
  ParseError(int line, const std::string& what)
      : std::runtime_error("line " + std::to_string(line) + ": " + what), line_(line) {}
  int line() const noexcept { return line_; }

 private:
  int line_;
};

enum class Kind {
  rand, pos, ids, mask, arange,                  // leaves
  elementwise,                                   // a row of the op table
  reduce, softmax, layer_norm, matmul, transpose, index_select, embedding,
  reshape, view, permute, unsqueeze, squeeze, expand, slice, select, split, contiguous, cat,  // views, copies
  mode, stream, fusion, graphs, wait, wait_all, drop,  // directives
};

struct Stmt {
  Kind kind{};
  int line = 0;
  int out = -1;            // the defined value's id, or -1 for directives
  std::vector<int> args;   // operand ids (wait/wait_all/drop: the values named)
  kernels::ElementwiseOp op{};   // elementwise
  kernels::ReduceOp reduce{};    // reduce
  std::array<float, kernels::kMaxOpScalars> scalars{};  // elementwise scalars; layer_norm's eps is [0]
  DType dtype = DType::f32;      // to's target, arange's dtype
  int dim = 0;             // reductions, softmax, index_select, unsqueeze, squeeze, slice, select, split, cat
  // The integers of a view: reshape/view/expand: the extents; permute: the dims; transpose: d0 d1
  // (none: the last two); slice: start end step; select: index; split: size part.
  std::vector<int64_t> ints;
  bool keepdim = false;
  bool flag = false;       // mode eager / fusion on / graphs on
  int stream = 0;
  uint32_t seed = 0;       // rand, pos, ids, mask
  int64_t maxval = 0;      // ids
  Shape shape;             // rand, pos, ids, mask
};

struct Program {
  std::vector<std::string> names;  // id -> name
  std::vector<Stmt> stmts;
};

Program parse(std::string_view text);    // throws ParseError
std::string to_text(const Program& p);   // parse(to_text(p)) gives p again
// A statement's keyword: the op table's id of an element-wise row, the reduce table's name, ...
std::string keyword(const Stmt& s);
// The dtype a name of the dtype table (include/defer/dtype.hpp) names, or nullopt.
std::optional<DType> dtype_named(std::string_view name);

// The leaf values of rand/pos: deterministic in (seed, count, positive).
std::vector<float> leaf_values(uint32_t seed, std::size_t count, bool positive);
// The values of `ids SEED MAXVAL`: in [0, maxval) for maxval > 0, in [maxval, 0) for maxval < 0.
std::vector<int64_t> id_values(uint32_t seed, std::size_t count, int64_t maxval);
// The values of `mask SEED`: 0 or 1.
std::vector<uint8_t> mask_values(uint32_t seed, std::size_t count);

// What running a program produced for each wait (in the order waited), for comparing runs.
struct Observation {
  int stmt = 0;           // index of the wait statement (or of the op call that failed)
  int id = -1;            // the value's id
  std::string name;       // the value's name
  // "ok", "invalid_argument", "out_of_range", "logic_error", "OutOfMemory", "DeviceError", "Error", "other"
  std::string outcome;
  std::string message;    // the exception's message, when not ok
  Shape shape;
  DType dtype = DType::f32;
  std::vector<float> values;    // every dtype as f32 (exact but for integers beyond 2^24)
  std::vector<int64_t> exact;   // i32 and i64 results: the integers themselves
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

// The shape, dtype and layout of a value. `strides` (in elements) is empty for a dense value and
// canonical otherwise (canonical_strides), so that equal layouts compare equal.
struct ValueType {
  Shape shape;
  DType dtype = DType::f32;
  Shape strides = {};
  bool operator==(const ValueType&) const = default;
};

// The canonical form of a layout: empty where it is dense or has no elements; else the strides, with
// 0 for every extent-1 dim (its stride never matters).
Shape canonical_strides(const Shape& shape, const Shape& strides);

// The type an op statement gives for operands of types `a` (the contract's shape and dtype rules,
// written out independently of the library); nullopt where the op must reject them at call time.
std::optional<ValueType> infer_type(const Stmt& s, const std::vector<ValueType>& a);

// Runs a program: op calls and waits as written. Call-time errors of an op are observations (its
// value stays undefined; statements that use an undefined value are skipped), never crashes. An op
// that fails when it runs (an index out of range) fails its wait, in either mode: an eager op
// throws at the call, and its value then holds that error for its waits and for the ops that use it,
// as a deferred op's Await would. Restores the fusion/graphs switches and the mode it found.
RunResult run(const Program& p, const RunOptions& options = {});

// Two runs agree: the same observations (outcomes, shapes, dtypes), values bit for bit (NaN where
// the other is NaN, integers exactly). Returns "" or a description of the first difference.
std::string compare(const RunResult& a, const RunResult& b);

}  // namespace defer::lang
