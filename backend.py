"""Chooses what runs nvtripy programs: TensorRT on an NVIDIA GPU, or the PyTorch executor on the CPU.

This must run before the first `import nvtripy`: nvtripy imports TensorRT's modules as it loads, and
where they are absent (or the CPU is asked for) the executor must already stand in for them. So the
commands call `select_backend` with their `--backend` flag first thing, and import the modules that
import nvtripy after it; the tests call it with the environment variable TRIPY_EXAMPLE_BACKEND.
"""

import importlib
import os
import sys

BACKEND_ENV = "TRIPY_EXAMPLE_BACKEND"
CHOICES = ("auto", "tensorrt", "cpu")
TENSORRT_INSTALL_HINT = (
    "install it on a machine with an NVIDIA GPU with `pip install -r requirements.txt` "
    "(nvtripy 0.1.7 with mlir-tensorrt and TensorRT from NVIDIA's package index)"
)


class BackendError(RuntimeError):
    pass


# The line select_backend(announce=False) holds back, for the caller to print when it is time.
announcement = None


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


def select_backend(choice="auto", announce=True):
    """Prepares nvtripy for `choice` and returns the backend that will run: 'tensorrt' or 'cpu'.
    It says which on stderr, or with announce=False keeps that line in `announcement`."""
    global announcement
    if choice not in CHOICES:
        raise BackendError(f"unknown backend '{choice}': choose one of {', '.join(CHOICES)}")
    import torch_executor

    already = sys.modules.get("nvtripy")
    if already is not None:
        return "cpu" if getattr(already, "_torch_executor_installed", False) else "tensorrt"

    reason = None if choice == "cpu" else tensorrt_missing()
    if choice == "tensorrt" and reason:
        raise BackendError(f"the TensorRT backend is not available: {reason}; {TENSORRT_INSTALL_HINT}")
    if choice == "cpu" or reason:
        # Stubs for TensorRT may already be imported by the probe above; drop them.
        for name in [m for m in sys.modules if m.split(".")[0] in ("tensorrt", "mlir_tensorrt")]:
            del sys.modules[name]
        torch_executor.install()
        backend, why = "cpu", "PyTorch executor" + (f"; TensorRT not used: {reason}" if reason else "")
    else:
        backend, why = "tensorrt", "TensorRT on " + __import__("torch").cuda.get_device_name(0)
    announcement = f"nvtripy backend: {backend} ({why})"
    if announce:
        print(announcement, file=sys.stderr)
    return backend


def select_backend_from_env(announce=True):
    return select_backend(os.environ.get(BACKEND_ENV, "auto"), announce=announce)
