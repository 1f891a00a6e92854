"""Perplexity of a text file under GPT-2 on nvtripy: what a quantization mode costs in quality.

    python perplexity.py --text-file notes.txt
    python perplexity.py --text-file notes.txt --quant-mode int8-weight-only
    python perplexity.py --text-file notes.txt --checkpoint checkpoints/tiny-gpt2 --dtype float16

It loads and quantizes the model as example.py does (the same options, cli.py: --model-type/--checkpoint,
--quant-mode, --calib-file, --calib-samples, --backend, --dtype, --threads). The text is tokenized whole and cut into
windows of --context tokens (default: the model's block size); each window is one call of the compiled
model, and each of its tokens after the first is scored given the ones before it in the window.
Perplexity is exp(mean negative log-likelihood) over the scored tokens: lower is better, and comparing
modes on the same text and windows shows what each costs. Nothing is random, so the same text, model,
mode and dtype give the same number run to run.
"""

import argparse
import math
import time

import torch

import cli
import quantization
from checkpoint import open_checkpoint
from cli import UsageError



def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Perplexity of a text file under GPT-2 on nvtripy, full precision or quantized.")
    parser.add_argument("--text-file", required=True, metavar="PATH", help="the UTF-8 text to score")
    cli.add_model_arguments(parser)
    parser.add_argument("--context", type=int, help="tokens per window (default: the model's block size)")
    parser.add_argument("--max-tokens", type=int, help="score only the text's first this many tokens (default: all)")
    args = parser.parse_args(argv)
    for name in ("context", "max_tokens"):
        value = getattr(args, name)
        if value is not None and value < 2:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 2, not {value}")
    cli.check_model_arguments(args)
    return args


def read_tokens(path, encoding, max_tokens=None):
    """The file's text as token ids; a missing, unreadable, non-UTF-8 or too short file is a UsageError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"--text-file '{path}' does not exist") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"--text-file '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UsageError(f"--text-file '{path}' cannot be read: {exc.strerror}") from None
    tokens = encoding.encode(text, disallowed_special=())[:max_tokens]
    if len(tokens) < 2:
        raise UsageError(f"--text-file '{path}' holds {len(tokens)} token(s): perplexity needs at least 2")
    return tokens


def windows(tokens, context):
    """The tokens cut into consecutive windows of `context` (the last may be shorter); a last window of
    one token has nothing to score and is dropped."""
    chunks = [tokens[i : i + context] for i in range(0, len(tokens), context)]
    return [chunk for chunk in chunks if len(chunk) > 1]


def negative_log_likelihood(logits, tokens, vocab_size):
    """Sum over the window of -log p(token | tokens before it), in float64, and how many tokens it scored.
    Ids from vocab_size on are not tokens the tokenizer can make, so they get no probability."""
    log_probs = torch.log_softmax(logits[0, :-1, :vocab_size].double(), dim=-1)
    targets = torch.tensor(tokens[1:], dtype=torch.long)
    return -log_probs.gather(1, targets[:, None]).sum().item(), len(targets)


def perplexity(chunks, window_logits, vocab_size):
    """exp(mean negative log-likelihood) over every window, and the number of scored tokens.
    `window_logits` yields each window's logits, in order."""
    total, count = 0.0, 0
    for chunk, logits in zip(chunks, window_logits, strict=True):
        nll, n = negative_log_likelihood(logits, chunk, vocab_size)
        total, count = total + nll, count + n
    return math.exp(total / count), count


def main(argv=None):
    args = parse_args(argv)
    cli.select_backend(args)
    # These import nvtripy, which may load only once its backend is chosen (backend.py says why).
    import nvtripy as tp

    import generate
    import weight_loader

    checkpoint = open_checkpoint(args.checkpoint or args.model_type)
    context = min(args.context or checkpoint.hf_config.n_positions, checkpoint.hf_config.n_positions)
    chunks = windows(read_tokens(args.text_file, checkpoint.encoding, args.max_tokens), context)
    quant = quantization.prepare(checkpoint, args.quant_mode, args.calib_file, args.calib_samples)

    dtype = getattr(tp, args.dtype)
    model, calibration_seconds = weight_loader.load_model(checkpoint, dtype, quant)
    cli.announce_backend()
    start = time.perf_counter()
    compiled_forward = generate.compile_forward(model, context, len(chunks[0]))
    window_logits = (generate.forward_logits(compiled_forward, torch.tensor([chunk], dtype=torch.int32)) for chunk in chunks)
    ppl, scored = perplexity(chunks, window_logits, checkpoint.encoding.n_vocab)
    seconds = time.perf_counter() - start

    precision = f"{args.quant_mode}, {dtype}" if args.quant_mode else f"{dtype}"
    print(f"Perplexity of '{args.text_file}' under {checkpoint.source} ({precision}): {ppl:.4f}")
    print(f"Scored {scored} tokens in {len(chunks)} windows of up to {context} tokens in {seconds:.2f} seconds.")
    if quant:
        print(cli.calibration_report(quant, calibration_seconds))
    return 0


if __name__ == "__main__":
    cli.run_command(main)
