"""The part of `mlir_tensorrt.compiler.api` that nvtripy's compiler calls.

With the executor installed, `Trace.to_mlir` hands over a `TraceModule` instead of MLIR, and
"compiling" it means turning the trace into a Program.
"""

from torch_executor import program as program_module
from torch_executor.runtime import Executable


class TraceModule:
    """Stands where nvtripy expects an MLIR module; `operation` is what the compiler consumes."""

    def __init__(self, trace):
        self.operation = TraceOperation(trace)


class TraceOperation:
    """A trace, and the Program it compiles to, built once."""

    def __init__(self, trace):
        self.trace = trace
        self._program = None

    def program(self):
        if self._program is None:
            self._program = program_module.compile_trace(self.trace)
        return self._program

    def get_asm(self, large_elements_limit=None):
        """What nvtripy logs as MLIR at verbosity "mlir": here, the program the executor runs."""
        try:
            return self.program().text(large_elements_limit)
        except Exception as exc:
            # nvtripy logs before it compiles; compiling raises this again, traced to the user's code.
            return f"(the trace does not compile: {type(exc).__name__})"


class _CompilationTask:
    def run(self, operation):
        pass


class CompilerClient:
    def __init__(self, context=None):
        pass

    def get_compilation_task(self, name, options):
        return _CompilationTask()


def translate_mlir_to_executable(operation):
    return Executable(operation.program())
