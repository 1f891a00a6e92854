"""cli.py: the shared options, the quant modes' GPU requirements, and bad input as one `error:` line."""

import subprocess
import sys

import pytest

import backend
import cli
from quantization import QUANT_MODES


def test_float8_needs_compute_capability_8_9_and_bfloat16_8_0_on_tensorrt():
    float8, int8 = QUANT_MODES["float8"], QUANT_MODES["int8-weight-only"]

    def gpu(capability):
        return backend.Backend("tensorrt", "TensorRT on a test GPU", capability)

    with pytest.raises(backend.BackendError, match="needs a GPU of compute capability 8.9 or newer with TensorRT; this one has 8.6"):
        gpu((8, 6)).check_runs("float16", float8)
    with pytest.raises(backend.BackendError, match=r"\(int8-weight-only and int4-weight-only run on it"):
        gpu((8, 6)).check_runs("float16", float8)
    with pytest.raises(backend.BackendError, match="--dtype bfloat16 needs a GPU of compute capability 8.0 or newer"):
        gpu((7, 5)).check_runs("bfloat16", int8)
    gpu((8, 9)).check_runs("bfloat16", float8)
    gpu((8, 6)).check_runs("float32", int8)
    gpu((7, 5)).check_runs("float16")
    backend.Backend("cpu", "PyTorch executor").check_runs("bfloat16", float8)  # the CPU runs everything


def test_quant_mode_is_read_once_into_its_description():
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_model_arguments(parser)
    assert parser.parse_args(["--quant-mode", "int4-weight-only"]).quant_mode is QUANT_MODES["int4-weight-only"]
    assert parser.parse_args([]).quant_mode is None


def test_an_unknown_quant_mode_names_the_choices():
    script = "import argparse, cli; p = argparse.ArgumentParser(); cli.add_model_arguments(p); p.parse_args(['--quant-mode', 'int2'])"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cli.__file__.rsplit("/", 1)[0])
    assert result.returncode == 2
    assert "invalid choice: 'int2' (choose from int8-weight-only, int4-weight-only, float8)" in result.stderr


def user_errors():
    """One of each module's errors for bad input: each derives from errors.UserError."""
    from checkpoint import CheckpointError
    from quantization import QuantizationError
    from sampling import NonFiniteLogits
    from tokenizer import TokenizerError

    kinds = [cli.UsageError, backend.BackendError, CheckpointError, QuantizationError, TokenizerError, NonFiniteLogits]
    return [kind("bad input") for kind in kinds]


@pytest.mark.parametrize("error", user_errors())
def test_user_errors_are_one_line_and_exit_status_2(error, capsys):
    def main():
        raise error

    with pytest.raises(SystemExit) as exit:
        cli.run_command(main)
    assert exit.value.code == 2
    assert capsys.readouterr().err == f"error: {error}\n"


def test_ctrl_c_is_exit_status_130():
    def main():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit:
        cli.run_command(main)
    assert exit.value.code == 130


def test_a_closed_pipe_ends_quietly_and_a_full_disk_is_one_error_line():
    script = "import sys, cli; cli.run_command(lambda: print('x' * 1000000) or 0)"
    closed = subprocess.run(
        f"{sys.executable} -c \"{script}\" | head -c 10", shell=True, capture_output=True, text=True, cwd=cli.__file__.rsplit("/", 1)[0]
    )
    assert closed.stdout == "x" * 10 and closed.stderr == ""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-c", script], stdout=full, stderr=subprocess.PIPE, text=True, cwd=cli.__file__.rsplit("/", 1)[0])
    assert result.returncode == 2
    assert result.stderr == "error: cannot write the output: No space left on device\n"
