"""Installing the executor: the version check, the import-time stubs, and what they must not break."""

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
import types

import pytest

import torch_executor
from torch_executor import stubs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(code, timeout=120):
    """Runs `code` in a fresh interpreter (nothing imported yet) from the repo root."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize("version", ["0.1.7", "0.1.70", "0.1.7.post1", "0.1.6"])
def test_only_the_exact_supported_version_passes(monkeypatch, version):
    """Asked of the installed distribution's metadata, whatever is imported: 0.1.7 passes, and neither a
    version that starts with it nor an older one does."""
    monkeypatch.setattr(importlib.metadata, "version", lambda name: version)
    if version == torch_executor.SUPPORTED_NVTRIPY_VERSION:
        torch_executor.check_nvtripy_version()
        return
    with pytest.raises(torch_executor.ExecutorError, match=f"but {re.escape(version)} is installed"):
        torch_executor.check_nvtripy_version()


def test_another_nvtripy_version_is_refused(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.2.0")
    with pytest.raises(torch_executor.ExecutorError, match=r"supports nvtripy 0\.1\.7 only, but 0\.2\.0 is installed"):
        torch_executor.check_nvtripy_version()


def test_a_missing_nvtripy_is_reported_with_the_install_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(torch_executor.ExecutorError, match=r"pip install --no-deps nvtripy==0\.1\.7"):
        torch_executor.check_nvtripy_version()


def test_the_version_check_runs_before_nvtripy_is_imported():
    result = run_python("""
        import importlib.metadata, sys
        importlib.metadata.version = lambda name: "9.9.9"
        import torch_executor
        try:
            torch_executor.install()
        except torch_executor.ExecutorError as exc:
            print("refused:", exc)
        print("nvtripy imported:", "nvtripy" in sys.modules)
        """)
    assert result.returncode == 0, result.stderr
    assert "refused: the CPU executor supports nvtripy 0.1.7 only, but 9.9.9 is installed" in result.stdout
    assert "nvtripy imported: False" in result.stdout


def test_install_is_idempotent_but_refuses_an_nvtripy_imported_without_it(monkeypatch):
    torch_executor.install()  # conftest already installed it: a no-op
    monkeypatch.setitem(sys.modules, "nvtripy", types.ModuleType("nvtripy"))
    with pytest.raises(torch_executor.ExecutorError, match="imported before the CPU executor"):
        torch_executor.install()


# ----------------------------------------------------------------------------------------------
# Stubs


def test_inert_objects_answer_ordinary_attributes_but_no_dunders():
    inert = stubs.Inert("tensorrt.ILayer")
    assert isinstance(inert.anything().more, stubs.Inert)
    for dunder in ("__len__", "__iter__", "__version__", "__wrapped__", "__signature__"):
        assert not hasattr(inert, dunder)

    import tensorrt  # a stub, since the executor is installed

    assert isinstance(tensorrt, stubs.InertModule)
    assert isinstance(tensorrt.DataType, stubs.Inert)
    assert not hasattr(tensorrt, "__version__")
    assert not hasattr(tensorrt, "__all__")


def test_inert_objects_are_not_sequences():
    # Were they indexable, `in` and iteration would read items 0, 1, 2, ... forever.
    inert = stubs.Inert("tensorrt.plugin.op.ns.name.input_attrs")
    with pytest.raises(TypeError):
        iter(inert)
    with pytest.raises(TypeError):
        "alpha" in inert
    with pytest.raises(TypeError):
        inert[0]


def test_a_tensorrt_plugin_call_fails_at_once_saying_it_needs_tensorrt():
    result = run_python(
        """
        import backend
        backend.select_backend("cpu")
        import nvtripy as tp

        x = tp.ones((2,))
        for attributes in ({"alpha": 1.0}, {}):
            try:
                tp.plugin("ns::name", [x], **attributes)
            except tp.TripyException as exc:
                print("refused, needing TensorRT:", "needs TensorRT" in str(exc))
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["refused, needing TensorRT: True"] * 2


def test_a_script_defining_a_tensorrt_plugin_runs_and_only_using_the_plugin_fails():
    result = run_python(
        """
        from typing import List, Tuple, Union

        import backend
        backend.select_backend("cpu")
        import nvtripy as tp
        import tensorrt.plugin as trtp

        @trtp.register("example::elemwise_add_plugin")
        def add_plugin_desc(inp0: trtp.TensorDesc, block_size: int) -> trtp.TensorDesc:
            return inp0.like()

        @trtp.aot_impl("example::elemwise_add_plugin")
        def add_plugin_aot_impl(
            inp0: trtp.TensorDesc, block_size: int, outputs: Tuple[trtp.TensorDesc], tactic: int
        ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
            raise AssertionError("not called while defining")

        @trtp.impl("example::elemwise_add_plugin")
        def add_plugin_impl(inp0: trtp.Tensor, block_size: int, outputs: Tuple[trtp.Tensor], stream: int) -> None:
            raise AssertionError("not called while defining")

        @trtp.autotune("example::elemwise_add_plugin")
        def add_plugin_autotune(
            inp0: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]
        ) -> List[trtp.AutoTuneCombination]:
            raise AssertionError("not called while defining")

        print("defined:", add_plugin_desc.plugin_id, callable(add_plugin_impl))
        add = lambda x: tp.plugin("example::elemwise_add_plugin", [x], block_size=256)
        for use in (lambda: tp.compile(add, args=[tp.InputInfo((2, 3), dtype=tp.float32)]), lambda: add(tp.ones((2,)))):
            try:
                use()
            except tp.TripyException as exc:
                print("refused, needing TensorRT:", "needs TensorRT" in str(exc))
        """,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ["defined: example::elemwise_add_plugin True"] + ["refused, needing TensorRT: True"] * 2


def test_only_tensorrt_and_mlir_tensorrt_are_stubbed():
    finder = stubs.StubFinder()
    assert finder.find_spec("tensorrt") is not None
    assert finder.find_spec("mlir_tensorrt.compiler.dialects.tensorrt") is not None
    for name in ("torch", "tensorrt_llm", "transformers", "mlir", "numpy.tensorrt"):
        assert finder.find_spec(name) is None


def test_the_runtime_and_compiler_apis_are_the_executors():
    import mlir_tensorrt.compiler.api as compiler_api
    import mlir_tensorrt.runtime.api as runtime_api

    from torch_executor import compiler, runtime

    assert runtime_api is runtime
    assert compiler_api is compiler


def test_torch_and_transformers_import_and_work_after_the_stubs():
    result = run_python("""
        import backend
        backend.select_backend("cpu")
        import nvtripy as tp
        import torch
        import transformers
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=16, n_positions=8))
        logits = model(torch.tensor([[1, 2, 3]])).logits
        print("logits", tuple(logits.shape))
        print("tp", tp.ones((2,)).tolist())
        """)
    assert result.returncode == 0, result.stderr
    assert "logits (1, 3, 16)" in result.stdout
    assert "tp [1.0, 1.0]" in result.stdout
