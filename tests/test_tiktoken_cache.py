"""The gpt2_tiktoken_cache fixture's source: TIKTOKEN_CACHE_DIR first, then the shared cache beside the repository."""

import shutil

import helpers
import pytest
from helpers import GPT2_TIKTOKEN_FILES, find_gpt2_tiktoken_cache


def cache_with_gpt2(directory, gpt2_tiktoken_cache):
    directory.mkdir()
    for name in GPT2_TIKTOKEN_FILES:
        shutil.copyfile(f"{gpt2_tiktoken_cache}/{name}", directory / name)
    return str(directory)


@pytest.fixture
def shared_cache(gpt2_tiktoken_cache, tmp_path, monkeypatch):
    """A stand-in for the shared cache, holding the gpt2 encoding."""
    cache = cache_with_gpt2(tmp_path / "shared", gpt2_tiktoken_cache)
    monkeypatch.setattr(helpers, "SHARED_TIKTOKEN_CACHE", cache)
    return cache


def test_tiktoken_cache_dir_comes_first(shared_cache, gpt2_tiktoken_cache, tmp_path, monkeypatch):
    users = cache_with_gpt2(tmp_path / "users", gpt2_tiktoken_cache)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", users)
    assert find_gpt2_tiktoken_cache() == users


def test_tiktoken_cache_dir_without_gpt2_falls_back_to_the_shared_cache(shared_cache, tmp_path, monkeypatch):
    (tmp_path / "users").mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "users"))
    assert find_gpt2_tiktoken_cache() == shared_cache
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    assert find_gpt2_tiktoken_cache() == shared_cache


def test_a_damaged_file_is_not_the_gpt2_encoding(shared_cache, gpt2_tiktoken_cache, tmp_path, monkeypatch):
    users = cache_with_gpt2(tmp_path / "users", gpt2_tiktoken_cache)
    name = next(iter(GPT2_TIKTOKEN_FILES))
    with open(f"{users}/{name}", "r+b") as f:
        f.truncate(1000)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", users)
    assert find_gpt2_tiktoken_cache() == shared_cache


def test_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "missing"))
    monkeypatch.setattr(helpers, "SHARED_TIKTOKEN_CACHE", str(tmp_path / "also-missing"))
    assert find_gpt2_tiktoken_cache() is None
