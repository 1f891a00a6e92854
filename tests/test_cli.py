"""cli.py: the shared options, the quant modes' GPU requirements, and bad input as one `error:` line."""

import subprocess
import sys

import pytest

import cli
from quantization import QUANT_MODES


def test_float8_needs_compute_capability_8_9_and_bfloat16_8_0_on_tensorrt():
    float8, int8 = QUANT_MODES["float8"], QUANT_MODES["int8-weight-only"]
    with pytest.raises(cli.UsageError, match="needs a GPU of compute capability 8.9 or newer with TensorRT; this one has 8.6"):
        cli.check_runs_on((8, 6), quant_mode=float8)
    with pytest.raises(cli.UsageError, match=r"\(int8-weight-only and int4-weight-only run on it"):
        cli.check_runs_on((8, 6), quant_mode=float8, dtype="float16")
    with pytest.raises(cli.UsageError, match="--dtype bfloat16 needs a GPU of compute capability 8.0 or newer"):
        cli.check_runs_on((7, 5), quant_mode=int8, dtype="bfloat16")
    cli.check_runs_on((8, 9), quant_mode=float8, dtype="bfloat16")
    cli.check_runs_on((8, 6), quant_mode=int8, dtype="float32")
    cli.check_runs_on((7, 5), quant_mode=None, dtype="float16")


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


@pytest.mark.parametrize("error", [cli.UsageError("bad flag"), *[kind("bad input") for kind in cli.USER_ERRORS[1:]]])
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
