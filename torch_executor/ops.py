"""What each nvtripy trace op means, in PyTorch: one function per op, keyed by the op's class name.

Where nvtripy leaves semantics to TensorRT, these follow TensorRT (convolution, pooling and resize
are described in their own sections below):
- integer `Div` rounds toward zero, `FloorDiv` toward negative infinity (TensorRT's Python docs
  say only "divide" and "floor division"; truncation is C's rule, and StableHLO's, whose divide
  mlir-tensorrt lowers to TensorRT's);
- `Cast` from a float to an integer type rounds toward zero; to bool it tests for non-zero;
- `Quantize` divides by the scale, rounds half to even and saturates: int8 to [-128, 127], int4 to
  [-8, 7], float8 e4m3 to [-448, 448]. A scalar scale is per tensor, a 1-D scale is per channel
  along the op's `dim`, a 2-D scale is per block: scale [D0 / B, D1] covers blocks of B rows;
- `Dequantize` multiplies by the same scales in float32 and casts to the output type;
- `Gather` accepts negative indices, counted from the end of the axis;
- float16 and bfloat16 normalizations, reductions, softmax, convolutions and pools compute in
  float32 and round each result once, as TensorRT accumulates them in float32.
int4 values are kept in int8 storage.
"""

import math

import torch
import torch.nn.functional as F

QUANT_RANGES = {"int8": (-128, 127), "int4": (-8, 7), "float8": (-448.0, 448.0)}


def torch_dtype(tripy_dtype):
    return {
        "float32": torch.float32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "float8": torch.float8_e4m3fn,
        "int4": torch.int8,
        "int8": torch.int8,
        "int32": torch.int32,
        "int64": torch.int64,
        "bool": torch.bool,
    }[tripy_dtype]


def _ints(shape_tensor):
    return [int(v) for v in shape_tensor.tolist()]


def compute_dtype(x):
    """float32 for half-precision inputs, which TensorRT accumulates in float32; else the input's own."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


# ----------------------------------------------------------------------------------------------
# Shapes and data movement


def constant(*, value):
    return value


def shape(x):
    return torch.tensor(x.shape, dtype=torch.int32)


def get_dimension_size(shape_tensor, *, dim):
    """One element of a shape tensor (the output of `Shape`), not a dimension of its own shape."""
    return shape_tensor[dim].clone()


def reshape(x, new_shape):
    return x.reshape(_ints(new_shape))


def broadcast(x, new_shape):
    target = _ints(new_shape)
    leading = len(target) - x.dim()
    x = x.reshape([1] * leading + list(x.shape))
    return x.expand(target)


def permute(x, *, permutation):
    return x.permute(*permutation)


def _slice_indices(start, size, stride, extent, mode):
    index = start + torch.arange(size, dtype=torch.int64) * stride
    valid = None
    if mode == "fill":
        valid = (index >= 0) & (index < extent)
        index = index.clamp(0, max(extent - 1, 0))
    elif mode == "reflect":
        period = max(2 * (extent - 1), 1)
        index = index.remainder(period)
        index = torch.where(index >= extent, period - index, index)
    return index, valid


def _slice(x, start, size, stride, fill=None, mode="default"):
    start, size, stride = _ints(start), _ints(size), _ints(stride)
    fill_mask = None
    for dim, (b, n, s) in enumerate(zip(start, size, stride)):
        extent = x.shape[dim]
        if n == 0:  # selects nothing, wherever it starts
            x = x.narrow(dim, 0, 0)
            continue
        if mode == "default" and s > 0 and b >= 0 and b + (n - 1) * s < extent:
            x = (
                x.narrow(dim, b, n)
                if s == 1
                else x.narrow(dim, b, (n - 1) * s + 1)[(slice(None),) * dim + (slice(None, None, s),)]
            )
            continue
        if mode == "default" and not (0 <= b < extent and 0 <= b + (n - 1) * s < extent):
            raise IndexError(f"Slice out of bounds: start {b}, size {n}, stride {s} on a dimension of size {extent}")
        index, valid = _slice_indices(b, n, s, extent, mode)
        x = x.index_select(dim, index) if extent > 0 else x.new_zeros(x.shape[:dim] + (n,) + x.shape[dim + 1 :])
        if valid is not None:
            view = [1] * x.dim()
            view[dim] = n
            mask = valid.reshape(view)
            fill_mask = mask if fill_mask is None else fill_mask & mask
    if fill_mask is not None:
        x = torch.where(fill_mask, x, fill.to(x.dtype))
    return x


def slice_default(x, start, size, stride):
    return _slice(x, start, size, stride)


def slice_fill(x, start, size, stride, fill):
    return _slice(x, start, size, stride, fill, mode="fill")


def slice_reflect(x, start, size, stride):
    return _slice(x, start, size, stride, mode="reflect")


def concatenate(*xs, dim):
    return torch.cat(xs, dim=dim)


def gather(x, index, *, dim):
    index = index.to(torch.int64)
    index = torch.where(index < 0, index + x.shape[dim], index)
    flat = x.index_select(dim, index.reshape(-1))
    return flat.reshape(x.shape[:dim] + index.shape + x.shape[dim + 1 :])


def linspace(out_shape, start, step, *, dtype):
    target = _ints(out_shape)
    result = start.reshape([]).to(torch.float64 if step.dtype.is_floating_point else torch.int64)
    result = result.expand(target).clone()
    for dim, delta in enumerate(step.tolist()):
        if delta:
            view = [1] * len(target)
            view[dim] = target[dim]
            result = result + torch.arange(target[dim], dtype=result.dtype).reshape(view) * delta
    return result.to(torch_dtype(dtype))


def where(condition, x, y):
    return torch.where(condition, x, y)


def cast(x, *, dtype):
    target = torch_dtype(dtype)
    if target == torch.bool:
        return x != 0
    return x.to(target)  # float -> int truncates toward zero, as TensorRT's cast does


# ----------------------------------------------------------------------------------------------
# Arithmetic


def _div(a, b):
    if a.dtype.is_floating_point:
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _floor_div(a, b):
    if a.dtype.is_floating_point:
        return torch.floor(a / b)
    return torch.div(a, b, rounding_mode="floor")


BINARY = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _div,
    "FloorDiv": _floor_div,
    "Pow": torch.pow,
    "Max": torch.maximum,
    "Min": torch.minimum,
    "Less": torch.lt,
    "Greater": torch.gt,
    "Equal": torch.eq,
    "LogicalOr": torch.logical_or,
}

UNARY = {
    "Exp": torch.exp,
    "Recip": torch.reciprocal,
    "Log": torch.log,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Sqrt": torch.sqrt,
    "Abs": torch.abs,
    "Not": torch.logical_not,
    "Neg": torch.neg,
    "Tanh": torch.tanh,
    "Relu": torch.relu,
    "Sigmoid": torch.sigmoid,
    "GeluErf": F.gelu,
}


def matrix_multiply(a, b):
    return torch.matmul(a, b)


def softmax(x, *, dim):
    return torch.softmax(x, dim=dim, dtype=compute_dtype(x)).to(x.dtype)


def _normalize(x, weight, bias, reduce_dims, eps):
    mean = x.mean(reduce_dims, keepdim=True)
    var = x.var(reduce_dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def layer_norm(x, weight, bias, *, normalized_shape, eps):
    dims = len(normalized_shape)
    normalized = x.shape[-dims:]
    dtype = compute_dtype(x)
    values, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    # nvtripy hands over weight and bias broadcast to the input's rank, e.g. (1, 1, C).
    if weight.numel() == bias.numel() == normalized.numel() and weight.shape[-dims:] == normalized:
        out = F.layer_norm(values, normalized, weight.reshape(normalized), bias.reshape(normalized), eps)
    else:
        out = _normalize(values, weight, bias, tuple(range(x.dim() - dims, x.dim())), eps)
    return out.to(x.dtype)


def instance_norm(x, weight, bias, *, num_channels, eps):
    dtype = compute_dtype(x)
    out = _normalize(x.to(dtype), weight.to(dtype), bias.to(dtype), tuple(range(2, x.dim())), eps)
    return out.to(x.dtype)


def _reduce(fn):
    """The result keeps the input's type: PyTorch would widen integer sums and products to int64."""

    def reduce(x, *, dim, keepdim):
        if not dim:
            return x.clone()
        return fn(x.to(compute_dtype(x)), dim=tuple(dim), keepdim=keepdim).to(x.dtype)

    return reduce


def _prod(x, dim, keepdim):
    for d in sorted(dim, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x


def _avg(x, dim, keepdim):
    return torch.mean(x if x.dtype.is_floating_point else x.double(), dim=dim, keepdim=keepdim)


REDUCE = {
    "Sum": _reduce(torch.sum),
    "Prod": _reduce(_prod),
    "Avg": _reduce(_avg),
    "Max": _reduce(torch.amax),
    "Min": _reduce(torch.amin),
}


def _topk(largest):
    def topk(x, *, dim, k):
        values, indices = torch.topk(x, k, dim=dim, largest=largest, sorted=True)
        return values, indices.to(torch.int32)

    return topk


# ----------------------------------------------------------------------------------------------
# Convolution and pooling. TensorRT pads each spatial dimension by `pre_padding` before and
# `post_padding` after, and either may differ from the other; negative padding crops.


def _pad_spatial(x, pre, post, value=0.0):
    pads = []
    for before, after in zip(reversed(pre), reversed(post)):  # F.pad lists the last dimension first
        pads += [before, after]
    return F.pad(x, pads, value=value) if any(pads) else x


def convolution(x, weight, bias=None, *, stride, pre_padding, post_padding, groups, dilation):
    x_dtype, dtype = x.dtype, compute_dtype(x)
    x = _pad_spatial(x.to(dtype), pre_padding, post_padding)
    bias = None if bias is None else bias.to(dtype)
    zeros = [0] * len(stride)
    out = torch.convolution(x, weight.to(dtype), bias, stride, zeros, dilation, False, zeros, groups)
    return out.to(x_dtype)


def deconvolution(x, weight, bias=None, *, stride, pre_padding, post_padding, groups, dilation):
    """Transposed convolution; the kernel is [C_in, C_out / groups, *kernel_dims], and the
    padding crops the full output: out = (in - 1) * stride + dilation * (k - 1) + 1 - pre - post."""
    dtype = compute_dtype(x)
    zeros = [0] * len(stride)
    out = torch.convolution(x.to(dtype), weight.to(dtype), None, stride, zeros, dilation, True, zeros, groups)
    out = _pad_spatial(out, [-p for p in pre_padding], [-p for p in post_padding])
    if bias is not None:
        out = out + bias.to(dtype).reshape([1, -1] + [1] * len(stride))
    return out.to(x.dtype)


def _pool(x, pool, kernel_dims, stride, pre_padding, post_padding, fill):
    padded = _pad_spatial(x, pre_padding, post_padding, value=fill)
    return pool(padded, kernel_dims, stride)


def _pool_fn(kernel_dims, kind):
    return {(2, "max"): F.max_pool2d, (3, "max"): F.max_pool3d, (2, "avg"): F.avg_pool2d, (3, "avg"): F.avg_pool3d}[
        (len(kernel_dims), kind)
    ]


def max_pooling(x, *, kernel_dims, stride, pre_padding, post_padding, avg_excludes_padding=None):
    """Padding never wins the maximum: it is filled with -inf (the type's minimum for int8)."""
    dtype = compute_dtype(x) if x.dtype.is_floating_point else torch.float32
    fill = float("-inf") if x.dtype.is_floating_point else float(torch.iinfo(x.dtype).min)
    out = _pool(x.to(dtype), _pool_fn(kernel_dims, "max"), kernel_dims, stride, pre_padding, post_padding, fill)
    return out.to(x.dtype)


def avg_pooling(x, *, kernel_dims, stride, pre_padding, post_padding, avg_excludes_padding):
    """The window sum divided by the window size, or, with `avg_excludes_padding`, by the number
    of the window's elements that are not padding."""
    dtype = compute_dtype(x) if x.dtype.is_floating_point else torch.float32
    sum_pool = lambda t, k, s: _pool_fn(kernel_dims, "avg")(t, k, s, divisor_override=1)
    total = _pool(x.to(dtype), sum_pool, kernel_dims, stride, pre_padding, post_padding, 0.0)
    if avg_excludes_padding:
        ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=dtype)
        count = _pool(ones, sum_pool, kernel_dims, stride, pre_padding, post_padding, 0.0)
    else:
        count = math.prod(kernel_dims)
    return (total / count).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Resize, as TensorRT's IResizeLayer documents it. Every dimension may be resized, one at a time:
# to `out_shape` when the op has a second input, else to floor(size * scale). An output index maps
# back to a source coordinate through the ratio of the lengths, in / out (also when scales are
# given), by
# - ResizeNearest: asymmetric, src = dst * in / out, rounded down;
# - ResizeLinear, ResizeCubic: half-pixel, src = (dst + 0.5) * in / out - 0.5, or with
#   `align_corners`, src = dst * (in - 1) / (out - 1) (0 when out is 1).
# Neighbours past the edge repeat the edge, and cubic uses coefficient A = -0.75, as PyTorch does.

CUBIC_COEFFICIENT = -0.75


def _source_coords(out_size, in_size, align_corners, half_pixel):
    dst = torch.arange(out_size, dtype=torch.float64)
    if align_corners:
        return dst * ((in_size - 1) / (out_size - 1)) if out_size > 1 else torch.zeros_like(dst)
    if half_pixel:
        return (dst + 0.5) * in_size / out_size - 0.5
    return dst * in_size / out_size


def _taps(x, dim, index):
    return x.index_select(dim, index.clamp(0, x.shape[dim] - 1))


def _weights_along(weights, dim, rank):
    view = [1] * rank
    view[dim] = -1
    return weights.reshape(view)


def _resize(x, out_shape, scales, interpolate_dim):
    if out_shape is not None:
        sizes = _ints(out_shape)
    else:
        sizes = [math.floor(size * scale) for size, scale in zip(x.shape, scales)]
    dtype = x.dtype
    for dim, size in enumerate(sizes):
        if size != x.shape[dim]:
            x = interpolate_dim(x, dim, size)
    return x.to(dtype)


def resize_nearest(x, out_shape=None, *, scales):
    def nearest(x, dim, size):
        src = _source_coords(size, x.shape[dim], align_corners=False, half_pixel=False)
        return _taps(x, dim, torch.floor(src).to(torch.int64))

    return _resize(x, out_shape, scales, nearest)


def resize_linear(x, out_shape=None, *, scales, align_corners):
    def linear(x, dim, size):
        x = x.to(torch.float64)
        src = _source_coords(size, x.shape[dim], align_corners, half_pixel=True)
        low = torch.floor(src)
        t = _weights_along(src - low, dim, x.dim())
        low = low.to(torch.int64)
        return _taps(x, dim, low) * (1 - t) + _taps(x, dim, low + 1) * t

    return _resize(x, out_shape, scales, linear)


def _cubic_weights(t, a=CUBIC_COEFFICIENT):
    """Keys' cubic convolution weights of the four taps at offsets -1, 0, 1, 2 from floor(src)."""

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def resize_cubic(x, out_shape=None, *, scales, align_corners):
    def cubic(x, dim, size):
        x = x.to(torch.float64)
        src = _source_coords(size, x.shape[dim], align_corners, half_pixel=True)
        low = torch.floor(src)
        weights = _cubic_weights(src - low)
        low = low.to(torch.int64)
        return sum(
            _taps(x, dim, low + offset) * _weights_along(w, dim, x.dim()) for offset, w in zip(range(-1, 3), weights)
        )

    return _resize(x, out_shape, scales, cubic)


# ----------------------------------------------------------------------------------------------
# Quantization


def _scaled(operation, x, scale, dim):
    """x divided or multiplied by a scale per tensor, per entry along `dim`, or per block of rows, in
    float32: a block's scale is broadcast over a view of its rows rather than repeated for every row,
    since a weight's copy would be as large as the weight."""
    if scale.dim() == 0:
        return operation(x.float(), scale.float())
    if scale.dim() == 1:
        view = [1] * x.dim()
        view[dim] = scale.shape[0]
        return operation(x.float(), scale.float().reshape(view))
    blocks = scale.shape[0]
    rows = x.reshape(blocks, x.shape[0] // blocks, *x.shape[1:]).float()
    return operation(rows, scale.float().unsqueeze(1)).reshape(x.shape)


def quantize(x, scale, *, dtype, dim):
    """Rounded and clamped in place: folding a weight's quantize makes one float copy of it, not three."""
    low, high = QUANT_RANGES[dtype]
    scaled = _scaled(torch.div, x, scale, dim)
    if dtype == "float8":
        return scaled.clamp_(low, high).to(torch.float8_e4m3fn)
    return scaled.round_().clamp_(low, high).to(torch.int8)  # round rounds half to even


def dequantize(x, scale, *, dtype, dim):
    return _scaled(torch.mul, x, scale, dim).to(torch_dtype(dtype))


# ----------------------------------------------------------------------------------------------
# The table the interpreter reads. An op missing here fails at compile time, naming the op.

OPS = {
    "Constant": constant,
    "Shape": shape,
    "GetDimensionSize": get_dimension_size,
    "Reshape": reshape,
    "Broadcast": broadcast,
    "Permute": permute,
    "Slice": slice_default,
    "SliceFill": slice_fill,
    "SliceReflect": slice_reflect,
    "Concatenate": concatenate,
    "Gather": gather,
    "Linspace": linspace,
    "Where": where,
    "Cast": cast,
    "MatrixMultiply": matrix_multiply,
    "Softmax": softmax,
    "LayerNorm": layer_norm,
    "InstanceNorm": instance_norm,
    "TopKMax": _topk(largest=True),
    "TopKMin": _topk(largest=False),
    "Quantize": quantize,
    "Dequantize": dequantize,
    "Convolution": convolution,
    "Deconvolution": deconvolution,
    "MaxPooling": max_pooling,
    "AvgPooling": avg_pooling,
    "ResizeNearest": resize_nearest,
    "ResizeLinear": resize_linear,
    "ResizeCubic": resize_cubic,
}
# Several nvtripy op classes share a name across modules (Max is both a binary op and a
# reduction), so those are keyed by module as well; see program.op_key.
OPS.update({f"binary.{name}": fn for name, fn in BINARY.items()})
OPS.update({f"unary.{name}": fn for name, fn in UNARY.items()})
OPS.update({f"reduce.{name}": fn for name, fn in REDUCE.items()})

# Ops that cannot run without TensorRT itself, and why; compiling one fails with this reason.
UNSUPPORTED = {
    "Plugin": "TensorRT plugins are kernels that TensorRT loads and runs; without TensorRT there is nothing to call",
}

# nvtripy lets int8 through to these, but TensorRT's activation layer takes no integer types:
# nvtripy's own `tp.relu` routes integers around it for that reason (frontend/ops/unary/relu.py).
ACTIVATIONS = ("unary.Tanh", "unary.Relu", "unary.Sigmoid", "unary.GeluErf")


def refusal(kind, input_dtypes):
    """Why TensorRT refuses trace op `kind` on inputs of these nvtripy types, or None if it takes them."""
    if kind in ACTIVATIONS and not all(torch_dtype(dtype).is_floating_point for dtype in input_dtypes):
        return "TensorRT's activation layer does not support integer inputs"
    return None
