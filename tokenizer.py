"""Text to token ids and back, as the checkpoint's tokenizer files say: the ids equal those of transformers'
AutoTokenizer on the same directory.

A checkpoint directory's tokenizer is all of its TOKENIZER_FILES, each checked here and then read by
transformers, which builds a byte-level BPE of the `tokenizers` library from them (added and special tokens
included). Where that BPE is GPT-2's own (its vocabulary and merges, compared with their digest, and nothing
added but <|endoftext|>), tiktoken's gpt2 encoding gives the same ids faster, and is used instead. A Hub id
without tokenizer files in the local cache uses tiktoken's gpt2, which is GPT-2's own.
"""

import codecs
import functools
import hashlib
import json
import os
import unicodedata

import tiktoken
from tiktoken_ext.openai_public import ENDOFTEXT

import reading
from errors import UserError
from reading import UnreadableFile

# What transformers reads a tokenizer from; a directory with none of them is not a tokenizer.
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "added_tokens.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
)
MAX_FILE_BYTES = 256 * reading.MiB  # a tokenizer.json of 250,000 tokens is about 20 MiB
# SHA-256 of GPT-2's vocabulary and merges as bpe_digest takes them: those of tiktoken's gpt2 files.
GPT2_BPE_SHA256 = "331a05a307d81d415199216094118740d717d0e11a5ae308e8fa0ba55974e31c"
GPT2_ENDOFTEXT_ID = 50256
# transformers' GPT-2 BPE settings under which tiktoken's gpt2 splits text the same way.
GPT2_PRE_TOKENIZER = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
GPT2_MODEL = {"type": "BPE", "dropout": None, "byte_fallback": False, "ignore_merges": False}
SINGLE_SEQUENCE = [{"Sequence": {"id": "A", "type_id": 0}}]  # a post-processor that adds no tokens


class TokenizerError(UserError):
    """A tokenizer that cannot be loaded or used. The message is one line, meant for the user."""


class Tokenizer:
    """Text to token ids and back. `n_vocab` is one more than the largest id."""

    def __init__(self, name, n_vocab, encode, token_bytes):
        self.name, self.n_vocab = name, n_vocab
        self._encode, self._token_bytes = encode, token_bytes

    def encode(self, text):
        """The ids of `text`, its added and special tokens (<|endoftext|>) read as such."""
        return self._encode(text)

    def decode_single_token_bytes(self, token):
        try:
            return self._token_bytes(token)
        except (KeyError, IndexError, TypeError):
            raise TokenizerError(f"the tokenizer of {self.name} has no token id {token}") from None

    def decode(self, tokens):
        return b"".join(self.decode_single_token_bytes(t) for t in tokens).decode("utf-8", errors="replace")


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


def tiktoken_tokenizer(encoding):
    encode = functools.partial(encoding.encode, allowed_special="all")
    return Tokenizer(encoding.name, encoding.n_vocab, encode, encoding.decode_single_token_bytes)


def load_encoding(source, is_directory, config=None):
    """The tokenizer of a checkpoint: from its files when it has any (a Hub id's in the local cache), else tiktoken's
    gpt2. `config`, the checkpoint's transformers config when it is already read, spares reading config.json again."""
    directory = source if is_directory else _cached_hub_directory(source)
    if directory is not None and any(os.path.lexists(os.path.join(directory, name)) for name in TOKENIZER_FILES):
        return tokenizer_from_files(directory, source, config)
    return tiktoken_tokenizer(gpt2_encoding())


def _cached_hub_directory(repo):
    import huggingface_hub

    for name in TOKENIZER_FILES:
        try:
            path = huggingface_hub.try_to_load_from_cache(repo, name)
        except Exception:  # not a valid Hub id: checkpoint.py reports that
            return None
        if isinstance(path, str):
            return os.path.dirname(path)
    return None


def check_tokenizer_files(directory, source):
    """Reads each tokenizer file the directory has, refusing one that is not a regular file, too large, or not
    of its kind: vocab.json and added_tokens.json map tokens to distinct ids >= 0, the other JSON files hold objects."""
    for name in TOKENIZER_FILES:
        path = os.path.join(directory, name)
        if not os.path.lexists(path):
            continue
        try:
            data = reading.read_bytes(path, MAX_FILE_BYTES)
            if name == "merges.txt":
                reading.utf8_text(data)
                continue
            value = reading.parse_json(data, object_pairs_hook=_no_repeated_keys)
        except UnreadableFile as exc:
            raise TokenizerError(f"the {name} of '{source}' {exc}") from None
        problem = _shape_problem(name, value)
        if problem:
            raise TokenizerError(f"the {name} of '{source}' is malformed: {problem}")


def _no_repeated_keys(pairs):
    keys = set()
    for key, _ in pairs:
        if key in keys:
            raise UnreadableFile(f"is malformed: it gives {json.dumps(key)[:40]} twice")
        keys.add(key)
    return dict(pairs)


def _shape_problem(name, value):
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__.replace("str", "a string").replace("list", "a list")
        return f"it holds {kind}, not an object"
    if name not in ("vocab.json", "added_tokens.json"):
        return None
    owner = {}
    for token, token_id in value.items():
        if type(token_id) is not int or token_id < 0:
            return f"token {json.dumps(token)[:40]} has id {json.dumps(token_id)[:40]}, not a whole number >= 0"
        if token_id in owner:
            return f"tokens {json.dumps(owner[token_id])[:40]} and {json.dumps(token)[:40]} have the same id {token_id}"
        owner[token_id] = token
    return None


def tokenizer_from_files(directory, source, config=None):
    """The tokenizer transformers' AutoTokenizer makes of the directory's files, checked first; tiktoken's gpt2
    where it is GPT-2's own. Anything but a byte-level BPE is refused: output streams the bytes of each token."""
    check_tokenizer_files(directory, source)
    import transformers

    transformers.logging.set_verbosity_error()  # e.g. "sequence longer than the model's maximum": perplexity windows it
    try:
        hf = transformers.AutoTokenizer.from_pretrained(directory, config=config, local_files_only=True)
    except Exception as exc:  # files transformers cannot make a tokenizer of
        text = " ".join(str(exc).split())[:200]
        why = f"{type(exc).__name__}: {text}"
        raise TokenizerError(f"cannot make a tokenizer of the files of '{source}': {why}") from None
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerError(f"the tokenizer of '{source}' ({type(hf).__name__}) is not one of the tokenizers library")
    spec = json.loads(backend.to_str())
    decoder = (spec.get("decoder") or {}).get("type")
    if decoder != "ByteLevel":
        raise TokenizerError(
            f"the tokenizer of '{source}' decodes with {decoder}, not byte-level BPE, which this example streams"
        )
    if bpe_digest(spec["model"]) == GPT2_BPE_SHA256 and _splits_as_gpt2(spec):
        try:
            return tiktoken_tokenizer(gpt2_encoding())
        except TokenizerError:
            pass  # not cached: the tokenizers library gives the same ids
    added = {token["id"]: token["content"].encode("utf-8") for token in spec["added_tokens"]}
    byte_of = {char: b for b, char in bytes_to_unicode().items()}
    table = {}
    for token, token_id in backend.get_vocab(with_added_tokens=True).items():
        if token_id in added:
            table[token_id] = added[token_id]
        elif all(char in byte_of for char in token):
            table[token_id] = bytes(byte_of[char] for char in token)
        else:
            raise TokenizerError(f"the tokenizer of '{source}': '{token}' is not a byte-level BPE token")
    name = os.path.basename(os.path.normpath(source))
    return Tokenizer(name, max(table, default=-1) + 1, hf.encode, table.__getitem__)


def bpe_digest(model):
    """SHA-256 of a `tokenizers` BPE's vocabulary and merges, as its JSON form (to_str) holds them."""
    merges = [" ".join(merge) if isinstance(merge, list) else merge for merge in model.get("merges", [])]
    vocab = sorted(model.get("vocab", {}).items())
    return hashlib.sha256(json.dumps(vocab).encode() + b"\n" + "\n".join(merges).encode()).hexdigest()


def _splits_as_gpt2(spec):
    """Whether a BPE of GPT-2's vocabulary and merges (the `tokenizers` JSON form `spec`) splits text as
    tiktoken's gpt2: GPT-2's pre-tokenizer, no normalizer, nothing added to a sequence, and only <|endoftext|>
    added, as a special token."""
    post = spec.get("post_processor") or {"type": "ByteLevel"}
    added = [
        (t["id"], t["content"], t["special"], t["single_word"], t["lstrip"], t["rstrip"]) for t in spec["added_tokens"]
    ]
    return (
        spec.get("normalizer") is None
        and all((spec.get("pre_tokenizer") or {}).get(k) == v for k, v in GPT2_PRE_TOKENIZER.items())
        and all(spec["model"].get(k) == v for k, v in GPT2_MODEL.items())
        and not spec["model"].get("continuing_subword_prefix")
        and not spec["model"].get("end_of_word_suffix")
        and (post["type"] == "ByteLevel" or post["type"] == "TemplateProcessing" and post["single"] == SINGLE_SEQUENCE)
        and added == [(GPT2_ENDOFTEXT_ID, ENDOFTEXT, True, False, False, False)]
    )


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
