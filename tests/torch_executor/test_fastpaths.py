"""fastpaths.py: each fast path computes exactly what ops.py's (or static.py's) general function does,
case by case, including the cases it hands back to the general function."""

import itertools

import pytest
import torch

from torch_executor import fastpaths, ops, static


def shape_tensor(values):
    return torch.tensor(values, dtype=torch.int32)


def same(fast, general, *args):
    """Both return equal tensors, or both raise the same kind of error."""
    try:
        expected = general(*args)
    except Exception as exc:
        with pytest.raises(type(exc)):
            fast(*args)
        return
    out = fast(*args)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    assert torch.equal(out, expected)


@pytest.mark.parametrize("target", [[20], [4, 5], [2, -1], [1, 4, 5, 1], [3, 7]])
def test_reshape(target):
    x, new_shape = torch.randn(4, 5), shape_tensor(target)
    same(fastpaths.bind("Reshape", {}, [None, new_shape]), ops.reshape, x, new_shape)


@pytest.mark.parametrize(
    "shape, target", [((5,), [4, 5]), ((1, 5), [3, 2, 5]), ((4, 1), [4, 6]), ((4, 5), [4, 5]), ((4, 5), [2, 5])]
)
def test_broadcast(shape, target):
    x, new_shape = torch.randn(shape), shape_tensor(target)
    same(fastpaths.bind("Broadcast", {}, [None, new_shape]), ops.broadcast, x, new_shape)


SLICES = list(itertools.product([-1, 0, 1, 3, 4, 5], [0, 1, 2, 4, 5, 6]))


@pytest.mark.parametrize("constant_size", [True, False])
@pytest.mark.parametrize("start, size", SLICES)
def test_slice_of_one_dimension(start, size, constant_size):
    """Every start and size along the second dimension of a (3, 5) tensor, in bounds and out of them."""
    x = torch.arange(15.0).reshape(3, 5)
    args = shape_tensor([0, start]), shape_tensor([3, size]), shape_tensor([1, 1])
    fast = fastpaths.bind("Slice", {}, [None, args[0], args[1] if constant_size else None, args[2]])
    same(fast, ops.slice_default, x, *args)


def test_slice_of_a_whole_tensor_and_of_several_dimensions():
    x = torch.arange(60.0).reshape(3, 4, 5)
    for start, size in [([0, 0, 0], [3, 4, 5]), ([1, 0, 2], [2, 4, 3]), ([0, 3, 0], [3, 1, 5]), ([2, 1, 1], [1, 2, 9])]:
        args = shape_tensor(start), shape_tensor(size), shape_tensor([1, 1, 1])
        same(fastpaths.bind("Slice", {}, [None, *args]), ops.slice_default, x, *args)


def test_strided_slices_and_computed_starts_take_the_general_path():
    stride2 = shape_tensor([1, 2])
    assert fastpaths.bind("Slice", {}, [None, shape_tensor([0, 0]), shape_tensor([3, 2]), stride2]) is None
    assert fastpaths.bind("Slice", {}, [None, None, shape_tensor([3, 2]), shape_tensor([1, 1])]) is None
    assert fastpaths.bind("Reshape", {}, [None, None]) is None


@pytest.mark.parametrize(
    "elements, dims, shape",
    [
        ([[1, [[0, 1]]]], [1], []),  # a scalar: the second dimension + 1
        ([[2, []], [0, [[0, 1]]], [-1, [[0, 2], [1, -1]]]], [1, 0], [3]),
        ([[0, [[0, 1]]], [4, []]], [1], [1, 2]),
    ],
)
def test_shape_value(elements, dims, shape):
    attrs = {"elements": elements, "dims": dims, "shape": shape, "dtype": "int32"}
    source = torch.zeros(2, 7)
    sources = [source] * len(dims)
    same(fastpaths.bind("ShapeValue", attrs, [None] * len(dims)), lambda *s: static.shape_value(*s, **attrs), *sources)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "rows_shape, weight_shape, normalized_shape",
    [
        ((2, 3, 8), (1, 1, 8), [8]),  # as nvtripy's LayerNorm hands its weight over
        ((2, 3, 8), (8,), [8]),
        ((2, 3, 4), (3, 4), [3, 4]),
        ((2, 3, 5), (1, 1, 8), [8]),  # rows of another size than the weight: the general function raises
    ],
)
def test_layer_norm(dtype, rows_shape, weight_shape, normalized_shape):
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(rows_shape, generator=generator) * 3 + 1).to(dtype)
    weight, bias = (torch.randn(weight_shape, generator=generator).to(dtype) for _ in range(2))
    attrs = {"normalized_shape": normalized_shape, "eps": 1e-5}
    fast = fastpaths.bind("LayerNorm", attrs, [None, weight, bias])
    assert fast is not None
    same(fast, lambda *args: ops.layer_norm(*args, **attrs), x, weight, bias)
    same(fast, lambda *args: ops.layer_norm(*args, **attrs), x.double(), weight, bias)  # rows of another dtype


def test_layer_norms_by_computed_or_odd_weights_take_the_general_path():
    attrs = {"normalized_shape": [8], "eps": 1e-5}
    weight = torch.randn(1, 1, 8)
    assert fastpaths.bind("LayerNorm", attrs, [None, None, weight]) is None
    assert fastpaths.bind("LayerNorm", attrs, [None, weight, None]) is None
    assert fastpaths.bind("LayerNorm", attrs, [None, torch.randn(2, 8), weight]) is None  # more than one row
