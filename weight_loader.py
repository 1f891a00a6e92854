"""Reads a GPT-2 checkpoint with transformers and copies its weights into model.GPT, key for key.

A checkpoint is a Hugging Face Hub id (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, ...) or a
local directory in transformers' format (config.json plus model.safetensors or pytorch_model.bin).
transformers does the reading: safetensors, or torch.load with weights_only=True; nothing is unpickled.
The model's shape comes from the checkpoint's own config.json, so any GPT-2-architecture checkpoint works.
load_quant_weights_from_hf first quantizes the checkpoint with ModelOpt (quantization.py), calibrating
on text, and loads weights and scales into a quantized model.GPT.

Import this only after `backend.select_backend(...)`: it imports nvtripy.
"""

import contextlib
import dataclasses
import os
import sys
import time
import warnings

import nvtripy as tp
import torch
import transformers
from transformers import AutoConfig, GPT2LMHeadModel

from model import GPTConfig

# GPT-2 keeps these four in Conv1D layers, stored (in, out); tp.Linear stores (out, in).
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TORCH_DTYPES = {tp.float32: torch.float32, tp.float16: torch.float16, tp.bfloat16: torch.bfloat16}


class CheckpointError(Exception):
    """A checkpoint that cannot be used. The message is one line, meant for the user."""


class HubUnavailable(CheckpointError):
    """A Hub id that is neither in the local cache nor downloadable (offline, or no such repository)."""


def _quiet_transformers():
    # Missing, extra and mis-shaped weights are reported by this module, in one message;
    # transformers' own warnings, hub retries and progress bars would only repeat them.
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import huggingface_hub

        huggingface_hub.utils.logging.set_verbosity_error()
        huggingface_hub.utils.disable_progress_bars()
    except ImportError:
        pass


def is_local(model_type):
    """A directory, or a name only a path can have, is a checkpoint directory; else it is a Hub id (name or org/name)."""
    return os.path.isdir(model_type) or model_type.startswith((".", "/", "~")) or model_type.count("/") > 1


def _from_pretrained(cls, model_type, **kwargs):
    """cls.from_pretrained, trying the local Hub cache before the network (offline runs fail fast)."""
    _quiet_transformers()
    if is_local(model_type):
        if not os.path.isdir(model_type):
            raise CheckpointError(f"checkpoint directory '{model_type}' does not exist")
        if not os.path.isfile(os.path.join(model_type, "config.json")):
            raise CheckpointError(f"'{model_type}' is not a checkpoint directory: it has no config.json")
        return cls.from_pretrained(model_type, **kwargs)
    try:
        return cls.from_pretrained(model_type, local_files_only=True, **kwargs)
    except OSError:
        pass
    try:
        return cls.from_pretrained(model_type, **kwargs)
    except OSError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HubUnavailable(
            f"cannot fetch '{model_type}' from the Hugging Face Hub and it is not in the local cache ({first_line})"
        ) from None


def load_hf_config(model_type):
    """The checkpoint's transformers GPT2Config, read from its config.json."""
    try:
        config = _from_pretrained(AutoConfig, model_type)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"'{model_type}' is not a GPT-2 checkpoint: {_one_line(exc)}") from None
    if config.model_type != "gpt2":
        raise CheckpointError(f"'{model_type}' is not a GPT-2 checkpoint: its config.json says model_type '{config.model_type}'")
    unsupported = []
    if config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        unsupported.append(f"activation_function={config.activation_function}")
    if config.n_inner not in (None, 4 * config.n_embd):
        unsupported.append(f"n_inner={config.n_inner}")
    if not config.scale_attn_weights or config.scale_attn_by_inverse_layer_idx:
        unsupported.append("attention scaling other than 1/sqrt(head size)")
    if config.add_cross_attention:
        unsupported.append("add_cross_attention")
    if config.n_embd % config.n_head:
        unsupported.append(f"n_embd={config.n_embd} not divisible by n_head={config.n_head}")
    if unsupported:
        raise CheckpointError(f"'{model_type}' is a GPT-2 variant this model does not implement: {', '.join(unsupported)}")
    return config


def gpt_config_from_hf(hf_config, seq_len=None, batch_size=1, dtype=tp.float32, quant_mode=None):
    """Our GPTConfig from transformers' GPT2Config."""
    return GPTConfig(
        block_size=hf_config.n_positions,
        vocab_size=hf_config.vocab_size,
        num_layers=hf_config.n_layer,
        num_heads=hf_config.n_head,
        embedding_size=hf_config.n_embd,
        bias=True,
        layer_norm_epsilon=hf_config.layer_norm_epsilon,
        batch_size=batch_size,
        seq_len=seq_len or hf_config.n_positions,
        dtype=dtype,
        quant_mode=quant_mode,
    )


def read_hf_model(model_type, torch_dtype):
    """transformers' GPT2LMHeadModel for the checkpoint, and its loading info (missing, extra and
    mis-shaped keys, which `check_weights` reports). An unreadable checkpoint is a CheckpointError."""
    # transformers maps the file into memory and converts each tensor to `torch_dtype` as it reads it.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's notes on pickle protocols: the error says enough
            return _from_pretrained(
                GPT2LMHeadModel,
                model_type,
                dtype=torch_dtype,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported by check_weights, together with missing and extra keys
            )
    except HubUnavailable:
        raise
    except Exception as exc:  # unreadable files: truncated or garbled safetensors, a broken .bin, ...
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"cannot read the weights of '{model_type}': its .bin file holds more than tensors, "
                "and it is loaded with weights_only=True, never unpickled"
            ) from None
        raise CheckpointError(f"cannot read the weights of '{model_type}': {_one_line(exc)}") from None


def check_weights(model_type, expected, state, info=None, transposed=()):
    """Raises one CheckpointError naming every missing, extra and mis-shaped key, if there are any.

    `expected` is {key: shape} of the model to load, `state` the tensors to load into it, `info`
    transformers' loading info, and keys ending in `transposed` are stored (in, out) in `state`.
    """
    info = info or {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}
    missing = set(info["missing_keys"]) | (set(expected) - set(state))
    extra = set(info["unexpected_keys"]) | (set(state) - set(expected))
    # Older GPT-2 checkpoints also store each layer's causal mask; the model computes its own.
    extra = {key for key in extra if not key.endswith((".attn.bias", ".attn.masked_bias"))}
    misshaped = {key: (tuple(ckpt), tuple(want)) for key, ckpt, want in info["mismatched_keys"]}
    for key, weight in state.items():  # shapes as `state` stores them: Conv1D weights are (in, out)
        if key not in expected or key in misshaped:
            continue
        want = expected[key][::-1] if key.endswith(transposed) else expected[key]
        if tuple(weight.shape) != want:
            misshaped[key] = (tuple(weight.shape), want)
    if missing or extra or misshaped:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(sorted(missing))}")
        if extra:
            problems.append(f"extra {', '.join(sorted(extra))}")
        if misshaped:
            problems.append(
                "mis-shaped " + ", ".join(f"{key} (checkpoint {have}, expected {want})" for key, (have, want) in sorted(misshaped.items()))
            )
        raise CheckpointError(f"the weights of '{model_type}' do not match its GPT-2 config: {'; '.join(problems)}")


def expected_shapes(model):
    return {key: tuple(map(int, param.shape)) for key, param in model.state_dict().items()}


def load_weights_from_hf(model, model_type, dtype):
    """Copies the checkpoint's weights into `model` (a model.GPT), converted to `dtype` (a tp.dtype)."""
    hf_model, info = read_hf_model(model_type, TORCH_DTYPES[dtype])
    tied = hf_model.config.tie_word_embeddings
    hf_state = hf_model.state_dict()
    del hf_model
    check_weights(model_type, expected_shapes(model), hf_state, info, TRANSPOSED)

    # Transposed copies are made one at a time, each source dropped as we go; other tensors are shared,
    # not copied. The peak is the mapped checkpoint plus the transposed copies: about 2x the fp32 size,
    # half of it clean page cache (benchmarks/loader_memory.py measures it).
    state = {}
    for key in list(hf_state):
        weight = hf_state.pop(key)
        if key == "lm_head.weight" and tied:
            continue
        if key.endswith(TRANSPOSED):
            weight = weight.t().contiguous()
        state[key] = tp.Tensor(weight)
    if tied:
        # See https://paperswithcode.com/method/weight-tying: the output projection is the token embedding.
        state["lm_head.weight"] = state["transformer.wte.weight"]
    model.load_state_dict(state)


def load_quant_weights_from_hf(model, model_type, dtype, quant_mode, calibration, progress=True):
    """Quantizes the checkpoint with ModelOpt and loads the result into `model` (a model.GPT built with
    this quant_mode), converted to `dtype`. Returns the seconds calibration took.

    `calibration` is quantization.CalibrationData (or a list of int64 token batches). ModelOpt runs on
    transformers' model in float32, whatever `dtype` is: scales come from full-precision activations.
    quantization.tripy_quantized_state_dict turns its calibrated amax into scales laid out as
    model.linear_layer's layers take them, with AWQ's pre_quant_scales folded into LayerNorms or kept
    as parameters. The checkpoint is checked as load_weights_from_hf checks it, and the converted
    tensors against the quantized model, each with one message naming every bad key.
    """
    import quantization
    from model import GPT

    if model.config.quant_mode != quant_mode:
        raise ValueError(f"the model was built for quant_mode {model.config.quant_mode!r}, not {quant_mode!r}")
    hf_model, info = read_hf_model(model_type, torch.float32)
    tied = hf_model.config.tie_word_embeddings
    unquantized = GPT(dataclasses.replace(model.config, quant_mode=None))  # shapes only: nothing is allocated
    check_weights(model_type, expected_shapes(unquantized), hf_model.state_dict(), info, TRANSPOSED)

    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # ModelOpt's notes, some printed as it is imported: stdout is for results
        quantization.modelopt_quantize(hf_model, quant_mode, calibration, progress=progress)
    seconds = time.perf_counter() - start
    state = quantization.tripy_quantized_state_dict(hf_model, quant_mode)
    del hf_model
    expected = expected_shapes(model)
    state = {key: value for key, value in state.items() if not key.endswith((".attn.bias", ".attn.masked_bias"))}
    check_weights(model_type, expected, state)

    tp_state = {key: tp.Tensor(value.to(TORCH_DTYPES[dtype]).contiguous()) for key, value in state.items()}
    if tied and "lm_head.weight_scale" not in tp_state:
        # An unquantized lm_head is the token embedding itself, as in load_weights_from_hf. A quantized
        # one (float8) holds ModelOpt's fake-quantized copy, so it is loaded on its own.
        tp_state["lm_head.weight"] = tp_state["transformer.wte.weight"]
    model.load_state_dict(tp_state)
    return seconds

def _one_line(exc):
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
