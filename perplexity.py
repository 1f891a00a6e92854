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
import sys
import time

import backend
import cli
import progress
import reading
from cli import UsageError

# log_sum_exp_over_max's float64 blocks: small enough to stay in a processor's cache, big enough that starting
# each operation on every thread costs little (on a busy machine, that cost dominated blocks of 2 MiB).
BLOCK_BYTES = 16 * 2**20
# The most --text-file may hold: about 250 million tokens, hours of scoring even for the smallest GPT-2.
MAX_TEXT_BYTES = 1024 * reading.MiB


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Perplexity of a text file under GPT-2 on nvtripy, full precision or quantized."
    )
    parser.add_argument("--text-file", required=True, metavar="PATH", help="the UTF-8 text to score")
    cli.add_model_arguments(parser)
    parser.add_argument("--context", type=int, help="tokens per window (default: the model's block size)")
    parser.add_argument("--max-tokens", type=int, help="score only the text's first this many tokens (default: all)")
    args = parser.parse_args(argv)
    cli.check_model_arguments(args)
    return args


def read_tokens(path, encoding, max_tokens=None):
    """The file's text as token ids; a missing, unreadable, non-UTF-8 or too short file, or one that is not a
    regular file or holds more than MAX_TEXT_BYTES, is a UsageError."""
    try:
        text = reading.read_text(path, MAX_TEXT_BYTES)
    except reading.UnreadableFile as exc:
        raise UsageError(f"--text-file '{path}' {exc}") from None
    tokens = encoding.encode(text)[:max_tokens]
    if len(tokens) < 2:
        raise UsageError(f"--text-file '{path}' holds {len(tokens)} token(s): perplexity needs at least 2")
    return tokens


def windows(tokens, context):
    """The tokens cut into consecutive windows of `context` (the last may be shorter); a last window of
    one token has nothing to score and is dropped."""
    chunks = [tokens[i : i + context] for i in range(0, len(tokens), context)]
    return [chunk for chunk in chunks if len(chunk) > 1]


def log_sum_exp_over_max(rows, maxima):
    """log(sum(exp(row - max))) of each row of logits, given each row's max, in float64: a random GPT-2's
    perplexity is near its 50257 tokens, so four decimals take ten significant digits, where float32
    holds seven. The float64 copy is made a block of rows at a time (BLOCK_BYTES); a whole window's,
    1024 x 50257 x 8 bytes, goes out to memory and back, which took longer than the model."""
    # A GPU's memory is fast: there, one block.
    block = len(rows) if rows.is_cuda else max(1, BLOCK_BYTES // (8 * rows.shape[1]))
    import torch  # here and in main, not at the top: --help and bad options answer before torch loads

    buffer = torch.empty(min(block, len(rows)), rows.shape[1], dtype=torch.float64, device=rows.device)
    sums = torch.empty(len(rows), dtype=torch.float64, device=rows.device)
    for start in range(0, len(rows), block):
        part = rows[start : start + block]
        shifted = buffer[: len(part)].copy_(part).sub_(maxima[start : start + block, None])
        torch.sum(shifted.exp_(), dim=1, out=sums[start : start + block])
    return sums.log_()


def token_nlls(logits, tokens, vocab_size):
    """-log p(token | the tokens before it) of each of the window's tokens after the first, in float64:
    log(sum(exp(row - max))) + (max - the token's logit), where the max keeps exp from overflowing and
    neither term loses digits to the logits' size. Ids from vocab_size on are not tokens the tokenizer can
    make, so they get no probability. Logits that are nan or inf give an nll that is not finite."""
    rows = logits[0, :-1, :vocab_size]
    targets = rows.new_tensor(tokens[1:]).long()
    maxima = rows.amax(dim=1).double()
    return log_sum_exp_over_max(rows, maxima) + (maxima - rows.gather(1, targets[:, None])[:, 0].double())


def perplexity(chunks, window_logits, vocab_size):
    """exp(mean negative log-likelihood) over every window, and the number of scored tokens.
    `window_logits` yields each window's logits, in order. Logits that are not finite raise
    NonFiniteLogits, which names the first window and position that has them."""
    from sampling import NonFiniteLogits

    total, count, tokens_before = 0.0, 0, 0
    for number, (chunk, logits) in enumerate(zip(chunks, window_logits, strict=True), start=1):
        nlls = token_nlls(logits, chunk, vocab_size)
        finite = nlls.isfinite()
        if not finite.all():
            position = int(finite.logical_not().nonzero()[0, 0])
            row = logits[0, position, :vocab_size]
            value = "nan" if row.isnan().any() else "inf" if (row == math.inf).any() else "-inf"
            raise NonFiniteLogits(
                f"the model's logits are {value} in window {number} of {len(chunks)} at position {position + 1} "
                f"(token {tokens_before + position + 1} of the text): the checkpoint's weights hold nan or inf, "
                "or the model overflows its dtype"
            )
        total, count, tokens_before = total + nlls.sum().item(), count + len(nlls), tokens_before + len(chunk)
    return math.exp(total / count), count


def main(argv=None):
    args = parse_args(argv)
    chosen = backend.select_backend(args.backend, args.threads)
    # Loaded only now: nvtripy on the backend just chosen, and transformers' imports after --help and bad
    # options have had their answer.
    import nvtripy as tp
    import torch

    import generate
    import quantization
    import weight_loader
    from checkpoint import open_checkpoint

    dtype = getattr(tp, args.dtype or chosen.default_dtype)
    chosen.check_runs(dtype.name, args.quant_mode)
    checkpoint = open_checkpoint(args.checkpoint or args.model_type)
    context = min(args.context or checkpoint.hf_config.n_positions, checkpoint.hf_config.n_positions)
    chunks = windows(read_tokens(args.text_file, checkpoint.encoding, args.max_tokens), context)
    quant = quantization.prepare(checkpoint, args.quant_mode, args.calib_file, args.calib_samples)

    model = weight_loader.load_model(checkpoint, dtype, quant)
    print(chosen, file=sys.stderr, flush=True)  # once the input and the weights have checked out
    start = time.perf_counter()
    with progress.step("Compiling the model"):
        compiled_forward = generate.compile_forward(model, context, len(chunks[0]))
    with progress.bar(chunks, "Scoring the windows", unit="window") as shown_chunks:
        window_logits = (
            generate.forward_logits(compiled_forward, torch.tensor([chunk], dtype=torch.int32))
            for chunk in shown_chunks
        )
        ppl, scored = perplexity(chunks, window_logits, checkpoint.encoding.n_vocab)
    seconds = time.perf_counter() - start

    precision = f"{args.quant_mode}, {dtype}" if args.quant_mode else f"{dtype}"
    print(f"Perplexity of '{args.text_file}' under {checkpoint.source} ({precision}): {ppl:.4f}")
    print(f"Scored {scored} tokens in {len(chunks)} windows of up to {context} tokens in {seconds:.2f} seconds.")
    if quant:
        print(quant.report())
    return 0


if __name__ == "__main__":
    cli.run_command(main)
