"""A compiled nvtripy trace: a flat list of steps over numbered value slots, run by PyTorch.

Building a Program from a Trace folds every op whose inputs are all constants, so weight layout
changes happen once, at compile time; static.py folds the shape arithmetic that static dimensions
decide, also where it reads the shape of a tensor computed at run time, and turns what depends on
dynamic dimensions into one ShapeValue step; matmul.py gives linear layers' weights to their
products as 2-D matrices. Steps nothing reads, and the constants only folding needed, are then dropped.
Binding picks the function that runs each step: fastpaths.py's where its shape arguments are
constants, matmul.py's for a bfloat16 weight on a CPU without bfloat16 arithmetic, else ops.py's.
A run drops each value after the step that reads it last.
A Program serializes to bytes without pickle: a JSON header (steps, attributes, input bounds)
followed by the constants in safetensors format.
"""

import dataclasses
import json
import struct

import safetensors.torch
import torch

from torch_executor import fastpaths, matmul, ops, static
from torch_executor.runtime import SCALAR_TYPE_CODES, MTRTException, PointerType, ScalarTypeCode, MemRefValue

FORMAT_MAGIC = b"TRIPY-TORCH-EXECUTABLE-1\n"
_KEYED_BY_MODULE = ("binary", "unary", "reduce")
# Simplify programs as they are built from traces: fold shape arithmetic (static.py), drop steps
# whose results nothing reads, store weights as matrices (matmul.py); and bind steps with constant
# shape arguments to fast paths (fastpaths.py). Tests turn it off to compare with the program that
# computes everything as the trace says, with ops.py's functions.
SIMPLIFY = True


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
    def __init__(self, steps, constants, input_slots, input_specs, output_slots, output_dtypes):
        self.steps = steps
        self.constants = constants  # {slot: torch.Tensor}
        self.input_slots = input_slots
        self.input_specs = input_specs
        self.output_slots = output_slots
        self.output_dtypes = output_dtypes  # ScalarTypeCode names
        self.num_slots = 1 + max([*input_slots, *output_slots, *constants, *(s for st in steps for s in st.outputs)], default=-1)
        self._bind()

    def _bind(self):
        for step in self.steps:
            if step.kind not in ops.OPS and step.kind not in static.OPS:
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
        self._calls = [(s.kind, *self._function(s), s.inputs, s.outputs, dead) for s, dead in zip(self.steps, dead_after)]
        self._initial_values = [None] * self.num_slots
        for slot, tensor in self.constants.items():
            self._initial_values[slot] = tensor
        self._constant_ptrs = {t.untyped_storage().data_ptr() for t in self.constants.values() if t.numel()}
        self._output_codes = [ScalarTypeCode[dtype] for dtype in self.output_dtypes]

    def _function(self, step):
        """What runs a step, and the attributes to call it with: for a product by a bfloat16 weight on
        a CPU without bfloat16 arithmetic, matmul.py's float32 blocks; where the shape arguments are
        constants, fastpaths.py's; else the op's function."""
        constants = [self.constants.get(i) for i in step.inputs]
        if step.kind == "MatrixMultiply" and matmul.fits(constants[1]):
            return matmul.by_bfloat16_matrix, {}
        fast = fastpaths.bind(step.kind, step.attrs, constants) if SIMPLIFY else None
        if fast is not None:
            return fast, {}
        return ops.OPS.get(step.kind) or static.OPS[step.kind], step.attrs

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def from_trace(trace):
        from nvtripy.backend.api.input_info import DimensionInputInfo, InputInfo
        from nvtripy.backend.mlir.utils import convert_tripy_dtype_to_runtime_dtype
        from nvtripy.trace.ops.constant import Constant

        slot_of = {}

        def slot(tensor):
            return slot_of.setdefault(tensor.name, len(slot_of))

        input_slots, input_specs = [], []
        for inp in trace.inputs:
            input_slots.append(slot(inp))
            spec = InputSpec(dtype=convert_tripy_dtype_to_runtime_dtype(inp.dtype).name)
            info = trace.input_infos.get(inp.name) if trace.input_infos else None
            if isinstance(info, InputInfo):
                spec.min_shape = [int(v) for v in info.shape_bounds.min]
                spec.max_shape = [int(v) for v in info.shape_bounds.max]
                spec.dimension_names = {int(k): v for k, v in info.dimension_names.items()}
            elif isinstance(info, DimensionInputInfo):
                spec.min_value = int(info.value_bounds.min[0])
                spec.max_value = int(info.value_bounds.max[0])
            input_specs.append(spec)

        # What is known before running, slot by slot (static.py); constants' Facts are made on demand.
        symbols = static.Symbols()
        facts = {slot: symbols.of_input(i, spec, inp.rank) for i, (slot, spec, inp) in enumerate(zip(input_slots, input_specs, trace.inputs))}

        def fact(slot):
            return facts[slot] if slot in facts else static.of_tensor(constants[slot])

        steps, constants = [], {}
        for op in trace.ops:
            if isinstance(op, Constant):
                op._check_address_space()  # as in real nvtripy: only inputs may start on the device
                constants[slot(op.outputs[0])] = op.data.tensor
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
            step = Step(kind, op_attributes(op), [slot(t) for t in op.inputs], [slot(t) for t in op.outputs])
            if all(i in constants for i in step.inputs):
                try:
                    results = ops.OPS[step.kind](*[constants[i] for i in step.inputs], **step.attrs)
                except Exception as exc:
                    raise op_error(op, f"Trace op '{kind}' failed: {type(exc).__name__}: {exc}") from exc
                results = results if isinstance(results, tuple) else (results,)
                constants.update(zip(step.outputs, results))
                continue
            out_facts = static.infer(kind, [fact(i) for i in step.inputs], step.attrs, op.outputs, symbols.bounds)
            if SIMPLIFY and all(f.is_constant() for f in out_facts):
                # Shape arithmetic on static dimensions: its result is known now, whatever the inputs hold.
                for out, f, t in zip(step.outputs, out_facts, op.outputs):
                    constants[out] = static.to_tensor(f, ops.torch_dtype(t.dtype.name))
                continue
            if SIMPLIFY and len(out_facts) == 1 and static.is_affine(out_facts[0]):
                # Shape arithmetic on dynamic dimensions: one step computes it from the input shapes,
                # and the steps that led here are dropped below unless something else reads them.
                attrs, inputs = static.shape_value_step(out_facts[0], op.outputs[0].dtype.name, symbols, input_slots)
                step = Step("ShapeValue", attrs, inputs, step.outputs)
            facts.update(zip(step.outputs, out_facts))
            steps.append(step)

        output_slots = [slot(t) for t in trace.outputs]
        if SIMPLIFY:
            steps = _live_steps(steps, output_slots)
            matmul.store_weight_matrices(steps, constants, facts, new_slot=lambda key: slot_of.setdefault(key, len(slot_of)))
        # Folding leaves the constants it started from behind (a weight before its transposition, say);
        # only those the steps or outputs read are kept, so a saved program holds each weight once.
        needed = {i for step in steps for i in step.inputs} | set(output_slots)
        constants = {i: tensor for i, tensor in constants.items() if i in needed}
        output_dtypes = [convert_tripy_dtype_to_runtime_dtype(t.dtype).name for t in trace.outputs]
        program = Program(steps, constants, input_slots, input_specs, output_slots, output_dtypes)
        program.facts, program.symbols = facts, symbols  # what compiling knew of each slot, for tests; not saved
        return program

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
            arguments = [f"%{slot}" for slot in step.inputs] + [f"{name}={value!r}" for name, value in step.attrs.items()]
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
        tensors = {str(slot): t.detach().contiguous().clone() for slot, t in self.constants.items()}
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
