"""matmul.py: products by a bfloat16 weight run in float32 blocks where the CPU lacks bfloat16
arithmetic, and compute what a bfloat16 product computes: float32 sums rounded once."""

import pytest
import torch

import nvtripy as tp
from torch_executor import matmul


def on_device(t):
    return tp.copy(tp.Tensor(t), tp.device("gpu")).eval()


def compiled_product(weight):
    return tp.compile(lambda x: x @ tp.Tensor(weight), args=[tp.InputInfo(((1, 4, 16), 2, 64), dtype=tp.bfloat16)])


@pytest.fixture
def no_bfloat16_arithmetic(monkeypatch):
    monkeypatch.setattr(matmul, "cpu_has_bfloat16_arithmetic", lambda: False)
    monkeypatch.setattr(matmul, "BLOCK_BYTES", 64 * 4 * 64)  # blocks of 64 columns: 200 makes four, one partial


@pytest.mark.parametrize("batch", [1, 2, 3, 16])  # 2 rows: row by row; 4: torch's product; 6 and 32: float32 blocks
def test_a_bfloat16_product_rounds_float32_sums_once(no_bfloat16_arithmetic, batch):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 200, generator=generator).bfloat16()
    compiled = compiled_product(weight)
    (step,) = [c for c in compiled._executable.program._calls if c[0] == "MatrixMultiply"]
    assert step[1] is matmul.by_bfloat16_matrix
    x = torch.randn(batch, 2, 64, generator=generator).bfloat16()
    out = torch.from_dlpack(compiled(on_device(x)))
    assert out.dtype == torch.bfloat16 and out.shape == (batch, 2, 200)
    exact = x.float() @ weight.float()
    # Rounding to bfloat16 (8 significant bits) errs by at most half a unit in the last place.
    assert ((out.float() - exact).abs() <= exact.abs() * 2.0**-8 + 1e-5).all()
    torch.testing.assert_close(out, x @ weight)  # and agrees with torch's own bfloat16 product


def test_cpus_with_bfloat16_arithmetic_keep_torchs_product(monkeypatch):
    monkeypatch.setattr(matmul, "cpu_has_bfloat16_arithmetic", lambda: True)
    compiled = compiled_product(torch.randn(64, 8).bfloat16())
    (step,) = [c for c in compiled._executable.program._calls if c[0] == "MatrixMultiply"]
    assert step[1] is not matmul.by_bfloat16_matrix


def test_float32_products_are_left_to_torch(no_bfloat16_arithmetic):
    assert not matmul.fits(torch.randn(64, 8))
    assert not matmul.fits(torch.randn(8, 64).bfloat16().t())  # not a contiguous (in, out) matrix
    assert matmul.fits(torch.randn(64, 8).bfloat16())
