"""Runs nvtripy programs on the CPU with PyTorch, where TensorRT and its MLIR compiler are absent.

nvtripy's frontend runs unchanged: modules, ops, shape and dtype inference, `tp.compile`,
`load_state_dict`, DLPack. Only the last step is replaced: instead of lowering a trace to MLIR
and building a TensorRT engine, the trace becomes a `Program` that PyTorch interprets.

Call `install()` once, before the first `import nvtripy`. What the rest of the program uses of the
executor is here: install, is_installed, source_files, weight_bytes, cpu_features.
"""

import importlib.metadata
import os
import sys

SUPPORTED_NVTRIPY_VERSION = "0.1.7"


class ExecutorError(RuntimeError):
    pass


def is_installed():
    """Whether nvtripy is imported with the CPU executor behind it."""
    return getattr(sys.modules.get("nvtripy"), "_torch_executor_installed", False)


def install():
    """Makes `import nvtripy` load with the CPU executor behind it. Safe to call twice. Modules of
    TensorRT imported before (by a probe for a real installation, say) are dropped, so that nvtripy
    imports the executor's stand-ins."""
    if "nvtripy" in sys.modules:
        if is_installed():
            return
        raise ExecutorError("nvtripy was imported before the CPU executor was installed")
    check_nvtripy_version()

    from torch_executor import stubs

    for name in [m for m in sys.modules if m.split(".")[0] in stubs.STUBBED_ROOTS]:
        del sys.modules[name]
    stubs.install_finder()
    import nvtripy

    _patch(nvtripy)
    nvtripy._torch_executor_installed = True


def source_files():
    """Absolute paths of this package's Python files, which decide what a compiled program is (its
    constant folding, packing and kernels run at compile time): a cache of programs keys on them."""
    here = os.path.dirname(os.path.abspath(__file__))
    return [os.path.join(here, name) for name in sorted(os.listdir(here)) if name.endswith(".py")]


def weight_bytes(*executables):
    """Bytes of the constants the programs of these `tp.Executable`s read when they run, each storage
    counted once across them (a prefill and a decode program share their weights)."""
    from torch_executor import program

    return program.weight_bytes([executable._executable.program for executable in executables])


def cpu_features():
    """The CPU features that decide which kernels a compiled program's products use, and so how its
    weights are packed: a cache of programs keys on them."""
    from torch_executor import matmul

    return matmul.cpu_features()


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
