"""checkpoint.py: config.json and the tokenizer, read once and checked, and one clear error for a checkpoint
that is not a GPT-2 this model implements."""

import json
import sys

import pytest
from transformers import GPT2Config

from checkpoint import Checkpoint, CheckpointError, open_checkpoint


def test_a_checkpoint_holds_its_config_and_tokenizer(tiny_checkpoint):
    checkpoint = open_checkpoint(tiny_checkpoint)
    assert isinstance(checkpoint, Checkpoint) and checkpoint.is_local and checkpoint.source == tiny_checkpoint
    assert checkpoint.hf_config.n_positions == 128 and checkpoint.hf_config.n_embd == 64
    assert checkpoint.encoding.n_vocab == checkpoint.hf_config.vocab_size


def test_checkpoints_that_are_not_gpt2(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_checkpoint(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        open_checkpoint(str(empty))
    (empty / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a GPT-2 checkpoint"):
        open_checkpoint(str(empty))
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        open_checkpoint(str(empty))
    GPT2Config(n_layer=1, n_embd=8, n_head=2, activation_function="relu").save_pretrained(str(empty))
    with pytest.raises(CheckpointError, match="activation_function=relu"):
        open_checkpoint(str(empty))


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tiny_checkpoint, tmp_path):
    import shutil

    directory = tmp_path / "small-vocab"
    shutil.copytree(tiny_checkpoint, directory)
    config = json.loads((directory / "config.json").read_text())
    config["vocab_size"] = 100
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"has 321 tokens, more than the model's vocabulary of 100"):
        open_checkpoint(str(directory))


CONFIG_OPENS = """
import sys
sys.path.insert(0, {root!r})
opened = []
import os
sys.addaudithook(lambda event, args: event == "open" and os.path.basename(str(args[0])) == "config.json" and opened.append(args[0]))
import runpy
sys.argv = ["example.py", *{argv!r}]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print("config.json opened", len(opened), "times", file=sys.stderr)
"""


@pytest.mark.parametrize("extra", [[], ["--quant-mode", "int8-weight-only", "--calib-samples", "1"], ["--no-kv-cache"]])
def test_a_run_opens_config_json_once(tiny_checkpoint, offline_env, extra):
    """config.json is read once per run, by open_checkpoint; the weights are loaded with that config."""
    import os
    import subprocess

    from conftest import BACKEND, REPO_ROOT

    argv = ["--backend", BACKEND, "--checkpoint", tiny_checkpoint, "--input-text", "Hi", "--max-new-tokens", "2", *extra]
    script = CONFIG_OPENS.format(root=REPO_ROOT, argv=argv, script=os.path.join(REPO_ROOT, "example.py"))
    result = subprocess.run([sys.executable, "-c", script], env=offline_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "config.json opened 1 times" in result.stderr, result.stderr
