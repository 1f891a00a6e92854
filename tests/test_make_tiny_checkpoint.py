"""make_tiny_checkpoint.py as a command: bad input is one `error:` line, exit status 2, and nothing written;
a checkpoint appears whole or not at all, Ctrl-C included, and replaces only an earlier one of its own."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO_ROOT, default_sigint
from safetensors import safe_open

import make_tiny_checkpoint

SCRIPT = "make_tiny_checkpoint.py"

# The script run with a function patched to send it SIGINT, as Ctrl-C does: once save_pretrained has written
# the model's files, or once the earlier checkpoint has left its place for the new one.
INTERRUPTED_WHILE_WRITING = """
import os, runpy, signal, sys, transformers
save_pretrained = transformers.GPT2LMHeadModel.save_pretrained
def save_pretrained_then_interrupt(self, *args, **kwargs):
    save_pretrained(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGINT)
transformers.GPT2LMHeadModel.save_pretrained = save_pretrained_then_interrupt
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
INTERRUPTED_WHILE_REPLACING = """
import os, runpy, signal, sys
target = os.path.realpath(sys.argv[2])
replace = os.replace
def replace_then_interrupt(source, destination):
    replace(source, destination)
    if os.path.realpath(source) == target:
        os.kill(os.getpid(), signal.SIGINT)
os.replace = replace_then_interrupt
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
BAD_SHAPES = [  # arguments, and words the error line must hold
    (["--embedding-size", "100", "--num-heads", "3"], ["--embedding-size 100", "--num-heads 3"]),
    (["--num-layers", "0"], ["--num-layers"]),
    (["--num-heads", "0"], ["--num-heads"]),
    (["--embedding-size", "-4"], ["--embedding-size"]),
    (["--block-size", "0"], ["--block-size"]),
    (["--vocab-size", "320"], ["--vocab-size 320", "321"]),
    (["--vocab-size", "0"], ["--vocab-size"]),
    (["--seed", str(2**64)], ["--seed"]),
]


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def contents(directory):
    """file name -> sha256 of its bytes, for every file in directory."""
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in sorted(os.listdir(directory))}


def assert_one_error_line(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert result.stdout == ""


@pytest.fixture
def earlier_checkpoint(tiny_checkpoint, tmp_path):
    """A checkpoint this script wrote, at tmp_path/checkpoint, alone in tmp_path."""
    return shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")


@pytest.mark.parametrize("args,words", BAD_SHAPES, ids=[" ".join(args) for args, _ in BAD_SHAPES])
def test_a_bad_shape_is_one_error_line_and_writes_nothing(args, words, tmp_path):
    result = run(str(tmp_path / "new" / "checkpoint"), *args)
    assert_one_error_line(result, *words)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("directory", [".", ""])
def test_the_current_directory_is_not_overwritten(directory, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, SCRIPT), directory],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert_one_error_line(result)
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_a_file_is_not_a_target(tmp_path):
    (tmp_path / "notes").write_text("mine")
    result = run(str(tmp_path / "notes"))
    assert_one_error_line(result, "not a directory")
    assert os.listdir(tmp_path) == ["notes"] and (tmp_path / "notes").read_text() == "mine"


def test_a_directory_with_other_files_is_not_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    result = run(str(tmp_path / "mine"))
    assert_one_error_line(result, "not empty")
    assert os.listdir(tmp_path) == ["mine"] and os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_an_earlier_checkpoint_with_a_file_of_the_users_is_not_overwritten(earlier_checkpoint, tmp_path):
    (earlier_checkpoint / "notes.txt").write_text("mine")
    before = contents(earlier_checkpoint)
    result = run(str(earlier_checkpoint), "--seed", "1")
    assert_one_error_line(result, "not empty")
    assert os.listdir(tmp_path) == ["checkpoint"] and contents(earlier_checkpoint) == before


def test_the_default_output_line(tmp_path):
    target = tmp_path / "new" / "tiny-gpt2"
    result = run(str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"Wrote a tiny random GPT-2 checkpoint to {target}\n"
    assert sorted(os.listdir(target)) == [
        "config.json",
        "generation_config.json",
        "merges.txt",
        "model.safetensors",
        "vocab.json",
    ]
    assert os.listdir(tmp_path / "new") == ["tiny-gpt2"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir makes it, not private like a temporary directory


def test_an_earlier_checkpoint_is_overwritten(earlier_checkpoint, tmp_path):
    before = contents(earlier_checkpoint)
    result = run(str(earlier_checkpoint), "--seed", "1")
    assert result.returncode == 0, result.stderr
    after = contents(earlier_checkpoint)
    assert after["model.safetensors"] != before["model.safetensors"] and after["vocab.json"] == before["vocab.json"]
    assert os.listdir(tmp_path) == ["checkpoint"]


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
    result = run(
        str(target), "--vocab-size", "50257", "--num-layers", "1", "--num-heads", "4", "--embedding-size", "256"
    )
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


def run_interrupted(wrapper, target, *args):
    result = subprocess.run(
        [sys.executable, "-c", wrapper, SCRIPT, str(target), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=default_sigint,
    )
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_ctrl_c_while_writing_leaves_nothing(tmp_path):
    run_interrupted(INTERRUPTED_WHILE_WRITING, tmp_path / "new" / "checkpoint")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "wrapper", [INTERRUPTED_WHILE_WRITING, INTERRUPTED_WHILE_REPLACING], ids=["writing", "replacing"]
)
def test_ctrl_c_keeps_the_earlier_checkpoint(wrapper, earlier_checkpoint, tmp_path):
    before = contents(earlier_checkpoint)
    run_interrupted(wrapper, earlier_checkpoint, "--seed", "1")
    assert os.listdir(tmp_path) == ["checkpoint"] and contents(earlier_checkpoint) == before


def test_a_full_disk_is_one_error_line_and_leaves_nothing(tmp_path):
    """On a 64 kB tmpfs (mounted here, where the tests run as root; skipped elsewhere): the weights do not fit.
    safetensors' "No space left on device" was a traceback."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        result = run(str(disk / "checkpoint"))
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr == f"error: cannot write {disk}/checkpoint: No space left on device (os error 28)\n"
        assert os.listdir(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_while_saving_the_weights_is_one_error(tmp_path, monkeypatch):
    """ENOSPC simulated in-process: safetensors writes part of the file, then fails as it does on a full disk."""
    import transformers.modeling_utils
    from safetensors import SafetensorError

    def save_file_on_a_full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_file_on_a_full_disk)
    with pytest.raises(make_tiny_checkpoint.UsageError) as error:
        make_tiny_checkpoint.main([str(tmp_path / "new" / "checkpoint")])
    assert str(error.value) == f"cannot write {tmp_path}/new/checkpoint: No space left on device (os error 28)"
    assert os.listdir(tmp_path) == []
