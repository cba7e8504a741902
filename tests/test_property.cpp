// Property tests over random op graphs (tests/support/random_graph.hpp): every op of docs/api.md
// sections 5, 8 and 9 (every row of the op table, every reduction, casts between every dtype, index
// ops with indices in and out of range, every view op: views of pending results and of views,
// stride-0 expands, empty slices, element-wise chains, reductions, softmax, layer_norm and matmul
// reading strided operands, and now and then a view call the rules reject), broadcasting, shared
// subexpressions, f16/bf16 chains, random waits (wait and wait_all), several streams, eager and
// deferred mixed, fusion and graph replay switched on and off. For every case:
//   - deferred (as the program says) equals eager (every op eager, one stream) bit for bit;
//   - both are within the float64 reference's error bound (integers and booleans exactly; views
//     by index mapping, never by strides), and fail with std::out_of_range exactly where the
//     reference says an index is out of range; every waited tensor has the strides the layout
//     rules give it (graph_lang.hpp), and a call the rules reject is rejected (invalid_argument);
//   - the same structure with other leaf values (a plan that may be replayed) matches its reference.
// DEFER_PROPERTY_CASES sets the number of cases (default 2000, 400 under a sanitizer; split over
// shards that ctest runs in parallel), DEFER_PROPERTY_SEED the first seed. A failure prints the seed, the program and the
// failing value's pending graph (explain()).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include <defer/defer.hpp>

#include "support/graph_lang.hpp"
#include "support/random_graph.hpp"

using namespace defer;
using namespace defer::testing;
namespace L = defer::lang;

namespace {

constexpr int kShards = 8;

long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  return end != v && x >= 0 ? x : fallback;
}

// Sanitized builds run fewer cases by default (each is ~10 times slower there).
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr long kDefaultCases = 400;
#else
constexpr long kDefaultCases = 2000;
#endif
long total_cases() { return env_long("DEFER_PROPERTY_CASES", kDefaultCases); }
uint32_t first_seed() { return static_cast<uint32_t>(env_long("DEFER_PROPERTY_SEED", 1)); }

std::string explain_value(const L::Program& p, int id) {
  L::RunOptions build_only;
  build_only.skip_waits = true;
  build_only.wait_leftovers = false;
  const L::RunResult r = L::run(p, build_only);
  const auto it = r.held.find(id);
  return it == r.held.end() ? "(not held at the end)\n" : explain(it->second);
}

// Checks one program; returns "" or what went wrong (with everything needed to reproduce it).
std::string check_case(uint32_t seed) {
  const L::Program p = GraphGenerator(seed).generate();
  // A crash prints nothing of its own: DEFER_PROPERTY_VERBOSE=1 shows each program before it runs.
  if (env_long("DEFER_PROPERTY_VERBOSE", 0) != 0) std::fprintf(stderr, "--- seed %u ---\n%s", seed, L::to_text(p).c_str());
  std::ostringstream why;
  const auto report = [&](const std::string& what, int id) {
    why << "seed " << seed << " (rerun: DEFER_PROPERTY_SEED=" << seed << " DEFER_PROPERTY_CASES=1): " << what
        << "\n--- program ---\n" << L::to_text(p);
    if (id >= 0) why << "--- explain(" << p.names[static_cast<std::size_t>(id)] << "), before any wait ---\n" << explain_value(p, id);
    return why.str();
  };
  const Reference ref = evaluate(p);
  const L::RunResult deferred = L::run(p);
  L::RunOptions eager_options;
  eager_options.all_eager = true;
  eager_options.single_stream = true;
  eager_options.apply_switches = false;
  const L::RunResult eager = L::run(p, eager_options);
  if (!deferred.problems.empty()) return report(deferred.problems.front(), -1);
  if (const std::string d = L::compare(deferred, eager); !d.empty()) return report("deferred != eager: " + d, -1);
  for (const L::Observation& o : deferred.observations) {
    if (!ref.valid[static_cast<std::size_t>(o.id)]) {
      // A call the rules reject (the generator writes a few views so on purpose; the runner has
      // checked that the op rejected it too): rejected at the call, in both runs alike.
      if (o.outcome == "invalid_argument") continue;
      return report("'" + o.name + "' has no reference", o.id);
    }
    if (const std::string d = check_observation(o, ref.values[static_cast<std::size_t>(o.id)]); !d.empty())
      return report("'" + o.name + "' differs from the float64 reference: " + d, o.id);
  }
  // The same structure and shapes with other values: what a replayed plan must get right.
  const L::Program again = reseeded(p, seed);
  const Reference ref2 = evaluate(again);
  const L::RunResult second = L::run(again);
  if (!second.problems.empty()) return report("second run: " + second.problems.front(), -1);
  if (second.observations.size() != deferred.observations.size()) return report("second run: other observations", -1);
  for (const L::Observation& o : second.observations) {
    if (!ref2.valid[static_cast<std::size_t>(o.id)]) {
      if (o.outcome == "invalid_argument") continue;
      return report("second run: '" + o.name + "' has no reference", o.id);
    }
    if (const std::string d = check_observation(o, ref2.values[static_cast<std::size_t>(o.id)]); !d.empty())
      return report("second run (other leaf values): '" + o.name + "' differs from the float64 reference: " + d, o.id);
  }
  return "";
}

class Property : public ::testing::TestWithParam<int> {};

}  // namespace

TEST_P(Property, DeferredEqualsEagerEqualsFloat64Reference) {
  const long cases = total_cases();
  const uint32_t first = first_seed();
  const MemoryStats before = memory_stats(Device::cpu());
  int failures = 0;
  long ran = 0;
  for (long i = GetParam(); i < cases; i += kShards) {
    const std::string failure = check_case(first + static_cast<uint32_t>(i));
    ++ran;
    if (!failure.empty()) {
      ADD_FAILURE() << failure;
      if (++failures >= 3) break;
    }
  }
  EXPECT_EQ(memory_stats(Device::cpu()).allocated_bytes, before.allocated_bytes) << "the programs leaked tensors";
  RecordProperty("cases", static_cast<int>(ran));
}

INSTANTIATE_TEST_SUITE_P(Shards, Property, ::testing::Range(0, kShards));

TEST(PropertyHarness, GenerationIsReproducibleAndCoversEveryOp) {
  EXPECT_EQ(L::to_text(GraphGenerator(42).generate()), L::to_text(GraphGenerator(42).generate()));
  EXPECT_NE(L::to_text(GraphGenerator(42).generate()), L::to_text(GraphGenerator(43).generate()));
  // Over a few hundred programs every statement kind, every row of the op table, every reduction,
  // every dtype and both outcomes of an index op show up.
  // Views: of strided values and of views, stride 0, empty results, both transpose forms, slices
  // with negative positions and steps, rejected calls; and the other ops reading strided operands.
  std::set<std::string> seen;
  for (uint32_t seed = 1; seed <= 400; ++seed) {
    const L::Program p = GraphGenerator(seed).generate();
    EXPECT_EQ(L::to_text(L::parse(L::to_text(p))), L::to_text(p));
    const Reference ref = evaluate(p);
    std::vector<bool> made_by_view(p.names.size(), false);
    for (const L::Stmt& s : p.stmts) {
      seen.insert("kind " + std::to_string(static_cast<int>(s.kind)));
      seen.insert(L::keyword(s));
      if (s.out < 0) continue;
      const auto out = static_cast<std::size_t>(s.out);
      bool strided_operand = false, view_operand = false, operands_valid = true;
      for (int a : s.args) {
        operands_valid = operands_valid && ref.valid[static_cast<std::size_t>(a)];
        strided_operand = strided_operand || !ref.values[static_cast<std::size_t>(a)].strides.empty();
        view_operand = view_operand || made_by_view[static_cast<std::size_t>(a)];
      }
      const bool view = refb::is_view_or_copy(s.kind) && s.kind != L::Kind::contiguous && s.kind != L::Kind::cat;
      made_by_view[out] = view;
      if (!ref.valid[out]) {
        if (operands_valid) seen.insert("rejected " + L::keyword(s));
        continue;
      }
      const RefValue& v = ref.values[out];
      if (strided_operand) seen.insert(L::keyword(s) + " of a strided operand");
      if (view && view_operand) seen.insert("a view of a view");
      if (view && v.e.empty()) seen.insert("an empty view");
      for (std::size_t d = 0; d < v.strides.size(); ++d)
        if (v.shape[d] > 1 && v.strides[d] == 0) seen.insert("a stride-0 dim");
      if (s.kind == L::Kind::transpose) seen.insert(s.ints.empty() ? "transpose of the last two dims" : "transpose of two dims");
      if (s.kind == L::Kind::slice && s.ints[2] > 1) seen.insert("slice with a step");
      if (s.kind == L::Kind::slice && (s.ints[0] < 0 || s.ints[1] < 0)) seen.insert("slice from the end");
      if ((s.kind == L::Kind::reshape || s.kind == L::Kind::view) && std::count(s.ints.begin(), s.ints.end(), -1))
        seen.insert("an extent -1");
    }
    for (std::size_t id = 0; id < ref.values.size(); ++id) {
      if (!ref.valid[id]) continue;
      seen.insert(dtype_name(ref.values[id].dtype));
      if (ref.values[id].outcome == Outcome::out_of_range) seen.insert("out_of_range");
    }
  }
  for (int k = 0; k <= static_cast<int>(L::Kind::drop); ++k) EXPECT_TRUE(seen.count("kind " + std::to_string(k))) << "statement kind " << k;
  for (const kernels::ElementwiseInfo& row : kernels::kElementwiseOps) EXPECT_TRUE(seen.count(row.id)) << row.id;
  for (const kernels::ReduceInfo& row : kernels::kReduceOps) EXPECT_TRUE(seen.count(row.name)) << row.name;
  for (std::size_t t = 0; t < detail::kDTypeCount; ++t) EXPECT_TRUE(seen.count(detail::kDTypes[t].name)) << detail::kDTypes[t].name;
  EXPECT_TRUE(seen.count("out_of_range"));
  for (const char* what :
       {"add of a strided operand", "exp of a strided operand", "sum of a strided operand", "softmax of a strided operand",
        "layer_norm of a strided operand", "matmul of a strided operand", "reshape of a strided operand",
        "view of a strided operand", "contiguous of a strided operand", "cat of a strided operand", "a view of a view",
        "an empty view", "a stride-0 dim", "transpose of the last two dims", "transpose of two dims", "slice with a step",
        "slice from the end", "an extent -1", "rejected view", "rejected slice", "rejected permute"})
    EXPECT_TRUE(seen.count(what)) << what;
}

TEST(PropertyHarness, TheReferenceCheckCatchesWrongResults) {
  // A correct result passes; one element off by a little, a NaN, or a missing write does not.
  const L::Program p = L::parse(
      "x = rand 3 4 5\np = pos 4 5\ny = div x p\nz = softmax y 1\nn = layer_norm z p p\nt = transpose n\nm = matmul n t\ns = sum m 0\n");
  const Reference ref = evaluate(p);
  const L::RunResult r = L::run(p, {.wait_leftovers = true});
  ASSERT_EQ(r.observations.size(), 8u);
  for (const L::Observation& o : r.observations) {
    ASSERT_EQ(o.outcome, "ok");
    const RefValue& want = ref.values[static_cast<std::size_t>(o.id)];
    EXPECT_EQ(check_bounded(o.values, want), "") << o.name;
    if (o.values.empty()) continue;
    // Element-wise ops are held to a few ulps, softmax to 1e-4, layer_norm and what follows it (its
    // bound allows for the variance's rounding) to a thousandth of the largest value.
    const float rel = o.name == "x" || o.name == "p" || o.name == "y" ? 1e-5f : o.name == "z" ? 1e-4f : 1e-3f;
    auto off = o.values;
    std::size_t big = 0;
    for (std::size_t i = 0; i < off.size(); ++i)
      if (std::fabs(off[i]) > std::fabs(off[big])) big = i;
    off[big] += rel * std::fabs(off[big]);
    EXPECT_NE(check_bounded(off, want), "") << o.name << ": an error of " << rel << " of the largest value passed";
    off = o.values;
    off[0] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_NE(check_bounded(off, want), "") << o.name << ": a NaN passed";
    off = o.values;
    off.pop_back();
    EXPECT_NE(check_bounded(off, want), "") << o.name << ": a short result passed";
  }
}

TEST(PropertyHarness, TheReferenceChecksEveryDtypeAndTheOutcome) {
  // f16 values are held to their rounding (a 1% error fails), booleans and integers exactly, and an
  // index out of range must fail the wait.
  const L::Program p = L::parse(
      "x = rand 3 4 5\nh = to x f16\nt = tanh h\nb = gt_scalar x 0.25\na = argmax x 1\ni = ids 4 5 3\ne = index_select x 1 i\n"
      "j = ids 5 -2 3\nf = index_select x 1 j\n");
  const Reference ref = evaluate(p);
  const L::RunResult r = L::run(p);
  ASSERT_TRUE(r.problems.empty()) << r.problems.front();
  for (const L::Observation& o : r.observations) {
    const RefValue& want = ref.values[static_cast<std::size_t>(o.id)];
    EXPECT_EQ(check_observation(o, want), "") << o.name;
    L::Observation off = o;
    if (o.name == "t") off.values[1] *= 1.01f;
    else if (o.name == "b") off.values[2] = 1.f - off.values[2];
    else if (o.name == "a") off.exact[3] = (off.exact[3] + 1) % 5;
    else if (o.name == "f") off.outcome = "ok";
    else continue;
    EXPECT_NE(check_observation(off, want), "") << o.name << ": a wrong result passed";
  }
  EXPECT_EQ(ref.values[static_cast<std::size_t>(r.observations.back().id)].outcome, Outcome::out_of_range);
}

TEST(PropertyHarness, TheReferenceMapsViewsByIndex) {
  // Every view op of a [2, 3, 4] value, views of views, and ops reading them: the runs match the
  // reference; two elements of each swapped (or one missing) do not.
  const L::Program p = L::parse(
      "x = rand 3 2 3 4\nt = transpose x 0 2\np = permute x 1 2 0\nl = slice x 2 -3 100 2\nc = select t 1 -1\n"
      "u = unsqueeze c 0\ne = expand u 3 -1 -1\nh = split p 2 0 1\nr = reshape t 6 -1\nv = view l 6 2\n"
      "j = cat x x 1\nk = contiguous t\nq = squeeze h 0\ns = add e e\nw = transpose v\nm = matmul l w\n");
  const Reference ref = evaluate(p);
  for (const bool eager : {false, true}) {
    const L::RunResult r = L::run(p, {.all_eager = eager});
    ASSERT_TRUE(r.problems.empty()) << r.problems.front();
    ASSERT_EQ(r.observations.size(), p.names.size());
    for (const L::Observation& o : r.observations) {
      const RefValue& want = ref.values[static_cast<std::size_t>(o.id)];
      EXPECT_EQ(check_observation(o, want), "") << o.name;
      if (o.name == "x" || o.values.size() < 2) continue;
      L::Observation off = o;
      std::size_t k = 1;
      while (k < off.values.size() && off.values[k] == off.values[0]) ++k;
      if (k == off.values.size()) continue;
      std::swap(off.values[0], off.values[k]);
      EXPECT_NE(check_observation(off, want), "") << o.name << ": two elements swapped passed";
      off = o;
      off.values.pop_back();
      EXPECT_NE(check_observation(off, want), "") << o.name << ": a short result passed";
    }
  }
}

TEST(PropertyHarness, TheReferenceBroadcastsMatmulAsTorch) {
  // 1-D operands and broadcast batch dims (docs/api.md section 8), strided operands too.
  const L::Program p = L::parse(
      "v = rand 1 3\nb = rand 2 2 3 4\nm1 = matmul v b\nc = rand 3 2 1 3 4\nd = rand 4 5 4 2\nm2 = matmul c d\n"
      "m3 = matmul v v\nw = rand 5 4 3\nm4 = matmul w v\nt = transpose d 0 2\ne = rand 6 2 3 4\nm5 = matmul e t\n");
  const Reference ref = evaluate(p);
  const std::map<std::string, Shape> shapes{{"m1", {2, 4}}, {"m2", {2, 5, 3, 2}}, {"m3", {}}, {"m4", {4}}, {"m5", {2, 3, 5}}};
  for (const bool eager : {false, true}) {
    const L::RunResult r = L::run(p, {.all_eager = eager});
    ASSERT_TRUE(r.problems.empty()) << r.problems.front();
    for (const L::Observation& o : r.observations) {
      EXPECT_EQ(check_observation(o, ref.values[static_cast<std::size_t>(o.id)]), "") << o.name;
      if (shapes.count(o.name)) EXPECT_EQ(o.shape, shapes.at(o.name)) << o.name;
    }
  }
}

TEST(PropertyHarness, AFailingCaseReportsItsSeedProgramAndGraph) {
  // check_case's report for a value that exists: the program text and explain() of the value.
  const L::Program p = GraphGenerator(7).generate();
  int id = -1;
  for (const L::Stmt& s : p.stmts)
    if (s.out >= 0) id = s.out;
  const std::string graph = explain_value(p, id);
  EXPECT_NE(graph, "");
  EXPECT_EQ(check_case(7), "");
}
