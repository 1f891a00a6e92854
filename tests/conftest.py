"""Fixtures shared by the tests. Importing helpers chooses the nvtripy backend
(TRIPY_EXAMPLE_BACKEND, default auto) before anything imports nvtripy; shared test code lives there."""

import os
import shutil

import pytest
import torch

import make_tiny_checkpoint
from helpers import (
    GPT2_TIKTOKEN_FILES,
    PARITY_CONFIGS,
    QUANT_CONFIGS,
    find_gpt2_tiktoken_cache,
    write_random_checkpoint,
)


@pytest.fixture(autouse=True)
def torch_threads_stay_as_they_were():
    """A command run in-process (perplexity.main) sets torch's threads for the whole process (--threads);
    later tests must not inherit that."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and on a loaded machine a second one mostly waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """The checkpoint make_tiny_checkpoint.py writes by default: what the README runs."""
    directory = str(tmp_path_factory.mktemp("tiny-gpt2"))
    make_tiny_checkpoint.make_checkpoint(directory)
    return directory


@pytest.fixture(scope="session")
def parity_checkpoints(tmp_path_factory):
    """name -> (directory, transformers GPT2LMHeadModel in fp32) for every PARITY_CONFIGS entry."""
    checkpoints = {}
    for seed, (name, shape) in enumerate(PARITY_CONFIGS.items()):
        directory = str(tmp_path_factory.mktemp(f"parity-{name}"))
        checkpoints[name] = (directory, write_random_checkpoint(directory, seed=seed, **shape))
    return checkpoints


@pytest.fixture
def offline_env(tmp_path):
    """Environment for running example.py as a user would with no network: an empty Hugging Face
    cache, hub access off, and tiktoken's cache pointing at an empty directory."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), TIKTOKEN_CACHE_DIR=str(tmp_path / "tiktoken"))
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    return env


@pytest.fixture(scope="session")
def gpt2_tiktoken_cache(tmp_path_factory):
    """A writable tiktoken cache holding the gpt2 encoding, copied from find_gpt2_tiktoken_cache's, or skip."""
    cache = find_gpt2_tiktoken_cache()
    if cache is None:
        pytest.skip(
            "tiktoken's gpt2 encoding is not cached here, and the tests never download it: on a machine with "
            "internet, fill a cache with `TIKTOKEN_CACHE_DIR=~/tiktoken-cache python -c 'import tiktoken; "
            'tiktoken.get_encoding("gpt2")\'`, then run the tests with TIKTOKEN_CACHE_DIR=~/tiktoken-cache '
            "(README.md, Tests)"
        )
    copy = tmp_path_factory.mktemp("tiktoken-cache")
    for name in GPT2_TIKTOKEN_FILES:
        shutil.copyfile(os.path.join(cache, name), copy / name)
    return str(copy)


@pytest.fixture(scope="session")
def real_gpt2():
    """The Hub id under which OpenAI's gpt2 is in the local Hugging Face cache, or skip without it."""
    from huggingface_hub import try_to_load_from_cache

    for repo in ("gpt2", "openai-community/gpt2"):
        if all(isinstance(try_to_load_from_cache(repo, name), str) for name in ("config.json", "model.safetensors")):
            return repo
    pytest.skip("needs the real gpt2 weights in the Hugging Face cache (the tests never download them)")


@pytest.fixture(scope="session")
def quant_checkpoints(tmp_path_factory):
    """name -> checkpoint directory for every QUANT_CONFIGS entry (tokenizer included)."""
    checkpoints = {}
    for seed, (name, shape) in enumerate(QUANT_CONFIGS.items()):
        directory = str(tmp_path_factory.mktemp(name))
        write_random_checkpoint(directory, seed=seed, **shape)
        checkpoints[name] = directory
    return checkpoints
