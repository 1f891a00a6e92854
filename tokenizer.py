"""Text to GPT-2 token ids and back, with tiktoken.

The Hub's GPT-2 models use tiktoken's own "gpt2" encoding. A checkpoint directory carries its tokenizer
the way transformers saves one, as vocab.json and merges.txt; from those we build the same byte-level
BPE as a tiktoken Encoding.
"""

import codecs
import json
import os
import unicodedata

import tiktoken
from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str as GPT2_PATTERN

from errors import UserError


class TokenizerError(UserError):
    """A tokenizer that cannot be loaded. The message is one line, meant for the user."""


def bytes_to_unicode():
    """GPT-2's map from each byte to a printable character, the alphabet vocab.json and merges.txt are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def gpt2_encoding():
    """tiktoken's gpt2 encoding. It downloads once; TIKTOKEN_CACHE_DIR can point at a cached copy."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as exc:
        raise TokenizerError(
            f"cannot load tiktoken's gpt2 encoding ({type(exc).__name__}); it is downloaded on first use, "
            "so go online once or set TIKTOKEN_CACHE_DIR to a directory that caches it"
        ) from None


def encoding_from_files(vocab_path, merges_path, name="checkpoint"):
    """A tiktoken Encoding equal to the byte-level BPE in a transformers vocab.json and merges.txt."""
    try:
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            merges = [line.split() for line in f.read().splitlines() if line and not line.startswith("#version")]
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"cannot read the tokenizer files in {os.path.dirname(vocab_path)}: {exc}") from None

    byte_of = {char: b for b, char in bytes_to_unicode().items()}

    def to_bytes(token):
        if not all(char in byte_of for char in token):
            raise TokenizerError(f"{vocab_path}: '{token}' is not a byte-level BPE token")
        return bytes(byte_of[char] for char in token)

    special_tokens = {token: rank for token, rank in vocab.items() if token == ENDOFTEXT}
    ranks = {to_bytes(token): rank for token, rank in vocab.items() if token not in special_tokens}
    if len(ranks) != len(vocab) - len(special_tokens):
        raise TokenizerError(f"{vocab_path}: two tokens decode to the same bytes")
    if any(bytes([b]) not in ranks for b in range(256)):
        raise TokenizerError(f"{vocab_path}: not every one of the 256 bytes has a token")
    # tiktoken merges the pair whose result has the lowest id; transformers merges in merges.txt order.
    # The two agree when the ids of merged tokens rise in merges.txt order, as GPT-2's do.
    previous = -1
    for merge in merges:
        if len(merge) != 2 or to_bytes(merge[0] + merge[1]) not in ranks:
            raise TokenizerError(f"{merges_path}: merge '{' '.join(merge)}' does not make a token of vocab.json")
        rank = ranks[to_bytes(merge[0] + merge[1])]
        if rank <= previous:
            raise TokenizerError(f"{merges_path}: merge order disagrees with the token ids in vocab.json")
        previous = rank
    return tiktoken.Encoding(name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special_tokens)


def load_encoding(source, is_directory):
    """The tokenizer of a checkpoint: its own files when a directory has them, else tiktoken's gpt2."""
    if is_directory:
        vocab_path, merges_path = os.path.join(source, "vocab.json"), os.path.join(source, "merges.txt")
        if os.path.exists(vocab_path) or os.path.exists(merges_path):
            return encoding_from_files(vocab_path, merges_path, name=os.path.basename(os.path.normpath(source)))
    return gpt2_encoding()


def text_stream(encoding):
    """A function from token ids to the text they complete. A token can end in the middle of a UTF-8
    character; its bytes wait for the rest, so every character prints whole. Call it with final=True
    at the end to flush what is left (as U+FFFD, as encoding.decode would)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def text(tokens, final=False):
        return decoder.decode(b"".join(encoding.decode_single_token_bytes(t) for t in tokens), final=final)

    return text


def escape_controls(text):
    """The text with control characters other than newline and tab shown as escapes (\\x1b, \\r), so
    that generated tokens cannot move the cursor or recolour a terminal."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in text)
