"""Compile-time simplification (program.simplify): folded shape arithmetic, ShapeValue steps, dropped
steps, weights stored as matrices. A simplified program must compute what the trace says, so each
test compares it with the program built without simplification, or checks what compiling inferred
against what a run finds."""

import pytest
import torch

import nvtripy as tp
import generate
from model import GPT, GPTConfig
from quant_modes import QUANT_MODES
from torch_executor import matmul
from torch_executor import program as program_module
from torch_executor import static
from torch_executor.program import Program
from torch_executor.runtime import MemRefValue, PointerType, ScalarTypeCode

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def on_device(t):
    return tp.copy(tp.Tensor(t), tp.device("gpu")).eval()


def program_of(compiled):
    return compiled._executable.program


def random_gpt(dtype, seed=0, quant_mode=None):
    """A tiny GPT-2 with random weights, lm_head tied to the token embedding as in GPT-2."""
    config = GPTConfig(
        block_size=16,
        vocab_size=97,
        num_layers=2,
        num_heads=2,
        embedding_size=16,
        dtype=getattr(tp, dtype),
        quant_mode=QUANT_MODES.get(quant_mode),
    )
    model = GPT(config)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, param in model.state_dict().items():
        weight = torch.randn(tuple(int(s) for s in param.shape), generator=generator) * 0.5
        weight = weight.abs() + 0.01 if key.endswith("_scale") else weight
        state[key] = tp.Tensor(weight.to(TORCH_DTYPES[dtype]))
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state)
    return model


def compile_plain(monkeypatch, compile_fn, *args):
    """compile_fn(*args) with each trace read and not simplified, its steps run by ops.py's functions,
    and the drafts it read, in order, for infer_facts."""
    drafts = []

    def plain(trace):
        drafts.append(program_module.read_trace(trace))
        return drafts[-1].program(fast_paths=False)

    with monkeypatch.context() as patch:
        patch.setattr(program_module, "compile_trace", plain)
        return compile_fn(*args), drafts


def compile_both(monkeypatch, compile_fn, model, batch_size=1):
    """(simplified, unsimplified) compiled functions."""
    simplified = compile_fn(model, batch_size)
    return simplified, compile_plain(monkeypatch, compile_fn, model, batch_size)[0]


def run_generation(prefill, decode, tokens, steps):
    """Logits and caches of a prefill and `steps` decode steps, as torch tensors."""
    logits, *cache = prefill(on_device(tokens))
    results = [torch.from_dlpack(logits)] + [torch.from_dlpack(c) for c in cache]
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        token = torch.randint(0, 97, (tokens.shape[0], 1), dtype=torch.int32, generator=generator)
        logits, *cache = decode(on_device(token), cache)
        results += [torch.from_dlpack(logits)] + [torch.from_dlpack(c) for c in cache]
    return results


@pytest.mark.parametrize("dtype, batch", [("float32", 1), ("float32", 3), ("bfloat16", 2)])
def test_gpt_generation_computes_what_the_unsimplified_program_does(monkeypatch, dtype, batch):
    model = random_gpt(dtype)
    prefill, plain_prefill = compile_both(monkeypatch, generate.compile_prefill, model, batch)
    decode, plain_decode = compile_both(monkeypatch, generate.compile_decode, model, batch)
    tokens = torch.randint(0, 97, (batch, 5), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    ours = run_generation(prefill, decode, tokens, steps=3)
    reference = run_generation(plain_prefill, plain_decode, tokens, steps=3)
    for a, b in zip(ours, reference):
        assert a.dtype == b.dtype and a.shape == b.shape
        # Only a matrix product may differ, by rounding: one product over the batch instead of one per sample.
        tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == "float32" else {}
        torch.testing.assert_close(a, b, **tolerance)


def test_a_decode_step_runs_no_shape_ops_and_far_fewer_steps(monkeypatch):
    model = random_gpt("float32")
    decode, plain = compile_both(monkeypatch, generate.compile_decode, model)
    kinds = [step.kind for step in program_of(decode).steps]
    assert not {"Shape", "GetDimensionSize"} & set(kinds)
    assert "ShapeValue" in kinds  # the cache's length, for slicing keys and values out of it
    assert len(kinds) < len(program_of(plain).steps) / 3


def test_a_quantized_decode_step_is_simplified_as_far_as_the_float_one():
    """What compiling knows of a product's shape it knows of a product by quantized codes too."""
    steps = lambda model: [step.kind for step in program_of(generate.compile_decode(model)).steps]
    float_kinds, int8_kinds = steps(random_gpt("float32")), steps(random_gpt("float32", quant_mode="int8-weight-only"))
    assert len(int8_kinds) == len(float_kinds)
    changed = [(a, b) for a, b in zip(float_kinds, int8_kinds) if a != b]
    float_product = "PackedMatMul" if matmul.prepacks(torch.empty(8, 8), 1) else "MatrixMultiply"
    assert changed == [(float_product, "QuantizedMatMul")] * 8  # 4 linear layers a block; lm_head is not quantized


def _evaluate(dim, symbol_values):
    if isinstance(dim, static.Sym):
        return dim.const + sum(c * symbol_values[s] for s, c in dim.terms)
    return dim


def check_facts(program, inferred, inputs):
    """Runs the plain program step by step on `inputs` (torch tensors), checking every static dimension,
    every symbolic one and every tracked element of every slot against what infer_facts infers.
    Returns how many slots had elements to check."""
    facts, symbols = inferred
    symbol_values = {}
    for s, (index, dim) in symbols.sources.items():
        symbol_values[s] = inputs[index].shape[dim] if dim is not None else int(inputs[index])
    values = [None] * program.num_slots
    for slot, tensor in program.constants.items():
        values[slot] = tensor
    for slot, tensor in zip(program.input_slots, inputs):
        values[slot] = tensor
    checked = 0
    for kind, fn, attrs, ins, outs, _ in program._calls:
        result = fn(*[values[i] for i in ins], **attrs)
        results = result if isinstance(result, tuple) else (result,)
        for slot, value in zip(outs, results):
            values[slot] = value
            fact = facts[slot]
            assert len(fact.shape) == value.dim(), kind
            for dim, size in zip(fact.shape, value.shape):
                assert dim is None or _evaluate(dim, symbol_values) == size, (kind, fact, value.shape)
            if fact.value is not None:
                actual = value.reshape(-1).tolist()
                for element, number in zip(fact.value, actual):
                    assert element is None or _evaluate(element, symbol_values) == number, (kind, fact, actual)
                checked += 1
    return checked


def unsimplified(monkeypatch, compile_fn, *args):
    """The plain program of compile_fn(*args), and what infer_facts finds of it: (facts, symbols)."""
    compiled, drafts = compile_plain(monkeypatch, compile_fn, *args)
    return program_of(compiled), program_module.infer_facts(drafts[-1])


@pytest.mark.parametrize("cached", [1, 6, 15])
def test_what_compiling_infers_holds_when_a_decode_step_runs(monkeypatch, cached):
    """At several cache lengths, up to the bound."""
    program, inferred = unsimplified(monkeypatch, generate.compile_decode, random_gpt("float32"), 2)
    inputs = [torch.randint(0, 97, (2, 1), dtype=torch.int32)] + [torch.randn(2, 2, 2, cached, 8) for _ in range(2)]
    # The decode program is mostly shape arithmetic before simplification.
    assert check_facts(program, inferred, inputs) > 100


@pytest.mark.parametrize("tokens", [1, 7, 16])
def test_what_compiling_infers_holds_when_a_prompt_is_read(monkeypatch, tokens):
    program, inferred = unsimplified(monkeypatch, generate.compile_prefill, random_gpt("float32"), 2)
    assert check_facts(program, inferred, [torch.randint(0, 97, (2, tokens), dtype=torch.int32)]) > 50


def _shape_play(x, y):
    """Frontend functions whose traces exercise the rules: reshapes with -1, strided and negative
    slices, padding, repetition, expansion, reductions, top-k, arange over a dynamic length."""
    n = x.shape[1]
    a = tp.reshape(x, (x.shape[0], -1, 2))
    b = tp.flatten(tp.transpose(a, 0, 1), 1)
    c = tp.concatenate([x[:, n // 2 :], x[:, : n // 2], x[:, ::2], x[:, -3:]], dim=1)
    d = tp.pad(c, [(0, 0), (2, 0)]) + tp.sum(tp.expand(tp.unsqueeze(y, 1), (y.shape[0], 3, y.shape[1])), dim=1)[:, :1]
    e = tp.repeat(d, 2, dim=0)
    values, indices = tp.topk(e, 2, dim=1)
    positions = tp.cast(tp.arange(n - 1, 2 * n - 1, dtype=tp.int32), tp.float32)
    return b, e, values, indices, tp.max(x, dim=1) + positions[-1], tp.squeeze(tp.unsqueeze(positions, 0), 0)


@pytest.mark.parametrize("n", [4, 6, 10])
def test_what_compiling_infers_holds_for_shape_heavy_frontend_code(monkeypatch, n):
    args = [
        tp.InputInfo((3, tp.NamedDimension("n", 4, 6, 10)), dtype=tp.float32),
        tp.InputInfo(((1, 3, 3), 5), dtype=tp.float32),
    ]
    program, inferred = unsimplified(monkeypatch, lambda f: tp.compile(f, args=args), _shape_play)
    x, y = torch.randn(3, n), torch.randn(3, 5)
    assert check_facts(program, inferred, [x, y]) > 10
    plain = Program(
        program.steps,
        program.constants,
        program.input_slots,
        program.input_specs,
        program.output_slots,
        program.output_dtypes,
    )
    simplified = program_of(tp.compile(_shape_play, args=args))
    assert len(simplified.steps) < len(plain.steps)
    memrefs = [MemRefValue(t, ScalarTypeCode.f32, PointerType.device) for t in (x, y)]
    for ours, reference in zip(simplified.run(memrefs), plain.run(memrefs)):
        torch.testing.assert_close(ours.tensor, reference.tensor, rtol=0, atol=0)


def test_saved_programs_keep_their_shape_value_steps(monkeypatch):
    model = random_gpt("float32")
    decode = generate.compile_decode(model)
    program = program_of(decode)
    loaded = Program.deserialize(program.serialize())
    assert [s.kind for s in loaded.steps] == [s.kind for s in program.steps]
    token = torch.tensor([[3]], dtype=torch.int32)
    caches = [torch.randn(2, 1, 2, 4, 8) for _ in range(2)]
    memrefs = [MemRefValue(token, ScalarTypeCode.i32, PointerType.device)]
    memrefs += [MemRefValue(c, ScalarTypeCode.f32, PointerType.device) for c in caches]
    for a, b in zip(program.run(memrefs), loaded.run(memrefs)):
        # Saving stores constants contiguous, so a product may round differently.
        torch.testing.assert_close(a.tensor, b.tensor, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Weights stored as matrices


# 20 static rows, more than oneDNN prepacks for (matmul.PREPACK_MAX_ROWS): copied (in, out); dynamic: a view
@pytest.mark.parametrize("static_rows", [True, False])
def test_a_tied_weight_is_held_once_and_read_as_a_matrix(static_rows):
    rows = (4, 5, 8) if static_rows else (2, (1, 2, 4), 8)
    weight = torch.randn(50, 8)

    def embed_and_project(idx, x):
        w = tp.Tensor(weight)
        return tp.gather(w, 0, idx), x @ tp.transpose(w, 0, 1)

    args = [tp.InputInfo((3,), dtype=tp.int32), tp.InputInfo(rows, dtype=tp.float32)]
    compiled = tp.compile(embed_and_project, args=args)
    program = program_of(compiled)
    storages = {t.untyped_storage().data_ptr() for t in program.constants.values()}
    assert len(storages) == 1
    (matmul,) = [s for s in program.steps if s.kind == "MatrixMultiply"]
    matrix = program.constants[matmul.inputs[1]]
    assert matrix.shape == (8, 50) and matrix.is_contiguous() == static_rows
    idx, x = torch.tensor([0, 49, 7], dtype=torch.int32), torch.randn(rows[0], 5 if static_rows else 2, 8)
    out_rows, logits = compiled(on_device(idx), on_device(x))
    torch.testing.assert_close(torch.from_dlpack(out_rows), weight[idx.long()], rtol=0, atol=0)
    torch.testing.assert_close(torch.from_dlpack(logits), x @ weight.T)


def test_a_weight_with_a_batch_of_its_own_is_left_as_it_is():
    weight = torch.randn(2, 8, 5)
    compiled = tp.compile(lambda x: x @ tp.Tensor(weight), args=[tp.InputInfo((2, 3, 8), dtype=tp.float32)])
    (matmul,) = [s for s in program_of(compiled).steps if s.kind == "MatrixMultiply"]
    assert program_of(compiled).constants[matmul.inputs[1]].shape == (2, 8, 5)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(torch.from_dlpack(compiled(on_device(x))), x @ weight)


# ----------------------------------------------------------------------------------------------
# static.py's arithmetic


def test_affine_forms_cancel_and_bounds_decide_max_and_min():
    symbols = static.Symbols()
    n = symbols.new(1, 10, source=(0, 0))
    bounds = symbols.bounds
    assert static.add(static.add(n, 1), n, -1) == 1  # (n + 1) - n
    assert static.maximum(static.add(n, -1), 0, bounds) == static.add(n, -1)  # n >= 1
    assert static.minimum(n, 10, bounds) == n
    assert static.maximum(n, 5, bounds) is None  # n may be either side of 5
    assert static.compare(n, 0, bounds) == 1 and static.compare(n, n, bounds) == 0
    assert static.divide(static.mul(n, 4), 2, floor=True) == static.mul(n, 2)
    assert static.divide(n, 2, floor=True) is None  # not exact
    assert static.divide(-7, 2, floor=True) == -4 and static.divide(-7, 2, floor=False) == -3
    assert static.mul(n, n) is None


def test_equally_named_dimensions_share_a_symbol():
    symbols = static.Symbols()
    from torch_executor.program import InputSpec

    spec = InputSpec("f32", min_shape=[1, 2], max_shape=[9, 2], dimension_names={0: "n"})
    a, b = symbols.of_input(0, spec, 2), symbols.of_input(1, spec, 2)
    assert a.shape == b.shape and isinstance(a.shape[0], static.Sym) and a.shape[1] == 2


@pytest.mark.parametrize("size", [1, 2, 4])
def test_a_dimension_size_input_is_a_symbol_too(monkeypatch, size):
    def ones_like_rows(x, s):
        return tp.reshape(x, (-1, s)), tp.ones((s + 1, 2))

    args = [tp.InputInfo(shape=(3, 4), dtype=tp.float32), tp.DimensionInputInfo(value_bounds=(1, 2, 4))]
    program, inferred = unsimplified(monkeypatch, lambda f: tp.compile(f, args=args), ones_like_rows)
    check_facts(program, inferred, [torch.randn(3, 4), torch.tensor(size, dtype=torch.int32)])
    compiled = tp.compile(ones_like_rows, args=args)
    rows, ones = compiled(on_device(torch.arange(12.0).reshape(3, 4)), tp.DimensionSize(size))
    assert torch.from_dlpack(rows).shape == (12 // size, size) and torch.from_dlpack(ones).shape == (size + 1, 2)
