// The fuzz target's graph language (tests/support/graph_lang.*): parsing, printing, error lines,
// the shape and dtype rules, running a program deferred and eagerly, and the fuzz corpus itself, so
// that the target's code is exercised in every normal build, not only in the clang fuzzing build.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
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
