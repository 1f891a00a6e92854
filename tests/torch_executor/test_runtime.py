"""The runtime stand-in: host memory plays device memory, but nvtripy's placement rules still hold."""

import numpy as np
import pytest
import torch

import nvtripy as tp
from torch_executor import runtime


def test_tensors_from_host_data_live_in_host_memory_until_copied():
    host = tp.Tensor(torch.arange(4.0))
    assert host.device.kind == "cpu"
    device = tp.copy(host, tp.device("gpu")).eval()
    assert device.device.kind == "gpu"
    back = tp.copy(device, tp.device("cpu"))
    assert back.device.kind == "cpu"
    assert torch.from_dlpack(back).tolist() == [0.0, 1.0, 2.0, 3.0]
    # As in nvtripy with TensorRT, eval() puts a tensor in device memory.
    assert back.eval().device.kind == "gpu"


def test_computed_tensors_are_in_device_memory():
    assert (tp.ones((2,)) + 1).eval().device.kind == "gpu"


def test_compiled_functions_take_only_device_tensors():
    compiled = tp.compile(lambda x: x * 2, args=[tp.InputInfo((2,), dtype=tp.float32)])
    assert torch.from_dlpack(compiled(tp.copy(tp.Tensor([1.0, 2.0]), tp.device("gpu")).eval())).tolist() == [2.0, 4.0]
    with pytest.raises(tp.TripyException, match="Unexpected tensor device"):
        compiled(tp.Tensor([1.0, 2.0]))


def test_device_constants_in_a_traced_function_are_refused():
    device_constant = tp.copy(tp.Tensor([1.0, 2.0]), tp.device("gpu")).eval()
    with pytest.raises(tp.TripyException, match="device"):
        tp.compile(lambda x: x + device_constant, args=[tp.InputInfo((2,), dtype=tp.float32)])


def test_results_never_alias_inputs_or_constants():
    constant = tp.Tensor([5.0, 6.0])
    compiled = tp.compile(lambda x: (x, constant + 0 * x), args=[tp.InputInfo((2,), dtype=tp.float32)])
    given = tp.copy(tp.Tensor([1.0, 2.0]), tp.device("gpu")).eval()
    same, other = compiled(given)
    assert torch.from_dlpack(same).data_ptr() != torch.from_dlpack(given).data_ptr()
    torch.from_dlpack(same).fill_(0)
    assert torch.from_dlpack(given).tolist() == [1.0, 2.0]
    assert torch.from_dlpack(other).tolist() == [5.0, 6.0]


def test_dlpack_round_trip_keeps_values_and_dtypes():
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.int32, torch.int64, torch.bool):
        data = torch.tensor([[1, 0, 3], [4, 5, 0]]).to(dtype)
        compiled = tp.compile(
            lambda x: tp.concatenate([x, x], dim=0), args=[tp.InputInfo((2, 3), dtype=getattr(tp, str(dtype)[6:]))]
        )
        out = torch.from_dlpack(compiled(tp.copy(tp.Tensor(data), tp.device("gpu"))))
        assert out.dtype == dtype and torch.equal(out, torch.cat([data, data]))


def test_non_contiguous_views_are_refused_with_a_hint():
    view = torch.arange(6.0).reshape(2, 3).t()
    with pytest.raises(tp.TripyException, match=r"Non-canonical strides detected"):
        tp.Tensor(view)


def test_tolist_of_a_lazy_tensor():
    assert (tp.arange(3, dtype=tp.int32) * 2).tolist() == [0, 2, 4]


def test_memref_copies_keep_their_address_space():
    client = runtime.RuntimeClient()
    host = runtime.memref_from_tensor(torch.ones(2), runtime.PointerType.host)
    device = client.copy_to_device(host)
    assert device.address_space is runtime.PointerType.device
    assert client.copy_to_host(device).address_space is runtime.PointerType.host
    assert device.tensor.data_ptr() != host.tensor.data_ptr()


def test_streams_synchronize_trivially():
    stream = tp.Stream()
    stream.synchronize()
    assert isinstance(stream.ptr, int)
    assert tp.default_stream() == tp.default_stream()


def test_float8_results_cannot_leave_through_dlpack_as_on_tensorrt():
    """TensorRT's runtime exports float8 as DLPack's plain 8-bit float, which PyTorch refuses
    with "Unsupported kFloat bits 8"."""
    fp8 = tp.cast(tp.Tensor([1.0, -2.0]), tp.float8)
    with pytest.raises(BufferError, match="Unsupported kFloat bits 8"):
        torch.from_dlpack(fp8)
    with pytest.raises(BufferError, match="Unsupported kFloat bits 8"):
        np.from_dlpack(fp8)
    # nvtripy itself reads float8 through a cast, and a cast result leaves as usual.
    assert fp8.tolist() == [1.0, -2.0]
    assert torch.from_dlpack(tp.cast(fp8, tp.float32)).tolist() == [1.0, -2.0]


@pytest.mark.parametrize(
    "data, code",
    [
        (np.ones((2,), dtype=np.float64), "f64"),
        (torch.ones(2, dtype=torch.float64), "f64"),
        (np.ones((2,), dtype=np.int16), "i16"),
        (np.ones((2,), dtype=np.uint8), "ui8"),
    ],
    ids=["numpy-float64", "torch-float64", "int16", "uint8"],
)
def test_data_of_a_type_nvtripy_lacks_gets_nvtripys_own_error(data, code):
    # The runtime takes such memory in; nvtripy, which has no type for it, then refuses it.
    with pytest.raises(
        tp.TripyException, match=f"Data type: 'ScalarTypeCode.{code}' does not have a corresponding nvtripy data type"
    ):
        tp.Tensor(data)


def test_data_the_runtime_cannot_take_is_refused_by_it():
    with pytest.raises(runtime.MTRTException, match="Unsupported DLPack data type: torch.complex64"):
        tp.Tensor(torch.ones(2, dtype=torch.complex64))
