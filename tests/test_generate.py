"""generate.py: KV-cache generation matches the recompute path and transformers, at the cache's
boundaries too, for batches of samples and up to the end of text, in full precision and in every quant
mode (against ModelOpt's fake-quantized transformers model). Everything runs on random tiny
checkpoints, on whichever backend the session uses.
"""

import os
import subprocess
import sys

import nvtripy as tp
import pytest
import torch
from helpers import BACKEND, REPO_ROOT
from transformers import GPT2LMHeadModel

import generate
import make_tiny_checkpoint
import quantization
import weight_loader
from checkpoint import open_checkpoint
from quantization import QUANT_MODES
from sampling import Sampling
from tokenizer import load_encoding

PROMPT = "Hello, my name is"
DTYPES = {"float32": tp.float32, "float16": tp.float16, "bfloat16": tp.bfloat16}
# max |logit difference|, as in test_model.py; bfloat16 keeps 8 bits of mantissa (measured 3.9e-2)
LOGIT_TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def compiled():
    """(checkpoint directory, dtype name) -> (model, compiled prefill, compiled decode, recompute logits fn),
    compiled once per module."""
    cache = {}

    def get(directory, dtype):
        if (directory, dtype) not in cache:
            model = weight_loader.load_model(open_checkpoint(directory), DTYPES[dtype])
            recompute = generate.compile_forward(model, model.config.block_size, 8)
            cache[directory, dtype] = (
                model,
                generate.compile_prefill(model),
                generate.compile_decode(model),
                recompute,
            )
        return cache[directory, dtype]

    return get


def hf_model(directory, dtype):
    model = GPT2LMHeadModel.from_pretrained(directory, local_files_only=True).eval()
    model.generation_config.eos_token_id = None  # generate all the tokens, as example.py does
    return model.to(getattr(torch, dtype))


def hf_greedy(model, prompt, max_new_tokens):
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


GREEDY = Sampling(temperature=0.0, top_k=1)


def cached_greedy(prefill, decode, prompt, max_new_tokens):
    return [
        tokens[0]
        for tokens in generate.generate(
            generate.Compiled(prefill, decode), prompt, max_new_tokens, GREEDY, torch.Generator()
        )
    ]


def recomputed_greedy(forward, prompt, max_new_tokens):
    return [
        tokens[0]
        for tokens in generate.generate_without_cache(
            generate.Compiled(forward=forward), prompt, max_new_tokens, GREEDY, torch.Generator()
        )
    ]


def recomputed_logits(forward, tokens):
    return generate.forward_logits(forward, torch.tensor([tokens], dtype=torch.int32))


def cached_logits(prefill, decode, tokens, prompt_len):
    """Logits for every position from prompt_len - 1 on, feeding `tokens` through prefill and decode."""
    logits, cache = generate.prefill(prefill, tokens[:prompt_len])
    rows = [logits[0, -1].float().clone()]
    for token in tokens[prompt_len:]:
        logits, cache = generate.decode_one_token(decode, torch.tensor([token]), cache)
        rows.append(logits[0, -1].float().clone())
    return torch.stack(rows)


# --- the cache gives the same tokens and logits ---------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", ["odd", "eps"])
def test_cached_greedy_matches_recompute_and_transformers(parity_checkpoints, compiled, name, dtype):
    """Greedy tokens are identical three ways; logits along them agree within the dtype's tolerance. In
    bfloat16 transformers rounds differently enough to flip a near tie, so only the logits are compared
    with it there."""
    directory, _ = parity_checkpoints[name]
    _, prefill, decode, recompute = compiled(directory, dtype)
    reference = hf_model(directory, dtype)
    prompt = load_encoding(directory, is_directory=True).encode(PROMPT)
    max_new_tokens = 16

    ours = cached_greedy(prefill, decode, prompt, max_new_tokens)
    assert ours == recomputed_greedy(recompute, prompt, max_new_tokens)
    if dtype != "bfloat16":
        assert ours == hf_greedy(reference, prompt, max_new_tokens)

    tokens = prompt + ours
    with_cache = cached_logits(prefill, decode, tokens, len(prompt))
    without = recomputed_logits(recompute, tokens)[0, len(prompt) - 1 :].float()
    with torch.no_grad():
        theirs = reference(torch.tensor([tokens])).logits[0, len(prompt) - 1 :].float()
    assert (with_cache - without).abs().max().item() < LOGIT_TOLERANCE[dtype]
    assert (with_cache - theirs).abs().max().item() < LOGIT_TOLERANCE[dtype]


@pytest.fixture(scope="module")
def quant_checkpoint(tmp_path_factory):
    """A random GPT-2 wide enough for int4's 128-blocks, and calibration batches for it."""
    from quantization_fixtures import calibration_batches, tiny_gpt2

    directory = str(tmp_path_factory.mktemp("quant-gpt2"))
    tiny_gpt2(0).save_pretrained(directory)
    make_tiny_checkpoint.write_tokenizer(directory)  # 321 tokens, within the model's 384
    return directory, calibration_batches(384)


# Logits, max |difference|: with the cache vs without, and vs transformers on ModelOpt's fake-quantized
# model in float32 (measured at most a few 1e-6 in fp32, 2e-3 in fp16). float8 also quantizes
# activations: a sum that rounds differently (a batched or a one-token matmul) can flip an fp8 code,
# which moves a logit by up to about 1e-2 (measured 6e-3), and fp16 activations round into fp8
# differently from transformers' fp32 ones (measured 7e-2). In bfloat16, measured: 1.5e-5 with the cache
# vs without (3e-2 in float8), 1.3e-2 vs transformers (8e-2 in float8).
QUANT_TOLERANCE = {
    ("float32", False): 1e-4,
    ("float32", True): 2e-2,
    ("float16", False): 2e-2,
    ("float16", True): 2e-2,
    ("bfloat16", False): 2e-2,
    ("bfloat16", True): 1e-1,
}
QUANT_TOLERANCE_VS_TRANSFORMERS = {
    "float32": 1e-4,
    "float16": 2e-2,
    ("float16", "float8"): 0.1,
    "bfloat16": 5e-2,
    ("bfloat16", "float8"): 0.2,
}


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("quant_mode", list(QUANT_MODES))
def test_quantized_cached_greedy_matches_recompute_and_transformers(quant_checkpoint, quant_mode, dtype):
    from quantization_fixtures import tiny_gpt2

    directory, calibration = quant_checkpoint
    quant = quantization.Quantization(QUANT_MODES[quant_mode], calibration)
    model = weight_loader.load_model(open_checkpoint(directory), DTYPES[dtype], quant)
    prefill, decode = generate.compile_prefill(model), generate.compile_decode(model)
    recompute = generate.compile_forward(model, model.config.block_size, 8)
    reference = tiny_gpt2(0)
    quantization.modelopt_quantize(reference, quant.mode, calibration.batches)
    reference.generation_config.eos_token_id = None
    prompt, max_new_tokens = [5, 17, 99, 3], 16

    ours = cached_greedy(prefill, decode, prompt, max_new_tokens)
    assert ours == recomputed_greedy(recompute, prompt, max_new_tokens)
    if dtype == "float32":  # transformers' fake quantization runs in float32 only
        assert ours == hf_greedy(reference, prompt, max_new_tokens)

    tokens = prompt + ours
    with_cache = cached_logits(prefill, decode, tokens, len(prompt))
    without = recomputed_logits(recompute, tokens)[0, len(prompt) - 1 :].float()
    with torch.no_grad():
        theirs = reference(torch.tensor([tokens])).logits[0, len(prompt) - 1 :]
    assert (with_cache - without).abs().max().item() < QUANT_TOLERANCE[dtype, quant_mode == "float8"]
    tolerance = QUANT_TOLERANCE_VS_TRANSFORMERS.get((dtype, quant_mode), QUANT_TOLERANCE_VS_TRANSFORMERS[dtype])
    assert (with_cache - theirs).abs().max().item() < tolerance


def test_sampling_with_the_cache_follows_the_seed(parity_checkpoints, compiled):
    directory, _ = parity_checkpoints["odd"]
    _, prefill, decode, recompute = compiled(directory, "float32")
    prompt = load_encoding(directory, is_directory=True).encode(PROMPT)

    def sample(seed, generate_tokens, functions):
        return [
            tokens[0]
            for tokens in generate_tokens(functions, prompt, 12, Sampling(0.9, 5), torch.Generator().manual_seed(seed))
        ]

    cached = (generate.generate, generate.Compiled(prefill, decode))
    recomputed = (generate.generate_without_cache, generate.Compiled(forward=recompute))
    assert sample(0, *cached) == sample(0, *cached) == sample(0, *recomputed)
    assert sample(1, *cached) != sample(0, *cached)


# --- the cache's boundaries -----------------------------------------------------------------------------


def test_a_prompt_of_one_token(parity_checkpoints, compiled):
    directory, _ = parity_checkpoints["eps"]
    _, prefill, decode, _ = compiled(directory, "float32")
    assert cached_greedy(prefill, decode, [7], 10) == hf_greedy(hf_model(directory, "float32"), [7], 10)


def test_prompt_and_new_tokens_fill_the_block_exactly(parity_checkpoints, compiled):
    directory, _ = parity_checkpoints["odd"]
    _, prefill, decode, _ = compiled(directory, "float32")
    block_size = 32
    prompt = load_encoding(directory, is_directory=True).encode(PROMPT)
    new = block_size - len(prompt)
    assert cached_greedy(prefill, decode, prompt, new) == hf_greedy(hf_model(directory, "float32"), prompt, new)


def test_decode_takes_a_cache_up_to_block_size_minus_one_and_no_more(parity_checkpoints, compiled):
    """A token at the last position (cache of block_size - 1) decodes as the recompute path does; one more is
    refused."""
    directory, _ = parity_checkpoints["odd"]
    _, prefill, decode, recompute = compiled(directory, "float32")
    tokens = torch.randint(0, 300, (33,), generator=torch.Generator().manual_seed(0)).tolist()
    _, cache = generate.prefill(prefill, tokens[:31])
    logits, cache = generate.decode_one_token(decode, torch.tensor([tokens[31]]), cache)
    expected = recomputed_logits(recompute, tokens[:32])[:, -1:]
    assert (logits - expected).abs().max().item() < 1e-4
    with pytest.raises(tp.TripyException, match="expected a shape within the bounds"):
        generate.decode_one_token(decode, torch.tensor([tokens[32]]), cache)


def test_one_token_past_the_block_is_a_usage_error_and_exactly_at_it_runs(parity_checkpoints, offline_env):
    directory, _ = parity_checkpoints["odd"]
    prompt_len = len(load_encoding(directory, is_directory=True).encode(PROMPT))
    env = dict(offline_env, OMP_NUM_THREADS="1")
    base = [sys.executable, os.path.join(REPO_ROOT, "example.py"), "--backend", BACKEND, "--checkpoint", directory]
    base += ["--input-text", PROMPT, "--temperature", "0", "--max-new-tokens"]
    past = subprocess.run(base + [str(32 - prompt_len + 1)], env=env, capture_output=True, text=True, timeout=300)
    assert past.returncode == 2 and past.stdout == ""
    assert past.stderr.strip().splitlines() == [
        f"error: the prompt ({prompt_len} tokens) plus --max-new-tokens {32 - prompt_len + 1} exceeds "
        "the model's block size of 32 tokens"
    ]
    exact = subprocess.run(base + [str(32 - prompt_len)], env=env, capture_output=True, text=True, timeout=300)
    assert exact.returncode == 0, exact.stderr
    assert f"({32 - prompt_len - 1} tokens after the first)" in exact.stdout


# --- several samples and the end of text ----------------------------------------------------------------


def test_a_batch_of_samples_is_each_samples_own_generation(parity_checkpoints, compiled):
    """Greedy: every sample of a batch of 3 is the batch-1 result, cached and recomputed. Sampled: the
    batch draws each sample's tokens from its own logits, so the samples differ and follow the seed."""
    directory, _ = parity_checkpoints["odd"]
    model, prefill, decode, _ = compiled(directory, "float32")
    batch_functions = generate.Compiled(generate.compile_prefill(model, 3), generate.compile_decode(model, 3))
    recompute = generate.compile_forward(model, model.config.block_size, 8, batch_size=3)
    prompt = load_encoding(directory, is_directory=True).encode(PROMPT)
    one = cached_greedy(prefill, decode, prompt, 10)
    for generate_tokens, functions in (
        (generate.generate, batch_functions),
        (generate.generate_without_cache, generate.Compiled(forward=recompute)),
    ):
        steps = list(generate_tokens(functions, prompt, 10, GREEDY, torch.Generator(), num_samples=3))
        assert [list(step) for step in zip(*steps)] == [one] * 3

    def sampled(seed):
        steps = generate.generate(
            batch_functions, prompt, 10, Sampling(1.0, 50), torch.Generator().manual_seed(seed), num_samples=3
        )
        return [list(sample) for sample in zip(*steps)]

    assert sampled(0) == sampled(0) and len({tuple(s) for s in sampled(0)}) > 1


def test_a_sample_ends_at_the_end_of_text_token_which_is_not_yielded(parity_checkpoints, compiled):
    directory, _ = parity_checkpoints["odd"]
    _, prefill, decode, recompute = compiled(directory, "float32")
    prompt = load_encoding(directory, is_directory=True).encode(PROMPT)
    tokens = cached_greedy(prefill, decode, prompt, 10)
    eos = tokens[3]  # greedy draws it fourth: three tokens, then the end
    for generate_tokens, functions in (
        (generate.generate, generate.Compiled(prefill, decode)),
        (generate.generate_without_cache, generate.Compiled(forward=recompute)),
    ):
        steps = list(generate_tokens(functions, prompt, 10, GREEDY, torch.Generator(), eos_token_id=eos))
        assert steps == [[t] for t in tokens[:3]] + [[None]]


@pytest.mark.skipif(
    BACKEND != "cpu", reason="a TensorRT engine cannot be asked what it holds; model.weight_bytes counts"
)
def test_the_reported_weight_bytes_are_what_the_decode_program_holds(quant_checkpoint):
    """The speed report's weight bytes are the constants of the compiled decode step, counted by the
    executor: quantized weights at their codes' size, so int8 reads at most half float32's linear weights
    and int4, half a byte a weight and its scales, at most 0.15 of them (the embeddings, read whole by no
    step, are the same in every mode)."""
    import torch_executor

    directory, calibration = quant_checkpoint
    checkpoint = open_checkpoint(directory)
    reported = {}
    for mode in (None, *QUANT_MODES):
        quant = quantization.Quantization(QUANT_MODES[mode], calibration) if mode else None
        compiled = generate.compile_with_cache(weight_loader.load_model(checkpoint, tp.float32, quant))
        assert compiled.weight_bytes == torch_executor.weight_bytes(compiled.decode)
        reported[mode] = compiled.weight_bytes
    embeddings = sum(
        4 * v.numel()
        for k, v in GPT2LMHeadModel.from_pretrained(directory).state_dict().items()
        if ".wte" in k or ".wpe" in k
    )
    linear = {mode: size - embeddings for mode, size in reported.items()}
    assert linear["int8-weight-only"] <= 0.5 * linear[None]
    assert linear["int4-weight-only"] <= 0.15 * linear[None]
    assert linear["float8"] <= 0.5 * linear[None] + embeddings / 4  # and lm_head, untied from wte, in 1 byte a weight
