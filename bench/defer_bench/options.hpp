#pragma once
// defer-bench's command line: what to run, how long, and where to write the reports.
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>

#include <defer/device.hpp>

namespace defer_bench {

// The transformer encoder block's geometry (--batch, --seq, --hidden, --heads).
struct BlockSize {
  std::int64_t batch = 1;
  std::int64_t seq = 128;
  std::int64_t hidden = 768;
  std::int64_t heads = 12;
  std::int64_t head_dim() const { return hidden / heads; }
  std::int64_t mlp() const { return 4 * hidden; }
};

struct Options {
  std::optional<defer::Device> device;  // --device; unset: defer::default_device()
  bool quick = false;                   // --quick: small sizes, few repeats (CI)
  int repeats = 0;                      // --repeats; 0: the default (7, or 3 with --quick)
  int warmup = 3;                       // --warmup: untimed steps before the timed ones
  double repeat_ms = 0;                 // --repeat-ms; 0: the default (25 ms, or 4 ms with --quick)
  double tolerance = 1e-4;              // --tolerance: max relative error against eager
  std::string filter;                   // --filter: run the workloads whose name contains it
  std::string json_path;                // --json FILE
  std::string svg_path;                 // --svg FILE
  std::optional<BlockSize> block;       // set when any of --batch/--seq/--hidden/--heads is given
  bool default_stream = false;          // --default-stream: run on the device's default stream, not
                                        // on a stream of the run's own
  bool help = false;                    // --help
};

// A bad command line; the message says what is wrong (main prints it and the usage, exit code 2).
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

Options parse_options(int argc, char** argv);  // throws UsageError
std::string usage_text(const char* argv0);

}  // namespace defer_bench
