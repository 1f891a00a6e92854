"""Products by constant weights: how compiling stores them, and how they run.

- A linear layer's weight becomes a 2-D matrix: a view of its memory, or a contiguous (in, out)
  copy where that is faster for the product's static row count (store_weight_matrices).
- A product by a float16 weight, and one of a few static rows by a bfloat16 weight (one or two on a
  CPU with bfloat16 arithmetic, up to PREPACK_MAX_ROWS on one without), reads an exact float16 copy
  of the weight that fbgemm packed (takes_float16_copy, float16_copy, prepacked_product).
- On an x86 CPU without bfloat16 arithmetic (no AVX512-BF16, no AMX), torch's (oneDNN's) bfloat16
  matrix product converts as it goes and, from a few rows on (a prompt), runs at a third of
  float32's speed or less; one row goes through a matrix-vector kernel that is fast. There a
  product of other rows by a bfloat16 weight runs row by row through that kernel up to two rows, and
  from four rows on in float32, a block of the weight's columns at a time, so that the converted
  block stays in cache (by_bfloat16_matrix). bfloat16 -> float32 is exact, and the sums accumulate
  in float32 and round once to bfloat16, as oneDNN's bfloat16 product does; only the order of the
  sums may differ.
- On a CPU with bfloat16 arithmetic, a product of 3 to PREPACK_MAX_ROWS static rows by a bfloat16
  weight reads a copy that oneDNN prepacked (prepacks, prepacked_product); on an x86 CPU where MKL
  runs its generic code, a product of a few static rows by a float32 weight reads oneDNN's copy too.
- A small product of two computed bfloat16 or float16 tensors (a decode step's attention) runs in
  float32 (computed_product).
- Quantized products run by kernels chosen at compile time from the rows' dtype, the weight's shape
  and the CPU (pack_quantized, quantized_function; see "Quantized products" below).
"""

import functools
import json
import math
import platform
import threading
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
    row by row (MAX_ROW_BY_ROW) 10% less; where oneDNN prepacks the weight (prepacks), it holds
    that copy instead. A prompt's row count is not static, and its products are
    large, where the layout matters little: they use the view."""
    if rows is None or _packs(dtype, rows):
        return False
    if dtype == torch.float32:
        return rows >= 4
    return dtype == torch.bfloat16 and rows <= MAX_ROW_BY_ROW and not can_prepack_bfloat16()


def memory_key(tensor):
    """Where a tensor lies in memory: a key for what is made from it once and shared."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))


# Contiguous matrices made from weights, by where the weight's view lies in memory; an entry lasts
# as long as a program holds its matrix.
_MATRICES = weakref.WeakValueDictionary()


def _shared_matrix(view):
    """view.contiguous(), or the equal matrix an earlier program made from the same memory. The
    memory may since have been freed and reused, so a matrix is shared only if its values are equal."""
    key = (*memory_key(view), view.dtype)
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
        and not tensor.is_mkldnn  # oneDNN's packed codes: no memory of their own to compare
        and tensor.untyped_storage().data_ptr() == view.untyped_storage().data_ptr()
        and tensor.storage_offset() == view.storage_offset()
        and tuple(tensor.shape) == tuple(view.shape)[::-1]
        and tuple(tensor.stride()) == tuple(view.stride())[::-1]
    )


# ----------------------------------------------------------------------------------------------
# Run time


@functools.lru_cache(maxsize=None)
def _cpuinfo(field):
    """A field of the first CPU in Linux's /proc/cpuinfo, split into words, on x86; else None."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.split(":")[0].strip() == field), None)
    except OSError:
        return None


def _cpu_flags():
    return _cpuinfo("flags")


def cpu_runs_mkl_generic_code():
    """Whether MKL, torch's float32 product on x86, runs its generic code here: on an x86 CPU not of
    Intel's (MKL_VERBOSE then names only 'Intel(R) Architecture processors', where on a Xeon it names
    the instruction set), where it took 1.2x to 2x oneDNN's prepacked float32 product (see prepacks)."""
    vendor = _cpuinfo("vendor_id")
    return vendor is not None and vendor != ["GenuineIntel"] and torch.backends.mkl.is_available()


def cpu_has_bfloat16_arithmetic():
    """False only on an x86 CPU whose flags lack both AVX512-BF16 and AMX-BF16 (elsewhere, leave it to torch)."""
    flags = _cpu_flags()
    return flags is None or "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_int8_dot_products():
    """Whether oneDNN's int8 product (uint8 by int8, summed in int32) runs on int8 dot-product
    instructions: an x86 CPU with AVX512-VNNI, AVX-VNNI or AMX-INT8. Elsewhere its speed is unknown,
    and the blocked kernel runs int8 weights instead."""
    flags = _cpu_flags()
    return flags is not None and any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def cpu_has_int8_tiles():
    """Whether the CPU has AMX-INT8, on which oneDNN's int8 product takes 8 rows in about one row's time."""
    flags = _cpu_flags()
    return flags is not None and "amx_int8" in flags


def cpu_features():
    """What decides the kernels here: e.g. 'x86_64 bf16-arithmetic int8-dot mkl-generic mkldnn'."""
    parts = [platform.machine().lower()]
    parts += ["bf16-arithmetic"] if cpu_has_bfloat16_arithmetic() else []
    parts += ["int8-dot"] if cpu_has_int8_dot_products() else []
    parts += ["int8-tiles"] if cpu_has_int8_tiles() else []
    parts += ["mkl-generic"] if cpu_runs_mkl_generic_code() else []
    parts += ["mkldnn"] if torch.backends.mkldnn.is_available() else []
    return " ".join(parts)


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


# ----------------------------------------------------------------------------------------------
# Products of two computed tensors: a decode step's attention

# torch multiplies two bfloat16 or float16 tensors through oneDNN, which builds a kernel for each shape it
# meets: 0.8 ms the first time for scores [1, 12, 1, 64] @ [1, 12, 64, T], 0.1 ms after. A decode step's
# keys are one token longer than the last step's, so every step built its kernels again. Converted to
# float32 (MKL, which builds none), GPT-2 124M's attention products took 2.7 ms a decode step against 4.5
# at batch 1 and 40 cached tokens, 3.9 against 5.0 at batch 2 (one core of a Sapphire Rapids Xeon, timed
# in turn in one run). Converting costs in proportion to the size, though: at batch 4 it no longer paid,
# and at 600 cached tokens it took 1.7x as long. So products of at most this many elements in all (the
# keys of 84 tokens at batch 1) run so.
SMALL_HALF_PRODUCT_ELEMENTS = 1 << 16


def computed_product(a, b):
    """a @ b for two tensors computed at run time: a small bfloat16 or float16 product in float32, rounded
    once to their dtype (the values convert exactly and the sums accumulate in float32, as oneDNN's
    half-precision product does; only the order of the sums may differ), any other as torch.matmul."""
    if a.dtype in (torch.bfloat16, torch.float16) and a.numel() + b.numel() <= SMALL_HALF_PRODUCT_ELEMENTS:
        return torch.matmul(a.float(), b.float()).to(a.dtype)
    return torch.matmul(a, b)


# ----------------------------------------------------------------------------------------------
# bfloat16 products by oneDNN's prepacked weights


PREPACK_MAX_ROWS = 16  # a decode step's rows; a prompt's row count is not static and keeps torch's product


def prepacks(weight, rows):
    """Whether a product of `rows` rows (None: not static) by this matrix runs by a prepacked copy
    (prepacked_product): fbgemm's float16 one where takes_float16_copy says so, else oneDNN's, which reads the
    weight in the layout its kernel wants. oneDNN's, GPT-2 124M's 48 matrices, one core: in bfloat16 on a CPU
    with bfloat16 arithmetic about 0.55x F.linear's time at 1 and 8 rows (a Sapphire Rapids Xeon with AMX). In
    float32 where MKL runs its generic code (an AMD EPYC) 0.85x torch's product by a view of the weight's (out,
    in) rows at 1 row, 0.67x at 2 and 0.62x at 8 (0.47x its product by an (in, out) copy), a decode step at batch
    1 0.85x (the copy costs the weight's size in memory) and at 8 0.5x; on a Xeon, where MKL runs its AVX-512
    code, 1.0-1.2x the faster of the two, so there torch's product stays."""
    return weight is not None and weight.dim() == 2 and _packs(weight.dtype, rows)


def _packs(dtype, rows):
    if takes_float16_copy(dtype, rows):
        return True
    if rows is None or not 1 <= rows <= PREPACK_MAX_ROWS:
        return False
    if dtype == torch.bfloat16:
        return can_prepack_bfloat16()
    return dtype == torch.float32 and cpu_runs_mkl_generic_code() and torch.backends.mkldnn.is_available()


def can_prepack_bfloat16():
    return cpu_has_bfloat16_arithmetic() and torch.backends.mkldnn.is_available()


_PREPACKED = weakref.WeakValueDictionary()

# How many rows of a product by a bfloat16 weight run by fbgemm's float16 product rather than oneDNN's
# prepacked bfloat16 one on a CPU with bfloat16 arithmetic (takes_float16_copy). GPT-2 124M's 48 matrices,
# one core, 4 sets of them in turn so that each pass reads its weights from memory (docs/performance.md):
# on an AMD EPYC with AVX512-BF16, 7.7 against 11.9 ms at 1 row, 14.4 against 19.6 at 2, 13.9 against 14.3
# at 4; on a Xeon with AMX 26.1 against 34.3, 28.9 against 33.0, 34.0 against 33.7.
FLOAT16_COPY_MAX_ROWS = 2
FLOAT16_LARGEST = 65504.0
FLOAT16_MAX_SHIFT = 100  # 2^shift and 2^-shift stay normal float32 numbers


class _Held:
    """What a product by a prepacked weight holds, and the weight it was made from, which the cache
    compares before sharing: oneDNN's packed tensor, fbgemm's float16 copy (PackedFloat16Weight), or for
    by_bfloat16_matrix the weight itself."""

    def __init__(self, packed, source):
        self.packed, self.source = packed, source


class PackedFloat16Weight:
    """fbgemm's packed float16 copy of a weight, which is no tensor: `nbytes` is what it holds, two bytes a
    weight, for the bytes a program reads (program.weight_bytes). The copy is the weight times 2^shift."""

    def __init__(self, packed, weight_shape, shift):
        self.packed, self.nbytes, self.shift = packed, 2 * math.prod(weight_shape), shift


def takes_float16_copy(dtype, rows):
    """Whether a product of `rows` rows (None: not static) by a weight of this dtype runs by fbgemm's float16 copy
    (prepacked_product): every product by a float16 weight, which torch multiplies 7x slower than float32 where
    the CPU lacks AVX512-FP16 (GPT-2 124M's 48 matrices, one core of an AMD EPYC: 134 ms at 1 row against 7.8
    by the copy, 884 against 18.5 at 8); a few static rows by a bfloat16 weight (FLOAT16_COPY_MAX_ROWS where the
    CPU has bfloat16 arithmetic, PREPACK_MAX_ROWS where it has none: there 8.0 against 13.7 ms at 1 row, 17.6
    against 46-60 at 8, 30.8 against 58 at 16). fbgemm's kernel needs AVX2, not bfloat16 or float16 arithmetic."""
    if not can_pack_float16() or (rows is not None and rows < 1):
        return False
    if dtype == torch.float16:
        return True
    if dtype != torch.bfloat16 or rows is None:
        return False
    return rows <= (FLOAT16_COPY_MAX_ROWS if cpu_has_bfloat16_arithmetic() else PREPACK_MAX_ROWS)


def can_pack_float16():
    """Whether fbgemm's float16 product runs here: a torch built with fbgemm, on an x86 CPU with AVX2."""
    flags = _cpu_flags()
    return flags is not None and "avx2" in flags and "fbgemm" in torch.backends.quantized.supported_engines


def float16_copy(weight):
    """fbgemm's packed float16 copy of a matrix [in, out]: of a float16 one, its values; of a bfloat16 one, times
    the power of two that brings its largest magnitude nearest below float16's, or None where that copy would not
    hold every value exactly.
    float16 holds bfloat16's 8 significant bits, with 3 to spare, but over 40 binades rather than 254.
    Scaling up by a power of two is exact in bfloat16, and a float16 value that converts back to the
    same bfloat16 one is that value, so no float32 copy of the whole weight is made to check it."""
    if weight.dtype == torch.float16:
        return PackedFloat16Weight(torch.ops.quantized.linear_prepack_fp16(weight.t().float(), None), weight.shape, 0)
    largest = max(weight.max().item(), -weight.min().item())
    if not math.isfinite(largest) or largest > FLOAT16_LARGEST:
        return None
    shift = min(FLOAT16_MAX_SHIFT, math.floor(math.log2(FLOAT16_LARGEST / largest))) if largest > 0 else 0
    scaled = weight.t() * 2.0**shift
    copy = scaled.half()
    if not torch.equal(copy.bfloat16(), scaled):
        return None
    del scaled
    return PackedFloat16Weight(torch.ops.quantized.linear_prepack_fp16(copy.float(), None), weight.shape, shift)


def prepacked_product(weight, rows):
    """(function, what it holds): x @ weight by a copy packed for `rows` rows; programs compiled from the same
    weight (prefill and decode) share the copy while one holds it. Where takes_float16_copy says so, the copy is
    fbgemm's float16 one (float16_copy): fbgemm multiplies float32 rows, the bfloat16 or float16 ones converted
    exactly, by it in float32, and the sums round once to the rows' dtype, as oneDNN's half-precision product
    does; only the order of the sums may differ. A bfloat16 weight float16 cannot hold keeps oneDNN's copy, or
    without bfloat16 arithmetic by_bfloat16_matrix."""
    copied = takes_float16_copy(weight.dtype, rows)
    any_rows, these_rows = (*memory_key(weight), "any rows"), (*memory_key(weight), rows)
    shared = [_PREPACKED.get(key) for key in ([any_rows] if copied else []) + [these_rows]]
    held = next((h for h in shared if h is not None and torch.equal(h.source, weight)), None)
    if held is None:
        packed, key = (float16_copy(weight) if copied else None), any_rows
        if packed is None and copied and not can_prepack_bfloat16():
            packed = weight  # by_bfloat16_matrix's, which reads it as it is
        if packed is None:  # oneDNN packs for a row count
            packed, key = torch.ops.mkldnn._reorder_linear_weight(weight.t().contiguous(), rows), these_rows
        held = _Held(packed, weight)
        _PREPACKED[key] = held
    packed = held.packed
    if isinstance(packed, PackedFloat16Weight):
        fbgemm_weight, unscale = packed.packed, 2.0**-packed.shift

        def product(a, _):
            return torch.ops.quantized.linear_dynamic_fp16(a.float(), fbgemm_weight).mul_(unscale).to(a.dtype)

    elif packed is held.source:

        def product(a, _):
            return by_bfloat16_matrix(a, packed)

    else:

        def product(a, _):
            return torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")

    product.held = held
    return product, [packed]


# ----------------------------------------------------------------------------------------------
# Quantized products
#
# Compiling (program.fuse_quantized_product, as it reads the trace) turns x @ dequantize(codes, scale)
# by a constant weight into a step QuantizedMatMul(x, *constants) whose constants are the codes,
# packed as the chosen kernel wants, and the scales. The weight is B = (in, out) = [K, N]; its scale is one
# number, one per output column ([N]), or one per group of g consecutive inputs of each column
# ([K / g, N]). Kernels:
# - "int8_columns": torch's _weight_int8pack_mm, int8 codes [N, K] and a bfloat16 scale per column ([N]), for
#   bfloat16 rows on a CPU with bfloat16 arithmetic but no AMX-INT8, K a multiple of 16. Its 48 products of
#   GPT-2 124M, their codes read from memory as a decode step reads them (docs/performance.md), took 15-16 ms
#   at one row against 19-20 for int8_digits on an AMD EPYC with AVX512-VNNI, 20-23 against 25-29 at 4 rows
#   and about the same at 8. On a Xeon with AMX (torch 2.11, a 300 MB L3 cache that holds the codes) it took
#   18 against 32 at one row but 53 against 29 at 16 and 179 against 81 at 64: the prompt's rows, which read
#   the same codes as the decode step's, keep int8_digits there;
# - "int8_digits": int8 codes [N, K] that oneDNN packed (held_constants) and a scale per column ([N])
#   or one ([1]), for the other rows of any float dtype on a CPU with int8 dot-product instructions, N over 64
#   (INT8_DIGITS_MIN_COLUMNS). Each row, scaled to at most 127, is written in base 128 as a few
#   digits (4 for float32 rows, 3 for bfloat16 and float16), which oneDNN's int8 product multiplies by
#   the codes, summing exactly in int32; the digits' sums, times the scale, then add up and round once.
#   The digits go in as uint8, plus 128 with a zero point of 128: that is the form the VNNI kernels
#   take (u8 by s8), and oneDNN takes int8 rows by int8 codes only on AMX, elsewhere on its reference
#   kernel (150 ms for a 768 x 3072 product by 3 rows on an AMD EPYC with AVX512-VNNI, against 0.1 ms).
#   It reads a byte per weight, where a float32 product reads four and a bfloat16 one two. The digits
#   hold a row to 2^-29 (float32) or 2^-22 (3 digits) of its largest magnitude, below the rows' own
#   rounding; a row holding an infinity or a NaN goes to the blocked kernel;
# - "int4_groups": torch's _weight_int4pack_mm_for_cpu, codes + 8 packed by
#   _convert_weight_to_int4pack_for_cpu and scales with zero offsets ([K / g, N, 2]), for bfloat16
#   rows, N a multiple of 16. Its kernel (torch 2.13) multiplies in float32 with AVX-512 or AVX2 and
#   no bfloat16 instructions, so it runs as fast without bfloat16 arithmetic: GPT-2 124M's 48 products
#   5.9 ms at one row and 16.6 at 8 on an AMD EPYC with its bfloat16 instructions hidden from oneDNN and
#   this module, against 43.5 and 53.1 for int4_nibbles;
# - "int4_nibbles": int4 codes two to a byte ([N / 2, K] int8, _nibble_pairs) and a scale per group
#   ([N, K / g]; one per column or tensor is one group of all K inputs), for every other int4 product:
#   torch's int4 kernel takes float32 rows on a slow path (20x slower than a dense float32 product) and
#   float16 rows likewise, and rounding float32 rows to bfloat16 would change results. The codes are
#   unpacked and dequantized as "blocked" does;
# - "blocked": codes [N, K] (int8, float8 e4m3) with a scale per column or tensor (nvtripy quantizes
#   per group only to int4), dequantized to float32 a block of columns at a time into a buffer that
#   stays in cache, multiplied in float32 and rounded once to the rows' dtype.
# The dequantized values are those of ops.dequantize (codes times scale in float32); only the order
# of the sums, and for int8_digits and int4_groups where each product rounds, may differ.

INT4_GROUPS = (32, 64, 128, 256)  # the group sizes _weight_int4pack_mm_for_cpu takes
INT4_COLUMN_MULTIPLE = 16  # _convert_weight_to_int4pack_for_cpu takes no other column counts
QUANT_BLOCK_BYTES = 1 << 20  # float32 block of dequantized columns: about a core's L2 cache
INT8_DIGITS = {torch.float32: 4, torch.bfloat16: 3, torch.float16: 3}  # base-128 digits per value, by rows dtype
INT8_DIGITS_MAX_INNER = (2**31 - 1) // (255 * 127)  # int32 holds a uint8 digit row's sum by the codes up to here
# oneDNN's int8 product (torch 2.13) takes 64 or fewer columns by fewer than 8 rows on a slow path: 0.7 ms
# for 64 x 64 codes by 4 rows, against 36 us for 65 columns. Narrower products go to the blocked kernel.
INT8_DIGITS_MIN_COLUMNS = 65
INT8_COLUMNS_INNER_MULTIPLE = 16  # _weight_int8pack_mm (torch 2.13) returns garbage or crashes for other K


# Packed codes and scales, by the weight they were made from, the kernel and their position: programs
# compiled from the same weights (prefill and decode) then hold one copy. An entry lasts while a
# program holds its tensor.
_PACKED = weakref.WeakValueDictionary()


def pack_quantized(quant, codes_b, scale_b, rows_dtype, source):
    """(attrs, constants) of the QuantizedMatMul step for codes_b (B's codes, [K, N]) and scale_b,
    made from the weight at `source` (memory_key); equal to those an earlier program holds, theirs."""
    attrs, tensors = _pack(quant, codes_b, scale_b, rows_dtype)
    keys = [(source, quant, rows_dtype, json.dumps(attrs, sort_keys=True), i) for i in range(len(tensors))]
    shared = [_PACKED.get(key) for key in keys]
    if all(a is not None and torch.equal(plain(a), b) for a, b in zip(shared, tensors)):
        return attrs, shared
    tensors = held_constants(attrs, tensors)
    for key, tensor in zip(keys, tensors):
        _PACKED[key] = tensor
    return attrs, tensors


def held_constants(attrs, constants):
    """A QuantizedMatMul step's constants as its kernel reads them: for int8_digits, the codes [N, K]
    packed by oneDNN (shaped [K, N]; the program holds only that copy, a saved program them plain)."""
    if attrs["kernel"] != "int8_digits" or constants[0].is_mkldnn:
        return list(constants)
    # oneDNN packs a strided view wrongly, so it gets contiguous (out, in) rows.
    return [torch.ops.onednn.qlinear_prepack(constants[0].contiguous(), None), *constants[1:]]


def plain(tensor):
    """A constant as a plain tensor: codes that oneDNN packed, unpacked (a copy) as the [N, K] rows they
    were packed from; any other, itself."""
    return tensor.to_dense().t() if tensor.is_mkldnn else tensor


def _pack(quant, codes_b, scale_b, rows_dtype):
    inner, cols = codes_b.shape
    group = inner // scale_b.shape[0] if scale_b.dim() == 2 else None
    fast = rows_dtype == torch.bfloat16 and cpu_has_bfloat16_arithmetic()
    codes_rows = codes_b.t().contiguous()  # [N, K]: a block of columns of B is a block of rows here
    digits_fit = inner <= INT8_DIGITS_MAX_INNER and cols >= INT8_DIGITS_MIN_COLUMNS
    if quant == "int8" and fast and not cpu_has_int8_tiles() and inner % INT8_COLUMNS_INNER_MULTIPLE == 0:
        scale = scale_b.to(torch.bfloat16).reshape(-1).expand(cols).contiguous()
        return {"kernel": "int8_columns", "columns": cols}, [codes_rows, scale]
    if quant == "int8" and digits_fit and cpu_has_int8_dot_products():
        return {"kernel": "int8_digits", "columns": cols}, [codes_rows, scale_b.float().reshape(-1).contiguous()]
    if rows_dtype == torch.bfloat16 and quant == "int4" and group in INT4_GROUPS and cols % INT4_COLUMN_MULTIPLE == 0:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes_rows.to(torch.int32) + 8, 1)
        scales = scale_b.to(torch.bfloat16)
        scales_and_zeros = torch.stack([scales, torch.zeros_like(scales)], dim=-1).contiguous()
        return {"kernel": "int4_groups", "group": group, "columns": cols}, [packed, scales_and_zeros]
    if quant == "int4":
        scale_rows = scale_b.float().t() if group else scale_b.float().reshape(-1, 1).expand(cols, 1)
        attrs = {"kernel": "int4_nibbles", "group": group or inner, "columns": cols}
        return attrs, _nibble_pairs(codes_rows, scale_rows)
    scaling, scale = ("column" if scale_b.dim() == 1 else "tensor"), scale_b.float().contiguous()
    if quant == "float8":
        scale = (scale * 256).reshape(-1)  # the codes' float16 reading is 2^-8 of their value (_float8_block)
    attrs = {"kernel": "blocked", "quant": quant, "scaling": scaling, "columns": cols}
    return attrs, [codes_rows, scale]


def _nibble_pairs(codes_rows, scale_rows):
    """The int4_nibbles kernel's constants for int4 codes [N, K] and their scales [N, K / g]: rows j and
    j + N / 2 of the codes in one byte, row j in the low four bits (a zero row pads an odd N). The kernel
    reads a low code shifted up into the high bits, 16 times its value, so its scale is over 16."""
    if codes_rows.shape[0] % 2:
        codes_rows = torch.cat([codes_rows, codes_rows.new_zeros(1, codes_rows.shape[1])])
        scale_rows = torch.cat([scale_rows, scale_rows.new_zeros(1, scale_rows.shape[1])])
    half = codes_rows.shape[0] // 2
    packed = (codes_rows[:half] & 15) | (codes_rows[half:] << 4)
    return [packed.contiguous(), torch.cat([scale_rows[:half] / 16, scale_rows[half:]]).contiguous()]


def quantized_function(attrs):
    """The function that runs a QuantizedMatMul step with these attributes: f(x, *constants)."""
    kernel = attrs["kernel"]
    if kernel == "int4_groups":
        group = attrs["group"]
        return _rows_call(lambda x, packed, sz: torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group, sz))
    if kernel == "int8_columns":
        return _rows_call(torch.ops.aten._weight_int8pack_mm)
    if kernel == "int8_digits":
        return _rows_call(_int8_digits)
    if kernel == "int4_nibbles":
        return _rows_call(functools.partial(_int4_nibbles, attrs["group"], attrs["columns"]))
    if kernel == "blocked":
        return _rows_call(functools.partial(_blocked, attrs["quant"], attrs["scaling"]))
    raise ValueError(f"no quantized kernel '{kernel}'")


def _rows_call(kernel):
    def product(a, *constants):
        rows = a.reshape(-1, a.shape[-1])
        if not rows.is_contiguous():
            rows = rows.contiguous()
        out = kernel(rows, *constants)
        return out.reshape(*a.shape[:-1], out.shape[-1])

    return product


# For n digits: 127 * 128^i, which scale a row whose largest value is 1 to R_i; the matrix that makes
# the digits of the R_i (d_0 = R_0, d_i = R_i - 128 R_(i-1)); and 128^-i / 127, which add the digits'
# sums up again.
_DIGIT_SCALES = {
    n: torch.tensor([127.0 * 128.0**i for i in range(n)], dtype=torch.float64).view(n, 1, 1) for n in (3, 4)
}
_DIGIT_MAKER = {
    n: torch.eye(n, dtype=torch.float64) - torch.diag(torch.full((n - 1,), 128.0), -1).double() for n in (3, 4)
}
_DIGIT_VALUES = {n: torch.tensor([[128.0**-i / 127 for i in range(n)]]) for n in (3, 4)}


@functools.lru_cache(maxsize=None)
def _zero_points(columns):
    return torch.zeros(columns, dtype=torch.int64)


def _int8_digits(x, packed, scale):
    """x @ B for B = codes * scale (packed: the codes [K, N] in oneDNN's layout; scale: [N] or [1]).
    Each row of x, times 127 over its largest magnitude, as digits d_0 + d_1 / 128 + d_2 / 128^2 + ...,
    d_0 in [-127, 127] and the others in [-64, 64]: d_i = R_i - 128 R_(i-1), R_i the scaled row times
    128^i rounded (exact in float64), so the digits add up to R_(n-1) / 128^(n-1), the row to half a
    unit of its last digit. oneDNN sums each digit row (as uint8 d_i + 128, zero point 128) by the
    codes in int32, exactly, and multiplies the sums by the scale in float32."""
    rows, inner = x.shape
    count = INT8_DIGITS[x.dtype]
    largest = x.abs().amax(dim=1, keepdim=True).float().clamp_(min=2.0**-149)  # a row of zeros: no 0 / 0
    if not math.isfinite(largest.sum().item()):
        return _blocked("int8", "column", x, plain(packed), scale)
    scaled = torch.round(x * (_DIGIT_SCALES[count] / largest)).view(count, -1)  # R_i, in float64
    digits = torch.mm(_DIGIT_MAKER[count], scaled).add_(128).to(torch.uint8).view(count * rows, inner)
    sums = torch.ops.onednn.qlinear_pointwise(
        digits, 1.0, 128, packed, scale, _zero_points(scale.numel()), None, 1.0, 0, torch.float32, "none", [], ""
    )
    total = torch.mm(_DIGIT_VALUES[count], sums.view(count, -1)).view(rows, packed.shape[1])
    return total.mul_(largest).to(x.dtype)


def _float8_block(codes, bits):
    """float8 e4m3 codes read as float16 bits, in `bits` (int16, codes' shape): sign to bit 15, exponent
    and mantissa shifted up by 7. That is 2^-8 times the code's value, subnormals included, and float16
    converts fast where torch's float8 conversion does not (14x slower)."""
    bits.copy_(codes.view(torch.int8))  # sign-extended: bits 8-15 copy the sign
    bits.mul_(128)  # << 7: the sign lands in bit 15, and also in bit 14, the exponent's top bit
    bits.bitwise_and_(-16385)  # clears bit 14: e4m3's exponent has 4 bits, float16's 5
    return bits.view(torch.float16)


# Buffers the blocked kernel converts each block into, by shape and dtype, one set per thread: a new
# 1 MB tensor per block is a fresh mapping from the system (page faults) and made the blocked product
# 3x slower than converting into memory that is already there.
_SCRATCH = threading.local()


def _scratch(shape, dtype):
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    key = (shape, dtype)
    if key not in buffers:
        buffers[key] = torch.empty(shape, dtype=dtype)
    return buffers[key]


def _blocked(quant, scaling, x, codes, scale):
    """x @ B for B = codes.t() * scale (scale: [N] for a scale per column, [1] for one), in float32, a
    block of B's columns (codes' rows) at a time, converted into a buffer that stays in cache. int8's
    scale multiplies the sums, which are fewer than the weights. float8 weights are dequantized as
    ops.dequantize does, scale and all, so the sums are those of the reference product: the next layer
    quantizes them to float8 again, where a sum rounded otherwise can change a code."""
    rows_dtype, (cols, inner) = x.dtype, codes.shape
    x = x.float()
    block = _block_rows(inner)
    buffer = _scratch((block, inner), torch.float32)
    bits = _scratch((block, inner), torch.int16) if quant == "float8" else None
    parts = []
    for start in range(0, cols, block):
        stop = min(start + block, cols)
        part, weights = codes[start:stop], buffer[: stop - start]
        if quant == "float8":
            weights.copy_(_float8_block(part, bits[: stop - start]))
            weights.mul_(scale[start:stop, None] if scaling == "column" else scale)
        else:
            weights.copy_(part)
        parts.append(torch.mm(x, weights.t()))
    out = torch.cat(parts, dim=1)
    if quant != "float8":
        out *= scale
    return out.to(rows_dtype)


def _block_rows(inner):
    """How many rows of `inner` weights a block converts: QUANT_BLOCK_BYTES of float32, a multiple of 16."""
    return max(16, QUANT_BLOCK_BYTES // (4 * inner) // 16 * 16)


def _int4_nibbles(group, columns, x, packed, scale):
    """x @ B for B's int4 codes two to a byte (_nibble_pairs): a block of bytes shifted left by four holds
    its low codes times 16, shifted right (arithmetically, in int8) its high codes; each is converted
    into float32 as in _blocked, multiplied by its groups' scales there and by x."""
    rows_dtype, (half, inner) = x.dtype, packed.shape
    x = x.float()
    block = _block_rows(inner)
    buffer, codes = _scratch((block, inner), torch.float32), _scratch((block, inner), torch.int8)
    low, high = [], []
    for start in range(0, half, block):
        stop = min(start + block, half)
        part, weights, shifted = packed[start:stop], buffer[: stop - start], codes[: stop - start]
        for parts, shift, first in ((low, torch.bitwise_left_shift, 0), (high, torch.bitwise_right_shift, half)):
            weights.copy_(shift(part, 4, out=shifted))
            weights.view(stop - start, -1, group).mul_(scale[first + start : first + stop, :, None])
            parts.append(torch.mm(x, weights.t()))
    return torch.cat(low + high, dim=1)[:, :columns].to(rows_dtype)
