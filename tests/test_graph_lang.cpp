// The fuzz target's graph language (fuzz/graph_lang.*): parsing, printing, error lines, running a
// program deferred and eagerly, and the fuzz corpus itself, so that the target's code is exercised
// in every normal build, not only in the clang fuzzing build.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <defer/defer.hpp>

#include "graph_lang.hpp"

using namespace defer;
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
      "x = rand 7 3 4\np = pos 8 4\ny = add x p\nz = muls y -1.5\nu = gelu z\ns = sum u -1 keep\nm = softmax u 0\n"
      "n = layer_norm x p p 0.001\nt = transpose x\nw = matmul x t\nv = max w 1\nq = mean v 0\nmode eager\nstream 3\n"
      "fusion off\ngraphs on\nwait u\nwait_all s m\ndrop y\n";
  const L::Program p = L::parse(text);
  ASSERT_EQ(p.stmts.size(), 19u);
  EXPECT_EQ(p.names.size(), 12u);
  EXPECT_EQ(p.stmts[0].kind, L::Kind::rand);
  EXPECT_EQ(p.stmts[0].seed, 7u);
  EXPECT_EQ(p.stmts[0].shape, (Shape{3, 4}));
  EXPECT_EQ(p.stmts[1].kind, L::Kind::pos);
  EXPECT_EQ(p.stmts[2].kind, L::Kind::binary);
  EXPECT_EQ(p.stmts[2].binary, L::Binary::add);
  EXPECT_EQ(p.stmts[3].kind, L::Kind::scalar);
  EXPECT_EQ(p.stmts[3].binary, L::Binary::mul);
  EXPECT_FLOAT_EQ(p.stmts[3].scalar, -1.5f);
  EXPECT_EQ(p.stmts[4].unary, L::Unary::gelu);
  EXPECT_EQ(p.stmts[5].kind, L::Kind::sum);
  EXPECT_EQ(p.stmts[5].dim, -1);
  EXPECT_TRUE(p.stmts[5].keepdim);
  EXPECT_EQ(p.stmts[7].kind, L::Kind::layer_norm);
  EXPECT_FLOAT_EQ(p.stmts[7].scalar, 0.001f);
  EXPECT_EQ(p.stmts[10].kind, L::Kind::max);
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
      {"x = rand 1 2\ny = adds x 1.5q\n", "'1.5q' is not a number"},
      {"x = rand 1 2\ny = sum x\n", "takes 2 to 3 operand(s), got 1"},
      {"x = rand 1 2\ny = sum x 0 keeep\n", "expected 'keep'"},
      {"x = rand 1 2\ny = sum x 99\n", "dim 99 is out of [-8, 8]"},
      {"stream 4\n", "stream 4 is out of [0, 3]"},
      {"mode lazy\n", "mode takes eager or deferred"},
      {"x = rand 1 2\nwait\n", "wait takes one name"},
      {"3x = rand 1 2\n", "'3x' is not a valid name"},
      {"x =\n", "'=' needs an op"},
      {"x = rand 99999999999999999999 2\n", "is not an integer"},
  };
  for (const Row& r : rows) {
    const std::string msg = parse_error(r.text);
    EXPECT_NE(msg.find(r.message), std::string::npos) << "text: " << r.text << "\ngot: '" << msg << "'";
  }
  std::string many;
  for (int i = 0; i <= L::kMaxStatements; ++i) many += "x" + std::to_string(i) + " = rand 1 2\n";
  EXPECT_NE(parse_error(many).find("more than 256 statements"), std::string::npos);
  // Comments, blank lines, tabs and CR line ends are fine.
  EXPECT_EQ(L::parse("# nothing\n\n\tx = rand 1 2\r\n  # more\n").stmts.size(), 1u);
  EXPECT_EQ(L::parse("").stmts.size(), 0u);
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
