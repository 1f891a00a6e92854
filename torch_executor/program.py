"""A compiled nvtripy trace: a flat list of steps over numbered value slots, run by PyTorch.

Compiling (compile_trace) is two stages of passes over a Draft, in order:
- read_trace: the trace's inputs, then its ops as steps, computing at once every op whose inputs are
  all constants, so weight layout changes (and quantizing a weight) happen once. A product by a
  weight so dequantized, x @ dequantize(quantize(W)), becomes a QuantizedMatMul step by W's codes as
  it is read, and each folded constant is dropped once no op left to read and no step reads it: a
  quantized model's float weights are then not all dequantized at once;
- simplify: fold_shapes (static.py folds the shape arithmetic that static dimensions decide, and
  turns what depends on dynamic dimensions into ShapeValue steps), drop_dead_steps,
  matmul.store_weight_matrices (linear layers' weights as 2-D matrices) and prepack_products.
The constants no step reads are then dropped. Tests build the plain program by leaving simplify out,
and ask infer_facts what compiling knows of its slots.
Binding picks the function that runs each step (Program._function): matmul.py's kernels for the
steps compiling made, for a product of two computed tensors and for a bfloat16 weight on a CPU
without bfloat16 arithmetic, fastpaths.py's where constant arguments can be read once, else ops.py's.
A run drops each value after the step that reads it last. A Program serializes to bytes without
pickle: a JSON header (steps, attributes, input bounds) followed by the constants in safetensors format.
"""

import collections
import dataclasses
import json
import math
import struct

import safetensors.torch
import torch

from torch_executor import fastpaths, matmul, ops, static
from torch_executor.values import SCALAR_TYPE_CODES, MemRefValue, MTRTException, PointerType, ScalarTypeCode

FORMAT_MAGIC = b"TRIPY-TORCH-EXECUTABLE-1\n"
_KEYED_BY_MODULE = ("binary", "unary", "reduce")


def op_key(op):
    return op_class_key(type(op))


def op_class_key(op_class):
    module = op_class.__module__.rsplit(".", 1)[-1]
    name = op_class.__name__
    return f"{module}.{name}" if module in _KEYED_BY_MODULE else name


def _attribute(value):
    from nvtripy.common.datatype import dtype as tripy_dtype

    if isinstance(value, tripy_dtype):
        return value.name
    if isinstance(value, (list, tuple)):
        return [_attribute(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise MTRTException(f"The CPU executor cannot represent attribute value {value!r} of type {type(value).__name__}")


def op_attributes(op):
    return {
        field.name: _attribute(getattr(op, field.name))
        for field in dataclasses.fields(op)
        if field.name not in ("inputs", "outputs")
    }


class _Diagnostic:
    def __init__(self, location):
        self.location = location


def op_error(op, message):
    """An error that nvtripy traces back to the user code that created `op`: it reads the
    location of MLIR diagnostics in this form, as it does for TensorRT's compiler."""
    from nvtripy.backend.mlir.utils import OUTPUT_SEPARATOR

    names = lambda tensors: ",".join(t.name for t in tensors)
    error = MTRTException(message)
    error.error_diagnostics = [_Diagnostic(f'loc("{names(op.inputs)}{OUTPUT_SEPARATOR}{names(op.outputs)}")')]
    return error


@dataclasses.dataclass
class Step:
    kind: str
    attrs: dict
    inputs: list
    outputs: list


@dataclasses.dataclass
class InputSpec:
    dtype: str  # ScalarTypeCode name
    min_shape: list = None  # shape bounds of a tensor input, None if unchecked
    max_shape: list = None
    dimension_names: dict = None  # {dim: name}; equal names must have equal sizes
    min_value: int = None  # value bounds of a DimensionInputInfo input
    max_value: int = None


def _input_text(spec):
    """e.g. `f32[1..4, 3]` for shape bounds, `i32 in [1, 8]` for a dimension size's value bounds."""
    if spec.min_shape is not None:
        dims = [str(lo) if lo == hi else f"{lo}..{hi}" for lo, hi in zip(spec.min_shape, spec.max_shape)]
        return f"{spec.dtype}[{', '.join(dims)}]"
    if spec.min_value is not None:
        return f"{spec.dtype} in [{spec.min_value}, {spec.max_value}]"
    return spec.dtype


def _constant_text(tensor, large_elements_limit):
    tensor = matmul.plain(tensor) if large_elements_limit is None or tensor.numel() <= large_elements_limit else tensor
    code = SCALAR_TYPE_CODES[tensor.dtype].name
    typed = f"{code}[{', '.join(map(str, tensor.shape))}]"
    if large_elements_limit is not None and tensor.numel() > large_elements_limit:
        return typed
    return f"{typed} {tensor.tolist()}"


def _live_steps(steps, output_slots):
    """The steps whose results the outputs depend on; ops have no side effects, so the rest can go."""
    live, kept = set(output_slots), []
    for step in reversed(steps):
        if live.intersection(step.outputs):
            kept.append(step)
            live.update(step.inputs)
    return kept[::-1]


class Program:
    def __init__(self, steps, constants, input_slots, input_specs, output_slots, output_dtypes, fast_paths=True):
        self.steps = steps
        self.constants = constants  # {slot: torch.Tensor}
        self.input_slots = input_slots
        self.input_specs = input_specs
        self.output_slots = output_slots
        self.output_dtypes = output_dtypes  # ScalarTypeCode names
        slots = [*input_slots, *output_slots, *constants, *(s for st in steps for s in st.outputs)]
        self.num_slots = 1 + max(slots, default=-1)
        self._bind(fast_paths)

    def _bind(self, fast_paths):
        for step in self.steps:
            if step.kind not in ops.OPS and step.kind not in static.OPS and step.kind not in COMPILED_STEPS:
                raise MTRTException(f"The CPU executor does not implement trace op '{step.kind}'")
        # A value is dropped after the step that reads it last, unless it is a constant, an input or an
        # output: a long prompt then does not hold every layer's intermediates at once, and the
        # allocator hands the next step memory that is still in cache.
        last_reader = {slot: index for index, step in enumerate(self.steps) for slot in step.inputs}
        kept = set(self.constants) | set(self.input_slots) | set(self.output_slots)
        dead_after = [[] for _ in self.steps]
        for slot, index in last_reader.items():
            if slot not in kept:
                dead_after[index].append(slot)
        self._calls, self.read_constants = [], []
        for step, dead in zip(self.steps, dead_after):
            function, attrs, reads = self._function(step, fast_paths)
            self._calls.append((step.kind, function, attrs, step.inputs, step.outputs, dead))
            self.read_constants += reads
        self._initial_values = [None] * self.num_slots
        for slot, tensor in self.constants.items():
            self._initial_values[slot] = tensor
        self._constant_ptrs = {
            t.untyped_storage().data_ptr() for t in self.constants.values() if t.numel() and not t.is_mkldnn
        }
        self._output_codes = [ScalarTypeCode[dtype] for dtype in self.output_dtypes]

    def _function(self, step, fast_paths):
        """What runs a step, the attributes to call it with, and the constant tensors it reads: for a
        product by a bfloat16 weight on a CPU without bfloat16 arithmetic, matmul.py's float32 blocks;
        for a product of two computed tensors, and for the steps compiling made (COMPILED_STEPS),
        matmul.py's kernels; with `fast_paths`, where constant arguments can be read once (shapes, a
        LayerNorm's weight and bias), fastpaths.py's; else the op's function."""
        constants = [self.constants.get(i) for i in step.inputs]
        reads = [t for t in constants if t is not None]
        if step.kind == "Gather":  # an embedding lookup reads the rows it gathers, not its whole table
            reads = [t for t in reads if t is not constants[0]]
        if step.kind == "PackedMatMul":
            if matmul.prepacks(constants[1], step.attrs["rows"]):
                function, held = matmul.prepacked_product(constants[1], step.attrs["rows"])
                return function, {}, [t for t in reads if t is not constants[1]] + held
            return ops.matrix_multiply, {}, reads  # a saved program loaded where oneDNN cannot prepack
        if step.kind == "QuantizedMatMul":
            held = matmul.held_constants(step.attrs, constants[1:])  # a saved program's codes come plain
            self.constants.update(zip(step.inputs[1:], held))
            return matmul.quantized_function(step.attrs), {}, held
        if step.kind == "MatrixMultiply" and matmul.fits(constants[1]):
            return matmul.by_bfloat16_matrix, {}, reads
        if step.kind == "MatrixMultiply" and not reads:
            return matmul.computed_product, {}, reads
        fast = fastpaths.bind(step.kind, step.attrs, constants) if fast_paths else None
        if fast is not None:
            return fast, {}, reads
        return ops.OPS.get(step.kind) or static.OPS[step.kind], step.attrs, reads

    # ------------------------------------------------------------------------------------------
    def check_inputs(self, memrefs):
        if len(memrefs) != len(self.input_slots):
            raise MTRTException(f"function expects {len(self.input_slots)} arguments but got {len(memrefs)}")
        named_sizes = {}
        for index, (memref, spec) in enumerate(zip(memrefs, self.input_specs)):
            if memref.dtype.name != spec.dtype:
                raise MTRTException(
                    f"function expects a memref type with element type {spec.dtype} but got {memref.dtype.name}"
                )
            shape = memref.shape
            if spec.min_shape is not None:
                if len(shape) != len(spec.min_shape) or any(
                    not lo <= size <= hi for size, lo, hi in zip(shape, spec.min_shape, spec.max_shape)
                ):
                    raise MTRTException(
                        f"Runtime shape mismatch: argument {index} has shape {shape}, "
                        f"allowed min={spec.min_shape}, max={spec.max_shape}"
                    )
                for dim, name in spec.dimension_names.items():
                    size = named_sizes.setdefault(name, shape[dim])
                    if size != shape[dim]:
                        raise MTRTException(
                            f"Dimensions named '{name}' must be equal at runtime, but got sizes {size} and {shape[dim]}"
                        )
            if spec.min_value is not None:
                value = int(memref.tensor)
                if not spec.min_value <= value <= spec.max_value:
                    # Not worded as a "Runtime shape mismatch": nvtripy would then look for shape
                    # bounds on this DimensionSize input, which has none, and fail on that instead.
                    raise MTRTException(
                        f"Dimension size argument {index} is {value}, outside its value bounds "
                        f"[{spec.min_value}, {spec.max_value}]"
                    )

    def run(self, memrefs):
        self.check_inputs(memrefs)
        values = self._initial_values.copy()
        for slot, memref in zip(self.input_slots, memrefs):
            values[slot] = memref.tensor
        for kind, fn, attrs, ins, outs, dead in self._calls:
            try:
                result = fn(*[values[i] for i in ins], **attrs)
            except Exception as exc:
                raise MTRTException(f"Trace op '{kind}' failed: {type(exc).__name__}: {exc}") from exc
            if len(outs) == 1:
                values[outs[0]] = result
            else:
                for slot, value in zip(outs, result):
                    values[slot] = value
            for slot in dead:
                values[slot] = None

        # Results are fresh, contiguous allocations, as TensorRT returns them.
        input_ptrs = {m.tensor.untyped_storage().data_ptr() for m in memrefs}
        results = []
        for slot, code in zip(self.output_slots, self._output_codes):
            tensor = values[slot].contiguous()
            if tensor.numel():
                ptr = tensor.untyped_storage().data_ptr()
                if ptr in self._constant_ptrs or ptr in input_ptrs:
                    tensor = tensor.clone()
            results.append(MemRefValue(tensor, code, PointerType.device))
        return results

    # ------------------------------------------------------------------------------------------
    def text(self, large_elements_limit=None):
        """The program as readable text, in the order it runs; constants with more elements than
        `large_elements_limit` show only their type."""
        inputs = ", ".join(f"%{slot}: {_input_text(spec)}" for slot, spec in zip(self.input_slots, self.input_specs))
        outputs = ", ".join(self.output_dtypes)
        lines = [f"program({inputs}) -> ({outputs}) {{"]
        for slot, tensor in sorted(self.constants.items()):
            lines.append(f"  %{slot} = constant {_constant_text(tensor, large_elements_limit)}")
        for step in self.steps:
            arguments = [f"%{slot}" for slot in step.inputs]
            arguments += [f"{name}={value!r}" for name, value in step.attrs.items()]
            results = ", ".join(f"%{slot}" for slot in step.outputs)
            lines.append(f"  {results} = {step.kind}({', '.join(arguments)})")
        lines.append("  return " + ", ".join(f"%{slot}" for slot in self.output_slots))
        lines.append("}")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------
    def serialize(self):
        header = {
            "steps": [dataclasses.asdict(step) for step in self.steps],
            "constants": sorted(self.constants),
            "input_slots": self.input_slots,
            "input_specs": [dataclasses.asdict(spec) for spec in self.input_specs],
            "output_slots": self.output_slots,
            "output_dtypes": self.output_dtypes,
        }
        header_bytes = json.dumps(header).encode()
        tensors = {str(slot): matmul.plain(t).detach().contiguous().clone() for slot, t in self.constants.items()}
        return FORMAT_MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes + safetensors.torch.save(tensors)

    @staticmethod
    def deserialize(data):
        if not data.startswith(FORMAT_MAGIC):
            raise MTRTException("Not an executable saved by the CPU executor (unknown format)")
        offset = len(FORMAT_MAGIC)
        try:
            (length,) = struct.unpack_from("<Q", data, offset)
            header = json.loads(data[offset + 8 : offset + 8 + length])
            tensors = safetensors.torch.load(data[offset + 8 + length :])
            constants = {slot: tensors[str(slot)] for slot in header["constants"]}
            steps = [Step(**step) for step in header["steps"]]
            specs = [InputSpec(**spec) for spec in header["input_specs"]]
            for spec in specs:
                if spec.dimension_names is not None:
                    spec.dimension_names = {int(k): v for k, v in spec.dimension_names.items()}
        except Exception as exc:
            raise MTRTException(f"Corrupt CPU-executor executable: {exc}") from None
        return Program(steps, constants, header["input_slots"], specs, header["output_slots"], header["output_dtypes"])


# ----------------------------------------------------------------------------------------------
# Compiling: read_trace, then simplify, each a sequence of passes over a Draft.

# Steps that only compiling makes, run by matmul.py's kernels: x @ B by quantized codes and their
# scales, and x @ B for a B that oneDNN prepacks for the step's `rows` rows when it binds.
COMPILED_STEPS = ("QuantizedMatMul", "PackedMatMul")
QUANT_DTYPES = ("int8", "int4", "float8")


@dataclasses.dataclass
class QuantizedWeight:
    """A folded dequantize(quantize(W, scale), scale): its float result, and the codes it came from."""

    result: torch.Tensor
    codes: torch.Tensor
    scale: torch.Tensor
    quant: str  # an entry of QUANT_DTYPES
    dim: int  # the Quantize's dim: which axis a 1-D scale runs along
    source: tuple  # where the weight W lies in memory (matmul.memory_key)
    views: set = dataclasses.field(default_factory=set)  # the constants' slots in `result`'s memory


class Draft:
    """A program being compiled: its steps over numbered slots, the constants folded so far, each
    computed slot's nvtripy dtype, and the quantized weights that folding dequantized (by address)."""

    def __init__(self):
        self.slot_of, self.steps, self.constants, self.dtypes, self.ranks = {}, [], {}, {}, {}
        self.input_slots, self.input_specs, self.output_slots, self.output_dtypes = [], [], [], []
        self.dequantized = {}  # {data_ptr: QuantizedWeight}
        self.facts = self.symbols = None  # what static.py infers, once fold_shapes has run

    def slot(self, key):
        """The slot of a trace tensor (by name) or of a constant a pass adds (by a key of its own)."""
        return self.slot_of.setdefault(getattr(key, "name", key), len(self.slot_of))

    def drop_constant(self, slot):
        """Forgets a constant, and the dequantized weight it was the last view of: that memory may be
        reused, and a tensor there later is not the weight."""
        ptr = self.constants.pop(slot).untyped_storage().data_ptr()
        weight = self.dequantized.get(ptr)
        if weight is not None:
            weight.views.discard(slot)
            if not weight.views:
                del self.dequantized[ptr]

    def program(self, fast_paths=True):
        """The Program. Passes leave constants behind (those of steps that fold_shapes folded or
        drop_dead_steps dropped, a weight that store_weight_matrices copied); only those the steps or
        outputs read are kept, so a saved program holds each weight once."""
        needed = {i for step in self.steps for i in step.inputs} | set(self.output_slots)
        constants = {i: tensor for i, tensor in self.constants.items() if i in needed}
        return Program(
            self.steps, constants, self.input_slots, self.input_specs, self.output_slots, self.output_dtypes, fast_paths
        )


def compile_trace(trace):
    """The program nvtripy's compiler gets: the trace read, then simplified."""
    return simplify(read_trace(trace)).program()


def read_trace(trace):
    """The trace as steps, computing at once every op whose inputs are all constants."""
    draft = Draft()
    _read_inputs(trace, draft)
    _read_ops(trace, draft)
    from nvtripy.backend.mlir.utils import convert_tripy_dtype_to_runtime_dtype

    draft.output_slots = [draft.slot(t) for t in trace.outputs]
    draft.output_dtypes = [convert_tripy_dtype_to_runtime_dtype(t.dtype).name for t in trace.outputs]
    return draft


def _read_inputs(trace, draft):
    from nvtripy.backend.api.input_info import DimensionInputInfo, InputInfo
    from nvtripy.backend.mlir.utils import convert_tripy_dtype_to_runtime_dtype

    for inp in trace.inputs:
        draft.input_slots.append(draft.slot(inp))
        spec = InputSpec(dtype=convert_tripy_dtype_to_runtime_dtype(inp.dtype).name)
        info = trace.input_infos.get(inp.name) if trace.input_infos else None
        if isinstance(info, InputInfo):
            spec.min_shape = [int(v) for v in info.shape_bounds.min]
            spec.max_shape = [int(v) for v in info.shape_bounds.max]
            spec.dimension_names = {int(k): v for k, v in info.dimension_names.items()}
        elif isinstance(info, DimensionInputInfo):
            spec.min_value = int(info.value_bounds.min[0])
            spec.max_value = int(info.value_bounds.max[0])
        draft.input_specs.append(spec)
        draft.dtypes[draft.input_slots[-1]], draft.ranks[draft.input_slots[-1]] = inp.dtype.name, inp.rank


def _read_ops(trace, draft):
    from nvtripy.trace.ops.constant import Constant

    # How many ops (and outputs) are yet to read each trace tensor: a constant that none of them reads,
    # nor any step, is dropped.
    unread = collections.Counter(t.name for op in trace.ops for t in op.inputs)
    unread.update(t.name for t in trace.outputs)
    read_by_steps = set()
    quantized = {}  # {slot of a folded Quantize: (its scale, quant dtype, dim, where W lies in memory)}
    for op in trace.ops:
        if isinstance(op, Constant):
            op._check_address_space()  # as in real nvtripy: only inputs may start on the device
            draft.constants[draft.slot(op.outputs[0])] = op.data.tensor
            continue
        kind = op_key(op)
        if kind in ops.UNSUPPORTED:
            raise op_error(op, f"The CPU executor cannot run trace op '{kind}': {ops.UNSUPPORTED[kind]}")
        if kind not in ops.OPS:
            raise op_error(op, f"The CPU executor does not implement trace op '{kind}'")
        input_dtypes = [t.dtype.name for t in op.inputs]
        reason = ops.refusal(kind, input_dtypes)
        if reason:
            raise op_error(op, f"{reason}: trace op '{kind}' was given {', '.join(input_dtypes)}")
        step = Step(kind, op_attributes(op), [draft.slot(t) for t in op.inputs], [draft.slot(t) for t in op.outputs])
        for slot, t in zip(step.outputs, op.outputs):
            draft.dtypes[slot], draft.ranks[slot] = t.dtype.name, t.rank
        if all(i in draft.constants for i in step.inputs):
            _fold(op, draft, step, quantized)
        else:
            step = fuse_quantized_product(draft, step)
            draft.steps.append(step)
            read_by_steps.update(step.inputs)
        for t in op.inputs:
            unread[t.name] -= 1
            slot = draft.slot(t)
            if not unread[t.name] and slot in draft.constants and slot not in read_by_steps:
                draft.drop_constant(slot)


def _fold(op, draft, step, quantized):
    """Computes a step whose inputs are all constants; its results are constants too."""
    try:
        results = ops.OPS[step.kind](*[draft.constants[i] for i in step.inputs], **step.attrs)
    except Exception as exc:
        raise op_error(op, f"Trace op '{step.kind}' failed: {type(exc).__name__}: {exc}") from exc
    results = results if isinstance(results, tuple) else (results,)
    draft.constants.update(zip(step.outputs, results))
    _note_quantized(draft, step, quantized)
    for slot, result in zip(step.outputs, results):
        weight = draft.dequantized.get(result.untyped_storage().data_ptr())
        if weight is not None:
            weight.views.add(slot)


def _note_quantized(draft, step, quantized):
    """Remembers a folded Quantize of a weight, and a folded Dequantize of its codes by the same scale:
    fuse_quantized_product then multiplies by the codes rather than by the float result."""
    if step.kind == "Quantize" and step.attrs["dtype"] in QUANT_DTYPES:
        scale, source = draft.constants[step.inputs[1]], matmul.memory_key(draft.constants[step.inputs[0]])
        quantized[step.outputs[0]] = (scale, step.attrs["dtype"], step.attrs["dim"], source)
    elif step.kind == "Dequantize" and step.inputs[0] in quantized:
        quantize_scale, quant, dim, source = quantized[step.inputs[0]]
        scale = draft.constants[step.inputs[1]]
        if not (quantize_scale is scale or torch.equal(quantize_scale, scale)) or dim != step.attrs["dim"]:
            return
        result = draft.constants[step.outputs[0]]
        if result.dim() == 2 and result.numel():
            weight = QuantizedWeight(result, draft.constants[step.inputs[0]], scale, quant, dim, source)
            draft.dequantized[result.untyped_storage().data_ptr()] = weight


def infer_facts(draft):
    """(facts, symbols): what static.py knows of each slot of a plain draft before it runs."""
    return _infer(draft, rewrite=False)


def _infer(draft, rewrite):
    """Facts slot by slot (static.py), for constants made on demand. With `rewrite`, a step whose
    results are all known becomes constants, and one computing an affine form of the input shapes
    becomes one ShapeValue step."""
    symbols = static.Symbols()
    facts = {
        slot: symbols.of_input(i, spec, draft.ranks[slot])
        for i, (slot, spec) in enumerate(zip(draft.input_slots, draft.input_specs))
    }

    def fact(slot):
        return facts[slot] if slot in facts else static.of_tensor(draft.constants[slot])

    steps = []
    for step in draft.steps:
        outputs = [(draft.ranks[slot], draft.dtypes[slot]) for slot in step.outputs]
        out_facts = static.infer(step.kind, [fact(i) for i in step.inputs], step.attrs, outputs, symbols.bounds)
        if rewrite and all(f.is_constant() for f in out_facts):
            # Shape arithmetic on static dimensions: its result is known now, whatever the inputs hold.
            for out, f in zip(step.outputs, out_facts):
                draft.constants[out] = static.to_tensor(f, ops.torch_dtype(draft.dtypes[out]))
            continue
        if rewrite and len(out_facts) == 1 and static.is_affine(out_facts[0]):
            # Shape arithmetic on dynamic dimensions: one step computes it from the input shapes, and
            # the steps that led here are dropped later unless something else reads them.
            dtype = draft.dtypes[step.outputs[0]]
            attrs, inputs = static.shape_value_step(out_facts[0], dtype, symbols, draft.input_slots)
            step = Step("ShapeValue", attrs, inputs, step.outputs)
        facts.update(zip(step.outputs, out_facts))
        steps.append(step)
    if rewrite:
        draft.steps = steps
    return facts, symbols


def simplify(draft):
    """The passes that make a plain draft fast, in order; each keeps what the program computes."""
    fold_shapes(draft)
    drop_dead_steps(draft)
    matmul.store_weight_matrices(draft.steps, draft.constants, draft.facts, new_slot=draft.slot)
    prepack_products(draft)
    return draft


def fold_shapes(draft):
    """Folds the shape arithmetic that static dimensions decide, and turns what depends on dynamic
    dimensions into ShapeValue steps (static.py); keeps the facts for the passes after it."""
    draft.facts, draft.symbols = _infer(draft, rewrite=True)


def drop_dead_steps(draft):
    """Keeps the steps whose results the outputs depend on; ops have no side effects."""
    draft.steps = _live_steps(draft.steps, draft.output_slots)


def fuse_quantized_product(draft, step):
    """x @ B, where B is a folded dequantize(quantize(W)) (transposed or broadcast as nvtripy's Linear
    hands it over), as one QuantizedMatMul step by B's codes and scales packed for a kernel of
    matmul.py: the program then holds and reads the codes, as a TensorRT engine holds quantized
    weights. Any other step is returned as it is."""
    if step.kind != "MatrixMultiply" or step.inputs[1] not in draft.constants:
        return step
    found = _quantized_matrix(draft, draft.constants[step.inputs[1]])
    rows_dtype = ops.torch_dtype(draft.dtypes[step.inputs[0]])
    if found is None or found[0].result.dtype != rows_dtype:
        return step
    weight, codes_b, scale_b = found
    attrs, tensors = matmul.pack_quantized(weight.quant, codes_b, scale_b, rows_dtype, weight.source)
    slots = []
    for position, tensor in enumerate(tensors):
        slots.append(draft.slot(("quantized", step.inputs[1], attrs["kernel"], position)))
        draft.constants[slots[-1]] = tensor
    return Step("QuantizedMatMul", attrs, [step.inputs[0], *slots], step.outputs)


def _quantized_matrix(draft, b):
    """(QuantizedWeight, B's codes [K, N], B's scale) if the constant B = `b` (leading sizes 1) is a
    dequantized weight or its transpose, with a scale per tensor, per column of B, or (int4) per group of
    B's rows within a column; else None."""
    if b.dim() < 2 or any(size != 1 for size in b.shape[:-2]) or not b.numel():
        return None
    core = b.reshape(b.shape[-2:])
    weight = draft.dequantized.get(core.untyped_storage().data_ptr())
    if weight is None or core.storage_offset() != weight.result.storage_offset():
        return None
    same = tuple(core.shape) == tuple(weight.result.shape) and core.stride() == weight.result.stride()
    transposed = tuple(core.shape) == tuple(weight.result.shape)[::-1] and core.stride() == weight.result.stride()[::-1]
    if not (same or transposed):
        return None
    codes_b = weight.codes.t() if transposed else weight.codes
    scale = weight.scale
    if scale.dim() == 1 and weight.dim != (0 if transposed else 1):
        return None  # a scale per input: not one per column of B
    if scale.dim() == 2 and (transposed or weight.quant != "int4"):
        return None  # groups along B's columns; or groups of other codes than int4's, which nvtripy refuses
    return weight, codes_b, scale


def prepack_products(draft):
    """A product by a constant matrix becomes a PackedMatMul step where matmul.prepacks says a prepacked copy of
    it is faster for the product's static number of rows (None where it is not static); binding packs it."""
    for index, step in enumerate(draft.steps):
        if step.kind != "MatrixMultiply" or step.inputs[1] not in draft.constants or step.inputs[0] not in draft.facts:
            continue
        shape = draft.facts[step.inputs[0]].shape
        rows = math.prod(shape[:-1]) if all(isinstance(d, int) for d in shape) else None
        if len(shape) >= 2 and matmul.prepacks(draft.constants[step.inputs[1]], rows):
            draft.steps[index] = Step("PackedMatMul", {"rows": rows}, step.inputs, step.outputs)


def weight_bytes(programs):
    """The bytes of the constants the programs' steps read, each storage counted once: what a run of them
    reads from memory (a table that a Gather reads rows of is left out, as only its rows are read)."""
    seen, total = set(), 0
    for program in programs:
        for tensor in program.read_constants:
            if isinstance(tensor, matmul.PackedFloat16Weight):
                key, size = ("opaque", id(tensor)), tensor.nbytes
            elif tensor.is_mkldnn:
                key, size = ("opaque", id(tensor)), tensor.numel() * tensor.element_size()
            else:
                storage = tensor.untyped_storage()
                key, size = storage.data_ptr(), storage.nbytes()
            if key not in seen:
                seen.add(key)
                total += size
    return total
