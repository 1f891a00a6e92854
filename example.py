"""Completes a prompt with GPT-2 running on nvtripy, after the nanoGPT example that ships with Tripy.

    python example.py --input-text "What is the answer to life, the universe, and everything?" --seed 0
    python example.py --checkpoint checkpoints/tiny-gpt2 --input-text "Hello, my name is" --seed 0

Generation uses a KV cache (generate.py): a prefill function reads the prompt, a decode function then
makes one token at a time, each compiled once with dynamic dimensions; the text streams as it is made,
and a speed report follows. With TensorRT the compiled engines are saved and reused by the next run
(engine_cache.py). --no-kv-cache instead calls the model once per new token on the whole sequence so
far. Sampling (top-k, temperature) runs in PyTorch with a seeded generator.

--quant-mode quantizes the linear layers with NVIDIA ModelOpt first (weight_loader.py, quantization.py),
calibrating on --calib-file or on text that ships with Python; a report line says on how much text and
how long it took. perplexity.py measures what a mode costs in quality.
"""

import argparse
import contextlib
import hashlib
import io
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch

import backend
import engine_cache
import quantization
from generate import compile_decode, compile_forward, compile_prefill, forward_logits, generate, generate_without_cache
from generate import peak_memory_bandwidth, shape_bounds, speed_report
from generate import text_stream, weight_bytes
from quantization import QUANT_MODES
from tokenizer import TokenizerError, load_encoding

# Calibration: this many samples of (at most) 256 tokens, run through ModelOpt in batches of 16.
# AWQ (int4) searches its scales once per batch, so few large batches calibrate much faster than many.
CALIB_SAMPLES = 32
CALIB_BATCH_SIZE = 16
# The oldest GPU each quantized mode runs on with TensorRT, as a compute capability: float8 needs
# Ada (8.9) or Hopper (9.0). On the CPU executor every mode runs.
MIN_COMPUTE_CAPABILITY = {"float8": (8, 9)}


class UsageError(Exception):
    """Bad input from the user: reported as one line on stderr, with exit status 2."""


def add_model_arguments(parser):
    """The options that choose the model and its quantization (perplexity.py takes them too)."""
    parser.add_argument(
        "--model-type",
        default="gpt2",
        help="a Hugging Face Hub id of a GPT-2 model: gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, ... "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="a local checkpoint directory in transformers' format, used instead of --model-type; works offline",
    )
    parser.add_argument("--quant-mode", choices=QUANT_MODES, help="ModelOpt quantization of the linear layers")
    parser.add_argument(
        "--calib-file",
        metavar="PATH",
        help="plain UTF-8 text to calibrate --quant-mode on, paragraphs separated by blank lines "
        "(default: Python's own help topics, which need no download)",
    )
    parser.add_argument(
        "--calib-samples",
        type=int,
        default=CALIB_SAMPLES,
        help="calibrate on this many samples of up to 256 tokens, cut from the calibration text (default: %(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=backend.CHOICES,
        default="auto",
        help="auto: TensorRT when it and a GPU are present, else the PyTorch executor on the CPU (default: %(default)s)",
    )


def check_model_arguments(args):
    if args.quant_mode is None and (args.calib_file is not None or args.calib_samples != CALIB_SAMPLES):
        raise UsageError("--calib-file and --calib-samples calibrate a quantized model: give --quant-mode too")
    if args.calib_samples < 1:
        raise UsageError(f"--calib-samples must be at least 1, not {args.calib_samples}")
    if args.checkpoint is not None and not os.path.isdir(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint}: no such directory")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Completes a prompt with GPT-2 running on nvtripy.")
    parser.add_argument("--input-text", required=True, help="the prompt to complete")
    add_model_arguments(parser)
    parser.add_argument("--max-new-tokens", type=int, default=10, help="tokens to generate (default: %(default)s)")
    parser.add_argument("--seed", type=int, help="seeds sampling, for reproducible output (default: random)")
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature; 0 means greedy (default: %(default)s)"
    )
    parser.add_argument("--top-k", type=int, default=5, help="sample among the k likeliest tokens (default: %(default)s)")
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
        default=engine_cache.default_dir(),
        help="where the engine cache lives (default: $TRIPY_ENGINE_CACHE_DIR, else %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.input_text == "":
        raise UsageError("--input-text is empty: give a prompt to complete")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, not {args.max_new_tokens}")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {args.top_k}")
    if not args.temperature >= 0:  # also rejects nan
        raise UsageError(f"--temperature must be 0 (greedy) or positive, not {args.temperature}")
    check_model_arguments(args)
    return args


@dataclass
class Quantization:
    """--quant-mode and the tokens ModelOpt calibrates it on; load_model records the seconds it took."""

    mode: str
    calibration: quantization.CalibrationData
    text_source: str  # where the calibration text came from, for the report
    seconds: Optional[float] = None

    def settings(self):
        """What changes the quantized weights besides the mode, for the engine cache's key."""
        digest = hashlib.sha256()
        for batch in self.calibration.batches:
            digest.update(repr(tuple(batch.shape)).encode() + batch.numpy().tobytes())
        return {"calibration_tokens_sha256": digest.hexdigest(), "calibration": self.calibration.summary()}

    def report(self):
        return f"Calibrating {self.mode} on {self.calibration.summary()} of {self.text_source} took {self.seconds:.2f} seconds."


def calibration_data(texts, encoding, num_samples, max_length):
    """Samples of `max_length` tokens cut from the texts' tokens one after another (blank lines between
    them), as quantization.CalibrationData. Equal lengths share a batch with no padding, and short
    paragraphs do not each make a batch of their own; only a text shorter than one sample gives less."""
    separator = encoding.encode("\n\n")
    stream = []
    for text in texts:
        stream += encoding.encode(text, disallowed_special=()) + separator
        if len(stream) >= num_samples * max_length:
            break
    samples = [stream[i : i + max_length] for i in range(0, min(len(stream), num_samples * max_length), max_length)]
    if len(samples) > 1 and len(samples[-1]) < max_length:
        samples.pop()
    return quantization.make_calibration_batches(samples, lambda ids: ids, max_length, batch_size=CALIB_BATCH_SIZE)


def check_quant_mode_supported(quant_mode, backend_name, capability=None):
    """Refuses a mode the GPU cannot run, before any weights are read. `capability` is the GPU's (major,
    minor) compute capability; None asks CUDA."""
    need = MIN_COMPUTE_CAPABILITY.get(quant_mode)
    if backend_name != "tensorrt" or need is None:
        return
    capability = tuple(capability or torch.cuda.get_device_capability())
    if capability < need:
        raise UsageError(
            f"--quant-mode {quant_mode} needs a GPU of compute capability {need[0]}.{need[1]} or newer with TensorRT; "
            f"this one has {capability[0]}.{capability[1]} (int8-weight-only and int4-weight-only run on it, and "
            "every mode runs with --backend cpu)"
        )


def prepare_quantization(args, source, encoding):
    """The Quantization that --quant-mode asks for, its calibration text read and tokenized: a bad
    --calib-file, or a model int4 cannot quantize, is reported before any weights are read."""
    import weight_loader

    if args.quant_mode is None:
        return None
    hf_config = weight_loader.load_hf_config(source)
    block = quantization.INT4_BLOCK_SIZE
    if args.quant_mode == "int4-weight-only" and hf_config.n_embd % block:
        raise UsageError(
            f"--quant-mode int4-weight-only quantizes blocks of {block} inputs, and the embedding size of "
            f"'{source}' ({hf_config.n_embd}) is not a multiple of {block}"
        )
    try:
        texts = quantization.load_calibration_texts(args.calib_file)
        max_length = min(quantization.DEFAULT_CALIB_MAX_LENGTH, hf_config.n_positions)
        calibration = calibration_data(texts, encoding, args.calib_samples, max_length)
    except quantization.CalibrationDataError as exc:
        raise UsageError(str(exc)) from None
    return Quantization(args.quant_mode, calibration, quantization.calibration_source(args.calib_file))


def load_model(source, dtype, seq_len, quant=None):
    """GPT for the checkpoint `source` (Hub id or directory), with weights, ready for tp.compile;
    quantized with ModelOpt when `quant` (a Quantization) is given. seq_len None means the block size."""
    import weight_loader
    from model import GPT

    hf_config = weight_loader.load_hf_config(source)
    quant_mode = quant.mode if quant else None
    model = GPT(weight_loader.gpt_config_from_hf(hf_config, seq_len=seq_len, dtype=dtype, quant_mode=quant_mode))
    if quant:
        quant.seconds = weight_loader.load_quant_weights_from_hf(model, source, dtype, quant.mode, quant.calibration)
    else:
        weight_loader.load_weights_from_hf(model, source, dtype)
    return model


def load_or_compile(source, dtype, backend_name, cache_dir=None, quant_mode=None, quant_settings=None, load=None):
    """The compiled prefill and decode functions, the weights' size in bytes, and a line saying how the
    functions were got: from the engine cache in `cache_dir` when it has them (the weights are then not
    even read), else loaded and compiled, and saved to the cache if there is one.

    `load()` makes the model (default: load_model at full block size). A quantized model must also name
    its quant_mode, and in quant_settings whatever else changes its weights (calibration text, samples):
    both are part of the engine cache's key.
    """
    import weight_loader

    is_local = weight_loader.is_local(source)
    config = weight_loader.gpt_config_from_hf(weight_loader.load_hf_config(source), dtype=dtype, quant_mode=quant_mode)

    def key_parts(checkpoint):
        env, code = engine_cache.environment(backend_name), engine_cache.source_digest(backend_name)
        return engine_cache.key_parts(checkpoint, dtype, quant_mode, shape_bounds(config), config.batch_size, env, code, quant_settings)

    checkpoint = engine_cache.checkpoint_identity(source, is_local, cache_dir) if cache_dir else None
    if checkpoint:
        start = time.perf_counter()
        entry = engine_cache.load(cache_dir, key_parts(checkpoint), ("prefill", "decode"))
        if entry:
            executables, info = entry
            how = f"Loaded the compiled model from the engine cache in {time.perf_counter() - start:.2f} seconds."
            return executables["prefill"], executables["decode"], info["weight_bytes"], how

    model = load() if load else load_model(source, dtype, seq_len=config.block_size)
    assert model.config.quant_mode == quant_mode, "the engine cache's key must name the model's quant_mode"
    start = time.perf_counter()
    compiled_prefill, compiled_decode = compile_prefill(model), compile_decode(model)
    how = f"Compilation took {time.perf_counter() - start:.2f} seconds."
    if cache_dir:
        checkpoint = checkpoint or engine_cache.checkpoint_identity(source, is_local, cache_dir)  # now downloaded
        start = time.perf_counter()
        executables = {"prefill": compiled_prefill, "decode": compiled_decode}
        if checkpoint and engine_cache.save(cache_dir, key_parts(checkpoint), executables, {"weight_bytes": weight_bytes(model)}):
            how += f" Saving it to the engine cache took {time.perf_counter() - start:.2f} seconds."
    return compiled_prefill, compiled_decode, weight_bytes(model), how


def open_checkpoint(args):
    """The checkpoint's source (Hub id or directory), its transformers config and its tokenizer, checked
    against each other before any weights are read."""
    import weight_loader

    source = args.checkpoint or args.model_type
    hf_config = weight_loader.load_hf_config(source)
    encoding = load_encoding(source, is_directory=args.checkpoint is not None or weight_loader.is_local(source))
    if encoding.n_vocab > hf_config.vocab_size:
        raise UsageError(
            f"the tokenizer of '{source}' ({encoding.name}) has {encoding.n_vocab} tokens, "
            f"more than the model's vocabulary of {hf_config.vocab_size}"
        )
    return source, hf_config, encoding


def prepare(args):
    """Checks the checkpoint's config, its tokenizer and the prompt, before any weights are read."""
    source, hf_config, encoding = open_checkpoint(args)
    prompt = encoding.encode(args.input_text, allowed_special={"<|endoftext|>"})
    if len(prompt) + args.max_new_tokens > hf_config.n_positions:
        raise UsageError(
            f"the prompt ({len(prompt)} tokens) plus --max-new-tokens {args.max_new_tokens} exceeds "
            f"the model's block size of {hf_config.n_positions} tokens"
        )
    return source, encoding, prompt


def main(argv=None):
    args = parse_args(argv)
    # Choose the backend before nvtripy is imported. Its announcement waits until the inputs have
    # checked out, so that a bad input is reported in one line.
    with contextlib.redirect_stderr(io.StringIO()) as announcement:
        backend_name = backend.select_backend(args.backend)
    import nvtripy as tp
    import weight_loader

    # Half precision where TensorRT runs, as Tripy's example does; full precision on the CPU.
    dtype = tp.float16 if backend_name == "tensorrt" else tp.float32
    use_engine_cache = args.engine_cache if args.engine_cache is not None else backend_name == "tensorrt"
    try:
        check_quant_mode_supported(args.quant_mode, backend_name)
        source, encoding, prompt = prepare(args)
        quant = prepare_quantization(args, source, encoding)
        if args.no_kv_cache:
            model = load_model(source, dtype, seq_len=len(prompt) + args.max_new_tokens, quant=quant)
        else:
            cache_dir = args.engine_cache_dir if use_engine_cache else None
            quant_mode, quant_settings = (quant.mode, quant.settings()) if quant else (None, None)
            compiled_prefill, compiled_decode, model_bytes, how_compiled = load_or_compile(
                source, dtype, backend_name, cache_dir, quant_mode, quant_settings, load=lambda: load_model(source, dtype, None, quant)
            )
    except weight_loader.HubUnavailable as exc:
        raise UsageError(f"{exc}; pass --checkpoint DIR with a local copy of the model") from None
    except weight_loader.CheckpointError as exc:
        raise UsageError(str(exc)) from None
    sys.stderr.write(announcement.getvalue())
    sys.stderr.flush()  # once nvtripy has compiled, sys.stderr is a buffered stream of its own

    if args.no_kv_cache:
        start = time.perf_counter()
        compiled_model = compile_forward(model, len(prompt))
        how_compiled = f"Compilation took {time.perf_counter() - start:.2f} seconds."
        model_bytes = weight_bytes(model)

    # Sampling runs where the logits are: on the GPU with TensorRT, as in Tripy's example, so its
    # published outputs reproduce; on the CPU otherwise.
    generator = torch.Generator(device="cuda" if backend_name == "tensorrt" else "cpu")
    if args.seed is not None:
        generator.manual_seed(args.seed)
    else:
        generator.seed()

    sampling = (args.max_new_tokens, args.temperature, args.top_k, generator, encoding.n_vocab)
    if args.no_kv_cache:
        new_tokens = generate_without_cache(forward_logits(compiled_model), prompt, *sampling)
    else:
        new_tokens = generate(compiled_prefill, compiled_decode, prompt, *sampling)

    # The response streams: each token's text is printed as soon as it is made (whole characters only).
    text = text_stream(encoding)
    print(f"Response: {text(prompt)}", end="", flush=True)
    token_times = []
    start = time.perf_counter()
    try:
        for token in new_tokens:
            token_times.append(time.perf_counter())
            print(text([token]), end="", flush=True)
    except KeyboardInterrupt:
        print(text([], final=True), flush=True)
        print(f"Interrupted after {len(token_times)} of {args.max_new_tokens} new tokens.", file=sys.stderr)
        return 130
    print(text([], final=True))

    peak = peak_memory_bandwidth() if backend_name == "tensorrt" else None
    calibrated = [quant.report()] if quant and quant.seconds is not None else []  # none when the engine cache had it
    for line in [*calibrated, how_compiled, *speed_report(token_times[0] - start, token_times, model_bytes, peak)]:
        print(line)
    return 0


def run_command(main):
    """Runs `main` as a command: bad input is one `error:` line on stderr and exit status 2, Ctrl-C 130."""
    try:
        sys.exit(main())
    except (UsageError, backend.BackendError, TokenizerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run_command(main)
