"""Runs nvtripy programs on the CPU with PyTorch, where TensorRT and its MLIR compiler are absent.

nvtripy's frontend runs unchanged: modules, ops, shape and dtype inference, `tp.compile`,
`load_state_dict`, DLPack. Only the last step is replaced: instead of lowering a trace to MLIR
and building a TensorRT engine, the trace becomes a `Program` that PyTorch interprets.

Call `install()` once, before the first `import nvtripy`.
"""

import importlib.metadata
import sys

SUPPORTED_NVTRIPY_VERSION = "0.1.7"


class ExecutorError(RuntimeError):
    pass


def install():
    """Makes `import nvtripy` load with the CPU executor behind it. Safe to call twice."""
    if "nvtripy" in sys.modules:
        if getattr(sys.modules["nvtripy"], "_torch_executor_installed", False):
            return
        raise ExecutorError("nvtripy was imported before the CPU executor was installed")
    check_nvtripy_version()

    from torch_executor import stubs

    stubs.install_finder()
    import nvtripy

    _patch(nvtripy)
    nvtripy._torch_executor_installed = True


def check_nvtripy_version():
    """The executor patches nvtripy internals and reads its trace ops, so it needs the exact version
    it was written against; any other fails here, before anything is patched."""
    try:
        version = importlib.metadata.version("nvtripy")
    except importlib.metadata.PackageNotFoundError:
        raise ExecutorError(
            f"nvtripy is not installed: pip install --no-deps nvtripy=={SUPPORTED_NVTRIPY_VERSION}"
        ) from None
    if version != SUPPORTED_NVTRIPY_VERSION:
        raise ExecutorError(
            f"the CPU executor supports nvtripy {SUPPORTED_NVTRIPY_VERSION} only, but {version} is installed: "
            f"pip install --no-deps nvtripy=={SUPPORTED_NVTRIPY_VERSION}"
        )


def _patch(nvtripy):
    import nvtripy.backend.mlir.memref as memref
    import nvtripy.trace.trace as trace

    from torch_executor import stack_info
    from torch_executor.compiler import TraceModule

    def to_mlir(self):
        return TraceModule(self)

    def tolist(memref_value):
        return memref_value.tensor.tolist()

    trace.Trace.to_mlir = to_mlir
    memref.tolist = tolist
    stack_info.install()


def is_installed():
    """Whether nvtripy runs on this executor in this process."""
    return getattr(sys.modules.get("nvtripy"), "_torch_executor_installed", False)


def source_files():
    """The package's source files: what a program it compiles depends on, besides nvtripy."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.join(here, name) for name in sorted(os.listdir(here)) if name.endswith(".py")]
