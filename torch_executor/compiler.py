"""The part of `mlir_tensorrt.compiler.api` that nvtripy's compiler calls.

With the executor installed, `Trace.to_mlir` hands over a `TraceModule` instead of MLIR, and
"compiling" it means turning the trace into a Program.
"""

from torch_executor.program import Program
from torch_executor.runtime import Executable


class TraceModule:
    """Stands where nvtripy expects an MLIR module; `operation` is what the compiler consumes."""

    def __init__(self, trace):
        self.operation = trace


class _CompilationTask:
    def run(self, operation):
        pass


class CompilerClient:
    def __init__(self, context=None):
        pass

    def get_compilation_task(self, name, options):
        return _CompilationTask()


def translate_mlir_to_executable(trace):
    return Executable(Program.from_trace(trace))
