"""Products by a bfloat16 weight matrix on x86 CPUs without bfloat16 arithmetic.

torch multiplies bfloat16 matrices with oneDNN. On a CPU without AVX512-BF16 or AMX it converts as it
goes, and from a few rows on (a batch of decode steps, a prompt) runs at a third of float32's speed or
less; one row goes through a matrix-vector kernel that is fast. On such CPUs a product of several rows
by a constant bfloat16 matrix runs in float32 instead, a block of the matrix's columns at a time, so
that the converted block stays in cache: bfloat16 -> float32 is exact, the products accumulate in
float32 and round once to bfloat16, as oneDNN's bfloat16 product does. Only the order of the sums
may differ. Program binds it to the MatrixMultiply steps it fits; elsewhere torch.matmul runs.
"""

import functools
import platform

import torch

MIN_ROWS = 5  # up to 4 rows, torch's bfloat16 kernels are as fast as converting the weight, or faster
BLOCK_BYTES = 1 << 20  # a converted block of columns: about what a core's L2 cache holds


@functools.lru_cache(maxsize=None)
def cpu_has_bfloat16_arithmetic():
    """False only on an x86 CPU whose flags (Linux /proc/cpuinfo) lack both AVX512-BF16 and AMX-BF16."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True  # leave other architectures to torch
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return True
    return flags is None or "avx512_bf16" in flags or "amx_bf16" in flags


def fits(weight):
    """Whether a MatrixMultiply by this constant runs in float32 blocks here."""
    return (
        weight is not None
        and weight.dtype == torch.bfloat16
        and weight.dim() == 2
        and weight.is_contiguous()
        and not cpu_has_bfloat16_arithmetic()
    )


def by_bfloat16_matrix(a, b):
    """a @ b for a bfloat16 matrix b (in, out): in float32 blocks of b's columns from MIN_ROWS rows of a on."""
    if a.dim() < 2 or a.dtype != torch.bfloat16 or a.numel() < MIN_ROWS * a.shape[-1]:
        return torch.matmul(a, b)
    rows, (inner, cols) = a.numel() // a.shape[-1], b.shape
    x = a.reshape(rows, inner).float()
    out = torch.empty(rows, cols, dtype=torch.bfloat16)
    block = max(64, BLOCK_BYTES // (4 * inner) // 64 * 64)
    for start in range(0, cols, block):
        out[:, start : start + block] = torch.mm(x, b[:, start : start + block].float())
    return out.reshape(*a.shape[:-1], cols)
