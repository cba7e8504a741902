#!/usr/bin/env python3
"""DLPack round trips between defer and PyTorch (docs/api.md section 12).

Usage: test_dlpack_torch.py path/to/libdlpack_shim.so

The shim (dlpack_shim.cpp) exposes defer through a few C functions that this script calls with
ctypes; DLPack capsules are made and consumed with the CPython capsule API, as any DLPack library
does. Checked on the CPU, and on CUDA where both PyTorch and defer have a GPU:
  * every dtype (boolean as torch.bool, f16, bf16) both ways, zero copy: the same address on both sides;
  * strided tensors both ways (t.T, t[:, 1::2], broadcasts; defer views with offsets);
  * writes through either side are seen by the other;
  * each side releases the other's memory exactly once (counted by the shim), also when the import
    fails, and nothing breaks after PyTorch has freed its tensor;
  * to_dlpack completes the work queued on defer's current stream; on CUDA, a PyTorch kernel and a
    defer kernel on different streams (defer's made with Stream::from_native over PyTorch's) are
    ordered by events, and defer work queued on PyTorch's current stream is ordered with PyTorch's.
Exits 77 (CTest: skipped) only when PyTorch is not installed.
"""
import ctypes
import gc
import sys
import traceback

if len(sys.argv) != 2:
    sys.exit("usage: test_dlpack_torch.py path/to/libdlpack_shim.so")

try:
    import torch
    import torch.utils.dlpack
except ImportError as error:
    print(f"SKIPPED: PyTorch is not installed ({error}); scripts/install-deps --python installs it "
          "(CPU wheels suffice), or point DEFER_TEST_PYTHON at a Python that has it")
    sys.exit(77)

shim = ctypes.CDLL(sys.argv[1])

# ---- the shim's functions -------------------------------------------------------------------------
c_i64p = ctypes.POINTER(ctypes.c_int64)
_signatures = {
    "shim_last_error": (ctypes.c_char_p, []),
    "shim_cuda_available": (ctypes.c_int, []),
    "shim_exports_alive": (ctypes.c_int64, []),
    "shim_imports_released": (ctypes.c_int64, []),
    "shim_from_floats": (ctypes.c_void_p, [ctypes.POINTER(ctypes.c_float), c_i64p, ctypes.c_int, ctypes.c_int,
                                           ctypes.c_int, ctypes.c_int]),
    "shim_view": (ctypes.c_void_p, [ctypes.c_void_p, c_i64p, c_i64p, ctypes.c_int, ctypes.c_int64]),
    "shim_free": (None, [ctypes.c_void_p]),
    "shim_info": (ctypes.c_int, [ctypes.c_void_p, c_i64p, c_i64p, ctypes.POINTER(ctypes.c_int),
                                 ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int),
                                 ctypes.POINTER(ctypes.c_uint64), c_i64p]),
    "shim_to_floats": (ctypes.c_int, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64]),
    "shim_to_dlpack": (ctypes.c_void_p, [ctypes.c_void_p]),
    "shim_from_dlpack": (ctypes.c_void_p, [ctypes.c_void_p]),
    "shim_call_deleter": (None, [ctypes.c_void_p]),
    "shim_add": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p]),
    "shim_fill": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p]),
    "shim_busy": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "shim_stream_create": (ctypes.c_void_p, [ctypes.c_int, ctypes.c_int]),
    "shim_stream_current": (ctypes.c_void_p, [ctypes.c_int, ctypes.c_int]),
    "shim_stream_from_native": (ctypes.c_void_p, [ctypes.c_int, ctypes.c_void_p]),
    "shim_stream_free": (None, [ctypes.c_void_p]),
    "shim_stream_native": (ctypes.c_void_p, [ctypes.c_void_p]),
    "shim_stream_synchronize": (ctypes.c_int, [ctypes.c_void_p]),
    "shim_stream_wait": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p]),
    "shim_allocated_bytes": (ctypes.c_int64, [ctypes.c_int, ctypes.c_int]),
}
for _name, (_restype, _argtypes) in _signatures.items():
    getattr(shim, _name).restype = _restype
    getattr(shim, _name).argtypes = _argtypes


class ShimError(RuntimeError):
    pass


def checked(result, failed=None):
    """The shim returns null or -1 on failure and keeps the message."""
    if result == failed or (failed is None and not result):
        raise ShimError(shim.shim_last_error().decode())
    return result


# ---- DLPack capsules (the CPython capsule API, as DLPack libraries use it) --------------------------
_DLTENSOR = b"dltensor"            # module constants: a capsule keeps a pointer to its name
_USED_DLTENSOR = b"used_dltensor"

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_get = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_get.restype = ctypes.c_void_p
_capsule_get.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_set_name = ctypes.pythonapi.PyCapsule_SetName
_capsule_set_name.restype = ctypes.c_int
_capsule_set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
# The destructor gets the dying capsule as a raw pointer: it must not become a Python object again.
_raw_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi))
_raw_get = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _release_unconsumed(capsule):
    # Still named "dltensor": no consumer took ownership, so the producer's deleter runs here.
    if _raw_is_valid(capsule, _DLTENSOR):
        shim.shim_call_deleter(_raw_get(capsule, _DLTENSOR))


_RELEASE_UNCONSUMED = ctypes.cast(_release_unconsumed, ctypes.c_void_p)

# defer's DType numbering (include/defer/dtype.hpp) and PyTorch's dtypes.
F32, I32, F16, BF16, I64, BOOLEAN = range(6)
TORCH_DTYPE = {F32: torch.float32, I32: torch.int32, F16: torch.float16, BF16: torch.bfloat16, I64: torch.int64,
               BOOLEAN: torch.bool}
DTYPE_NAME = {F32: "f32", I32: "i32", F16: "f16", BF16: "bf16", I64: "i64", BOOLEAN: "boolean"}
KDLCPU, KDLCUDA = 1, 2


class DeferTensor:
    """A defer::Tensor held by the shim; exports itself through the DLPack protocol."""

    def __init__(self, handle):
        self.handle = None
        self.handle = checked(handle)

    def __del__(self):
        if self.handle:
            shim.shim_free(self.handle)

    def info(self):
        shape, strides = (ctypes.c_int64 * 8)(), (ctypes.c_int64 * 8)()
        ndim, dtype, device = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        data, offset = ctypes.c_uint64(), ctypes.c_int64()
        checked(shim.shim_info(self.handle, shape, strides, ctypes.byref(ndim), ctypes.byref(dtype),
                               ctypes.byref(device), ctypes.byref(data), ctypes.byref(offset)), -1)
        return {"shape": tuple(shape[:ndim.value]), "strides": tuple(strides[:ndim.value]), "dtype": dtype.value,
                "device": device.value, "data": data.value, "storage_offset": offset.value}

    def values(self):
        """to_vector: every element as a float, row-major (completes defer's current stream first)."""
        info = self.info()
        n = 1
        for extent in info["shape"]:
            n *= extent
        out = (ctypes.c_float * n)()
        checked(shim.shim_to_floats(self.handle, out, n), -1)
        return list(out)

    def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
        # to_dlpack completes the work queued on defer's current stream, so the memory is ready for
        # any consumer stream: `stream` needs nothing more. A legacy capsule: defer exports
        # DLManagedTensor (DLPack 0.6 and later), which PyTorch accepts whatever max_version it asks.
        if copy:
            raise BufferError("defer exports without a copy")
        return _capsule_new(checked(shim.shim_to_dlpack(self.handle)), _DLTENSOR, _RELEASE_UNCONSUMED)

    def __dlpack_device__(self):
        device = self.info()["device"]
        return (KDLCPU, 0) if device < 0 else (KDLCUDA, device)


def defer_tensor(values, shape, dtype, device="cpu"):
    """A new contiguous defer tensor of `dtype` from float values (cast by defer)."""
    cuda = device != "cpu"
    floats = (ctypes.c_float * len(values))(*values)
    dims = (ctypes.c_int64 * len(shape))(*shape)
    return DeferTensor(shim.shim_from_floats(floats, dims, len(shape), dtype, 1 if cuda else 0, 0))


def defer_view(base, shape, strides, offset):
    return DeferTensor(shim.shim_view(base.handle, (ctypes.c_int64 * len(shape))(*shape),
                                      (ctypes.c_int64 * len(strides))(*strides), len(shape), offset))


def from_torch(t):
    """torch.utils.dlpack.to_dlpack, then defer's from_dlpack: the capsule is marked used first, since
    from_dlpack owns the DLManagedTensor even when it fails (it calls the deleter then)."""
    capsule = torch.utils.dlpack.to_dlpack(t)
    pointer = _capsule_get(capsule, _DLTENSOR)
    _capsule_set_name(capsule, _USED_DLTENSOR)
    return DeferTensor(shim.shim_from_dlpack(pointer))


def collect():
    gc.collect()


def torch_done(device):
    """PyTorch's CUDA work runs on PyTorch's stream: a consumer on defer's stream orders itself after
    it (DLPack's C struct carries no stream). Here the host simply waits for it."""
    if device != "cpu":
        torch.cuda.synchronize()


class Stream:
    """A defer::Stream held by the shim."""

    def __init__(self, handle):
        self.handle = None
        self.handle = checked(handle)

    def __del__(self):
        if self.handle:
            shim.shim_stream_free(self.handle)

    @staticmethod
    def from_native(cuda_stream, index=0):
        return Stream(shim.shim_stream_from_native(index, cuda_stream))

    @staticmethod
    def current(device="cpu"):
        return Stream(shim.shim_stream_current(0 if device == "cpu" else 1, 0))

    def synchronize(self):
        checked(shim.shim_stream_synchronize(self.handle), -1)

    def wait_for(self, producer):
        checked(shim.shim_stream_wait(self.handle, producer.handle), -1)


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def counting_values(n):
    """Small integers, exact in every dtype, some negative (and some zero: false as booleans)."""
    return [float((i % 13) - 6) for i in range(n)]


# ---- the checks -------------------------------------------------------------------------------------

def check_every_dtype_defer_to_torch(device):
    for dtype, torch_dtype in TORCH_DTYPE.items():
        values = counting_values(12)
        d = defer_tensor(values, [3, 4], dtype, device)
        t = torch.from_dlpack(d)
        expected = torch.tensor(values, dtype=torch.float32).reshape(3, 4).to(torch_dtype)
        expect(t.dtype == torch_dtype, f"{DTYPE_NAME[dtype]}: torch sees {t.dtype}")
        expect(t.device.type == device, f"{DTYPE_NAME[dtype]}: on {t.device}")
        expect(t.data_ptr() == d.info()["data"], f"{DTYPE_NAME[dtype]}: a copy was made")
        expect(t.shape == (3, 4) and t.stride() == (4, 1), f"{DTYPE_NAME[dtype]}: {t.shape} {t.stride()}")
        expect(torch.equal(t, expected), f"{DTYPE_NAME[dtype]}: {t} != {expected}")


def check_every_dtype_torch_to_defer(device):
    for dtype, torch_dtype in TORCH_DTYPE.items():
        t = torch.tensor(counting_values(12), dtype=torch.float32).reshape(3, 4).to(torch_dtype).to(device)
        torch_done(device)
        d = from_torch(t)
        info = d.info()
        expect(info["dtype"] == dtype, f"{DTYPE_NAME[dtype]}: defer sees dtype {info['dtype']}")
        expect(info["data"] == t.data_ptr(), f"{DTYPE_NAME[dtype]}: a copy was made")
        expect(info["shape"] == (3, 4) and info["strides"] == (4, 1), f"{DTYPE_NAME[dtype]}: {info}")
        expect((info["device"] >= 0) == (device != "cpu"), f"{DTYPE_NAME[dtype]}: device {info['device']}")
        expected = t.to(torch.float32).flatten().tolist()
        expect(d.values() == expected, f"{DTYPE_NAME[dtype]}: {d.values()} != {expected}")


def check_strided_torch_to_defer(device):
    for dtype, torch_dtype in TORCH_DTYPE.items():
        base = torch.arange(24, dtype=torch.float32).reshape(4, 6).to(torch_dtype).to(device)
        torch_done(device)
        views = {"t.T": base.T, "t[:, 1::2]": base[:, 1::2], "t[1:, 2:5]": base[1:, 2:5],
                 "t.T[1:, ::2]": base.T[1:, ::2], "expand (stride 0)": base[1:2].expand(3, 6)}
        for name, view in views.items():
            d = from_torch(view)
            info = d.info()
            label = f"{DTYPE_NAME[dtype]} {name}"
            expect(info["strides"] == view.stride(), f"{label}: strides {info['strides']} != {view.stride()}")
            expect(info["shape"] == tuple(view.shape), f"{label}: shape {info['shape']}")
            expect(info["data"] == view.data_ptr(), f"{label}: not the same first element")
            expected = view.to(torch.float32).contiguous().flatten().tolist()
            expect(d.values() == expected, f"{label}: {d.values()} != {expected}")


def check_strided_defer_to_torch(device):
    for dtype, torch_dtype in TORCH_DTYPE.items():
        base = defer_tensor([float(i % 13) for i in range(24)], [24], dtype, device)
        reference = torch.tensor([float(i % 13) for i in range(24)]).to(torch_dtype)
        element = torch.empty((), dtype=torch_dtype).element_size()
        for name, shape, strides, offset in (("transposed", [6, 4], [1, 6], 0), ("sliced", [2, 3], [12, 2], 7),
                                             ("broadcast", [3, 4], [0, 1], 2), ("3-d", [2, 3, 2], [1, 8, 3], 1)):
            t = torch.from_dlpack(defer_view(base, shape, strides, offset))
            label = f"{DTYPE_NAME[dtype]} {name}"
            expect(t.stride() == tuple(strides), f"{label}: strides {t.stride()}")
            expect(t.data_ptr() == base.info()["data"] + offset * element, f"{label}: not the same first element")
            expected = torch.as_strided(reference, shape, strides, offset)
            expect(torch.equal(t.cpu(), expected), f"{label}: {t} != {expected}")


def check_writes_are_seen_both_ways(device):
    # PyTorch writes into defer's memory.
    d = defer_tensor([0.0] * 8, [8], F32, device)
    t = torch.from_dlpack(d)
    t[2] = 9.0
    t[5:] = 4.0
    torch_done(device)
    expect(d.values() == [0, 0, 9, 0, 0, 4, 4, 4], f"defer sees {d.values()}")
    # PyTorch writes into its own memory after defer imported it.
    mine = torch.zeros(6, device=device)
    imported = from_torch(mine)
    mine[0] = 42.0
    mine[1:3] = -1.0
    torch_done(device)
    expect(imported.values() == [42, -1, -1, 0, 0, 0], f"defer sees {imported.values()}")
    # A defer kernel writes into PyTorch's memory; to_vector completes defer's stream.
    checked(shim.shim_fill(imported.handle, 2.5, None), -1)
    expect(imported.values() == [2.5] * 6, f"defer sees {imported.values()}")
    expect(mine.tolist() == [2.5] * 6, f"torch sees {mine.tolist()}")
    # A defer kernel writes into memory PyTorch imported; a slow task first, so that reading too
    # early would show the old values: to_dlpack must complete defer's current stream.
    current = Stream.current(device)
    checked(shim.shim_busy(current.handle, 150), -1)
    checked(shim.shim_fill(d.handle, 7.0, None), -1)
    again = torch.from_dlpack(d)
    expect(again.tolist() == [7.0] * 8, f"to_dlpack handed out memory before the work on it finished: {again.tolist()}")
    expect(t.tolist() == [7.0] * 8, f"the first import sees {t.tolist()}")


def check_lifetimes(device):
    collect()
    cuda = 0 if device == "cpu" else 1
    # torch -> defer: torch's deleter runs once, when defer's last sharer is gone.
    released = shim.shim_imports_released()
    t = torch.arange(1000, dtype=torch.float32, device=device)
    torch_done(device)
    d = from_torch(t)
    view = defer_view(d, [10], [3], 5)
    del t
    collect()
    junk = [torch.full((1000,), 7.0, device=device) for _ in range(8)]  # would reuse freed memory
    torch_done(device)
    expect(d.values() == [float(i) for i in range(1000)], "defer lost PyTorch's memory when PyTorch dropped its tensor")
    del junk
    expect(shim.shim_imports_released() == released, "torch's deleter ran while defer still held the memory")
    del d
    collect()
    expect(shim.shim_imports_released() == released, "torch's deleter ran while a defer view still held the memory")
    expect(view.values() == [float(5 + 3 * i) for i in range(10)], f"the view reads {view.values()}")
    del view
    collect()
    expect(shim.shim_imports_released() == released + 1, "torch's deleter did not run exactly once")

    # defer -> torch: defer's deleter runs once, when torch frees; defer's memory stays until then.
    baseline = shim.shim_allocated_bytes(cuda, 0)
    alive = shim.shim_exports_alive()
    d = defer_tensor([float(i) for i in range(256)], [256], F32, device)
    t = torch.from_dlpack(d)
    expect(shim.shim_exports_alive() == alive + 1, "the export is not counted")
    del d
    collect()
    expect(shim.shim_allocated_bytes(cuda, 0) > baseline, "defer freed memory PyTorch still uses")
    expect(t.tolist() == [float(i) for i in range(256)], "PyTorch lost defer's memory when defer dropped its tensor")
    del t
    collect()
    expect(shim.shim_exports_alive() == alive, "defer's deleter did not run when PyTorch freed its tensor")
    expect(shim.shim_allocated_bytes(cuda, 0) == baseline, "defer's memory was not given back")

    # A capsule nobody consumed releases its tensor when it dies; two exports of one tensor.
    d = defer_tensor([1.0, 2.0], [2], F32, device)
    capsule = d.__dlpack__()
    expect(shim.shim_exports_alive() == alive + 1, "the export is not counted")
    del capsule
    collect()
    expect(shim.shim_exports_alive() == alive, "an unconsumed capsule did not release its export")
    a, b = torch.from_dlpack(d), torch.from_dlpack(d)
    expect(a.data_ptr() == b.data_ptr() == d.info()["data"], "two exports, two addresses")
    del a, b, d
    collect()
    expect(shim.shim_exports_alive() == alive, "two exports were not both released")


def check_rejected_imports_release_once(device):
    collect()
    cases = ((torch.uint8, "uint8"), (torch.float64, "dtype"), (torch.int8, "dtype"), (torch.complex64, "dtype"))
    for torch_dtype, word in cases:
        released = shim.shim_imports_released()
        t = torch.zeros(4, dtype=torch_dtype, device=device)
        try:
            from_torch(t)
        except ShimError as error:
            message = str(error)
            expect("from_dlpack" in message and word in message, f"{torch_dtype}: message '{message}'")
        else:
            raise AssertionError(f"{torch_dtype} was imported")
        expect(shim.shim_imports_released() == released + 1, f"{torch_dtype}: the deleter did not run exactly once")
        t += 1  # PyTorch's tensor is intact
        expect(t.tolist() == [1] * 4, f"{torch_dtype}: {t.tolist()}")


# ---- CUDA only: streams ------------------------------------------------------------------------------

SLEEP_CYCLES = 400_000_000  # torch.cuda._sleep: a few hundred milliseconds on any current GPU


def check_torch_kernel_then_defer_kernel_on_another_stream(device):
    """A slow PyTorch kernel on stream A produces x; a defer kernel on stream B (a wrapper of PyTorch's
    stream) consumes it after an event, without the host waiting. Unordered, it would read zeros."""
    n = 1 << 20
    stream_a, stream_b = torch.cuda.Stream(), torch.cuda.Stream()
    with torch.cuda.stream(stream_a):
        x = torch.zeros(n, device=device)
        torch.cuda._sleep(SLEEP_CYCLES)
        x.fill_(3.0)
    x.record_stream(stream_b)
    d = from_torch(x)
    on_a, on_b = Stream.from_native(stream_a.cuda_stream), Stream.from_native(stream_b.cuda_stream)
    expect(shim.shim_stream_native(on_b.handle) == stream_b.cuda_stream, "the wrapper has another handle")
    on_b.wait_for(on_a)
    y = DeferTensor(shim.shim_add(d.handle, 1.0, on_b.handle))
    stream_b.synchronize()  # PyTorch's view of the same stream
    expect(set(torch.from_dlpack(y).tolist()) == {4.0}, "the defer kernel ran before the PyTorch kernel it waited for")


def check_defer_kernel_then_torch_kernel_on_another_stream(device):
    """A slow defer kernel on PyTorch's stream C writes out; PyTorch on stream D waits for C (PyTorch's
    own wait_stream) and reads it. Unordered, it would read zeros."""
    n = 1 << 20
    out = torch.zeros(n, device=device)
    torch.cuda.synchronize()
    d = from_torch(out)
    stream_c, stream_d = torch.cuda.Stream(), torch.cuda.Stream()
    on_c = Stream.from_native(stream_c.cuda_stream)
    checked(shim.shim_busy(on_c.handle, 300), -1)
    checked(shim.shim_fill(d.handle, 5.0, on_c.handle), -1)
    stream_d.wait_stream(stream_c)
    with torch.cuda.stream(stream_d):
        z = out * 2
    stream_d.synchronize()
    expect(set(z.tolist()) == {10.0}, "the PyTorch kernel ran before the defer kernel it waited for")


def check_defer_on_torch_current_stream(device):
    """Defer work queued on PyTorch's current stream (wrapped with Stream::from_native) is ordered
    with PyTorch's work on that stream, both ways, with no synchronization at all."""
    n = 1 << 20
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        buffer = torch.zeros(n, device=device)
        d = from_torch(buffer)
        current = Stream.from_native(torch.cuda.current_stream().cuda_stream)
        # Each step overwrites or reads the previous one's result, so any reordering changes the end
        # value: PyTorch sets 1 (after a slow kernel), defer overwrites it with 2, defer adds 6 into
        # a new tensor (after a slow kernel of its own), PyTorch adds 1 to that.
        torch.cuda._sleep(SLEEP_CYCLES)
        buffer.fill_(1.0)
        checked(shim.shim_fill(d.handle, 2.0, current.handle), -1)
        y = DeferTensor(shim.shim_add(d.handle, 6.0, current.handle))
        checked(shim.shim_busy(current.handle, 100), -1)
        # to_dlpack completes defer's current stream (not this one): the order below is the stream's.
        result = torch.from_dlpack(y) + 1
    stream.synchronize()
    expect(set(buffer.tolist()) == {2.0}, "PyTorch's fill ran after defer's")
    expect(set(result.tolist()) == {9.0}, "defer and PyTorch work on one stream ran out of order")
    # PyTorch reports its default stream as 0, which is ambiguous: from_native wants it named.
    try:
        Stream.from_native(None)
    except ShimError as error:
        expect("null" in str(error), f"message '{error}'")
    else:
        raise AssertionError("a null stream handle was accepted")
    legacy = Stream.from_native(1)  # cudaStreamLegacy
    y = DeferTensor(shim.shim_add(d.handle, 1.0, legacy.handle))
    legacy.synchronize()
    expect(set(torch.from_dlpack(y).tolist()) == {3.0}, "work on the wrapped legacy stream")


CPU_CHECKS = [check_every_dtype_defer_to_torch, check_every_dtype_torch_to_defer, check_strided_torch_to_defer,
              check_strided_defer_to_torch, check_writes_are_seen_both_ways, check_lifetimes,
              check_rejected_imports_release_once]
CUDA_CHECKS = CPU_CHECKS + [check_torch_kernel_then_defer_kernel_on_another_stream,
                            check_defer_kernel_then_torch_kernel_on_another_stream,
                            check_defer_on_torch_current_stream]


def main():
    print(f"torch {torch.__version__}, shim {sys.argv[1]}")
    runs = [(check, "cpu") for check in CPU_CHECKS]
    if torch.cuda.is_available() and shim.shim_cuda_available():
        runs += [(check, "cuda") for check in CUDA_CHECKS]
    else:
        print(f"note: the CUDA checks do not run: torch.cuda.is_available() is {torch.cuda.is_available()}, "
              f"defer's cuda_available() is {bool(shim.shim_cuda_available())}")
    failures = 0
    for check, device in runs:
        name = f"{check.__name__}[{device}]"
        try:
            check(device)
            collect()
        except Exception:  # report every check, then fail
            failures += 1
            print(f"FAIL {name}")
            traceback.print_exc()
        else:
            print(f"ok   {name}")
    print(f"{len(runs) - failures} of {len(runs)} checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
