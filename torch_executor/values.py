"""The values a compiled program takes and returns, and the error it raises: what both program.py
and runtime.py (the runtime API nvtripy calls) need, so that neither imports the other for them.
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
