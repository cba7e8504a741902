// defer-bench: defer's standard benchmark. Runs each workload (element-wise chains, reductions,
// softmax, layer_norm, a linear layer, a transformer encoder block) in four modes (eager,
// deferred, deferred + fused, deferred + graph replay), checks every mode's result against eager,
// prints a table and optionally writes JSON and an SVG chart. `defer-bench --help` for the flags.
//
// Exit status: 0 when every result matches eager; 1 on a mismatch or a run-time error (such as
// --device cuda without a GPU); 2 on a bad command line.
#include <chrono>
#include <cstdio>
#include <ctime>
#include <exception>
#include <string>
#include <thread>
#include <unistd.h>

#include <defer/defer.hpp>

#include "device_info.hpp"
#include "modes.hpp"
#include "options.hpp"
#include "progress.hpp"
#include "report.hpp"
#include "runner.hpp"
#include "timing.hpp"
#include "workload.hpp"

namespace {

std::string local_date() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[40];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S%z", &tm);
  return buf;
}

std::string host_name() {
  char buf[256] = {};
  return gethostname(buf, sizeof buf - 1) == 0 ? std::string(buf) : std::string();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace defer_bench;
  const char* argv0 = argc > 0 ? argv[0] : "defer-bench";
  Options options;
  try {
    options = parse_options(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "defer-bench: %s\n%s", e.what(), usage_text(argv0).c_str());
    return 2;
  } catch (const std::exception& e) {  // e.g. Device::cuda(7) on a machine with one GPU
    std::fprintf(stderr, "defer-bench: error: %s\n", e.what());
    return 1;
  }
  if (options.help) {
    std::fputs(usage_text(argv0).c_str(), stdout);
    return 0;
  }

  try {
    // An explicit CUDA request that cannot be served throws DeviceError here: never a fallback.
    const defer::Device device = options.device ? *options.device : defer::default_device();
    // A stream of the run's own, as an application that overlaps work would have, made current
    // for everything below (inputs, steps, timing); --default-stream runs on the device's default
    // stream instead, as code that never creates a stream does.
    const defer::Stream stream =
        options.default_stream ? defer::current_stream(device) : defer::Stream::create(device);
    const defer::StreamGuard on_stream(stream);

    RunSettings settings;
    settings.repeats = options.repeats > 0 ? options.repeats : options.quick ? 3 : 7;
    settings.warmup = options.warmup;
    settings.repeat_s = (options.repeat_ms > 0 ? options.repeat_ms : options.quick ? 4.0 : 25.0) * 1e-3;
    settings.tolerance = options.tolerance;

    const std::vector<Workload> suite = standard_suite(options, device);
    if (suite.empty()) {
      std::fprintf(stderr, "defer-bench: no workload matches --filter '%s'\n", options.filter.c_str());
      return 2;
    }
    const std::unique_ptr<StepTimer> timer = make_step_timer(stream);

    RunContext context;
    context.date = local_date();
    context.host_name = host_name();
    context.executable = argv0;
    context.device = device.str();
    context.device_name = device_name(device);
    context.clock = timer->clock_name();
    context.stream = options.default_stream ? "default" : "own";
#ifdef NDEBUG
    context.build_type = "release";
#else
    context.build_type = "debug";
#endif
    context.num_cpus = static_cast<int>(std::thread::hardware_concurrency());
    context.quick = options.quick;
    context.repeats = settings.repeats;
    context.warmup = settings.warmup;
    context.tolerance = settings.tolerance;

    std::vector<CaseResult> results;
    {
      Progress progress(suite.size());
      results = run_suite(suite, settings, device, *timer, progress);
    }
    for (const CaseResult& r : results) context.all_match = context.all_match && r.matches;

    print_table(stdout, context, results);
    std::fflush(stdout);
    if (!options.json_path.empty()) write_json(options.json_path, context, results);
    if (!options.svg_path.empty()) write_svg(options.svg_path, context, results);
    if (!context.all_match) {
      std::fprintf(stderr, "defer-bench: some results do not match eager within %g (see the err column)\n",
                   settings.tolerance);
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "defer-bench: error: %s\n", e.what());
    return 1;
  }
}
