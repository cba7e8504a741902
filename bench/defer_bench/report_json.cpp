// JSON in Google Benchmark's layout, so that tools reading its files (compare.py, dashboards) find
// the fields they expect: each case is an aggregate (the median over the repeats) with its
// iterations, real_time and cpu_time in microseconds per step; defer's figures are custom fields.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "report.hpp"

namespace defer_bench {
namespace {

std::string quoted(const std::string& s) {
  std::string q = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      q += '\\';
      q += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      q += buf;
    } else {
      q += ch;
    }
  }
  return q + "\"";
}

// JSON has no infinity or NaN: those are written as null.
std::string number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

}  // namespace

void write_json(const std::string& path, const RunContext& c, const std::vector<CaseResult>& results) {
  std::ostringstream o;
  o << "{\n  \"context\": {\n"
    << "    \"date\": " << quoted(c.date) << ",\n"
    << "    \"host_name\": " << quoted(c.host_name) << ",\n"
    << "    \"executable\": " << quoted(c.executable) << ",\n"
    << "    \"num_cpus\": " << c.num_cpus << ",\n"
    << "    \"library_build_type\": " << quoted(c.build_type) << ",\n"
    << "    \"device\": " << quoted(c.device) << ",\n"
    << "    \"device_name\": " << quoted(c.device_name) << ",\n"
    << "    \"clock\": " << quoted(c.clock) << ",\n"
    << "    \"stream\": " << quoted(c.stream) << ",\n"
    << "    \"quick\": " << (c.quick ? "true" : "false") << ",\n"
    << "    \"repetitions\": " << c.repeats << ",\n"
    << "    \"warmup_steps\": " << c.warmup << ",\n"
    << "    \"tolerance\": " << number(c.tolerance) << ",\n"
    << "    \"all_match_eager\": " << (c.all_match ? "true" : "false") << "\n"
    << "  },\n  \"benchmarks\": [";
  for (std::size_t i = 0; i < results.size(); ++i) {
    const CaseResult& r = results[i];
    const std::string run_name = r.workload + "/" + r.size + "/" + r.mode;
    o << (i == 0 ? "\n" : ",\n") << "    {\n"
      << "      \"name\": " << quoted(run_name + "_median") << ",\n"
      << "      \"run_name\": " << quoted(run_name) << ",\n"
      << "      \"run_type\": \"aggregate\",\n"
      << "      \"aggregate_name\": \"median\",\n"
      << "      \"aggregate_unit\": \"time\",\n"
      << "      \"repetitions\": " << r.repeats << ",\n"
      << "      \"threads\": 1,\n"
      << "      \"iterations\": " << r.steps_per_repeat << ",\n"
      << "      \"real_time\": " << number(r.median_s * 1e6) << ",\n"
      << "      \"cpu_time\": " << number(r.cpu_s * 1e6) << ",\n"
      << "      \"time_unit\": \"us\",\n"
      << "      \"min_real_time\": " << number(r.min_s * 1e6) << ",\n"
      << "      \"max_real_time\": " << number(r.max_s * 1e6) << ",\n"
      << "      \"workload\": " << quoted(r.workload) << ",\n"
      << "      \"size\": " << quoted(r.size) << ",\n"
      << "      \"mode\": " << quoted(r.mode) << ",\n"
      << "      \"description\": " << quoted(r.description) << ",\n"
      << "      \"speedup_vs_eager\": " << number(r.speedup) << ",\n"
      << "      \"kernel_launches_per_step\": " << number(r.kernel_launches) << ",\n"
      << "      \"fused_kernels_per_step\": " << number(r.fused_kernels) << ",\n"
      << "      \"graph_launches_per_step\": " << number(r.graph_launches) << ",\n";
    if (r.bytes_per_second > 0) o << "      \"bytes_per_second\": " << number(r.bytes_per_second) << ",\n";
    if (r.flops_per_second > 0) o << "      \"flops_per_second\": " << number(r.flops_per_second) << ",\n";
    o << "      \"max_rel_error\": " << number(r.max_rel_error) << ",\n"
      << "      \"matches_eager\": " << (r.matches ? "true" : "false") << ",\n"
      << "      \"checksum\": " << number(r.checksum) << "\n"
      << "    }";
  }
  o << "\n  ]\n}\n";
  std::ofstream file(path, std::ios::binary);
  file << o.str();
  file.close();
  if (!file) throw std::runtime_error("cannot write " + path);
}

}  // namespace defer_bench
