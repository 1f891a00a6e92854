"""Steps whose constant arguments are read once, when Program binds them, instead of at every call.

ops.py's functions take shape arguments as tensors and turn them into Python ints at every call;
in a decode step that runs a few hundred times (reshapes, the split of the query, key and value
projection). When Program binds its steps, a Reshape, Slice or Broadcast whose shape arguments are
constants gets a function with the ints already read, and a ShapeValue step one with its affine
forms already unpacked. A LayerNorm by a constant weight and bias gets them shaped, and converted
to float32 for half-precision rows, once. Each computes exactly what the general function does (a
Slice it cannot take as plain narrowing goes to the general function), which
tests/torch_executor/test_fastpaths.py checks case by case.
"""

import math

import torch
import torch.nn.functional as F

from torch_executor import ops


def _ints(tensor):
    return [int(v) for v in tensor.reshape(-1).tolist()]


def bind(kind, attrs, constants):
    """A function of the step's inputs (all of them, constants too) computing what the general
    function computes with `attrs`, or None where there is no fast path. `constants` holds each
    input's constant tensor, or None for a value computed at run time."""
    binder = _BINDERS.get(kind)
    return binder(attrs, constants) if binder else None


def _reshape(attrs, constants):
    if constants[1] is None:
        return None
    shape = _ints(constants[1])
    return lambda x, _: x.reshape(shape)


def _broadcast(attrs, constants):
    if constants[1] is None:
        return None
    target = _ints(constants[1])

    def broadcast(x, _):
        return x.reshape([1] * (len(target) - x.dim()) + list(x.shape)).expand(target)

    return broadcast


def _slice(attrs, constants):
    """Slice (default mode) by constant starts and unit strides, sizes constant or computed (a
    ShapeValue): a narrow per dimension that does not take the whole of it. Out of bounds, the
    general function decides (it raises)."""
    if constants[1] is None or constants[3] is None:
        return None
    start, stride = _ints(constants[1]), _ints(constants[3])
    if any(s != 1 for s in stride):
        return None
    constant_size = None if constants[2] is None else _ints(constants[2])

    def slice_(x, *args):
        out = x
        for dim, (b, n) in enumerate(zip(start, constant_size or _ints(args[1]))):
            extent = x.shape[dim]
            if b == 0 and n == extent:
                continue
            if b < 0 or b + n > extent or n <= 0:
                return ops.slice_default(x, *args)
            out = out.narrow(dim, b, n)
        return out

    return slice_


def _shape_value(attrs, constants):
    dims, shape, dtype = attrs["dims"], tuple(attrs["shape"]), ops.torch_dtype(attrs["dtype"])
    elements = [(const, [tuple(term) for term in terms]) for const, terms in attrs["elements"]]

    def shape_value(*sources):
        symbols = [t.shape[d] if d is not None else int(t) for t, d in zip(sources, dims)]
        flat = []
        for const, terms in elements:
            for i, c in terms:
                const += c * symbols[i]
            flat.append(const)
        if len(shape) <= 1:  # a shape tensor, or a scalar: no reshape needed
            return torch.as_tensor(flat if shape else flat[0], dtype=dtype)
        return torch.as_tensor(flat, dtype=dtype).reshape(shape)

    return shape_value


def _layer_norm(attrs, constants):
    """LayerNorm by a constant weight and bias of the normalized shape (nvtripy hands them over broadcast
    to the input's rank), in F.layer_norm's shape and the compute dtype; rows of another dtype or shape go
    to the general function."""
    weight, bias, shape, eps = constants[1], constants[2], tuple(attrs["normalized_shape"]), attrs["eps"]
    if weight is None or bias is None or not shape:
        return None
    if not weight.numel() == bias.numel() == math.prod(shape) or tuple(weight.shape[-len(shape) :]) != shape:
        return None
    dtype = ops.compute_dtype(weight)
    weight_c, bias_c = weight.to(dtype).reshape(shape), bias.to(dtype).reshape(shape)

    def layer_norm(x, *_):
        if x.dtype != weight.dtype or tuple(x.shape[-len(shape) :]) != shape:
            return ops.layer_norm(x, weight, bias, **attrs)
        return F.layer_norm(x.to(dtype), shape, weight_c, bias_c, eps).to(x.dtype)

    return layer_norm


_BINDERS = {
    "Reshape": _reshape,
    "Broadcast": _broadcast,
    "Slice": _slice,
    "ShapeValue": _shape_value,
    "LayerNorm": _layer_norm,
}
