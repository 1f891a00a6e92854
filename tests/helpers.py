"""Shared test code: the backend this session runs on, the checkpoints the tests build, and where
tiktoken's gpt2 encoding is cached. Tests import it as `helpers`; conftest.py holds only fixtures."""

import hashlib
import os
import signal
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

import backend  # noqa: E402
import make_tiny_checkpoint  # noqa: E402

# The backend the tests run on: TRIPY_EXAMPLE_BACKEND (auto, tensorrt or cpu), chosen before anything imports nvtripy.
BACKEND = backend.select_backend(os.environ.get("TRIPY_EXAMPLE_BACKEND", "auto")).name

SHARED_TIKTOKEN_CACHE = os.path.join(REPO_ROOT, "..", "shared", "tiktoken-cache")
# tiktoken's gpt2 encoding in a tiktoken cache: file name (the sha1 of its download URL) -> sha256 of its
# content: vocab.bpe, then encoder.json.
GPT2_TIKTOKEN_FILES = {
    "6d1cbeee0f20b3d9449abfede4726ed8212e3aee": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}

# Random GPT-2s for parity with transformers: layer and head counts vary, "odd" has a head size of 7,
# "gpt2-vocab" has GPT-2's vocabulary of 50257, and "eps" a layer_norm_epsilon other than 1e-5.
PARITY_CONFIGS = {
    "gpt2-vocab": dict(num_layers=2, num_heads=2, embedding_size=32, block_size=64, vocab_size=50257),
    "odd": dict(num_layers=3, num_heads=3, embedding_size=21, block_size=32),
    "eps": dict(num_layers=1, num_heads=8, embedding_size=64, block_size=48, layer_norm_epsilon=1e-3),
}


def write_random_checkpoint(directory, seed=0, layer_norm_epsilon=1e-5, **shape):
    """A random GPT-2 checkpoint with the tiny tokenizer. Its weights are scaled like a trained model's
    (unit-variance projections, layer norms off 1 and 0, logits of a few units) rather than
    transformers' small init, so that a wrong GELU or epsilon shows in the logits. Returns the HF model."""
    model = make_tiny_checkpoint.make_checkpoint(directory, seed=seed, layer_norm_epsilon=layer_norm_epsilon, **shape)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                param.mul_(torch.exp(0.3 * torch.randn(param.shape, generator=generator)))
            elif name.endswith("bias"):
                param.normal_(0.0, 0.1, generator=generator)
            elif "wte" in name:
                param.normal_(0.0, 0.15, generator=generator)
            elif "wpe" in name:
                param.normal_(0.0, 0.5, generator=generator)
            else:  # Conv1D weights, stored (in, out)
                param.normal_(0.0, param.shape[0] ** -0.5, generator=generator)
    model.save_pretrained(directory)
    return model.eval()


def default_sigint():
    """For subprocess's preexec_fn: a child the test interrupts gets SIGINT's default action back. A job
    started in the background (`cmd &` in a script) inherits SIGINT ignored, and Python then never
    installs its KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def holds_gpt2_encoding(cache):
    """Whether a tiktoken cache directory holds the gpt2 encoding intact: tiktoken downloads whatever it lacks."""
    for name, sha256 in GPT2_TIKTOKEN_FILES.items():
        try:
            with open(os.path.join(cache, name), "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != sha256:
                    return False
        except OSError:
            return False
    return True


def find_gpt2_tiktoken_cache():
    """The user's TIKTOKEN_CACHE_DIR if it holds the gpt2 encoding, else the shared cache beside the repository
    if that does, else None."""
    candidates = [os.environ.get("TIKTOKEN_CACHE_DIR"), SHARED_TIKTOKEN_CACHE]
    return next((cache for cache in candidates if cache and holds_gpt2_encoding(cache)), None)


# Random GPT-2s to quantize: every row of a weight holds several of int4's 128-input blocks (n = 256:
# two per row of c_attn, eight of mlp.c_proj; n = 384: three), few layers, a small vocabulary.
QUANT_CONFIGS = {
    "quant-256": dict(num_layers=2, num_heads=4, embedding_size=256, block_size=64),
    "quant-384": dict(num_layers=1, num_heads=6, embedding_size=384, block_size=48, vocab_size=400),
}
