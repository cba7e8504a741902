#!/usr/bin/env python3
"""safetensors files between the Python package and defer (docs/api.md section 12).

1. The package (safetensors.torch.save_file) writes random tensors of every dtype defer has, a 0-d
   and an empty one, with __metadata__; defer loads the file (on the CPU, and on CUDA when there is
   one) and saves it again; the package reads defer's file back: every tensor equal bit for bit.
2. defer writes its own tensors (safetensors_tool.cpp: every dtype, a transposed view, a 0-d and an
   empty tensor, made on the default device); the package reads them: equal to the same values
   built here.

Usage: test_safetensors_roundtrip.py path/to/safetensors_tool. Exits 77 (skipped) without torch or
safetensors, saying what to install.
"""
import os
import struct
import subprocess
import sys
import tempfile

try:
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
except ImportError as e:
    print(f"skipped: {e}. Install torch and safetensors: scripts/install-deps --python "
          "(or pip install torch safetensors numpy)")
    sys.exit(77)

TOOL = sys.argv[1]

# The integer dtype of each width: tensors are compared through their bits, so that a NaN pattern,
# a negative zero or a bf16 rounding would all be seen.
BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t):
    t = t.contiguous()
    return t.view(torch.uint8) if t.dtype == torch.bool else t.view(BITS[t.element_size()])


def random_tensors():
    g = torch.Generator().manual_seed(2024)

    def nonzero(t):
        return torch.where(t == 0, torch.ones_like(t), t)

    return {
        "w_f32": nonzero(torch.randn(5, 7, generator=g)),
        "w_f16": nonzero(torch.randn(3, 9, generator=g).to(torch.float16)),
        "w_bf16": nonzero(torch.randn(4, 2, 3, generator=g).to(torch.bfloat16)),
        "i_i32": nonzero(torch.randint(-2**31, 2**31 - 1, (11,), generator=g, dtype=torch.int32)),
        "i_i64": nonzero(torch.randint(-2**62, 2**62, (2, 3), generator=g, dtype=torch.int64)),
        "mask": torch.randint(0, 2, (13,), generator=g).to(torch.bool),
        "scalar": torch.tensor(1.75, dtype=torch.float32),
        "empty": torch.zeros(0, 4, dtype=torch.float16),
    }


def expect_equal(expected, actual, what):
    if sorted(expected) != sorted(actual):
        sys.exit(f"{what}: names {sorted(actual)}, expected {sorted(expected)}")
    for name, want in expected.items():
        got = actual[name]
        if got.dtype != want.dtype or got.shape != want.shape:
            sys.exit(f"{what}: {name} is {got.dtype} {tuple(got.shape)}, expected {want.dtype} {tuple(want.shape)}")
        if not torch.equal(bits(got), bits(want)):
            sys.exit(f"{what}: {name} differs:\n{got}\nexpected\n{want}")


def expect_well_formed(path):
    """The package reads the header, finds no __metadata__, and the data starts 8-byte aligned."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    if (8 + n) % 8:
        sys.exit(f"{path}: the data starts at {8 + n}, not 8-byte aligned")
    with safe_open(path, "pt") as f:
        if f.metadata():
            sys.exit(f"{path}: unexpected __metadata__ {f.metadata()}")


def tool(*args):
    r = subprocess.run([TOOL, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"safetensors_tool {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
    return r.stdout.strip()


def own_tensors():
    """The values safetensors_tool.cpp's own_tensors() saves."""
    i = torch.arange(1, 13)
    f32 = (i.to(torch.float32) * -0.375).reshape(3, 4)
    half = (i.to(torch.float32) * 0.5).reshape(3, 4)
    return {
        "own_f32": f32,
        "own_i32": (i * -123457).to(torch.int32).reshape(3, 4),
        "own_i64": (i * 1000000000000 + 7).reshape(3, 4),
        "own_bool": ((i - 1) % 3 != 0).reshape(3, 4),
        "own_f16": half.to(torch.float16),
        "own_bf16": half.to(torch.bfloat16),
        "own_transposed": f32.t().contiguous(),
        "own_scalar": torch.tensor(2.5),
        "own_empty": torch.zeros(0, 2, dtype=torch.int64),
    }


def main():
    devices = ["cpu"] + (["cuda"] if tool("cuda") == "yes" else [])
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "from_python.safetensors")
        tensors = random_tensors()
        save_file(tensors, source, metadata={"format": "pt", "origin": "test_safetensors_roundtrip"})
        for device in devices:
            copy = os.path.join(tmp, f"through_defer_{device}.safetensors")
            print(tool("copy", source, copy, device))
            expect_well_formed(copy)
            expect_equal(tensors, load_file(copy), f"python -> defer ({device}) -> python")

        own = os.path.join(tmp, "from_defer.safetensors")
        print(tool("write", own, "default"))
        expect_well_formed(own)
        expect_equal(own_tensors(), load_file(own), "defer -> python")
    print(f"safetensors round trips ok ({', '.join(devices)})")


if __name__ == "__main__":
    main()
