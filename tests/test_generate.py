"""generate.py and engine_cache.py: KV-cache generation matches the recompute path and transformers,
at the cache's boundaries too; the text streams whole characters; the speed report; the engine cache
hits, misses on any key change, rebuilds corrupt entries and survives concurrent writers.

Everything runs on random tiny checkpoints, on whichever backend the session uses: the engine cache
goes through Executable.save and Executable.load, as it does for TensorRT. Quantized models are
checked in every quant mode, against the recompute path and ModelOpt's fake-quantized transformers model.
"""

import copy
import json
import os
import re
import subprocess
import sys
import types

import nvtripy as tp
import pytest
import torch
from conftest import BACKEND, REPO_ROOT
from safetensors.torch import load_file, save_file
from transformers import GPT2LMHeadModel

import engine_cache
import example
import generate
import quantization
from tokenizer import load_encoding

PROMPT = "Hello, my name is"
DTYPES = {"float32": tp.float32, "float16": tp.float16}
LOGIT_TOLERANCE = {"float32": 1e-4, "float16": 2e-2}  # max |logit difference|, as in test_model.py


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and on a loaded machine a second one mostly waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def compiled():
    """(checkpoint directory, dtype name) -> (model, compiled prefill, compiled decode, recompute logits fn),
    compiled once per module."""
    cache = {}

    def get(directory, dtype):
        if (directory, dtype) not in cache:
            model = example.load_model(directory, DTYPES[dtype], seq_len=None)
            recompute = generate.forward_logits(generate.compile_forward(model, 8))
            cache[directory, dtype] = (model, generate.compile_prefill(model), generate.compile_decode(model), recompute)
        return cache[directory, dtype]

    return get


def hf_model(directory, dtype):
    model = GPT2LMHeadModel.from_pretrained(directory, local_files_only=True).eval()
    model.generation_config.eos_token_id = None  # generate all the tokens, as example.py does
    return model if dtype == "float32" else model.half()


def hf_greedy(model, prompt, max_new_tokens):
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


def cached_greedy(prefill, decode, prompt, max_new_tokens):
    return list(generate.generate(prefill, decode, prompt, max_new_tokens, 0.0, 1, torch.Generator()))


def cached_logits(prefill, decode, tokens, prompt_len):
    """Logits for every position from prompt_len - 1 on, feeding `tokens` through prefill and decode."""
    logits, cache = generate.prefill(prefill, tokens[:prompt_len])
    rows = [logits[0, -1].float().clone()]
    for token in tokens[prompt_len:]:
        logits, cache = generate.decode_one_token(decode, token, cache)
        rows.append(logits[0, -1].float().clone())
    return torch.stack(rows)


# --- the cache gives the same tokens and logits ---------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("name", ["odd", "eps"])
def test_cached_greedy_matches_recompute_and_transformers(parity_checkpoints, compiled, name, dtype):
    """Greedy tokens are identical three ways; logits along them agree within the dtype's tolerance."""
    directory, _ = parity_checkpoints[name]
    _, prefill, decode, recompute = compiled(directory, dtype)
    reference = hf_model(directory, dtype)
    prompt = load_encoding(directory, is_directory=True).encode(PROMPT)
    max_new_tokens = 16

    ours = cached_greedy(prefill, decode, prompt, max_new_tokens)
    assert ours == list(generate.generate_without_cache(recompute, prompt, max_new_tokens, 0.0, 1, torch.Generator()))
    assert ours == hf_greedy(reference, prompt, max_new_tokens)

    tokens = prompt + ours
    with_cache = cached_logits(prefill, decode, tokens, len(prompt))
    without = recompute(torch.tensor([tokens], dtype=torch.int32))[0, len(prompt) - 1 :].float()
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
    return directory, calibration_batches(384).batches


# Logits, max |difference|: with the cache vs without, and vs transformers on ModelOpt's fake-quantized
# model in float32 (measured at most a few 1e-6 in fp32, 2e-3 in fp16). float8 also quantizes
# activations: a sum that rounds differently (a batched or a one-token matmul) can flip an fp8 code,
# which moves a logit by up to about 1e-2 (measured 6e-3), and fp16 activations round into fp8
# differently from transformers' fp32 ones (measured 7e-2).
QUANT_TOLERANCE = {
    ("float32", False): 1e-4, ("float32", True): 2e-2, ("float16", False): 2e-2, ("float16", True): 2e-2,
}
QUANT_TOLERANCE_VS_TRANSFORMERS = {"float32": 1e-4, "float16": 2e-2, ("float16", "float8"): 0.1}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("quant_mode", quantization.QUANT_MODES)
def test_quantized_cached_greedy_matches_recompute_and_transformers(quant_checkpoint, quant_mode, dtype):
    import weight_loader
    from model import GPT
    from quantization_fixtures import tiny_gpt2

    directory, calibration = quant_checkpoint
    model = GPT(weight_loader.gpt_config_from_hf(weight_loader.load_hf_config(directory), dtype=DTYPES[dtype], quant_mode=quant_mode))
    weight_loader.load_quant_weights_from_hf(model, directory, DTYPES[dtype], quant_mode, calibration, progress=False)
    prefill, decode = generate.compile_prefill(model), generate.compile_decode(model)
    recompute = generate.forward_logits(generate.compile_forward(model, 8))
    reference = tiny_gpt2(0)
    quantization.modelopt_quantize(reference, quant_mode, calibration, progress=False)
    reference.generation_config.eos_token_id = None
    prompt, max_new_tokens = [5, 17, 99, 3], 16

    ours = cached_greedy(prefill, decode, prompt, max_new_tokens)
    assert ours == list(generate.generate_without_cache(recompute, prompt, max_new_tokens, 0.0, 1, torch.Generator()))
    if dtype == "float32":  # transformers' fake quantization runs in float32 only
        assert ours == hf_greedy(reference, prompt, max_new_tokens)

    tokens = prompt + ours
    with_cache = cached_logits(prefill, decode, tokens, len(prompt))
    without = recompute(torch.tensor([tokens], dtype=torch.int32))[0, len(prompt) - 1 :].float()
    with torch.no_grad():
        theirs = reference(torch.tensor([tokens])).logits[0, len(prompt) - 1 :]
    assert (with_cache - without).abs().max().item() < QUANT_TOLERANCE[dtype, quant_mode == "float8"]
    tolerance = QUANT_TOLERANCE_VS_TRANSFORMERS.get((dtype, quant_mode), QUANT_TOLERANCE_VS_TRANSFORMERS[dtype])
    assert (with_cache - theirs).abs().max().item() < tolerance


def test_sampling_with_the_cache_follows_the_seed(parity_checkpoints, compiled):
    directory, _ = parity_checkpoints["odd"]
    _, prefill, decode, recompute = compiled(directory, "float32")
    prompt = load_encoding(directory, is_directory=True).encode(PROMPT)

    def sample(seed, fn):
        return list(fn(prompt, 12, 0.9, 5, torch.Generator().manual_seed(seed)))

    cached = lambda *args: generate.generate(prefill, decode, *args)
    recomputed = lambda *args: generate.generate_without_cache(recompute, *args)
    assert sample(0, cached) == sample(0, cached) == sample(0, recomputed)
    assert sample(1, cached) != sample(0, cached)


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
    """A token at the last position (cache of block_size - 1) decodes as the recompute path does; one more is refused."""
    directory, _ = parity_checkpoints["odd"]
    _, prefill, decode, recompute = compiled(directory, "float32")
    tokens = torch.randint(0, 300, (33,), generator=torch.Generator().manual_seed(0)).tolist()
    _, cache = generate.prefill(prefill, tokens[:31])
    logits, cache = generate.decode_one_token(decode, tokens[31], cache)
    expected = recompute(torch.tensor([tokens[:32]], dtype=torch.int32))[:, -1:]
    assert (logits - expected).abs().max().item() < 1e-4
    with pytest.raises(tp.TripyException, match="expected a shape within the bounds"):
        generate.decode_one_token(decode, tokens[32], cache)


def test_one_token_past_the_block_is_a_usage_error_and_exactly_at_it_runs(parity_checkpoints, offline_env):
    directory, _ = parity_checkpoints["odd"]
    prompt_len = len(load_encoding(directory, is_directory=True).encode(PROMPT))
    env = dict(offline_env, OMP_NUM_THREADS="1")
    base = [sys.executable, os.path.join(REPO_ROOT, "example.py"), "--backend", BACKEND, "--checkpoint", directory]
    base += ["--input-text", PROMPT, "--temperature", "0", "--max-new-tokens"]
    past = subprocess.run(base + [str(32 - prompt_len + 1)], env=env, capture_output=True, text=True, timeout=300)
    assert past.returncode == 2 and past.stdout == ""
    assert past.stderr.strip().splitlines() == [
        f"error: the prompt ({prompt_len} tokens) plus --max-new-tokens {32 - prompt_len + 1} exceeds the model's block size of 32 tokens"
    ]
    exact = subprocess.run(base + [str(32 - prompt_len)], env=env, capture_output=True, text=True, timeout=300)
    assert exact.returncode == 0, exact.stderr
    assert f"({32 - prompt_len - 1} tokens after the first)" in exact.stdout


# --- streaming text -------------------------------------------------------------------------------------


def test_streamed_text_is_the_decoded_text_with_characters_whole(tiny_checkpoint):
    encoding = load_encoding(tiny_checkpoint, is_directory=True)
    text = "Héllo, wörld ✓ 😀 ∑"
    tokens = encoding.encode(text)
    assert any(len(encoding.decode_single_token_bytes(t).decode("utf-8", errors="replace")) != 1 for t in tokens)
    stream = generate.text_stream(encoding)
    pieces = [stream([t]) for t in tokens] + [stream([], final=True)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)  # no character was printed in halves

    # Any token sequence, valid UTF-8 or not, streams to what encoding.decode gives for the whole.
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        tokens = torch.randint(0, encoding.n_vocab, (12,), generator=generator).tolist()
        stream = generate.text_stream(encoding)
        assert "".join([stream([t]) for t in tokens] + [stream([], final=True)]) == encoding.decode(tokens)


# --- the speed report -----------------------------------------------------------------------------------


def test_speed_report_lines():
    lines = generate.speed_report(0.25, [10.0, 10.5, 11.0], 2_000_000_000)
    assert lines == [
        "Time to first token: 0.250 seconds.",
        "Decode: 2.00 tokens/s (2 tokens after the first).",
        "Weight bandwidth: 4.00 GB/s (2.000 GB of weights x 2.00 tokens/s).",
    ]
    with_peak = generate.speed_report(0.25, [10.0, 10.5, 11.0], 2_000_000_000, (4e12, "from its datasheet"))
    assert with_peak[-1].endswith(", 0.1% of the GPU's peak 4.00 TB/s (from its datasheet).")
    assert generate.speed_report(0.1, [3.0], 10)[1] == "Decode: no tokens after the first, so no decode speed to report."


def test_peak_bandwidth_from_the_device_properties_or_the_table(monkeypatch):
    h100 = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", memory_clock_rate=2619000, memory_bus_width=5120)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: h100)
    bandwidth, how = generate.peak_memory_bandwidth()
    assert round(bandwidth / 1e12, 2) == 3.35 and how == "from its memory clock and bus width"
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(name="NVIDIA H100 PCIe"))
    assert generate.peak_memory_bandwidth() == (2.0e12, "from its datasheet")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(name="Some GPU"))
    assert generate.peak_memory_bandwidth() == (None, None)


def test_weight_bytes_count_the_tied_embedding_once(parity_checkpoints, compiled):
    directory, reference = parity_checkpoints["eps"]
    model = compiled(directory, "float32")[0]
    assert generate.weight_bytes(model) == 4 * sum(p.numel() for p in reference.parameters())  # transformers ties them too


def test_weight_bytes_count_quantized_weights_at_their_quantized_size():
    from model import GPT, GPTConfig

    shape = dict(num_layers=2, num_heads=2, embedding_size=128, vocab_size=10, block_size=4)
    full, int8 = GPT(GPTConfig(**shape)), GPT(GPTConfig(**shape, quant_mode="int8-weight-only"))
    per_layer = 128 * (3 * 128) + 128 * 128 + 128 * (4 * 128) + (4 * 128) * 128  # the four linear weights
    scales = 3 * 128 + 128 + 4 * 128 + 128  # one float32 scale per output channel
    assert generate.weight_bytes(int8) == generate.weight_bytes(full) - 2 * (3 * per_layer - 4 * scales)


# --- the engine cache -----------------------------------------------------------------------------------


def load_or_compile(directory, cache_dir, dtype="float32"):
    return example.load_or_compile(directory, DTYPES[dtype], BACKEND, str(cache_dir))


@pytest.fixture(scope="module")
def cached_entry(tiny_checkpoint, tmp_path_factory):
    """An engine cache holding the tiny checkpoint's compiled functions: (cache dir, its first run's results)."""
    cache_dir = tmp_path_factory.mktemp("engine-cache")
    return cache_dir, load_or_compile(tiny_checkpoint, cache_dir)


def entries(cache_dir):
    return sorted(n for n in os.listdir(cache_dir) if not n.endswith(".json"))


def test_a_second_run_loads_what_the_first_saved(tiny_checkpoint, cached_entry):
    cache_dir, (prefill, decode, weight_bytes, how) = cached_entry
    assert re.fullmatch(r"Compilation took \d+\.\d+ seconds\. Saving it to the engine cache took \d+\.\d+ seconds\.", how)
    assert len(entries(cache_dir)) == 1
    loaded_prefill, loaded_decode, loaded_bytes, how = load_or_compile(tiny_checkpoint, cache_dir)
    assert re.fullmatch(r"Loaded the compiled model from the engine cache in \d+\.\d+ seconds\.", how)
    assert loaded_bytes == weight_bytes
    prompt = load_encoding(tiny_checkpoint, is_directory=True).encode(PROMPT)
    assert cached_greedy(loaded_prefill, loaded_decode, prompt, 20) == cached_greedy(prefill, decode, prompt, 20)


def test_the_command_line_reuses_the_engine_on_its_second_run(tiny_checkpoint, offline_env, tmp_path):
    command = [sys.executable, os.path.join(REPO_ROOT, "example.py"), "--backend", BACKEND, "--checkpoint", tiny_checkpoint]
    command += ["--input-text", PROMPT, "--seed", "0", "--engine-cache", "--engine-cache-dir", str(tmp_path / "engines")]
    env = dict(offline_env, OMP_NUM_THREADS="1")
    first, second = [subprocess.run(command, env=env, capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "Saving it to the engine cache took" in first.stdout
    assert "Loaded the compiled model from the engine cache in" in second.stdout
    response = lambda result: result.stdout.split("\n")[0]
    assert response(first) == response(second) and response(first).startswith(f"Response: {PROMPT}")


def test_checkpoint_files_are_identified_by_content(tiny_checkpoint, tmp_path, monkeypatch):
    """A directory's files are hashed once (then remembered by size, time and inode); a Hub cache's are
    named by their hashes already; tokenizer files are left out; with no weights yet there is no identity."""
    import huggingface_hub

    hashed = []
    monkeypatch.setattr(engine_cache, "sha256_of_file", lambda path: hashed.append(path) or f"sha256 of {os.path.basename(path)}")
    cache_dir = str(tmp_path / "engines")
    identity = engine_cache.checkpoint_identity(tiny_checkpoint, True, cache_dir)
    assert identity == {"config.json": "sha256 of config.json", "model.safetensors": "sha256 of model.safetensors"}
    assert engine_cache.checkpoint_identity(tiny_checkpoint, True, cache_dir) == identity and len(hashed) == 2

    hub = tmp_path / "hub"
    repo = hub / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    blob_names = {"config.json": "c" * 40, "model.safetensors": "5" * 64, "vocab.json": "d" * 40}
    for name, blob in blob_names.items():
        (repo / "blobs" / blob).write_bytes(open(os.path.join(tiny_checkpoint, name), "rb").read())
        (snapshot / name).symlink_to(f"../../blobs/{blob}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    assert engine_cache.checkpoint_identity("org/tiny", False, cache_dir) == {
        "config.json": "c" * 40,
        "model.safetensors": "5" * 64,
    }
    assert len(hashed) == 2  # nothing more was hashed
    (snapshot / "model.safetensors").unlink()
    assert engine_cache.checkpoint_identity("org/tiny", False, cache_dir) is None  # weights not downloaded yet
    assert engine_cache.checkpoint_identity("org/absent", False, cache_dir) is None


def base_parts(directory, cache_dir):
    import weight_loader

    config = weight_loader.gpt_config_from_hf(weight_loader.load_hf_config(directory))
    return engine_cache.key_parts(
        engine_cache.checkpoint_identity(directory, True, str(cache_dir)),
        tp.float32,
        None,
        generate.shape_bounds(config),
        config.batch_size,
        engine_cache.environment(BACKEND),
        engine_cache.source_digest(BACKEND),
    )


KEY_CHANGES = {
    "dtype": lambda p: p.update(dtype=str(tp.float16)),
    "quant mode": lambda p: p.update(quant_mode="int8-weight-only"),
    "quant settings": lambda p: p.update(quant_settings={"calibration_samples": 64}),
    "shape bounds": lambda p: p["shape_bounds"].update(prefill_tokens=[1, 64, 512]),
    "batch size": lambda p: p.update(batch_size=2),
    "nvtripy version": lambda p: p["environment"].update(nvtripy="0.1.8"),
    "TensorRT version": lambda p: p["environment"].update(tensorrt="10.99.0"),
    "GPU": lambda p: p["environment"].update(gpu="NVIDIA H200, compute capability 9.0"),
    "backend": lambda p: p["environment"].update(backend="tensorrt" if BACKEND == "cpu" else "cpu"),
    "program source": lambda p: p.update(source="0" * 64),
    "a checkpoint file": lambda p: p["checkpoint"].update({"model.safetensors": "0" * 64}),
}


@pytest.mark.parametrize("change", list(KEY_CHANGES))
def test_any_change_to_the_key_parts_misses(tiny_checkpoint, cached_entry, change):
    cache_dir, _ = cached_entry
    parts = base_parts(tiny_checkpoint, cache_dir)
    assert engine_cache.load(str(cache_dir), parts, ("prefill", "decode")) is not None  # the unchanged parts hit
    changed = copy.deepcopy(parts)
    KEY_CHANGES[change](changed)
    assert engine_cache.entry_key(changed) != engine_cache.entry_key(parts)
    assert engine_cache.load(str(cache_dir), changed, ("prefill", "decode")) is None


def test_changed_weights_and_another_dtype_compile_anew(tiny_checkpoint, cached_entry, tmp_path):
    cache_dir, _ = cached_entry
    checkpoint = str(tmp_path / "changed")
    os.makedirs(checkpoint)
    for name in os.listdir(tiny_checkpoint):
        with open(os.path.join(tiny_checkpoint, name), "rb") as src, open(os.path.join(checkpoint, name), "wb") as dst:
            dst.write(src.read())
    weights = load_file(os.path.join(checkpoint, "model.safetensors"))
    weights["transformer.ln_f.bias"] += 0.5
    save_file(weights, os.path.join(checkpoint, "model.safetensors"), metadata={"format": "pt"})
    assert load_or_compile(checkpoint, cache_dir)[3].startswith("Compilation took")
    assert load_or_compile(tiny_checkpoint, cache_dir, "float16")[3].startswith("Compilation took")
    assert load_or_compile(tiny_checkpoint, cache_dir)[3].startswith("Loaded the compiled model")


def _truncate(entry):
    path = os.path.join(entry, "decode.json")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _flip_a_byte(entry):
    """A change that still parses: only the recorded digest can tell."""
    path = os.path.join(entry, "prefill.json")
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle] = ord("A") if data[middle] != ord("A") else ord("B")
    open(path, "wb").write(bytes(data))


def _garble_the_record(entry):
    open(os.path.join(entry, "entry.json"), "w").write("{not json")


def _stale_record(entry):
    path = os.path.join(entry, "entry.json")
    record = json.load(open(path))
    record["parts"]["environment"]["nvtripy"] = "0.0.1"
    json.dump(record, open(path, "w"))


def _missing_file(entry):
    os.remove(os.path.join(entry, "decode.json"))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte, _garble_the_record, _stale_record, _missing_file])
def test_a_corrupt_or_stale_entry_is_rebuilt_with_a_warning(tiny_checkpoint, tmp_path, capfd, damage):
    # capfd, not capsys: nvtripy's compiler leaves sys.stderr replaced by a stream of its own on file descriptor 2.
    cache_dir = tmp_path / "engines"
    prefill, decode, _, _ = load_or_compile(tiny_checkpoint, cache_dir)
    [entry] = entries(cache_dir)
    damage(os.path.join(cache_dir, entry))
    capfd.readouterr()

    rebuilt_prefill, rebuilt_decode, _, how = load_or_compile(tiny_checkpoint, cache_dir)
    warning = capfd.readouterr().err
    assert how.startswith("Compilation took") and "Saving it to the engine cache" in how
    assert re.fullmatch(r"warning: the engine cache entry .* is unusable \(.*\); rebuilding it\n", warning), warning
    prompt = [5, 6, 7]
    assert cached_greedy(rebuilt_prefill, rebuilt_decode, prompt, 8) == cached_greedy(prefill, decode, prompt, 8)
    assert entries(cache_dir) == [entry]
    assert load_or_compile(tiny_checkpoint, cache_dir)[3].startswith("Loaded the compiled model")


WRITER = """
import os, sys, time
sys.path.insert(0, {root!r})
import backend
backend.select_backend({backend!r}, announce=False)
import nvtripy as tp
import example
# Start together once all have imported, so that all of them miss, compile and write.
open(os.path.join({barrier!r}, str(os.getpid())), "w").close()
while len(os.listdir({barrier!r})) < {writers} and time.time() < {deadline}:
    time.sleep(0.01)
print(example.load_or_compile({checkpoint!r}, tp.float32, {backend!r}, {cache_dir!r})[3])
"""


def test_concurrent_writers_leave_one_whole_entry(tiny_checkpoint, tmp_path):
    import time

    cache_dir, barrier = str(tmp_path / "engines"), tmp_path / "barrier"
    barrier.mkdir()
    script = WRITER.format(
        root=REPO_ROOT, backend=BACKEND, barrier=str(barrier), writers=3, deadline=time.time() + 120,
        checkpoint=tiny_checkpoint, cache_dir=cache_dir,
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    writers = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [writer.communicate(timeout=300) for writer in writers]
    assert all(writer.returncode == 0 for writer in writers), results
    assert all("warning" not in stderr for _, stderr in results), results
    assert all("Saving it to the engine cache" in stdout for stdout, _ in results), results  # all missed and wrote
    assert [n for n in os.listdir(cache_dir) if n.startswith(".") or "removing" in n] == []
    assert len(entries(cache_dir)) == 1
    assert load_or_compile(tiny_checkpoint, cache_dir)[3].startswith("Loaded the compiled model")
