"""weight_loader.py: config from config.json, key-for-key copy, one clear error for a bad checkpoint."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import nvtripy as tp
import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

import weight_loader
from model import GPT
from weight_loader import CheckpointError


def load(directory, dtype=tp.float32):
    model = GPT(weight_loader.gpt_config_from_hf(weight_loader.load_hf_config(directory), dtype=dtype))
    weight_loader.load_weights_from_hf(model, directory, dtype)
    return model


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
    config = weight_loader.gpt_config_from_hf(weight_loader.load_hf_config(directory), seq_len=20)
    hf = hf_model.config
    assert (config.num_layers, config.num_heads, config.embedding_size) == (hf.n_layer, hf.n_head, hf.n_embd)
    assert (config.vocab_size, config.block_size, config.seq_len) == (hf.vocab_size, hf.n_positions, 20)
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
    def add_masks(weights):
        weights["transformer.h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))
        weights["transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)

    load(copy_checkpoint(tiny_checkpoint, tmp_path, add_masks))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights(tiny_checkpoint, tmp_path, damage):
    directory = copy_checkpoint(tiny_checkpoint, tmp_path)
    path = os.path.join(directory, "model.safetensors")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] if damage == "truncated" else b"\x00not a safetensors file" * 40)
    with pytest.raises(CheckpointError, match="cannot read the weights"):
        load(directory)


def test_checkpoints_that_are_not_gpt2(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        weight_loader.load_hf_config(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        weight_loader.load_hf_config(str(empty))
    (empty / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a GPT-2 checkpoint"):
        weight_loader.load_hf_config(str(empty))
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        weight_loader.load_hf_config(str(empty))
    GPT2Config(n_layer=1, n_embd=8, n_head=2, activation_function="relu").save_pretrained(str(empty))
    with pytest.raises(CheckpointError, match="activation_function=relu"):
        weight_loader.load_hf_config(str(empty))


def test_peak_memory_stays_under_twice_the_checkpoint(tmp_path):
    """The loader's peak host memory (ru_maxrss), for a 90 MB checkpoint, in fresh processes."""
    directory = str(tmp_path / "medium")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=6, n_head=8, n_embd=512, n_positions=256, vocab_size=8192)).save_pretrained(directory)
    out = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "benchmarks", "loader_memory.py"), "--checkpoint", directory, "--json"],
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
