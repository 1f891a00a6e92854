"""Copies a GPT-2 checkpoint's weights into model.GPT, key for key, quantized with ModelOpt if asked.

The checkpoint is read by checkpoint.py (transformers underneath); its config gives the model's shape,
so any GPT-2-architecture checkpoint works. `load_model` reads the weights once, checks them against
the shapes the config promises, quantizes them if asked (quantization.py), and loads them into a GPT
built for them.
"""

import gc

import nvtripy as tp
import torch

import quantization
from checkpoint import check_weights, expected_hf_shapes, read_hf_model
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


def load_model(checkpoint, dtype, quant=None):
    """The GPT with the checkpoint's weights in `dtype`, quantized as `quant` (a quantization.Quantization)
    says, or not at all.

    Quantizing runs ModelOpt on transformers' model in float32, whatever the model's dtype is: scales
    come from full-precision activations. That model is thrown away before this returns, so what is
    compiled next holds only the weights it loads."""
    config = gpt_config(checkpoint, dtype, quant.mode if quant else None)
    hf_model, info = read_hf_model(checkpoint, torch.float32 if quant else TORCH_DTYPES[dtype])
    state = hf_model.state_dict()
    hf_config = checkpoint.hf_config
    expected = expected_hf_shapes(hf_config, range(hf_config.n_layer))  # as transformers stores them
    expected["lm_head.weight"] = (hf_config.vocab_size, hf_config.n_embd)
    check_weights(checkpoint.source, expected, state, info)
    if quant is not None:
        del state  # views of the checkpoint's mapped file, which quantizing releases
        state = quant.quantized_state_dict(hf_model)
    del hf_model
    model = GPT(config)
    model.load_state_dict(tripy_state(state, model, checkpoint.source))
    del state
    gc.collect()  # ModelOpt's quantized model holds reference cycles, which only a collection frees
    if quant is not None:
        quantization.hand_back_freed_heap()
    return model


def tripy_state(state, model, source):
    """The checkpoint's (or quantization's) tensors as nvtripy tensors for `model`, in its dtype and layout.

    Conv1D weights of an unquantized model are transposed to (out, in), one at a time, each source
    dropped as we go; other tensors are shared, not copied, where they have the model's dtype already.
    The peak is the mapped checkpoint plus the transposed copies: about 2x the fp32 size, half of it
    clean page cache (benchmarks/loader_memory.py measures it). Old checkpoints' causal-mask buffers
    (attn.bias, attn.masked_bias) are not weights and are left out.
    """
    expected = {key: tuple(map(int, param.shape)) for key, param in model.state_dict().items()}
    quantized = model.config.quant_mode is not None
    if quantized:  # quantization's own layout, checked against the layers that take it
        check_weights(source, expected, state)
    # The lm_head that transformers computes with: the token embedding itself (weight tying), or the
    # checkpoint's own; a quantized lm_head (with its own scales) is loaded on its own.
    tied = "lm_head.weight_scale" not in state and lm_head_is_embedding(state)
    torch_dtype = TORCH_DTYPES[model.config.dtype]
    tensors = {}
    for key in list(state):
        weight = state.pop(key)
        if key not in expected or (key == "lm_head.weight" and tied):  # not expected: a causal-mask buffer
            continue
        if key.endswith(TRANSPOSED) and not quantized:
            weight = weight.t()
        tensors[key] = tp.Tensor(weight.to(torch_dtype).contiguous())
    if tied:
        # See https://paperswithcode.com/method/weight-tying: the output projection is the token embedding.
        tensors["lm_head.weight"] = tensors["transformer.wte.weight"]
    return tensors


def lm_head_is_embedding(state):
    """Whether lm_head computes with the token embedding (weight tying): the same tensor, or an equal one.

    Asked of the weights, not of config.json's tie_word_embeddings: transformers computes with a
    checkpoint's own lm_head.weight when it differs from wte, whatever that flag says.
    """
    lm_head, wte = state["lm_head.weight"], state["transformer.wte.weight"]
    return lm_head is wte or torch.equal(lm_head, wte)
