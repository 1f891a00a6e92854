"""The part of `mlir_tensorrt.runtime.api` that nvtripy uses, backed by PyTorch tensors.

"Device" memory is host memory here: a device memref holds a CPU tensor but keeps the device
address space, so nvtripy's rules about where tensors live (inputs of compiled functions must
be on the device, constants in a trace must be on the host) hold exactly as on a GPU.
"""

import torch

from torch_executor.program import Program
from torch_executor.values import (  # noqa: F401 (nvtripy reads these from the runtime API)
    SCALAR_TYPE_CODES,
    TORCH_DTYPES,
    MemRefValue,
    MTRTException,
    PointerType,
    ScalarTypeCode,
)

# The `array.array` typecodes nvtripy uses when it builds constants from Python lists.
_ARRAY_TYPECODES = {"b": torch.int8, "i": torch.int32, "l": torch.int64, "f": torch.float32}


class Device:
    def __init__(self, index=0):
        self.index = index

    def __repr__(self):
        return f"Device({self.index})"


class Stream:
    """Work runs synchronously, so a stream only has an identity."""

    def __init__(self):
        self.ptr = id(self)

    def sync(self):
        pass


def memref_from_tensor(tensor, address_space=PointerType.device, dtype=None):
    if dtype is None and tensor.dtype not in SCALAR_TYPE_CODES:
        raise MTRTException(f"Unsupported DLPack data type: {tensor.dtype}")
    return MemRefValue(tensor, dtype or SCALAR_TYPE_CODES[tensor.dtype], address_space)


class RuntimeClient:
    def __init__(self):
        self._devices = [Device(0)]

    def get_devices(self):
        return self._devices

    def create_stream(self):
        return Stream()

    def create_memref(self, array=None, *, shape, dtype, device=None, stream=None):
        torch_dtype = TORCH_DTYPES[dtype]
        if array is None:
            tensor = torch.empty(tuple(shape), dtype=torch_dtype)
        else:
            source = torch.frombuffer(bytearray(memoryview(array).cast("B")), dtype=_ARRAY_TYPECODES[array.typecode])
            tensor = source.to(torch_dtype).reshape(tuple(shape))
        space = PointerType.host if device is None else PointerType.device
        return MemRefValue(tensor, dtype, space)

    def create_memref_view_from_dlpack(self, capsule, assert_canonical_strides=False):
        tensor = torch.from_dlpack(capsule)
        if assert_canonical_strides and tensor.numel() > 1:
            canonical = _canonical_strides(tensor.shape)
            given = list(tensor.stride())
            significant = [i for i, size in enumerate(tensor.shape) if size != 1]
            if any(given[i] != canonical[i] for i in significant):
                raise MTRTException(
                    f"Given strides [{', '.join(map(str, given))}] do not match canonical strides "
                    f"[{', '.join(map(str, canonical))}] for shape [{', '.join(map(str, tensor.shape))}]"
                )
        space = PointerType.host
        if tensor.device.type != "cpu":
            # The executor computes on the host: a GPU array is copied, not viewed.
            tensor = tensor.cpu()
        return memref_from_tensor(tensor, space)

    def copy_to_host(self, device_memref, stream=None):
        return MemRefValue(device_memref.tensor.clone(), device_memref.dtype, PointerType.host)

    def copy_to_device(self, host_memref, device=None, stream=None):
        return MemRefValue(host_memref.tensor.clone(), host_memref.dtype, PointerType.device)


def _canonical_strides(shape):
    strides, running = [], 1
    for size in reversed(shape):
        strides.append(running)
        running *= size
    return list(reversed(strides))


class RuntimeSessionOptions:
    def __init__(self, num_devices=1, device_id=0):
        self.num_devices = num_devices
        self.device_id = device_id


class RuntimeSession:
    def __init__(self, options, executable):
        self.executable = executable

    def execute_function(self, name, in_args, stream=None, client=None):
        return self.executable.program.run(in_args)


class _Signature:
    def __init__(self, num_results):
        self._num_results = num_results

    def get_num_results(self):
        return self._num_results


class Executable:
    """A compiled program. Built from serialized bytes, as the real class is, or from a Program."""

    def __init__(self, program):
        self.program = program if isinstance(program, Program) else Program.deserialize(bytes(program))

    def get_signature(self, name):
        return _Signature(len(self.program.output_slots))

    def serialize(self):
        return self.program.serialize()

    def get_data_segments(self):
        raise MTRTException(
            "The CPU executor builds no TensorRT engine: `serialized_tensorrt_engine` needs the TensorRT backend."
        )
