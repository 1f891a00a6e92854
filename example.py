"""Completes a prompt with GPT-2 running on nvtripy, after the nanoGPT example that ships with Tripy.

    python example.py --input-text "What is the answer to life, the universe, and everything?" --seed 0
    python example.py --checkpoint checkpoints/tiny-gpt2 --input-text "Hello, my name is" --seed 0

The model is compiled once, with a dynamic sequence dimension, and called once per new token on the
whole sequence so far. Sampling (top-k, temperature) runs in PyTorch with a seeded generator.
"""

import argparse
import contextlib
import io
import os
import sys
import time

import torch

import backend
from tokenizer import TokenizerError, load_encoding

QUANT_MODES = ("int8-weight-only", "int4-weight-only", "float8")


class UsageError(Exception):
    """Bad input from the user: reported as one line on stderr, with exit status 2."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Completes a prompt with GPT-2 running on nvtripy.")
    parser.add_argument("--input-text", required=True, help="the prompt to complete")
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
    parser.add_argument("--max-new-tokens", type=int, default=10, help="tokens to generate (default: %(default)s)")
    parser.add_argument("--seed", type=int, help="seeds sampling, for reproducible output (default: random)")
    parser.add_argument(
        "--temperature", type=float, default=0.8, help="sampling temperature; 0 means greedy (default: %(default)s)"
    )
    parser.add_argument("--top-k", type=int, default=5, help="sample among the k likeliest tokens (default: %(default)s)")
    parser.add_argument("--quant-mode", choices=QUANT_MODES, help="ModelOpt quantization of the linear layers")
    parser.add_argument(
        "--backend",
        choices=backend.CHOICES,
        default="auto",
        help="auto: TensorRT when it and a GPU are present, else the PyTorch executor on the CPU (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.quant_mode is not None:
        raise UsageError(f"--quant-mode {args.quant_mode} is not implemented yet")
    if args.input_text == "":
        raise UsageError("--input-text is empty: give a prompt to complete")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, not {args.max_new_tokens}")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {args.top_k}")
    if not args.temperature >= 0:  # also rejects nan
        raise UsageError(f"--temperature must be 0 (greedy) or positive, not {args.temperature}")
    if args.checkpoint is not None and not os.path.isdir(args.checkpoint):
        raise UsageError(f"--checkpoint {args.checkpoint}: no such directory")
    return args


def load_model(source, dtype, seq_len):
    """GPT for the checkpoint `source` (Hub id or directory), with weights, ready for tp.compile."""
    import weight_loader
    from model import GPT

    hf_config = weight_loader.load_hf_config(source)
    model = GPT(weight_loader.gpt_config_from_hf(hf_config, seq_len=seq_len, dtype=dtype))
    weight_loader.load_weights_from_hf(model, source, dtype)
    return model


def compile_model(model, prompt_len):
    """Compiles once for every sequence length from 1 up to the model's seq_len, tuned for the prompt's."""
    import nvtripy as tp

    seq_len = tp.NamedDimension("seq_len", 1, prompt_len, model.config.seq_len)
    return tp.compile(model, args=[tp.InputInfo((model.config.batch_size, seq_len), dtype=tp.int32)])


def logits_function(compiled_model):
    """Wraps the compiled model as token ids (torch, int32) -> logits (torch)."""
    import nvtripy as tp

    def logits(idx):
        # A compiled function takes device tensors: a CPU tensor is copied over first.
        tp_idx = tp.Tensor(idx) if idx.is_cuda else tp.copy(tp.Tensor(idx), tp.device("gpu"))
        return torch.from_dlpack(compiled_model(tp_idx))

    return logits


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


def generate(logits, prompt, max_new_tokens, temperature, top_k, generator, vocab_size=None):
    """Yields new token ids one at a time, each from the logits of the whole sequence so far.

    A model's vocabulary may be padded beyond its tokenizer's; ids from vocab_size on are never chosen.
    """
    idx = torch.tensor([prompt], dtype=torch.int32, device=generator.device)
    for _ in range(max_new_tokens):
        idx_next = sample(logits(idx)[..., :vocab_size], temperature, top_k, generator)
        idx = torch.cat((idx, idx_next.to(torch.int32)), dim=1)
        yield int(idx_next[0, 0])


def prepare(args):
    """Checks the checkpoint's config, its tokenizer and the prompt, before any weights are read."""
    import weight_loader

    source = args.checkpoint or args.model_type
    hf_config = weight_loader.load_hf_config(source)
    encoding = load_encoding(source, is_directory=args.checkpoint is not None or weight_loader.is_local(source))
    if encoding.n_vocab > hf_config.vocab_size:
        raise UsageError(
            f"the tokenizer of '{source}' ({encoding.name}) has {encoding.n_vocab} tokens, "
            f"more than the model's vocabulary of {hf_config.vocab_size}"
        )
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
    try:
        source, encoding, prompt = prepare(args)
        model = load_model(source, dtype, seq_len=len(prompt) + args.max_new_tokens)
    except weight_loader.HubUnavailable as exc:
        raise UsageError(f"{exc}; pass --checkpoint DIR with a local copy of the model") from None
    except weight_loader.CheckpointError as exc:
        raise UsageError(str(exc)) from None
    sys.stderr.write(announcement.getvalue())

    start = time.perf_counter()
    compiled_model = compile_model(model, len(prompt))
    print(f"Compilation took {time.perf_counter() - start:.2f} seconds.", flush=True)

    # Sampling runs where the logits are: on the GPU with TensorRT, as in Tripy's example, so its
    # published outputs reproduce; on the CPU otherwise.
    generator = torch.Generator(device="cuda" if backend_name == "tensorrt" else "cpu")
    if args.seed is not None:
        generator.manual_seed(args.seed)
    else:
        generator.seed()

    tokens = list(prompt)
    new_tokens = generate(
        logits_function(compiled_model), prompt, args.max_new_tokens, args.temperature, args.top_k, generator, encoding.n_vocab
    )
    start = time.perf_counter()
    try:
        for token in new_tokens:
            tokens.append(token)
    except KeyboardInterrupt:
        print(f"Interrupted after {len(tokens) - len(prompt)} of {args.max_new_tokens} new tokens.", file=sys.stderr)
        print(f"Response: {encoding.decode(tokens)}", flush=True)
        return 130
    print(f"Generating {len(tokens) - len(prompt)} tokens took {time.perf_counter() - start:.2f} seconds.")
    print(f"Response: {encoding.decode(tokens)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (UsageError, backend.BackendError, TokenizerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
