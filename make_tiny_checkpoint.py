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
"""

import argparse
import collections
import json
import os
import re

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel

from tokenizer import ENDOFTEXT, bytes_to_unicode

# The tokenizer's merges are learned from this text with byte-level BPE, as GPT-2's were from WebText.
CORPUS = """Hello, my name is Tripy. What is the answer to life, the universe, and everything?
The model reads the prompt and then writes one token at a time. The tokens are pieces of words:
the most common pieces of the text below become tokens of their own, and the rest stay as bytes.
There is nothing learned in the weights of this model, so what it writes is noise, and that is fine.
It is here so that the whole program runs, from the tokenizer to the engine, without a network."""
NUM_MERGES = 64
# Up to this many parameters a checkpoint is "tiny": the default has 0.13M, GPT-2's smallest 124M.
TINY_PARAMETERS = 10_000_000


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


def write_tokenizer(directory):
    """Writes vocab.json (bytes, then merges, then <|endoftext|>) and merges.txt; returns the vocab size."""
    vocab = {char: i for i, char in enumerate(bytes_to_unicode().values())}
    merges = learn_merges(CORPUS, NUM_MERGES)
    for first, second in merges:
        assert first + second not in vocab, f"merge {first} {second} repeats a token"
        vocab[first + second] = len(vocab)
    vocab[ENDOFTEXT] = len(vocab)
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{first} {second}\n" for first, second in merges))
    return len(vocab)


def make_checkpoint(
    directory, num_layers=2, num_heads=2, embedding_size=64, block_size=128, vocab_size=None, layer_norm_epsilon=1e-5, seed=0
):
    """A random GPT2LMHeadModel saved with save_pretrained, plus the tiny tokenizer; returns the model."""
    os.makedirs(directory, exist_ok=True)
    tokenizer_size = write_tokenizer(directory)
    vocab_size = vocab_size or tokenizer_size
    assert vocab_size >= tokenizer_size, f"vocab_size {vocab_size} is smaller than the tokenizer's {tokenizer_size}"
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=block_size,
        n_embd=embedding_size,
        n_layer=num_layers,
        n_head=num_heads,
        layer_norm_epsilon=layer_norm_epsilon,
        bos_token_id=tokenizer_size - 1,
        eos_token_id=tokenizer_size - 1,
    )
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory)
    return model


def describe(num_parameters):
    """What the checkpoint is, for the last line: tiny, or its size the way GPT-2's sizes are told (124M, 1.56B)."""
    if num_parameters <= TINY_PARAMETERS:
        return "a tiny random GPT-2 checkpoint"
    size = f"{num_parameters / 1e9:.3g}B" if num_parameters >= 1e9 else f"{num_parameters / 1e6:.3g}M"
    return f"a random GPT-2 checkpoint ({size} parameters)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", nargs="?", default="checkpoints/tiny-gpt2", help="where to write it (default: %(default)s)")
    parser.add_argument("--num-layers", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--num-heads", type=int, default=2, help="default: %(default)s")
    parser.add_argument("--embedding-size", type=int, default=64, help="default: %(default)s")
    parser.add_argument("--block-size", type=int, default=128, help="default: %(default)s")
    parser.add_argument(
        "--vocab-size",
        type=int,
        help="at least the tokenizer's size, the default; GPT-2's is 50257",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the random weights (default: %(default)s)")
    args = parser.parse_args()
    model = make_checkpoint(
        args.directory, args.num_layers, args.num_heads, args.embedding_size, args.block_size, args.vocab_size, seed=args.seed
    )
    print(f"Wrote {describe(model.num_parameters())} to {args.directory}")


if __name__ == "__main__":
    main()
