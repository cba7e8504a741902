// The chart: for each workload and size, one bar per deferred mode giving its speedup against
// eager (eager's median time / the mode's), on a log2 scale so that 2x faster and 2x slower are
// the same height above and below the eager line at 1x. Hand-written SVG 1.1: no scripts, no
// external fonts or styles, so that a browser (or GitHub's viewer) shows the file as it is.
// Hovering a bar shows its figures (an SVG <title>).
#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "report.hpp"

namespace defer_bench {
namespace {

std::string escaped(const std::string& s) {
  std::string e;
  for (char ch : s) {
    switch (ch) {
      case '&': e += "&amp;"; break;
      case '<': e += "&lt;"; break;
      case '>': e += "&gt;"; break;
      case '"': e += "&quot;"; break;
      default: e += ch;
    }
  }
  return e;
}

struct Series {
  const char* mode;
  const char* label;
  const char* color;
};
constexpr Series kSeries[] = {{"deferred", "deferred (no fusion)", "#9e9e9e"},
                              {"fused", "deferred + fused", "#1f77b4"},
                              {"graph", "deferred + graph replay", "#ff7f0e"}};

std::string px(double v) { return format_fixed(v, 1); }

}  // namespace

void write_svg(const std::string& path, const RunContext& c, const std::vector<CaseResult>& results) {
  // Groups in the order of the run; within a group, the results by mode.
  std::vector<std::pair<std::string, std::string>> groups;
  std::map<std::pair<std::string, std::string>, std::map<std::string, const CaseResult*>> by_group;
  for (const CaseResult& r : results) {
    const auto key = std::make_pair(r.workload, r.size);
    if (by_group.find(key) == by_group.end()) groups.push_back(key);
    by_group[key][r.mode] = &r;
  }

  // The vertical scale: powers of two around every value and around 1x.
  double lo = 0.5, hi = 2;
  for (const CaseResult& r : results)
    if (r.speedup > 0) {
      lo = std::min(lo, r.speedup);
      hi = std::max(hi, r.speedup);
    }
  const int lo_exp = static_cast<int>(std::floor(std::log2(lo)));
  const int hi_exp = static_cast<int>(std::ceil(std::log2(hi)));

  const double bar = 11, group_gap = 14, family_gap = 10;
  const double left = 64, right = 24, top = 92, plot_h = 300, bottom = 120;
  double plot_w = 0;
  std::vector<double> group_x;  // the left edge of each group
  for (std::size_t g = 0; g < groups.size(); ++g) {
    if (g > 0 && groups[g].first != groups[g - 1].first) plot_w += family_gap;
    group_x.push_back(left + plot_w + group_gap / 2);
    plot_w += 3 * bar + group_gap;
  }
  plot_w = std::max(plot_w, 420.0);
  const double width = left + plot_w + right, height = top + plot_h + bottom;
  const auto y_of = [&](double speedup) {
    const double t = (std::log2(speedup) - lo_exp) / static_cast<double>(hi_exp - lo_exp);
    return top + plot_h * (1 - t);
  };

  std::ostringstream s;
  s << R"(<?xml version="1.0" encoding="UTF-8"?>)" << "\n"
    << R"(<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width=")" << px(width) << R"(" height=")" << px(height)
    << R"(" viewBox="0 0 )" << px(width) << " " << px(height) << R"(" font-family="Helvetica, Arial, sans-serif">)"
    << "\n"
    << R"(<rect x="0" y="0" width=")" << px(width) << R"(" height=")" << px(height) << R"(" fill="#ffffff"/>)" << "\n";
  s << R"(<text x=")" << px(left) << R"(" y="24" font-size="16" font-weight="bold">)"
    << "defer-bench: speedup against eager (higher is better)</text>\n";
  s << R"(<text x=")" << px(left) << R"(" y="44" font-size="12" fill="#444444">)"
    << escaped(c.device + " (" + c.device_name + "), " + c.date + (c.quick ? ", --quick" : "") +
               "; median of " + std::to_string(c.repeats) + " repeats; log scale")
    << "</text>\n";

  // Legend.
  double lx = left;
  for (const Series& series : kSeries) {
    s << R"(<rect x=")" << px(lx) << R"(" y="58" width="12" height="12" fill=")" << series.color << R"("/>)"
      << R"(<text x=")" << px(lx + 17) << R"(" y="68.5" font-size="12">)" << series.label << "</text>\n";
    lx += 32 + 7.0 * static_cast<double>(std::string(series.label).size());
  }
  s << R"(<line x1=")" << px(lx) << R"(" y1="64" x2=")" << px(lx + 22) << R"(" y2="64" stroke="#000000" stroke-width="1.5" stroke-dasharray="5,3"/>)"
    << R"(<text x=")" << px(lx + 27) << R"(" y="68.5" font-size="12">eager = 1x</text>)" << "\n";

  // Grid and axis labels at each power of two.
  for (int e = lo_exp; e <= hi_exp; ++e) {
    const double v = std::ldexp(1.0, e);
    const double y = y_of(v);
    const std::string label = e >= 0 ? format_fixed(v, 0) + "x" : "1/" + format_fixed(1 / v, 0) + "x";
    s << R"(<line x1=")" << px(left) << R"(" y1=")" << px(y) << R"(" x2=")" << px(left + plot_w) << R"(" y2=")" << px(y)
      << R"(" stroke=")" << (e == 0 ? "#000000" : "#dddddd") << R"(" stroke-width=")" << (e == 0 ? "1.5" : "1")
      << (e == 0 ? R"(" stroke-dasharray="5,3)" : "") << R"("/>)"
      << R"(<text x=")" << px(left - 6) << R"(" y=")" << px(y + 4) << R"(" font-size="11" text-anchor="end">)"
      << label << "</text>\n";
  }
  s << R"(<text transform="translate(16,)" << px(top + plot_h / 2) << R"~() rotate(-90)" font-size="12" text-anchor="middle">)~"
    << "speedup against eager</text>\n";

  // Bars.
  const double base_y = y_of(1);
  for (std::size_t g = 0; g < groups.size(); ++g) {
    const auto& modes = by_group[groups[g]];
    const CaseResult* eager = modes.count("eager") != 0 ? modes.at("eager") : nullptr;
    for (std::size_t k = 0; k < std::size(kSeries); ++k) {
      const auto it = modes.find(kSeries[k].mode);
      if (it == modes.end()) continue;
      const CaseResult& r = *it->second;
      const double x = group_x[g] + static_cast<double>(k) * bar;
      std::string tip = r.workload + " " + r.size + ", " + kSeries[k].label + ": ";
      if (r.speedup <= 0) {  // the mode failed: a red cross instead of a bar
        s << R"(<text x=")" << px(x + bar / 2) << R"(" y=")" << px(base_y - 3)
          << R"(" font-size="12" fill="#d62728" text-anchor="middle">&#x2717;<title>)" << escaped(tip + "failed")
          << "</title></text>\n";
        continue;
      }
      tip += format_fixed(r.speedup, 2) + "x (" + format_duration(r.median_s) + " per step; eager " +
             (eager != nullptr ? format_duration(eager->median_s) : "-") + "), " +
             format_fixed(r.kernel_launches, 1) + " kernel launches per step";
      if (!r.matches) tip += ", MISMATCH against eager";
      const double y = y_of(r.speedup);
      s << R"(<rect x=")" << px(x) << R"(" y=")" << px(std::min(y, base_y)) << R"(" width=")" << px(bar - 1)
        << R"(" height=")" << px(std::max(std::abs(base_y - y), 0.5)) << R"(" fill=")" << kSeries[k].color << '"'
        << (r.matches ? "" : R"( stroke="#d62728" stroke-width="2")") << "><title>" << escaped(tip)
        << "</title></rect>\n";
    }
    const double label_x = group_x[g] + 1.5 * bar, label_y = top + plot_h + 12;
    s << R"(<text transform="translate()" << px(label_x) << "," << px(label_y)
      << R"~() rotate(-45)" font-size="11" text-anchor="end">)~" << escaped(groups[g].first + " " + groups[g].second)
      << "</text>\n";
  }
  s << R"(<rect x=")" << px(left) << R"(" y=")" << px(top) << R"(" width=")" << px(plot_w) << R"(" height=")"
    << px(plot_h) << R"(" fill="none" stroke="#888888"/>)" << "\n";
  s << "</svg>\n";

  std::ofstream file(path, std::ios::binary);
  file << s.str();
  file.close();
  if (!file) throw std::runtime_error("cannot write " + path);
}

}  // namespace defer_bench
