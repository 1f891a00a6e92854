"""Quantized weights stay quantized: a product by dequantize(quantize(W)) compiles to one
QuantizedMatMul step by W's codes and scales, whose kernels (matmul.py) compute the reference
product, ops.py's quantize -> dequantize -> matmul, up to floating-point rounding."""

import pytest
import torch

import nvtripy as tp
import torch_executor
from torch_executor import matmul, ops
from torch_executor.program import Program
from torch_executor.values import SCALAR_TYPE_CODES, MemRefValue, PointerType

ROWS_DTYPES = ("float32", "bfloat16", "float16")
# Each rows dtype's rounding, relative to sum |x| |w|: one rounding of a dequantized weight and
# of the result in bfloat16 and float16; float32 sums in another order.
TOLERANCE = {"float32": 1e-5, "bfloat16": 2.0**-7, "float16": 2.0**-9}
IN_FEATURES = {"int8": 208, "float8": 200, "int4": 384}  # int4: three groups of 128
OUT_FEATURES = 100  # a multiple of no kernel's tile: torch's int4 kernel takes multiples of 16 only


def on_device(t):
    return tp.copy(tp.Tensor(t), tp.device("gpu")).eval()


def layer(quant, dtype, seed=0, out_features=OUT_FEATURES):
    """(function, weight as (in, out), scale, dim) of a quantized linear layer as model.py builds it:
    tp.Linear for int8 (a scale per output) and float8 (per tensor, input quantized too), for int4
    x @ dequantize(quantize(W)) by a weight [in, out] with a scale per 128 inputs of each output."""
    generator = torch.Generator().manual_seed(seed)
    torch_dtype, tripy_dtype = getattr(torch, dtype), getattr(tp, dtype)
    inner = IN_FEATURES[quant]
    if quant == "int4":
        weight = torch.randn(inner, out_features, generator=generator).to(torch_dtype)
        scale = (weight.float().view(inner // 128, 128, -1).abs().amax(1) / 7).to(torch_dtype)

        def product(x):
            w, s = tp.Tensor(weight), tp.Tensor(scale)
            return x @ tp.dequantize(tp.quantize(w, s, tp.int4), s, tripy_dtype)

        codes = lambda: ops.quantize(weight, scale, dtype="int4", dim=None)
        return product, lambda: ops.dequantize(codes(), scale, dtype=dtype, dim=None)
    weight = torch.randn(out_features, inner, generator=generator).to(torch_dtype)  # (out, in), as tp.Linear holds it
    dim = 0 if quant == "int8" else None
    quant_dtype = getattr(tp, quant)
    linear = tp.Linear(
        inner, out_features, bias=False, dtype=tripy_dtype, quant_dtype=quant_dtype, weight_quant_dim=dim
    )
    if quant == "int8":
        scale = (weight.float().abs().amax(1) / 127).to(torch_dtype)
        linear.input_scale = None
    else:
        scale = (weight.float().abs().max() / 448).to(torch_dtype)
        linear.input_scale = tp.Tensor(torch.tensor(0.01).to(torch_dtype))
    linear.weight, linear.weight_scale = tp.Tensor(weight), tp.Tensor(scale)
    codes = lambda: ops.quantize(weight, scale, dtype=quant, dim=dim)
    reference = lambda: ops.dequantize(codes(), scale, dtype=dtype, dim=dim).t()
    return linear, reference


def reference_rows(quant, dtype, x):
    """What the float8 layer multiplies: its input quantized and dequantized per tensor (scale 0.01)."""
    if quant != "float8":
        return x
    scale = torch.tensor(0.01).to(x.dtype)
    return ops.dequantize(ops.quantize(x, scale, dtype="float8", dim=None), scale, dtype=dtype, dim=None)


def compiled(function, rows, quant, dtype):
    return tp.compile(function, args=[tp.InputInfo((rows, 1, IN_FEATURES[quant]), dtype=getattr(tp, dtype))])


def quantized_steps(executable):
    return [s for s in executable._executable.program.steps if s.kind == "QuantizedMatMul"]


def int8_columns_here(dtype):
    """Whether an int8 product by `dtype` rows takes int8_columns on this CPU, its inner size a multiple of 16."""
    return dtype == "bfloat16" and matmul.cpu_has_bfloat16_arithmetic() and not matmul.cpu_has_int8_tiles()


def check_product(quant, dtype, rows, out_features=OUT_FEATURES):
    function, dequantized = layer(quant, dtype, out_features=out_features)
    return check_layer(function, dequantized, quant, dtype, rows, IN_FEATURES[quant], out_features)


def check_layer(function, dequantized, quant, dtype, rows, inner, out_features):
    """The one QuantizedMatMul step that `function` compiles to, having checked its product against the
    reference: x (rows, 1, inner) by dequantized(), the dequantized weight as (in, out)."""
    executable = tp.compile(function, args=[tp.InputInfo((rows, 1, inner), dtype=getattr(tp, dtype))])
    (step,) = quantized_steps(executable)
    assert not any(s.kind == "MatrixMultiply" for s in executable._executable.program.steps)
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1, inner, generator=generator).to(getattr(torch, dtype))
    out = torch.from_dlpack(executable(on_device(x)))
    assert out.dtype == x.dtype and out.shape == (rows, 1, out_features)
    rows_ref, weight = reference_rows(quant, dtype, x).double(), dequantized().double()
    exact = rows_ref @ weight
    bound = TOLERANCE[dtype] * (rows_ref.abs() @ weight.abs()) + 1e-6
    assert ((out.double() - exact).abs() <= bound).all()
    return step


@pytest.mark.parametrize("out_features", [OUT_FEATURES, 112])  # 112: 7 x 16
@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("dtype", ROWS_DTYPES)
@pytest.mark.parametrize("quant", ["int8", "int4", "float8"])
def test_a_quantized_product_computes_the_reference_product(quant, dtype, rows, out_features):
    step = check_product(quant, dtype, rows, out_features)
    int4_fast = dtype == "bfloat16" and out_features % 16 == 0
    int8_digits = "int8_digits" if matmul.cpu_has_int8_dot_products() else "blocked"
    expected = {
        "int8": "int8_columns" if int8_columns_here(dtype) else int8_digits,  # IN_FEATURES["int8"]: 13 x 16
        "int4": "int4_groups" if int4_fast else "int4_nibbles",
        "float8": "blocked",
    }
    assert step.attrs["kernel"] == expected[quant]


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("quant", ["int8", "int4", "float8"])
def test_the_blocked_kernel_in_several_blocks_and_a_partial_one(monkeypatch, quant, rows):
    """Blocks of 16 columns: 100 makes six and a partial one; for bfloat16 rows too, as on a CPU
    without bfloat16 arithmetic."""
    monkeypatch.setattr(matmul, "QUANT_BLOCK_BYTES", 16 * 4 * IN_FEATURES[quant])
    monkeypatch.setattr(matmul, "cpu_has_bfloat16_arithmetic", lambda: False)
    monkeypatch.setattr(matmul, "cpu_has_int8_dot_products", lambda: False)
    for dtype in ROWS_DTYPES:
        assert check_product(quant, dtype, rows).attrs["kernel"] == ("int4_nibbles" if quant == "int4" else "blocked")


@pytest.mark.parametrize("inner, kernel", [(208, "int8_columns"), (48, "int8_columns"), (200, "int8_digits")])
@pytest.mark.parametrize("rows", [1, 3, 8, 17])
def test_int8_columns_for_bfloat16_rows_where_they_pay(monkeypatch, rows, inner, kernel):
    """torch's int8 kernel where the CPU has bfloat16 arithmetic but no AMX-INT8, for inner sizes that
    are multiples of 16: for others it returns garbage (200) or crashes (100)."""
    if not matmul.cpu_has_int8_dot_products():
        monkeypatch.setattr(matmul, "cpu_has_int8_dot_products", lambda: True)
    monkeypatch.setattr(matmul, "cpu_has_bfloat16_arithmetic", lambda: True)
    monkeypatch.setattr(matmul, "cpu_has_int8_tiles", lambda: False)
    monkeypatch.setitem(IN_FEATURES, "int8", inner)
    assert check_product("int8", "bfloat16", rows, out_features=99).attrs["kernel"] == kernel
    assert check_product("int8", "float32", rows, out_features=99).attrs["kernel"] == "int8_digits"
    monkeypatch.setattr(matmul, "cpu_has_int8_tiles", lambda: True)
    assert check_product("int8", "bfloat16", rows, out_features=99).attrs["kernel"] == "int8_digits"


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_torchs_int4_kernel_takes_bfloat16_rows_without_bfloat16_arithmetic(monkeypatch, rows):
    """_weight_int4pack_mm_for_cpu multiplies in float32 (AVX-512 or AVX2), so it needs no bfloat16 instructions."""
    monkeypatch.setattr(matmul, "cpu_has_bfloat16_arithmetic", lambda: False)
    assert check_product("int4", "bfloat16", rows, out_features=112).attrs["kernel"] == "int4_groups"
    assert check_product("int4", "float32", rows, out_features=112).attrs["kernel"] == "int4_nibbles"


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_int4_nibbles_of_an_odd_number_of_columns(monkeypatch, rows):
    """99 columns: 50 rows of bytes, the last one's high codes a zero row that the product leaves out;
    in blocks of 16 byte rows, three and a partial one."""
    monkeypatch.setattr(matmul, "QUANT_BLOCK_BYTES", 16 * 4 * IN_FEATURES["int4"])
    monkeypatch.setattr(matmul, "cpu_has_bfloat16_arithmetic", lambda: False)
    for dtype in ROWS_DTYPES:
        step = check_product("int4", dtype, rows, out_features=99)
        assert step.attrs["kernel"] == "int4_nibbles"


@pytest.mark.parametrize("inner, out_features", [(200, 100), (128, 128)])  # square: a scale per input fits too
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", ROWS_DTYPES)
def test_a_float8_weight_with_a_scale_per_output_computes_the_reference_product(dtype, rows, inner, out_features):
    """tp.Linear with weight_quant_dim 0: the blocked kernel scales each block's rows by their own scales."""
    torch_dtype, tripy_dtype = getattr(torch, dtype), getattr(tp, dtype)
    weight = torch.randn(out_features, inner, generator=torch.Generator().manual_seed(0)).to(torch_dtype)
    scale = (weight.float().abs().amax(1) / 448).to(torch_dtype)
    linear = tp.Linear(inner, out_features, bias=False, dtype=tripy_dtype, quant_dtype=tp.float8, weight_quant_dim=0)
    linear.weight, linear.weight_scale = tp.Tensor(weight), tp.Tensor(scale)
    linear.input_scale = tp.Tensor(torch.tensor(0.01).to(torch_dtype))
    dequantized = lambda: ops.dequantize(
        ops.quantize(weight, scale, dtype="float8", dim=0), scale, dtype=dtype, dim=0
    ).t()
    step = check_layer(linear, dequantized, "float8", dtype, rows, inner, out_features)
    assert step.attrs["kernel"] == "blocked" and step.attrs["scaling"] == "column"


@pytest.mark.parametrize("per_column", [True, False])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", ROWS_DTYPES)
def test_an_int4_weight_with_a_scale_per_column_or_one_is_held_two_codes_a_byte(dtype, rows, per_column):
    """A scale per column of B, or one for the tensor, is one group of all the inputs."""
    torch_dtype, tripy_dtype = getattr(torch, dtype), getattr(tp, dtype)
    inner, dim = IN_FEATURES["int4"], 1 if per_column else None
    weight = torch.randn(inner, OUT_FEATURES, generator=torch.Generator().manual_seed(0)).to(torch_dtype)
    scale = (weight.float().abs().amax(0) if per_column else weight.float().abs().max()) / 7
    scale = scale.to(torch_dtype)

    def product(x):
        w, s = tp.Tensor(weight), tp.Tensor(scale)
        return x @ tp.dequantize(tp.quantize(w, s, tp.int4, dim=dim), s, tripy_dtype, dim=dim)

    dequantized = lambda: ops.dequantize(
        ops.quantize(weight, scale, dtype="int4", dim=dim), scale, dtype=dtype, dim=dim
    )
    step = check_layer(product, dequantized, "int4", dtype, rows, inner, OUT_FEATURES)
    assert step.attrs["kernel"] == "int4_nibbles" and step.attrs["group"] == inner


def test_int4_nibbles_hold_every_code():
    """Every pair of int4 codes in one byte, read back as the kernel reads them."""
    low, high = torch.arange(-8, 8).repeat_interleave(16), torch.arange(-8, 8).repeat(16)
    codes = torch.stack([low, high]).to(torch.int8)  # rows 0 and 1 share a byte
    packed, scale = matmul._nibble_pairs(codes, torch.ones(2, 1))
    assert packed.shape == (1, 256) and torch.equal(scale.flatten(), torch.tensor([1 / 16, 1.0]))
    assert torch.equal(torch.bitwise_left_shift(packed, 4), low.to(torch.int8).view(1, -1) * 16)
    assert torch.equal(torch.bitwise_right_shift(packed, 4), high.to(torch.int8).view(1, -1))


def needs_int8_dot_products():
    if not matmul.cpu_has_int8_dot_products():
        pytest.skip("this CPU has no int8 dot-product instructions (AVX512-VNNI, AVX-VNNI, AMX-INT8): no int8_digits")


@pytest.mark.parametrize("inner", [200, 7])  # a multiple of no tile
def test_int8_digits_at_any_inner_size(monkeypatch, inner):
    needs_int8_dot_products()
    monkeypatch.setitem(IN_FEATURES, "int8", inner)
    for dtype in ROWS_DTYPES:
        assert check_product("int8", dtype, 3).attrs["kernel"] == "int8_digits"


def test_int8_products_of_64_columns_or_fewer_are_blocked(monkeypatch):
    """oneDNN's int8 product takes them on a slow path (matmul.INT8_DIGITS_MIN_COLUMNS); bfloat16 rows as
    on a CPU with AMX-INT8, where they take int8_digits too."""
    needs_int8_dot_products()
    monkeypatch.setattr(matmul, "cpu_has_int8_tiles", lambda: True)
    for dtype in ROWS_DTYPES:
        assert check_product("int8", dtype, 3, out_features=64).attrs["kernel"] == "blocked"
        assert check_product("int8", dtype, 3, out_features=65).attrs["kernel"] == "int8_digits"


def digits_layer(monkeypatch, dtype):
    """The int8_digits kernel's function and constants for the test layer, and its exact weight (in, out),
    as on a CPU with AMX-INT8, where bfloat16 rows take int8_digits too."""
    monkeypatch.setattr(matmul, "cpu_has_int8_tiles", lambda: True)
    linear, dequantized = layer("int8", dtype)
    executable = compiled(linear, 3, "int8", dtype)
    (step,) = quantized_steps(executable)
    assert step.attrs["kernel"] == "int8_digits"
    constants = [executable._executable.program.constants[slot] for slot in step.inputs[1:]]
    return matmul.quantized_function(step.attrs), constants, dequantized().double()


@pytest.mark.parametrize("dtype", ROWS_DTYPES)
def test_int8_digits_run_on_oneDNNs_int8_kernels_not_its_reference_one(monkeypatch, capfd, dtype):
    """oneDNN runs int8 rows by int8 codes on its reference kernel on a CPU without AMX, a thousand
    times slower: the digits go in as uint8, which its VNNI and AMX kernels take."""
    needs_int8_dot_products()
    function, constants, _ = digits_layer(monkeypatch, dtype)
    x = torch.randn(3, IN_FEATURES["int8"]).to(getattr(torch, dtype))
    capfd.readouterr()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        function(x, *constants)
    products = [line for line in capfd.readouterr().out.splitlines() if ",exec,cpu,matmul," in line]
    assert products and not any(",ref" in line for line in products), products


@pytest.mark.parametrize("dtype", ROWS_DTYPES)
def test_int8_digits_hold_a_row_to_far_below_its_rounding(monkeypatch, dtype):
    """Rows over nine decades, the largest value a hundred times the typical one: the products stay
    within 2^-20 of sum |x| |w| of the exact product (float32 rows), or a rounding of the result."""
    needs_int8_dot_products()
    function, constants, weight = digits_layer(monkeypatch, dtype)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, IN_FEATURES["int8"], generator=generator) * torch.logspace(-7, 2, IN_FEATURES["int8"])
    x = x.to(getattr(torch, dtype))
    out, exact = function(x, *constants).double(), x.double() @ weight
    bound = {"float32": 2.0**-20, "bfloat16": 2.0**-8, "float16": 2.0**-10}[dtype] * (x.double().abs() @ weight.abs())
    assert ((out - exact).abs() <= bound).all()


@pytest.mark.parametrize("dtype", ROWS_DTYPES)
def test_int8_digits_of_rows_of_zeros_tiny_huge_and_not_finite(monkeypatch, dtype):
    """A row of zeros gives zeros, and no rows no rows; rows near the dtype's least and greatest
    magnitudes keep their precision; a row holding an infinity or a NaN gives what the reference
    product gives."""
    needs_int8_dot_products()
    function, constants, weight = digits_layer(monkeypatch, dtype)
    torch_dtype = getattr(torch, dtype)
    info = torch.finfo(torch_dtype)
    base = torch.randn(1, IN_FEATURES["int8"], generator=torch.Generator().manual_seed(2))
    tiny = (base.abs() * info.tiny + info.tiny) * base.sign()
    rows = torch.cat([torch.zeros_like(base), tiny, base / base.abs().max() * info.max / 1000]).to(torch_dtype)
    out, exact = function(rows, *constants).double(), rows.double() @ weight
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert function(rows[:0], *constants).shape == (0, OUT_FEATURES)
    bound = TOLERANCE[dtype] * (rows.double().abs() @ weight.abs())
    assert ((out[1:] - exact[1:]).abs() <= bound[1:]).all()
    for special in (float("inf"), float("nan")):
        row = base.clone()
        row[0, 5] = special
        out = function(row.to(torch_dtype), *constants).double()
        reference = row.double() @ weight
        assert torch.equal(out.isnan(), reference.isnan()) and torch.equal(out[~out.isnan()], reference[~out.isnan()])


def test_float8_codes_read_as_float16_are_their_values_over_256():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn)
    values = codes.float()
    finite = ~values.isnan()
    read = matmul._float8_block(codes, torch.empty(codes.shape, dtype=torch.int16)).float() * 256
    assert torch.equal(read[finite], values[finite])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_program_holds_codes_not_float_weights(dtype):
    """int4 in half a byte a weight, int8 and float8 in one, and their scales: at most 0.14x and 0.5x the
    bytes of the float32 weight."""
    full = 4 * 112
    for quant, most in (("int4", 0.14), ("int8", 0.5), ("float8", 0.5)):
        function, _ = layer(quant, dtype, out_features=112)
        executable = compiled(function, 1, quant, dtype)
        assert torch_executor.weight_bytes(executable) <= most * full * IN_FEATURES[quant], quant


def test_programs_from_the_same_weights_share_their_codes():
    """A prefill and a decode program of one model hold one copy of each packed weight."""
    for quant in ("int8", "int4", "float8"):
        function, _ = layer(quant, "bfloat16", out_features=112)
        one, eight = compiled(function, 1, quant, "bfloat16"), compiled(function, 8, quant, "bfloat16")
        assert torch_executor.weight_bytes(one, eight) == torch_executor.weight_bytes(one)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_saved_quantized_programs_compute_the_same(dtype):
    for quant in ("int8", "int4", "float8"):
        function, _ = layer(quant, dtype, out_features=112)
        program = compiled(function, 3, quant, dtype)._executable.program
        loaded = Program.deserialize(program.serialize())
        assert [s.attrs for s in loaded.steps] == [s.attrs for s in program.steps]
        x = torch.randn(3, 1, IN_FEATURES[quant]).to(getattr(torch, dtype))
        memrefs = [MemRefValue(x, SCALAR_TYPE_CODES[x.dtype], PointerType.device)]
        torch.testing.assert_close(loaded.run(memrefs)[0].tensor, program.run(memrefs)[0].tensor, rtol=0, atol=0)


@pytest.mark.parametrize("int8_dot_products", [True, False])
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("dtype", ROWS_DTYPES)
def test_an_int8_weight_with_one_scale_computes_the_reference_product(monkeypatch, dtype, rows, int8_dot_products):
    """A scale per tensor (weight_quant_dim None) multiplies each kernel's sums too."""
    if int8_dot_products:
        needs_int8_dot_products()
    else:
        monkeypatch.setattr(matmul, "cpu_has_int8_dot_products", lambda: False)
    torch_dtype, tripy_dtype = getattr(torch, dtype), getattr(tp, dtype)
    weight = torch.randn(OUT_FEATURES, IN_FEATURES["int8"], generator=torch.Generator().manual_seed(0))
    weight, scale = weight.to(torch_dtype), (weight.abs().max() / 127).to(torch_dtype)
    linear = tp.Linear(IN_FEATURES["int8"], OUT_FEATURES, bias=False, dtype=tripy_dtype, quant_dtype=tp.int8)
    linear.weight, linear.weight_scale, linear.input_scale = tp.Tensor(weight), tp.Tensor(scale), None
    executable = compiled(linear, rows, "int8", dtype)
    (step,) = quantized_steps(executable)
    if int8_columns_here(dtype):
        assert step.attrs["kernel"] == "int8_columns"
    else:
        assert step.attrs["kernel"] == "int8_digits" if int8_dot_products else step.attrs["scaling"] == "tensor"
    x = torch.randn(rows, 1, IN_FEATURES["int8"], generator=torch.Generator().manual_seed(rows)).to(torch_dtype)
    out = torch.from_dlpack(executable(on_device(x))).double()
    dequantized = ops.dequantize(ops.quantize(weight, scale, dtype="int8", dim=None), scale, dtype=dtype, dim=None)
    w = dequantized.t().double()
    bound = TOLERANCE[dtype] * (x.double().abs() @ w.abs()) + 1e-6
    assert ((out - x.double() @ w).abs() <= bound).all()


def test_a_program_holding_packed_codes_copies_its_float_weights_too():
    """At 8 float32 rows a float linear layer's weight is copied to (in, out) (store_weight_matrices),
    which looks for other views of it among the constants: oneDNN's packed codes among them."""
    quantized, dequantized = layer("int8", "float32")
    plain = tp.Linear(OUT_FEATURES, 16, bias=False)
    weight = torch.randn(16, OUT_FEATURES, generator=torch.Generator().manual_seed(3))
    plain.weight = tp.Tensor(weight)
    executable = compiled(lambda x: plain(quantized(x)), 8, "int8", "float32")
    x = torch.randn(8, 1, IN_FEATURES["int8"], generator=torch.Generator().manual_seed(4))
    out = torch.from_dlpack(executable(on_device(x))).double()
    exact = x.double() @ dequantized().double() @ weight.double().t()
    torch.testing.assert_close(out, exact, rtol=1e-4, atol=1e-4)
