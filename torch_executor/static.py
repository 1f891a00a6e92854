"""What is known about a program's values before it runs, so that program.py can fold the
shape arithmetic that static dimensions decide.

With a dynamic dimension (a decode step's cache length, say), nvtripy traces every reshape, split,
arange and broadcast as ops on shape tensors: Shape, GetDimensionSize, Concatenate, arithmetic.
TensorRT's compiler folds what of it does not depend on the dynamic sizes; without that, a GPT-2
decode step runs about 2600 ops, most of them on one-element int tensors, and interpreting them
costs a fifth of the step. Here each slot gets a `Fact`: its shape, and for a small integer tensor
its elements. A dimension or element is an int, a `Sym` (an affine function of the dynamic input
dimensions, such as `cached_tokens + 1`), or None (unknown). Affine forms are what make
`arange(past, past + 1)` one token long before `past` is known. An output whose shape and elements
are all ints becomes a constant.

A rule may claim only what the op in ops.py computes; an op without a rule gets the rank nvtripy
inferred and no static dimensions, which is always safe.
"""

import dataclasses
import math
import operator
from typing import Optional, Tuple

import torch

# Integer tensors with at most this many elements have their elements tracked (shape tensors are
# 1-D with one element per dimension; anything longer is data).
MAX_TRACKED_ELEMENTS = 16


@dataclasses.dataclass(frozen=True)
class Sym:
    """const + sum(coefficient * symbol): an integer known only at run time. Symbols are the
    dynamic dimensions of the program's inputs (equally named ones share one) and its
    dimension-size inputs; `bounds` maps each to its [min, max] from the InputInfo."""

    const: int
    terms: Tuple[Tuple[int, int], ...]  # sorted (symbol, coefficient), no zero coefficients


def symbol(index):
    return Sym(0, ((index, 1),))


def _make(const, terms):
    terms = tuple(sorted((s, c) for s, c in terms.items() if c))
    return Sym(const, terms) if terms else const


def _parts(x):
    return (x, {}) if isinstance(x, int) else (x.const, dict(x.terms))


def add(a, b, sign=1):
    if a is None or b is None:
        return None
    (ca, ta), (cb, tb) = _parts(a), _parts(b)
    for s, c in tb.items():
        ta[s] = ta.get(s, 0) + sign * c
    return _make(ca + sign * cb, ta)


def mul(a, b):
    if a is None or b is None:
        return None
    if isinstance(b, Sym):
        a, b = b, a
    if isinstance(b, Sym):
        return None  # not affine
    const, terms = _parts(a)
    return _make(const * b, {s: c * b for s, c in terms.items()})


def divide(a, b, floor):
    """a / b rounded toward negative infinity (`floor`) or zero. A Sym divides only exactly."""
    if a is None or not isinstance(b, int) or b == 0:
        return None
    if isinstance(a, int):
        q = abs(a) // abs(b)
        return a // b if floor else (q if (a >= 0) == (b > 0) else -q)
    if a.const % b or any(c % b for _, c in a.terms):
        return None
    return _make(a.const // b, {s: c // b for s, c in a.terms})


def interval(x, bounds):
    if x is None:
        return None
    if isinstance(x, int):
        return x, x
    lo = hi = x.const
    for s, c in x.terms:
        low, high = bounds[s]
        lo, hi = lo + c * (low if c > 0 else high), hi + c * (high if c > 0 else low)
    return lo, hi


def compare(a, b, bounds):
    """-1, 0 or 1 where a < b, a == b or a > b holds for every value the symbols may take; else None."""
    diff = interval(add(a, b, -1), bounds)
    if diff is None:
        return None
    lo, hi = diff
    return -1 if hi < 0 else 1 if lo > 0 else 0 if lo == hi == 0 else None


def maximum(a, b, bounds):
    return _pick(a, b, bounds, larger=True)


def minimum(a, b, bounds):
    return _pick(a, b, bounds, larger=False)


def _pick(a, b, bounds, larger):
    """max(a, b) or min(a, b) where the bounds of the symbols decide which it is; else None."""
    ia, ib = interval(a, bounds), interval(b, bounds)
    if ia is None or ib is None:
        return None
    order = compare(a, b, bounds)
    if order is None:  # a - b may change sign, but one's range may still lie beyond the other's
        order = 1 if ia[0] >= ib[1] else -1 if ib[0] >= ia[1] else None
    if order is None:
        return None
    return a if (order >= 0) == larger else b


# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Fact:
    shape: tuple  # per dimension: int, Sym or None
    value: Optional[tuple] = None  # flat elements, row-major, of a small integer/bool tensor

    def is_constant(self):
        return self.value is not None and all(isinstance(v, int) for v in (*self.value, *self.shape))


def unknown(rank):
    return Fact((None,) * rank)


def _tracked(dtype):
    return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.float8_e4m3fn


def of_tensor(tensor):
    """The Fact of a constant: everything known."""
    value = None
    if _tracked(tensor.dtype) and tensor.numel() <= MAX_TRACKED_ELEMENTS:
        value = tuple(int(v) for v in tensor.reshape(-1).tolist())
    return Fact(tuple(tensor.shape), value)


class Symbols:
    """Gives each dynamic input dimension a symbol, one per name, and records its bounds and where
    a run finds its value: `sources[symbol]` is (input index, dimension), dimension None for the
    value of a dimension-size input."""

    def __init__(self):
        self.bounds = {}
        self.sources = {}
        self._by_name = {}

    def new(self, lo, hi, source, name=None):
        if name is not None and name in self._by_name:
            return self._by_name[name]
        s = len(self.bounds)
        self.bounds[s], self.sources[s] = (lo, hi), source
        sym = symbol(s)
        if name is not None:
            self._by_name[name] = sym
        return sym

    def of_input(self, index, spec, rank):
        """The Fact of input `index`: dimensions with equal bounds are static, the others symbols."""
        if spec.min_shape is not None:
            names = spec.dimension_names or {}
            return Fact(
                tuple(
                    lo if lo == hi else self.new(lo, hi, (index, d), names.get(d))
                    for d, (lo, hi) in enumerate(zip(spec.min_shape, spec.max_shape))
                )
            )
        if spec.min_value is not None:  # a DimensionInputInfo scalar
            lo, hi = spec.min_value, spec.max_value
            return Fact((), (lo if lo == hi else self.new(lo, hi, (index, None)),))
        return unknown(rank)


def to_tensor(fact, dtype):
    return torch.tensor(fact.value, dtype=dtype).reshape(fact.shape)


# ----------------------------------------------------------------------------------------------
# Rules: (input Facts, attributes, output ranks, bounds) -> output Facts.


def _same_dim(dims):
    """The size of broadcast dimensions: a size other than 1 wins (the op fails unless the others
    are equal to it or 1), equal Syms stay themselves, anything else is unknown."""
    others = [d for d in dims if d != 1]
    ints = [d for d in others if isinstance(d, int)]
    if ints:
        return ints[0]
    if not others:
        return 1
    return others[0] if None not in others and all(d == others[0] for d in others) else None


def _broadcast(*shapes):
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    return tuple(_same_dim(dims) for dims in zip(*padded))


def _broadcast_values(facts, shape):
    """Each input's elements stretched to the broadcast shape, for elementwise ops on 0-D and 1-D tensors."""
    if len(shape) > 1 or any(f.value is None for f in facts) or any(not isinstance(d, int) for d in shape):
        return None
    n = shape[0] if shape else 1
    values = []
    for f in facts:
        if len(f.value) == n:
            values.append(f.value)
        elif len(f.value) == 1:
            values.append(f.value * n)
        else:
            return None
    return values


def _same(inputs, attrs, ranks, bounds):
    return [Fact(inputs[0].shape)]


def _elementwise(fn):
    def rule(inputs, attrs, ranks, bounds):
        shape = _broadcast(*(f.shape for f in inputs))
        values = _broadcast_values(inputs, shape) if fn else None
        value = None
        if values is not None:
            value = tuple(fn(*args, bounds) for args in zip(*values))
        return [Fact(shape, value)]

    return rule


def _cmp(test):
    def fn(a, b, bounds):
        order = compare(a, b, bounds)
        return None if order is None else int(test(order, 0))

    return fn


def _int_only(fn):
    return lambda a, b, bounds: fn(a, b) if isinstance(a, int) and isinstance(b, int) else None


BINARY_VALUES = {
    "Add": lambda a, b, bounds: add(a, b),
    "Sub": lambda a, b, bounds: add(a, b, -1),
    "Mul": lambda a, b, bounds: mul(a, b),
    "Div": lambda a, b, bounds: divide(a, b, floor=False),
    "FloorDiv": lambda a, b, bounds: divide(a, b, floor=True),
    "Max": maximum,
    "Min": minimum,
    "Less": _cmp(operator.lt),
    "Greater": _cmp(operator.gt),
    "Equal": _cmp(operator.eq),
    "LogicalOr": _int_only(lambda a, b: int(bool(a) or bool(b))),
}


def _unary_value(fn):
    def rule(inputs, attrs, ranks, bounds):
        x = inputs[0]
        value = None if x.value is None else tuple(None if v is None else fn(v) for v in x.value)
        return [Fact(x.shape, value)]

    return rule


def _where(inputs, attrs, ranks, bounds):
    shape = _broadcast(*(f.shape for f in inputs))
    values = _broadcast_values(inputs, shape)
    value = None
    if values is not None:
        value = tuple(None if c is None else (x if c else y) for c, x, y in zip(*values))
    return [Fact(shape, value)]


def _cast(inputs, attrs, ranks, bounds):
    x = inputs[0]
    keeps_values = attrs["dtype"] in ("int8", "int32", "int64")  # _checked drops values out of the type's range
    return [Fact(x.shape, x.value if keeps_values else None)]


def _shape(inputs, attrs, ranks, bounds):
    return [Fact((len(inputs[0].shape),), inputs[0].shape)]


def _get_dimension_size(inputs, attrs, ranks, bounds):
    value = inputs[0].value
    return [Fact((), None if value is None else (value[attrs["dim"]],))]


def _shape_from_value(fact, rank):
    return tuple(fact.value) if fact.value is not None and len(fact.value) == rank else (None,) * rank


def _reshape(inputs, attrs, ranks, bounds):
    x, target = inputs
    shape = list(_shape_from_value(target, ranks[0]))
    if -1 in shape:  # torch infers it from the element count, when everything else is known
        i = shape.index(-1)
        rest = [d for j, d in enumerate(shape) if j != i]
        shape[i] = None
        if all(isinstance(d, int) for d in (*x.shape, *rest)) and -1 not in rest and math.prod(rest):
            shape[i] = math.prod(x.shape) // math.prod(rest)
    return [Fact(tuple(shape), x.value)]


def _broadcast_op(inputs, attrs, ranks, bounds):
    x, target = inputs
    shape = _shape_from_value(target, ranks[0])
    aligned = (None,) * (len(shape) - len(x.shape)) + tuple(x.shape)
    return [Fact(tuple(a if d == -1 else d for d, a in zip(shape, aligned)))]


def _permute(inputs, attrs, ranks, bounds):
    return [Fact(tuple(inputs[0].shape[p] for p in attrs["permutation"]))]


def _slice(inputs, attrs, ranks, bounds):
    return [Fact(_shape_from_value(inputs[2], ranks[0]))]


def _concatenate(inputs, attrs, ranks, bounds):
    dim = attrs["dim"] % ranks[0]
    shape = []
    for d in range(ranks[0]):
        sizes = [f.shape[d] for f in inputs]
        if d == dim:
            total = 0
            for size in sizes:
                total = add(total, size)
            shape.append(total)
        else:  # torch.cat needs these equal
            known = next((s for s in sizes if s is not None), None)
            shape.append(next((s for s in sizes if isinstance(s, int)), known))
    value = None
    if ranks[0] == 1 and all(f.value is not None for f in inputs):
        value = tuple(v for f in inputs for v in f.value)
    return [Fact(tuple(shape), value)]


def _gather(inputs, attrs, ranks, bounds):
    x, index = inputs
    dim = attrs["dim"] % len(x.shape)
    return [Fact(x.shape[:dim] + index.shape + x.shape[dim + 1 :])]


def _linspace(inputs, attrs, ranks, bounds):
    return [Fact(_shape_from_value(inputs[0], ranks[0]))]


def _matrix_multiply(inputs, attrs, ranks, bounds):
    a, b = (f.shape for f in inputs)
    if len(a) == 1 and len(b) == 1:
        return [Fact(())]
    if len(a) == 1:
        return [Fact(b[:-2] + b[-1:])]
    if len(b) == 1:
        return [Fact(a[:-1])]
    return [Fact(_broadcast(a[:-2], b[:-2]) + (a[-2], b[-1]))]


def _quantized_matrix_multiply(inputs, attrs, ranks, bounds):
    """x @ B by B's codes (program.fuse_quantized_product), packed as its kernel wants: their shape is
    not B's, so the step says how many columns B has."""
    return [Fact(inputs[0].shape[:-1] + (attrs["columns"],))]


def _reduce(inputs, attrs, ranks, bounds):
    shape = inputs[0].shape
    dims = {d % len(shape) for d in attrs["dim"]}
    if attrs["keepdim"]:
        return [Fact(tuple(1 if i in dims else s for i, s in enumerate(shape)))]
    return [Fact(tuple(s for i, s in enumerate(shape) if i not in dims))]


def _topk(inputs, attrs, ranks, bounds):
    shape = list(inputs[0].shape)
    shape[attrs["dim"] % len(shape)] = attrs["k"]
    return [Fact(tuple(shape)), Fact(tuple(shape))]


RULES = {
    "Shape": _shape,
    "GetDimensionSize": _get_dimension_size,
    "Reshape": _reshape,
    "Broadcast": _broadcast_op,
    "Permute": _permute,
    "Slice": _slice,
    "SliceFill": _slice,
    "SliceReflect": _slice,
    "Concatenate": _concatenate,
    "Gather": _gather,
    "Linspace": _linspace,
    "Where": _where,
    "Cast": _cast,
    "MatrixMultiply": _matrix_multiply,
    "QuantizedMatMul": _quantized_matrix_multiply,
    "Softmax": _same,
    "LayerNorm": _same,
    "InstanceNorm": _same,
    "Quantize": _same,
    "Dequantize": _same,
    "TopKMax": _topk,
    "TopKMin": _topk,
    "unary.Neg": _unary_value(lambda v: mul(v, -1)),
    "unary.Not": _unary_value(lambda v: int(not v) if isinstance(v, int) else None),
}
_BINARY = ("Add", "Sub", "Mul", "Div", "FloorDiv", "Pow", "Max", "Min", "Less", "Greater", "Equal", "LogicalOr")
_UNARY = ("Exp", "Recip", "Log", "Sin", "Cos", "Sqrt", "Abs", "Tanh", "Relu", "Sigmoid", "GeluErf")
RULES.update({f"binary.{name}": _elementwise(BINARY_VALUES.get(name)) for name in _BINARY})
RULES.update({f"unary.{name}": _same for name in _UNARY})
RULES.update({f"reduce.{name}": _reduce for name in ("Sum", "Prod", "Avg", "Max", "Min")})


def infer(kind, inputs, attrs, outputs, bounds):
    """The Facts of a step's outputs, from its inputs' Facts; `outputs` are (rank, dtype name) of the
    trace tensors, as nvtripy inferred them. A rule whose answer disagrees with those ranks is not trusted."""
    ranks = [rank for rank, _ in outputs]
    rule = RULES.get(kind)
    try:
        facts = rule(inputs, attrs, ranks, bounds) if rule else None
    except (IndexError, KeyError, ValueError, TypeError, ZeroDivisionError):
        facts = None  # an op the run will reject (a dimension out of range, say): it can say so then
    if facts is None or len(facts) != len(ranks) or any(len(f.shape) != r for f, r in zip(facts, ranks)):
        return [unknown(r) for r in ranks]
    return [_checked(f, t, bounds) for f, t in zip(facts, outputs)]


def _checked(fact, output, bounds):
    """Keeps elements only for a small integer or bool tensor of known size whose count they match,
    and only where they fit its type (where torch would wrap around, they are unknown)."""
    if fact.value is None:
        return fact
    from torch_executor.ops import torch_dtype

    dtype = torch_dtype(output[1])
    size = math.prod(fact.shape) if all(isinstance(d, int) for d in fact.shape) else None
    if size != len(fact.value) or size > MAX_TRACKED_ELEMENTS or not _tracked(dtype):
        return Fact(fact.shape)
    lo, hi = (0, 1) if dtype == torch.bool else (torch.iinfo(dtype).min, torch.iinfo(dtype).max)
    for v in fact.value:
        if v is not None and not (lo <= interval(v, bounds)[0] and interval(v, bounds)[1] <= hi):
            return Fact(fact.shape)
    return fact


# ----------------------------------------------------------------------------------------------
# Shape arithmetic on dynamic dimensions: a chain of Shape, GetDimensionSize, Reshape,
# Concatenate, Add, ... steps whose result is affine in the input dimensions becomes one step that
# computes it from them.


def is_affine(fact):
    """Whether all of a tensor's elements are known as ints or Syms, so a ShapeValue step can compute it."""
    return fact.value is not None and all(isinstance(d, int) for d in fact.shape) and None not in fact.value


def shape_value_step(fact, dtype_name, symbols, input_slots):
    """(attributes, input slots) of the ShapeValue step that computes `fact`'s elements at run time."""
    used = sorted({s for v in fact.value if isinstance(v, Sym) for s, _ in v.terms})
    position = {s: i for i, s in enumerate(used)}
    elements = [
        [v, []] if isinstance(v, int) else [v.const, [[position[s], c] for s, c in v.terms]] for v in fact.value
    ]
    dims = [symbols.sources[s][1] for s in used]
    attrs = {"elements": elements, "dims": dims, "shape": list(fact.shape), "dtype": dtype_name}
    return attrs, [input_slots[symbols.sources[s][0]] for s in used]


def shape_value(*sources, elements, dims, shape, dtype):
    """Elements const + sum(coefficient * symbol), a symbol being dimension `dims[i]` of `sources[i]`
    (or, where that is None, the value of a dimension-size input)."""
    from torch_executor.ops import torch_dtype

    values = [t.shape[d] if d is not None else int(t) for t, d in zip(sources, dims)]
    flat = [const + sum(c * values[i] for i, c in terms) for const, terms in elements]
    return torch.tensor(flat, dtype=torch_dtype(dtype)).reshape(shape)


# Steps the executor makes itself; the trace ops are in ops.OPS.
OPS = {"ShapeValue": shape_value}
