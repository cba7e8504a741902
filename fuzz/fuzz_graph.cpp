// libFuzzer target: the input is a program in the graph language of tests/support/graph_lang.hpp.
// Parse errors are fine (most random inputs are not programs); a program runs twice on the CPU
// backend, once as written (deferred and eager mixed, several streams, fusion and replay switched)
// and once all eager on one stream, and the two must agree bit for bit; each run also checks the
// language's rules (RunResult::problems): every call the shape rules reject (views included) is
// rejected at the call and no other, every waited value has the shape, dtype and strides the rules
// give it, and a wait fails only with a run-time error. Any crash, sanitizer report, uncaught
// exception, disagreement or problem (abort) is a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include <defer/defer.hpp>

#include "graph_lang.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 8192) return 0;  // the language's limits make longer inputs pointless
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  defer::lang::Program program;
  try {
    program = defer::lang::parse(text);
  } catch (const defer::lang::ParseError&) {
    return 0;
  }
  defer::lang::RunOptions as_written;
  const defer::lang::RunResult a = defer::lang::run(program, as_written);
  defer::lang::RunOptions eager;
  eager.all_eager = true;
  eager.single_stream = true;
  eager.apply_switches = false;
  const defer::lang::RunResult b = defer::lang::run(program, eager);
  std::string problem = a.problems.empty() ? defer::lang::compare(a, b) : a.problems.front();
  if (problem.empty() && !b.problems.empty()) problem = b.problems.front();
  if (!problem.empty()) {
    std::fprintf(stderr, "defer fuzz: %s\n--- program ---\n%s", problem.c_str(), defer::lang::to_text(program).c_str());
    std::abort();
  }
  return 0;
}
