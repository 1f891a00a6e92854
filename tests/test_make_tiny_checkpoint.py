"""make_tiny_checkpoint.py as a command: the shape it writes, and what its last line says of it."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT
from safetensors import safe_open

import make_tiny_checkpoint

SCRIPT = "make_tiny_checkpoint.py"


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def test_the_default_output_line(tmp_path):
    target = tmp_path / "new" / "tiny-gpt2"
    result = run(str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Wrote a tiny random GPT-2 checkpoint to {target}\n"
    assert sorted(os.listdir(target)) == ["config.json", "generation_config.json", "merges.txt", "model.safetensors", "vocab.json"]


def test_gpt2s_vocabulary_size(tmp_path):
    target = tmp_path / "checkpoint"
    result = run(str(target), "--vocab-size", "50257", "--num-layers", "1", "--num-heads", "1", "--embedding-size", "8")
    assert result.returncode == 0, result.stderr
    assert json.loads((target / "config.json").read_text())["vocab_size"] == 50257
    with safe_open(target / "model.safetensors", "pt") as weights:
        assert weights.get_slice("transformer.wte.weight").get_shape() == [50257, 8]
    assert result.stdout == f"Wrote a tiny random GPT-2 checkpoint to {target}\n"  # 0.4M parameters


def test_a_big_checkpoint_says_its_size_and_not_tiny(tmp_path):
    target = tmp_path / "checkpoint"
    result = run(str(target), "--vocab-size", "50257", "--num-layers", "1", "--num-heads", "4", "--embedding-size", "256")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Wrote a random GPT-2 checkpoint (13.7M parameters) to {target}\n"


@pytest.mark.parametrize(
    "num_parameters,description",
    [
        (128_832, "a tiny random GPT-2 checkpoint"),  # the default
        (124_439_808, "a random GPT-2 checkpoint (124M parameters)"),  # GPT-2
        (354_823_168, "a random GPT-2 checkpoint (355M parameters)"),  # gpt2-medium
        (1_557_611_200, "a random GPT-2 checkpoint (1.56B parameters)"),  # gpt2-xl
    ],
)
def test_descriptions(num_parameters, description):
    assert make_tiny_checkpoint.describe(num_parameters) == description
