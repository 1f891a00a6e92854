"""Helpers for the quantization tests: tiny random GPT-2s, calibration batches, the math of Tripy/TensorRT's
quantize and dequantize in pure torch, and a GPT-2 forward that runs it on `tripy_quantized_state_dict`'s
tensors, to show that they reproduce ModelOpt's fake-quantized model."""

import math

import torch
import torch.nn.functional as F

import quantization as q


def tiny_gpt2(seed, n_embd=256, n_layer=2, n_head=4, vocab_size=384, n_positions=64):
    """A random transformers GPT-2, small enough to calibrate in seconds; rows hold two 128-blocks."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        vocab_size=vocab_size,
        n_positions=n_positions,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(config).eval()
    # Uneven per-channel magnitudes, like trained models have, so that AWQ's scales matter.
    with torch.no_grad():
        for block in model.transformer.h:
            for norm in (block.ln_1, block.ln_2):
                norm.weight.mul_(torch.exp(torch.randn_like(norm.weight) * 0.7))
                norm.bias.normal_(0.0, 0.05)
    return model


def byte_encode(vocab_size):
    """A tokenizer stand-in for tiny vocabularies: UTF-8 bytes, folded into the vocabulary."""
    return lambda text: [b % vocab_size for b in text.encode("utf-8")]


def calibration_batches(vocab_size, num_samples=4, max_length=48):
    """The first num_samples help topics, each cut to max_length byte tokens."""
    encode = byte_encode(vocab_size)
    samples = [encode(text)[:max_length] for text in q.load_calibration_texts()[:num_samples]]
    return q.make_calibration_batches(samples, batch_size=8)


# Saturation ranges of TensorRT's quantize (ModelOpt's integer quantizers use narrow_range=False,
# so they saturate to the same [-128, 127] and [-8, 7]).
QUANT_RANGE = {"int8-weight-only": (-128.0, 127.0), "int4-weight-only": (-8.0, 7.0), "float8": (-448.0, 448.0)}


def _broadcast_scale(scale, shape, dim):
    """Scalar: per tensor; 1-D: per channel along `dim`; 2-D [D0/B, D1]: blocks of B along dim 0."""
    if scale.dim() == 0:
        return scale
    if scale.dim() == 1:
        view = [1] * len(shape)
        view[dim] = scale.shape[0]
        return scale.reshape(view)
    return scale.repeat_interleave(shape[0] // scale.shape[0], dim=0)


def reference_quantize(x, scale, quant_mode, dim=None):
    """TensorRT quantize: x / scale, round half to even (integers), saturate; float8 casts to e4m3."""
    low, high = QUANT_RANGE[quant_mode]
    scaled = x.float() / _broadcast_scale(scale.float(), x.shape, dim)
    if quant_mode == "float8":
        return scaled.clamp(low, high).to(torch.float8_e4m3fn)
    return torch.round(scaled).clamp(low, high)  # torch.round rounds half to even


def reference_dequantize(q, scale, dim=None):
    """TensorRT dequantize: q * scale in float32."""
    return q.float() * _broadcast_scale(scale.float(), q.shape, dim)


def reference_fake_quantize(x, scale, quant_mode, dim=None):
    """dequantize(quantize(x))."""
    return reference_dequantize(reference_quantize(x, scale, quant_mode, dim), scale, dim)


def reference_quantized_linear(x, weight, bias, quant_mode, weight_scale, input_scale=None, pre_quant_scale=None):
    """A Tripy quantized linear layer on the tensors of `tripy_quantized_state_dict`, in pure torch.

    int8: x @ dq(q(W, dim 0)).T; int4: (x * pre_quant_scale) @ dq(q(W_[in,out], blocks)) (no
    transpose); float8: dq(q(x)) @ dq(q(W)).T. Then + bias.
    """
    if pre_quant_scale is not None:
        x = x * pre_quant_scale
    if input_scale is not None:
        x = reference_fake_quantize(x, input_scale, quant_mode)
    if quant_mode == "int8-weight-only":
        w = reference_fake_quantize(weight, weight_scale, quant_mode, dim=0).t()
    elif quant_mode == "int4-weight-only":
        w = reference_fake_quantize(weight, weight_scale, quant_mode)
    elif quant_mode == "float8":
        w = reference_fake_quantize(weight, weight_scale, quant_mode).t()
    else:
        raise ValueError(f"unknown quantization mode '{quant_mode}'")
    out = x @ w
    return out if bias is None else out + bias


def _linear(state, name, x, quant_mode, tie_probe=None):
    """A linear layer of the Tripy GPT: quantized when the state dict has scales for it."""
    weight, bias = state[f"{name}.weight"], state.get(f"{name}.bias")
    if f"{name}.weight_scale" not in state:
        out = x @ weight.t()
        return out if bias is None else out + bias
    if tie_probe is not None and f"{name}.input_scale" in state:
        tie_probe(name, x, state[f"{name}.input_scale"])
    return reference_quantized_linear(
        x,
        weight,
        bias,
        quant_mode,
        state[f"{name}.weight_scale"],
        input_scale=state.get(f"{name}.input_scale"),
        pre_quant_scale=state.get(f"{name}.pre_quant_scale"),
    )


def reference_gpt2_logits(state, config, quant_mode, ids, tie_probe=None):
    """GPT-2's forward on Tripy-layout tensors: what the quantized Tripy GPT computes, in torch.

    `tie_probe(name, x, input_scale)`, if given, sees every activation before it is quantized.
    """
    n_head, eps = config.n_head, config.layer_norm_epsilon
    batch, seq = ids.shape
    ln = lambda x, p: F.layer_norm(x, (x.shape[-1],), state[f"{p}.weight"], state[f"{p}.bias"], eps)
    h = state["transformer.wte.weight"][ids] + state["transformer.wpe.weight"][torch.arange(seq)]
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    for i in range(config.n_layer):
        p = f"transformer.h.{i}"
        qkv = _linear(state, f"{p}.attn.c_attn", ln(h, f"{p}.ln_1"), quant_mode, tie_probe)
        qh, kh, vh = (t.reshape(batch, seq, n_head, -1).transpose(1, 2) for t in qkv.split(config.n_embd, dim=-1))
        att = (qh @ kh.transpose(-1, -2)) / math.sqrt(qh.shape[-1])
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ vh).transpose(1, 2).reshape(batch, seq, config.n_embd)
        h = h + _linear(state, f"{p}.attn.c_proj", y, quant_mode, tie_probe)
        m = _linear(state, f"{p}.mlp.c_fc", ln(h, f"{p}.ln_2"), quant_mode, tie_probe)
        m = 0.5 * m * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (m + 0.044715 * torch.pow(m, 3.0))))
        h = h + _linear(state, f"{p}.mlp.c_proj", m, quant_mode, tie_probe)
    h = ln(h, "transformer.ln_f")
    return _linear(state, "lm_head", h, quant_mode, tie_probe)


def relative_max_error(actual, expected):
    """max |actual - expected| / max |expected|."""
    return ((actual - expected).abs().max() / expected.abs().max()).item()


class ActivationTieProbe:
    """Finds activations that Tripy's quantize and ModelOpt's quantize round to different codes.

    Tripy/TensorRT computes x / scale, ModelOpt x * (maxbound / amax), and the activations of the
    two forwards differ in the last bits (fp32 accumulation order; GELU's cancellation near zero
    magnifies that for small outputs). That decides the rounding only when an activation lies
    that close to a rounding midpoint (measured: 0 to 2 of ~300k fp8 activations per forward),
    but then the activation moves one quantization step, and through attention every later
    position of its sequence moves too. `modelopt_logits` runs ModelOpt's model and
    keeps each quantized input it used; the reference forward then calls the probe with its own
    activations. `first_tie[b]` is the earliest position of sequence b that a tie touches
    (seq_len when none); positions before it must agree to fp32 rounding. `ties` counts the
    flipped elements that start such a run (the ties themselves, not what follows them).
    """

    def __init__(self, model_hf, ids):
        self.ties, self.elements = 0, 0
        self.first_tie = [ids.shape[1]] * ids.shape[0]
        self.theirs = {}
        handles = []
        for name, module in model_hf.named_modules():
            quantizer = getattr(module, "input_quantizer", None)
            if hasattr(module, "weight_quantizer") and quantizer is not None and quantizer.is_enabled:
                hook = lambda mod, inp, out, name=name: self.theirs.__setitem__(name, out.detach())
                handles.append(quantizer.register_forward_hook(hook))
        try:
            with torch.no_grad():
                self.modelopt_logits = model_hf(ids).logits
        finally:
            for handle in handles:
                handle.remove()

    def __call__(self, name, x, input_scale):
        theirs = self.theirs[name]
        ours = reference_fake_quantize(x, input_scale, "float8")
        flipped = ((ours - theirs).abs() > 1e-3 * theirs.abs()).reshape(x.shape[0], x.shape[1], -1)
        self.elements += flipped.numel()
        for b, t in flipped.any(-1).nonzero().tolist():
            if t < self.first_tie[b]:  # at or after an earlier tie, flips may just follow from it
                self.first_tie[b] = t
                self.ties += int(flipped[b, t].sum())
