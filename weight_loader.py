"""Copies a GPT-2 checkpoint's weights into model.GPT, key for key, quantized with ModelOpt if asked.

The checkpoint is read by checkpoint.py (transformers underneath); its config gives the model's shape,
so any GPT-2-architecture checkpoint works. `load_model` builds the GPT and fills it: as the
checkpoint stores it, or first quantized and calibrated by ModelOpt (quantization.py), with the
weights and scales loaded into a quantized GPT.
"""

import dataclasses
import time

import nvtripy as tp
import torch

import quantization
from checkpoint import check_weights, read_hf_model
from model import GPT, GPTConfig

# GPT-2 keeps these four in Conv1D layers, stored (in, out); tp.Linear stores (out, in).
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TORCH_DTYPES = {tp.float32: torch.float32, tp.float16: torch.float16, tp.bfloat16: torch.bfloat16}


def gpt_config(checkpoint, dtype=tp.float32, quant_mode=None):
    """Our GPTConfig from the checkpoint's transformers config."""
    hf_config = checkpoint.hf_config
    return GPTConfig(
        block_size=hf_config.n_positions,
        vocab_size=hf_config.vocab_size,
        num_layers=hf_config.n_layer,
        num_heads=hf_config.n_head,
        embedding_size=hf_config.n_embd,
        bias=True,
        layer_norm_epsilon=hf_config.layer_norm_epsilon,
        dtype=dtype,
        quant_mode=quant_mode,
    )


def load_model(checkpoint, dtype, quant=None, progress=True):
    """The GPT with the checkpoint's weights in `dtype`, quantized as `quant` (a quantization.Quantization)
    says, or not at all. Returns it and the seconds calibration took (None when not quantized)."""
    model = GPT(gpt_config(checkpoint, dtype, quant.mode if quant else None))
    if quant is None:
        load_weights(model, checkpoint)
        return model, None
    return model, load_quantized_weights(model, checkpoint, quant.calibration, progress)


def expected_shapes(model):
    return {key: tuple(map(int, param.shape)) for key, param in model.state_dict().items()}


def load_weights(model, checkpoint):
    """Copies the checkpoint's weights into `model` (a model.GPT), converted to its dtype."""
    hf_model, info = read_hf_model(checkpoint, TORCH_DTYPES[model.config.dtype])
    hf_state = hf_model.state_dict()
    del hf_model
    check_weights(checkpoint.source, expected_shapes(model), hf_state, info, TRANSPOSED)
    tied = lm_head_is_embedding(hf_state)

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


def lm_head_is_embedding(state):
    """Whether lm_head computes with the token embedding (weight tying): the same tensor, or an equal one.

    Asked of the weights, not of config.json's tie_word_embeddings: transformers computes with a
    checkpoint's own lm_head.weight when it differs from wte, whatever that flag says.
    """
    lm_head, wte = state["lm_head.weight"], state["transformer.wte.weight"]
    return lm_head is wte or torch.equal(lm_head, wte)


def load_quantized_weights(model, checkpoint, calibration, progress=True):
    """Quantizes the checkpoint with ModelOpt as `model` (a model.GPT) says, and loads the result into
    it, converted to its dtype. Returns the seconds calibration took.

    `calibration` is quantization.CalibrationData. ModelOpt runs on transformers' model in float32,
    whatever the model's dtype is: scales come from full-precision activations.
    quantization.tripy_quantized_state_dict turns its calibrated amax into scales laid out as
    model.linear_layer's layers take them, with AWQ's pre_quant_scales folded into LayerNorms or kept
    as parameters. The checkpoint is checked as load_weights_from_hf checks it, and the converted
    tensors against the quantized model, each with one message naming every bad key.
    """
    mode = model.config.quant_mode
    hf_model, info = read_hf_model(checkpoint, torch.float32)
    unquantized = GPT(dataclasses.replace(model.config, quant_mode=None))  # shapes only: nothing is allocated
    check_weights(checkpoint.source, expected_shapes(unquantized), hf_model.state_dict(), info, TRANSPOSED)

    start = time.perf_counter()
    quantization.modelopt_quantize(hf_model, mode, calibration.batches, progress=progress)
    seconds = time.perf_counter() - start
    state = quantization.tripy_quantized_state_dict(hf_model, mode)
    del hf_model
    expected = expected_shapes(model)
    state = {key: value for key, value in state.items() if not key.endswith((".attn.bias", ".attn.masked_bias"))}
    check_weights(checkpoint.source, expected, state)

    # The lm_head that ModelOpt's model computes with: the token embedding itself, as in load_weights, or
    # the checkpoint's own, or (float8) ModelOpt's fake-quantized copy, loaded on its own.
    tied = "lm_head.weight_scale" not in state and lm_head_is_embedding(state)
    if tied:
        del state["lm_head.weight"]
    tp_state = {key: tp.Tensor(value.to(TORCH_DTYPES[model.config.dtype]).contiguous()) for key, value in state.items()}
    if tied:
        tp_state["lm_head.weight"] = tp_state["transformer.wte.weight"]
    model.load_state_dict(tp_state)
    return seconds
