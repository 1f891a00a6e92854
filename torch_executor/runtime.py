"""The part of `mlir_tensorrt.runtime.api` that nvtripy uses, backed by PyTorch tensors.

"Device" memory is host memory here: a device memref holds a CPU tensor but keeps the device
address space, so nvtripy's rules about where tensors live (inputs of compiled functions must
be on the device, constants in a trace must be on the host) hold exactly as on a GPU.
"""

import enum

import torch


class MTRTException(Exception):
    pass


class ScalarTypeCode(enum.Enum):
    i1 = "i1"
    i4 = "i4"
    i8 = "i8"
    i32 = "i32"
    i64 = "i64"
    f16 = "f16"
    bf16 = "bf16"
    f32 = "f32"
    f8e4m3fn = "f8e4m3fn"
    # Taken in through DLPack, as by TensorRT's runtime; nvtripy has no such types and refuses them itself.
    f64 = "f64"
    i16 = "i16"
    ui8 = "ui8"


class PointerType(enum.Enum):
    host = "host"
    device = "device"


# int4 has no torch dtype: its values live in int8 storage, range-limited to [-8, 7].
TORCH_DTYPES = {
    ScalarTypeCode.i1: torch.bool,
    ScalarTypeCode.i4: torch.int8,
    ScalarTypeCode.i8: torch.int8,
    ScalarTypeCode.i32: torch.int32,
    ScalarTypeCode.i64: torch.int64,
    ScalarTypeCode.f16: torch.float16,
    ScalarTypeCode.bf16: torch.bfloat16,
    ScalarTypeCode.f32: torch.float32,
    ScalarTypeCode.f8e4m3fn: torch.float8_e4m3fn,
    ScalarTypeCode.f64: torch.float64,
    ScalarTypeCode.i16: torch.int16,
    ScalarTypeCode.ui8: torch.uint8,
}
SCALAR_TYPE_CODES = {torch_dtype: code for code, torch_dtype in TORCH_DTYPES.items() if code != ScalarTypeCode.i4}

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


class MemRefValue:
    def __init__(self, tensor, dtype, address_space):
        self.tensor = tensor
        self.dtype = dtype
        self.address_space = address_space

    @property
    def shape(self):
        return list(self.tensor.shape)

    @property
    def strides(self):
        return list(self.tensor.stride())

    @property
    def ptr(self):
        return self.tensor.data_ptr()

    def __dlpack__(self, stream=None):
        if self.dtype == ScalarTypeCode.f8e4m3fn:
            # TensorRT's runtime exports float8 as DLPack's plain 8-bit float, which PyTorch refuses
            # with this message: so it fails here as it would there.
            raise BufferError(
                "Unsupported kFloat bits 8: float8 tensors cannot be exported through DLPack; "
                "cast them to another type first, e.g. tp.cast(tensor, tp.float32)"
            )
        return self.tensor.__dlpack__()

    def __dlpack_device__(self):
        return self.tensor.__dlpack_device__()

    def __repr__(self):
        return f"MemRefValue({self.dtype.name}, {self.shape}, {self.address_space.name})"


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
        from torch_executor.program import Program

        self.program = program if isinstance(program, Program) else Program.deserialize(bytes(program))

    def get_signature(self, name):
        return _Signature(len(self.program.output_slots))

    def serialize(self):
        return self.program.serialize()

    def get_data_segments(self):
        raise MTRTException(
            "The CPU executor builds no TensorRT engine: `serialized_tensorrt_engine` needs the TensorRT backend."
        )
