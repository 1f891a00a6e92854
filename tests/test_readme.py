"""Runs the README's commands and checks each one's stdout against the regex in the
`<!-- Tripy: TEST: EXPECTED_STDOUT Start -->` block that follows it, as Tripy's README tests do.
That hidden block is followed by a visible ```text block of real output, which must match it too, so
that what a reader sees is what the test checks.

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
    r"\s*<!-- Tripy: TEST: EXPECTED_STDOUT Start -->\s*<!--([^`]*?)```\n?(.*?)```\s*-->"
    r"\s*<!-- Tripy: TEST: EXPECTED_STDOUT End -->",
    re.S,
)
# The visible output after a hidden block: prose may stand between them, but no other code block.
VISIBLE = re.compile(r"(?:(?!```).)*?```text\n(.*?)```", re.S)


# A note before the regex that says "must not match" marks an output published elsewhere that this
# example must not reproduce (Tripy's degenerate int4 text).
MUST_NOT_MATCH = "must not match"


def readme_commands(text):
    """(command, expected-stdout regex, whether stdout must match it, the visible output shown after it or
    None) for every bash block directly followed by an expected-output block."""
    found = []
    for match in CODE_BLOCK.finditer(text):
        if match.group(1) != "bash":
            continue
        following = EXPECTED.match(text, match.end())
        if following:
            must_match = MUST_NOT_MATCH not in following.group(1)
            visible = VISIBLE.match(text, following.end())
            shown = visible.group(1) if visible else None
            found.append((match.group(2).strip(), following.group(2).strip(), must_match, shown))
    return found


def bash_blocks(text):
    return [m.group(2).strip() for m in CODE_BLOCK.finditer(text) if m.group(1) == "bash"]


def quick_start_blocks(text):
    """The bash blocks under the '## Quick Start' heading, in order."""
    return bash_blocks(text.split("## Quick Start", 1)[1].split("\n## ", 1)[0])


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
    # The README's commands run in the shell its Quick Start activated, where `python` is the environment's.
    argv = shlex.split(command)
    argv = [sys.executable if word in ("python3", "python", ".venv/bin/python") else word for word in argv]
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)


with open(README) as f:
    README_TEXT = f.read()
COMMANDS = readme_commands(README_TEXT)


def test_readme_has_tested_commands():
    assert any(not needs_real_weights(cmd) for cmd, *_ in COMMANDS), "the offline section must have tested commands"
    assert any(needs_real_weights(cmd) for cmd, *_ in COMMANDS)


def test_quick_start_sets_up_activates_runs_the_example_and_the_tests():
    blocks = quick_start_blocks(README_TEXT)
    setup = blocks[0].splitlines()
    assert setup == ["bash setup.sh", "source .venv/bin/activate"]
    assert blocks[-1] == "python -m pytest tests"
    tested = {cmd for cmd, *_ in COMMANDS}
    assert any(cmd.startswith("python make_tiny_checkpoint.py") and cmd in tested for cmd in blocks)
    assert any(cmd.startswith("python example.py --checkpoint") and cmd in tested for cmd in blocks)


def test_ci_runs_the_quick_start_set_up_and_tests():
    """CI types the Quick Start's set-up and test command, with the environment's python spelled out as
    activation makes it."""
    blocks = quick_start_blocks(README_TEXT)
    setup, tests = blocks[0].splitlines()[0], blocks[-1]
    with open(os.path.join(REPO_ROOT, ".ci", "run")) as f:
        ci_lines = [line.strip() for line in f]
    assert f"{setup} && .venv/bin/{tests}" in ci_lines


def test_commands_run_as_written_in_the_activated_shell():
    """After the Quick Start's activation every command says `python`: `python3` may be another Python
    without the environment's packages, and `.venv/bin/python` would not be needed."""
    for block in bash_blocks(README_TEXT):
        words = set(shlex.split(block.replace("|", " ")))
        assert not words & {"python3", ".venv/bin/python"}, block


@pytest.mark.parametrize("command,expected,must_match,shown", COMMANDS, ids=[cmd[:60] for cmd, *_ in COMMANDS])
def test_readme_shows_the_output_it_checks(command, expected, must_match, shown):
    """Each checked command has a visible output block, which matches its hidden regex: for the int4 one,
    whose regex must not match our output, the block shows that published reference."""
    assert shown is not None, f"`{command}` has no visible ```text block of its output after its expected-output block"
    assert re.match(expected, shown), f"the output shown for `{command}` does not match {expected!r}:\n{shown}"


@pytest.mark.parametrize("command,expected,must_match,shown", COMMANDS, ids=[cmd[:60] for cmd, *_ in COMMANDS])
def test_readme_command(command, expected, must_match, shown):
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
