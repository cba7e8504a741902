// The fuzz target's graph language (tests/support/graph_lang.*): parsing, printing, error lines,
// the shape and dtype rules, running a program deferred and eagerly, and the fuzz corpus itself, so
// that the target's code is exercised in every normal build, not only in the clang fuzzing build.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <defer/defer.hpp>

#include "support/graph_lang.hpp"

using namespace defer;
using kernels::ElementwiseOp;
using kernels::ReduceOp;
namespace L = defer::lang;

namespace {

std::string parse_error(const std::string& text) {
  try {
    L::parse(text);
  } catch (const L::ParseError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(GraphLang, ParsesEveryStatementKind) {
  const std::string text =
      "x = rand 7 3 4\np = pos 8 4\ny = add x p\nz = mul_scalar y -1.5\nu = gelu z\ns = sum u -1 keep\nm = softmax u 0\n"
      "n = layer_norm x p p 0.001\nt = transpose x\nw = matmul x t\nv = max w 1\nq = mean v 0\nmode eager\nstream 3\n"
      "fusion off\ngraphs on\nwait u\nwait_all s m\ndrop y\n";
  const L::Program p = L::parse(text);
  ASSERT_EQ(p.stmts.size(), 19u);
  EXPECT_EQ(p.names.size(), 12u);
  EXPECT_EQ(p.stmts[0].kind, L::Kind::rand);
  EXPECT_EQ(p.stmts[0].seed, 7u);
  EXPECT_EQ(p.stmts[0].shape, (Shape{3, 4}));
  EXPECT_EQ(p.stmts[1].kind, L::Kind::pos);
  EXPECT_EQ(p.stmts[2].kind, L::Kind::elementwise);
  EXPECT_EQ(p.stmts[2].op, ElementwiseOp::add);
  EXPECT_EQ(p.stmts[3].kind, L::Kind::elementwise);
  EXPECT_EQ(p.stmts[3].op, ElementwiseOp::mul_scalar);
  EXPECT_FLOAT_EQ(p.stmts[3].scalars[0], -1.5f);
  EXPECT_EQ(p.stmts[4].op, ElementwiseOp::gelu);
  EXPECT_EQ(p.stmts[5].kind, L::Kind::reduce);
  EXPECT_EQ(p.stmts[5].reduce, ReduceOp::sum);
  EXPECT_EQ(p.stmts[5].dim, -1);
  EXPECT_TRUE(p.stmts[5].keepdim);
  EXPECT_EQ(p.stmts[7].kind, L::Kind::layer_norm);
  EXPECT_FLOAT_EQ(p.stmts[7].scalars[0], 0.001f);
  EXPECT_EQ(p.stmts[10].kind, L::Kind::reduce);
  EXPECT_EQ(p.stmts[10].reduce, ReduceOp::max);
  EXPECT_FALSE(p.stmts[10].keepdim);
  EXPECT_EQ(p.stmts[12].kind, L::Kind::mode);
  EXPECT_TRUE(p.stmts[12].flag);
  EXPECT_EQ(p.stmts[13].stream, 3);
  EXPECT_FALSE(p.stmts[14].flag);
  EXPECT_TRUE(p.stmts[15].flag);
  EXPECT_EQ(p.stmts[17].args.size(), 2u);
  EXPECT_EQ(p.stmts[18].kind, L::Kind::drop);
  // Printing and parsing again gives the same program.
  EXPECT_EQ(L::to_text(L::parse(L::to_text(p))), L::to_text(p));
  EXPECT_EQ(L::to_text(p), text.substr(0, text.find("n = layer_norm")) + "n = layer_norm x p p 0.001\n" +
                               text.substr(text.find("t = transpose")));
}

TEST(GraphLang, ErrorsNameTheLineAndTheProblem) {
  struct Row {
    const char* text;
    const char* message;
  } rows[] = {
      {"x = rand 1 2\ny = add x z\n", "line 2: 'z' is not defined"},
      {"x = rand 1 2\nx = neg x\n", "line 2: 'x' is defined twice"},
      {"x = neg x\n", "line 1: 'x' is not defined"},
      {"x = frobnicate\n", "line 1: unknown op 'frobnicate'"},
      {"\n\nfly away\n", "line 3: unknown statement 'fly'"},
      {"x = rand 1 65\n", "extent 65 is out of [0, 64]"},
      {"x = rand 1 64 64 2\n", "more than 4096 elements"},
      {"x = rand 1 1 1 1 1 1\n", "takes 1 to 5 operand(s)"},
      {"x = rand -1 2\n", "seed -1 is out of"},
      {"x = rand 1 2\ny = add_scalar x 1.5q\n", "'1.5q' is not a number"},
      {"x = rand 1 2\ny = sum x\n", "takes 2 to 3 operand(s), got 1"},
      {"x = rand 1 2\ny = sum x 0 keeep\n", "expected 'keep'"},
      {"x = rand 1 2\ny = sum x 99\n", "dim 99 is out of [-8, 8]"},
      {"stream 4\n", "stream 4 is out of [0, 3]"},
      {"mode lazy\n", "mode takes eager or deferred"},
      {"x = rand 1 2\nwait\n", "wait takes one name"},
      {"3x = rand 1 2\n", "'3x' is not a valid name"},
      {"x =\n", "'=' needs an op"},
      {"x = rand 99999999999999999999 2\n", "is not an integer"},
      {"x = rand 1 2\ny = to x f8\n", "line 2: unknown dtype 'f8' (dtypes: f32 i32 f16 bf16 i64 boolean)"},
      {"x = rand 1 2\ny = to x\n", "'to' takes 2 operand(s), got 1"},
      {"x = rand 1 2\ny = to x F16\n", "unknown dtype 'F16'"},
      {"a = arange 4 float\n", "line 1: unknown dtype 'float'"},
      {"a = arange 65 i64\n", "end 65 is out of [0, 64]"},
      {"i = ids 1 0 4\n", "maxval 0 leaves no values"},
      {"i = ids 1 2199023255552 4\n", "maxval 2199023255552 is out of"},
      {"i = ids 1\n", "'ids' takes 2 to 6 operand(s), got 1"},
      {"m = mask 1 64 65\n", "extent 65 is out of [0, 64]"},
      {"x = rand 1 2\ny = clamp x 1\n", "'clamp' takes 3 operand(s), got 2"},
      {"x = rand 1 2\ny = where x x\n", "'where' takes 3 operand(s), got 2"},
      {"x = rand 1 2\ny = index_select x 0\n", "'index_select' takes 3 operand(s), got 2"},
      {"x = rand 1 2\ny = argmax x 0 kept\n", "expected 'keep'"},
      {"x = rand 1 2\ny = adds x 1\n", "unknown op 'adds'"},
  };
  for (const Row& r : rows) {
    const std::string msg = parse_error(r.text);
    EXPECT_NE(msg.find(r.message), std::string::npos) << "text: " << r.text << "\ngot: '" << msg << "'";
  }
  std::string many;
  for (int i = 0; i <= L::kMaxStatements; ++i) many += std::string(1, 'x').append(std::to_string(i)).append(" = rand 1 2\n");
  EXPECT_NE(parse_error(many).find("more than 256 statements"), std::string::npos);
  // Comments, blank lines, tabs and CR line ends are fine.
  EXPECT_EQ(L::parse("# nothing\n\n\tx = rand 1 2\r\n  # more\n").stmts.size(), 1u);
  EXPECT_EQ(L::parse("").stmts.size(), 0u);
}

namespace {

// A program using one row of the op table: operands of the row's kind (a boolean mask where the
// row takes a condition, f32 data otherwise), scalars, or a dtype for the cast row.
std::string one_row_program(unsigned row) {
  const auto op = static_cast<ElementwiseOp>(row);
  const kernels::ElementwiseInfo& info = kernels::info(op);
  std::string text = "m = mask 3 2 3\nx = rand 1 2 3\ny = pos 2 3\nz = rand 4 3\n";
  std::string line = std::string("r = ") + info.id;
  const char* data[] = {"x", "y", "z"};
  int next = 0;
  for (int k = 0; k < info.tensors; ++k) line += k == kernels::condition_operand(op) ? " m" : std::string(" ") + data[next++];
  if (info.result == kernels::OpResult::cast) line += " bf16";
  for (int k = 0; k < info.scalars; ++k) line += k == 0 ? " -0.5" : " 1.25";
  return text + line + "\nwait r\n";
}

}  // namespace

TEST(GraphLang, EveryOpTableRowParsesPrintsAndRuns) {
  for (unsigned row = 0; row < kernels::kElementwiseOpCount; ++row) {
    const std::string text = one_row_program(row);
    SCOPED_TRACE(text);
    const L::Program p = L::parse(text);
    const L::Stmt& s = p.stmts[4];
    EXPECT_EQ(s.kind, L::Kind::elementwise);
    EXPECT_EQ(s.op, static_cast<ElementwiseOp>(row));
    EXPECT_EQ(L::keyword(s), kernels::kElementwiseOps[row].id);
    EXPECT_EQ(s.args.size(), static_cast<std::size_t>(kernels::kElementwiseOps[row].tensors));
    EXPECT_EQ(L::to_text(p), text);
    // The rules accept the operands, the op runs, and deferred equals eager.
    const L::RunResult deferred = L::run(p);
    EXPECT_TRUE(deferred.problems.empty()) << deferred.problems.front();
    ASSERT_FALSE(deferred.observations.empty());
    EXPECT_EQ(deferred.observations[0].outcome, "ok") << deferred.observations[0].message;
    EXPECT_EQ(L::compare(deferred, L::run(p, {.all_eager = true, .single_stream = true})), "");
  }
}

TEST(GraphLang, ParsesLeavesOfEveryDtypeCastsReductionsAndIndexOps) {
  const std::string text =
      "i = ids 9 5 2 3\nj = ids 10 -4 6\nm = mask 11 3 4\nr = arange 6 i32\nx = rand 1 6 4\nt = to x f16\n"
      "a = argmax x -1 keep\nn = min t 0\ne = index_select x 0 r\nf = embedding x i\nw = where m x x\n"
      "k = masked_fill x m -10000\nc = clamp x -1 1\nb = gt_scalar i 2\n";
  const L::Program p = L::parse(text);
  ASSERT_EQ(p.stmts.size(), 14u);
  EXPECT_EQ(L::to_text(p), text);
  EXPECT_EQ(p.stmts[0].kind, L::Kind::ids);
  EXPECT_EQ(p.stmts[0].maxval, 5);
  EXPECT_EQ(p.stmts[1].maxval, -4);
  EXPECT_EQ(p.stmts[2].kind, L::Kind::mask);
  EXPECT_EQ(p.stmts[3].kind, L::Kind::arange);
  EXPECT_EQ(p.stmts[3].dtype, DType::i32);
  EXPECT_EQ(p.stmts[5].op, ElementwiseOp::to);
  EXPECT_EQ(p.stmts[5].dtype, DType::f16);
  EXPECT_EQ(p.stmts[6].reduce, ReduceOp::argmax);
  EXPECT_TRUE(p.stmts[6].keepdim);
  EXPECT_EQ(p.stmts[7].reduce, ReduceOp::min);
  EXPECT_EQ(p.stmts[8].kind, L::Kind::index_select);
  EXPECT_EQ(p.stmts[8].dim, 0);
  EXPECT_EQ(p.stmts[8].args, (std::vector<int>{4, 3}));
  EXPECT_EQ(p.stmts[9].kind, L::Kind::embedding);
  EXPECT_FLOAT_EQ(p.stmts[11].scalars[0], -10000.f);
  EXPECT_FLOAT_EQ(p.stmts[12].scalars[1], 1.f);
  // Every dtype name of the dtype table spells a cast and an arange.
  for (std::size_t t = 0; t < detail::kDTypeCount; ++t) {
    const std::string name = dtype_name(static_cast<DType>(t));
    const std::string cast = "x = rand 1 3\ny = to x " + name + "\nz = arange 3 " + name + "\n";
    EXPECT_EQ(L::to_text(L::parse(cast)), cast);
    EXPECT_EQ(L::parse(cast).stmts[1].dtype, static_cast<DType>(t));
  }
}

TEST(GraphLang, LeafValuesOfIdsAndMasks) {
  for (int64_t v : L::id_values(3, 500, 7)) EXPECT_TRUE(v >= 0 && v < 7) << v;
  for (int64_t v : L::id_values(3, 500, -7)) EXPECT_TRUE(v >= -7 && v < 0) << v;
  EXPECT_EQ(L::id_values(3, 50, int64_t{1} << 40), L::id_values(3, 50, int64_t{1} << 40));
  const auto m = L::mask_values(4, 500);
  EXPECT_EQ(m, L::mask_values(4, 500));
  int ones = 0;
  for (uint8_t b : m) {
    EXPECT_LE(b, 1);
    ones += b;
  }
  EXPECT_TRUE(ones > 150 && ones < 350) << ones;
}

TEST(GraphLang, TheRulesPredictDtypeRejections) {
  // Each op is rejected at call time (invalid_argument), and infer_type says so: no problems.
  const L::Program p = L::parse(
      "x = rand 1 2 3\nh = to x f16\ni = ids 2 3 3 3\nm = mask 3 2 3\nf = rand 4 3\n"
      "a = add x h\n"            // data dtypes differ
      "b = exp i\n"              // a floating row on i64
      "c = where x x x\n"        // the condition is not boolean
      "d = masked_fill x x 0\n"  // the mask is not boolean
      "e = index_select x 1 f\n" // a float index
      "g = embedding i i\n"      // accepted: a 2-D weight of any dtype
      "k = index_select x 1 i\n" // a 2-D index
      "l = sum i 0\n"            // reductions take floating data
      "n = matmul x h\n"         // dtypes differ
      "o = softmax m 0\n"        // boolean
      "q = layer_norm h f f\n"   // gamma and beta f32, x f16
      "r = argmax m 0\n"
      "s = eq x h\n");           // comparisons: one dtype too
  const L::RunResult r = L::run(p, {.wait_leftovers = false});
  EXPECT_TRUE(r.problems.empty()) << r.problems.front();
  std::vector<std::string> rejected;
  for (const L::Observation& o : r.observations) {
    EXPECT_EQ(o.outcome, "invalid_argument") << o.name;
    rejected.push_back(o.name);
  }
  EXPECT_EQ(rejected, (std::vector<std::string>{"a", "b", "c", "d", "e", "k", "l", "n", "o", "q", "r", "s"}));
  // What the rules accept across dtypes.
  const auto type = [&](const char* text) {
    const L::Program q = L::parse(text);
    std::vector<L::ValueType> args;
    for (int a : q.stmts.back().args) args.push_back(*L::infer_type(q.stmts[static_cast<std::size_t>(a)], {}));
    return L::infer_type(q.stmts.back(), args);
  };
  EXPECT_EQ(type("i = ids 1 5 4\nb = ge_scalar i 2\n"), (L::ValueType{{4}, DType::boolean}));
  EXPECT_EQ(type("m = mask 1 3 1\ni = ids 1 5 4\nw = where m i i\n"), (L::ValueType{{3, 4}, DType::i64}));
  EXPECT_EQ(type("x = rand 1 2 5\na = argmax x 1\n"), (L::ValueType{{2}, DType::i64}));
  EXPECT_EQ(type("w = rand 1 7 3\ni = ids 1 7 2 4\ne = embedding w i\n"), (L::ValueType{{2, 4, 3}, DType::f32}));
  EXPECT_EQ(type("w = mask 1 7 3\ni = arange 2 i32\ne = index_select w -2 i\n"), (L::ValueType{{2, 3}, DType::boolean}));
  EXPECT_EQ(type("m = mask 1 4\nt = to m bf16\n"), (L::ValueType{{4}, DType::bf16}));
  EXPECT_EQ(type("x = rand 1 0 3\nm = min x 0\n"), std::nullopt);
}

TEST(GraphLang, AnIndexOutOfRangeFailsTheWaitInEitherMode) {
  // j's ids are all negative: the index ops fail when they run, and what uses them fails the same
  // way; deferred, the wait throws; eager, the call does, and the run holds the error for the waits.
  // A call the rules reject is rejected whether its failed operand is known to have failed or not.
  const L::Program p = L::parse(
      "x = rand 1 4 3\nj = ids 2 -3 5\ni = ids 3 4 5\ne = index_select x 0 j\nf = embedding x j\ng = embedding x i\n"
      "h = add e g\nwait h\nwait_all e g f\ns = sum h 0\nk = add e x\n");
  for (const bool eager : {false, true}) {
    SCOPED_TRACE(eager ? "all eager" : "deferred");
    const L::RunResult r = L::run(p, {.all_eager = eager, .wait_leftovers = false});
    EXPECT_TRUE(r.problems.empty()) << r.problems.front();
    std::vector<std::string> outcomes;
    for (const L::Observation& o : r.observations) outcomes.push_back(o.name + ":" + o.outcome);
    EXPECT_EQ(outcomes, (std::vector<std::string>{"h:out_of_range", "e:out_of_range", "g:ok", "f:out_of_range", "k:invalid_argument"}));
    EXPECT_NE(r.observations[0].message.find("out of range"), std::string::npos) << r.observations[0].message;
    EXPECT_EQ(L::compare(L::run(p, {.all_eager = eager}), L::run(p, {.all_eager = true, .single_stream = true})), "");
  }
}

// Deferred equals eager bit for bit (docs/guarantees.md), for f16 and bf16 too: in an element-wise
// chain fused in deferred mode, each op's result is rounded to its dtype as the eager op stores it.
TEST(GraphLang, AFusedLowPrecisionChainRoundsLikeTheEagerOps) {
  for (const std::string t : {"f16", "bf16"}) {
    const L::Program p = L::parse("x = rand 1 4\nh = to x " + t + "\nu = tanh h\ny = to u f32\nwait y\n");
    EXPECT_EQ(L::compare(L::run(p, {.wait_leftovers = false}), L::run(p, {.all_eager = true, .wait_leftovers = false})), "") << t;
  }
}

// An index out of range fails the values computed from it, not the others planned (and fused) with
// them: `a` does not use `e`.
TEST(GraphLang, AFailedOperandFailsOnlyTheValuesThatUseIt) {
  const L::Program p = L::parse("x = rand 1 5 4\nj = ids 2 -2 5\ne = index_select x 0 j\na = neg x\nd = sub e a\nwait_all d a\n");
  for (const bool eager : {false, true}) {
    const L::RunResult r = L::run(p, {.all_eager = eager, .wait_leftovers = false});
    ASSERT_EQ(r.observations.size(), 2u);
    EXPECT_EQ(r.observations[0].outcome, "out_of_range") << (eager ? "eager" : "deferred");
    EXPECT_EQ(r.observations[1].outcome, "ok") << (eager ? "eager: " : "deferred: ") << r.observations[1].message;
  }
}

TEST(GraphLang, IntegerResultsCompareExactly) {
  // i64 values near 2^40 round in f32: the exact integers tell them apart.
  const L::Program p = L::parse("i = ids 5 1099511627776 8\nwait i\n");
  L::RunResult a = L::run(p), b = L::run(p);
  ASSERT_EQ(a.observations[0].dtype, DType::i64);
  ASSERT_EQ(a.observations[0].exact, L::id_values(5, 8, int64_t{1} << 40));
  EXPECT_EQ(L::compare(a, b), "");
  b.observations[0].exact[3] += 1;  // the f32 values still agree
  EXPECT_NE(L::compare(a, b).find("element 3"), std::string::npos);
  b = a;
  b.observations[0].dtype = DType::f32;
  EXPECT_NE(L::compare(a, b).find("dtype"), std::string::npos);
}

TEST(GraphLang, LeafValuesAreDeterministicNonzeroAndInRange) {
  const auto a = L::leaf_values(5, 1000, false), b = L::leaf_values(5, 1000, false), c = L::leaf_values(6, 1000, false);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (float v : a) EXPECT_TRUE(v >= -2.f && v <= 2.f && v != 0.f) << v;
  for (float v : L::leaf_values(5, 1000, true)) EXPECT_TRUE(v >= 0.25f && v <= 2.f) << v;
}

TEST(GraphLang, RunMatchesHandWrittenOpsAndEagerRunsAgree) {
  const L::Program p = L::parse("x = rand 1 2 3\ny = pos 2 3\nz = mul x y\nwait z\ns = sum z 1\nq = sub s s\n");
  const L::RunResult deferred = L::run(p);
  EXPECT_TRUE(deferred.problems.empty());
  // wait z, then the leftovers x, y, z, s, q in definition order
  ASSERT_EQ(deferred.observations.size(), 6u);
  const auto x = L::leaf_values(1, 6, false), y = L::leaf_values(2, 3, true);
  const L::Observation& z = deferred.observations[0];
  EXPECT_EQ(z.outcome, "ok");
  EXPECT_EQ(z.shape, (Shape{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(z.values[static_cast<std::size_t>(i)], x[static_cast<std::size_t>(i)] * y[static_cast<std::size_t>(i % 3)]);
  EXPECT_EQ(deferred.observations[4].shape, (Shape{2}));
  EXPECT_EQ(deferred.observations[5].values, (std::vector<float>{0.f, 0.f}));
  L::RunOptions eager;
  eager.all_eager = true;
  EXPECT_EQ(L::compare(deferred, L::run(p, eager)), "");
}

TEST(GraphLang, CallTimeErrorsAreObservationsAndLaterUsesAreSkipped) {
  const L::Program p = L::parse("x = rand 1 2 3\ny = rand 2 4\nz = add x y\nw = neg z\nwait w\nv = sum x 5\nm = matmul x x\n");
  const L::RunResult r = L::run(p);
  EXPECT_TRUE(r.problems.empty());
  ASSERT_GE(r.observations.size(), 3u);
  EXPECT_EQ(r.observations[0].outcome, "invalid_argument");
  EXPECT_NE(r.observations[0].message.find("add"), std::string::npos) << r.observations[0].message;
  EXPECT_NE(r.observations[0].message.find("[2, 3]"), std::string::npos) << r.observations[0].message;
  EXPECT_EQ(r.observations[1].outcome, "invalid_argument");  // sum dim 5
  EXPECT_EQ(r.observations[2].outcome, "invalid_argument");  // matmul [2,3]x[2,3]
  EXPECT_NE(r.observations[2].message.find("matmul"), std::string::npos);
}

TEST(GraphLang, CompareFindsADifference) {
  const L::Program p = L::parse("x = rand 1 4\nwait x\n");
  L::RunResult a = L::run(p), b = L::run(p);
  EXPECT_EQ(L::compare(a, b), "");
  b.observations[0].values[2] += 1.f;
  EXPECT_NE(L::compare(a, b).find("element 2"), std::string::npos);
  b = a;
  b.observations[0].outcome = "DeviceError";
  EXPECT_NE(L::compare(a, b), "");
  b = a;
  b.observations.pop_back();
  EXPECT_NE(L::compare(a, b), "");
}

TEST(GraphLang, OversizedResultsAreSkippedNotRun) {
  // [64,64,1,1] + [64,64] broadcasts to 64^4 elements: skipped (no observation, no crash).
  const L::Program p = L::parse("a = rand 1 64 64 1 1\nb = rand 2 64 64\nc = add a b\nwait c\n");
  const L::RunResult r = L::run(p, {.wait_leftovers = false});
  EXPECT_TRUE(r.observations.empty());
}

TEST(GraphLang, SeedCorpusRunsCleanDeferredAgainstEager) {
  const std::filesystem::path dir = std::filesystem::path(DEFER_FUZZ_CORPUS_DIR);
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    SCOPED_TRACE(entry.path().filename().string());
    L::Program p;
    try {
      p = L::parse(text.str());
    } catch (const L::ParseError&) {
      continue;  // the corpus may hold malformed inputs on purpose
    }
    ++files;
    const L::RunResult a = L::run(p);
    L::RunOptions eager;
    eager.all_eager = true;
    eager.single_stream = true;
    const L::RunResult b = L::run(p, eager);
    EXPECT_TRUE(a.problems.empty()) << a.problems.front();
    EXPECT_EQ(L::compare(a, b), "");
  }
  EXPECT_GE(files, 5);
}

// ---- views (docs/api.md section 8) -------------------------------------------------------------------

TEST(GraphLang, ParsesAndPrintsEveryViewStatement) {
  const std::string text =
      "x = rand 1 2 3 4\nt = transpose x\nu = transpose x 0 -1\np = permute x 2 0 -2\nr = reshape x 4 -1\nv = view x 6 4\n"
      "q = unsqueeze x -1\ns = squeeze q 3\ne = expand q 5 -1 3 4 2\nl = slice x 2 -3 9223372036854775807 2\n"
      "c = select x 0 -1\nh = split x 2 1 1\nd = contiguous t\nj = cat x x 1\nk = cat x u p x -3\nz = reshape c\n";
  const L::Program p = L::parse(text);
  ASSERT_EQ(p.stmts.size(), 16u);
  EXPECT_EQ(L::to_text(p), text);
  EXPECT_EQ(p.stmts[1].kind, L::Kind::transpose);
  EXPECT_TRUE(p.stmts[1].ints.empty());
  EXPECT_EQ(p.stmts[2].ints, (std::vector<int64_t>{0, -1}));
  EXPECT_EQ(p.stmts[3].kind, L::Kind::permute);
  EXPECT_EQ(p.stmts[3].ints, (std::vector<int64_t>{2, 0, -2}));
  EXPECT_EQ(p.stmts[4].kind, L::Kind::reshape);
  EXPECT_EQ(p.stmts[4].ints, (std::vector<int64_t>{4, -1}));
  EXPECT_EQ(p.stmts[5].kind, L::Kind::view);
  EXPECT_EQ(p.stmts[6].kind, L::Kind::unsqueeze);
  EXPECT_EQ(p.stmts[6].dim, -1);
  EXPECT_EQ(p.stmts[7].kind, L::Kind::squeeze);
  EXPECT_EQ(p.stmts[8].kind, L::Kind::expand);
  EXPECT_EQ(p.stmts[8].ints, (std::vector<int64_t>{5, -1, 3, 4, 2}));
  EXPECT_EQ(p.stmts[9].kind, L::Kind::slice);
  EXPECT_EQ(p.stmts[9].dim, 2);
  EXPECT_EQ(p.stmts[9].ints, (std::vector<int64_t>{-3, INT64_MAX, 2}));
  EXPECT_EQ(p.stmts[10].kind, L::Kind::select);
  EXPECT_EQ(p.stmts[10].ints, (std::vector<int64_t>{-1}));
  EXPECT_EQ(p.stmts[11].kind, L::Kind::split);
  EXPECT_EQ(p.stmts[11].ints, (std::vector<int64_t>{2, 1}));  // size, part
  EXPECT_EQ(p.stmts[11].dim, 1);
  EXPECT_EQ(p.stmts[12].kind, L::Kind::contiguous);
  EXPECT_EQ(p.stmts[14].kind, L::Kind::cat);
  EXPECT_EQ(p.stmts[14].args.size(), 4u);
  EXPECT_EQ(p.stmts[14].dim, -3);
  EXPECT_TRUE(p.stmts[15].ints.empty());  // a 0-d result

  struct Row {
    const char* text;
    const char* message;
  } rows[] = {
      {"x = rand 1 2 3\nt = transpose x 0\n", "'transpose' takes 1 or 3 operand(s)"},
      {"x = rand 1 2 3\nt = transpose x 0 1 2\n", "'transpose' takes 1 or 3 operand(s)"},
      {"x = rand 1 2 3\nl = slice x 0 1 2\n", "'slice' takes 5 operand(s), got 4"},
      {"x = rand 1 2 3\nl = slice x 0 a 2 1\n", "start 'a' is not an integer"},
      {"x = rand 1 2 3\nl = slice x 0 0 99999999999999999999 1\n", "end '99999999999999999999' is not an integer"},
      {"x = rand 1 2 3\nr = reshape x 1 1 1 1 1 1 1 1 1 1 6\n", "'reshape' takes 1 to 11 operand(s), got 12"},
      {"x = rand 1 2 3\nr = reshape x 65537 -1\n", "extent 65537 is out of"},
      {"x = rand 1 2 3\np = permute x 0 9\n", "dim 9 is out of [-8, 8]"},
      {"x = rand 1 2 3\nc = cat 0\n", "'cat' takes 2 to 5 operand(s), got 1"},
      {"x = rand 1 2 3\nc = cat x x x x x 0\n", "'cat' takes 2 to 5 operand(s), got 6"},
      {"x = rand 1 2 3\nc = cat x y 0\n", "'y' is not defined"},
      {"x = rand 1 2 3\nc = cat x x\n", "dim 'x' is not an integer"},
      {"x = rand 1 2 3\nh = split x 2 0\n", "'split' takes 4 operand(s), got 3"},
      {"x = rand 1 2 3\nh = split x 2 0 70000\n", "part 70000 is out of"},
      {"x = rand 1 2 3\nh = select x 0\n", "'select' takes 3 operand(s), got 2"},
      {"x = rand 1 2 3\nh = unsqueeze x\n", "'unsqueeze' takes 2 operand(s), got 1"},
      {"x = rand 1 2 3\nh = contiguous x x\n", "'contiguous' takes 1 operand(s), got 2"},
      {"x = rand 1 2 3\nh = view\n", "'view' takes 1 to 11 operand(s), got 0"},
  };
  for (const Row& r : rows) {
    const std::string msg = parse_error(r.text);
    EXPECT_NE(msg.find(r.message), std::string::npos) << "text: " << r.text << "\ngot: '" << msg << "'";
  }
}

namespace {

// Each, after "x = rand 1 2 3 4", a view call that docs/api.md section 8 rejects: bad dims, extents,
// indices, steps, shapes that do not match, and view where the strides allow none.
const char* const kBadViews[] = {
           "t = transpose x 0 3\n", "s = rand 3\nt = transpose s\n", "s = rand 3\nt = transpose s 0 0\n",
           "p = permute x 0 1\n", "p = permute x 0 1 1\n", "p = permute x 0 1 -4\n", "r = reshape x 5 -1\n",
           "r = reshape x -1 -1\n", "r = reshape x 25\n", "r = reshape x 2 -2 -6\n", "e = rand 2 0 3\nr = reshape e -1 0\n",
           "r = reshape x 65536 65536 65536 65536 1 -1\n", "t = transpose x\nv = view t 24\n", "t = transpose x\nv = view t 2 12\n", "t = transpose x\nv = view t 8 3\n",
           "u = unsqueeze x 4\n", "u = unsqueeze x -5\n", "s = squeeze x 0\n", "s = squeeze x 3\n", "e = expand x 3 4\n",
           "e = expand x 2 3 5\n", "e = expand x -1 2 3 4\n", "e = expand x 2 3 -2\n", "l = slice x 0 0 2 0\n",
           "l = slice x 0 0 2 -1\n", "l = slice x 3 0 2 1\n", "s = rand 3\nl = slice s 0 0 1 1\n", "c = select x 0 2\n",
           "c = select x 2 -5\n", "c = select x -4 0\n", "h = split x 0 0 0\n", "h = split x 2 1 2\n", "h = split x 2 1 -1\n",
           "h = split x 1 3 0\n", "y = rand 2 2 3 5\nj = cat x y 1\n", "y = to x f16\nj = cat x y 0\n", "y = rand 2 3 4\nj = cat x y 0\n",
           "s = rand 3\nj = cat s s 0\n", "j = cat x x 3\n"};

// The type of the last statement of `text` (each statement typed from the ones before it).
std::optional<L::ValueType> last_type(const std::string& text) {
  const L::Program p = L::parse(text);
  std::vector<std::optional<L::ValueType>> types(p.names.size());
  for (const L::Stmt& s : p.stmts) {
    std::vector<L::ValueType> args;
    for (int a : s.args) args.push_back(*types[static_cast<std::size_t>(a)]);
    types[static_cast<std::size_t>(s.out)] = L::infer_type(s, args);
  }
  return types[static_cast<std::size_t>(p.stmts.back().out)];
}

}  // namespace

TEST(GraphLang, TheViewRulesGiveShapesAndLayouts) {
  const std::string x = "x = rand 1 2 3 4\n";
  const auto is = [&](const std::string& stmt, const Shape& shape, const Shape& strides) {
    const auto t = last_type(x + stmt);
    ASSERT_TRUE(t.has_value()) << stmt;
    EXPECT_EQ(t->shape, shape) << stmt;
    EXPECT_EQ(t->strides, strides) << stmt;  // canonical: empty when dense, 0 for extent-1 dims
    EXPECT_EQ(t->dtype, DType::f32) << stmt;
  };
  is("t = transpose x\n", {2, 4, 3}, {12, 1, 4});
  is("t = transpose x 0 2\n", {4, 3, 2}, {1, 4, 12});
  is("t = transpose x 1 1\n", {2, 3, 4}, {});
  is("t = permute x 1 -1 0\n", {3, 4, 2}, {4, 1, 12});
  is("t = reshape x 4 -1\n", {4, 6}, {});
  is("t = transpose x\nr = reshape t 2 12\n", {2, 12}, {});         // no view: copied, dense
  is("t = transpose x\nr = reshape t 2 2 2 3\n", {2, 2, 2, 3}, {12, 2, 1, 4});  // splits a dim: a view
  is("t = transpose x\nr = view t 2 4 1 3\n", {2, 4, 1, 3}, {12, 1, 0, 4});
  is("l = slice x 2 0 4 2\nv = view l 6 2\n", {6, 2}, {4, 2});  // dims 0 and 1 merge: stride 12 = 3 * 4
  is("u = unsqueeze x 0\n", {1, 2, 3, 4}, {});
  is("u = unsqueeze x -1\ne = expand u 5 -1 -1 -1 3\n", {5, 2, 3, 4, 3}, {0, 12, 4, 1, 0});
  is("e = rand 2 3 1\nf = expand e 2 3 0\n", {2, 3, 0}, {});  // no elements: any layout
  is("l = slice x 2 -3 100 2\n", {2, 3, 2}, {12, 4, 2});
  is("l = slice x 1 -100 -1 1\n", {2, 2, 4}, {12, 4, 1});
  is("l = slice x 1 2 1 1\n", {2, 0, 4}, {});
  is("l = slice x 0 -9223372036854775808 9223372036854775807 9223372036854775807\n", {1, 3, 4}, {});
  is("c = select x 1 -1\n", {2, 4}, {12, 1});
  is("h = split x 2 1 1\n", {2, 1, 4}, {12, 0, 1});
  is("h = split x 2 1 0\n", {2, 2, 4}, {12, 4, 1});
  is("e = rand 2 0 3\nh = split e 5 0 0\n", {0, 3}, {});
  is("t = transpose x\nd = contiguous t\n", {2, 4, 3}, {});
  is("t = transpose x\nj = cat t t 1\n", {2, 8, 3}, {});
  is("s = rand 3\nr = reshape s 1 1\n", {1, 1}, {});
  is("s = rand 3\nr = permute s\n", {}, {});
  is("s = rand 3\nr = expand s 2 3\n", {2, 3}, {0, 0});
  for (const char* bad : kBadViews) EXPECT_EQ(last_type(x + bad), std::nullopt) << bad;
}

TEST(GraphLang, ViewCallsTheRulesRejectAreRejectedInEitherMode) {
  for (const char* bad : kBadViews) {
    const L::Program p = L::parse(std::string("x = rand 1 2 3 4\n") + bad);
    for (const bool eager : {false, true}) {
      const L::RunResult r = L::run(p, {.all_eager = eager, .wait_leftovers = false});
      EXPECT_TRUE(r.problems.empty()) << bad << r.problems.front();
      ASSERT_EQ(r.observations.size(), 1u) << bad;
      const L::Observation& o = r.observations[0];
      EXPECT_EQ(o.outcome, "invalid_argument") << bad;
      EXPECT_NE(o.message.find(L::keyword(p.stmts.back())), std::string::npos) << bad << o.message;  // names the op
    }
  }
}

TEST(GraphLang, ViewsReadTheirOperandsElementsByIndex) {
  // x [2, 3, 4]; each view's elements by their index, from x's values; the runner also checks that
  // each waited tensor has the strides the layout rules give it.
  const L::Program p = L::parse(
      "x = rand 1 2 3 4\nt = transpose x 0 2\nl = slice x 2 -3 100 2\nc = select x 1 -1\nu = unsqueeze c 1\n"
      "e = expand u 2 3 4\nh = split x 2 1 1\nj = cat x h 1\nr = reshape t -1\nf = add t t\np = permute x 1 2 0\n"
      "g = relu e\nk = contiguous l\n");
  const auto xv = L::leaf_values(1, 24, false);
  const auto X = [&](int64_t i, int64_t j, int64_t k) { return xv[static_cast<std::size_t>((i * 3 + j) * 4 + k)]; };
  std::map<std::string, std::vector<float>> want;
  for (int64_t k = 0; k < 4; ++k)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t i = 0; i < 2; ++i) want["t"].push_back(X(i, j, k));
  want["r"] = want["t"];
  for (float v : want["t"]) want["f"].push_back(v + v);
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 1; k < 4; k += 2) want["l"].push_back(X(i, j, k));
  want["k"] = want["l"];
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t k = 0; k < 4; ++k) want["c"].push_back(X(i, 2, k));
  want["u"] = want["c"];
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 4; ++k) {
        want["e"].push_back(X(i, 2, k));
        want["g"].push_back(std::max(X(i, 2, k), 0.f));
      }
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t k = 0; k < 4; ++k) want["h"].push_back(X(i, 2, k));
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 4; ++j)
      for (int64_t k = 0; k < 4; ++k) want["j"].push_back(j < 3 ? X(i, j, k) : X(i, 2, k));
  for (int64_t j = 0; j < 3; ++j)
    for (int64_t k = 0; k < 4; ++k)
      for (int64_t i = 0; i < 2; ++i) want["p"].push_back(X(i, j, k));
  const std::map<std::string, Shape> shapes{{"t", {4, 3, 2}}, {"l", {2, 3, 2}}, {"c", {2, 4}},   {"u", {2, 1, 4}},
                                            {"e", {2, 3, 4}}, {"h", {2, 1, 4}}, {"j", {2, 4, 4}}, {"r", {24}},
                                            {"f", {4, 3, 2}}, {"p", {3, 4, 2}}, {"g", {2, 3, 4}}, {"k", {2, 3, 2}}};
  for (const bool eager : {false, true}) {
    const L::RunResult r = L::run(p, {.all_eager = eager});
    EXPECT_TRUE(r.problems.empty()) << r.problems.front();
    for (const L::Observation& o : r.observations) {
      if (o.name == "x") continue;
      EXPECT_EQ(o.outcome, "ok") << o.name << ": " << o.message;
      EXPECT_EQ(o.shape, shapes.at(o.name)) << o.name;
      EXPECT_EQ(o.values, want.at(o.name)) << o.name << (eager ? " (eager)" : " (deferred)");
    }
  }
  EXPECT_EQ(L::compare(L::run(p), L::run(p, {.all_eager = true, .single_stream = true})), "");
}

TEST(GraphLang, CanonicalStridesCompareLayoutsNotTheirSpelling) {
  EXPECT_EQ(L::canonical_strides({2, 3}, {3, 1}), Shape{});          // dense
  EXPECT_EQ(L::canonical_strides({2, 1, 3}, {3, 99, 1}), Shape{});   // an extent-1 dim's stride never matters
  EXPECT_EQ(L::canonical_strides({2, 0, 3}, {0, 5, 7}), Shape{});    // no elements
  EXPECT_EQ(L::canonical_strides({3, 2}, {1, 3}), (Shape{1, 3}));
  EXPECT_EQ(L::canonical_strides({1, 4}, {7, 0}), (Shape{0, 0}));    // expanded
  EXPECT_EQ(L::canonical_strides({}, {}), Shape{});
}
