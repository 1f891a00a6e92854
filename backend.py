"""Chooses what runs nvtripy programs: TensorRT on an NVIDIA GPU, or the PyTorch executor on the CPU.

nvtripy imports TensorRT's modules as it loads; where they are absent (or the CPU is asked for), the
executor must stand in for them by then. So `select_backend` is each command's first step after its
arguments, and the modules that import nvtripy are imported after it.
"""

import importlib
import signal
import sys
from dataclasses import dataclass
from typing import Optional

import torch_executor
from errors import UserError
from quant_modes import QUANT_MODES

CHOICES = ("auto", "tensorrt", "cpu")
TENSORRT_INSTALL_HINT = (
    "install it on a machine with an NVIDIA GPU with `bash setup.sh gpu` "
    "(nvtripy 0.1.7 with mlir-tensorrt and TensorRT from NVIDIA's package index)"
)
# bfloat16 needs Ampere (compute capability 8.0) or newer with TensorRT; the CPU executor runs every dtype.
MIN_COMPUTE_CAPABILITY = {"bfloat16": (8, 0)}


class BackendError(UserError):
    """A backend that cannot run here."""


@dataclass(frozen=True)
class Backend:
    """The backend that runs nvtripy in this process."""

    name: str  # "tensorrt" or "cpu"
    description: str  # what runs, and on the CPU why TensorRT does not
    compute_capability: Optional[tuple] = None  # the GPU's (major, minor), with TensorRT

    @property
    def default_dtype(self):
        """float16 with TensorRT, as Tripy's example runs; float32 on the CPU."""
        return "float16" if self.name == "tensorrt" else "float32"

    def check_runs(self, dtype, quant_mode=None):
        """Refuses a dtype or quant mode (a quant_modes.QuantMode) that TensorRT cannot run on this GPU."""
        have = self.compute_capability
        if have is None:
            return
        need = quant_mode.min_compute_capability if quant_mode else None
        if need and have < need:
            runs = [
                str(m) for m in QUANT_MODES.values() if not m.min_compute_capability or have >= m.min_compute_capability
            ]
            raise BackendError(
                f"--quant-mode {quant_mode} needs a GPU of compute capability {need[0]}.{need[1]} or newer with "
                f"TensorRT; this one has {have[0]}.{have[1]} ({' and '.join(runs)} run on it, and every mode runs "
                "with --backend cpu)"
            )
        need = MIN_COMPUTE_CAPABILITY.get(dtype)
        if need and have < need:
            raise BackendError(
                f"--dtype {dtype} needs a GPU of compute capability {need[0]}.{need[1]} or newer with TensorRT; "
                f"this one has {have[0]}.{have[1]} (float16 and float32 run on it, and every dtype runs with "
                "--backend cpu)"
            )

    def __str__(self):
        return f"nvtripy backend: {self.name} ({self.description})"


def import_torch():
    """torch, imported with Ctrl-C held until it has loaded: an interrupt inside its C++ start-up can
    abort the process instead of raising KeyboardInterrupt. The held Ctrl-C is raised then."""
    held = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: held.append(True))
    except ValueError:  # not the main thread: signals are the main thread's
        previous = None
    try:
        import torch
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if held and previous is not signal.SIG_IGN:
        raise KeyboardInterrupt
    return torch


def tensorrt_missing():
    """Why the TensorRT backend cannot run here, or None when it can."""
    for module in ("tensorrt", "mlir_tensorrt.runtime.api", "mlir_tensorrt.compiler.api"):
        try:
            importlib.import_module(module)
        except ImportError:
            return f"`{module}` is not installed"
        except Exception as exc:  # an installed but broken package counts as missing too
            return f"`{module}` does not import ({type(exc).__name__}: {exc})"
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def select_backend(choice="auto", threads=None):
    """Prepares nvtripy for `choice` (auto, tensorrt or cpu) and returns the Backend that will run it;
    `threads` sets PyTorch's CPU threads (the executor's arithmetic and sampling). Once nvtripy is
    loaded, the backend it loaded with is the one returned."""
    if choice not in CHOICES:
        raise BackendError(f"unknown backend '{choice}': choose one of {', '.join(CHOICES)}")
    torch = import_torch()

    if threads is not None:
        torch.set_num_threads(threads)
    if "nvtripy" in sys.modules:
        reason = None
    else:
        reason = None if choice == "cpu" else tensorrt_missing()
        if choice == "tensorrt" and reason:
            raise BackendError(f"the TensorRT backend is not available: {reason}; {TENSORRT_INSTALL_HINT}")
        if choice == "cpu" or reason:
            torch_executor.install()
    if torch_executor.is_installed():
        return Backend("cpu", "PyTorch executor" + (f"; TensorRT not used: {reason}" if reason else ""))
    name = torch.cuda.get_device_name(0)
    return Backend("tensorrt", f"TensorRT on {name}", tuple(torch.cuda.get_device_capability()))
