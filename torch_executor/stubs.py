"""Import-time stand-ins for `tensorrt` and `mlir_tensorrt`.

nvtripy imports both at load time, but touches MLIR only inside `to_mlir` methods and the
compiler, which the executor never calls. Every such import gets an inert module whose
attributes are inert callables. Three modules are real: the runtime API and the compiler API,
which map to this package's `runtime` and `compiler` modules, and `tensorrt.plugin`, which maps
to `trt_plugin`: plugins can be defined there, but using one needs TensorRT.
"""

import importlib.abc
import importlib.machinery
import sys
import types

STUBBED_ROOTS = ("tensorrt", "mlir_tensorrt")
REAL_MODULES = {
    "mlir_tensorrt.runtime.api": "torch_executor.runtime",
    "mlir_tensorrt.compiler.api": "torch_executor.compiler",
    "tensorrt.plugin": "torch_executor.trt_plugin",
}


class Inert:
    """Stands for any MLIR/TensorRT object: calling it or reading an attribute gives another
    Inert. Dunder lookups fail, so `inspect` and friends see a plain object. It cannot be
    indexed: with `__getitem__`, `in` and iteration would read items 0, 1, 2, ... forever."""

    def __init__(self, name):
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return Inert(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        return Inert(f"{self._name}()")

    def __repr__(self):
        return f"<inert {self._name}>"


class InertModule(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return Inert(f"{self.__name__}.{attr}")


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        if spec.name in REAL_MODULES:
            return importlib.import_module(REAL_MODULES[spec.name])
        module = InertModule(spec.name)
        module.__path__ = []  # a package, so that any submodule can be imported below it
        return module

    def exec_module(self, module):
        pass


class StubFinder(importlib.abc.MetaPathFinder):
    """Answers imports of `tensorrt*` and `mlir_tensorrt*` before the real finders do."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] not in STUBBED_ROOTS:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(), is_package=True)


def install_finder():
    if not any(isinstance(finder, StubFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, StubFinder())
