"""Fast generation with a KV cache, after gpt-fast's generate.py: prefill -> decode_one_token -> generate.

Recomputing the whole sequence for every new token (example.py --no-kv-cache) makes each token cost
more than the one before. Here `prefill` reads the prompt once and returns the logits of its last
token and every layer's keys and values (the KV cache); `decode_one_token` feeds one token and the
cache, and gets the next logits and the cache grown by one. A step's cost is then the weights, read
once, plus attention over the cache, which is small next to them.

Each function is compiled once, with tp.compile and dynamic dimensions: prefill over the prompt length,
decode over the cache length up to the block size. The bounds depend on the model only, not on the
prompt, so one compiled pair serves every prompt and can be saved and reused (engine_cache.py).
The cache never leaves the device: a call's output tensors go straight back in as the next call's
inputs. Only the logits are read, through DLPack, to sample the next token.

nvtripy is imported inside the functions, because the backend must be chosen before it is imported
(backend.select_backend); example.py imports this module before that.
"""

import codecs
import math

import torch

# The lengths TensorRT tunes its kernels for, within the bounds below: short prompts, a mid-length cache.
PREFILL_OPT = 64
DECODE_OPT = 256


def sample(logits, temperature, top_k, generator):
    """The next token from the last position's logits: greedy for temperature 0, else top-k sampling."""
    logits = logits[:, -1, :]
    if temperature == 0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    logits = logits / temperature
    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
    logits[logits < v[:, [-1]]] = -float("Inf")
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# --- compiling -----------------------------------------------------------------------------------------


def shape_bounds(config):
    """(min, opt, max) of the dynamic dimensions: prompt tokens for prefill, cached tokens for decode.
    A decode step feeds the token at position `cached`, so the cache holds at most block_size - 1."""
    block = config.block_size
    return {
        "prefill_tokens": (1, min(PREFILL_OPT, block), block),
        "decode_cached_tokens": (1, min(DECODE_OPT, block - 1), block - 1),
    }


def compile_prefill(model):
    import nvtripy as tp

    tokens = tp.NamedDimension("tokens", *shape_bounds(model.config)["prefill_tokens"])
    return tp.compile(model.prefill, args=[tp.InputInfo((model.config.batch_size, tokens), dtype=tp.int32)])


def compile_decode(model):
    import nvtripy as tp

    c = model.config
    cached = tp.NamedDimension("cached_tokens", *shape_bounds(c)["decode_cached_tokens"])
    layer_cache = tp.InputInfo((2, c.batch_size, c.num_heads, cached, c.embedding_size // c.num_heads), dtype=c.dtype)
    token = tp.InputInfo((c.batch_size, 1), dtype=tp.int32)
    return tp.compile(model.decode, args=[token, [layer_cache] * c.num_layers])


# Bytes per weight of a quantized linear layer. model.py keeps its weight in the model's dtype and
# quantizes it in the traced graph; compiling folds that into the constant the program reads.
QUANTIZED_WEIGHT_BYTES = {"int8-weight-only": 1, "int4-weight-only": 0.5, "float8": 1}


def weight_bytes(model):
    """Bytes of the model's weights as the compiled program stores them, each counted once (the tied
    lm_head and wte are one tensor): what a decode step reads from memory, for the bandwidth report."""
    state, seen, total = model.state_dict(), set(), 0
    for key, weight in state.items():
        if id(weight) in seen:
            continue
        seen.add(id(weight))
        quantized = key.endswith(".weight") and f"{key[: -len('weight')]}weight_scale" in state
        itemsize = QUANTIZED_WEIGHT_BYTES[model.config.quant_mode] if quantized else weight.dtype.itemsize
        total += math.prod(weight.shape) * itemsize
    return int(total)


# --- generating without a cache (example.py --no-kv-cache, and the reference for the cached path) ---------


def compile_forward(model, prompt_len):
    """The whole-sequence forward, compiled once for every length from 1 to the model's seq_len,
    tuned for the prompt's."""
    import nvtripy as tp

    seq_len = tp.NamedDimension("seq_len", 1, prompt_len, model.config.seq_len)
    return tp.compile(model, args=[tp.InputInfo((model.config.batch_size, seq_len), dtype=tp.int32)])


def forward_logits(compiled_model):
    """Wraps the compiled model as token ids (torch, int32) -> logits (torch)."""
    import nvtripy as tp

    def logits(idx):
        # A compiled function takes device tensors: a CPU tensor is copied over first.
        tp_idx = tp.Tensor(idx) if idx.is_cuda else tp.copy(tp.Tensor(idx), tp.device("gpu"))
        return torch.from_dlpack(compiled_model(tp_idx))

    return logits


def generate_without_cache(logits, prompt, max_new_tokens, temperature, top_k, generator, vocab_size=None):
    """Yields new token ids one at a time, each from the logits of the whole sequence so far (Tripy's
    example does this; the cost of a token grows with the sequence).

    A model's vocabulary may be padded beyond its tokenizer's; ids from vocab_size on are never chosen.
    """
    idx = torch.tensor([prompt], dtype=torch.int32, device=generator.device)
    for _ in range(max_new_tokens):
        idx_next = sample(logits(idx)[..., :vocab_size], temperature, top_k, generator)
        idx = torch.cat((idx, idx_next.to(torch.int32)), dim=1)
        yield int(idx_next[0, 0])


# --- generating ----------------------------------------------------------------------------------------


def device_tokens(tokens):
    """Token ids as a (1, n) int32 tensor created on the device, where compiled functions take inputs."""
    import nvtripy as tp

    return tp.Tensor([list(tokens)], device=tp.device("gpu"))


def prefill(compiled_prefill, prompt):
    """The logits after the prompt (torch, (1, 1, vocab)) and the KV cache (nvtripy tensors, on the device)."""
    logits, *cache = compiled_prefill(device_tokens(prompt))
    return torch.from_dlpack(logits), cache


def decode_one_token(compiled_decode, token, cache):
    """The logits after `token` and the cache grown by it. The cache goes in as it came out: no copies."""
    logits, *cache = compiled_decode(device_tokens([token]), cache)
    return torch.from_dlpack(logits), cache


def generate(compiled_prefill, compiled_decode, prompt, max_new_tokens, temperature, top_k, generator, vocab_size=None):
    """Yields new token ids one at a time: the first from prefill's logits, each next from one decode step.

    A model's vocabulary may be padded beyond its tokenizer's; ids from vocab_size on are never chosen.
    The next step runs only when the next token is asked for, so a consumer can show each token at once.
    """
    logits, cache = prefill(compiled_prefill, prompt)
    for i in range(max_new_tokens):
        token = int(sample(logits[..., :vocab_size], temperature, top_k, generator)[0, 0])
        yield token
        if i + 1 < max_new_tokens:
            logits, cache = decode_one_token(compiled_decode, token, cache)


def text_stream(encoding):
    """A function from token ids to the text they complete. A token can end in the middle of a UTF-8
    character; its bytes wait for the rest, so every character prints whole. Call it with final=True
    at the end to flush what is left (as U+FFFD, as encoding.decode would)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def text(tokens, final=False):
        return decoder.decode(b"".join(encoding.decode_single_token_bytes(t) for t in tokens), final=final)

    return text


# --- the speed report ----------------------------------------------------------------------------------

# Peak memory bandwidth in bytes/s from NVIDIA's datasheets, for GPUs whose properties lack the memory
# clock or bus width. Matched against torch.cuda.get_device_name(), longest name first.
PEAK_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 PCIe": 2.0e12,
    "H100 NVL": 3.9e12,
    "H100": 3.35e12,
    "A100-SXM4-80GB": 2.039e12,
    "A100 80GB PCIe": 1.935e12,
    "A100": 1.555e12,
    "L40S": 0.864e12,
    "L4": 0.3e12,
    "A10": 0.6e12,
    "RTX 4090": 1.008e12,
}


def peak_memory_bandwidth(device=0):
    """(bytes/s, how it was found) for a CUDA GPU. From its properties, as NVIDIA's bandwidthTest does:
    two transfers per memory clock (double data rate) over the whole bus; else from PEAK_BANDWIDTH."""
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8, "from its memory clock and bus width"
    for name in sorted(PEAK_BANDWIDTH, key=len, reverse=True):
        if name in props.name:
            return PEAK_BANDWIDTH[name], "from its datasheet"
    return None, None


def speed_report(first_token_s, token_times, weight_bytes, peak_bandwidth=None):
    """Report lines after generation, as gpt-fast prints them. token_times are the perf_counter times at
    which each new token was ready; decode speed counts the tokens after the first, which prefill made."""
    lines = [f"Time to first token: {first_token_s:.3f} seconds."]
    decoded = len(token_times) - 1
    if decoded < 1:
        return lines + ["Decode: no tokens after the first, so no decode speed to report."]
    tokens_per_s = decoded / (token_times[-1] - token_times[0])
    bandwidth = weight_bytes * tokens_per_s
    lines.append(f"Decode: {tokens_per_s:.2f} tokens/s ({decoded} tokens after the first).")
    line = f"Weight bandwidth: {bandwidth / 1e9:.2f} GB/s ({weight_bytes / 1e9:.3f} GB of weights x {tokens_per_s:.2f} tokens/s)"
    if peak_bandwidth:
        line += f", {100 * bandwidth / peak_bandwidth[0]:.1f}% of the GPU's peak {peak_bandwidth[0] / 1e12:.2f} TB/s ({peak_bandwidth[1]})"
    return lines + [line + "."]
