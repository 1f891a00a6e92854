"""Quantizes transformers' GPT-2 with NVIDIA ModelOpt and turns the result into Tripy's layouts.

Three steps, each a plain function:
1. Calibration text without a network: a plain-text file, or English text that ships with
   Python itself (the stdlib's `pydoc_data.topics`, the text behind `help("topic")`).
2. `modelopt_quantize`: ModelOpt 0.47 configs (list-style `quant_cfg`) for int8-weight-only,
   int4-weight-only (AWQ) and float8, calibrated with a forward loop that shows progress.
3. `tripy_quantized_state_dict`: calibrated amax -> scales, in the layouts Tripy's quantized
   linear layers consume, with AWQ's pre_quant_scale folded or kept explicit (never dropped).

`reference_quantized_linear` states the math a Tripy/TensorRT linear layer computes from those
tensors; the tests use it to show that it reproduces ModelOpt's fake-quantized model.
"""

import contextlib
import copy
import os
import sys
import warnings
from dataclasses import dataclass

import torch

QUANT_MODES = ("int8-weight-only", "int4-weight-only", "float8")

# AWQ's block size along the input dimension (ModelOpt's INT4_AWQ_CFG uses block_sizes {-1: 128}).
INT4_BLOCK_SIZE = 128

# The largest representable magnitude of each quantized type: ModelOpt's `maxbound`, and the
# divisor that turns a calibrated amax into the scale Tripy's quantize/dequantize use.
MAXBOUND = {"int8-weight-only": 127.0, "int4-weight-only": 7.0, "float8": 448.0}

# Saturation ranges of TensorRT's quantize (ModelOpt's integer quantizers use narrow_range=False,
# so they saturate to the same [-128, 127] and [-8, 7]).
QUANT_RANGE = {"int8-weight-only": (-128.0, 127.0), "int4-weight-only": (-8.0, 7.0), "float8": (-448.0, 448.0)}

# AWQ scales that can be folded exactly into the LayerNorm that feeds only that linear layer:
# LayerNorm(x) * s == LayerNorm with weight * s and bias * s.
FOLDABLE_PRE_QUANT_SCALES = {"attn.c_attn": "ln_1", "mlp.c_fc": "ln_2"}

DEFAULT_CALIB_MAX_LENGTH = 256


class CalibrationDataError(ValueError):
    """Calibration text is missing, unreadable or empty; the message says which and where."""


# ----------------------------------------------------------------------------------------------
# Calibration text


def default_calibration_texts():
    """English prose that ships with CPython (the help topics of `pydoc_data.topics`).

    No download, and not text we made up. One sample per topic, in sorted order so that
    calibration is reproducible.
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some distributions strip pydoc_data
        raise CalibrationDataError(
            "the default calibration text (Python's pydoc_data.topics) is not available in this "
            "Python installation; pass a plain-text file with --calib-file"
        ) from exc
    return [topics[name].strip() for name in sorted(topics) if topics[name].strip()]


def calibration_source(calib_file=None):
    """Where calibration text comes from, for the report line."""
    return f"'{os.fspath(calib_file)}'" if calib_file is not None else "Python's help topics (pydoc_data.topics)"


def load_calibration_texts(calib_file=None):
    """Calibration samples: paragraphs (separated by blank lines) of a UTF-8 text file, or the default corpus.

    Raises CalibrationDataError (a ValueError) with one clear message when the file is missing,
    unreadable or holds no text.
    """
    if calib_file is None:
        return default_calibration_texts()
    path = os.fspath(calib_file)
    if not os.path.exists(path):
        raise CalibrationDataError(f"calibration file '{path}' does not exist")
    if not os.path.isfile(path):
        raise CalibrationDataError(f"calibration file '{path}' is not a regular file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise CalibrationDataError(f"calibration file '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise CalibrationDataError(f"calibration file '{path}' cannot be read: {exc.strerror}") from exc
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    samples = [p for p in paragraphs if p]
    if not samples:
        raise CalibrationDataError(f"calibration file '{path}' holds no text")
    return samples


@dataclass
class CalibrationData:
    """Token batches for calibration, and how much text they hold (for the report)."""

    batches: list  # of int64 tensors [B, T], 1 <= B <= batch_size, 1 <= T <= max_length
    num_samples: int
    num_tokens: int

    def summary(self):
        return f"{self.num_samples} samples, {self.num_tokens} tokens"


def make_calibration_batches(texts, encode, max_length=DEFAULT_CALIB_MAX_LENGTH, num_samples=None, batch_size=8):
    """Tokenizes samples, truncated to `max_length` tokens, into batches of equal-length sequences.

    Only sequences of the same length share a batch (most samples are cut to exactly
    `max_length`), so there is no padding: no pad token pollutes the calibrated ranges and no
    attention mask is needed. Batching matters for AWQ, whose search re-quantizes every weight
    for each of its 11 candidate scales once per batch. `num_samples` caps how many samples are
    used (None: all). Samples that encode to no tokens are skipped.
    """
    if max_length < 1 or batch_size < 1:
        raise ValueError(f"max_length and batch_size must be at least 1, got {max_length} and {batch_size}")
    sequences = []
    for text in texts:
        if num_samples is not None and len(sequences) >= num_samples:
            break
        ids = list(encode(text))[:max_length]
        if ids:
            sequences.append(ids)
    if not sequences:
        raise CalibrationDataError("the calibration text encodes to no tokens")
    by_length = {}
    for ids in sequences:  # dicts keep insertion order: batches follow the text's order
        by_length.setdefault(len(ids), []).append(ids)
    batches = [
        torch.tensor(group[i : i + batch_size], dtype=torch.long)
        for group in by_length.values()
        for i in range(0, len(group), batch_size)
    ]
    return CalibrationData(batches, len(sequences), sum(len(ids) for ids in sequences))


# ----------------------------------------------------------------------------------------------
# ModelOpt


def _import_mtq():
    """modelopt.torch.quantization, imported lazily and without its transformers-version warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not tested with current version of modelopt.*")
        import modelopt.torch.quantization as mtq
    return mtq


def modelopt_quant_config(quant_mode):
    """The ModelOpt 0.47 config for a mode: a predefined config plus appended list entries.

    In 0.47 `quant_cfg` is an ordered list of {quantizer_name, cfg | enable} entries (later ones
    win), so adjustments are appended entries; dict-style edits no longer apply.
    - int8-weight-only: INT8_DEFAULT_CFG (int8, per output channel: axis 0 of the [out, in]
      weight) with the input quantizers disabled. lm_head stays unquantized (ModelOpt's default).
    - int4-weight-only: INT4_AWQ_CFG (int4, blocks of 128 along the input dim, awq_lite).
      lm_head stays unquantized (ModelOpt's default).
    - float8: FP8_DEFAULT_CFG (e4m3 weights and inputs, per tensor), plus lm_head's weight and
      input quantizers, which the predefined config excludes. Only those two are named: a
      "*lm_head*" enable would also switch on lm_head's output quantizer.
    Every mode then disables the quantizers ModelOpt puts on LayerNorms: FP8_DEFAULT_CFG's
    "*input_quantizer" would otherwise fake-quantize the inputs of ln_1, ln_2 and ln_f (the
    residual stream), which Tripy's model, quantizing linear layers only, does not do.
    """
    mtq = _import_mtq()
    if quant_mode == "int8-weight-only":
        config = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
        config["quant_cfg"].append({"quantizer_name": "*input_quantizer", "enable": False})
    elif quant_mode == "int4-weight-only":
        config = copy.deepcopy(mtq.INT4_AWQ_CFG)
    elif quant_mode == "float8":
        config = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
        fp8 = {"num_bits": (4, 3), "axis": None}
        config["quant_cfg"].append({"quantizer_name": "*lm_head.weight_quantizer", "cfg": dict(fp8)})
        config["quant_cfg"].append({"quantizer_name": "*lm_head.input_quantizer", "cfg": dict(fp8)})
    else:
        raise ValueError(f"unknown quantization mode '{quant_mode}': choose one of {', '.join(QUANT_MODES)}")
    config["quant_cfg"].append({"quantizer_name": "*", "parent_class": "nn.LayerNorm", "enable": False})
    return config


def _check_int4_shapes(model_hf):
    """Tripy's int4 blocks must tile the input dim exactly (ModelOpt would pad; Tripy cannot)."""
    n_embd = model_hf.config.n_embd
    inner = model_hf.config.n_inner or 4 * n_embd
    for in_features in (n_embd, inner):
        if in_features % INT4_BLOCK_SIZE:
            raise ValueError(
                f"int4-weight-only needs every linear layer's input size to be a multiple of "
                f"{INT4_BLOCK_SIZE}; this model has one of {in_features}"
            )


def _progress_forward_loop(calib_batches, quant_mode, num_passes, progress):
    """A ModelOpt forward loop that runs every batch through the model, with a tqdm line on stderr."""
    from tqdm import tqdm

    passes = [0]

    def forward_loop(model):
        passes[0] += 1
        label = f"calibrating {quant_mode}" + (f" (pass {passes[0]}/{num_passes})" if num_passes > 1 else "")
        total = sum(batch.shape[0] for batch in calib_batches)
        with torch.no_grad(), tqdm(total=total, desc=label, unit="sample", file=sys.stderr, disable=not progress) as bar:
            for batch in calib_batches:
                model(batch.to(next(model.parameters()).device))
                bar.update(batch.shape[0])

    return forward_loop


def modelopt_quantize(model_hf, quant_mode, calib_batches, progress=True):
    """Quantizes and calibrates a transformers GPT-2 in place with ModelOpt; returns it.

    `calib_batches` is a sequence of int64 token tensors [batch, T] (e.g. CalibrationData.batches).
    The result is ModelOpt's fake-quantized model; `tripy_quantized_state_dict` reads it.
    Progress goes to stderr (a tqdm line per pass; `progress=False` hides it). AWQ (int4) runs the calibration data through the model twice: once to collect activation
    statistics, once to search its scales.
    """
    if quant_mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization mode '{quant_mode}': choose one of {', '.join(QUANT_MODES)}")
    if isinstance(calib_batches, CalibrationData):
        calib_batches = calib_batches.batches
    if len(calib_batches) == 0:
        raise CalibrationDataError("no calibration batches to calibrate with")
    if quant_mode == "int4-weight-only":
        _check_int4_shapes(model_hf)

    mtq = _import_mtq()
    config = modelopt_quant_config(quant_mode)
    algorithm = config.get("algorithm")
    method = algorithm.get("method") if isinstance(algorithm, dict) else algorithm
    num_passes = 2 if method == "awq_lite" else 1
    model_hf.eval()
    forward_loop = _progress_forward_loop(calib_batches, quant_mode, num_passes, progress)
    # ModelOpt prints its own progress notes ("Inserted 51 quantizers", "awq_lite: ...") to
    # stdout; send them to stderr with the progress bar, leaving stdout to the generated text.
    with contextlib.redirect_stdout(sys.stderr):
        return mtq.quantize(model_hf, config, forward_loop)


# ----------------------------------------------------------------------------------------------
# Tripy's tensors


def _quantized_linears(model_hf):
    """(name, module) of each linear layer whose weight ModelOpt quantizes."""
    found = []
    for name, module in model_hf.named_modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if quantizer is not None and getattr(module, "input_quantizer", None) is not None and quantizer.is_enabled:
            found.append((name, module))
    return found


def _scale_from_amax(quantizer, maxbound):
    """Calibrated amax / maxbound, in float32 (zero or NaN amax are replaced by ModelOpt's export)."""
    amax = quantizer.export_amax()
    if amax is None:
        raise ValueError("a quantizer was not calibrated (no amax); run modelopt_quantize first")
    return (amax.detach().float() / maxbound).cpu()


@torch.no_grad()
def tripy_quantized_state_dict(model_hf, quant_mode, snap_weights=True):
    """The calibrated ModelOpt model as {name: float32 torch.Tensor}, in the layouts Tripy's layers consume.

    Keys are transformers' GPT-2 state-dict keys (= the Tripy GPT's parameter names); scales add a
    suffix to the linear layer's name. n = n_embd, V = vocab, B = 128. Linear layers
    L = transformer.h.{i}.attn.c_attn / attn.c_proj / mlp.c_fc / mlp.c_proj (Conv1D in transformers).

    Every mode:
      wte, wpe, ln_*, ln_f, all biases: as in transformers ([out] for biases).
      lm_head.weight [V, n]: a plain (unquantized) weight unless the mode quantizes lm_head.

    int8-weight-only (quantize with weight_quant_dim=0, no input quantization):
      L.weight        [out, in]   (transposed from Conv1D's [in, out])
      L.weight_scale  [out]       amax / 127 per output channel
      lm_head: not quantized (ModelOpt's default).

    int4-weight-only (AWQ; weight-only; a layer that computes x @ dequantize(W) with no transpose):
      L.weight        [in, out]   AWQ-smoothed weight, i.e. W * (1 / pre_quant_scale) along `in`
      L.weight_scale  [in/B, out] amax / 7; block-wise int4 on dim 0 (blocks of B input rows)
      transformer.h.{i}.attn.c_proj.pre_quant_scale, transformer.h.{i}.mlp.c_proj.pre_quant_scale
                      [in]        multiply the layer's input by it: y = (x * s) @ dq(W) + b
      attn.c_attn / mlp.c_fc: no pre_quant_scale key; theirs is folded into ln_1 / ln_2:
                      ln_1.weight, ln_1.bias (and ln_2.*) are multiplied by it (exact: those
                      LayerNorms feed nothing else).
      lm_head: not quantized (ModelOpt's default).

    float8 (e4m3, per tensor, lm_head included):
      L.weight, lm_head.weight        [out, in]
      L.weight_scale, L.input_scale   []  amax / 448 (scalars); same keys for lm_head.
      lm_head.weight is snapped (below) while transformer.wte.weight is not: load both, untied.

    With `snap_weights` (default), quantized weights are ModelOpt's fake-quantized values
    (q * scale, already on the quantization grid): Tripy's quantize then recovers exactly
    ModelOpt's integer/fp8 codes instead of re-rounding the raw weight with a division that may
    round a tie differently from ModelOpt's multiplication. The dequantized weight is the same.
    """
    if quant_mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization mode '{quant_mode}': choose one of {', '.join(QUANT_MODES)}")
    maxbound = MAXBOUND[quant_mode]
    linears = _quantized_linears(model_hf)
    if not linears:
        raise ValueError("the model has no quantized linear layers; run modelopt_quantize first")

    state = {
        key: value.detach().float().cpu().clone()
        for key, value in model_hf.state_dict().items()
        if "_quantizer." not in key and not key.endswith("_quantizer")
    }
    for name, module in linears:
        weight = module.weight  # ModelOpt turned Conv1D into nn.Linear semantics: [out, in]
        wq, iq = module.weight_quantizer, module.input_quantizer
        if snap_weights:
            weight = wq(weight)
        weight = weight.detach().float().cpu()
        scale = _scale_from_amax(wq, maxbound)
        out_features, in_features = weight.shape

        if quant_mode == "int8-weight-only":
            state[f"{name}.weight"] = weight.clone()
            state[f"{name}.weight_scale"] = scale.reshape(out_features).clone()
        elif quant_mode == "int4-weight-only":
            # ModelOpt's blocks: [out, in/B] (B consecutive inputs of one output row); Tripy's
            # block-wise int4 blocks dim 0, so both the weight and the scales are transposed.
            state[f"{name}.weight"] = weight.t().contiguous()
            state[f"{name}.weight_scale"] = scale.reshape(out_features, in_features // INT4_BLOCK_SIZE).t().contiguous()
        else:
            state[f"{name}.weight"] = weight.clone()
            state[f"{name}.weight_scale"] = scale.reshape(())
            if iq.is_enabled:
                state[f"{name}.input_scale"] = _scale_from_amax(iq, maxbound).reshape(())

        pre_quant_scale = iq.pre_quant_scale
        if pre_quant_scale is None:
            continue
        pre_quant_scale = pre_quant_scale.detach().float().cpu().reshape(in_features)
        parent, _, leaf_path = name.rpartition(".h.")
        block, _, layer = leaf_path.partition(".")
        norm = FOLDABLE_PRE_QUANT_SCALES.get(layer) if parent else None
        if norm is not None:
            prefix = f"{parent}.h.{block}.{norm}"
            state[f"{prefix}.weight"] = state[f"{prefix}.weight"] * pre_quant_scale
            state[f"{prefix}.bias"] = state[f"{prefix}.bias"] * pre_quant_scale
        else:
            state[f"{name}.pre_quant_scale"] = pre_quant_scale.clone()
    return state


# ----------------------------------------------------------------------------------------------
# Reference math: what Tripy's quantize/dequantize compute on TensorRT


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
