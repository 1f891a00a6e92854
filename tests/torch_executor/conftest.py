"""These tests examine the CPU executor itself: where TRIPY_EXAMPLE_BACKEND put nvtripy on
TensorRT instead, they are skipped, saying so."""

import pathlib

import pytest

import torch_executor

HERE = pathlib.Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    if torch_executor.is_installed():
        return
    skip = pytest.mark.skip(reason="nvtripy runs on TensorRT in this session; these tests are for the CPU executor")
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(skip)
