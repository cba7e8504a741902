#!/usr/bin/env python3
"""PyTorch's side of defer-bench: the same element-wise chains and transformer encoder block, at the
same sizes and with the same flags, in PyTorch eager, torch.compile (Inductor) and torch.compile
with CUDA graphs (mode="reduce-overhead"), printed in defer-bench's table format.

    python3 bench/pytorch_compare.py [--device cuda] [--quick] [--json FILE] ...
    ./build/default/bench/defer-bench --filter chain        # defer's rows for the same workloads
    ./build/default/bench/defer-bench --filter transformer

Read the two tables side by side: the workloads, sizes, warm-up, repeats and timing method are the
same (CUDA events around each step on the GPU, time.perf_counter around each step including a
synchronize on the CPU; the median over interleaved repeats). The modes line up as
    defer eager    <-> torch eager          (one kernel per op)
    defer fused    <-> torch.compile        (element-wise ops fused into generated kernels)
    defer graph    <-> compile+cudagraphs   (a repeated step replayed as one CUDA graph)
Speedups in each table are against that framework's own eager mode; compare absolute times across
the tables. The inputs are drawn from torch's generator, not defer-bench's, so checksums differ;
each mode is checked against torch eager instead (exit status 1 on a mismatch).

The transformer block is written the usual way (one [hidden, hidden] projection per Q, K, V and
output, heads split by view/transpose), as defer-bench's `transformer`. The workloads are defined in
bench/peer_workloads.py, shared with bench/cpu_compare.py (the CPU comparison with numpy, jax.jit
and a hand-written loop as well, in one table of ratios).

Kernel launches per step (CUDA only) are counted once per mode, outside the timed steps, with
torch.profiler: the host's kernel-launch calls (cudaLaunchKernel, cuLaunchKernel for Triton) and
graph launches (cudaGraphLaunch). Needs PyTorch 2.1 or newer.
"""

import argparse
import datetime
import json
import math
import os
import socket
import sys

MODES = ("eager", "compile", "compile+cudagraphs")


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Runs defer-bench's element-wise chains and transformer block in PyTorch eager and "
        "torch.compile and prints defer-bench's table.")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--quick", action="store_true", help="small sizes and few repeats (as defer-bench --quick)")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats per case (default 7; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3; compilation happens here)")
    p.add_argument("--repeat-ms", type=float, default=0.0,
                   help="minimum duration of one repeat (default 25; 4 with --quick)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max relative error against eager (default 1e-4)")
    p.add_argument("--filter", default="", help="only the workloads whose name/size contains this text")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--heads", type=int, default=None)
    p.add_argument("--json", default="", help="write the results as JSON (defer-bench's layout)")
    args = p.parse_args(argv)
    if args.repeats < 0 or args.warmup < 1 or args.repeat_ms < 0 or args.tolerance < 0:
        p.error("--repeats, --warmup, --repeat-ms and --tolerance must be positive")
    for name in ("batch", "seq", "hidden", "heads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error("--%s must be >= 1" % name)
    args.modes = [m for m in args.modes.split(",") if m]
    for m in args.modes:
        if m not in MODES:
            p.error("--modes: unknown mode %r (known: %s)" % (m, ", ".join(MODES)))
    # Eager first: the reference every other mode is checked against.
    args.modes = ["eager"] + [m for m in dict.fromkeys(args.modes) if m != "eager"]
    given = [getattr(args, n) for n in ("batch", "seq", "hidden", "heads")]
    if any(v is not None for v in given):
        b, s, h, n = (v if v is not None else d for v, d in zip(given, (1, 128, 768, 12)))
        if h % n != 0:
            p.error("--hidden (%d) must be a multiple of --heads (%d)" % (h, n))
        args.blocks = [(b, s, h, n)]
    elif args.quick:
        args.blocks = [(1, 32, 128, 4)]
    else:
        args.blocks = [(1, 64, 256, 4), (1, 128, 768, 12)]
    if args.repeats == 0:
        args.repeats = 3 if args.quick else 7
    if args.repeat_ms == 0:
        args.repeat_ms = 4.0 if args.quick else 25.0
    return args


def standard_suite(args, device):
    """defer-bench's element-wise chains and transformer block (bench/peer_workloads.py)."""
    return [w for w in peer_workloads.defer_bench_suite(args.quick, device, args.blocks, args.filter)
            if w.name in ("chain8", "chain8_mix", "transformer")]


def make_step(workload, mode, inputs):
    def fn(*a):
        return workload.fn(peer_workloads.TorchOps, *a)

    if mode == "compile":
        fn = torch.compile(fn, dynamic=False)
    elif mode == "compile+cudagraphs":
        fn = torch.compile(fn, mode="reduce-overhead", dynamic=False)
    mark = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)

    def step():
        if mode == "compile+cudagraphs" and mark is not None:
            mark()  # a new step: the previous step's graph outputs may be overwritten
        return fn(*inputs)

    return step


def count_launches(step, device):
    """Kernel and graph launches of one step, from torch.profiler; (None, None) when unavailable."""
    if device.type != "cuda":
        return None, None
    try:
        import warnings
        from torch.profiler import ProfilerActivity, profile
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the profiler's notes about its own cycles
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                step()
                torch.cuda.synchronize(device)
        kernels = graphs = 0
        for e in prof.events():
            if "GraphLaunch" in e.name:
                graphs += 1
            elif e.name in ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                            "cudaLaunchCooperativeKernel"):
                kernels += 1
        return kernels, graphs
    except Exception:  # the profiler is optional; the timings do not depend on it
        return None, None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_workload(workload, args, device, timer):
    # Compiled code of the previous workload is dropped, so that Dynamo's per-function cache limit
    # (8 variants) is never reached by a function compiled at many sizes and in two modes.
    torch._dynamo.reset()
    inputs = workload.make_inputs()
    runs = []
    for mode in args.modes:
        run = {"name": mode, "mode": mode, "keep": lambda out: out.detach().clone()}
        try:
            run["step"] = make_step(workload, mode, inputs)
        except Exception as e:
            print("pytorch_compare: %s %s %s failed: %s" % (workload.name, workload.size, mode, e), file=sys.stderr)
            run["failed"] = True
        runs.append(run)

    def launches(run):
        run["launches"], run["graphs"] = count_launches(run["step"], device)

    peer_workloads.time_runs(runs, args.warmup, args.repeats, args.repeat_ms, timer,
                             "pytorch_compare: %s %s" % (workload.name, workload.size), after_warmup=launches)
    reference = runs[0]["first"]
    results = []
    eager_median = 0.0
    for run in runs:
        r = {"workload": workload.name, "size": workload.size, "mode": run["mode"], "repeats": args.repeats,
             "iterations": run["steps"], "median_s": 0.0, "min_s": 0.0, "max_s": 0.0, "speedup": 0.0,
             "launches": run.get("launches"), "graphs": run.get("graphs"), "bytes_per_second": 0.0,
             "flops_per_second": 0.0, "max_rel_error": math.inf}
        if not run["failed"] and run["per_step"]:
            r["median_s"], r["min_s"], r["max_s"] = peer_workloads.median_min_max(run["per_step"])
            if workload.bytes_per_step:
                r["bytes_per_second"] = workload.bytes_per_step / r["median_s"]
            if workload.flops_per_step:
                r["flops_per_second"] = workload.flops_per_step / r["median_s"]
            out = run["step"]().detach().clone()  # one more step, outside the timing, for the check
            sync(device)
            if reference is not None:
                r["max_rel_error"] = peer_workloads.max_relative_error(out.double().cpu().numpy(),
                                                                       reference.double().cpu().numpy())
            r["checksum"] = out.double().sum().item()
        if run["mode"] == "eager":
            eager_median = r["median_s"]
        r["speedup"] = eager_median / r["median_s"] if r["median_s"] > 0 and eager_median > 0 else 0.0
        r["matches"] = r["max_rel_error"] <= args.tolerance
        results.append(r)
    return results


# ---- the table, in defer-bench's format (bench/defer_bench/report_table.cpp)

def fmt_error(e):
    if math.isinf(e):
        return "FAILED"
    return "0" if e == 0 else "%.1e" % e


def fmt_count(v):
    return "-" if v is None else str(v)


def fmt_throughput(r):
    def rate(v, unit):
        g = v * 1e-9
        return "%.*f %s" % (2 if g < 10 else 1 if g < 1000 else 0, g, unit)

    if r["bytes_per_second"] > 0:
        return rate(r["bytes_per_second"], "GB/s")
    if r["flops_per_second"] > 0:
        return rate(r["flops_per_second"], "GFLOP/s")
    return ""


def print_table(ctx, results, out=sys.stdout):
    print("pytorch_compare on %s (%s), %s%s" % (ctx["device"], ctx["device_name"], ctx["date"],
                                                ", --quick" if ctx["quick"] else ""), file=out)
    print("time per step: median [min, max] of %d repeats, clock %s; vs eager: torch eager's median / this median"
          % (ctx["repeats"], ctx["clock"]), file=out)
    print("launches, graphs: kernels and graphs launched per step (torch.profiler, CUDA only); "
          "err: max |x - eager| / max |eager|\n", file=out)
    header = ["workload", "size", "mode", "median", "[min, max]", "vs eager", "launches", "graphs", "throughput", "err"]
    rows = []
    for r in results:
        rows.append([r["workload"], r["size"], r["mode"], peer_workloads.fmt_duration(r["median_s"]),
                     "[%s, %s]" % (peer_workloads.fmt_duration(r["min_s"]), peer_workloads.fmt_duration(r["max_s"])),
                     "%.2fx" % r["speedup"] if r["speedup"] > 0 else "-", fmt_count(r["launches"]),
                     fmt_count(r["graphs"]), fmt_throughput(r),
                     fmt_error(r["max_rel_error"]) + ("" if r["matches"] else " MISMATCH")])
    width = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(row):
        cells = [c.rjust(width[i]) if i >= 3 and i not in (4, 9) else c.ljust(width[i]) for i, c in enumerate(row)]
        return "  ".join(cells).rstrip()

    print(line(header), file=out)
    for i, row in enumerate(rows):
        if i > 0 and (results[i]["workload"], results[i]["size"]) != (results[i - 1]["workload"], results[i - 1]["size"]):
            print(file=out)
        print(line(row), file=out)
    failed = sum(1 for r in results if not r["matches"])
    print("\n%d cases, %s" % (len(results), "all match eager within %s" % fmt_error(ctx["tolerance"]) if failed == 0
                              else "%d MISMATCH eager beyond %s" % (failed, fmt_error(ctx["tolerance"]))), file=out)


def write_json(path, ctx, results):
    def num(v):
        return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v

    benchmarks = []
    for r in results:
        run_name = "%s/%s/%s" % (r["workload"], r["size"], r["mode"])
        b = {"name": run_name + "_median", "run_name": run_name, "run_type": "aggregate", "aggregate_name": "median",
             "aggregate_unit": "time", "repetitions": r["repeats"], "threads": 1, "iterations": r["iterations"],
             "real_time": r["median_s"] * 1e6, "time_unit": "us", "min_real_time": r["min_s"] * 1e6,
             "max_real_time": r["max_s"] * 1e6, "workload": r["workload"], "size": r["size"], "mode": r["mode"],
             "speedup_vs_eager": r["speedup"], "kernel_launches_per_step": num(r["launches"]),
             "graph_launches_per_step": num(r["graphs"]), "max_rel_error": num(r["max_rel_error"]),
             "matches_eager": r["matches"], "checksum": num(r.get("checksum"))}
        if r["bytes_per_second"] > 0:
            b["bytes_per_second"] = r["bytes_per_second"]
        if r["flops_per_second"] > 0:
            b["flops_per_second"] = r["flops_per_second"]
        benchmarks.append(b)
    with open(path, "w") as f:
        json.dump({"context": ctx, "benchmarks": benchmarks}, f, indent=2)
        f.write("\n")


def device_name(device):
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return "%s (sm_%d%d)" % (p.name, p.major, p.minor)
    return peer_workloads.cpu_name()


def main(argv):
    args = parse_args(argv)
    global torch, peer_workloads
    try:
        import torch
        import peer_workloads  # next to this file; imports torch too
    except ImportError:
        print("pytorch_compare: PyTorch is not installed (pip install torch)", file=sys.stderr)
        return 1
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        print("pytorch_compare: --device: expected cpu, cuda or cuda:N, got %r" % args.device, file=sys.stderr)
        return 2
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("pytorch_compare: error: %s is not available" % args.device, file=sys.stderr)
            return 1
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        # Full fp32 matmuls, as defer's: no TF32.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    if "compile+cudagraphs" in args.modes and device.type != "cuda":
        args.modes.remove("compile+cudagraphs")  # CUDA graphs need a GPU

    suite = standard_suite(args, device)
    if not suite:
        print("pytorch_compare: no workload matches --filter %r" % args.filter, file=sys.stderr)
        return 2
    timer = peer_workloads.StepTimer(device)
    ctx = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "host_name": socket.gethostname(), "executable": sys.argv[0], "num_cpus": os.cpu_count(),
           "framework": "pytorch " + torch.__version__, "device": str(device), "device_name": device_name(device),
           "clock": "cuda_event" if device.type == "cuda" else "perf_counter", "quick": args.quick,
           "repetitions": args.repeats, "repeats": args.repeats, "warmup_steps": args.warmup,
           "tolerance": args.tolerance}
    results = []
    with torch.inference_mode():
        for i, w in enumerate(suite):
            if sys.stderr.isatty():
                sys.stderr.write("\r[%3d/%d] %s %s\033[K" % (i + 1, len(suite), w.name, w.size))
                sys.stderr.flush()
            results.extend(run_workload(w, args, device, timer))
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
    ctx["all_match_eager"] = all(r["matches"] for r in results)
    print_table(ctx, results)
    if args.json:
        write_json(args.json, ctx, results)
    return 0 if ctx["all_match_eager"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
