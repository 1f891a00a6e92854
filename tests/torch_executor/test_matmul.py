"""matmul.py: products by a bfloat16 weight run in float32 blocks where the CPU lacks bfloat16
arithmetic, and compute what a bfloat16 product computes: float32 sums rounded once."""

import pytest
import torch

import nvtripy as tp
from torch_executor import matmul


def on_device(t):
    return tp.copy(tp.Tensor(t), tp.device("gpu")).eval()


def compiled_product(weight, transposed=False):
    """x @ weight, the weight given (in, out), or, `transposed`, (out, in) and transposed in the trace
    as nvtripy's Linear does, which leaves the program a view of its rows."""
    if transposed:
        rows = weight.t().contiguous()
        product = lambda x: x @ tp.transpose(tp.Tensor(rows), 0, 1)
    else:
        product = lambda x: x @ tp.Tensor(weight)
    return tp.compile(product, args=[tp.InputInfo(((1, 4, 16), 2, 64), dtype=tp.bfloat16)])


@pytest.fixture
def no_bfloat16_arithmetic(monkeypatch):
    monkeypatch.setattr(matmul, "cpu_has_bfloat16_arithmetic", lambda: False)
    monkeypatch.setattr(matmul, "BLOCK_BYTES", 64 * 4 * 64)  # blocks of 64 columns: 200 makes four, one partial


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("batch", [1, 2, 3, 16])  # 2 rows: row by row (by (in, out) rows); 4, 6 and 32: float32 blocks
def test_a_bfloat16_product_rounds_float32_sums_once(no_bfloat16_arithmetic, batch, transposed):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 200, generator=generator).bfloat16()
    compiled = compiled_product(weight, transposed)
    (step,) = compiled._executable.program._calls
    assert step[0] == "MatrixMultiply" and step[1] is matmul.by_bfloat16_matrix
    x = torch.randn(batch, 2, 64, generator=generator).bfloat16()
    out = torch.from_dlpack(compiled(on_device(x)))
    assert out.dtype == torch.bfloat16 and out.shape == (batch, 2, 200)
    exact = x.float() @ weight.float()
    # Rounding to bfloat16 (8 significant bits) errs by at most half a unit in the last place.
    assert ((out.float() - exact).abs() <= exact.abs() * 2.0**-8 + 1e-5).all()


def test_cpus_with_bfloat16_arithmetic_keep_torchs_product(monkeypatch):
    monkeypatch.setattr(matmul, "cpu_has_bfloat16_arithmetic", lambda: True)
    compiled = compiled_product(torch.randn(64, 8).bfloat16())
    (step,) = [c for c in compiled._executable.program._calls if c[0] == "MatrixMultiply"]
    assert step[1] is not matmul.by_bfloat16_matrix


def test_float32_products_are_left_to_torch(no_bfloat16_arithmetic):
    assert not matmul.fits(torch.randn(64, 8))
    assert not matmul.fits(torch.randn(2, 64, 8).bfloat16())  # not a matrix
    assert matmul.fits(torch.randn(64, 8).bfloat16())
    assert matmul.fits(torch.randn(8, 64).bfloat16().t())  # a view of (out, in) rows


@pytest.mark.parametrize(
    "vendor, generic", [(["GenuineIntel"], False), (["AuthenticAMD"], True), (["HygonGenuine"], True), (None, False)]
)
def test_mkl_runs_its_generic_code_on_x86_cpus_not_of_intels(monkeypatch, vendor, generic):
    """Where it does, a few float32 rows go through oneDNN's prepacked product; a CPU that is not x86 (None)
    keeps torch's product."""
    monkeypatch.setattr(matmul, "_cpuinfo", lambda field: vendor if field == "vendor_id" else None)
    generic = generic and torch.backends.mkl.is_available()  # a torch without MKL runs no MKL code at all
    assert matmul.cpu_runs_mkl_generic_code() == generic
    assert matmul.prepacks(torch.empty(64, 5), 8) == (generic and torch.backends.mkldnn.is_available())
    assert not matmul.prepacks(torch.empty(64, 5), matmul.PREPACK_MAX_ROWS + 1)


@pytest.mark.parametrize(
    "dtype, rows, copied",
    [
        ("float32", 1, False),
        ("float32", 2, False),
        ("float32", 8, True),
        ("bfloat16", 1, True),
        ("bfloat16", 2, True),
        ("bfloat16", 8, False),
    ],
)
def test_a_linear_layer_weight_is_copied_as_in_out_only_where_that_pays(dtype, rows, copied):
    """Where oneDNN prepacks the weight for a few rows (bfloat16 on a CPU with bfloat16 arithmetic, float32
    where MKL runs its generic code), that copy replaces the (in, out) one, and the step is a PackedMatMul."""
    torch_dtype = getattr(torch, dtype)
    packed = matmul.prepacks(torch.empty(64, 5, dtype=torch_dtype), rows)
    copied = copied and not packed
    weight = torch.randn(5, 64).to(torch_dtype)  # (out, in), as tp.Linear holds it
    linear = lambda x: x @ tp.transpose(tp.Tensor(weight), 0, 1)
    compiled = tp.compile(linear, args=[tp.InputInfo((rows, 1, 64), dtype=getattr(tp, dtype))])
    program = compiled._executable.program
    (step,) = program.steps
    assert step.kind == ("PackedMatMul" if packed else "MatrixMultiply")
    matrix = program.constants[step.inputs[1]]
    assert matrix.shape == (64, 5) and matrix.is_contiguous() == copied
    assert (matrix.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()) != copied
    x = torch.randn(rows, 1, 64).to(torch_dtype)
    torch.testing.assert_close(torch.from_dlpack(compiled(on_device(x))), x @ weight.t())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("keys", [40, 2000])  # 40: small, in float32; 2000: past SMALL_HALF_PRODUCT_ELEMENTS
def test_a_product_of_two_computed_half_precision_tensors_rounds_float32_sums_once(dtype, keys):
    """A decode step's attention scores, q @ k^T: in float32 while small (oneDNN would build a kernel
    for each new key length), else torch's own half-precision product."""
    torch_dtype = getattr(torch, dtype)
    scores = lambda q, k: q @ tp.transpose(k, -2, -1)
    compiled = tp.compile(
        scores,
        args=[
            tp.InputInfo((1, 12, 1, 64), dtype=getattr(tp, dtype)),
            tp.InputInfo((1, 12, (1, keys, 2048), 64), dtype=getattr(tp, dtype)),
        ],
    )
    (step,) = [c for c in compiled._executable.program._calls if c[0] == "MatrixMultiply"]
    assert step[1] is matmul.computed_product
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 12, 1, 64, generator=generator).to(torch_dtype)
    k = torch.randn(1, 12, keys, 64, generator=generator).to(torch_dtype)
    small = q.numel() + k.numel() <= matmul.SMALL_HALF_PRODUCT_ELEMENTS
    assert small == (keys == 40)
    out = torch.from_dlpack(compiled(on_device(q), on_device(k)))
    assert out.dtype == torch_dtype and out.shape == (1, 12, 1, keys)
    exact = q.double() @ k.double().transpose(-2, -1)
    if small:
        # Rounding once errs by at most half a unit in the last place: 2^-8 (bfloat16) or 2^-11 (float16).
        half_unit = 2.0**-8 if dtype == "bfloat16" else 2.0**-11
        assert ((out.double() - exact).abs() <= exact.abs() * half_unit + 1e-5).all()
        torch.testing.assert_close(out, (q.float() @ k.float().transpose(-2, -1)).to(torch_dtype), rtol=0, atol=0)
    else:
        torch.testing.assert_close(out, q @ k.transpose(-2, -1), rtol=0, atol=0)


def test_products_of_float32_tensors_are_torchs():
    a, b = torch.randn(2, 3, 5), torch.randn(2, 5, 4)
    torch.testing.assert_close(matmul.computed_product(a, b), torch.matmul(a, b), rtol=0, atol=0)


def linear_by(weight, rows):
    """tp.Linear's product by a (out, in) weight, compiled for `rows` static rows (None: 1 to 16, not static),
    in the weight's dtype."""
    linear = lambda x: x @ tp.transpose(tp.Tensor(weight), 0, 1)
    shape = ((1, 4, 16) if rows is None else rows, 1, weight.shape[1])
    return tp.compile(linear, args=[tp.InputInfo(shape, dtype=getattr(tp, str(weight.dtype).split(".")[1]))])


def packed_weights(compiled):
    program = compiled._executable.program
    (step,) = [call for call in program._calls if call[0] == "PackedMatMul"]
    return step[1].held.packed


needs_float16_copy = pytest.mark.skipif(
    not (matmul.can_pack_float16() and matmul.prepacks(torch.empty(8, 8, dtype=torch.bfloat16), 1)),
    reason="needs a CPU with bfloat16 arithmetic and AVX2 and a torch with fbgemm and oneDNN",
)


@needs_float16_copy
@pytest.mark.parametrize("rows", [1, 2, 3])
@pytest.mark.parametrize("out_features", [200, 37])  # 37: not a multiple of any tile
def test_a_few_bfloat16_rows_go_by_an_exact_float16_copy_and_round_float32_sums_once(rows, out_features):
    generator = torch.Generator().manual_seed(0)
    weight = (
        torch.randn(out_features, 64, generator=generator) * 2.0**-20
    ).bfloat16()  # float16 holds these times 2^shift
    compiled = linear_by(weight, rows)
    packed = packed_weights(compiled)
    assert isinstance(packed, matmul.PackedFloat16Weight) == (rows <= matmul.FLOAT16_COPY_MAX_ROWS)
    assert weight_bytes(compiled) == weight.numel() * 2
    x = (torch.randn(rows, 1, 64, generator=generator) * 1e5).bfloat16()  # past float16's largest: rows go in float32
    out = torch.from_dlpack(compiled(on_device(x)))
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 1, out_features)
    exact = x.double() @ weight.double().t()
    # float32 sums rounded once to bfloat16: at most half a unit in the last place, plus the sums' own rounding.
    assert (
        (out.double() - exact).abs() <= exact.abs() * 2.0**-8 + x.double().abs() @ weight.double().abs().t() * 1e-6
    ).all()


@needs_float16_copy
@pytest.mark.parametrize(
    "scale, exact",
    [
        (1.0, True),
        (2.0**-100, True),  # the power of two stops at 2^FLOAT16_MAX_SHIFT: these still land in float16's range
        (2.0**-110, False),  # these, 14 binades from the largest to the smallest, below it
        (2.0**14, True),  # largest values near float16's largest
        (2.0**16, False),  # past it: no power of two scales down exactly
        (0.0, True),
    ],
)
def test_a_float16_copy_holds_the_weight_exactly_or_is_not_made(scale, exact):
    weight = (torch.randn(64, 5, generator=torch.Generator().manual_seed(0)) * scale).bfloat16()
    copy = matmul.float16_copy(weight)
    assert (copy is not None) == exact
    if copy is not None:
        unpacked, _ = torch.ops.quantized.linear_unpack_fp16(copy.packed)
        assert torch.equal(unpacked.t() * 2.0**-copy.shift, weight.float())
        assert copy.nbytes == 2 * weight.numel()


@needs_float16_copy
def test_a_bfloat16_weight_that_float16_cannot_hold_exactly_keeps_onednns_copy():
    weight = torch.randn(5, 64).bfloat16()
    weight[0, 0] = 2.0**-33 * (1 + 2.0**-7)  # 35 binades below the largest: its last bit is below float16's last
    assert matmul.float16_copy(weight.t()) is None
    compiled = linear_by(weight, 1)
    assert not isinstance(packed_weights(compiled), matmul.PackedFloat16Weight)
    x = torch.randn(1, 1, 64).bfloat16()
    torch.testing.assert_close(torch.from_dlpack(compiled(on_device(x))), x @ weight.t())


def weight_bytes(compiled):
    from torch_executor import weight_bytes as program_weight_bytes

    return program_weight_bytes(compiled)


needs_fbgemm = pytest.mark.skipif(
    not matmul.can_pack_float16(), reason="needs an x86 CPU with AVX2 and a torch with fbgemm"
)


def assert_rounds_float32_sums_once(out, x, weight, half_unit):
    """out = x @ weight.t() to half a unit in the last place of out's dtype, plus the float32 sums' own rounding."""
    assert out.dtype == x.dtype and out.shape == (*x.shape[:-1], weight.shape[0])
    exact = x.double() @ weight.double().t()
    bound = exact.abs() * half_unit + x.double().abs() @ weight.double().abs().t() * 1e-6
    assert ((out.double() - exact).abs() <= bound).all()


@needs_fbgemm
@pytest.mark.parametrize("rows", [1, 3, 8, None])  # None: a prompt's rows, whose count is not static
@pytest.mark.parametrize("out_features", [200, 37])  # 37: not a multiple of any tile
def test_a_float16_weight_goes_by_fbgemms_copy_and_rounds_float32_sums_once(rows, out_features):
    """torch multiplies float16 rows by a float16 weight many times slower than float32 on a CPU without
    AVX512-FP16; fbgemm's copy holds the same float16 values."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(out_features, 64, generator=generator).half()
    compiled = linear_by(weight, rows)
    packed = packed_weights(compiled)
    assert isinstance(packed, matmul.PackedFloat16Weight) and packed.shift == 0
    assert weight_bytes(compiled) == weight.numel() * 2
    for count in [rows] if rows else [1, 5, 16]:
        x = torch.randn(count, 1, 64, generator=generator).half()
        out = torch.from_dlpack(compiled(on_device(x)))
        assert_rounds_float32_sums_once(out, x, weight, 2.0**-11)


@needs_fbgemm
def test_programs_for_other_row_counts_share_one_float16_copy():
    """A prefill (rows not static) and a decode step (static rows) by the same float16 weight hold one copy."""
    weight = torch.randn(37, 64).half()
    prefill, decode = linear_by(weight, None), linear_by(weight, 2)
    assert packed_weights(prefill) is packed_weights(decode)


@needs_fbgemm
@pytest.mark.parametrize("rows", [1, 3, 8, matmul.PREPACK_MAX_ROWS])
def test_without_bfloat16_arithmetic_a_decode_steps_bfloat16_rows_go_by_the_float16_copy(monkeypatch, rows):
    """fbgemm's float16 product needs no bfloat16 instructions, so where the CPU has none, every static row
    count a decode step has reads the float16 copy."""
    monkeypatch.setattr(matmul, "cpu_has_bfloat16_arithmetic", lambda: False)
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(37, 64, generator=generator).bfloat16()
    compiled = linear_by(weight, rows)
    assert isinstance(packed_weights(compiled), matmul.PackedFloat16Weight)
    x = torch.randn(rows, 1, 64, generator=generator).bfloat16()
    assert_rounds_float32_sums_once(torch.from_dlpack(compiled(on_device(x))), x, weight, 2.0**-8)
    assert not matmul.prepacks(weight.t(), matmul.PREPACK_MAX_ROWS + 1)


@needs_fbgemm
def test_without_bfloat16_arithmetic_a_weight_float16_cannot_hold_goes_by_bfloat16_matrix(monkeypatch):
    monkeypatch.setattr(matmul, "cpu_has_bfloat16_arithmetic", lambda: False)
    weight = torch.randn(5, 64).bfloat16()
    weight[0, 0] = 2.0**-33 * (1 + 2.0**-7)  # its last bit is below float16's last, as above
    compiled = linear_by(weight, 1)
    assert torch.equal(packed_weights(compiled), weight.t())  # the weight itself, multiplied by by_bfloat16_matrix
    x = torch.randn(1, 1, 64).bfloat16()
    assert_rounds_float32_sums_once(torch.from_dlpack(compiled(on_device(x))), x, weight, 2.0**-8)
