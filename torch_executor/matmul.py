"""Products by constant weights: how Program.from_trace stores them, and how they run.

- A linear layer's weight becomes a contiguous 2-D (in, out) matrix (store_weight_matrices).
- On an x86 CPU without bfloat16 arithmetic (no AVX512-BF16, no AMX), torch's (oneDNN's) bfloat16
  matrix product converts as it goes and, from a few rows on (a batch of decode steps, a prompt),
  runs at a third of float32's speed or less; one row goes through a matrix-vector kernel that is
  fast. There a product of a few rows by a bfloat16 weight runs row by row through that kernel, and
  one of more rows in float32, a block of the weight's columns at a time, so that the converted
  block stays in cache (by_bfloat16_matrix). bfloat16 -> float32 is exact, and the sums accumulate
  in float32 and round once to bfloat16, as oneDNN's bfloat16 product does; only the order of the
  sums may differ.
"""

import functools
import platform

import torch

# How many rows of a product by a bfloat16 weight run row by row, and from how many on in float32
# blocks; in between, torch's product. Chosen by GPT-2 124M decode steps on a Xeon without
# AVX512-BF16, against torch's product: batch 2 takes 11% less time row by row, batch 3 as long;
# batch 4 is fastest with torch's product (4% more in blocks); in blocks batch 5 takes 2% less,
# 6 8% less, 8 18% less.
MAX_ROW_BY_ROW = 3
MIN_ROWS = 5
BLOCK_BYTES = 1 << 20  # a converted block of columns: about what a core's L2 cache holds


# ----------------------------------------------------------------------------------------------
# Compile time


def store_weight_matrices(steps, constants, facts, new_slot):
    """Gives each MatrixMultiply by a constant (a linear layer's weight) that constant as a contiguous
    2-D (in, out) matrix, where nvtripy's Linear hands over a transposed view broadcast to the input's
    rank. With the 3-D view torch.matmul ran one product per sample, each reading the whole weight,
    and in bfloat16 copied the transposed weight at every call; with the matrix it runs one product
    over the batch, and (in, out) rows are what its matrix-vector and small-batch kernels read
    fastest. The values are the same, only stored anew, once, at compile time.

    A tied weight (GPT-2's lm_head and token embedding) would then be held twice: a constant that is
    the transposed matrix, in the same memory, becomes a view of the new one instead."""
    matrices = {}
    for step in steps:
        if step.kind != "MatrixMultiply" or step.inputs[1] not in constants or step.inputs[0] not in facts:
            continue
        weight = constants[step.inputs[1]]
        if weight.dim() < 2 or any(size != 1 for size in weight.shape[:-2]) or len(facts[step.inputs[0]].shape) < weight.dim():
            continue  # a matrix of its own per batch entry, or a product whose rank the 3-D weight decides
        if weight.dim() == 2 and weight.is_contiguous():
            continue
        if step.inputs[1] not in matrices:
            view = weight.reshape(weight.shape[-2:])
            matrix = view.contiguous()
            slot = new_slot(("matrix", step.inputs[1]))
            constants[slot] = matrix
            matrices[step.inputs[1]] = slot
            for other, tensor in constants.items():
                if _is_transpose_view(tensor, view):
                    constants[other] = matrix.t()
        step.inputs = [step.inputs[0], matrices[step.inputs[1]]]


def _is_transpose_view(tensor, view):
    """Whether `tensor` is `view`.t() by its memory: same storage, offset, and swapped sizes and strides."""
    return (
        tensor.dim() == 2
        and tensor.numel() > 0
        and tensor.untyped_storage().data_ptr() == view.untyped_storage().data_ptr()
        and tensor.storage_offset() == view.storage_offset()
        and tuple(tensor.shape) == tuple(view.shape)[::-1]
        and tuple(tensor.stride()) == tuple(view.stride())[::-1]
    )


# ----------------------------------------------------------------------------------------------
# Run time


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
    """Whether a product by this constant runs in float32 blocks here (by_bfloat16_matrix)."""
    return (
        weight is not None
        and weight.dtype == torch.bfloat16
        and weight.dim() == 2
        and weight.is_contiguous()
        and not cpu_has_bfloat16_arithmetic()
    )


def by_bfloat16_matrix(a, b):
    """a @ b for a bfloat16 matrix b (in, out): one row of a as torch.matmul computes it, up to
    MAX_ROW_BY_ROW row by row with the same one-row kernel, from MIN_ROWS on in float32 blocks of
    b's columns."""
    if a.dim() < 2 or a.dtype != torch.bfloat16 or a.numel() == a.shape[-1]:
        return torch.matmul(a, b)
    rows, (inner, cols) = a.numel() // a.shape[-1], b.shape
    x = a.reshape(rows, inner)
    if rows <= MAX_ROW_BY_ROW:
        return torch.cat([torch.mm(x[i : i + 1], b) for i in range(rows)]).reshape(*a.shape[:-1], cols)
    if rows < MIN_ROWS:
        return torch.matmul(a, b)
    x = x.float()
    out = torch.empty(rows, cols, dtype=torch.bfloat16)
    block = max(64, BLOCK_BYTES // (4 * inner) // 64 * 64)
    for start in range(0, cols, block):
        out[:, start : start + block] = torch.mm(x, b[:, start : start + block].float())
    return out.reshape(*a.shape[:-1], cols)
