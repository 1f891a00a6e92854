"""Generation, after gpt-fast's generate.py: prefill -> decode_one_token -> generate.

Recomputing the whole sequence for every new token (Tripy's example; example.py --no-kv-cache) makes
each token cost more than the one before. With a KV cache, `prefill` reads the prompt once and returns
the logits of its last token and every layer's keys and values; `decode_one_token` feeds one token and
the cache, and gets the next logits and the cache grown by one. A step's cost is then the weights, read
once, plus attention over the cache, which is small next to them.

Each function is compiled once, with tp.compile and dynamic dimensions: prefill over the prompt length,
decode over the cache length up to the block size. The bounds depend on the model only, not on the
prompt, so one compiled pair serves every prompt and can be saved and reused (engine_cache.py).
The cache never leaves the device: a call's output tensors go straight back in as the next call's
inputs. Only the logits are read, through DLPack, to sample the next token.

`generate` and `generate_without_cache` are the two paths: both take a Compiled (compile_with_cache's,
or compile_without_cache's), the prompt and the sampling options, and yield the new tokens of a batch
of samples step by step.
"""

import time
from dataclasses import dataclass
from typing import Optional

import nvtripy as tp
import torch

import engine_cache
import progress
import torch_executor
import weight_loader
from sampling import check_finite, sample

# The lengths TensorRT tunes its kernels for, within the bounds below: short prompts, a mid-length cache.
PREFILL_OPT = 64
DECODE_OPT = 256


@dataclass
class Compiled:
    """The compiled functions of one generation path, and how they were got, for the report."""

    prefill: Optional[tp.Executable] = None  # with a KV cache (generate)
    decode: Optional[tp.Executable] = None
    forward: Optional[tp.Executable] = None  # without one (generate_without_cache)
    weight_bytes: int = 0  # what a decode step reads
    seconds: float = 0.0  # compiling them, or loading them from the engine cache
    from_engine_cache: bool = False
    save_seconds: Optional[float] = None  # saving them to the engine cache, when they were


# --- compiling -----------------------------------------------------------------------------------------


def shape_bounds(config):
    """(min, opt, max) of the dynamic dimensions: prompt tokens for prefill, cached tokens for decode.
    A decode step feeds the token at position `cached`, so the cache holds at most block_size - 1."""
    block = config.block_size
    return {
        "prefill_tokens": (1, min(PREFILL_OPT, block), block),
        "decode_cached_tokens": (1, min(DECODE_OPT, block - 1), block - 1),
    }


def compile_prefill(model, batch_size=1):
    tokens = tp.NamedDimension("tokens", *shape_bounds(model.config)["prefill_tokens"])
    return tp.compile(model.prefill, args=[tp.InputInfo((batch_size, tokens), dtype=tp.int32)])


def compile_decode(model, batch_size=1):
    c = model.config
    cached = tp.NamedDimension("cached_tokens", *shape_bounds(c)["decode_cached_tokens"])
    layer_cache = tp.InputInfo((2, batch_size, c.num_heads, cached, c.embedding_size // c.num_heads), dtype=c.dtype)
    token = tp.InputInfo((batch_size, 1), dtype=tp.int32)
    return tp.compile(model.decode, args=[token, [layer_cache] * c.num_layers])


def compile_forward(model, max_tokens, opt_tokens, batch_size=1):
    """The whole-sequence forward, compiled once for every length from 1 to max_tokens, tuned for opt_tokens."""
    tokens = tp.NamedDimension("tokens", 1, opt_tokens, max_tokens)
    return tp.compile(model, args=[tp.InputInfo((batch_size, tokens), dtype=tp.int32)])


def compile_with_cache(model, batch_size=1):
    """The model's prefill and decode, compiled for batches of batch_size sequences."""
    start = time.perf_counter()
    with progress.step("Compiling prefill and decode"):
        prefill, decode = compile_prefill(model, batch_size), compile_decode(model, batch_size)
    seconds = time.perf_counter() - start
    return Compiled(prefill, decode, weight_bytes=weight_bytes(model, decode), seconds=seconds)


def compile_without_cache(checkpoint, dtype, quant, prompt_tokens, max_tokens, batch_size=1):
    """The checkpoint's model, loaded (quantized if `quant` says so), as one whole-sequence forward of
    batch_size sequences of up to max_tokens tokens, tuned for the prompt's length."""
    model = weight_loader.load_model(checkpoint, dtype, quant)
    start = time.perf_counter()
    with progress.step("Compiling the model"):
        forward = compile_forward(model, max_tokens, prompt_tokens, batch_size)
    seconds = time.perf_counter() - start
    return Compiled(forward=forward, weight_bytes=weight_bytes(model, forward), seconds=seconds)


def weight_bytes(model, executable):
    """The bytes of weights a decode step reads: those of the compiled function that makes it. The CPU
    executor counts the constants its program holds (quantized weights at their codes' size, and a weight
    it laid out anew for the step's product in that layout alone). A TensorRT engine cannot be asked; it
    holds each weight as the model stores it, a quantized one at its quantized size, since TensorRT keeps
    quantized constants quantized: model.weight_bytes counts that."""
    if torch_executor.is_installed():
        return torch_executor.weight_bytes(executable)
    return model.weight_bytes()


ENGINE_CACHE_FUNCTIONS = ("prefill", "decode")


def load_or_compile(checkpoint, dtype, quant, backend_name, use_engine_cache=None, cache_dir=None, batch_size=1):
    """Prefill and decode for batches of batch_size: from the engine cache when it is used and has them
    (then the weights are not even read), else the checkpoint's model loaded (quantized if `quant` says
    so) and compiled by compile_with_cache, and saved to the cache when it is used.

    use_engine_cache None means on with TensorRT, where building engines takes long, and off on the CPU
    executor, where compiling takes seconds and loading a saved entry longer. cache_dir None means
    engine_cache.default_dir()."""
    if use_engine_cache is None:
        use_engine_cache = backend_name == "tensorrt"
    if not use_engine_cache:
        return compile_with_cache(weight_loader.load_model(checkpoint, dtype, quant), batch_size)

    cache_dir = cache_dir or engine_cache.default_dir()
    engine_cache.remove_leftovers(cache_dir)
    bounds = shape_bounds(weight_loader.gpt_config(checkpoint, dtype))
    key = (checkpoint, cache_dir, dtype, quant, bounds, batch_size, backend_name)
    parts = engine_cache.key_parts(*key)  # None for a Hub model not downloaded yet
    start = time.perf_counter()
    entry = engine_cache.load(cache_dir, parts, ENGINE_CACHE_FUNCTIONS) if parts else None
    if entry:
        functions, info = entry
        seconds = time.perf_counter() - start
        return Compiled(**functions, weight_bytes=info["weight_bytes"], seconds=seconds, from_engine_cache=True)

    compiled = compile_with_cache(weight_loader.load_model(checkpoint, dtype, quant), batch_size)
    start = time.perf_counter()
    parts = parts or engine_cache.key_parts(*key)  # a Hub model is downloaded by now
    functions = {"prefill": compiled.prefill, "decode": compiled.decode}
    if parts and engine_cache.save(cache_dir, parts, functions, {"weight_bytes": compiled.weight_bytes}):
        compiled.save_seconds = time.perf_counter() - start
    return compiled


# --- generating ----------------------------------------------------------------------------------------


def device_tokens(tokens):
    """Token ids (torch, int32, (batch, n)) as an nvtripy tensor on the device, where compiled functions take inputs."""
    return tp.Tensor(tokens) if tokens.is_cuda else tp.copy(tp.Tensor(tokens), tp.device("gpu"))


def forward_logits(compiled_forward, tokens):
    """The logits (torch) of every position of `tokens` (torch, int32, (batch, n))."""
    return torch.from_dlpack(compiled_forward(device_tokens(tokens)))


def prefill(compiled_prefill, prompt, num_samples=1):
    """The logits after the prompt (torch, (num_samples, 1, vocab)) and the KV cache (nvtripy tensors, on
    the device), for a batch of num_samples copies of the prompt."""
    logits, *cache = compiled_prefill(tp.Tensor([list(prompt)] * num_samples, device=tp.device("gpu")))
    return torch.from_dlpack(logits), cache


def decode_one_token(compiled_decode, tokens, cache):
    """The logits after `tokens` (one per sample: torch, (num_samples,)) and the cache grown by them. The
    cache goes in as it came out: no copies."""
    logits, *cache = compiled_decode(device_tokens(tokens.to(torch.int32)[:, None]), cache)
    return torch.from_dlpack(logits), cache


def generate(compiled, prompt, max_new_tokens, sampling, generator, vocab_size=None, num_samples=1, eos_token_id=None):
    """Yields, step by step, the new token of each of num_samples samples of the prompt, generated as one
    batch: the first from prefill's logits, each next from one decode step. `compiled` holds prefill and
    decode, compiled for that batch size.

    A sample ends when it draws eos_token_id, or any id of a list of them as transformers' generate()
    takes them (None or an empty list: never), which is not yielded: from then on its
    place holds None, and generation stops when every sample has ended. A model's vocabulary may be
    padded beyond its tokenizer's; ids from vocab_size on are never chosen. The next step runs only
    when the next tokens are asked for, so a consumer can show each token at once.
    """
    logits, cache = prefill(compiled.prefill, prompt, num_samples)
    ended = torch.zeros(num_samples, dtype=torch.bool)
    for i in range(max_new_tokens):
        tokens, ended = next_tokens(logits, sampling, generator, vocab_size, eos_token_id, ended, len(prompt) + i)
        yield [None if end else token for token, end in zip(tokens.tolist(), ended.tolist())]
        if ended.all() or i + 1 == max_new_tokens:
            return
        logits, cache = decode_one_token(compiled.decode, tokens, cache)


def generate_without_cache(
    compiled, prompt, max_new_tokens, sampling, generator, vocab_size=None, num_samples=1, eos_token_id=None
):
    """As generate, but each step computes the logits of the whole sequence so far anew with
    compiled.forward (Tripy's example does this; the cost of a token grows with the sequence)."""
    idx = torch.tensor([prompt] * num_samples, dtype=torch.int32, device=generator.device)
    ended = torch.zeros(num_samples, dtype=torch.bool)
    for i in range(max_new_tokens):
        logits = forward_logits(compiled.forward, idx)[:, -1:, :]
        tokens, ended = next_tokens(logits, sampling, generator, vocab_size, eos_token_id, ended, len(prompt) + i)
        yield [None if end else token for token, end in zip(tokens.tolist(), ended.tolist())]
        if ended.all():
            return
        idx = torch.cat((idx, tokens.to(torch.int32)[:, None]), dim=1)


def next_tokens(logits, sampling, generator, vocab_size, eos_token_id, ended, position):
    """Each sample's next token from its logits, and which samples have ended, with this token or before."""
    logits = logits[..., :vocab_size]
    check_finite(logits, position)
    tokens = sample(logits, sampling, generator)[:, 0]
    eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    if eos:
        ended = ended | torch.isin(tokens.cpu(), torch.tensor(eos, dtype=tokens.dtype))
    return tokens, ended
