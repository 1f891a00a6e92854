"""Conformance: every code example in nvtripy's public docstrings runs on the CPU executor.

The examples are collected at test time from the installed package, so the suite follows the
nvtripy version that is installed and no example is copied into this repo. Lines marked for the
docs only (`# doc: omit`, `# doc: print-locals ...`, `# doc: no-print-locals ...`) are ordinary
Python comments and run as written. After an example runs, every tensor it left in its namespace
is evaluated, as the docs build does when it prints them, so an op that is built but never used
still has to run.
"""

import inspect
import linecache
import pathlib
import re
import textwrap
import types

import numpy as np
import pytest
import torch

import nvtripy as tp
from nvtripy.export import PUBLIC_APIS

# ----------------------------------------------------------------------------------------------
# Collection

_DIRECTIVE = re.compile(r"^(\s*)\.\. code-block:: python\s*$")


def code_blocks(docstring):
    """The Python code blocks of a reStructuredText docstring, dedented, options dropped."""
    lines = docstring.expandtabs().splitlines()
    blocks = []
    for number, line in enumerate(lines):
        match = _DIRECTIVE.match(line)
        if not match:
            continue
        indent = len(match.group(1))
        body = []
        for inner in lines[number + 1 :]:
            if inner.strip() and len(inner) - len(inner.lstrip()) <= indent:
                break
            body.append(inner)
        while body and (not body[0].strip() or body[0].strip().startswith(":")):
            body.pop(0)  # directive options (:linenos:, :caption: ...) and the blank line after them
        blocks.append(textwrap.dedent("\n".join(body)).strip() + "\n")
    return blocks


def public_objects():
    """(name, object) for each public API and each documented method or property of a public class.

    nvtripy's function registry wraps inherited methods again for each subclass (e.g.
    `DimensionSize.__add__`, `Linear.state_dict`), and the docs show each of them, so each counts.
    """
    seen = set()
    for api in PUBLIC_APIS:
        candidates = [(api.qualname, api.obj)]
        if inspect.isclass(api.obj):
            candidates += [
                (f"{api.qualname}.{name}", member)
                for name, member in inspect.getmembers(api.obj)
                if inspect.isfunction(member) or inspect.ismethod(member) or isinstance(member, property)
            ]
        for name, obj in candidates:
            if id(obj) not in seen:  # overloads (tp.arange, tp.resize, ...) share one dispatcher
                seen.add(id(obj))
                yield name, obj


def collect_examples():
    examples = []
    for name, obj in public_objects():
        doc = getattr(obj, "__doc__", None)
        if isinstance(doc, str):
            examples += [(f"{name}:{index}", code) for index, code in enumerate(code_blocks(doc))]
    return examples


# ----------------------------------------------------------------------------------------------
# What the examples expect to find in their namespace


class _HostArray(np.ndarray):
    """A numpy array standing for a cupy array: `.get()` (device to host) returns it as numpy."""

    def get(self):
        return np.asarray(self)


def _host(value):
    return np.asarray(value).view(_HostArray)


# cupy is numpy for GPU memory; the executor keeps "device" memory on the host, so numpy does its job.
cp = types.SimpleNamespace(
    from_dlpack=lambda tensor: _host(np.from_dlpack(tensor)),
    array=lambda *args, **kwargs: _host(np.array(*args, **kwargs)),
    ascontiguousarray=lambda value: _host(np.ascontiguousarray(value)),
    array_equal=np.array_equal,
    cumsum=lambda *args, **kwargs: _host(np.cumsum(*args, **kwargs)),
    repeat=lambda *args, **kwargs: _host(np.repeat(*args, **kwargs)),
)


class _HostTorch(types.ModuleType):
    """torch, where a CUDA device means the host: a few examples build their torch reference
    module on `torch.device("cuda")`, and this torch has no CUDA."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def device(kind, *args, **kwargs):
        return torch.device("cpu") if str(kind).startswith("cuda") else torch.device(kind, *args, **kwargs)


host_torch = _HostTorch("torch")


# ----------------------------------------------------------------------------------------------
# Examples the executor cannot run: {example id: (reason, text the error must contain)}. Each is a
# strict xfail that only a matching error satisfies; an example that starts passing, or fails in
# another way, fails the test.

NO_TENSORRT_ENGINE = (
    "Executable.serialized_tensorrt_engine: the CPU executor builds no TensorRT engine",
    "builds no TensorRT engine",
)
NO_PLUGINS = ("trace op Plugin: TensorRT plugins need TensorRT", "cannot run trace op 'Plugin'")

EXPECTED_FAILURES = {
    # Reads the TensorRT engine inside the executable: the executor's programs are not engines.
    "nvtripy.Executable.serialized_tensorrt_engine:0": NO_TENSORRT_ENGINE,
    # Runs a TensorRT plugin: a kernel that only TensorRT can load; defining one works, running it cannot.
    "nvtripy.plugin:0": NO_PLUGINS,
}


class ExpectedFailure(Exception):
    pass


EXAMPLES = collect_examples()


def _param(example_id, code):
    marks = []
    if example_id in EXPECTED_FAILURES:
        reason, _ = EXPECTED_FAILURES[example_id]
        marks.append(pytest.mark.xfail(reason=reason, raises=ExpectedFailure, strict=True))
    return pytest.param(example_id, code, id=example_id, marks=marks)


def test_examples_were_found():
    # The count tracks nvtripy 0.1.7; a parser that silently found nothing must not pass.
    assert len(EXAMPLES) > 250
    assert set(EXPECTED_FAILURES) <= {example_id for example_id, _ in EXAMPLES}


def test_every_example_in_the_package_sources_is_collected():
    package = pathlib.Path(tp.__file__).parent
    in_sources = {block for path in package.rglob("*.py") for block in code_blocks(path.read_text())}
    assert len(in_sources) > 150
    assert in_sources <= {code for _, code in EXAMPLES}


def test_code_blocks_keep_doc_markers_and_drop_directive_options():
    doc = """
    Summary.

    .. code-block:: python
        :linenos:
        :caption: Example

        import tempfile # doc: omit
        # doc: print-locals out
        if True:
            out = 1

        assert out == 1

    Trailing text.

        .. code-block:: python

            nested = 2
    """
    assert code_blocks(doc) == [
        "import tempfile # doc: omit\n# doc: print-locals out\nif True:\n    out = 1\n\nassert out == 1\n",
        "nested = 2\n",
    ]


def run_example(example_id, code):
    filename = f"<docstring example {example_id}>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)  # for nvtripy's error messages
    namespace = {"tp": tp, "np": np, "torch": host_torch, "cp": cp, "__name__": "docstring_example"}
    exec(compile(code, filename, "exec"), namespace)
    for value in namespace.values():
        if isinstance(value, tp.Tensor):
            value.eval()


@pytest.mark.parametrize("example_id, code", [_param(example_id, code) for example_id, code in EXAMPLES])
def test_docstring_example(example_id, code):
    if example_id not in EXPECTED_FAILURES:
        run_example(example_id, code)
        return
    reason, expected_text = EXPECTED_FAILURES[example_id]
    try:
        run_example(example_id, code)
    except Exception as exc:
        if expected_text in str(exc):
            raise ExpectedFailure(reason) from exc
        raise
