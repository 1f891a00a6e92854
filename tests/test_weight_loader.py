"""weight_loader.py: the GPT's config from the checkpoint's, key-for-key copy, one clear error for bad weights,
and quantized models that compute ModelOpt's."""

import gc
import json
import os
import pickle
import shutil
import subprocess
import sys

import nvtripy as tp
import pytest
import torch
from helpers import REPO_ROOT
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

import make_tiny_checkpoint
import weight_loader
from checkpoint import CheckpointError, open_checkpoint
from model import GPT


def load(directory, dtype=tp.float32):
    return weight_loader.load_model(open_checkpoint(directory), dtype)


def copy_checkpoint(source, tmp_path, edit_weights=None):
    """A copy of `source` whose safetensors weights went through edit_weights(dict) first."""
    target = str(tmp_path / "checkpoint")
    shutil.copytree(source, target)
    if edit_weights is not None:
        weights = load_file(os.path.join(target, "model.safetensors"))
        edit_weights(weights)
        save_file(weights, os.path.join(target, "model.safetensors"), metadata={"format": "pt"})
    return target


def test_config_comes_from_config_json(parity_checkpoints):
    directory, hf_model = parity_checkpoints["eps"]
    config = weight_loader.gpt_config(open_checkpoint(directory))
    hf = hf_model.config
    assert (config.num_layers, config.num_heads, config.embedding_size) == (hf.n_layer, hf.n_head, hf.n_embd)
    assert (config.vocab_size, config.block_size) == (hf.vocab_size, hf.n_positions)
    assert config.layer_norm_epsilon == hf.layer_norm_epsilon == 1e-3


def test_weights_are_copied_transposed_and_tied(parity_checkpoints):
    directory, hf_model = parity_checkpoints["odd"]
    state = load(directory).state_dict()
    theirs = hf_model.state_dict()
    assert set(state) == set(theirs)
    for key, param in state.items():
        expected = theirs[key].t() if key.endswith(weight_loader.TRANSPOSED) else theirs[key]
        assert torch.equal(torch.from_dlpack(param), expected), key
    assert state["lm_head.weight"] is state["transformer.wte.weight"]


def test_dtype_is_converted(tiny_checkpoint):
    state = load(tiny_checkpoint, tp.float16).state_dict()
    assert {param.dtype for param in state.values()} == {tp.float16}


def test_pytorch_model_bin_loads_too(tiny_checkpoint, tmp_path):
    """Older checkpoints have pytorch_model.bin: transformers reads it with torch.load(weights_only=True)."""
    directory = copy_checkpoint(tiny_checkpoint, tmp_path)
    os.remove(os.path.join(directory, "model.safetensors"))
    weights = load_file(os.path.join(tiny_checkpoint, "model.safetensors"))
    torch.save(weights, os.path.join(directory, "pytorch_model.bin"))
    state = load(directory).state_dict()
    assert torch.equal(torch.from_dlpack(state["transformer.wpe.weight"]), weights["transformer.wpe.weight"])


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Payload.marker}",))


def test_a_pickle_that_runs_code_is_refused(tiny_checkpoint, tmp_path):
    directory = copy_checkpoint(tiny_checkpoint, tmp_path)
    os.remove(os.path.join(directory, "model.safetensors"))
    Payload.marker = str(tmp_path / "pwned")
    with open(os.path.join(directory, "pytorch_model.bin"), "wb") as f:
        pickle.dump({"transformer.wte.weight": Payload()}, f)
    with pytest.raises(CheckpointError, match="cannot read the weights"):
        load(directory)
    assert not os.path.exists(Payload.marker)


def test_missing_extra_and_misshaped_weights_are_named_in_one_message(tiny_checkpoint, tmp_path):
    def damage(weights):
        del weights["transformer.h.1.mlp.c_fc.bias"]
        weights["transformer.h.7.attn.c_proj.weight"] = torch.zeros(64, 64)
        weights["transformer.ln_f.weight"] = torch.ones(65)
        weights["transformer.h.0.attn.c_attn.weight"] = torch.zeros(64, 190)

    directory = copy_checkpoint(tiny_checkpoint, tmp_path, damage)
    with pytest.raises(CheckpointError) as error:
        load(directory)
    message = str(error.value)
    assert "\n" not in message
    assert "missing transformer.h.1.mlp.c_fc.bias" in message
    assert "extra transformer.h.7.attn.c_proj.weight" in message
    assert "transformer.ln_f.weight (checkpoint (65,), expected (64,))" in message
    assert "transformer.h.0.attn.c_attn.weight (checkpoint (64, 190), expected (64, 192))" in message


def test_old_checkpoints_causal_mask_buffers_are_ignored(tiny_checkpoint, tmp_path):
    """Old checkpoints store each layer's causal mask. Masks that would hide every key, if they were
    used, leave the logits exactly as they are without them: the model computes its own."""

    def add_masks(weights):
        weights["transformer.h.0.attn.bias"] = torch.zeros(1, 1, 128, 128)
        weights["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)

    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with_masks = tripy_logits(load(copy_checkpoint(tiny_checkpoint, tmp_path, add_masks)), ids)
    assert torch.equal(with_masks, tripy_logits(load(tiny_checkpoint), ids))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights(tiny_checkpoint, tmp_path, damage):
    directory = copy_checkpoint(tiny_checkpoint, tmp_path)
    path = os.path.join(directory, "model.safetensors")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] if damage == "truncated" else b"\x00not a safetensors file" * 40)
    with pytest.raises(CheckpointError, match="cannot read the weights"):
        load(directory)


def test_peak_memory_stays_under_twice_the_checkpoint(tmp_path):
    """The loader's peak host memory (ru_maxrss), for a 90 MB checkpoint, in fresh processes."""
    directory = str(tmp_path / "medium")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=6, n_head=8, n_embd=512, n_positions=256, vocab_size=8192)).save_pretrained(
        directory
    )
    make_tiny_checkpoint.write_tokenizer(directory)
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "benchmarks", "loader_memory.py"),
            "--checkpoint",
            directory,
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out)
    size_mib = result["checkpoint_mib"]
    assert size_mib > 80
    for dtype in ("float32", "float16"):
        growth = result[dtype]["peak_mib"] - result[dtype]["before_mib"]
        assert growth < 2 * size_mib, f"{dtype}: loading grew the peak by {growth:.0f} MiB for {size_mib:.0f} MiB"


# --- quantized loading: the Tripy model computes ModelOpt's fake-quantized model ------------------------

import functools  # noqa: E402

import quantization  # noqa: E402
from helpers import QUANT_CONFIGS  # noqa: E402
from quantization import QUANT_MODES  # noqa: E402
from quantization_fixtures import ActivationTieProbe, calibration_batches, reference_gpt2_logits  # noqa: E402

# max |Tripy logit - ModelOpt logit| / max |ModelOpt logit|, for the same calibration and input. In
# float32 the two compute the same products in another order: fp32 rounding (measured <= 9e-7). In
# float16 (weight-only modes) the Tripy model rounds every activation to fp16, as the unquantized
# model does (measured 1.2e-3 to 1.5e-3, and 1.2e-3 unquantized).
FP32_TOLERANCE = 1e-5
FP16_TOLERANCE = 5e-3
# float8 past an activation tie (see its test): measured 9.5e-3 and 3.5e-2; fp8's own error is ~1e-1.
FLOAT8_DRIFT = 1e-1


def eval_ids(vocab_size, seed):
    """Two random sequences, unlike the calibration text."""
    return torch.randint(0, vocab_size, (2, 40), generator=torch.Generator().manual_seed(100 + seed))


def calibration(directory):
    return calibration_batches(GPT2Config.from_pretrained(directory).vocab_size, num_samples=4, max_length=48)


@functools.lru_cache(maxsize=None)
def modelopt_model(directory, quant_mode):
    """ModelOpt's fake-quantized transformers model of the checkpoint, calibrated as the loader is."""
    model = GPT2LMHeadModel.from_pretrained(directory).eval()
    return quantization.modelopt_quantize(model, QUANT_MODES[quant_mode], calibration(directory).batches)


@functools.lru_cache(maxsize=None)
def quantized_gpt(directory, quant_mode, dtype=tp.float32):
    quant = quantization.Quantization(QUANT_MODES[quant_mode], calibration(directory))
    model = weight_loader.load_model(open_checkpoint(directory), dtype, quant)
    assert quant.calibration_seconds > 0
    return model


def tripy_logits(model, ids):
    compiled = tp.compile(model, args=[tp.InputInfo(tuple(ids.shape), dtype=tp.int32)])
    return torch.from_dlpack(compiled(tp.copy(tp.Tensor(ids.to(torch.int32)), tp.device("gpu")))).float()


def relative_error(ours, theirs):
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.mark.parametrize("name", list(QUANT_CONFIGS))
@pytest.mark.parametrize("quant_mode", ["int8-weight-only", "int4-weight-only"])
def test_weight_only_logits_match_modelopt(quant_checkpoints, name, quant_mode):
    """int4's agreement includes AWQ's pre_quant_scales: folded into ln_1/ln_2, multiplied in c_proj."""
    directory = quant_checkpoints[name]
    ids = eval_ids(GPT2Config.from_pretrained(directory).vocab_size, 0)
    with torch.no_grad():
        theirs = modelopt_model(directory, quant_mode)(ids).logits
    error = relative_error(tripy_logits(quantized_gpt(directory, quant_mode), ids), theirs)
    print(f"{name} {quant_mode}: max |logit diff| / max |logit| = {error:.1e}")  # shown with pytest -s
    assert error <= FP32_TOLERANCE


@pytest.mark.parametrize("name", list(QUANT_CONFIGS))
def test_float8_logits_match_modelopt_until_an_activation_tie(quant_checkpoints, name):
    """Equal to fp32 rounding at every position of a sequence before its first activation tie, and
    within fp8's own error after it.

    Tripy quantizes an activation as x / scale, ModelOpt as x * (448 / amax), and their activations
    differ in the last bits: an activation that close to a midpoint between two fp8 codes rounds to
    one code in one model and to the other in the other (quantization_fixtures.ActivationTieProbe
    finds them: about one per forward here). That activation then moves by an fp8 step, and through
    attention every later position of its sequence moves too, by about the fp8 error itself (fp8
    moves these logits by up to 10% of the largest).
    """
    directory = quant_checkpoints[name]
    modelopt = modelopt_model(directory, "float8")
    ids = eval_ids(modelopt.config.vocab_size, 0)
    # Where the ties are: the reference forward quantizes as Tripy does (x / scale) and meets them.
    probe = ActivationTieProbe(modelopt, ids)
    state = quantization.tripy_quantized_state_dict(modelopt, QUANT_MODES["float8"])
    reference_gpt2_logits(state, modelopt.config, "float8", ids, tie_probe=probe)
    theirs = probe.modelopt_logits
    ours = tripy_logits(quantized_gpt(directory, "float8"), ids)
    agree = (ours - theirs).abs().amax(-1) <= FP32_TOLERANCE * theirs.abs().max()  # [batch, position]
    print(f"{name} float8: first ties at {probe.first_tie}; overall {relative_error(ours, theirs):.1e}")
    for row, first_tie in zip(agree, probe.first_tie):
        assert row[:first_tie].all()
    assert relative_error(ours, theirs) <= FLOAT8_DRIFT


@pytest.mark.parametrize("quant_mode", ["int8-weight-only", "int4-weight-only"])
def test_float16_weight_only_logits_match_modelopt(quant_checkpoints, quant_mode):
    directory = quant_checkpoints["quant-256"]
    model = quantized_gpt(directory, quant_mode, tp.float16)
    assert {param.dtype for param in model.state_dict().values()} == {tp.float16}
    ids = eval_ids(GPT2Config.from_pretrained(directory).vocab_size, 0)
    with torch.no_grad():
        theirs = modelopt_model(directory, quant_mode)(ids).logits
    assert relative_error(tripy_logits(model, ids), theirs) <= FP16_TOLERANCE


def test_dropping_awq_pre_quant_scales_visibly_changes_the_logits(quant_checkpoints):
    """The same int4 model with AWQ's scales undone where they were applied (ln_1/ln_2 as in the
    checkpoint, pre_quant_scale all ones): far from ModelOpt's logits, where the loaded model is exact."""
    directory = quant_checkpoints["quant-256"]
    model = quantized_gpt(directory, "int4-weight-only")
    plain = GPT2LMHeadModel.from_pretrained(directory).state_dict()
    state = dict(model.state_dict())
    scales = [key for key in state if key.endswith(".pre_quant_scale")]
    assert scales and all(not torch.allclose(torch.from_dlpack(state[key]), torch.tensor(1.0)) for key in scales)
    for key in scales:
        state[key] = tp.ones(tuple(state[key].shape), dtype=tp.float32)
    for key in state:
        if ".ln_1." in key or ".ln_2." in key:
            assert not torch.equal(torch.from_dlpack(state[key]), plain[key])  # AWQ's scales were folded in
            state[key] = tp.Tensor(plain[key])
    dropped = GPT(model.config)
    dropped.load_state_dict(state)

    ids = eval_ids(plain["transformer.wte.weight"].shape[0], 0)
    with torch.no_grad():
        theirs = modelopt_model(directory, "int4-weight-only")(ids).logits
    kept = relative_error(tripy_logits(model, ids), theirs)
    lost = relative_error(tripy_logits(dropped, ids), theirs)
    print(f"int4: kept {kept:.1e}, dropped {lost:.1e}")
    assert kept <= FP32_TOLERANCE
    assert lost > 1e-2 and lost > 1000 * kept


@pytest.mark.parametrize("quant_mode", list(QUANT_MODES))
def test_quantized_lm_head_is_untied_and_the_rest_shared(quant_checkpoints, quant_mode):
    state = quantized_gpt(quant_checkpoints["quant-256"], quant_mode).state_dict()
    if quant_mode == "float8":
        assert state["lm_head.weight"] is not state["transformer.wte.weight"]  # ModelOpt's fp8-rounded copy
        assert state["lm_head.weight_scale"].shape == state["lm_head.input_scale"].shape == ()
    else:
        assert state["lm_head.weight"] is state["transformer.wte.weight"]


def test_quantized_loading_checks_the_checkpoint_before_calibrating(quant_checkpoints, tmp_path, monkeypatch):
    directory = copy_checkpoint(
        quant_checkpoints["quant-256"],
        tmp_path,
        lambda w: w.update({"transformer.h.1.mlp.c_fc.weight": torch.zeros(256, 5)}),
    )
    monkeypatch.setattr(
        quantization, "modelopt_quantize", lambda *args, **kwargs: pytest.fail("calibrated a bad checkpoint")
    )
    quant = quantization.Quantization(QUANT_MODES["int8-weight-only"], calibration(directory))
    with pytest.raises(CheckpointError) as info:
        weight_loader.load_model(open_checkpoint(directory), tp.float32, quant)
    message = str(info.value)
    assert "mis-shaped transformer.h.1.mlp.c_fc.weight (checkpoint (256, 5), expected (256, 1024))" in message
    assert "\n" not in message


# --- lm_head: the weights decide whether it is the token embedding, not config.json's tie_word_embeddings -----


def with_lm_head(source, tmp_path, lm_head, tie_word_embeddings=True):
    """A copy of the checkpoint `source` whose model.safetensors holds lm_head(wte) as lm_head.weight and
    whose config.json says tie_word_embeddings (transformers' default: true)."""
    directory = copy_checkpoint(
        source, tmp_path, lambda w: w.update({"lm_head.weight": lm_head(w["transformer.wte.weight"])})
    )
    config_path = os.path.join(directory, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    with open(config_path, "w") as f:
        json.dump({**config, "tie_word_embeddings": tie_word_embeddings}, f)
    return directory


def own_lm_head(wte):
    return torch.randn(wte.shape, generator=torch.Generator().manual_seed(7)) * wte.std()


def transformers_uses_its_own_lm_head(directory):
    """transformers' model of a with_lm_head(..., own_lm_head) checkpoint: it computes with the file's
    lm_head.weight, tied as config.json says it is."""
    hf_model = GPT2LMHeadModel.from_pretrained(directory).eval()
    assert hf_model.config.tie_word_embeddings
    assert torch.equal(
        hf_model.lm_head.weight, load_file(os.path.join(directory, "model.safetensors"))["lm_head.weight"]
    )
    assert not torch.equal(hf_model.lm_head.weight, hf_model.transformer.wte.weight)
    return hf_model


def test_an_lm_head_of_its_own_is_loaded_though_config_json_says_tied(parity_checkpoints, tmp_path):
    directory = with_lm_head(parity_checkpoints["odd"][0], tmp_path, own_lm_head)
    hf_model = transformers_uses_its_own_lm_head(directory)
    model = load(directory)
    ids = eval_ids(hf_model.config.vocab_size, 0)[:, :32]
    with torch.no_grad():
        theirs = hf_model(ids).logits
    assert (tripy_logits(model, ids) - theirs).abs().max() < 1e-4


def test_an_lm_head_of_its_own_is_quantized_as_modelopt_does(quant_checkpoints, tmp_path):
    directory = with_lm_head(quant_checkpoints["quant-256"], tmp_path, own_lm_head)
    transformers_uses_its_own_lm_head(directory)
    modelopt = modelopt_model(directory, "int8-weight-only")
    assert not torch.equal(modelopt.lm_head.weight, modelopt.transformer.wte.weight)
    ids = eval_ids(modelopt.config.vocab_size, 0)
    with torch.no_grad():
        theirs = modelopt(ids).logits
    assert relative_error(tripy_logits(quantized_gpt(directory, "int8-weight-only"), ids), theirs) <= FP32_TOLERANCE


def test_an_lm_head_equal_to_the_embedding_is_shared_though_config_json_says_untied(tiny_checkpoint, tmp_path):
    """One tensor, counted once in the weight bytes."""
    directory = with_lm_head(tiny_checkpoint, tmp_path, torch.clone, tie_word_embeddings=False)
    model = load(directory)
    state = model.state_dict()
    assert state["lm_head.weight"] is state["transformer.wte.weight"]
    assert model.weight_bytes() == sum(
        t.numel() * 4 for t in load_file(os.path.join(tiny_checkpoint, "model.safetensors")).values()
    )


def test_a_quantized_model_holds_nothing_of_the_mapped_checkpoint(quant_checkpoints, tmp_path):
    """ModelOpt copies the weights it quantizes; the file's pages would otherwise stay resident beside them.
    (A copy of the checkpoint: other tests' models may map the shared one.)"""
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc/self/maps (Linux) to see which files the process maps")
    directory = shutil.copytree(quant_checkpoints["quant-384"], tmp_path / "copy")
    model = quantized_gpt(str(directory), "int8-weight-only")
    gc.collect()
    with open("/proc/self/maps") as maps:
        assert model is not None and str(directory / "model.safetensors") not in maps.read()
