"""GPT-2 as an nvtripy module, after nanoGPT's model.py and the nanoGPT example that ships with Tripy.

Module and parameter names follow transformers' GPT2LMHeadModel (transformer.h.0.attn.c_attn.weight,
..., lm_head.weight), so weight_loader.py copies a checkpoint key for key. The numerics follow it too.
With config.quant_mode set, linear_layer builds quantized layers instead, whose scales are parameters
too; weight_loader.load_model fills them from ModelOpt's calibration, and the model then computes what
ModelOpt's fake-quantized transformers model computes.
"""

import math
from dataclasses import dataclass
from typing import Optional

import nvtripy as tp

# The placeholder nvtripy's own modules (tp.Linear, tp.LayerNorm) use for a parameter that must be loaded.
from nvtripy.frontend.module.parameter import DefaultParameter

from quant_modes import PER_TENSOR, QuantMode


@dataclass
class GPTConfig:
    block_size: int = 1024  # positions the model knows (n_positions); prompt + generated tokens must fit
    vocab_size: int = 50257
    num_layers: int = 12
    num_heads: int = 12
    embedding_size: int = 768
    bias: bool = True
    layer_norm_epsilon: float = 1e-5
    dtype: tp.dtype = tp.float32
    quant_mode: Optional[QuantMode] = None  # a quantization.QUANT_MODES entry; None means full precision


class BlockQuantizedLinear(tp.Module):
    """Weight-only linear layer quantized in blocks of inputs, in AWQ's layout:
    y = (x * pre_quant_scale) @ dequantize(W) + b.

    AWQ quantizes blocks of consecutive inputs of each output. nvtripy's block-wise quantization blocks
    dim 0 of a 2-D weight, and tp.Linear keeps its weight as [out, in], so tp.Linear would block the
    output dim instead. Here the weight is [in, out] and its scales [in / block, out]: dim 0 is the input
    dim, and x @ W needs no transpose. pre_quant_scale [in] is AWQ's per-input-channel scale, for layers
    fed by no LayerNorm that could absorb it (quantization.tripy_quantized_state_dict folds the others).
    """

    def __init__(self, in_features, out_features, bias, dtype, mode, pre_quant_scale):
        super().__init__()
        self.dtype, self.quant_dtype = dtype, getattr(tp, mode.quant_dtype)
        self.weight = DefaultParameter((in_features, out_features), dtype=dtype)
        self.weight_scale = DefaultParameter((in_features // mode.block_size, out_features), dtype=dtype)
        self.bias = DefaultParameter((out_features,), dtype=dtype) if bias else None
        self.pre_quant_scale = DefaultParameter((in_features,), dtype=dtype) if pre_quant_scale else None

    def forward(self, x):
        if self.pre_quant_scale is not None:
            x = x * self.pre_quant_scale
        quantized = tp.quantize(self.weight, self.weight_scale, self.quant_dtype)
        out = x @ tp.dequantize(quantized, self.weight_scale, self.dtype)
        return out if self.bias is None else out + self.bias


def linear_layer(config, in_features, out_features, bias, fed_by_layer_norm=False, lm_head=False):
    """Builds every linear layer of the model, quantized as config.quant_mode describes.

    Which layers are quantized, and how, follows quantization.py (ModelOpt's configs): the four linear
    layers of every block in each mode; lm_head where the mode says so. Scales are the layer's parameters
    weight_scale (and input_scale, pre_quant_scale), named and shaped as tripy_quantized_state_dict
    makes them. A weight quantized per output channel or per tensor stays in tp.Linear's [out, in], its
    per-channel scales along dim 0; one quantized in blocks of inputs is a BlockQuantizedLinear, whose AWQ
    pre_quant_scale is a parameter only where no LayerNorm feeds the layer (`fed_by_layer_norm`).
    """
    mode, dtype = config.quant_mode, config.dtype
    if mode is None or (lm_head and not mode.quantizes_lm_head):
        return tp.Linear(in_features, out_features, bias=bias, dtype=dtype)
    if mode.weight_in_out:
        pre_quant_scale = mode.awq and not fed_by_layer_norm
        return BlockQuantizedLinear(in_features, out_features, bias, dtype, mode, pre_quant_scale)
    quant_dtype, per_channel_dim = getattr(tp, mode.quant_dtype), None if mode.granularity == PER_TENSOR else 0
    layer = tp.Linear(in_features, out_features, bias, dtype, quant_dtype=quant_dtype, weight_quant_dim=per_channel_dim)
    if mode.granularity == PER_TENSOR:
        layer.weight_scale = DefaultParameter((), dtype=dtype)  # tp.Linear leaves the shape open
    if not mode.quantizes_inputs:
        layer.input_scale = None  # weight-only: tp.Linear's optional input quantization is not a parameter here
    return layer


def gelu_new(x):
    """GPT-2's GELU, the tanh approximation ('gelu_new' in transformers); tp.gelu is the erf form."""
    return 0.5 * x * (1.0 + tp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def causal_mask(query_positions, key_positions):
    """True where a query must not attend: keys that come after the query's own position.

    Taking positions rather than a length lets queries start later than the keys (a KV cache).
    """
    return tp.unsqueeze(key_positions, 0) > tp.unsqueeze(query_positions, 1)


def attention(q, k, v, mask, head_size):
    """Scaled dot-product attention over (batch, heads, tokens, head_size) tensors; mask None attends everywhere."""
    att = (q @ tp.transpose(k, -2, -1)) * (1.0 / math.sqrt(head_size))
    if mask is not None:
        att = tp.masked_fill(att, mask, float("-inf"))
    att = tp.softmax(att, dim=-1)
    return att @ v


class CausalSelfAttention(tp.Module):
    def __init__(self, config):
        super().__init__()
        assert config.embedding_size % config.num_heads == 0
        self.num_heads = config.num_heads
        self.head_size = config.embedding_size // config.num_heads
        self.embedding_size = config.embedding_size
        # Query, key and value projections for all heads, in one matrix as GPT-2 stores them.
        self.c_attn = linear_layer(
            config, config.embedding_size, 3 * config.embedding_size, config.bias, fed_by_layer_norm=True
        )
        self.c_proj = linear_layer(config, config.embedding_size, config.embedding_size, config.bias)
        # Quantized models in half precision attend in float32: quantization already costs accuracy,
        # and scores, softmax and weighted sum cost little next to the linear layers. The KV cache
        # stays in the model's dtype.
        self.attention_dtype = tp.float32 if config.quant_mode is not None else config.dtype

    def split_heads(self, x):
        B, T = x.shape[0], x.shape[1]
        return tp.transpose(tp.reshape(x, (B, T, self.num_heads, self.head_size)), 1, 2)

    def forward(self, x, mask, past=None):
        """Attends from x's tokens to the cached ones (`past`, or None) and to themselves.

        Returns the output and the keys and values of all tokens so far, stacked as one
        (2, batch, heads, tokens, head_size) tensor: the layer's KV cache, one tensor to pass around.
        """
        B, T = x.shape[0], x.shape[1]
        q, k, v = tp.split(self.c_attn(x), 3, dim=2)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        kv = tp.stack([k, v])
        if past is not None:
            kv = tp.concatenate([past, kv], dim=3)
            k, v = kv[0], kv[1]
        if self.attention_dtype != x.dtype:
            q, k, v = (tp.cast(t, self.attention_dtype) for t in (q, k, v))
        y = tp.cast(attention(q, k, v, mask, self.head_size), x.dtype)
        y = tp.reshape(tp.transpose(y, 1, 2), (B, T, self.embedding_size))
        return self.c_proj(y), kv


class MLP(tp.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = linear_layer(
            config, config.embedding_size, 4 * config.embedding_size, config.bias, fed_by_layer_norm=True
        )
        self.c_proj = linear_layer(config, 4 * config.embedding_size, config.embedding_size, config.bias)

    def forward(self, x):
        return self.c_proj(gelu_new(self.c_fc(x)))


class Block(tp.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = tp.LayerNorm(config.embedding_size, dtype=config.dtype, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = tp.LayerNorm(config.embedding_size, dtype=config.dtype, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, mask, past=None):
        y, kv = self.attn(self.ln_1(x), mask, past)
        x = x + y
        x = x + self.mlp(self.ln_2(x))
        return x, kv


class Transformer(tp.Module):
    def __init__(self, config):
        super().__init__()
        self.wte = tp.Embedding(config.vocab_size, config.embedding_size, dtype=config.dtype)
        self.wpe = tp.Embedding(config.block_size, config.embedding_size, dtype=config.dtype)
        self.h = [Block(config) for _ in range(config.num_layers)]
        self.ln_f = tp.LayerNorm(config.embedding_size, dtype=config.dtype, eps=config.layer_norm_epsilon)

    def forward(self, idx, cache=None):
        """Hidden states of the tokens idx, and every layer's keys and values up to and including them.

        Without a cache, idx is a whole sequence and attends causally. With one (a list of each layer's
        keys and values of the tokens before), idx is one new token: it may attend to every key, so no mask.
        """
        if cache is None:
            positions = tp.arange(idx.shape[1], dtype=tp.int32)
            mask = causal_mask(positions, positions)
            cache = [None] * len(self.h)
        else:
            past = cache[0].shape[3]
            positions = tp.arange(past, past + 1, dtype=tp.int32)
            mask = None
        x = self.wte(idx) + self.wpe(positions)
        new_cache = []
        for block, past_kv in zip(self.h, cache):
            x, kv = block(x, mask, past_kv)
            new_cache.append(kv)
        return self.ln_f(x), new_cache


class GPT(tp.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        # GPT-2 ties this weight to transformer.wte.weight; the loader gives both the same tensor.
        self.lm_head = linear_layer(config, config.embedding_size, config.vocab_size, bias=False, lm_head=True)

    def forward(self, idx):
        """Logits of shape (batch, tokens, vocab) for int32 token ids of shape (batch, tokens).

        This recomputes the whole sequence for every new token (example.py --no-kv-cache);
        prefill and decode below are the KV-cache path.
        """
        x, _ = self.transformer(idx)
        return self.lm_head(x)

    def prefill(self, idx):
        """Reads a prompt (batch, tokens): the logits of its last token (batch, 1, vocab), then the KV
        cache, one (2, batch, heads, tokens, head_size) tensor per layer. Only the last token's logits
        are needed to sample, so lm_head, the largest matrix, runs on that one token."""
        x, cache = self.transformer(idx)
        return (self.lm_head(x[:, -1:, :]), *cache)

    def decode(self, idx, cache):
        """One new token (batch, 1) after the tokens in `cache` (a list as prefill returns it): its
        logits (batch, 1, vocab), then the cache grown by one token."""
        x, cache = self.transformer(idx, cache)
        return (self.lm_head(x), *cache)

    def weight_bytes(self):
        """Bytes of the weights as a TensorRT engine stores them, each counted once (the tied lm_head and
        wte are one tensor): what a decode step reads from memory. A quantized layer keeps its weight in
        the model's dtype and quantizes it in the traced graph; TensorRT folds that into a quantized
        constant, so those weights count at the quantized size. (The CPU executor is asked instead:
        generate.weight_bytes.)"""
        state, seen, total = self.state_dict(), set(), 0.0
        for key, weight in state.items():
            if id(weight) in seen:
                continue
            seen.add(id(weight))
            quantized = key.endswith(".weight") and f"{key[: -len('weight')]}weight_scale" in state
            itemsize = self.config.quant_mode.weight_bits / 8 if quantized else weight.dtype.itemsize
            total += math.prod(weight.shape) * itemsize
        return int(total)
