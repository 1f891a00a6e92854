"""Products by constant weights: how Program.from_trace stores them, and how they run.

- A linear layer's weight becomes a 2-D matrix: a view of its memory, or a contiguous (in, out)
  copy where that is faster for the product's static row count (store_weight_matrices).
- On an x86 CPU without bfloat16 arithmetic (no AVX512-BF16, no AMX), torch's (oneDNN's) bfloat16
  matrix product converts as it goes and, from a few rows on (a batch of decode steps, a prompt),
  runs at a third of float32's speed or less; one row goes through a matrix-vector kernel that is
  fast. There a product of two rows by a bfloat16 weight runs row by row through that kernel, and
  one of four or more rows in float32, a block of the weight's columns at a time, so that the
  converted block stays in cache (by_bfloat16_matrix). bfloat16 -> float32 is exact, and the sums
  accumulate in float32 and round once to bfloat16, as oneDNN's bfloat16 product does; only the
  order of the sums may differ.
"""

import functools
import math
import platform
import weakref

import torch

# How many rows of a product by a bfloat16 weight run row by row (through torch's fast one-row
# kernel, by a contiguous (in, out) copy of the weight), and from how many on in float32 blocks (of
# a view of the weight's (out, in) rows, which convert fastest); in between, torch's product.
# Chosen by GPT-2 124M decode steps on a Xeon without AVX512-BF16: batch 2 takes 10% less time row
# by row than by torch's product, batch 3 as long (so it keeps the view); in blocks batch 4 takes
# 13% less, batch 5 21% less, batch 8 a third less.
MAX_ROW_BY_ROW = 2
MIN_ROWS = 4
BLOCK_BYTES = 1 << 20  # a converted block of columns: about what a core's L2 cache holds


# ----------------------------------------------------------------------------------------------
# Compile time


def store_weight_matrices(steps, constants, facts, new_slot):
    """Gives each MatrixMultiply by a constant (a linear layer's weight) that constant as a 2-D
    matrix, where nvtripy's Linear hands over a transposed (out, in) weight broadcast to the input's
    rank: with the 3-D view torch.matmul ran one product per sample, each reading the whole weight,
    and in bfloat16 copied the transposed weight at every call; with a matrix it runs one product
    over the batch. The matrix is a view of the weight's memory, (out, in) rows, unless the number
    of rows multiplied is static and a contiguous (in, out) copy is faster for it (_copy_pays).

    A copy is made once, not once per program nor once per use: programs compiled from the same
    weights share it (_shared_matrix), and a constant that is the transposed matrix in the same
    memory (GPT-2's token embedding, tied to lm_head) becomes a view of it. The weights the model
    holds are held besides, so a copy costs the weight's size in memory."""
    matrices = {}
    for step in steps:
        if step.kind != "MatrixMultiply" or step.inputs[1] not in constants or step.inputs[0] not in facts:
            continue
        weight, rows_shape = constants[step.inputs[1]], facts[step.inputs[0]].shape
        if weight.dim() < 2 or any(size != 1 for size in weight.shape[:-2]) or len(rows_shape) < weight.dim():
            continue  # a matrix of its own per batch entry, or a product whose rank the 3-D weight decides
        if weight.dim() == 2 and weight.is_contiguous():
            continue
        rows = math.prod(rows_shape[:-1]) if all(isinstance(d, int) for d in rows_shape) else None
        key = (step.inputs[1], _copy_pays(weight.dtype, rows))
        if key not in matrices:
            view = weight.reshape(weight.shape[-2:])
            matrix = _shared_matrix(view) if key[1] else view
            slot = new_slot(("matrix", *key))
            constants[slot] = matrix
            matrices[key] = slot
            if key[1]:
                for other, tensor in constants.items():
                    if _is_transpose_view(tensor, view):
                        constants[other] = matrix.t()
        step.inputs = [step.inputs[0], matrices[key]]


def _copy_pays(dtype, rows):
    """Whether to multiply `rows` rows (None: not static) by a contiguous (in, out) copy of a weight
    rather than by a view of its (out, in) rows. A copy costs the weight's size in memory, so only
    where it saves a tenth of a decode step or more. Measured on GPT-2 124M on one core of a Xeon:
    in float32 a batch-1 step takes 4% less time by the copy, batch 2 7% more, batch 8 25% less;
    in bfloat16 batch 1 27% less (torch's one-row kernel reads (in, out) rows much faster), batch 2
    row by row (MAX_ROW_BY_ROW) 10% less. A prompt's row count is not static, and its products are
    large, where the layout matters little: they use the view."""
    if rows is None:
        return False
    if dtype == torch.float32:
        return rows >= 4
    return dtype == torch.bfloat16 and rows <= MAX_ROW_BY_ROW


# Contiguous matrices made from weights, by where the weight's view lies in memory; an entry lasts
# as long as a program holds its matrix.
_MATRICES = weakref.WeakValueDictionary()


def _shared_matrix(view):
    """view.contiguous(), or the equal matrix an earlier program made from the same memory. The
    memory may since have been freed and reused, so a matrix is shared only if its values are equal."""
    key = (view.untyped_storage().data_ptr(), view.storage_offset(), tuple(view.shape), tuple(view.stride()), view.dtype)
    matrix = _MATRICES.get(key)
    if matrix is None or not torch.equal(matrix, view):
        matrix = view.contiguous()
        _MATRICES[key] = matrix
    return matrix


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
    """Whether a product by this constant runs through by_bfloat16_matrix here: a bfloat16 matrix,
    (in, out) or a view of (out, in) rows, on a CPU without bfloat16 arithmetic."""
    return (
        weight is not None
        and weight.dtype == torch.bfloat16
        and weight.dim() == 2
        and (weight.is_contiguous() or weight.t().is_contiguous())
        and not cpu_has_bfloat16_arithmetic()
    )


def by_bfloat16_matrix(a, b):
    """a @ b for a bfloat16 matrix b (in, out), contiguous or a view of (out, in) rows: one row of a
    as torch.matmul computes it, up to MAX_ROW_BY_ROW rows by a contiguous b row by row with the same
    one-row kernel, from MIN_ROWS on in float32 blocks of b's columns, else as torch.matmul does."""
    if a.dim() < 2 or a.dtype != torch.bfloat16 or a.numel() == a.shape[-1]:
        return torch.matmul(a, b)
    rows, (inner, cols) = a.numel() // a.shape[-1], b.shape
    x = a.reshape(rows, inner)
    if rows <= MAX_ROW_BY_ROW and b.is_contiguous():  # the one-row kernel is fast for (in, out) rows
        return torch.cat([torch.mm(x[i : i + 1], b) for i in range(rows)]).reshape(*a.shape[:-1], cols)
    if rows < MIN_ROWS:
        return torch.matmul(a, b)
    x = x.float()
    out = torch.empty(rows, cols, dtype=torch.bfloat16)
    block = max(64, BLOCK_BYTES // (4 * inner) // 64 * 64)
    for start in range(0, cols, block):
        out[:, start : start + block] = torch.mm(x, b[:, start : start + block].float())
    return out.reshape(*a.shape[:-1], cols)
