"""quantization.py: offline calibration text, ModelOpt 0.47 configs, and Tripy-layout tensors whose
quantized-linear math (quantization_fixtures.reference_quantized_linear) reproduces ModelOpt's fake-quantized
transformers model."""

import copy
import functools
import os
import subprocess
import sys
import types

import pytest
import torch

import quantization as q
from helpers import REPO_ROOT
from quantization_fixtures import (
    ActivationTieProbe,
    calibration_batches,
    reference_fake_quantize,
    reference_gpt2_logits,
    reference_quantize,
    relative_max_error,
    tiny_gpt2,
)
from tokenizer import load_encoding

SEEDS = (0, 1)
# Logits of the reference vs ModelOpt, max |difference| / max |logit|. Weight-only modes compute
# the same products in a different order: fp32 rounding (measured <= 1e-6).
FP32_TOLERANCE = 1e-5
LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@functools.lru_cache(maxsize=None)
def quantized(quant_mode, seed):
    """(calibrated ModelOpt model, Tripy state dict, calibration data), once per mode and seed. The state
    dict is read from a copy of the model, which tripy_quantized_state_dict consumes."""
    model = tiny_gpt2(seed)
    calib = calibration_batches(model.config.vocab_size)
    mode = q.QUANT_MODES[quant_mode]
    q.modelopt_quantize(model, mode, calib.batches)
    return model, q.tripy_quantized_state_dict(copy.deepcopy(model), mode), calib


def eval_ids(model, seed):
    """Token ids unlike the calibration text: random, two sequences."""
    return torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(100 + seed))


# ----------------------------------------------------------------------------------------------
# Calibration text


def test_default_calibration_text_ships_with_python():
    texts = q.load_calibration_texts()
    assert len(texts) > 50
    assert all(isinstance(t, str) and t.strip() for t in texts)
    assert texts == q.load_calibration_texts()  # deterministic order
    assert any("assert" in t for t in texts)


def test_calibration_file_is_split_into_paragraphs(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("First paragraph,\nstill first.\n\n\n  Second one.  \r\n\r\nThird.\n", encoding="utf-8")
    assert q.load_calibration_texts(path) == ["First paragraph,\nstill first.", "Second one.", "Third."]
    assert q.load_calibration_texts(str(path)) == q.load_calibration_texts(path)


@pytest.mark.parametrize(
    "content, expected",
    [(None, "does not exist"), ("", "holds no text"), ("  \n\n \t\n", "holds no text"), (b"\xff\xfe\x00", "not UTF-8")],
)
def test_bad_calibration_file_is_one_clear_error(tmp_path, content, expected):
    path = tmp_path / "calib.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ValueError) as info:
        q.load_calibration_texts(path)
    assert isinstance(info.value, q.CalibrationDataError)
    message = str(info.value)
    assert expected in message and str(path) in message and "\n" not in message


def test_calibration_directory_is_an_error(tmp_path):
    with pytest.raises(q.CalibrationDataError, match="not a regular file"):
        q.load_calibration_texts(tmp_path)


def test_calibration_batches_count_samples_and_tokens():
    samples = [[1, 2, 3, 4], [], [5, 6], [7, 8, 9, 10], [11, 12, 13, 14], [15, 16, 17, 18]]
    data = q.make_calibration_batches(samples, batch_size=2, text_source="test")
    # Equal lengths share a batch (no padding), in the text's order, at most batch_size rows.
    assert [b.tolist() for b in data.batches] == [[samples[0], samples[3]], [samples[4], samples[5]], [samples[2]]]
    assert all(b.dtype == torch.long for b in data.batches)
    assert (data.num_samples, data.num_tokens) == (5, 18)
    assert data.summary() == "5 samples, 18 tokens" and data.text_source == "test"
    single = q.make_calibration_batches(samples, batch_size=1)
    assert [tuple(b.shape) for b in single.batches] == [(1, 4)] * 4 + [(1, 2)]
    with pytest.raises(q.CalibrationDataError, match="no tokens"):
        q.make_calibration_batches([[], []])


def paragraphs_file(tmp_path, texts):
    path = tmp_path / "calib.txt"
    path.write_text("\n\n".join(texts))
    return path


def test_calibration_samples_are_equal_length_chunks_of_the_text(tiny_checkpoint, tmp_path):
    encoding = load_encoding(tiny_checkpoint, is_directory=True)
    texts = ["one two three four five", "six seven", "eight nine ten eleven twelve thirteen"]
    data = q.calibration_data(encoding, paragraphs_file(tmp_path, texts), num_samples=3, max_length=6)
    stream = encoding.encode("\n\n".join(texts) + "\n\n")
    assert [row.tolist() for batch in data.batches for row in batch] == [stream[0:6], stream[6:12], stream[12:18]]
    assert (data.num_samples, data.num_tokens, len(data.batches)) == (3, 18, 1)  # one batch: AWQ searches once
    short = q.calibration_data(encoding, paragraphs_file(tmp_path, ["tiny"]), num_samples=4, max_length=64)
    assert short.num_samples == 1 and short.num_tokens == len(encoding.encode("tiny\n\n"))
    assert short.text_source == f"'{tmp_path / 'calib.txt'}'"


def test_calibration_tokens_are_in_the_engine_cache_key(tiny_checkpoint, tmp_path):
    encoding = load_encoding(tiny_checkpoint, is_directory=True)

    def key(calib_file, samples, mode="float8"):
        return q.Quantization(q.QUANT_MODES[mode], q.calibration_data(encoding, calib_file, samples, 16)).cache_key()

    other = paragraphs_file(tmp_path, q.load_calibration_texts()[1:])
    assert key(None, 2) == key(None, 2)
    assert key(None, 2) != key(None, 3)
    assert key(None, 2) != key(other, 2)
    assert key(None, 2) != key(None, 2, "int8-weight-only")


def test_a_mode_that_cannot_quantize_the_model_is_refused_before_calibrating(tiny_checkpoint):
    from checkpoint import open_checkpoint

    checkpoint = open_checkpoint(tiny_checkpoint)  # n_embd 64: not a multiple of int4's 128-input blocks
    with pytest.raises(q.QuantizationError, match=r"the embedding size of '.*' \(64\) is not a multiple of 128"):
        q.prepare(checkpoint, q.QUANT_MODES["int4-weight-only"])
    assert q.prepare(checkpoint, None) is None
    assert q.prepare(checkpoint, q.QUANT_MODES["int8-weight-only"], num_samples=1).calibration.num_samples == 1


# ----------------------------------------------------------------------------------------------
# ModelOpt configuration and calibration


def enabled_quantizers(model):
    return {name for name, m in model.named_modules() if name.endswith("quantizer") and m.is_enabled}


@pytest.mark.parametrize("quant_mode", list(q.QUANT_MODES))
def test_quantizers_per_mode(quant_mode):
    model, _, _ = quantized(quant_mode, 0)
    layers = [f"transformer.h.{i}.{linear}" for i in range(model.config.n_layer) for linear in LINEARS]
    expected = {f"{layer}.weight_quantizer" for layer in layers}
    if quant_mode == "float8":
        layers.append("lm_head")
        expected = {f"{layer}.{kind}_quantizer" for layer in layers for kind in ("weight", "input")}
    assert enabled_quantizers(model) == expected  # nothing on LayerNorms, embeddings, outputs, attention

    c_fc = model.transformer.h[0].mlp.c_fc
    wq = c_fc.weight_quantizer
    if quant_mode == "int8-weight-only":
        assert (wq.num_bits, wq.axis, wq.block_sizes) == (8, 0, None)
        assert wq.amax.shape == (c_fc.out_features, 1)
    elif quant_mode == "int4-weight-only":
        assert wq.num_bits == 4 and wq.block_sizes[-1] == q.QUANT_MODES["int4-weight-only"].block_size
        assert c_fc.input_quantizer.pre_quant_scale is not None  # AWQ ran
    else:
        for quantizer in (wq, c_fc.input_quantizer, model.lm_head.weight_quantizer, model.lm_head.input_quantizer):
            assert quantizer.num_bits == (4, 3) and quantizer.amax.numel() == 1


def test_calibration_shows_progress_on_stderr(capsys):
    model = tiny_gpt2(0, n_layer=1)
    q.modelopt_quantize(
        model, q.QUANT_MODES["int4-weight-only"], calibration_batches(model.config.vocab_size, 3).batches
    )
    out, err = capsys.readouterr()
    assert "calibrating int4-weight-only (pass 1/2)" in err and "(pass 2/2)" in err and "3/3" in err
    assert out == "" and "awq_lite" not in err and "Inserted" not in err  # ModelOpt's own notes are quiet


@pytest.mark.parametrize("quant_mode", list(q.QUANT_MODES))
def test_calibrating_without_the_logits_calibrates_what_the_whole_model_does(monkeypatch, quant_mode):
    """The forward loop runs lm_head only where the mode quantizes it, a sample at a time: the scales
    are bit for bit those of a loop that runs the whole model on each batch."""
    _, ours, calib = quantized(quant_mode, 0)
    assert max(batch.shape[0] for batch in calib.batches) > 1

    def whole_model_loop(batches, mode, num_passes):
        def forward_loop(model):
            with torch.no_grad():
                for batch in batches:
                    model(batch)

        return forward_loop

    monkeypatch.setattr(q, "_progress_forward_loop", whole_model_loop)
    model, mode = tiny_gpt2(0), q.QUANT_MODES[quant_mode]
    q.modelopt_quantize(model, mode, calib.batches)
    theirs = q.tripy_quantized_state_dict(model, mode)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)


@pytest.mark.parametrize("quant_mode", list(q.QUANT_MODES))
def test_calibration_runs_what_it_calibrates_in_the_smallest_pieces_that_keep_the_scales(quant_mode):
    """lm_head where it is quantized, a sample at a time; the body on whole batches where activations
    are calibrated (float8's inputs, AWQ's search, two passes), else a sample at a time."""
    model = tiny_gpt2(0, n_layer=1)
    body, head = [], []
    model.transformer.register_forward_pre_hook(lambda module, args: body.append(args[0].shape[0]))
    model.lm_head.register_forward_pre_hook(lambda module, args: head.append(args[0].shape[0]))
    calib = calibration_batches(model.config.vocab_size)
    q.modelopt_quantize(model, q.QUANT_MODES[quant_mode], calib.batches)
    batches = [batch.shape[0] for batch in calib.batches]
    assert body == {"int8-weight-only": [1] * calib.num_samples, "float8": batches}.get(quant_mode, batches * 2)
    assert head == ([1] * calib.num_samples if quant_mode == "float8" else [])


def test_a_calibrated_model_is_freed_once_dropped():
    """In a process of its own, so that calibration imports ModelOpt: that import must keep no frame
    of the code that called it (pulp, which ModelOpt imports, keeps tracebacks)."""
    script = (
        "import gc, sys, weakref\n"
        f"sys.path[:0] = [{REPO_ROOT!r}, {os.path.join(REPO_ROOT, 'tests')!r}]\n"
        "import helpers, quantization as q, quantization_fixtures as f\n"
        "model = f.tiny_gpt2(0, n_layer=1)\n"
        "freed = weakref.ref(model)\n"
        "q.modelopt_quantize(model, q.QUANT_MODES['int8-weight-only'], f.calibration_batches(384, 2).batches)\n"
        "del model\n"
        "gc.collect()\n"
        "assert freed() is None, 'the calibrated model is still alive'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_calibration_maps_its_large_allocations_and_sets_the_threshold_after(monkeypatch):
    """Every forward pass of calibration runs with glibc mapping allocations of CALIBRATION_MMAP_THRESHOLD or
    more on their own (freed, they go back to the system); afterwards the threshold is glibc's upper bound,
    also when calibrating fails."""
    calls = []
    glibc = types.SimpleNamespace(mallopt=lambda param, value: calls.append((param, value)) or 1)
    monkeypatch.setattr(q, "_glibc", lambda: glibc)
    thresholds_seen = []
    real_loop = q._progress_forward_loop

    def loop(*args):
        forward_loop = real_loop(*args)

        def recorded(model):
            thresholds_seen.append(calls[-1])
            return forward_loop(model)

        return recorded

    monkeypatch.setattr(q, "_progress_forward_loop", loop)
    q.modelopt_quantize(tiny_gpt2(0, n_layer=1), q.QUANT_MODES["int4-weight-only"], calibration_batches(384, 2).batches)
    during, after = (q.M_MMAP_THRESHOLD, 8 << 20), (q.M_MMAP_THRESHOLD, 32 << 20)
    assert thresholds_seen == [during, during]  # AWQ's two passes
    assert calls == [during, after]

    calls.clear()
    with pytest.raises(RuntimeError):
        with q.large_allocations_mapped():
            raise RuntimeError("calibration failed")
    assert calls == [during, after]


def test_without_glibc_the_heap_is_left_alone_and_calibration_still_runs(monkeypatch):
    monkeypatch.setattr(q, "_glibc", lambda: None)
    ran = []
    with q.large_allocations_mapped():
        ran.append(True)
    q.hand_back_freed_heap()
    assert ran == [True]


def test_glibc_is_found_where_the_c_library_is_glibc():
    if not os.path.exists("/proc/self/maps") or "libc.so.6" not in open("/proc/self/maps").read():
        pytest.skip("this process's C library is not glibc (no libc.so.6 mapped)")
    glibc = q._glibc()
    assert glibc is not None
    assert glibc.mallopt(q.M_MMAP_THRESHOLD, q.MMAP_THRESHOLD_AFTER) == 1  # glibc's mallopt returns 1 on success


def test_bad_arguments_are_value_errors():
    """(A model the mode cannot quantize is refused once, by prepare, before any weights are read.)"""
    model = tiny_gpt2(0, n_embd=192, n_layer=1, n_head=3)
    with pytest.raises(ValueError, match="no calibration batches"):
        q.modelopt_quantize(model, q.QUANT_MODES["float8"], [])
    with pytest.raises(ValueError, match="no quantized linear layers"):
        q.tripy_quantized_state_dict(tiny_gpt2(0, n_layer=1), q.QUANT_MODES["float8"])


# ----------------------------------------------------------------------------------------------
# Tripy's tensors


@pytest.mark.parametrize("quant_mode", list(q.QUANT_MODES))
def test_state_dict_layouts(quant_mode):
    model, state, _ = quantized(quant_mode, 0)
    n, inner, vocab = model.config.n_embd, 4 * model.config.n_embd, model.config.vocab_size
    shapes = {"attn.c_attn": (n, 3 * n), "attn.c_proj": (n, n), "mlp.c_fc": (n, inner), "mlp.c_proj": (inner, n)}
    suffixes = set()
    for linear, (fan_in, fan_out) in shapes.items():
        name = f"transformer.h.1.{linear}"
        assert state[f"{name}.bias"].shape == (fan_out,)
        if quant_mode == "int8-weight-only":
            assert state[f"{name}.weight"].shape == (fan_out, fan_in)
            assert state[f"{name}.weight_scale"].shape == (fan_out,)
        elif quant_mode == "int4-weight-only":
            assert state[f"{name}.weight"].shape == (fan_in, fan_out)
            assert state[f"{name}.weight_scale"].shape == (fan_in // 128, fan_out)
        else:
            assert state[f"{name}.weight"].shape == (fan_out, fan_in)
            assert state[f"{name}.weight_scale"].shape == state[f"{name}.input_scale"].shape == ()
        suffixes |= {k[len(name) + 1 :] for k in state if k.startswith(name + ".")}
    expected = {"weight", "bias", "weight_scale"} | {
        "int8-weight-only": set(),
        "int4-weight-only": {"pre_quant_scale"},
        "float8": {"input_scale"},
    }[quant_mode]
    assert suffixes == expected

    hf_keys = set(tiny_gpt2(0).state_dict())
    assert hf_keys <= set(state)
    extra = {k for k in state if k not in hf_keys}
    assert all(k.endswith(("_scale",)) for k in extra)
    assert state["lm_head.weight"].shape == (vocab, n)
    assert ("lm_head.weight_scale" in state) == ("lm_head.input_scale" in state) == (quant_mode == "float8")
    assert all(v.dtype == torch.float32 for v in state.values())


def test_awq_pre_quant_scales_are_folded_or_explicit():
    model, state, _ = quantized("int4-weight-only", 0)
    block = model.transformer.h[1]
    for linear, norm in ((block.attn.c_attn, block.ln_1), (block.mlp.c_fc, block.ln_2)):
        s = linear.input_quantizer.pre_quant_scale
        prefix = "transformer.h.1." + ("ln_1" if norm is block.ln_1 else "ln_2")
        torch.testing.assert_close(state[f"{prefix}.weight"], norm.weight * s, rtol=0, atol=0)
        torch.testing.assert_close(state[f"{prefix}.bias"], norm.bias * s, rtol=0, atol=0)
    for name, linear in (("attn.c_proj", block.attn.c_proj), ("mlp.c_proj", block.mlp.c_proj)):
        s = state[f"transformer.h.1.{name}.pre_quant_scale"]
        assert not torch.allclose(s, torch.ones_like(s))
        torch.testing.assert_close(s, linear.input_quantizer.pre_quant_scale, rtol=0, atol=0)
    assert not any(k.endswith(("c_attn.pre_quant_scale", "c_fc.pre_quant_scale")) for k in state)


@pytest.mark.parametrize("quant_mode", list(q.QUANT_MODES))
def test_weights_requantize_to_modelopt_codes(quant_mode):
    """Tripy's quantize of the stored weight with the stored scale gives ModelOpt's fake-quantized weight."""
    model, state, _ = quantized(quant_mode, 0)
    for name in [f"transformer.h.{i}.{linear}" for i in range(model.config.n_layer) for linear in LINEARS]:
        module = model.get_submodule(name)
        with torch.no_grad():
            theirs = module.weight_quantizer(module.weight)
        dim = 0 if quant_mode == "int8-weight-only" else None
        ours = reference_fake_quantize(state[f"{name}.weight"], state[f"{name}.weight_scale"], quant_mode, dim)
        if quant_mode == "int4-weight-only":
            ours = ours.t()
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


def test_the_state_dict_releases_each_weight_it_copies():
    """So that a quantized weight and its fake-quantized copy are not both held for every layer."""
    model = tiny_gpt2(0, n_layer=1)
    mode = q.QUANT_MODES["int8-weight-only"]
    q.modelopt_quantize(model, mode, calibration_batches(model.config.vocab_size, 2).batches)
    linears = q._quantized_linears(model)
    q.tripy_quantized_state_dict(model, mode)
    assert linears and all(module.weight.numel() == 0 for _, module in linears)


def test_int4_layout_is_tripys_blockwise_quantization():
    """nvtripy's own quantize/dequantize (blocks along dim 0) on [in, out] and [in/128, out] == ModelOpt's blocks."""
    import nvtripy as tp

    model, state, _ = quantized("int4-weight-only", 0)
    name = "transformer.h.0.mlp.c_proj"  # in = 1024: eight blocks per output column
    weight, scale = state[f"{name}.weight"], state[f"{name}.weight_scale"]
    tp_weight = tp.dequantize(tp.quantize(tp.Tensor(weight), tp.Tensor(scale), tp.int4), tp.Tensor(scale), tp.float32)
    module = model.get_submodule(name)
    with torch.no_grad():
        theirs = module.weight_quantizer(module.weight).t()
    torch.testing.assert_close(torch.from_dlpack(tp_weight), theirs, rtol=1e-6, atol=0)


def test_reference_quantize_rounds_half_to_even_and_saturates():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 300.0, -300.0])
    one = torch.tensor(1.0)
    assert reference_quantize(x, one, "int8-weight-only").tolist() == [0, 2, 2, 0, -2, 127, -128]
    assert reference_quantize(x, one, "int4-weight-only").tolist() == [0, 2, 2, 0, -2, 7, -8]
    fp8 = reference_quantize(torch.tensor([1000.0, -1000.0, 17.0, 19.0]), one, "float8")
    assert fp8.dtype == torch.float8_e4m3fn and fp8.float().tolist() == [448.0, -448.0, 16.0, 20.0]
    w = torch.arange(8.0).reshape(4, 2)
    assert reference_fake_quantize(w, torch.tensor([1.0, 2.0, 4.0, 8.0]), "int8-weight-only", dim=0).equal(
        torch.tensor([[0.0, 1.0], [2.0, 4.0], [4.0, 4.0], [8.0, 8.0]])
    )
    blocks = reference_fake_quantize(w, torch.tensor([[1.0, 1.0], [4.0, 4.0]]), "int4-weight-only")
    assert blocks.equal(torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 4.0], [8.0, 8.0]]))


# ----------------------------------------------------------------------------------------------
# The reference forward on Tripy's tensors reproduces ModelOpt's fake-quantized model


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("quant_mode", ["int8-weight-only", "int4-weight-only"])
def test_weight_only_logits_match_modelopt(quant_mode, seed):
    model, state, _ = quantized(quant_mode, seed)
    ids = eval_ids(model, seed)
    with torch.no_grad():
        theirs = model(ids).logits
        ours = reference_gpt2_logits(state, model.config, quant_mode, ids)
    assert relative_max_error(ours, theirs) <= FP32_TOLERANCE


@pytest.mark.parametrize("seed", SEEDS)
def test_float8_logits_match_modelopt_up_to_activation_ties(seed):
    """Exact to fp32 rounding at every position before the first activation that the two round differently.

    Such ties are rare (asserted below), but past one the two forwards drift by about the size of
    the fp8 quantization error itself, so only the positions before it are compared closely.
    """
    model, state, _ = quantized("float8", seed)
    ids = eval_ids(model, seed)
    probe = ActivationTieProbe(model, ids)
    with torch.no_grad():
        ours = reference_gpt2_logits(state, model.config, "float8", ids, tie_probe=probe)
    theirs = probe.modelopt_logits
    assert probe.ties <= 1e-4 * probe.elements
    scale = theirs.abs().max()
    compared = 0
    for b, first_tie in enumerate(probe.first_tie):
        if first_tie > 0:
            assert (ours[b, :first_tie] - theirs[b, :first_tie]).abs().max() / scale <= FP32_TOLERANCE
            compared += first_tie
    assert compared >= ids.numel() // 4  # ties are rare: most positions precede any
    if all(t == ids.shape[1] for t in probe.first_tie):
        assert relative_max_error(ours, theirs) <= FP32_TOLERANCE


def test_dropping_awq_pre_quant_scale_visibly_changes_logits():
    model, state, _ = quantized("int4-weight-only", 0)
    ids = eval_ids(model, 0)
    hf = model.state_dict()
    dropped = {k: v for k, v in state.items() if not k.endswith(".pre_quant_scale")}
    for key in state:
        if ".ln_1." in key or ".ln_2." in key:
            dropped[key] = hf[key].float()  # the LayerNorms without AWQ's scales folded in
    with torch.no_grad():
        theirs = model(ids).logits
        kept = relative_max_error(reference_gpt2_logits(state, model.config, "int4-weight-only", ids), theirs)
        lost = relative_max_error(reference_gpt2_logits(dropped, model.config, "int4-weight-only", ids), theirs)
    assert kept <= FP32_TOLERANCE
    assert lost > 1e-2 and lost > 1000 * kept
