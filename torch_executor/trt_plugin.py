"""What `tensorrt.plugin` is with the executor installed: plugins can be defined, not run.

A script that defines a TensorRT plugin with this module's decorators (`register`, `impl`,
`aot_impl`, `autotune`) and type annotations (`TensorDesc`, `Tensor`, ...) imports and runs as it
does on TensorRT. Using one, through `tp.plugin` (which reads `op`) or by calling it, fails saying
that plugins need TensorRT: they are kernels TensorRT loads and runs, and there is none here.
"""

NEEDS_TENSORRT = (
    "`tp.plugin` needs TensorRT: plugins are kernels that TensorRT loads and runs, "
    "and the CPU executor has no TensorRT to call"
)


def _refuse():
    from nvtripy.common.exception import TripyException

    raise TripyException(NEEDS_TENSORRT)


class PluginDef:
    """What `register` returns, as on TensorRT: the plugin's id and its shape and type function."""

    def __init__(self, plugin_id, register_func):
        self.plugin_id = plugin_id
        self.register_func = register_func
        self.__doc__ = register_func.__doc__

    def __call__(self, *args, **kwargs):
        _refuse()


def register(plugin_id, lazy_register=False):
    return lambda function: PluginDef(plugin_id, function)


def _keeps_function(plugin_id, *args, **kwargs):
    return lambda function: function


impl = aot_impl = autotune = _keeps_function


class _Ops:
    """`op.<namespace>.<name>`, where TensorRT finds registered plugins: reading it needs TensorRT."""

    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        _refuse()


op = _Ops()


class _Descriptor:
    """Stands for TensorRT's plugin types in annotations and signatures; using one needs TensorRT."""

    def __init__(self, *args, **kwargs):
        _refuse()


class TensorDesc(_Descriptor):
    pass


class Tensor(_Descriptor):
    pass


class ShapeExprs(_Descriptor):
    pass


class ShapeExpr(_Descriptor):
    pass


class SymExprs(_Descriptor):
    pass


class SymInt32(_Descriptor):
    pass


class KernelLaunchParams(_Descriptor):
    pass


class AutoTuneCombination(_Descriptor):
    pass


def __getattr__(name):
    """Any other name of the module, as an annotation: a type whose use needs TensorRT."""
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(name)
    return type(name, (_Descriptor,), {})
