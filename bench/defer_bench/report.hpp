#pragma once
// The three reports of a run: the table on stdout, and on request a JSON file and an SVG chart.
#include <cstdio>
#include <string>
#include <vector>

#include "result.hpp"

namespace defer_bench {

void print_table(std::FILE* out, const RunContext& context, const std::vector<CaseResult>& results);

// Google Benchmark's JSON layout: {"context": {...}, "benchmarks": [{"name", "run_name", "run_type",
// "iterations", "real_time", "cpu_time", "time_unit", ...custom fields}]}. Throws std::runtime_error
// when the file cannot be written.
void write_json(const std::string& path, const RunContext& context, const std::vector<CaseResult>& results);

// A self-contained SVG (no scripts, no external fonts or styles): grouped bars of the speedup
// against eager per workload and size, one bar per deferred mode, on a log scale.
void write_svg(const std::string& path, const RunContext& context, const std::vector<CaseResult>& results);

// Shared formatting.
std::string format_duration(double seconds);  // "812 us", "2.41 ms", "1.20 s"
std::string format_fixed(double value, int decimals);

}  // namespace defer_bench
