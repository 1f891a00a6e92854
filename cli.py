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


# The temperatures sampling takes besides 0: sampling.sample divides the logits by it in float32 once their
# row's maximum is taken off, so none can overflow, and 1e-37 is above float32's smallest normal number.
MIN_TEMPERATURE = 1e-37
MAX_TEMPERATURE = 1e37
# More threads than this only wait for cores; a huge count makes libgomp allocate a stack for each (GBs).
MAX_THREADS = 4 * (os.cpu_count() or 1)
# Whole numbers up to this (a million and more) stand for "no limit that matters" below.
MANY = 2**20

# Each numeric option of example.py and perplexity.py: the lowest and highest value it takes, checked by
# check_ranges before anything heavy runs; for those in LOW_EXCLUDED the lowest value is not taken.
OPTION_RANGES = {
    "seed": (0, 2**64 - 1),  # what torch.Generator.manual_seed takes
    "threads": (1, MAX_THREADS),
    "num_samples": (1, 1024),
    "max_new_tokens": (1, MANY),  # the model's block size bounds it further, once the checkpoint is read
    "top_k": (1, MANY),
    "top_p": (0.0, 1.0),
    "temperature": (MIN_TEMPERATURE, MAX_TEMPERATURE),  # or 0, greedy
    "calib_samples": (1, 100_000),
    "context": (2, MANY),
    "max_tokens": (2, 2**40),
}
LOW_EXCLUDED = ("top_p",)


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
        help="CPU threads for PyTorch: the CPU executor's arithmetic and sampling, at most 4 per core "
        f"({MAX_THREADS} here) (default: %(default)s; "
        "a second thread helps little on a 2-core machine and costs much when the other core is busy)",
    )


def check_ranges(args):
    """Refuses a numeric option outside its range (OPTION_RANGES), naming the range."""
    for name, (low, high) in OPTION_RANGES.items():
        value = getattr(args, name, None)
        if value is None or (name == "temperature" and value == 0):
            continue
        exclusive = name in LOW_EXCLUDED
        if not ((low < value if exclusive else low <= value) and value <= high):  # a nan fits no range
            says = f"more than {low:g} and at most {high:g}" if exclusive else f"from {_number(low)} to {_number(high)}"
            if name == "temperature":
                says = f"0 (greedy) or {says}"
            raise UsageError(f"--{name.replace('_', '-')} must be {says}, not {value}")


def _number(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_model_arguments(args):
    check_ranges(args)
    if args.quant_mode is None and (args.calib_file is not None or args.calib_samples != CALIB_SAMPLES):
        raise UsageError("--calib-file and --calib-samples calibrate a quantized model: give --quant-mode too")
    if args.checkpoint is not None:
        if os.path.isfile(args.checkpoint):
            raise UsageError(f"--checkpoint {args.checkpoint} is a file, not a checkpoint directory")
        if not os.path.isdir(args.checkpoint):
            raise UsageError(f"--checkpoint {args.checkpoint}: no such directory")
