"""The meaning of each trace op, checked against PyTorch or against what TensorRT documents.

Most tests go through nvtripy's frontend, so they also check that the trace carries what the
op needs; a few call `torch_executor.ops` directly where the frontend cannot reach an edge case.
"""

import importlib
import inspect
import pkgutil

import numpy as np
import pytest
import torch

import nvtripy as tp
from nvtripy.trace.ops.base import TraceOp
from torch_executor import ops
from torch_executor.program import op_class_key


def trace_op_classes():
    """Every op class nvtripy's frontend can put in a trace."""
    package = importlib.import_module("nvtripy.trace.ops")
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"nvtripy.trace.ops.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, TraceOp) and not inspect.isabstract(value):
                yield value


def test_every_trace_op_is_implemented_or_refused_with_a_reason():
    keys = {op_class_key(cls) for cls in trace_op_classes()}
    assert len(keys) >= 60  # nvtripy 0.1.7 defines 60
    assert keys - set(ops.OPS) == set(ops.UNSUPPORTED)


def as_torch(tensor):
    return torch.from_dlpack(tensor)


def test_get_dimension_size_reads_an_element_of_a_shape_tensor():
    assert ops.get_dimension_size(torch.tensor([5, 7], dtype=torch.int32), dim=1).item() == 7

    def flatten(x):
        return tp.reshape(x, (x.shape[0] * x.shape[1],))

    compiled = tp.compile(flatten, args=[tp.InputInfo(((1, 2, 4), (1, 3, 4)), dtype=tp.float32)])
    out = compiled(tp.iota((2, 3), dtype=tp.float32).eval())
    assert out.shape == (6,)
    assert as_torch(out).tolist() == [0, 0, 0, 1, 1, 1]


def on_device(t):
    """A torch tensor as an nvtripy tensor in (executor) device memory, as compiled functions require."""
    return tp.copy(tp.Tensor(t), tp.device("gpu")).eval()


def run(fn, *inputs):
    """Compiles `fn` for exactly these torch inputs and returns its result as a torch tensor."""
    infos = [tp.InputInfo(tuple(t.shape), dtype=getattr(tp, str(t.dtype).split(".")[-1])) for t in inputs]
    compiled = tp.compile(fn, args=infos)
    return as_torch(compiled(*[on_device(t) for t in inputs]))


# ----------------------------------------------------------------------------------------------
# Convolution: checked against direct loops, which follow TensorRT's definitions, and PyTorch.


def naive_conv2d(x, w, stride, pre, post, groups, dilation):
    x = np.pad(x, [(0, 0), (0, 0), (pre[0], post[0]), (pre[1], post[1])])
    n, c_in, h, wd = x.shape
    c_out, c_group, kh, kw = w.shape
    oh = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, c_out, oh, ow))
    per_group = c_out // groups
    for o in range(c_out):
        g = o // per_group
        for i in range(oh):
            for j in range(ow):
                rows = i * stride[0] + dilation[0] * np.arange(kh)
                cols = j * stride[1] + dilation[1] * np.arange(kw)
                patch = x[:, g * c_group : (g + 1) * c_group][:, :, rows][:, :, :, cols]
                out[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3))
    return out


def naive_deconv2d(x, w, stride, pre, post, groups, dilation):
    n, c_in, h, wd = x.shape
    _, c_group_out, kh, kw = w.shape
    full = np.zeros(
        (
            n,
            c_group_out * groups,
            (h - 1) * stride[0] + dilation[0] * (kh - 1) + 1,
            (wd - 1) * stride[1] + dilation[1] * (kw - 1) + 1,
        )
    )
    in_per_group = c_in // groups
    for ci in range(c_in):
        g = ci // in_per_group
        for co in range(c_group_out):
            for i in range(h):
                for j in range(wd):
                    for a in range(kh):
                        for b in range(kw):
                            full[
                                :,
                                g * c_group_out + co,
                                i * stride[0] + a * dilation[0],
                                j * stride[1] + b * dilation[1],
                            ] += (
                                x[:, ci, i, j] * w[ci, co, a, b]
                            )
    return full[:, :, pre[0] : full.shape[2] - post[0], pre[1] : full.shape[3] - post[1]]


CONV_CASES = [
    # stride, padding ((before, after) per spatial dim), groups, dilation
    ((1, 1), ((0, 0), (0, 0)), 1, (1, 1)),
    ((2, 1), ((1, 2), (0, 1)), 1, (1, 1)),
    ((1, 2), ((2, 0), (1, 1)), 2, (2, 1)),
    ((2, 2), ((1, 1), (1, 1)), 4, (1, 2)),
]


@pytest.mark.parametrize("stride, padding, groups, dilation", CONV_CASES)
def test_convolution(stride, padding, groups, dilation):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 7, 8)
    conv = tp.Conv(4, 8, (3, 2), stride=stride, padding=padding, groups=groups, dilation=dilation, dtype=tp.float32)
    weight, bias = torch.randn(8, 4 // groups, 3, 2), torch.randn(8)
    conv.load_state_dict({"weight": tp.Tensor(weight), "bias": tp.Tensor(bias)})

    out = run(conv, x)

    pre, post = zip(*padding)
    expected = naive_conv2d(x.numpy(), weight.numpy(), stride, pre, post, groups, dilation) + bias.numpy().reshape(
        1, -1, 1, 1
    )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride, padding, groups, dilation", CONV_CASES)
def test_deconvolution(stride, padding, groups, dilation):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 4, 5)
    deconv = tp.ConvTranspose(
        4, 8, (3, 2), stride=stride, padding=padding, groups=groups, dilation=dilation, dtype=tp.float32
    )
    weight, bias = torch.randn(4, 8 // groups, 3, 2), torch.randn(8)
    deconv.load_state_dict({"weight": tp.Tensor(weight), "bias": tp.Tensor(bias)})

    out = run(deconv, x)

    pre, post = zip(*padding)
    expected = naive_deconv2d(x.numpy(), weight.numpy(), stride, pre, post, groups, dilation) + bias.numpy().reshape(
        1, -1, 1, 1
    )
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_deconvolution_matches_torch_conv_transpose_with_symmetric_padding():
    torch.manual_seed(0)
    x, weight = torch.randn(1, 2, 5, 5), torch.randn(2, 3, 3, 3)
    deconv = tp.ConvTranspose(2, 3, (3, 3), stride=(2, 2), padding=((1, 1), (1, 1)), bias=False, dtype=tp.float32)
    deconv.load_state_dict({"weight": tp.Tensor(weight)})
    expected = torch.nn.functional.conv_transpose2d(x, weight, stride=2, padding=1)
    torch.testing.assert_close(run(deconv, x), expected)


def test_convolution_1d_and_3d():
    torch.manual_seed(0)
    for spatial in (1, 3):
        x = torch.randn((1, 2) + (5,) * spatial)
        conv = tp.Conv(2, 3, (3,) * spatial, padding=((1, 1),) * spatial, bias=False, dtype=tp.float32)
        weight = torch.randn((3, 2) + (3,) * spatial)
        conv.load_state_dict({"weight": tp.Tensor(weight)})
        expected = getattr(torch.nn.functional, f"conv{spatial}d")(x, weight, padding=1)
        torch.testing.assert_close(run(conv, x), expected)


def test_half_precision_convolution_keeps_its_dtype():
    torch.manual_seed(0)
    x, weight = torch.randn(1, 2, 6, 6), torch.randn(3, 2, 3, 3)
    conv = tp.Conv(2, 3, (3, 3), bias=False, dtype=tp.float16)
    conv.load_state_dict({"weight": tp.Tensor(weight.half())})
    out = run(conv, x.half())
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torch.nn.functional.conv2d(x, weight), rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------------------------
# Pooling


def naive_pool2d(x, kernel, stride, pre, post, mode, excludes_padding=False):
    n, c, h, w = x.shape
    padded_h, padded_w = h + pre[0] + post[0], w + pre[1] + post[1]
    oh, ow = (padded_h - kernel[0]) // stride[0] + 1, (padded_w - kernel[1]) // stride[1] + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            rows = range(i * stride[0] - pre[0], i * stride[0] - pre[0] + kernel[0])
            cols = range(j * stride[1] - pre[1], j * stride[1] - pre[1] + kernel[1])
            inside = [(r, s) for r in rows for s in cols if 0 <= r < h and 0 <= s < w]
            values = np.stack([x[:, :, r, s] for r, s in inside], axis=-1)
            if mode == "max":
                out[:, :, i, j] = values.max(axis=-1)
            else:
                out[:, :, i, j] = values.sum(axis=-1) / (len(inside) if excludes_padding else kernel[0] * kernel[1])
    return out


POOL_CASES = [
    ((2, 2), (2, 2), ((0, 0), (0, 0))),
    ((3, 2), (1, 2), ((1, 2), (0, 1))),
    ((3, 3), (2, 1), ((2, 1), (1, 1))),
]


@pytest.mark.parametrize("kernel, stride, padding", POOL_CASES)
def test_maxpool(kernel, stride, padding):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7) - 10  # all negative, so zero padding would win the maximum
    out = run(lambda t: tp.maxpool(t, kernel, stride, padding), x)
    pre, post = zip(*padding)
    np.testing.assert_allclose(out.numpy(), naive_pool2d(x.numpy(), kernel, stride, pre, post, "max"), rtol=1e-6)


@pytest.mark.parametrize("kernel, stride, padding", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avgpool(kernel, stride, padding, count_include_pad):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7)
    out = run(lambda t: tp.avgpool(t, kernel, stride, padding, count_include_pad=count_include_pad), x)
    pre, post = zip(*padding)
    expected = naive_pool2d(x.numpy(), kernel, stride, pre, post, "avg", excludes_padding=not count_include_pad)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_pooling_3d_matches_torch():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 5, 6)
    out = run(lambda t: tp.maxpool(t, (2, 2, 2), (2, 2, 2), ((1, 1), (1, 1), (0, 0))), x)
    torch.testing.assert_close(out, torch.nn.functional.max_pool3d(x, 2, 2, padding=(1, 1, 0)))
    out = run(lambda t: tp.avgpool(t, (2, 3, 2), (1, 1, 1), ((1, 1), (1, 1), (1, 1))), x)
    torch.testing.assert_close(out, torch.nn.functional.avg_pool3d(x, (2, 3, 2), 1, padding=1, count_include_pad=True))


# ----------------------------------------------------------------------------------------------
# Resize. PyTorch's interpolate uses the same coordinate formulas when it is given the output
# size: nearest is asymmetric and floors, bilinear/bicubic are half-pixel or align-corners, and
# bicubic uses A = -0.75 with the edge repeated.

TORCH_MODES = {"nearest": "nearest", "linear": "bilinear", "cubic": "bicubic"}


@pytest.mark.parametrize(
    "mode, align_corners", [("nearest", False), ("linear", False), ("linear", True), ("cubic", False), ("cubic", True)]
)
@pytest.mark.parametrize("out_hw", [(7, 4), (2, 9), (3, 5)])
def test_resize_to_output_shape(mode, align_corners, out_hw):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 3, 5)
    out = run(lambda t: tp.resize(t, output_shape=(2, 3) + out_hw, mode=mode, align_corners=align_corners), x)
    kwargs = {} if mode == "nearest" else {"align_corners": align_corners}
    expected = torch.nn.functional.interpolate(x, size=out_hw, mode=TORCH_MODES[mode], **kwargs)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_by_scales_maps_coordinates_by_the_length_ratio(mode):
    # floor(5 * 1.5) = 7 columns; TensorRT maps them back by 5 / 7, not by 1 / 1.5.
    torch.manual_seed(0)
    x = torch.randn(1, 1, 4, 5)
    out = run(lambda t: tp.resize(t, scales=(1, 1, 0.5, 1.5), mode=mode), x)
    assert out.shape == (1, 1, 2, 7)
    expected = torch.nn.functional.interpolate(x, size=(2, 7), mode=TORCH_MODES[mode])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_resize_nearest_floors_the_asymmetric_coordinate():
    x = torch.arange(3, dtype=torch.float32).reshape(1, 3)
    # src = dst * 3 / 8: 0, .375, .75, 1.125, 1.5, 1.875, 2.25, 2.625
    assert run(lambda t: tp.resize(t, output_shape=(1, 8), mode="nearest"), x).tolist() == [[0, 0, 0, 1, 1, 1, 2, 2]]


# ----------------------------------------------------------------------------------------------
# Quantization, as TensorRT's IQuantizeLayer documents it: round(x / scale) with ties to even,
# then clamp to the type's range.


def dequantized(x, scale, dtype, dim=None):
    """Quantizes and dequantizes with the same scale; int4 results can only be read this way."""
    return run(lambda t: tp.dequantize(tp.quantize(t, scale, dtype, dim=dim), scale, tp.float32, dim=dim), x)


def test_quantize_rounds_half_to_even():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4, 2.6])
    out = run(lambda t: tp.quantize(t, 1.0, tp.int8), x)
    assert out.dtype == torch.int8
    assert out.tolist() == [0, 2, 2, 0, -2, -2, 2, 3]


@pytest.mark.parametrize("dtype, low, high", [(tp.int8, -128, 127), (tp.int4, -8, 7)])
def test_integer_quantize_saturates(dtype, low, high):
    x = torch.tensor([-1000.0, low - 0.6, low + 0.4, -1.0, 0.0, high - 0.4, high + 0.6, 1000.0])
    assert dequantized(x, 1.0, dtype).tolist() == [low, low, low, -1, 0, high, high, high]


def test_float8_quantize_saturates_at_448():
    x = torch.tensor([-1e4, -448.0, -0.3, 0.0, 0.3, 300.0, 500.0, 1e4])
    out = dequantized(x, 1.0, tp.float8)
    expected = x.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    assert out.tolist() == expected.tolist()
    assert out[[0, 1, -2, -1]].tolist() == [-448, -448, 448, 448]


def test_quantize_scales_per_tensor_per_channel_and_per_block():
    x = torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0], [70.0, 80.0, 90.0], [100.0, 110.0, 120.0]])

    per_tensor = run(lambda t: tp.quantize(t, 10.0, tp.int8), x)
    assert per_tensor.tolist() == (x / 10).tolist()

    rows = [10.0, 5.0, 2.0, 1.0]
    per_row = run(lambda t: tp.quantize(t, rows, tp.int8, dim=0), x)
    assert per_row.tolist() == torch.clamp(torch.round(x / torch.tensor(rows)[:, None]), -128, 127).tolist()

    columns = [10.0, 20.0, 40.0]
    per_column = run(lambda t: tp.quantize(t, columns, tp.int8, dim=1), x)
    assert per_column.tolist() == torch.round(x / torch.tensor(columns)).tolist()

    # Block-wise (int4 only): scale [D0 / B, D1] scales blocks of B = 2 consecutive rows.
    blocks = [[10.0, 20.0, 40.0], [20.0, 40.0, 80.0]]
    expected = torch.round(x / torch.tensor(blocks).repeat_interleave(2, dim=0)).clamp(-8, 7) * torch.tensor(
        blocks
    ).repeat_interleave(2, dim=0)
    assert dequantized(x, blocks, tp.int4).tolist() == expected.tolist()


def test_dequantize_multiplies_by_the_scale():
    q = torch.tensor([[-128, -1, 0, 1, 127]], dtype=torch.int8)
    out = run(lambda t: tp.dequantize(t, 0.5, tp.float32), q)
    assert out.tolist() == [[-64.0, -0.5, 0.0, 0.5, 63.5]]
    out = run(lambda t: tp.dequantize(t, [2.0], tp.float32, dim=0), q)
    assert out.tolist() == [[-256.0, -2.0, 0.0, 2.0, 254.0]]
    half_scale = tp.Tensor(torch.tensor(0.25, dtype=torch.float16))  # a Python float would need a cast, not a constant
    out = run(lambda t: tp.dequantize(t, half_scale, tp.float16), q)
    assert out.dtype == torch.float16 and out.tolist() == [[-32.0, -0.25, 0.0, 0.25, 31.75]]


# ----------------------------------------------------------------------------------------------
# Integer arithmetic and casts. nvtripy's `/` emits Div, `//` emits FloorDiv, and `%` is composed
# by the frontend as a - (a // b) * b. TensorRT's Python docs say only "Divide the first element
# by the second" and "Floor division"; integer Div truncates toward zero here, as C does and as
# StableHLO's divide (which mlir-tensorrt lowers to it) is specified.

A = torch.tensor([7, -7, 7, -7, 6, -6, 0], dtype=torch.int32)
B = torch.tensor([2, 2, -2, -2, 3, 4, 5], dtype=torch.int32)


def test_integer_div_truncates_toward_zero():
    assert run(lambda a, b: a / b, A, B).tolist() == [3, -3, -3, 3, 2, -1, 0]


def test_integer_floor_div_floors():
    assert run(lambda a, b: a // b, A, B).tolist() == [3, -4, -4, 3, 2, -2, 0]


def test_integer_mod_takes_the_sign_of_the_divisor():
    assert run(lambda a, b: a % b, A, B).tolist() == [1, 1, -1, -1, 0, 2, 0]
    assert run(lambda a, b: a % b, A, B).tolist() == (A.numpy() % B.numpy()).tolist()  # Python's and numpy's %


def test_float_floor_div_and_mod():
    a, b = torch.tensor([7.5, -7.5, 7.5]), torch.tensor([2.0, 2.0, -2.0])
    assert run(lambda x, y: x // y, a, b).tolist() == [3.0, -4.0, -4.0]
    assert run(lambda x, y: x % y, a, b).tolist() == [1.5, 0.5, -0.5]


def test_float_to_int_cast_truncates_toward_zero():
    x = torch.tensor([1.7, -1.7, 2.5, -2.5, 0.2, -0.2])
    for dtype in (tp.int32, tp.int64, tp.int8):
        assert run(lambda t: tp.cast(t, dtype), x).tolist() == [1, -1, 2, -2, 0, 0]


def test_cast_to_bool_tests_for_non_zero():
    x = torch.tensor([0.0, -0.0, 0.1, -3.0])
    assert run(lambda t: tp.cast(t, tp.bool), x).tolist() == [False, False, True, True]


# ----------------------------------------------------------------------------------------------
# Slices follow Python's slicing rules, as nvtripy documents: a slice that selects nothing gives an
# empty tensor, whatever its start and step.


@pytest.mark.parametrize("rows", [slice(4, 1, 2), slice(10, 20, 3), slice(-1, 0, 2), slice(3, 3)], ids=str)
def test_an_empty_slice_gives_an_empty_tensor(rows):
    x = torch.arange(12.0).reshape(6, 2)
    out = as_torch(tp.Tensor(x)[rows, :])
    assert out.shape == x[rows, :].shape == (0, 2)


def test_a_slice_that_is_empty_only_at_run_time_gives_an_empty_tensor():
    compiled = tp.compile(lambda t: t[4::2, :], args=[tp.InputInfo(((2, 3, 6), 2), dtype=tp.float32)])
    for rows in (3, 6):
        x = torch.arange(rows * 2.0).reshape(rows, 2)
        assert torch.equal(as_torch(compiled(on_device(x))), x[4::2, :])


# ----------------------------------------------------------------------------------------------
# Half precision: TensorRT accumulates float16 and bfloat16 in float32 and rounds each result
# once, so a result lies within one unit in the last place (ulp) of the exact value.


def assert_rounded_once(out, exact, dtype):
    """`out` is `exact` (computed in float64 from the same half-precision inputs), rounded once."""
    assert out.dtype == dtype
    info = torch.finfo(dtype)
    _, exponent = torch.frexp(exact.abs().clamp(min=info.smallest_normal))
    ulp = info.eps * torch.pow(2.0, exponent.double() - 1)
    off = (out.double() - exact).abs() > ulp
    assert not off.any(), f"{off.sum().item()} of {exact.numel()} results are more than one ulp off"


def norm_module(kind, dtype, channels):
    torch.manual_seed(0)
    if kind == "GroupNorm":
        # GroupNorm scales and shifts after normalizing, in separate ops of its own type, so unit
        # weights isolate the normalization.
        module = tp.GroupNorm(2, channels, dtype=dtype)
        weight, bias = torch.ones(channels), torch.zeros(channels)
    else:
        module = getattr(tp, kind)(channels, dtype=dtype)
        weight, bias = 1 + 0.5 * torch.randn(channels), torch.randn(channels)
    torch_dtype = getattr(torch, dtype.name)
    weight, bias = weight.to(torch_dtype), bias.to(torch_dtype)
    module.load_state_dict({"weight": tp.Tensor(weight), "bias": tp.Tensor(bias)})
    return module, weight.double(), bias.double()


@pytest.mark.parametrize("dtype", [tp.float16, tp.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["InstanceNorm", "GroupNorm", "LayerNorm"])
def test_half_precision_norms_compute_statistics_in_float32(kind, dtype):
    torch_dtype = getattr(torch, dtype.name)
    torch.manual_seed(1)
    x = (torch.randn(2, 4, 16, 16) * 3 + 5).to(torch_dtype)  # an offset mean is what fp16 statistics get wrong
    channels = x.shape[-1] if kind == "LayerNorm" else x.shape[1]
    module, weight, bias = norm_module(kind, dtype, channels)
    F = torch.nn.functional
    exact = {
        "InstanceNorm": lambda: F.instance_norm(x.double(), weight=weight, bias=bias, eps=1e-5),
        "GroupNorm": lambda: F.group_norm(x.double(), 2, weight, bias, eps=1e-5),
        "LayerNorm": lambda: F.layer_norm(x.double(), (channels,), weight, bias, eps=1e-5),
    }[kind]()
    assert_rounded_once(run(module, x), exact, torch_dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "reduce, exact",
    [
        pytest.param(lambda t: tp.sum(t, dim=1), lambda x: x.sum(1), id="sum"),
        pytest.param(lambda t: tp.sum(t), lambda x: x.sum(), id="sum-all"),
        pytest.param(lambda t: tp.mean(t, dim=(0, 1)), lambda x: x.mean((0, 1)), id="mean"),
        pytest.param(lambda t: tp.prod(t, dim=1), lambda x: x.prod(1), id="prod"),
        pytest.param(lambda t: tp.prod(t[:, :8], dim=(0, 1)), lambda x: x[:, :8].prod(), id="prod-2-dims"),
        pytest.param(lambda t: tp.softmax(t * 8.0, dim=1), lambda x: torch.softmax(x * 8, 1), id="softmax"),
    ],
)
def test_half_precision_reductions_accumulate_in_float32(reduce, exact, dtype):
    torch.manual_seed(0)
    x = (1 + 0.02 * torch.randn(8, 256)).to(dtype)  # near 1, so a long product stays in range
    assert_rounded_once(run(reduce, x), exact(x.double()), dtype)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64], ids=str)
def test_integer_sums_and_products_keep_their_dtype(dtype):
    x = torch.tensor([[1, 2, 3], [-4, 5, 6]], dtype=dtype)
    for reduce, expected in ((tp.sum, x.sum(1)), (tp.prod, x.prod(1))):
        out = run(lambda t: reduce(t, dim=1), x)
        assert out.dtype == dtype and out.tolist() == expected.tolist()


# ----------------------------------------------------------------------------------------------
# Activations. nvtripy's frontend accepts int8 for GELU, sigmoid, tanh and SiLU and lowers them to
# TensorRT's activation layer, which takes no integer types (nvtripy's own `tp.relu` avoids it for
# integers for that reason), so TensorRT refuses them when it builds the engine.


@pytest.mark.parametrize("activation", [tp.gelu, tp.sigmoid, tp.tanh, tp.silu], ids=lambda f: f.__name__)
def test_int8_activations_are_refused_at_compile_time(activation):
    with pytest.raises(tp.TripyException, match="TensorRT's activation layer does not support integer inputs") as info:
        tp.compile(activation, args=[tp.InputInfo((4,), dtype=tp.int8)])
    assert "This originated from the following operation" in str(info.value)


def test_int8_gelu_is_refused_where_it_is_evaluated():
    with pytest.raises(tp.TripyException, match="TensorRT's activation layer does not support integer inputs"):
        tp.gelu(tp.Tensor(torch.tensor([-3, 0, 2], dtype=torch.int8))).eval()


def test_int8_relu_still_runs_as_nvtripy_lowers_it_to_max():
    x = torch.tensor([-3, 0, 2, 127, -128], dtype=torch.int8)
    out = run(tp.relu, x)
    assert out.dtype == torch.int8 and out.tolist() == torch.relu(x).tolist()
