"""Quantization modes, and quantizing transformers' GPT-2 with NVIDIA ModelOpt into Tripy's layouts.

What a mode is lives in quant_modes.py; this module reads those descriptions. `prepare` checks that the
mode fits the model and reads the calibration text, before any weights are read. Then one pass,
`Quantization.quantized_state_dict`, runs two plain functions:
1. `modelopt_quantize`: ModelOpt 0.47's config for the mode (list-style `quant_cfg`), calibrated with a
   forward loop that shows progress, on tokens of a plain-text file or of English text that ships with
   Python itself (the stdlib's `pydoc_data.topics`, the text behind `help("topic")`): no network.
2. `tripy_quantized_state_dict`: calibrated amax -> scales, in the layouts model.py's quantized linear
   layers take, with AWQ's pre_quant_scale folded or kept explicit (never dropped).
"""

import contextlib
import copy
import ctypes
import hashlib
import importlib
import io
import os
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import torch

import reading
from errors import UserError
from quant_modes import CALIB_MAX_LENGTH, CALIB_SAMPLES, PER_CHANNEL, QUANT_MODES, QuantMode  # noqa: F401 (for callers)

# AWQ scales that can be folded exactly into the LayerNorm that feeds only that linear layer:
# LayerNorm(x) * s == LayerNorm with weight * s and bias * s.
FOLDABLE_PRE_QUANT_SCALES = {"attn.c_attn": "ln_1", "mlp.c_fc": "ln_2"}

# Calibration samples run through ModelOpt in batches of 4. AWQ (int4) runs each batch's activations
# through every candidate scale: for GPT-2 124M on 32 samples, a run's peak memory was 1.83-1.91 GB with
# batches of 16 and 1.49-1.81 GB with 4 (three runs each), and 16 calibrated no faster (95 against 69 s
# on 16 samples). Its statistics are means over each batch, summed over batches, so equal batches of
# any size pick the same scales, up to float rounding.
CALIB_BATCH_SIZE = 4
# glibc serves an allocation below a threshold from its heap, and keeps freed heap memory for later ones;
# the threshold grows to the largest block freed, up to 32 MiB. Calibration makes and frees activations of
# several MB many times over (AWQ runs each batch through every candidate scale), and the heap grew with
# them. With every allocation of 8 MiB or more mapped on its own, and handed back to the system as it is
# freed, a whole int4 run of GPT-2 124M in float32 (8 calibration samples, 1 thread) peaked at 1.37 and
# 1.41 GB against 1.52 and 1.77 GB, and took 76 and 83 s against 66 and 70 (a 1 MiB threshold: 1.38 GB,
# 86 s; 32 MiB: 1.51 GB, 66 s). After calibration the threshold is glibc's upper bound, where it would have
# grown to: a decode step's tensors come from the heap, as they did, not from fresh (page-faulting) mappings.
CALIBRATION_MMAP_THRESHOLD = 8 << 20
MMAP_THRESHOLD_AFTER = 32 << 20
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
# Calibration reads a few thousand tokens; a file larger than this is a mistake, not a corpus to read whole.
MAX_CALIBRATION_FILE_BYTES = 256 * reading.MiB


def unquantizable_reason(mode, hf_config, name="this model"):
    """Why `mode` cannot quantize the linear layers of a transformers GPT2Config, or None when it can."""
    inputs = {"embedding size": hf_config.n_embd, "MLP's inner size": hf_config.n_inner or 4 * hf_config.n_embd}
    for what, size in inputs.items():
        if mode.block_size and size % mode.block_size:
            return (
                f"{mode} quantizes blocks of {mode.block_size} inputs, and the {what} of {name} "
                f"({size}) is not a multiple of {mode.block_size}"
            )
    return None


class QuantizationError(UserError, ValueError):
    """A quantization this model or its calibration text cannot have. The message is one line, for the user."""


class CalibrationDataError(QuantizationError):
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

    Raises CalibrationDataError (a ValueError) with one clear message when the file is missing, not a
    regular file, larger than MAX_CALIBRATION_FILE_BYTES, not UTF-8, or holds no text.
    """
    if calib_file is None:
        return default_calibration_texts()
    path = os.fspath(calib_file)
    try:
        text = reading.read_text(path, MAX_CALIBRATION_FILE_BYTES)
    except reading.UnreadableFile as exc:
        raise CalibrationDataError(f"calibration file '{path}' {exc}") from None
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    samples = [p for p in paragraphs if p]
    if not samples:
        raise CalibrationDataError(f"calibration file '{path}' holds no text")
    return samples


@dataclass
class CalibrationData:
    """Token batches for calibration, and what they hold (for the report and the engine cache's key)."""

    batches: list  # of int64 tensors [B, T]: equal-length samples share a batch, with no padding
    num_samples: int
    num_tokens: int
    text_source: str = "the calibration text"  # where the text came from, for the report

    def summary(self):
        return f"{self.num_samples} samples, {self.num_tokens} tokens"

    def tokens_sha256(self):
        """A digest of every token and batch shape: the calibration's identity, for the engine cache's key."""
        digest = hashlib.sha256()
        for batch in self.batches:
            digest.update(repr(tuple(batch.shape)).encode() + batch.numpy().tobytes())
        return digest.hexdigest()


def make_calibration_batches(samples, batch_size=CALIB_BATCH_SIZE, text_source="the calibration text"):
    """Token-id samples (lists of ints) as CalibrationData, in batches of equal-length sequences.

    Only sequences of the same length share a batch, so there is no padding: no pad token pollutes
    the calibrated ranges and no attention mask is needed. AWQ's search re-quantizes every weight for
    each of its 11 candidate scales once per batch and runs the batch through each (CALIB_BATCH_SIZE
    says why 4). Empty samples are skipped.
    """
    sequences = [list(ids) for ids in samples if len(ids)]
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
    return CalibrationData(batches, len(sequences), sum(len(ids) for ids in sequences), text_source)


def calibration_data(encoding, calib_file, num_samples, max_length=CALIB_MAX_LENGTH):
    """`num_samples` samples of `max_length` tokens for calibration, cut from the tokens of the
    calibration texts one after another (blank lines between them), so equal lengths share a batch
    and short paragraphs do not each make a batch of their own; only a text shorter than one sample
    gives less. A bad `calib_file` is a CalibrationDataError."""
    separator = encoding.encode("\n\n")
    stream = []
    for text in load_calibration_texts(calib_file):
        stream += encoding.encode(text) + separator
        if len(stream) >= num_samples * max_length:
            break
    samples = [stream[i : i + max_length] for i in range(0, min(len(stream), num_samples * max_length), max_length)]
    if len(samples) > 1 and len(samples[-1]) < max_length:
        samples.pop()
    return make_calibration_batches(samples, text_source=calibration_source(calib_file))


@dataclass
class Quantization:
    """What to quantize with, a mode and the tokens ModelOpt calibrates it on, and, once it has, how long
    that took (for the report; None when the engine cache had the quantized model)."""

    mode: QuantMode
    calibration: CalibrationData
    calibration_seconds: Optional[float] = None

    def cache_key(self):
        """Everything that changes the quantized weights, for the engine cache's key."""
        return {
            "mode": self.mode.name,
            "calibration_tokens_sha256": self.calibration.tokens_sha256(),
            "calibration": self.calibration.summary(),
        }

    def quantized_state_dict(self, model_hf):
        """Calibrates transformers' GPT-2 (float32, changed in place, and consumed) with ModelOpt and returns
        its weights and scales in Tripy's layouts (tripy_quantized_state_dict).

        The model's weights are first copied off the checkpoint's mapped file, which is then released:
        ModelOpt copies every linear layer's weight as it quantizes it (transposing transformers' Conv1D),
        and the file's pages, read once, would otherwise stay resident beside those copies for the rest
        of the run (324 MiB for GPT-2 124M). The caller must hold no other tensor of the file."""
        with torch.no_grad():
            for param in model_hf.parameters():
                param.data = param.data.clone()
        start = time.perf_counter()
        modelopt_quantize(model_hf, self.mode, self.calibration.batches)
        self.calibration_seconds = time.perf_counter() - start
        return tripy_quantized_state_dict(model_hf, self.mode)

    def report(self):
        """The report line of the calibration, once it has run."""
        calibration = self.calibration
        return (
            f"Calibrating {self.mode} on {calibration.summary()} of {calibration.text_source} took "
            f"{self.calibration_seconds:.2f} seconds."
        )


def prepare(checkpoint, mode, calib_file=None, num_samples=CALIB_SAMPLES):
    """The Quantization that `mode` asks for (None for none), its calibration text read and tokenized
    with the checkpoint's tokenizer: a model the mode cannot quantize, or a bad calib_file, is a
    QuantizationError before any weights are read."""
    if mode is None:
        return None
    reason = unquantizable_reason(mode, checkpoint.hf_config, f"'{checkpoint.source}'")
    if reason:
        raise QuantizationError(f"--quant-mode {reason}")
    max_length = min(CALIB_MAX_LENGTH, checkpoint.hf_config.n_positions)
    return Quantization(mode, calibration_data(checkpoint.encoding, calib_file, num_samples, max_length))


# ----------------------------------------------------------------------------------------------
# ModelOpt


def _import_mtq():
    """modelopt.torch.quantization, imported lazily and quietly: without its transformers-version warning
    and the notes it prints as it loads ("Registered ... for KV Cache quantization").

    It is imported in a thread of its own: pulp, which ModelOpt imports, keeps the exceptions of the
    solvers it does not find, tracebacks and all, and with them every frame of the stack that imported
    it. Imported from modelopt_quantize, they would hold transformers' model (and load_model's locals)
    for as long as the process lives."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), ThreadPoolExecutor(1) as pool:
        warnings.filterwarnings("ignore", message=".*is not tested with current version of modelopt.*")
        return pool.submit(importlib.import_module, "modelopt.torch.quantization").result()


def modelopt_quant_config(mode):
    """The ModelOpt 0.47 config for a mode: its predefined config (mode.modelopt_config) plus appended
    list entries.

    In 0.47 `quant_cfg` is an ordered list of {quantizer_name, cfg | enable} entries (later ones
    win), so adjustments are appended entries; dict-style edits no longer apply.
    - INT8_DEFAULT_CFG quantizes weights per output channel (axis 0 of the [out, in] weight) and
      inputs too: a weight-only mode disables the input quantizers.
    - INT4_AWQ_CFG: int4 in blocks of 128 along the input dim, with awq_lite; weight-only already.
    - FP8_DEFAULT_CFG: e4m3 weights and inputs, per tensor.
    - lm_head stays unquantized (ModelOpt's default) unless the mode quantizes it: then its weight
      and input quantizers are named, and only those; a "*lm_head*" enable would also switch on
      lm_head's output quantizer.
    Every mode then disables the quantizers ModelOpt puts on LayerNorms: FP8_DEFAULT_CFG's
    "*input_quantizer" would otherwise fake-quantize the inputs of ln_1, ln_2 and ln_f (the
    residual stream), which Tripy's model, quantizing linear layers only, does not do.
    """
    mtq = _import_mtq()
    config = copy.deepcopy(getattr(mtq, mode.modelopt_config))
    if not mode.quantizes_inputs:
        config["quant_cfg"].append({"quantizer_name": "*input_quantizer", "enable": False})
    if mode.quantizes_lm_head:
        weights = next(e["cfg"] for e in config["quant_cfg"] if e.get("quantizer_name") == "*weight_quantizer")
        inputs = next(e["cfg"] for e in config["quant_cfg"] if e.get("quantizer_name") == "*input_quantizer")
        config["quant_cfg"].append({"quantizer_name": "*lm_head.weight_quantizer", "cfg": dict(weights)})
        config["quant_cfg"].append({"quantizer_name": "*lm_head.input_quantizer", "cfg": dict(inputs)})
    config["quant_cfg"].append({"quantizer_name": "*", "parent_class": "nn.LayerNorm", "enable": False})
    return config


def _progress_forward_loop(calib_batches, mode, num_passes):
    """A ModelOpt forward loop that runs every batch through the model, with a tqdm line on stderr.

    Only what has quantizers to calibrate runs, in pieces as small as leave the scales unchanged: the
    transformer body, without the KV cache it would return, and lm_head only where the mode quantizes
    it, one sample's hidden states at a time (a batch's logits are 4 x 256 x 50257 floats for GPT-2,
    206 MB). The body runs whole batches where activations are calibrated (AWQ searches once per batch,
    and a matrix product's sums for a sample may differ in their last bits with the rows beside it);
    where only weights are (int8), a sample at a time.
    """
    from tqdm import tqdm

    passes = [0]

    def forward_loop(model):
        passes[0] += 1
        label = f"calibrating {mode}" + (f" (pass {passes[0]}/{num_passes})" if num_passes > 1 else "")
        total = sum(batch.shape[0] for batch in calib_batches)
        with torch.no_grad(), tqdm(total=total, desc=label, unit="sample", file=sys.stderr) as bar:
            for batch in calib_batches:
                for chunk in [batch] if mode.awq or mode.quantizes_inputs else batch.split(1):
                    hidden = model.transformer(chunk.to(next(model.parameters()).device), use_cache=False)[0]
                    if mode.quantizes_lm_head:
                        for sample in hidden.split(1):
                            model.lm_head(sample)
                    bar.update(chunk.shape[0])

    return forward_loop


def modelopt_quantize(model_hf, mode, calib_batches):
    """Quantizes and calibrates a transformers GPT-2 in place with ModelOpt; returns it.

    `calib_batches` is a sequence of int64 token tensors [batch, T] (CalibrationData.batches). The
    result is ModelOpt's fake-quantized model; `tripy_quantized_state_dict` reads it. Progress goes to
    stderr (a tqdm line per pass). AWQ (int4) runs the calibration data
    through the model twice: once to collect activation statistics, once to search its scales.
    """
    if len(calib_batches) == 0:
        raise CalibrationDataError("no calibration batches to calibrate with")

    mtq = _import_mtq()
    config = modelopt_quant_config(mode)
    algorithm = config.get("algorithm")
    method = algorithm.get("method") if isinstance(algorithm, dict) else algorithm
    num_passes = 2 if method == "awq_lite" else 1
    model_hf.eval()
    forward_loop = _progress_forward_loop(calib_batches, mode, num_passes)
    # ModelOpt prints notes of its own ("Inserted 51 quantizers", "awq_lite: ...") to stdout, which is
    # for the generated text; the progress bar above says what is happening.
    with contextlib.redirect_stdout(io.StringIO()), large_allocations_mapped():
        return mtq.quantize(model_hf, config, forward_loop)


def _glibc():
    """The C library where it is glibc, whose heap the functions below tune, else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def large_allocations_mapped():
    """While inside, glibc maps every allocation of CALIBRATION_MMAP_THRESHOLD or more on its own, so that
    freeing it hands it back to the system; afterwards, MMAP_THRESHOLD_AFTER. Without glibc, nothing."""
    glibc = _glibc()
    if glibc is None:
        yield
        return
    glibc.mallopt(M_MMAP_THRESHOLD, CALIBRATION_MMAP_THRESHOLD)
    try:
        yield
    finally:
        glibc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_AFTER)


def hand_back_freed_heap():
    """Returns the heap that calibration freed to the system, before compiling. glibc keeps freed memory
    between live allocations for later ones, and a few hundred MB that calibration used (activations,
    ModelOpt's copies) would stay resident, unused by compiling's tensors. Without glibc, nothing."""
    glibc = _glibc()
    if glibc is not None:
        glibc.malloc_trim(0)


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
def tripy_quantized_state_dict(model_hf, mode):
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

    Quantized weights are stored as ModelOpt's fake-quantized values
    (q * scale, already on the quantization grid): Tripy's quantize then recovers exactly
    ModelOpt's integer/fp8 codes instead of re-rounding the raw weight with a division that may
    round a tie differently from ModelOpt's multiplication. The dequantized weight is the same.

    The model is consumed: each quantized layer's weight is released once its fake-quantized copy is
    made, so that every weight is not held twice (the model is thrown away next).
    """
    linears = _quantized_linears(model_hf)
    if not linears:
        raise ValueError("the model has no quantized linear layers; run modelopt_quantize first")

    # The model's own tensors where they are float32 already: it is calibrated and thrown away.
    state = {
        key: value.detach().float().cpu()
        for key, value in model_hf.state_dict().items()
        if "_quantizer." not in key and not key.endswith("_quantizer")
    }
    for name, module in linears:
        wq, iq = module.weight_quantizer, module.input_quantizer
        weight = wq(module.weight).detach().float().cpu()  # ModelOpt turned Conv1D into nn.Linear's [out, in]
        del state[f"{name}.weight"]
        module.weight.data = torch.empty(0)
        scale = _scale_from_amax(wq, mode.maxbound)
        out_features, in_features = weight.shape

        if mode.weight_in_out:
            # ModelOpt's blocks: [out, in/B] (B consecutive inputs of one output row); nvtripy's block-wise
            # quantization blocks dim 0, so both the weight and the scales are transposed.
            state[f"{name}.weight"] = weight.t().contiguous()
            blocks = scale.reshape(out_features, in_features // mode.block_size)
            state[f"{name}.weight_scale"] = blocks.t().contiguous()
        else:
            state[f"{name}.weight"] = weight
            state[f"{name}.weight_scale"] = scale.reshape(out_features if mode.granularity == PER_CHANNEL else ())
        if mode.quantizes_inputs:
            state[f"{name}.input_scale"] = _scale_from_amax(iq, mode.maxbound).reshape(())

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
            state[f"{name}.pre_quant_scale"] = pre_quant_scale
    return state
