"""Compiled programs: input checks, constant folding, unknown ops, and saving and loading."""

import base64
import gc
import json
import weakref

import pytest
import safetensors.torch
import torch

import nvtripy as tp
from torch_executor import ops
from torch_executor.program import FORMAT_MAGIC, Program, Step
from torch_executor.runtime import MTRTException


def on_device(t):
    return tp.copy(tp.Tensor(t), tp.device("gpu")).eval()


def program_of(compiled):
    return compiled._executable.program


def add(a, b):
    return a + b


# ----------------------------------------------------------------------------------------------
# Inputs are checked against what `tp.compile` was told, and nvtripy reports the violations.


@pytest.fixture(scope="module")
def compiled_add():
    info = tp.InputInfo(shape=((1, 2, 3), 4), dtype=tp.float32)
    return tp.compile(add, args=[info, info])


@pytest.mark.parametrize("rows", [1, 3])
def test_shapes_within_the_bounds_run(compiled_add, rows):
    a = torch.randn(rows, 4)
    out = compiled_add(on_device(a), on_device(a))
    torch.testing.assert_close(torch.from_dlpack(out), a + a)


@pytest.mark.parametrize("rows", [0, 4])
def test_shapes_outside_the_bounds_are_refused(compiled_add, rows):
    a = on_device(torch.zeros(rows, 4))
    with pytest.raises(
        tp.TripyException, match=r"expected a shape within the bounds: min=\(1, 4\), max=\(3, 4\)"
    ) as info:
        compiled_add(a, a)
    assert f"Dimension 0 has a shape of {rows}, which is not within the expected bounds of [1, 3]" in str(info.value)


def test_a_static_dimension_must_match(compiled_add):
    a = on_device(torch.zeros(2, 5))
    with pytest.raises(
        tp.TripyException, match=r"Dimension 1 has a shape of 5, which is not within the expected bounds of \[4, 4\]"
    ):
        compiled_add(a, a)


def test_the_rank_must_match(compiled_add):
    a = on_device(torch.zeros(2, 4, 1))
    with pytest.raises(tp.TripyException, match="expected a rank of: 2 but got: 3"):
        compiled_add(a, a)


def test_the_dtype_must_match(compiled_add):
    a = on_device(torch.zeros(2, 4, dtype=torch.float16))
    with pytest.raises(tp.TripyException, match="expected data type: float32 but got: float16"):
        compiled_add(a, a)


def test_inputs_must_be_in_device_memory(compiled_add):
    host = tp.Tensor(torch.zeros(2, 4))  # built from a CPU tensor: host memory
    assert host.device.kind == "cpu"
    with pytest.raises(tp.TripyException, match="Unexpected tensor device") as info:
        compiled_add(host, host)
    assert "expected to be on device: gpu but got: cpu" in str(info.value)


def test_dimension_size_inputs_are_checked_against_their_value_bounds():
    def reshape(x, s):
        return tp.reshape(x, (-1, s))

    compiled = tp.compile(
        reshape,
        args=[tp.InputInfo(shape=(3, (2, 4, 6)), dtype=tp.float32), tp.DimensionInputInfo(value_bounds=(1, 2, 4))],
    )
    x = on_device(torch.zeros(3, 4))
    assert compiled(x, tp.DimensionSize(4)).shape == (3, 4)
    with pytest.raises(tp.TripyException, match=r"Dimension size argument 1 is 6, outside its value bounds \[1, 4\]"):
        compiled(x, tp.DimensionSize(6))


def test_dimensions_with_the_same_name_must_be_equal():
    batch = tp.NamedDimension("batch", 1, 2, 4)
    compiled = tp.compile(
        add, args=[tp.InputInfo((batch, 3), dtype=tp.float32), tp.InputInfo((batch, 3), dtype=tp.float32)]
    )
    assert compiled(on_device(torch.ones(2, 3)), on_device(torch.ones(2, 3))).shape == (2, 3)
    with pytest.raises(
        tp.TripyException, match="Dimensions named 'batch' must be equal at runtime, but got sizes 2 and 3"
    ):
        compiled(on_device(torch.ones(2, 3)), on_device(torch.ones(3, 3)))


# ----------------------------------------------------------------------------------------------
# Building a program


def test_ops_on_constants_are_folded_at_compile_time():
    def scale(x):
        weight = tp.reshape(tp.arange(6, dtype=tp.float32), (2, 3)) * 2.0  # constant: folded
        return x * tp.transpose(weight, 0, 1)

    compiled = tp.compile(scale, args=[tp.InputInfo((3, 2), dtype=tp.float32)])
    kinds = [step.kind for step in program_of(compiled).steps]
    assert kinds == ["binary.Mul"]
    x = torch.randn(3, 2)
    expected = x * (torch.arange(6.0).reshape(2, 3) * 2).T
    torch.testing.assert_close(torch.from_dlpack(compiled(on_device(x))), expected)


def test_constants_only_folding_read_are_dropped(tmp_path):
    """A weight transposed at compile time is kept once, transposed: the saved file holds one copy."""
    weight = torch.randn(64, 32)

    def project(x):
        return x @ tp.transpose(tp.Tensor(weight), 0, 1)

    compiled = tp.compile(project, args=[tp.InputInfo((2, 32), dtype=tp.float32)])
    constants = program_of(compiled).constants
    assert [tuple(t.shape) for t in constants.values()] == [(32, 64)]
    path = str(tmp_path / "project.json")
    compiled.save(path)
    _, payload = _payload(path)
    start = len(FORMAT_MAGIC) + 8
    length = int.from_bytes(payload[len(FORMAT_MAGIC) : start], "little")
    assert len(safetensors.torch.load(payload[start + length :])) == 1
    x = torch.randn(2, 32)
    torch.testing.assert_close(torch.from_dlpack(tp.Executable.load(path)(on_device(x))), x @ weight.T)


def test_each_dequantized_weight_is_dropped_once_its_product_is_read(monkeypatch):
    """Compiling quantized layers holds one layer's float weight at a time, not every layer's: each is
    gone (fused into a product by its codes) before the next is dequantized, and none is left."""
    alive = []

    def dequantize(*args, **kwargs):
        gc.collect()
        assert all(ref() is None for ref in alive)
        result = dequantize_op(*args, **kwargs)
        alive.append(weakref.ref(result))
        return result

    dequantize_op = ops.OPS["Dequantize"]
    monkeypatch.setitem(ops.OPS, "Dequantize", dequantize)
    weights = [torch.randn(32, 32) for _ in range(3)]
    layers = []
    for weight in weights:
        layer = tp.Linear(32, 32, bias=False, quant_dtype=tp.int8, weight_quant_dim=0)
        layer.weight, layer.weight_scale = tp.Tensor(weight), tp.Tensor(weight.abs().amax(1) / 127)
        layer.input_scale = None
        layers.append(layer)

    def stack(x):
        for layer in layers:
            x = layer(x)
        return x

    compiled = tp.compile(stack, args=[tp.InputInfo((2, 32), dtype=tp.float32)])
    assert len(alive) == 3 and [s.kind for s in program_of(compiled).steps] == ["QuantizedMatMul"] * 3
    gc.collect()
    assert all(ref() is None for ref in alive)
    x = torch.randn(2, 32)
    expected = x
    for weight in weights:
        scale = weight.abs().amax(1, keepdim=True) / 127
        expected = expected @ (torch.round(weight / scale).clamp(-128, 127) * scale).T
    torch.testing.assert_close(torch.from_dlpack(compiled(on_device(x))), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("verbosity", ["mlir", "ir"])
def test_ir_logging_prints_the_program_the_executor_runs(verbosity, capsys):
    weight = torch.arange(40.0).reshape(10, 4)  # more than the 32 elements nvtripy asks to see

    def model(x):
        return tp.softmax(x @ tp.Tensor(weight) + tp.Tensor([0.5, 1.5, 2.5, 3.5]), dim=1)

    with tp.logger.use_verbosity(verbosity):
        compiled = tp.compile(model, args=[tp.InputInfo(((1, 2, 4), 10), dtype=tp.float32)])
    logged = capsys.readouterr().out

    assert "==== MLIR ====" in logged
    mlir = logged[logged.index("==== MLIR ====") :]
    kinds = [step.kind for step in program_of(compiled).steps]
    assert kinds == ["MatrixMultiply", "binary.Add", "Softmax"]
    positions = [mlir.index(f"= {kind}(") for kind in kinds]
    assert positions == sorted(positions), mlir  # in the order they run
    assert "f32[1..4, 10]" in mlir  # the input and its shape bounds
    assert "f32[10, 4]" in mlir and "39.0" not in mlir  # the weight, elided
    assert "[0.5, 1.5, 2.5, 3.5]" in mlir  # a small constant, shown
    assert "dim=1" in mlir and "return" in mlir


def test_ir_logging_leaves_compile_errors_to_the_compiler(capsys):
    with tp.logger.use_verbosity("mlir"), pytest.raises(
        tp.TripyException, match="The CPU executor cannot run trace op 'Plugin'"
    ) as info:
        x = tp.ones((2, 2))
        tp.plugin(name="CustomGeluPluginDynamic", inputs=[x], output_info=[(x.rank, x.dtype)], type_id=0).eval()
    assert "This originated from the following operation" in str(info.value)


def test_a_value_is_dropped_after_the_step_that_reads_it_last():
    compiled = tp.compile(lambda x: tp.exp(x * 2.0) + x, args=[tp.InputInfo((3, 2), dtype=tp.float32)])
    program = program_of(compiled)
    kept = set(program.constants) | set(program.input_slots) | set(program.output_slots)
    dropped = []
    for index, (_, _, _, inputs, _, dead) in enumerate(program._calls):
        for slot in dead:
            assert slot in inputs and slot not in kept
            assert all(slot not in later[3] for later in program._calls[index + 1 :])
        dropped += dead
    assert len(dropped) == 2  # x * 2 and its exp; x is an input
    x = torch.randn(3, 2)
    torch.testing.assert_close(torch.from_dlpack(compiled(on_device(x))), torch.exp(x * 2) + x)


def test_an_op_the_executor_lacks_fails_loudly_naming_it(monkeypatch):
    monkeypatch.delitem(ops.OPS, "unary.Exp")
    exponent = tp.exp(tp.ones((2,)))
    with pytest.raises(tp.TripyException, match=r"The CPU executor does not implement trace op 'unary.Exp'") as info:
        exponent.eval()
    assert "exponent = tp.exp(tp.ones((2,)))" in str(info.value)  # nvtripy points at the user's line


def test_an_op_that_fails_at_run_time_is_named():
    compiled = tp.compile(lambda a, b: a @ b, args=[tp.InputInfo((2, (1, 3, 4)), tp.float32)] * 2)
    a = on_device(torch.ones(2, 3))
    with pytest.raises(
        tp.TripyException, match=r"Trace op 'MatrixMultiply' failed: RuntimeError: mat1 and mat2 shapes"
    ):
        compiled(a, a)


def test_a_program_with_an_unknown_step_is_refused():
    with pytest.raises(MTRTException, match="does not implement trace op 'NoSuchOp'"):
        Program([Step("NoSuchOp", {}, [0], [1])], {}, [0], [], [1], ["f32"])


def test_plugins_are_refused_with_the_reason():
    x = tp.ones((2, 2))
    out = tp.plugin(name="CustomGeluPluginDynamic", inputs=[x], output_info=[(x.rank, x.dtype)], type_id=0)
    with pytest.raises(tp.TripyException, match="cannot run trace op 'Plugin': TensorRT plugins"):
        out.eval()


# ----------------------------------------------------------------------------------------------
# Saving and loading: a JSON header and safetensors, inside nvtripy's own JSON file


@pytest.fixture
def saved(tmp_path):
    def model(x, y):
        hidden = tp.relu(x @ tp.reshape(tp.arange(12, dtype=tp.float32), (3, 4)) - 5.0)
        return tp.softmax(hidden, dim=1), tp.sum(y, dim=0)

    compiled = tp.compile(
        model, args=[tp.InputInfo(((1, 2, 5), 3), dtype=tp.float32), tp.InputInfo(((1, 2, 5),), dtype=tp.int32)]
    )
    path = str(tmp_path / "model.json")
    compiled.save(path)
    return compiled, path


def test_a_loaded_executable_gives_identical_results(saved):
    compiled, path = saved
    loaded = tp.Executable.load(path)
    for rows in (1, 4):
        x, y = torch.randn(rows, 3), torch.arange(rows, dtype=torch.int32)
        before = [torch.from_dlpack(t) for t in compiled(on_device(x), on_device(y))]
        after = [torch.from_dlpack(t) for t in loaded(on_device(x), on_device(y))]
        for b, a in zip(before, after):
            assert b.dtype == a.dtype and torch.equal(b, a)
    with pytest.raises(tp.TripyException, match="expected a shape within the bounds"):
        loaded(on_device(torch.zeros(6, 3)), on_device(torch.zeros(6, dtype=torch.int32)))


def _payload(path):
    with open(path) as f:
        document = json.load(f)
    return document, base64.b64decode(document["executable"])


def _rewrite(path, document, payload):
    document["executable"] = base64.b64encode(payload).decode()
    with open(path, "w") as f:
        json.dump(document, f)


def test_the_saved_program_is_json_and_safetensors_only(saved):
    # Both parsers only read data; nothing in the file can run code when it is loaded.
    _, path = saved
    _, payload = _payload(path)
    assert payload.startswith(FORMAT_MAGIC)
    start = len(FORMAT_MAGIC) + 8
    length = int.from_bytes(payload[len(FORMAT_MAGIC) : start], "little")
    header = json.loads(payload[start : start + length])
    tensors = safetensors.torch.load(payload[start + length :])
    assert sorted(tensors) == sorted(str(slot) for slot in header["constants"])
    assert [step["kind"] for step in header["steps"]] == [
        "MatrixMultiply",
        "binary.Sub",
        "unary.Relu",
        "Softmax",
        "reduce.Sum",
    ]


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda p: p[: len(p) // 2], "Corrupt CPU-executor executable"),
        (lambda p: p[:40] + b"{not json" + p[49:], "Corrupt CPU-executor executable"),
        (lambda p: b"TensorRT engine bytes", "Not an executable saved by the CPU executor"),
    ],
    ids=["truncated", "garbled-header", "foreign"],
)
def test_a_corrupt_file_gives_a_clear_error(saved, corrupt, message):
    _, path = saved
    document, payload = _payload(path)
    _rewrite(path, document, corrupt(payload))
    with pytest.raises(MTRTException, match=message):
        tp.Executable.load(path)


def test_there_is_no_tensorrt_engine_to_serialize(saved):
    compiled, _ = saved
    with pytest.raises(
        MTRTException, match="builds no TensorRT engine: `serialized_tensorrt_engine` needs the TensorRT backend"
    ):
        compiled.serialized_tensorrt_engine


# ----------------------------------------------------------------------------------------------
# A whole model: weights loaded from PyTorch, compiled once, run at two sequence lengths


class TinyBlock(tp.Module):
    def __init__(self, vocab, width):
        super().__init__()
        self.embed = tp.Embedding(vocab, width)
        self.norm = tp.LayerNorm(width)
        self.up = tp.Linear(width, 4 * width)
        self.down = tp.Linear(4 * width, width)

    def forward(self, ids):
        x = self.embed(ids)
        return x + self.down(tp.gelu(self.up(self.norm(x))))


class TorchTinyBlock(torch.nn.Module):
    def __init__(self, vocab, width):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.norm = torch.nn.LayerNorm(width)
        self.up = torch.nn.Linear(width, 4 * width)
        self.down = torch.nn.Linear(4 * width, width)

    def forward(self, ids):
        x = self.embed(ids)
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


def test_a_module_with_loaded_weights_matches_torch_at_two_lengths():
    torch.manual_seed(0)
    reference = TorchTinyBlock(vocab=50, width=16).eval()
    block = TinyBlock(vocab=50, width=16)
    missing, unexpected = block.load_state_dict(
        {name: tp.Tensor(value.detach()) for name, value in reference.state_dict().items()}
    )
    assert not missing and not unexpected

    compiled = tp.compile(block, args=[tp.InputInfo((2, (1, 4, 16)), dtype=tp.int32)])
    for length in (3, 11):
        ids = torch.randint(0, 50, (2, length), dtype=torch.int32)
        out = torch.from_dlpack(compiled(on_device(ids)))
        assert out.shape == (2, length, 16)
        with torch.no_grad():
            expected = reference(ids.long())
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
