"""defer-bench's workloads for the frameworks it is compared with, written once: each workload is a
function of an ops namespace (TorchOps, NumpyOps, JaxOps) and its inputs, with the same ops in the
same order and the same sizes as bench/defer_bench/*.cpp. Shared by bench/pytorch_compare.py (torch
eager and torch.compile, CPU or CUDA) and bench/cpu_compare.py (numpy, torch, torch.compile and
jax.jit on the CPU), with the timing loop and the error measure both use.

The inputs are drawn from torch's generator (not defer-bench's xorshift, so checksums differ from
defer-bench's) and handed to every framework as the same values. Needs torch; numpy and jax are
imported when their ops are first asked for.
"""

import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

# ---- ops: what differs between the frameworks. A workload calls m.relu(t), m.softmax(t), ...;
# arithmetic, @, .shape and .reshape are common to all three.


class TorchOps:
    name = "torch"
    relu = staticmethod(torch.relu)
    sigmoid = staticmethod(torch.sigmoid)
    tanh = staticmethod(torch.tanh)
    gelu = staticmethod(F.gelu)  # exact (erf), as defer's
    swapaxes = staticmethod(torch.swapaxes)

    @staticmethod
    def softmax(x):
        return torch.softmax(x, dim=-1)

    @staticmethod
    def layer_norm(x, gamma, beta):
        return F.layer_norm(x, x.shape[-1:], gamma, beta, eps=1e-5)

    @staticmethod
    def row_sum(x):
        return x.sum(-1)

    @staticmethod
    def permute_copy(x, axes):
        return x.permute(axes).contiguous()


class ArrayOps:
    """numpy's and jax.numpy's ops, from their common array API (xp is the module)."""

    @classmethod
    def softmax(cls, x):
        e = cls.xp.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    @classmethod
    def layer_norm(cls, x, gamma, beta):
        mean = x.mean(axis=-1, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
        return (x - mean) / cls.xp.sqrt(var + 1e-5) * gamma + beta

    @staticmethod
    def row_sum(x):
        return x.sum(axis=-1)


class NumpyOps(ArrayOps):
    name = "numpy"

    @classmethod
    def load(cls):
        import numpy
        cls.xp = numpy
        cls.tanh = staticmethod(numpy.tanh)
        cls.swapaxes = staticmethod(numpy.swapaxes)
        try:  # numpy has no erf; scipy (which jax installs) does
            from scipy.special import erf
            cls.erf = staticmethod(erf)
        except ImportError:
            cls.erf = None

    @staticmethod
    def relu(x):
        return NumpyOps.xp.maximum(x, 0)

    @staticmethod
    def sigmoid(x):
        return 1 / (1 + NumpyOps.xp.exp(-x))

    @staticmethod
    def gelu(x):
        if NumpyOps.erf is None:
            raise NotImplementedError("numpy has no erf for gelu (pip install scipy)")
        return 0.5 * x * (1 + NumpyOps.erf(x * (1 / math.sqrt(2))))

    @staticmethod
    def permute_copy(x, axes):
        return NumpyOps.xp.ascontiguousarray(x.transpose(axes))

    @staticmethod
    def from_torch(t):
        if t.dtype == torch.bfloat16:
            raise NotImplementedError("numpy has no bfloat16")
        return t.numpy()


class JaxOps(ArrayOps):
    name = "jax"

    @classmethod
    def load(cls):
        import jax
        import jax.numpy as jnp
        cls.jax, cls.xp = jax, jnp
        cls.relu = staticmethod(jax.nn.relu)
        cls.sigmoid = staticmethod(jax.nn.sigmoid)
        cls.tanh = staticmethod(jnp.tanh)
        cls.swapaxes = staticmethod(jnp.swapaxes)

    @staticmethod
    def gelu(x):
        return JaxOps.jax.nn.gelu(x, approximate=False)

    @staticmethod
    def softmax(x):
        return JaxOps.jax.nn.softmax(x, axis=-1)

    @staticmethod
    def permute_copy(x, axes):
        return JaxOps.xp.transpose(x, axes)  # under jit a new array: the copy

    @staticmethod
    def from_torch(t):
        if t.dtype == torch.bfloat16:  # numpy cannot hold it; f32 holds every bf16 value exactly
            return JaxOps.xp.asarray(t.float().numpy()).astype(JaxOps.xp.bfloat16)
        return JaxOps.xp.asarray(t.numpy())


def map_inputs(inputs, convert):
    """The inputs (tensors, or dicts of tensors) with every tensor converted."""
    return tuple({k: convert(v) for k, v in a.items()} if isinstance(a, dict) else convert(a) for a in inputs)


# ---- workloads: the same ops, in the same order, as bench/defer_bench/*.cpp.

def chain8(m, x, y):
    t = x * 0.9
    t = t + y
    t = m.relu(t)
    t = t + 0.1
    t = t * 0.5
    t = t + y
    t = m.relu(t)
    return t * 0.75


def chain8_mix(m, x, y):
    t = x * 0.9
    t = t + y
    t = m.relu(t)
    t = t + 0.1
    t = m.sigmoid(t)
    t = t * 1.5
    t = m.tanh(t)
    return t + y


def sum_of_squares(m, x):
    return m.row_sum(x * x)


def scaled_softmax(m, x):
    return m.softmax(x * 0.125)


def residual_layer_norm(m, x, r, gamma, beta):
    return m.layer_norm(x + r, gamma, beta)


def linear(m, x, w, b):
    return m.gelu(x @ w + b)


def head_split_copy(m, x):
    return m.permute_copy(x, (0, 2, 1, 3))


def encoder_block(m, x, w, heads):
    """Pre-norm encoder block: x + attention(layer_norm(x)), then + mlp(layer_norm(.))."""
    batch, seq, hidden = x.shape
    head_dim = hidden // heads
    h = m.layer_norm(x, w["ln1_gamma"], w["ln1_beta"])

    def split(t):  # [batch, seq, hidden] -> [batch, heads, seq, head_dim]
        return m.swapaxes(t.reshape(batch, seq, heads, head_dim), 1, 2)

    q = split(h @ w["wq"] + w["bq"])
    k = split(h @ w["wk"] + w["bk"])
    v = split(h @ w["wv"] + w["bv"])
    scores = (q @ m.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(head_dim))
    p = m.softmax(scores)
    o = m.swapaxes(p @ v, 1, 2).reshape(batch, seq, hidden)
    x2 = x + (o @ w["wo"] + w["bo"])
    up = m.gelu(m.layer_norm(x2, w["ln2_gamma"], w["ln2_beta"]) @ w["w1"] + w["c1"])
    return x2 + (up @ w["w2"] + w["c2"])


def uniform(shape, scale, device, gen, offset=0.0):
    return ((torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * scale + offset).to(device)


class Workload:
    """fn(m, *inputs) is the step; make_inputs() draws its inputs (torch tensors on the suite's
    device); tolerance is the smallest error bound its dtype allows (defer-bench's min_tolerance)."""

    def __init__(self, name, size, fn, make_inputs, bytes_per_step=0.0, flops_per_step=0.0, tolerance=0.0):
        self.name, self.size, self.fn, self.make_inputs = name, size, fn, make_inputs
        self.bytes_per_step, self.flops_per_step, self.tolerance = bytes_per_step, flops_per_step, tolerance


DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
HALF_TOLERANCE = {"f16": 1e-2, "bf16": 5e-2}


def chain_workloads(quick, device):
    gpu = device.type == "cuda"
    cases = [("chain8", "f32", e) for e in ((12, 16) if quick else (12, 16, 20, 22))]
    cases += [("chain8_mix", "f32", e) for e in ((12,) if quick else (12, 16, 20, 22))]
    if gpu and not quick:  # f32 at the size of the half-precision ratio on a GPU
        cases.append(("chain8", "f32", 24))
    for e in (12,) if quick else (16, 20, 24) if gpu else (16, 20):
        cases += [("chain8_f16", "f16", e), ("chain8_bf16", "bf16", e)]
    out = []
    for name, dtype, e in cases:
        n = 1 << e

        def inputs(n=n, dtype=DTYPES[dtype]):
            gen = torch.Generator().manual_seed(11)
            return (uniform((n,), 1.0, device, gen).to(dtype), uniform((n,), 1.0, device, gen).to(dtype))

        elem = torch.tensor([], dtype=DTYPES[dtype]).element_size()
        out.append(Workload(name, "2^%d" % e, chain8_mix if name == "chain8_mix" else chain8, inputs,
                            bytes_per_step=3.0 * n * elem, tolerance=HALF_TOLERANCE.get(dtype, 0.0)))
    return out


def row_workloads(quick, device):
    cols = 1024
    families = (("sum", sum_of_squares, 21, 1.0, 1), ("softmax", scaled_softmax, 22, 8.0, 2),
                ("layer_norm", residual_layer_norm, 23, 1.0, 3))
    out = []
    for name, fn, seed, scale, passes in families:
        for rows in (64, 256) if quick else (64, 1024, 4096):
            def inputs(rows=rows, seed=seed, scale=scale, name=name):
                gen = torch.Generator().manual_seed(seed)
                x = uniform((rows, cols), scale, device, gen)
                if name != "layer_norm":
                    return (x,)
                return (x, uniform((rows, cols), 1.0, device, gen), uniform((cols,), 0.1, device, gen, 1.0),
                        uniform((cols,), 0.1, device, gen))

            cells = rows * cols
            moved = (cells + rows) * 4.0 if name == "sum" else passes * cells * 4.0
            out.append(Workload(name, "%dx%d" % (rows, cols), fn, inputs, bytes_per_step=moved))
    return out


def linear_workloads(quick, device):
    out = []
    for n in (64, 128) if quick else (128, 256, 512):
        def inputs(n=n):
            gen = torch.Generator().manual_seed(31)
            return (uniform((n, n), 1.0, device, gen), uniform((n, n), 1.0 / math.sqrt(n), device, gen),
                    uniform((n,), 0.1, device, gen))

        out.append(Workload("linear", "%d^3" % n, linear, inputs, flops_per_step=2.0 * n ** 3))
    return out


def view_workloads(quick, device):
    shape = (1, 32, 4, 16) if quick else (8, 512, 12, 64)
    out = []
    for dtype in ("f32", "f16"):
        def inputs(dtype=DTYPES[dtype]):
            return (uniform(shape, 1.0, device, torch.Generator().manual_seed(31)).to(dtype),)

        elem = torch.tensor([], dtype=DTYPES[dtype]).element_size()
        out.append(Workload("permute_copy_" + dtype, "x".join(map(str, shape)), head_split_copy, inputs,
                            bytes_per_step=2.0 * math.prod(shape) * elem))
    return out


def transformer_workloads(blocks, device, per_head):
    """The encoder block; with per_head, under defer-bench's name for the per-head form it also
    times: the same math and FLOPs, so the peers run the one block for both."""
    out = []
    for (b, s, h, heads) in blocks:
        def inputs(b=b, s=s, h=h):
            gen = torch.Generator().manual_seed(7)
            a, m = 1.0 / math.sqrt(h), 1.0 / math.sqrt(4 * h)
            w = {
                "ln1_gamma": uniform((h,), 0.1, device, gen, 1.0), "ln1_beta": uniform((h,), 0.1, device, gen),
                "ln2_gamma": uniform((h,), 0.1, device, gen, 1.0), "ln2_beta": uniform((h,), 0.1, device, gen),
                "wq": uniform((h, h), a, device, gen), "wk": uniform((h, h), a, device, gen),
                "wv": uniform((h, h), a, device, gen), "wo": uniform((h, h), a, device, gen),
                "bq": uniform((h,), 0.1, device, gen), "bk": uniform((h,), 0.1, device, gen),
                "bv": uniform((h,), 0.1, device, gen), "bo": uniform((h,), 0.1, device, gen),
                "w1": uniform((h, 4 * h), a, device, gen), "c1": uniform((4 * h,), 0.1, device, gen),
                "w2": uniform((4 * h, h), m, device, gen), "c2": uniform((h,), 0.1, device, gen),
            }
            return (uniform((b, s, h), 1.0, device, gen), w)

        def block(m, x, w, heads=heads):
            return encoder_block(m, x, w, heads)

        flops = float(b * s) * h * (24.0 * h + 4.0 * s)  # as defer-bench counts them
        for name in ("transformer", "transformer_per_head") if per_head else ("transformer",):
            out.append(Workload(name, "%dx%dx%d/%dh" % (b, s, h, heads), block, inputs, flops_per_step=flops))
    return out


def default_blocks(quick):
    return [(1, 32, 128, 4)] if quick else [(1, 64, 256, 4), (1, 128, 768, 12)]


def defer_bench_suite(quick, device, blocks, text_filter=""):
    """Every workload of defer-bench, in its order and at its sizes on `device`."""
    suite = (chain_workloads(quick, device) + row_workloads(quick, device) + linear_workloads(quick, device)
             + view_workloads(quick, device) + transformer_workloads(blocks, device, per_head=True))
    return [w for w in suite if not text_filter or text_filter in w.name + "/" + w.size]


# ---- checking and timing

def max_relative_error(got, want):
    """max |got - want| / max |want| of two numpy arrays, as defer-bench computes it; inf for a
    NaN/inf or shape mismatch."""
    import numpy as np
    got, want = np.asarray(got, dtype=np.float64).ravel(), np.asarray(want, dtype=np.float64).ravel()
    if got.shape != want.shape or not np.array_equal(np.isfinite(got), np.isfinite(want)):
        return math.inf
    finite = np.isfinite(want)
    worst = float(np.abs(got[finite] - want[finite]).max()) if finite.any() else 0.0
    if worst == 0:
        return 0.0
    scale = float(np.abs(want[finite]).max())
    return worst / scale if scale > 0 else math.inf


class StepTimer:
    """One step, synchronization included: CUDA events on the current stream on a GPU (the stream is
    idle at the first event, so the span covers the host's work too), perf_counter on the CPU (the
    step itself waits for its result)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.stop = torch.cuda.Event(enable_timing=True)
        self.t0 = 0.0

    def begin(self):
        if self.cuda:
            self.start.record()
        else:
            self.t0 = time.perf_counter()

    def end_seconds(self):
        if self.cuda:
            self.stop.record()
            self.stop.synchronize()
            return self.start.elapsed_time(self.stop) * 1e-3
        return time.perf_counter() - self.t0


def time_runs(runs, warmup, repeats, repeat_ms, timer, label, after_warmup=None):
    """Times each run (a dict with "name" and "step": a function returning a finished result) as
    defer-bench does: `warmup` untimed steps (compilation happens here), the last one sizing the
    repeats to `repeat_ms` each, then `repeats` repeats interleaved across the runs, so that load
    changes hit every run alike. Sets run["first"] (the first step's result, passed through
    run["keep"] if given), "steps", "per_step" (seconds per step, one per repeat) and "failed";
    after_warmup(run) runs once between warm-up and timing. A failing run is reported and dropped."""

    def guarded(run, what):
        try:
            what()
        except Exception as e:  # reported; the other runs go on
            print("%s %s failed: %s" % (label, run["name"], e), file=sys.stderr)
            run["failed"] = True

    def warm(run):
        step_s = 0.0
        for i in range(warmup):
            timer.begin()
            out = run["step"]()
            step_s = timer.end_seconds()
            if i == 0:
                run["first"] = run.get("keep", lambda o: o)(out)
        run["steps"] = int(min(max(math.ceil(repeat_ms * 1e-3 / max(step_s, 1e-7)), 1), 100000))
        if after_warmup is not None:
            after_warmup(run)

    def repeat(run):
        total = 0.0
        for _ in range(run["steps"]):
            timer.begin()
            run["step"]()
            total += timer.end_seconds()
        run["per_step"].append(total / run["steps"])

    for run in runs:
        run.update({"failed": run.get("failed", False), "per_step": [], "steps": 1, "first": None})
        if not run["failed"]:
            guarded(run, lambda: warm(run))
    for _ in range(repeats):
        for run in runs:
            if not run["failed"]:
                guarded(run, lambda: repeat(run))


def median_min_max(times):
    times = sorted(times)
    n = len(times)
    return (times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])), times[0], times[-1]


def fmt_duration(s):
    """As defer-bench's table (bench/defer_bench/report_table.cpp): three digits, us/ms/s."""
    if s <= 0:
        return "-"
    for scale, unit, limit in ((1e6, "us", 1e-3), (1e3, "ms", 1.0), (1.0, "s", math.inf)):
        if s < limit:
            v = s * scale
            return "%.*f %s" % (0 if v >= 100 else 1 if v >= 10 else 2, v, unit)
    return "-"


def cpu_name():
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d threads" % (model, os.cpu_count() or 0)
