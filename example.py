"""Completes a prompt with GPT-2 running on nvtripy, after the nanoGPT example that ships with Tripy.

    python example.py --input-text "What is the answer to life, the universe, and everything?" --seed 0
    python example.py --checkpoint checkpoints/tiny-gpt2 --input-text "Hello, my name is" --seed 0

`main` reads as the run goes: the arguments; the backend; the checkpoint (its config and tokenizer);
the quantization asked for; the compiled functions (from the engine cache, or the model loaded,
quantized and compiled); generation, streamed as it goes; the report.

Generation uses a KV cache (generate.py): a prefill function reads the prompt, a decode function then
makes one token at a time, each compiled once with dynamic dimensions. With TensorRT the compiled
engines are saved and reused by the next run (engine_cache.py). --no-kv-cache instead calls the model
once per new token on the whole sequence so far, as Tripy's example does. Sampling (top-k, temperature)
runs in PyTorch with a seeded generator (sampling.py). --quant-mode quantizes the linear layers with
NVIDIA ModelOpt first (quantization.py), calibrating on --calib-file or on text that ships with Python.
"""

import argparse
import sys
import time

import backend
import cli
import progress
import reading
from speed_report import peak_memory_bandwidth, speed_report
from tokenizer import escape_controls, text_stream


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Completes a prompt with GPT-2 running on nvtripy.")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--input-text", metavar="TEXT", help="the prompt to complete; - reads it from standard input")
    prompt.add_argument("--input-file", metavar="PATH", help="reads the prompt from this UTF-8 text file")
    cli.add_model_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=10, help="tokens to generate (default: %(default)s)")
    parser.add_argument("--seed", type=int, help="seeds sampling, for reproducible output (default: random)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.8,
        help=f"sampling temperature; 0 means greedy, else from {cli.MIN_TEMPERATURE:g} (the logits are divided "
        f"by it in float32, so smaller values would round to 0) to {cli.MAX_TEMPERATURE:g} (default: %(default)s)",
    )
    parser.add_argument(
        "--top-k", type=int, default=5, help="sample among the k likeliest tokens (default: %(default)s)"
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="then among the likeliest tokens that hold this much of the probability (nucleus sampling); "
        "1 means off (default: %(default)s)",
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=1,
        help="complete the prompt this many times, generated together as one batch (default: %(default)s)",
    )
    parser.add_argument(
        "--ignore-eos",
        action="store_true",
        help="generate exactly --max-new-tokens, also past the checkpoint's end-of-text token (by default a "
        "sample ends when it draws that token, which is not printed)",
    )
    parser.add_argument(
        "--no-kv-cache",
        action="store_true",
        help="recompute the whole sequence for every new token, as Tripy's example does, instead of prefill "
        "and decode with a KV cache (slower, more so with every token)",
    )
    parser.add_argument(
        "--engine-cache",
        action=argparse.BooleanOptionalAction,
        help="save the compiled prefill and decode functions and reuse them in later runs (default: on with "
        "TensorRT, where building engines takes long; off on the CPU executor, where compiling takes "
        "seconds but a saved entry holds the weights twice, about 1.7 GB for gpt2, and loads slower than "
        "compiling)",
    )
    parser.add_argument(
        "--engine-cache-dir",
        metavar="DIR",
        help="where the engine cache lives (default: $TRIPY_ENGINE_CACHE_DIR, else ~/.cache/tripy-gpt2-engines)",
    )
    args = parser.parse_args(argv)
    args.input_text = read_prompt(args)
    if args.engine_cache_dir == "":
        raise cli.UsageError("--engine-cache-dir is empty: name a directory, or pass --no-engine-cache")
    cli.check_model_arguments(args)
    return args


# The most a prompt read from a file or standard input may hold: far more than any GPT-2's block of tokens.
MAX_PROMPT_BYTES = reading.MiB


def read_prompt(args):
    """The prompt: --input-text, or read from standard input (--input-text -) or --input-file, which must be a
    regular file; in each case UTF-8 text, not empty, of at most MAX_PROMPT_BYTES when read."""
    if args.input_file is not None or args.input_text == "-":
        where = f"--input-file '{args.input_file}'" if args.input_file is not None else "the prompt on standard input"
        try:
            if args.input_file is not None:
                data = reading.read_bytes(args.input_file, MAX_PROMPT_BYTES)
            else:
                data = reading.bounded(sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1), MAX_PROMPT_BYTES)
            text = reading.utf8_text(data)
        except reading.UnreadableFile as exc:
            raise cli.UsageError(f"{where} {exc}") from None
        except OSError as exc:
            raise cli.UsageError(f"{where} cannot be read: {exc.strerror or exc}") from None
        if text == "":
            raise cli.UsageError(f"{where} is empty: give a prompt to complete")
        return text
    if args.input_text == "":
        raise cli.UsageError("--input-text is empty: give a prompt to complete")
    try:
        args.input_text.encode("utf-8")
    except UnicodeEncodeError as exc:  # bytes that are not UTF-8 reach Python as lone surrogates
        raise cli.UsageError(f"--input-text is not valid UTF-8 text (at character {exc.start + 1})") from None
    return args.input_text


def encode_prompt(args, checkpoint):
    """The prompt's token ids; prompt and new tokens must fit in the model's block."""
    prompt = checkpoint.encoding.encode(args.input_text)
    block_size = checkpoint.hf_config.n_positions
    if len(prompt) + args.max_new_tokens > block_size:
        raise cli.UsageError(
            f"the prompt ({len(prompt)} tokens) plus --max-new-tokens {args.max_new_tokens} exceeds "
            f"the model's block size of {block_size} tokens"
        )
    return prompt


def main(argv=None):
    args = parse_args(argv)
    chosen = backend.select_backend(args.backend, args.threads)
    # Loaded only now: nvtripy on the backend just chosen, and torch's and transformers' seconds of
    # imports after --help and bad options have had their answer.
    import nvtripy as tp

    import quantization
    from checkpoint import open_checkpoint
    from sampling import Sampling, seeded_generator

    dtype = getattr(tp, args.dtype or chosen.default_dtype)
    chosen.check_runs(dtype.name, args.quant_mode)
    checkpoint = open_checkpoint(args.checkpoint or args.model_type)
    prompt = encode_prompt(args, checkpoint)
    quant = quantization.prepare(checkpoint, args.quant_mode, args.calib_file, args.calib_samples)
    compiled = compiled_functions(args, checkpoint, dtype, quant, chosen, len(prompt))
    print(chosen, file=sys.stderr, flush=True)  # once the input and the weights have checked out

    # Sampling runs where the logits are: on the GPU with TensorRT, as in Tripy's example, so its
    # published outputs reproduce; on the CPU otherwise.
    generator = seeded_generator(args.seed, "cuda" if chosen.name == "tensorrt" else "cpu")
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    tokens = generate_tokens(args, compiled, prompt, sampling, generator, checkpoint)
    start, step_times = print_responses(checkpoint.encoding, prompt, tokens, args.num_samples, args.max_new_tokens)

    for line in report(compiled, quant, start, step_times, args.num_samples, chosen):
        print(line)
    return 0


def compiled_functions(args, checkpoint, dtype, quant, chosen, prompt_tokens):
    """The compiled functions of the generation path asked for: prefill and decode, from the engine cache
    when it is used and has them; or, with --no-kv-cache, the whole-sequence forward."""
    import generate

    if args.no_kv_cache:
        max_tokens = prompt_tokens + args.max_new_tokens
        return generate.compile_without_cache(checkpoint, dtype, quant, prompt_tokens, max_tokens, args.num_samples)
    cache = (args.engine_cache, args.engine_cache_dir)
    return generate.load_or_compile(checkpoint, dtype, quant, chosen.name, *cache, args.num_samples)


def generate_tokens(args, compiled, prompt, sampling, generator, checkpoint):
    """The generation path asked for, as a generator of each step's new tokens."""
    import generate

    eos = None if args.ignore_eos else checkpoint.eos_token_ids
    path = generate.generate_without_cache if args.no_kv_cache else generate.generate
    vocab_size = checkpoint.encoding.n_vocab
    return path(compiled, prompt, args.max_new_tokens, sampling, generator, vocab_size, args.num_samples, eos)


def print_responses(encoding, prompt, token_steps, num_samples, max_new_tokens):
    """Prints the prompt's completions: one is streamed as its tokens are made (whole characters only);
    several are printed as blocks `Response i: ...` once the batch is done. Returns when generation
    started, and for each step the time its tokens were ready and how many there were. On Ctrl-C, what
    was made is printed."""
    show = escape_controls if sys.stdout.isatty() else str  # a pipe or a file gets the text as it is
    streaming = num_samples == 1
    decoders = [text_stream(encoding) for _ in range(num_samples)]  # each sample's tokens to text
    responses = [decode(prompt) for decode in decoders]  # each sample's text so far
    if streaming:
        print(f"Response: {show(responses[0])}", end="", flush=True)
    else:
        token_steps = progress.bar(token_steps, "generating", total=max_new_tokens, unit="step")
    step_times = []
    start = time.perf_counter()
    try:
        for tokens in token_steps:
            step_times.append((time.perf_counter(), sum(token is not None for token in tokens)))
            for i, token in enumerate(tokens):
                piece = decoders[i]([] if token is None else [token])
                responses[i] += piece
                if streaming:
                    print(show(piece), end="", flush=True)
    except KeyboardInterrupt:
        print_ends(decoders, responses, streaming, show)
        print(f"Interrupted after {len(step_times)} of {max_new_tokens} new tokens.", file=sys.stderr)
        raise
    print_ends(decoders, responses, streaming, show)
    return start, step_times


def print_ends(decoders, responses, streaming, show):
    """The end of the streamed response, or every sample's block."""
    ends = [decode([], final=True) for decode in decoders]
    if streaming:
        print(show(ends[0]), flush=True)
        return
    for i, (response, end) in enumerate(zip(responses, ends), start=1):
        print(f"Response {i}: {show(response + end)}", flush=True)


def report(compiled, quant, start, step_times, num_samples, chosen):
    """The lines after the responses: calibration, how the compiled functions were got, speed."""
    lines = []
    if quant and quant.calibration_seconds is not None:  # None when the engine cache had the model
        lines.append(quant.report())
    if compiled.from_engine_cache:
        lines.append(f"Loaded the compiled model from the engine cache in {compiled.seconds:.2f} seconds.")
    else:
        saved = (
            f" Saving it to the engine cache took {compiled.save_seconds:.2f} seconds." if compiled.save_seconds else ""
        )
        lines.append(f"Compilation took {compiled.seconds:.2f} seconds.{saved}")
    peak = peak_memory_bandwidth() if chosen.name == "tensorrt" else None
    return lines + speed_report(start, step_times, compiled.weight_bytes, num_samples, peak)


if __name__ == "__main__":
    cli.run_command(main)
