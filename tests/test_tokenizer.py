"""tokenizer.py: a checkpoint's vocab.json and merges.txt tokenize with tiktoken exactly as with transformers,
and streamed text prints whole characters."""

import json
import os
import shutil

import pytest
import torch
from transformers import GPT2TokenizerFast

import tokenizer
from tokenizer import TokenizerError

TEXTS = [
    "Hello, my name is",
    "What is the answer to life, the universe, and everything?",
    "  two spaces, a tab\tand\nnew lines\n\n",
    "naïve café, 1234 numbers, emoji 😀 and Ünïcödé",
    "the then there theirs thinking tokenizer tokens",
]


def test_checkpoint_tokenizer_matches_transformers(tiny_checkpoint):
    ours = tokenizer.load_encoding(tiny_checkpoint, is_directory=True)
    theirs = GPT2TokenizerFast.from_pretrained(tiny_checkpoint)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text), text
        assert ours.decode(ids) == text


def test_endoftext_is_a_special_token(tiny_checkpoint):
    encoding = tokenizer.load_encoding(tiny_checkpoint, is_directory=True)
    vocab = json.load(open(os.path.join(tiny_checkpoint, "vocab.json"), encoding="utf-8"))
    assert encoding.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"})[1] == vocab["<|endoftext|>"]


def test_merges_out_of_order_are_refused(tiny_checkpoint, tmp_path):
    directory = shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")
    merges = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges[1], merges[2] = merges[2], merges[1]
    (directory / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="merge order disagrees"):
        tokenizer.load_encoding(str(directory), is_directory=True)


def test_missing_merges_file_is_reported(tiny_checkpoint, tmp_path):
    directory = shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")
    os.remove(directory / "merges.txt")
    with pytest.raises(TokenizerError, match="cannot read the tokenizer files"):
        tokenizer.load_encoding(str(directory), is_directory=True)


def test_hub_models_use_tiktokens_gpt2_encoding(gpt2_tiktoken_cache, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", gpt2_tiktoken_cache)
    encoding = tokenizer.load_encoding("gpt2", is_directory=False)
    assert encoding.name == "gpt2" and encoding.n_vocab == 50257
    assert encoding.encode("Hello, my name is") == [15496, 11, 616, 1438, 318]


def test_bytes_to_unicode_is_gpt2s_alphabet():
    alphabet = tokenizer.bytes_to_unicode()
    assert len(set(alphabet.values())) == 256
    assert alphabet[ord(" ")] == "Ġ" and alphabet[ord("\n")] == "Ċ" and alphabet[ord("A")] == "A"




def test_streamed_text_is_the_decoded_text_with_characters_whole(tiny_checkpoint):
    encoding = tokenizer.load_encoding(tiny_checkpoint, is_directory=True)
    text = "Héllo, wörld ✓ 😀 ∑"
    tokens = encoding.encode(text)
    assert any(len(encoding.decode_single_token_bytes(t).decode("utf-8", errors="replace")) != 1 for t in tokens)
    stream = tokenizer.text_stream(encoding)
    pieces = [stream([t]) for t in tokens] + [stream([], final=True)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)  # no character was printed in halves

    # Any token sequence, valid UTF-8 or not, streams to what encoding.decode gives for the whole.
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        tokens = torch.randint(0, encoding.n_vocab, (12,), generator=generator).tolist()
        stream = tokenizer.text_stream(encoding)
        assert "".join([stream([t]) for t in tokens] + [stream([], final=True)]) == encoding.decode(tokens)
