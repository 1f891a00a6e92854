"""The meaning of each trace op, checked against PyTorch or against what TensorRT documents.

Most tests go through nvtripy's frontend, so they also check that the trace carries what the
op needs; a few call `torch_executor.ops` directly where the frontend cannot reach an edge case.
"""

import numpy as np
import pytest
import torch

import nvtripy as tp
from torch_executor import ops


def as_torch(tensor):
    return torch.from_dlpack(tensor)


def test_get_dimension_size_reads_an_element_of_a_shape_tensor():
    assert ops.get_dimension_size(torch.tensor([5, 7], dtype=torch.int32), dim=1).item() == 7

    def flatten(x):
        return tp.reshape(x, (x.shape[0] * x.shape[1],))

    compiled = tp.compile(flatten, args=[tp.InputInfo(((1, 2, 4), (1, 3, 4)), dtype=tp.float32)])
    out = compiled(tp.iota((2, 3), dtype=tp.float32).eval())
    assert out.shape == (6,)
    assert as_torch(out).tolist() == [0, 0, 0, 1, 1, 1]
