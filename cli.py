"""The command-line pieces example.py, perplexity.py and the benchmarks share: the options that choose
the model, the bad-input error, and `run_command`, which turns bad input into one `error:` line.

Nothing here imports nvtripy: the arguments are read before the backend is chosen.
"""

import argparse
import os
import sys

import torch

import backend
import quantization
from checkpoint import CheckpointError
from quantization import QUANT_MODES, QuantizationError
import sampling
from sampling import NonFiniteLogits
from tokenizer import TokenizerError


class UsageError(Exception):
    """Bad input from the user: reported as one line on stderr, with exit status 2."""


# What a user can get wrong, or a broken checkpoint: each message is one line that says what and where.
USER_ERRORS = (UsageError, backend.BackendError, CheckpointError, QuantizationError, TokenizerError, NonFiniteLogits)

DTYPES = ("float32", "float16", "bfloat16")
# bfloat16 needs Ampere (compute capability 8.0) or newer with TensorRT; the CPU executor runs every dtype.
MIN_COMPUTE_CAPABILITY = {"bfloat16": (8, 0)}
DEFAULT_THREADS = 1  # measured: see README, "Threads"
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
    "temperature": (sampling.MIN_TEMPERATURE, sampling.MAX_TEMPERATURE),  # or 0, greedy
    "calib_samples": (1, 100_000),
    "context": (2, MANY),
    "max_tokens": (2, 2**40),
}
LOW_EXCLUDED = ("top_p",)


def run_command(main):
    """Runs `main` as a command: bad input is one `error:` line on stderr and exit status 2, Ctrl-C 130."""
    try:
        sys.exit(main())
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


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
        default=quantization.CALIB_SAMPLES,
        help=f"calibrate on this many samples of up to {quantization.CALIB_MAX_LENGTH} tokens, cut from the "
        "calibration text (default: %(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=backend.CHOICES,
        default="auto",
        help="auto: TensorRT when it and a GPU are present, else the PyTorch executor on the CPU (default: %(default)s)",
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
    if args.quant_mode is None and (args.calib_file is not None or args.calib_samples != quantization.CALIB_SAMPLES):
        raise UsageError("--calib-file and --calib-samples calibrate a quantized model: give --quant-mode too")
    if args.checkpoint is not None:
        if os.path.isfile(args.checkpoint):
            raise UsageError(f"--checkpoint {args.checkpoint} is a file, not a checkpoint directory")
        if not os.path.isdir(args.checkpoint):
            raise UsageError(f"--checkpoint {args.checkpoint}: no such directory")


def select_backend(args, capability=None):
    """Prepares nvtripy's backend as --backend says, with --threads; resolves --dtype for it (args.dtype
    becomes a dtype name); and refuses a --quant-mode or --dtype its GPU cannot run (`capability`, the
    GPU's (major, minor) compute capability; None asks CUDA). The backend's announcement is held back
    (backend.announcement) until the checkpoint and its weights have checked out, so that bad input is
    one line."""
    backend_name = backend.select_backend(args.backend, announce=False)
    torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("float16" if backend_name == "tensorrt" else "float32")
    if backend_name == "tensorrt":
        capability = tuple(capability or torch.cuda.get_device_capability())
        check_runs_on(capability, quant_mode=args.quant_mode, dtype=args.dtype)
    return backend_name


def check_runs_on(capability, quant_mode=None, dtype=None):
    """Refuses a quant mode or dtype that TensorRT cannot run on a GPU of this compute capability."""
    need = quant_mode.min_compute_capability if quant_mode else None
    if need and capability < need:
        runs = [name for name, m in QUANT_MODES.items() if m.min_compute_capability is None or capability >= m.min_compute_capability]
        raise UsageError(
            f"--quant-mode {quant_mode} needs a GPU of compute capability {need[0]}.{need[1]} or newer with TensorRT; "
            f"this one has {capability[0]}.{capability[1]} ({' and '.join(runs)} run on it, and "
            "every mode runs with --backend cpu)"
        )
    need = MIN_COMPUTE_CAPABILITY.get(dtype)
    if need and capability < need:
        raise UsageError(
            f"--dtype {dtype} needs a GPU of compute capability {need[0]}.{need[1]} or newer with TensorRT; "
            f"this one has {capability[0]}.{capability[1]} (float16 and float32 run on it, and every dtype runs "
            "with --backend cpu)"
        )


def announce_backend():
    """Says on stderr which backend runs, once the input and the weights have checked out."""
    print(backend.announcement, file=sys.stderr, flush=True)


def calibration_report(quant, seconds):
    """The report line of a calibration that took `seconds`."""
    calibration = quant.calibration
    return f"Calibrating {quant.mode} on {calibration.summary()} of {calibration.text_source} took {seconds:.2f} seconds."
