"""Runs the README's commands and checks each one's stdout against the regex in the
`<!-- Tripy: TEST: EXPECTED_STDOUT Start -->` block that follows it, as Tripy's README tests do.

Commands that need the real GPT-2 weights run only where those weights are cached locally and
TensorRT runs: Tripy's published regexes come from TensorRT with sampling on the CUDA device.
Everywhere else they skip, saying so. The offline section always runs.
"""

import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers import BACKEND, REPO_ROOT

README = os.path.join(REPO_ROOT, "README.md")
CODE_BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
EXPECTED = re.compile(
    r"\s*<!-- Tripy: TEST: EXPECTED_STDOUT Start -->\s*<!--([^`]*?)```\n?(.*?)```\s*-->\s*<!-- Tripy: TEST: EXPECTED_STDOUT End -->",
    re.S,
)


# A note before the regex that says "must not match" marks an output published elsewhere that this
# example must not reproduce (Tripy's degenerate int4 text).
MUST_NOT_MATCH = "must not match"


def readme_commands(text):
    """(command, expected-stdout regex, whether stdout must match it) for every bash block directly
    followed by an expected-output block."""
    found = []
    for match in CODE_BLOCK.finditer(text):
        if match.group(1) != "bash":
            continue
        following = EXPECTED.match(text, match.end())
        if following:
            must_match = MUST_NOT_MATCH not in following.group(1)
            found.append((match.group(2).strip(), following.group(2).strip(), must_match))
    return found


def fresh_machine_commands(text):
    """The README's two commands for a fresh machine, under its '## Quick Start' heading."""
    section = text.split("## Quick Start", 1)[1].split("\n## ", 1)[0]
    return [m.group(2).strip() for m in CODE_BLOCK.finditer(section) if m.group(1) == "bash"]


def needs_real_weights(command):
    return "example.py" in command and "--checkpoint" not in command


def real_weights_skip_reason():
    if BACKEND != "tensorrt":
        return "Tripy's published outputs come from TensorRT with CUDA sampling; this run uses the CPU executor"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache("gpt2", "model.safetensors"), str)
    except Exception:
        cached = False
    if not cached and os.environ.get("HF_HUB_OFFLINE") == "1":
        return "the GPT-2 weights are not in the Hugging Face cache and the hub is offline"
    return None


def run(command):
    argv = shlex.split(command)
    argv = [sys.executable if word in ("python3", "python", ".venv/bin/python") else word for word in argv]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)


with open(README) as f:
    README_TEXT = f.read()
COMMANDS = readme_commands(README_TEXT)


def test_readme_has_tested_commands():
    assert any(not needs_real_weights(cmd) for cmd, _, _ in COMMANDS), "the offline section must have tested commands"
    assert any(needs_real_weights(cmd) for cmd, _, _ in COMMANDS)


def test_ci_runs_the_readme_test_command():
    setup_example, setup_tests = fresh_machine_commands(README_TEXT)
    with open(os.path.join(REPO_ROOT, ".ci", "run")) as f:
        ci_lines = [line.strip() for line in f]
    assert setup_tests in ci_lines
    assert setup_example.startswith("bash setup.sh && ")


@pytest.mark.parametrize("command,expected,must_match", COMMANDS, ids=[cmd[:60] for cmd, _, _ in COMMANDS])
def test_readme_command(command, expected, must_match):
    if needs_real_weights(command):
        reason = real_weights_skip_reason()
        if reason:
            pytest.skip(reason)
    result = run(command)
    assert result.returncode == 0, f"`{command}` failed:\n{result.stderr[-3000:]}"
    if must_match:
        assert re.match(expected, result.stdout), f"stdout of `{command}` does not match {expected!r}:\n{result.stdout}"
    else:
        assert not re.match(expected, result.stdout), f"stdout of `{command}` reproduces {expected!r}:\n{result.stdout}"
