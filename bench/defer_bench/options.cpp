#include "options.hpp"

#include <charconv>
#include <string_view>

namespace defer_bench {
namespace {

std::optional<defer::Device> parse_device(std::string_view s) {
  if (s == "cpu") return defer::Device::cpu();
  if (s == "cuda") return defer::Device::cuda(0);
  if (s.starts_with("cuda:") && s.size() > 5) {
    int index = -1;
    auto [end, ec] = std::from_chars(s.data() + 5, s.data() + s.size(), index);
    if (ec == std::errc() && end == s.data() + s.size() && index >= 0) return defer::Device::cuda(index);
  }
  return std::nullopt;
}

template <class T>
T parse_number(std::string_view flag, std::string_view value, T lowest) {
  T v{};
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (ec != std::errc() || end != value.data() + value.size() || v < lowest)
    throw UsageError(std::string(flag) + ": expected a number >= " + std::to_string(lowest) + ", got '" +
                     std::string(value) + "'");
  return v;
}

bool takes_value(std::string_view flag) {
  for (std::string_view known : {"--device", "--repeats", "--warmup", "--repeat-ms", "--tolerance", "--filter", "--json",
                                 "--svg", "--batch", "--seq", "--hidden", "--heads"})
    if (flag == known) return true;
  return false;
}

}  // namespace

Options parse_options(int argc, char** argv) {
  Options o;
  BlockSize block;
  bool block_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      o.help = true;
      continue;
    }
    if (arg == "--quick") {
      o.quick = true;
      continue;
    }
    if (arg == "--default-stream") {
      o.default_stream = true;
      continue;
    }
    // Every other flag takes a value: --flag VALUE or --flag=VALUE.
    std::string_view flag = arg, value;
    const auto eq = arg.find('=');
    if (arg.starts_with("--") && eq != std::string_view::npos) flag = arg.substr(0, eq);
    if (!takes_value(flag)) throw UsageError("unknown argument " + std::string(arg));
    if (eq != std::string_view::npos) {
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      throw UsageError("missing value for " + std::string(arg));
    }
    if (flag == "--device") {
      try {
        o.device = parse_device(value);
      } catch (const std::invalid_argument&) {
        o.device.reset();
      }
      // An unavailable CUDA device (DeviceError) is not a usage error: it propagates to main.
      if (!o.device) throw UsageError("--device: expected cpu, cuda or cuda:N, got '" + std::string(value) + "'");
    } else if (flag == "--repeats") {
      o.repeats = parse_number<int>(flag, value, 1);
    } else if (flag == "--warmup") {
      o.warmup = parse_number<int>(flag, value, 1);
    } else if (flag == "--repeat-ms") {
      o.repeat_ms = parse_number<double>(flag, value, 0.0);
    } else if (flag == "--tolerance") {
      o.tolerance = parse_number<double>(flag, value, 0.0);
    } else if (flag == "--filter") {
      o.filter = value;
    } else if (flag == "--json") {
      o.json_path = value;
    } else if (flag == "--svg") {
      o.svg_path = value;
    } else if (flag == "--batch") {
      block.batch = parse_number<std::int64_t>(flag, value, 1);
      block_given = true;
    } else if (flag == "--seq") {
      block.seq = parse_number<std::int64_t>(flag, value, 1);
      block_given = true;
    } else if (flag == "--hidden") {
      block.hidden = parse_number<std::int64_t>(flag, value, 1);
      block_given = true;
    } else if (flag == "--heads") {
      block.heads = parse_number<std::int64_t>(flag, value, 1);
      block_given = true;
    }
  }
  if (block_given) {
    if (block.hidden % block.heads != 0)
      throw UsageError("--hidden (" + std::to_string(block.hidden) + ") must be a multiple of --heads (" +
                       std::to_string(block.heads) + ")");
    o.block = block;
  }
  if ((!o.json_path.empty() && o.json_path.starts_with("--")) || (!o.svg_path.empty() && o.svg_path.starts_with("--")))
    throw UsageError("--json/--svg: expected a file name");
  return o;
}

std::string usage_text(const char* argv0) {
  return std::string("usage: ") + argv0 +
         " [options]\n"
         "\n"
         "Runs defer's standard benchmark suite (element-wise chains, reductions, softmax, layer_norm,\n"
         "matmul, a transformer encoder block) in four modes: eager, deferred, deferred+fused and\n"
         "deferred+graph replay; checks every mode's result against eager and prints a table.\n"
         "\n"
         "options:\n"
         "  --device cpu|cuda|cuda:N  where to run (default: defer::default_device(), see DEFER_DEVICE)\n"
         "  --quick                   small sizes and few repeats: a few seconds (CI)\n"
         "  --repeats N               timed repeats per case (default 7; 3 with --quick)\n"
         "  --warmup N                untimed steps before timing (default 3)\n"
         "  --repeat-ms MS            minimum duration of one repeat; short steps are run several\n"
         "                            times per repeat (default 25; 4 with --quick)\n"
         "  --tolerance X             max relative error against eager before the run fails\n"
         "                            (default 1e-4)\n"
         "  --filter TEXT             only the workloads whose name contains TEXT\n"
         "  --batch N --seq N --hidden N --heads N\n"
         "                            the transformer block's size (default: two sizes, 1x128x768 with\n"
         "                            12 heads and 1x64x256 with 4 heads; --hidden must be a multiple\n"
         "                            of --heads)\n"
         "  --default-stream          run on the device's default stream instead of a stream\n"
         "                            created for the run\n"
         "  --json FILE               write every result as JSON (Google Benchmark's conventions)\n"
         "  --svg FILE                draw the speedups against eager as a self-contained SVG chart\n"
         "  --help                    print this and exit\n"
         "\n"
         "exit status: 0 all results match eager, 1 a mismatch or a run-time error, 2 a bad command line\n";
}

}  // namespace defer_bench
