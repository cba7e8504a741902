#!/usr/bin/env python3
"""defer on the CPU against its peers, side by side in one run: every defer-bench workload in
defer (its best mode), a hand-written fused C++ loop (the element-wise chains only), numpy, PyTorch
eager, torch.compile (Inductor) and jax.jit, with the ratio defer / peer for each and the goals of
issue 13 ("CPU backend at PyTorch's speed") marked met or missed.

Set-up (the peers, installed with pip into build/python):
    scripts/install-deps --python               # build/python with torch (CPU) and numpy
    build/python/bin/pip install jax            # jax.jit; without it that column is skipped
    cmake -S . -B build/cpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DDEFER_ENABLE_CUDA=OFF
    cmake --build build/cpu --target defer-bench defer-chain-loop

Run:
    build/python/bin/python bench/cpu_compare.py [--quick] [--json FILE] [--markdown FILE] ...

defer-bench and defer-chain-loop are found under build/*/bench/ (the newest), or given with
--defer-bench and --chain-loop. --quick runs defer-bench's quick sizes and few repeats (to check the
set-up, not for figures). numpy is given scipy's erf for gelu when scipy is there (jax installs it).

How it measures. Workload by workload, in defer-bench's order: defer-bench runs that one workload
in all its modes (--filter name/size, --json), then defer-chain-loop (chains only), then the Python
peers, whose repeats are interleaved with one another; all with the same warm-up steps, repeats and
repeat length, and each time is the median over the repeats of the mean step time. So the peers of
a workload are measured within seconds of each other, and a change of the machine's load hits
neighbouring columns alike. Run it on an otherwise idle machine all the same (the header prints the
load average at the start): OpenMP's static splits (torch, Inductor's kernels, OpenBLAS) and the
loop's wait for every thread at each step, so with the cores oversubscribed a step can wait a
scheduler time slice for a descheduled thread (during a parallel build on a 2-core machine, torch
eager's chain8 at 2^16 took 166 ms a step, defer's 87 us: such ratios measure the load). torch runs
with torch.set_num_threads(os.cpu_count()); numpy and jax with their defaults (numpy's element-wise
ops on one core, its matmul on all; XLA on all). torch.compile's and jax.jit's compilation happens
in the warm-up steps and is not timed.

Checks. The Python peers get the same inputs (torch's generator; defer-bench and the loop draw their
own) and each result is compared with the workload evaluated by torch in float64 on those inputs:
max |x - ref| / max |ref| within --tolerance (raised to 1e-2 for f16 and 5e-2 for bf16, as in
defer-bench). defer-bench checks each mode against its eager mode, the loop against a double
computation. Exit status 1 when any check fails or a run fails, 2 on a bad command line; a missed
goal does not change it.

Peers that do not apply are "n/a": numpy has no bfloat16 (and no erf without scipy); the loop
covers the chains only; "sgemm" (torch.mm alone, without bias and gelu) runs for linear only, to set
defer's linear against torch's GEMM. transformer_per_head is timed by defer in its per-head form
and by the peers as the ordinary block: the same math and FLOPs.
"""

import argparse
import datetime
import glob
import json
import math
import os
import socket
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = ("loop", "numpy", "eager", "compile", "jax", "sgemm")
TITLES = {"loop": "C++ loop", "numpy": "numpy", "eager": "torch eager", "compile": "torch.compile",
          "jax": "jax.jit", "sgemm": "torch sgemm"}
CHAINS = ("chain8", "chain8_mix", "chain8_f16", "chain8_bf16")  # what defer-chain-loop computes


class Goal:
    """measure(row) <= limit on the rows `applies` selects. The measure is defer's best time over a
    peer's (a ratio, shown as 1.23x) or, for `peer` None, defer's best time itself in seconds."""

    def __init__(self, peer, text, applies, limit):
        self.peer, self.text, self.applies, self.limit = peer, text, applies, limit

    def measure(self, row):
        if self.peer is None:
            return row["defer"].get("median_s") if row["defer"].get("checked") else None
        return ratio(row, self.peer)

    def show(self, value):
        return peer_workloads.fmt_duration(value) if self.peer is None else "%.2fx" % value

    def tag(self):
        return "step>%s" % self.show(self.limit) if self.peer is None else "%s>%g" % (self.peer, self.limit)


def large_chain(row):
    return row["workload"] in CHAINS and row["size"] in ("2^20", "2^22")


def is_case(workload, size):
    return lambda row: (row["workload"], row["size"]) == (workload, size)


# Issue 13's goals, from its text.
GOALS = (
    Goal("eager", "every workload at most torch eager's time", lambda row: True, 1.0),
    Goal("loop", "fused chains at 2^20 and 2^22 within 1.5x of the hand-written loop", large_chain, 1.5),
    Goal("compile", "fused chains at 2^20 and 2^22 at most torch.compile's time", large_chain, 1.0),
    Goal(None, "a chain8 step at 2^12 under 15 us", is_case("chain8", "2^12"), 15e-6),
    Goal("jax", "chain8_mix at most jax.jit's time", lambda row: row["workload"] == "chain8_mix", 1.0),
    Goal("sgemm", "linear 512^3 within 1.2x of torch's sgemm on the same cores", is_case("linear", "512^3"), 1.2),
)


def parse_args(argv):
    p = argparse.ArgumentParser(description="defer-bench on the CPU against a hand-written loop, numpy, torch eager, "
                                            "torch.compile and jax.jit, in one table of ratios.")
    p.add_argument("--defer-bench", default="", help="the defer-bench binary (default: the newest build/*/bench/defer-bench)")
    p.add_argument("--chain-loop", default="",
                   help="the defer-chain-loop binary (default: the newest build/*/bench/defer-chain-loop)")
    p.add_argument("--quick", action="store_true", help="defer-bench's quick sizes, few repeats: a set-up check")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats per case (default 7; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--repeat-ms", type=float, default=0.0, help="minimum length of a repeat (default 25; 4 with --quick)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max relative error against float64 (default 1e-4)")
    p.add_argument("--filter", default="", help="only the workloads whose name/size contains this text")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ", ".join(PEERS))
    p.add_argument("--json", default="", help="write every result as JSON")
    p.add_argument("--markdown", default="", help="write the table and the goals as markdown (for bench/RESULTS.md)")
    args = p.parse_args(argv)
    if args.repeats < 0 or args.warmup < 1 or args.repeat_ms < 0 or args.tolerance < 0:
        p.error("--repeats, --warmup, --repeat-ms and --tolerance must be positive")
    args.peers = [x for x in args.peers.split(",") if x]
    for x in args.peers:
        if x not in PEERS:
            p.error("--peers: unknown peer %r (known: %s)" % (x, ", ".join(PEERS)))
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.repeat_ms = args.repeat_ms or (4.0 if args.quick else 25.0)
    for name, target in (("defer_bench", "defer-bench"), ("chain_loop", "defer-chain-loop")):
        binary = getattr(args, name) or newest_build_output(target)
        if not binary or not os.access(binary, os.X_OK):
            p.error("%s not found: build it (see the set-up in %s) or pass --%s"
                    % (target, os.path.basename(__file__), name.replace("_", "-")))
        setattr(args, name, binary)
    return args


def newest_build_output(name):
    found = glob.glob(os.path.join(HERE, "..", "build", "*", "bench", name))
    return max(found, key=os.path.getmtime) if found else ""


# ---- the native runs: defer-bench and defer-chain-loop, one workload per call

def run_native(command, label, json_file):
    """Runs a binary that reports in defer-bench's JSON layout, into a file (json_file: defer-bench's
    --json) or on stdout (defer-chain-loop); returns its benchmarks ([] if it failed)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.json")
        done = subprocess.run(command + (["--json", path] if json_file else []), capture_output=True, text=True)
        if json_file:
            text = open(path).read() if os.path.exists(path) else ""
        else:
            text = done.stdout
    if done.returncode != 0:
        print("cpu_compare: %s exited with %d: %s" % (label, done.returncode, done.stderr.strip()), file=sys.stderr)
    try:
        return json.loads(text)["benchmarks"]
    except (ValueError, KeyError):
        return []


def timing_flags(args):
    return ["--repeats", str(args.repeats), "--warmup", str(args.warmup), "--repeat-ms", str(args.repeat_ms)]


def defer_best(args, w):
    """defer-bench's run of the workload: every mode's time, and the fastest mode whose result matched
    its eager mode (checked: every mode matched)."""
    command = [args.defer_bench, "--device", "cpu", "--filter", w.name + "/" + w.size] + timing_flags(args)
    rows = run_native(command + (["--quick"] if args.quick else []), "defer-bench", json_file=True)
    rows = [r for r in rows if (r["workload"], r["size"]) == (w.name, w.size)]
    good = [r for r in rows if r.get("matches_eager") and (r.get("real_time") or 0) > 0]
    best = min(good, key=lambda r: r["real_time"], default=None)
    cell = {"checked": bool(rows) and len(good) == len(rows), "modes": {r["mode"]: r["real_time"] * 1e-6 for r in rows}}
    if best is not None:
        cell.update(mode=best["mode"], median_s=best["real_time"] * 1e-6, min_s=best["min_real_time"] * 1e-6,
                    max_s=best["max_real_time"] * 1e-6)
    return cell


def chain_loop(args, w):
    rows = run_native([args.chain_loop, *timing_flags(args), w.name + "/" + w.size], "defer-chain-loop",
                      json_file=False)
    if not rows:
        return {"status": "failed"}
    r = rows[0]
    return {"status": "ok" if r["matches_double"] else "mismatch", "median_s": r["real_time"] * 1e-6,
            "min_s": r["min_real_time"] * 1e-6, "max_s": r["max_real_time"] * 1e-6, "max_rel_error": r["max_rel_error"]}


# ---- the Python peers, interleaved

def to_float64(out):
    if isinstance(out, torch.Tensor):
        return out.double().numpy()
    return np.asarray(out).astype(np.float64)  # numpy, or jax (its bfloat16 included)


def python_peers(args, w):
    """Times the workload in every Python peer that applies; returns {peer: cell}."""
    pw = peer_workloads
    torch._dynamo.reset()  # each workload compiles afresh: Dynamo's per-function cache stays small
    inputs = w.make_inputs()
    reference = to_float64(w.fn(pw.TorchOps, *pw.map_inputs(inputs, lambda t: t.double())))
    cells, runs = {}, []

    def add(peer, make_step, own_reference=None):
        try:
            step = make_step()
            step()  # raises NotImplementedError where the peer lacks what the workload needs
        except NotImplementedError as e:
            cells[peer] = {"status": "n/a", "why": str(e)}
            return
        except Exception as e:
            print("cpu_compare: %s %s %s failed: %s" % (w.name, w.size, peer, e), file=sys.stderr)
            cells[peer] = {"status": "failed"}
            return
        runs.append({"name": peer, "step": step, "reference": reference if own_reference is None else own_reference})

    def torch_fn(*a):
        return w.fn(pw.TorchOps, *a)

    if "numpy" in args.peers:
        def numpy_step():
            arrays = pw.map_inputs(inputs, pw.NumpyOps.from_torch)
            return lambda: w.fn(pw.NumpyOps, *arrays)
        add("numpy", numpy_step)
    if "eager" in args.peers:
        add("eager", lambda: lambda: torch_fn(*inputs))
    if "compile" in args.peers:
        def compile_step():
            compiled = torch.compile(torch_fn, dynamic=False)
            return lambda: compiled(*inputs)
        add("compile", compile_step)
    if "jax" in args.peers:
        def jax_step():
            arrays = pw.map_inputs(inputs, pw.JaxOps.from_torch)
            jitted = pw.JaxOps.jax.jit(lambda *a: w.fn(pw.JaxOps, *a))
            return lambda: jitted(*arrays).block_until_ready()
        add("jax", jax_step)
    if "sgemm" in args.peers and w.name == "linear":
        x, weight = inputs[0], inputs[1]
        add("sgemm", lambda: lambda: torch.mm(x, weight), to_float64(x.double() @ weight.double()))

    pw.time_runs(runs, args.warmup, args.repeats, args.repeat_ms, pw.StepTimer(torch.device("cpu")),
                  "cpu_compare: %s %s" % (w.name, w.size))
    tolerance = max(args.tolerance, w.tolerance)
    for run in runs:
        if run["failed"] or not run["per_step"]:
            cells[run["name"]] = {"status": "failed"}
            continue
        median, low, high = pw.median_min_max(run["per_step"])
        error = pw.max_relative_error(to_float64(run["step"]()), run["reference"])
        cells[run["name"]] = {"status": "ok" if error <= tolerance else "mismatch", "median_s": median,
                              "min_s": low, "max_s": high, "max_rel_error": error}
    return cells


# ---- report

def ratio(row, peer):
    """defer's best time / the peer's, or None where either is missing or a check failed."""
    cell = row["peers"].get(peer, {})
    if cell.get("status") != "ok" or not row["defer"].get("median_s"):
        return None
    return row["defer"]["median_s"] / cell["median_s"]


def fmt_cell(row, peer):
    cell = row["peers"].get(peer)
    if cell is None:
        return "-"
    if cell["status"] != "ok":
        return cell["status"].upper() if cell["status"] != "n/a" else "n/a"
    r = ratio(row, peer)
    shown = "-" if r is None else "<0.01x" if r < 0.01 else "%.2fx" % r
    return "%s (%s)" % (peer_workloads.fmt_duration(cell["median_s"]), shown)


def missed_goals(row):
    out = []
    for goal in GOALS:
        m = goal.measure(row) if goal.applies(row) else None
        if m is not None and m > goal.limit:
            out.append(goal.tag())
    return out


def table_rows(rows, peers):
    header = ["workload", "size", "defer (best mode)"] + [TITLES[p] for p in peers] + ["goals missed"]
    body = []
    for row in rows:
        d = row["defer"]
        best = "%s (%s)" % (peer_workloads.fmt_duration(d["median_s"]), d["mode"]) if d.get("median_s") else "FAILED"
        if d.get("median_s") and not d["checked"]:
            best += " MISMATCH"
        body.append([row["workload"], row["size"], best] + [fmt_cell(row, p) for p in peers]
                    + [", ".join(missed_goals(row)) or "-"])
    return header, body


def goal_lines(rows):
    lines = []
    for goal in GOALS:
        cases = [(goal.measure(row), row) for row in rows if goal.applies(row)]
        cases = [(m, row) for m, row in cases if m is not None]
        if not cases:
            lines.append("%s: no case in this run" % goal.text)
            continue
        worst, row = max(cases, key=lambda c: c[0])
        met = sum(1 for m, _ in cases if m <= goal.limit)
        lines.append("%s: %s, %d of %d cases (worst %s at %s/%s)"
                     % (goal.text, "met" if met == len(cases) else "MISSED", met, len(cases), goal.show(worst),
                        row["workload"], row["size"]))
    return lines


def print_report(ctx, rows, peers, out=sys.stdout):
    print("cpu_compare on %s, %s%s; load average %.2f at the start" % (
        ctx["cpu"], ctx["date"], ", --quick" if ctx["quick"] else "", ctx["load_average"]), file=out)
    print("%s; %s, %s; median of %d repeats" % (ctx["versions"], ctx["defer_bench"], ctx["chain_loop"], ctx["repeats"]),
          file=out)
    print("(ratio) = defer's best mode / the peer: below 1 defer is faster", file=out)
    header, body = table_rows(rows, peers)
    width = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    print(file=out)
    for line in [header] + body:
        print("  ".join(c.ljust(width[i]) for i, c in enumerate(line)).rstrip(), file=out)
    print("\ngoals (issue 13):", file=out)
    for line in goal_lines(rows):
        print("  " + line, file=out)


def write_markdown(path, ctx, rows, peers):
    header, body = table_rows(rows, peers)
    with open(path, "w") as f:
        f.write("cpu_compare on %s, %s%s; %s; %s, %s; median of %d repeats; (ratio) = defer's best mode / the peer\n\n"
                % (ctx["cpu"], ctx["date"], ", --quick" if ctx["quick"] else "", ctx["versions"], ctx["defer_bench"],
                   ctx["chain_loop"], ctx["repeats"]))
        f.write("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
        for line in body:
            f.write("| " + " | ".join(line) + " |\n")
        f.write("\nGoals (issue 13):\n\n" + "".join("- %s\n" % line for line in goal_lines(rows)))


def write_json(path, ctx, rows):
    def clean(v):  # JSON has no infinity
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return None if isinstance(v, float) and not math.isfinite(v) else v

    with open(path, "w") as f:
        json.dump({"context": ctx, "results": [clean(r) for r in rows]}, f, indent=2)
        f.write("\n")


def main(argv):
    args = parse_args(argv)
    global torch, np, peer_workloads
    try:
        import numpy as np
        import torch
        import peer_workloads  # next to this file
    except ImportError as e:
        print("cpu_compare: %s: run scripts/install-deps --python and use build/python/bin/python" % e, file=sys.stderr)
        return 1
    torch.set_num_threads(os.cpu_count())
    peer_workloads.NumpyOps.load()
    versions = ["torch " + torch.__version__, "numpy " + np.__version__]
    if "jax" in args.peers:
        try:
            peer_workloads.JaxOps.load()
            versions.append("jax " + peer_workloads.JaxOps.jax.__version__)
        except ImportError:
            print("cpu_compare: jax is not installed (build/python/bin/pip install jax); skipping jax.jit",
                  file=sys.stderr)
            args.peers.remove("jax")
    suite = peer_workloads.defer_bench_suite(args.quick, torch.device("cpu"), peer_workloads.default_blocks(args.quick),
                                             args.filter)
    if not suite:
        print("cpu_compare: no workload matches --filter %r" % args.filter, file=sys.stderr)
        return 2
    ctx = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "host_name": socket.gethostname(), "cpu": peer_workloads.cpu_name(), "versions": ", ".join(versions),
           "defer_bench": os.path.relpath(args.defer_bench), "chain_loop": os.path.relpath(args.chain_loop),
           "quick": args.quick, "repeats": args.repeats, "warmup_steps": args.warmup, "repeat_ms": args.repeat_ms,
           "tolerance": args.tolerance, "torch_threads": torch.get_num_threads(),
           "load_average": round(os.getloadavg()[0], 2)}
    rows = []
    with torch.inference_mode():
        for i, w in enumerate(suite):
            print("[%d/%d] %s %s" % (i + 1, len(suite), w.name, w.size), file=sys.stderr, flush=True)
            row = {"workload": w.name, "size": w.size, "defer": defer_best(args, w), "peers": {}}
            if "loop" in args.peers:
                row["peers"]["loop"] = chain_loop(args, w) if w.name in CHAINS else {"status": "n/a"}
            row["peers"].update(python_peers(args, w))
            rows.append(row)
    peers = [p for p in args.peers if any(p in row["peers"] and row["peers"][p]["status"] != "n/a" for row in rows)]
    print_report(ctx, rows, peers)
    if args.json:
        write_json(args.json, ctx, rows)
    if args.markdown:
        write_markdown(args.markdown, ctx, rows, peers)
    checked = all(row["defer"].get("median_s") and row["defer"]["checked"] and
                  all(c["status"] in ("ok", "n/a") for c in row["peers"].values()) for row in rows)
    return 0 if checked else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
