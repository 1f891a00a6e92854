"""tokenizer.py: a checkpoint's tokenizer files tokenize exactly as transformers' AutoTokenizer does (tiktoken only
for GPT-2's own vocabulary and merges), and streamed text prints whole characters."""

import json
import os
import shutil

import pytest
import torch
from transformers import AutoTokenizer, GPT2Config

import tokenizer
from tokenizer import TokenizerError

# tiktoken's cached gpt2 files, by what they are: GPT-2's vocab.json and merges.txt under OpenAI's names.
GPT2_FILES = {
    "encoder.json": "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6",
    "vocab.bpe": "6d1cbeee0f20b3d9449abfede4726ed8212e3aee",
}

TEXTS = [
    "Hello, my name is",
    "What is the answer to life, the universe, and everything?",
    "  two spaces, a tab\tand\nnew lines\n\n",
    "naïve café, 1234 numbers, emoji 😀 and Ünïcödé",
    "the then there theirs thinking tokenizer tokens",
]


def test_checkpoint_tokenizer_matches_transformers(tiny_checkpoint):
    ours = tokenizer.load_encoding(tiny_checkpoint, is_directory=True)
    theirs = AutoTokenizer.from_pretrained(tiny_checkpoint)
    for text in TEXTS + ["a<|endoftext|>b"]:
        ids = ours.encode(text)
        assert ids == theirs.encode(text), text
        assert ours.decode(ids) == text


def test_endoftext_is_a_special_token(tiny_checkpoint):
    encoding = tokenizer.load_encoding(tiny_checkpoint, is_directory=True)
    vocab = json.load(open(os.path.join(tiny_checkpoint, "vocab.json"), encoding="utf-8"))
    assert encoding.encode("a<|endoftext|>b")[1] == vocab["<|endoftext|>"]


def both_tokenizers(directory):
    """This program's tokenizer of a checkpoint directory, and transformers' AutoTokenizer."""
    return tokenizer.load_encoding(str(directory), is_directory=True), AutoTokenizer.from_pretrained(str(directory))


def bpe_checkpoint(directory, vocab, merges, **files):
    """A checkpoint directory holding only a config and the tokenizer files given."""
    directory.mkdir()
    GPT2Config(vocab_size=len(vocab)).save_pretrained(str(directory))
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges), encoding="utf-8")
    for name, value in files.items():
        (directory / name.replace("__", ".")).write_text(json.dumps(value), encoding="utf-8")
    return str(directory)


def byte_vocab(*tokens):
    vocab = {char: i for i, char in enumerate(tokenizer.bytes_to_unicode().values())}
    return {**vocab, **{token: len(vocab) + i for i, token in enumerate(tokens)}}


def test_merges_are_applied_in_their_order_as_transformers_does(tmp_path):
    """tiktoken merges any pair that makes a token: it made [abc] of "abc", where merges.txt makes [a, bc]."""
    directory = bpe_checkpoint(tmp_path / "abc", byte_vocab("bc", "ab", "abc"), ["b c", "a b", "ab c"])
    ours, theirs = both_tokenizers(directory)
    assert ours.encode("abc") == theirs.encode("abc") == [ord("a") - 33, 256]
    assert ours.encode("abc abcab") == theirs.encode("abc abcab")


def test_out_of_order_merges_tokenize_as_transformers_does(tiny_checkpoint, tmp_path):
    directory = shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")
    merges = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges[1], merges[2] = merges[2], merges[1]
    (directory / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    ours, theirs = both_tokenizers(directory)
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text), text


def test_added_and_special_tokens_are_honoured(tmp_path):
    directory = bpe_checkpoint(
        tmp_path / "added",
        byte_vocab("ab", "<|endoftext|>"),
        ["a b"],
        added_tokens__json={"<tool>": 258, "<pad>": 259},
        special_tokens_map__json={"eos_token": "<|endoftext|>", "pad_token": "<pad>"},
        tokenizer_config__json={"add_prefix_space": True},
    )
    ours, theirs = both_tokenizers(directory)
    for text in ["ab<tool>ab", "x<pad>y<|endoftext|>", "plain ab text"]:
        assert ours.encode(text) == theirs.encode(text), text
    assert ours.decode(ours.encode("ab<tool>ab")) == theirs.decode(theirs.encode("ab<tool>ab"))
    assert ours.n_vocab == 260


def test_a_tokenizer_json_decides(tiny_checkpoint, tmp_path):
    """tokenizer.json, where there is one, is the tokenizer: here it adds a token vocab.json does not have."""
    directory = shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")
    hf = AutoTokenizer.from_pretrained(str(directory))
    hf.add_tokens(["<new>"])
    hf.backend_tokenizer.save(str(directory / "tokenizer.json"))
    ours, theirs = both_tokenizers(directory)
    assert ours.encode("Hello<new>there") == theirs.encode("Hello<new>there")
    assert ours.encode("<new>") == [321] and ours.n_vocab == 322


def test_gpt2s_own_files_use_tiktoken_with_the_same_ids(gpt2_tiktoken_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", gpt2_tiktoken_cache)
    directory = tmp_path / "gpt2-files"
    directory.mkdir()
    GPT2Config().save_pretrained(str(directory))
    shutil.copyfile(os.path.join(gpt2_tiktoken_cache, GPT2_FILES["encoder.json"]), directory / "vocab.json")
    shutil.copyfile(os.path.join(gpt2_tiktoken_cache, GPT2_FILES["vocab.bpe"]), directory / "merges.txt")
    ours, theirs = both_tokenizers(directory)
    assert ours.name == "gpt2"  # tiktoken's
    for text in TEXTS + ["x<|endoftext|>y"]:
        assert ours.encode(text) == theirs.encode(text), text
    # One merge fewer is no longer GPT-2's: the tokenizers library, still equal to transformers.
    lines = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
    (directory / "merges.txt").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    ours, theirs = both_tokenizers(directory)
    assert ours.name == "gpt2-files"
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text), text


def test_a_token_id_the_tokenizer_lacks_is_named(tiny_checkpoint):
    encoding = tokenizer.load_encoding(tiny_checkpoint, is_directory=True)
    with pytest.raises(TokenizerError, match=r"^the tokenizer of tiny-gpt2\d* has no token id 321$"):
        encoding.decode([5, 321])
    with pytest.raises(TokenizerError, match="has no token id 400"):
        tokenizer.text_stream(encoding)([400])


def test_missing_merges_file_is_reported(tiny_checkpoint, tmp_path):
    directory = shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")
    os.remove(directory / "merges.txt")
    with pytest.raises(TokenizerError, match="cannot make a tokenizer of the files of"):
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
