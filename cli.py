"""The command-line pieces example.py, perplexity.py and the benchmarks share: the options that choose
the model, and `run_command`, which turns bad input into one `error:` line.

It imports nothing heavy, so that --help and bad options answer before torch, transformers and
nvtripy load.
"""

import argparse
import os
import signal
import sys

import backend
from errors import UserError
from quant_modes import CALIB_MAX_LENGTH, CALIB_SAMPLES, QUANT_MODES


class UsageError(UserError):
    """A bad option or argument."""


DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_THREADS = 1  # measured: see docs/performance.md, "Threads"


class OutputError(UserError):
    """The results cannot be written: stdout is a full disk, say."""


class _CheckedStdout:
    """sys.stdout, whose write errors (other than a closed pipe) are an OutputError."""

    def __init__(self, stream):
        self._stream = stream

    def _checked(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write the output: {exc.strerror or exc}") from None

    def write(self, text):
        return self._checked(self._stream.write, text)

    def flush(self):
        return self._checked(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def run_command(main):
    """Runs `main` as a command: bad input is one `error:` line on stderr and exit status 2; Ctrl-C is
    exit status 130; a reader that closes the pipe ends it quietly, as it ends other Unix tools; an
    output that cannot be written (a full disk) is one `error:` line."""
    stdout, sys.stdout = sys.stdout, _CheckedStdout(sys.stdout)
    try:
        status = main()
        sys.stdout.flush()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:
        status = 128 + signal.SIGPIPE
    finally:
        sys.stdout = stdout
    # What is left in stdout's buffer cannot be written either; it goes nowhere, not to a traceback at exit.
    try:
        sys.stdout.flush()
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(status)


def quant_mode(name):
    """--quant-mode's type: the mode's description, read once here and passed on."""
    try:
        return QUANT_MODES[name]
    except KeyError:
        raise argparse.ArgumentTypeError(f"invalid choice: '{name}' (choose from {', '.join(QUANT_MODES)})") from None


def add_model_arguments(parser):
    """The options that choose the model, its quantization and the backend."""
    parser.add_argument(
        "--model-type",
        default="gpt2",
        help="a Hugging Face Hub id of a GPT-2 model: gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, ... "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="a local checkpoint directory in transformers' format, used instead of --model-type; works offline",
    )
    parser.add_argument(
        "--quant-mode",
        type=quant_mode,
        metavar="{" + ",".join(QUANT_MODES) + "}",
        help="ModelOpt quantization of the linear layers",
    )
    parser.add_argument(
        "--calib-file",
        metavar="PATH",
        help="plain UTF-8 text to calibrate --quant-mode on, paragraphs separated by blank lines "
        "(default: Python's own help topics, which need no download)",
    )
    parser.add_argument(
        "--calib-samples",
        type=int,
        default=CALIB_SAMPLES,
        help=f"calibrate on this many samples of up to {CALIB_MAX_LENGTH} tokens, cut from the "
        "calibration text (default: %(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=backend.CHOICES,
        default="auto",
        help="auto: TensorRT when it and a GPU are present, else the PyTorch executor on the CPU "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        help="the model's precision (default: float16 with TensorRT, as Tripy's example; float32 on the CPU)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="CPU threads for PyTorch: the CPU executor's arithmetic and sampling (default: %(default)s; "
        "a second thread helps little on a 2-core machine and costs much when the other core is busy)",
    )


def check_model_arguments(args):
    if args.quant_mode is None and (args.calib_file is not None or args.calib_samples != CALIB_SAMPLES):
        raise UsageError("--calib-file and --calib-samples calibrate a quantized model: give --quant-mode too")
    if args.calib_samples < 1:
        raise UsageError(f"--calib-samples must be at least 1, not {args.calib_samples}")
    if args.checkpoint is not None:
        if os.path.isfile(args.checkpoint):
            raise UsageError(f"--checkpoint {args.checkpoint} is a file, not a checkpoint directory")
        if not os.path.isdir(args.checkpoint):
            raise UsageError(f"--checkpoint {args.checkpoint}: no such directory")
    if args.threads < 1:
        raise UsageError(f"--threads must be at least 1, not {args.threads}")
