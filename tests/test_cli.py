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

    with pytest.raises(
        backend.BackendError, match="needs a GPU of compute capability 8.9 or newer with TensorRT; this one has 8.6"
    ):
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
    script = (
        "import argparse, cli; p = argparse.ArgumentParser(); cli.add_model_arguments(p); "
        "p.parse_args(['--quant-mode', 'int2'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=cli.__file__.rsplit("/", 1)[0]
    )
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
        f'{sys.executable} -c "{script}" | head -c 10',
        shell=True,
        capture_output=True,
        text=True,
        cwd=cli.__file__.rsplit("/", 1)[0],
    )
    assert closed.stdout == "x" * 10 and closed.stderr == ""
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-c", script],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cli.__file__.rsplit("/", 1)[0],
        )
    assert result.returncode == 2
    assert result.stderr == "error: cannot write the output: No space left on device\n"


OUT_OF_RANGE = [  # example.py's or perplexity.py's arguments, and the error line
    (["--seed", "-1"], "--seed must be from 0 to 18446744073709551615, not -1"),
    (["--seed", str(2**64)], f"--seed must be from 0 to 18446744073709551615, not {2**64}"),
    (["--threads", "1000000000"], f"--threads must be from 1 to {cli.MAX_THREADS}, not 1000000000"),
    (["--num-samples", "100000"], "--num-samples must be from 1 to 1024, not 100000"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be from 1 to 1048576, not 0"),
    (["--top-k", str(2**40)], f"--top-k must be from 1 to 1048576, not {2**40}"),
    (["--top-p", "0"], "--top-p must be more than 0 and at most 1, not 0.0"),
    (["--top-p", "nan"], "--top-p must be more than 0 and at most 1, not nan"),
    (["--temperature", "1e-40"], "--temperature must be 0 (greedy) or from 1e-37 to 1e+37, not 1e-40"),
    (["--temperature", "inf"], "--temperature must be 0 (greedy) or from 1e-37 to 1e+37, not inf"),
    (
        ["--quant-mode", "float8", "--calib-samples", "10000000"],
        "--calib-samples must be from 1 to 100000, not 10000000",
    ),
    (["--context", "1"], "--context must be from 2 to 1048576, not 1"),
    (["--max-tokens", str(2**50)], f"--max-tokens must be from 2 to {2**40}, not {2**50}"),
]


@pytest.mark.parametrize("args, message", OUT_OF_RANGE, ids=[" ".join(args) for args, _ in OUT_OF_RANGE])
def test_numeric_options_out_of_range_are_refused_before_any_work(args, message):
    import example
    import perplexity

    command = perplexity if args[0] in ("--context", "--max-tokens") else example
    given = ["--text-file", "t.txt"] if command is perplexity else ["--input-text", "Hi"]
    with pytest.raises(cli.UsageError) as error:
        command.parse_args([*given, "--checkpoint", "/nowhere", *args])  # the range is checked first
    assert str(error.value) == message


def test_the_temperature_range_keeps_sampling_finite():
    """Dividing logits of 300 by 1e-37 overflowed float32, and softmax then gave nan."""
    import torch

    from cli import MIN_TEMPERATURE
    from sampling import Sampling, sample

    logits = torch.tensor([[[300.0, -20.0, 299.99]]])
    for seed, temperature in enumerate((MIN_TEMPERATURE, 1e-30, 1e-6)):
        assert sample(logits.clone(), Sampling(temperature, top_k=3), torch.Generator().manual_seed(seed)).item() == 0
