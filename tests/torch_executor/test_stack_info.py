"""The cached stack walk must record exactly what nvtripy's own `get_stack_info` records."""

import dataclasses
import importlib.util

import pytest

import nvtripy as tp
import nvtripy.utils.stack_info as patched


def load_original():
    """nvtripy's unpatched module, loaded afresh from its file under another name."""
    spec = importlib.util.spec_from_file_location("original_nvtripy_stack_info", patched.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


original = load_original()


def records(stack):
    return [dataclasses.astuple(source) for source in stack], stack.include_code_index


def test_the_executor_replaced_get_stack_info():
    assert patched.get_stack_info.__module__ == "torch_executor.stack_info"


def test_same_frames_lines_and_columns():
    mine, theirs = patched.get_stack_info(1), original.get_stack_info(1)  # one line: same columns
    assert records(mine) == records(theirs)


def test_same_in_comprehensions_and_nested_calls():
    def nested():
        return [(patched.get_stack_info(), original.get_stack_info()) for _ in range(1)][0]

    mine, theirs = nested()
    assert len(mine) > 3
    assert records(mine) == records(theirs)


def test_errors_still_point_at_the_user_line():
    product = tp.ones((2, 3)) @ tp.ones((2, 3))  # mismatched inner dimensions, found when evaluated
    with pytest.raises(tp.TripyException) as info:
        product.eval()
    message = str(info.value)
    assert "Trace op 'MatrixMultiply' failed" in message
    assert "This originated from the following operation" in message
    assert "product = tp.ones((2, 3)) @ tp.ones((2, 3))" in message
