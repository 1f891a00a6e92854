"""What each nvtripy trace op means, in PyTorch: one function per op, keyed by the op's class name.

Where nvtripy leaves semantics to TensorRT, these follow TensorRT:
- integer `Div` rounds toward zero, `FloorDiv` toward negative infinity;
- `Cast` from a float to an integer type rounds toward zero; to bool it tests for non-zero;
- `Quantize` divides by the scale, rounds half to even and saturates: int8 to [-128, 127], int4 to
  [-8, 7], float8 e4m3 to [-448, 448]. A scalar scale is per tensor, a 1-D scale is per channel
  along the op's `dim`, a 2-D scale is per block: scale [D0 / B, D1] covers blocks of B rows;
- `Dequantize` multiplies by the same scales in float32 and casts to the output type;
- `Gather` accepts negative indices, counted from the end of the axis.
int4 values are kept in int8 storage.
"""

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
        if mode == "default" and s > 0 and b >= 0 and b + (n - 1) * s < extent:
            x = x.narrow(dim, b, n) if s == 1 else x.narrow(dim, b, (n - 1) * s + 1)[(slice(None),) * dim + (slice(None, None, s),)]
            continue
        if mode == "default" and n > 0 and not (0 <= b < extent and 0 <= b + (n - 1) * s < extent):
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
    return torch.softmax(x, dim=dim)


def layer_norm(x, weight, bias, *, normalized_shape, eps):
    dims = len(normalized_shape)
    if weight.shape == x.shape[-dims:] and bias.shape == x.shape[-dims:]:
        return F.layer_norm(x, x.shape[-dims:], weight, bias, eps)
    reduce_dims = tuple(range(x.dim() - dims, x.dim()))
    mean = x.mean(reduce_dims, keepdim=True)
    var = x.var(reduce_dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def instance_norm(x, weight, bias, *, num_channels, eps):
    reduce_dims = tuple(range(2, x.dim()))
    mean = x.mean(reduce_dims, keepdim=True)
    var = x.var(reduce_dims, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def _reduce(fn):
    def reduce(x, *, dim, keepdim):
        if not dim:
            return x.clone()
        return fn(x, dim=tuple(dim), keepdim=keepdim)

    return reduce


def _prod(x, dim, keepdim):
    for d in sorted(dim, reverse=True):
        x = torch.prod(x, dim=d, keepdim=keepdim)
    return x


def _avg(x, dim, keepdim):
    return torch.mean(x if x.dtype.is_floating_point else x.double(), dim=dim, keepdim=keepdim).to(x.dtype)


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
# Quantization


def _expand_scale(scale, x, dim):
    if scale.dim() == 0:
        return scale
    if scale.dim() == 1:
        view = [1] * x.dim()
        view[dim] = scale.shape[0]
        return scale.reshape(view)
    block = x.shape[0] // scale.shape[0]
    return scale.repeat_interleave(block, dim=0)


def quantize(x, scale, *, dtype, dim):
    low, high = QUANT_RANGES[dtype]
    scaled = x.float() / _expand_scale(scale.float(), x, dim)
    if dtype == "float8":
        return scaled.clamp(low, high).to(torch.float8_e4m3fn)
    return torch.round(scaled).clamp(low, high).to(torch.int8)  # torch.round rounds half to even


def dequantize(x, scale, *, dtype, dim):
    return (x.float() * _expand_scale(scale.float(), x, dim)).to(torch_dtype(dtype))


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
}
# Several nvtripy op classes share a name across modules (Max is both a binary op and a
# reduction), so those are keyed by module as well; see program.op_key.
OPS.update({f"binary.{name}": fn for name, fn in BINARY.items()})
OPS.update({f"unary.{name}": fn for name, fn in UNARY.items()})
OPS.update({f"reduce.{name}": fn for name, fn in REDUCE.items()})
