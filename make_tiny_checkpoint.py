r"""Writes a GPT-2 checkpoint with random weights and its own tokenizer, with no network: tiny by default.

    python make_tiny_checkpoint.py checkpoints/tiny-gpt2
    python example.py --checkpoint checkpoints/tiny-gpt2 --input-text "Hello, my name is" --seed 0

The directory is what transformers' save_pretrained writes (config.json, model.safetensors) plus a
byte-level BPE tokenizer (vocab.json, merges.txt): GPT-2's 256 byte tokens, merges learned from a
paragraph of English, and <|endoftext|>. Its text is gibberish, since nothing is trained; the tiny default
exists to run the whole program, and the tests, offline and in seconds. The flags give other shapes, GPT-2's
own (124M parameters) included, to time the program offline:

    python make_tiny_checkpoint.py checkpoints/random-gpt2 \
        --vocab-size 50257 --num-layers 12 --num-heads 12 --embedding-size 768 --block-size 1024

The directory appears whole or not at all, and replaces only an earlier checkpoint of this script's.
"""

import argparse
import collections
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile

from safetensors import SafetensorError

from tokenizer import ENDOFTEXT, bytes_to_unicode

# The tokenizer's merges are learned from this text with byte-level BPE, as GPT-2's were from WebText.
CORPUS = """Hello, my name is Tripy. What is the answer to life, the universe, and everything?
The model reads the prompt and then writes one token at a time. The tokens are pieces of words:
the most common pieces of the text below become tokens of their own, and the rest stay as bytes.
There is nothing learned in the weights of this model, so what it writes is noise, and that is fine.
It is here so that the whole program runs, from the tokenizer to the engine, without a network."""
NUM_MERGES = 64
TOKENIZER_FILES = ("vocab.json", "merges.txt")
# The other files save_pretrained writes: what an earlier checkpoint of this script's may hold besides the tokenizer.
MODEL_FILE = re.compile(
    r"config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json"
)
# Up to this many parameters a checkpoint is "tiny": the default has 0.13M, GPT-2's smallest 124M.
TINY_PARAMETERS = 10_000_000


class UsageError(Exception):
    """Bad input from the user: reported as one `error:` line on stderr, with exit status 2."""


def words(text):
    """The corpus split the way GPT-2 splits text before BPE (for ASCII text), in GPT-2's byte alphabet."""
    alphabet = bytes_to_unicode()
    pieces = re.findall(r" ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+", text)
    return ["".join(alphabet[b] for b in piece.encode("utf-8")) for piece in pieces]


def learn_merges(text, num_merges):
    """Byte-level BPE training: merge the most frequent adjacent pair, num_merges times."""
    counts = collections.Counter(words(text))
    splits = {word: list(word) for word in counts}
    merges = []
    for _ in range(num_merges):
        pairs = collections.Counter()
        for word, count in counts.items():
            for pair in zip(splits[word], splits[word][1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda pair: (pairs[pair], pair))  # ties broken by the pair itself: deterministic
        merges.append(best)
        for word, parts in splits.items():
            i, merged = 0, []
            while i < len(parts):
                if tuple(parts[i : i + 2]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            splits[word] = merged
    return merges


def tokenizer_files():
    """name -> text of vocab.json (bytes, then merges, then <|endoftext|>) and merges.txt, and the vocab size."""
    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    merges = learn_merges(CORPUS, NUM_MERGES)
    for first, second in merges:
        assert first + second not in vocab, f"merge {first} {second} repeats a token"
        vocab[first + second] = len(vocab)
    vocab[ENDOFTEXT] = len(vocab)
    files = {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        "merges.txt": "#version: 0.2\n" + "".join(f"{first} {second}\n" for first, second in merges),
    }
    return files, len(vocab)


def write_tokenizer(directory):
    """Writes the tiny tokenizer's files into an existing checkpoint directory; returns its vocabulary size.
    A checkpoint saved without a tokenizer then needs no download to run."""
    files, size = tokenizer_files()
    for name, text in files.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(text)
    return size


def check_arguments(num_layers, num_heads, embedding_size, block_size, vocab_size, tokenizer_size, seed):
    """The conditions transformers' GPT2LMHeadModel needs, checked up front so that the message names the flag."""
    for flag, value in [
        ("--num-layers", num_layers),
        ("--num-heads", num_heads),
        ("--embedding-size", embedding_size),
        ("--block-size", block_size),
    ]:
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, not {value}")
    if embedding_size % num_heads:
        raise UsageError(f"--embedding-size {embedding_size} is not a multiple of --num-heads {num_heads}")
    if vocab_size < tokenizer_size:
        raise UsageError(f"--vocab-size {vocab_size} is smaller than the tokenizer, which has {tokenizer_size} tokens")
    if not -(2**63) <= seed < 2**64:
        raise UsageError(f"--seed {seed} does not fit in 64 bits")


def is_earlier_checkpoint(directory, files):
    """Whether directory holds only what this script writes, with the same tokenizer: safe to replace."""
    names = os.listdir(directory)
    if not all(name in TOKENIZER_FILES or MODEL_FILE.fullmatch(name) for name in names):
        return False
    for name, text in files.items():
        try:
            with open(os.path.join(directory, name), "rb") as f:
                if f.read() != text.encode("utf-8"):
                    return False
        except OSError:
            return False
    return True


def check_target(path, name, files):
    """Refuses a target path that is not a directory, or a directory that holds anything but an earlier checkpoint;
    name is how the user wrote it."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise UsageError(f"{name} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path) and not is_earlier_checkpoint(path, files):
        raise UsageError(
            f"{name} is not empty and is not a checkpoint this script wrote; choose another directory or remove it"
        )


def random_model(seed, **config):
    """A GPT2LMHeadModel with transformers' random initialization."""
    # Imported here, not at the top: they take seconds, and bad input is reported without waiting for them.
    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    try:
        return GPT2LMHeadModel(GPT2Config(**config)).eval()
    except (
        ValueError,
        RuntimeError,
        MemoryError,
    ) as exc:  # what our checks let through, such as a model too big for memory
        raise UsageError(f"transformers cannot make this model: {str(exc).strip().splitlines()[0]}") from None


def make_parents(path):
    """Creates the missing directories above path; returns them, outermost first."""
    missing = []
    parent = os.path.dirname(path)
    while not os.path.lexists(parent):
        missing.insert(0, parent)
        parent = os.path.dirname(parent)
    for directory in missing:
        os.mkdir(directory)
    return missing


def write_into_place(directory, write):
    """Calls write(path) on a new directory beside directory (a real path), then renames it to directory: the
    checkpoint appears whole or not at all. What was at directory is replaced only by a complete checkpoint; on
    any failure, Ctrl-C included, it is as it was and nothing else is left behind."""
    created, staging = [], None
    try:
        created = make_parents(directory)
        staging = tempfile.mkdtemp(
            prefix=f".{os.path.basename(directory)}.", suffix=".partial", dir=os.path.dirname(directory)
        )
        new, old = os.path.join(staging, "new"), os.path.join(staging, "old")
        os.mkdir(new)  # not the staging directory itself: mkdtemp's is readable by its owner only
        write(new)
        if os.path.isdir(directory) and os.listdir(directory):
            os.replace(directory, old)  # a non-empty directory cannot be renamed over, so the earlier one steps aside
        os.replace(new, directory)
        shutil.rmtree(staging)
    except BaseException:
        if staging is not None:
            old = os.path.join(staging, "old")
            if os.path.lexists(old) and not os.path.lexists(directory):
                os.replace(old, directory)  # the earlier checkpoint goes back; should this fail, its copy is kept
            shutil.rmtree(staging, ignore_errors=True)
        if not os.path.lexists(directory):
            for parent in reversed(created):
                with contextlib.suppress(OSError):  # no longer empty: someone else's now
                    os.rmdir(parent)
        raise


def make_checkpoint(
    directory,
    num_layers=2,
    num_heads=2,
    embedding_size=64,
    block_size=128,
    vocab_size=None,
    layer_norm_epsilon=1e-5,
    seed=0,
):
    """A random GPT2LMHeadModel saved with save_pretrained, plus the tiny tokenizer; returns the model.
    Bad arguments raise UsageError before anything is written; see write_into_place for how it is written."""
    files, tokenizer_size = tokenizer_files()
    vocab_size = tokenizer_size if vocab_size is None else vocab_size
    check_arguments(num_layers, num_heads, embedding_size, block_size, vocab_size, tokenizer_size, seed)
    # Resolved once: "" and "." are the current directory, and a link's directory is where the checkpoint goes.
    target = os.path.realpath(directory)
    check_target(target, directory, files)
    model = random_model(
        seed,
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=embedding_size,
        n_layer=num_layers,
        n_head=num_heads,
        layer_norm_epsilon=layer_norm_epsilon,
        bos_token_id=tokenizer_size - 1,
        eos_token_id=tokenizer_size - 1,
    )

    def write(path):
        write_tokenizer(path)
        model.save_pretrained(path)

    write_into_place(target, write)
    return model


def describe(num_parameters):
    """What the checkpoint is, for the last line: tiny, or its size the way GPT-2's sizes are told (124M, 1.56B)."""
    if num_parameters <= TINY_PARAMETERS:
        return "a tiny random GPT-2 checkpoint"
    size = f"{num_parameters / 1e9:.3g}B" if num_parameters >= 1e9 else f"{num_parameters / 1e6:.3g}M"
    return f"a random GPT-2 checkpoint ({size} parameters)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "directory", nargs="?", default="checkpoints/tiny-gpt2", help="where to write it (default: %(default)s)"
    )
    parser.add_argument("--num-layers", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--num-heads", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--embedding-size", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--block-size", type=int, default=128, help="default: %(default)s")
    parser.add_argument(
        "--vocab-size",
        type=int,
        help=f"at least the tokenizer's {tokenizer_files()[1]} tokens, the default; GPT-2's is 50257",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the random weights (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.directory:
        raise UsageError("the directory name is empty")
    try:
        model = make_checkpoint(
            args.directory,
            args.num_layers,
            args.num_heads,
            args.embedding_size,
            args.block_size,
            args.vocab_size,
            seed=args.seed,
        )
    except OSError as exc:
        raise UsageError(f"cannot write {args.directory}: {exc.strerror or exc}") from None
    except SafetensorError as exc:  # safetensors' I/O errors (a full disk) are not OSErrors
        raise UsageError(f"cannot write {args.directory}: {str(exc).split('I/O error: ')[-1]}") from None
    print(f"Wrote {describe(model.num_parameters())} to {args.directory}")


if __name__ == "__main__":
    try:
        main()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
