// The console table: one row per mode, grouped by workload and size.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "report.hpp"

namespace defer_bench {

std::string format_fixed(double value, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, value);
  return buf;
}

std::string format_duration(double seconds) {
  const auto three_digits = [](double v, const char* unit) {
    const int decimals = v >= 100 ? 0 : v >= 10 ? 1 : 2;
    return format_fixed(v, decimals) + " " + unit;
  };
  if (seconds <= 0) return "-";
  if (seconds < 1e-3) return three_digits(seconds * 1e6, "us");
  if (seconds < 1) return three_digits(seconds * 1e3, "ms");
  return three_digits(seconds, "s");
}

namespace {

std::string format_error(double e) {
  if (std::isinf(e)) return "FAILED";
  if (e == 0) return "0";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1e", e);
  return buf;
}

std::string format_count(double v) {
  return std::abs(v - std::round(v)) < 0.05 ? format_fixed(std::round(v), 0) : format_fixed(v, 1);
}

// Three significant digits or so: 0.61, 12.3, 759.6, 1459.
std::string rate(double per_second, const char* unit) {
  const double g = per_second * 1e-9;
  return format_fixed(g, g < 10 ? 2 : g < 1000 ? 1 : 0) + " " + unit;
}

std::string throughput(const CaseResult& r) {
  if (r.bytes_per_second > 0) return rate(r.bytes_per_second, "GB/s");
  if (r.flops_per_second > 0) return rate(r.flops_per_second, "GFLOP/s");
  return "";
}

}  // namespace

void print_table(std::FILE* out, const RunContext& c, const std::vector<CaseResult>& results) {
  std::fprintf(out, "defer-bench on %s (%s), %s%s\n", c.device.c_str(), c.device_name.c_str(), c.date.c_str(),
               c.quick ? ", --quick" : "");
  std::fprintf(out,
               "time per step: median [min, max] of %d repeats, clock %s, %s stream; vs eager: eager's median / "
               "this median\n"
               "launches, graphs: kernels queued and graphs replayed per step; err: max |x - eager| / max |eager|\n\n",
               c.repeats, c.clock.c_str(), c.stream == "default" ? "the default" : "its own");

  const std::vector<std::string> header = {"workload", "size",     "mode",   "median", "[min, max]",
                                           "vs eager", "launches", "graphs", "throughput", "err"};
  std::vector<std::vector<std::string>> rows;
  for (const CaseResult& r : results) {
    std::string range("[");  // appended, not "[" + ...: GCC 12 warns (-Wrestrict) on that form
    range.append(format_duration(r.min_s)).append(", ").append(format_duration(r.max_s)).append("]");
    rows.push_back({r.workload, r.size, r.mode, format_duration(r.median_s), range,
                    r.speedup > 0 ? format_fixed(r.speedup, 2) + "x" : "-", format_count(r.kernel_launches),
                    format_count(r.graph_launches), throughput(r),
                    format_error(r.max_rel_error) + (r.matches ? "" : " MISMATCH")});
  }
  std::vector<std::size_t> width(header.size());
  for (std::size_t i = 0; i < header.size(); ++i) width[i] = header[i].size();
  for (const auto& row : rows)
    for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  // Text columns left-aligned, numbers right-aligned.
  const auto right = [](std::size_t i) { return i >= 3 && i != 4 && i != 9; };
  const auto print_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      const std::string pad(width[i] - row[i].size(), ' ');
      line += right(i) ? pad + row[i] : row[i] + pad;
      if (i + 1 < row.size()) line += "  ";
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::fprintf(out, "%s\n", line.c_str());
  };
  print_row(header);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const bool new_group = i > 0 && (results[i].workload != results[i - 1].workload || results[i].size != results[i - 1].size);
    if (new_group) std::fprintf(out, "\n");
    print_row(rows[i]);
  }
  std::size_t failed = 0;
  for (const CaseResult& r : results) failed += r.matches ? 0 : 1;
  std::fprintf(out, "\n%zu cases, %s\n", results.size(),
               failed == 0 ? ("all match eager within " + format_error(c.tolerance)).c_str()
                           : (std::to_string(failed) + " MISMATCH eager beyond " + format_error(c.tolerance)).c_str());
}

}  // namespace defer_bench
