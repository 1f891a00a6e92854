"""What a GPT-2 checkpoint says, read once: its config, its tokenizer, and (on request) its weights.

A checkpoint is a Hugging Face Hub id (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, ...) or a
local directory in transformers' format (config.json plus model.safetensors or pytorch_model.bin).
transformers does the reading: safetensors, or torch.load with weights_only=True; nothing is unpickled.
`open_checkpoint` reads config.json, generation_config.json (for the end-of-text ids only) and the tokenizer,
each file checked before it is trusted (reading.py), and checks them against each other; everything after
that takes the `Checkpoint` it returns instead of reading the files again.
"""

import json
import math
import os
import stat
import warnings
from dataclasses import dataclass

import huggingface_hub
import transformers
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
from safetensors import safe_open
from transformers import GPT2Config, GPT2LMHeadModel

import progress
import reading
from errors import UserError
from reading import UnreadableFile
from tokenizer import Tokenizer, load_encoding

try:  # huggingface_hub's HTTP client: httpx2 from huggingface_hub 2 on, httpx before
    from httpx2 import ReadTimeout
except ImportError:
    from httpx import ReadTimeout


class CheckpointError(UserError):
    """A checkpoint that cannot be used. The message is one line, meant for the user."""


class HubUnavailable(CheckpointError):
    """A Hub id that is neither in the local cache nor downloadable (offline, or no such repository)."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint's source and what its files say."""

    source: str  # a Hub id or a directory
    is_local: bool  # a directory, not a Hub id
    hf_config: GPT2Config
    encoding: Tokenizer
    eos_token_ids: tuple = ()  # a sample ends when it draws any of them, as in transformers' generate()


def is_local_path(source):
    """A directory, or a name only a path can have, is a checkpoint directory; else it is a Hub id
    (name or org/name)."""
    return os.path.isdir(source) or source.startswith((".", "/", "~")) or source.count("/") > 1


def open_checkpoint(source):
    """The checkpoint's config and tokenizer, checked against each other before any weights are read."""
    is_local = is_local_path(source)
    hf_config = _read_config(source, is_local)
    encoding = load_encoding(source, is_directory=is_local, config=hf_config)
    if encoding.n_vocab > hf_config.vocab_size:
        raise CheckpointError(
            f"the tokenizer of '{source}' ({encoding.name}) has {encoding.n_vocab} tokens, "
            f"more than the model's vocabulary of {hf_config.vocab_size}"
        )
    eos_token_ids = _eos_token_ids(source, is_local, hf_config, encoding.n_vocab)
    return Checkpoint(source, is_local, hf_config, encoding, eos_token_ids)


def _eos_token_ids(source, is_local, hf_config, n_vocab):
    """The end-of-text ids, as transformers' generate() takes them: generation_config.json's eos_token_id where
    the checkpoint has that file (a Hub id's only when cached), else config.json's; an id or a list of ids."""
    if is_local:
        path = os.path.join(source, "generation_config.json")
        path = path if os.path.lexists(path) else None
    else:
        path = huggingface_hub.try_to_load_from_cache(source, "generation_config.json")
        path = path if isinstance(path, str) else None
    eos, where = hf_config.eos_token_id, "config.json"
    if path is not None:
        where = "generation_config.json"
        settings = _read_json_file(source, path, where)
        if not isinstance(settings, dict):
            raise CheckpointError(
                f"the {where} of '{source}' is malformed: it holds {_json(settings)}, not an object of settings"
            )
        try:
            eos = transformers.GenerationConfig.from_dict(settings).eos_token_id
        except Exception as exc:  # transformers' own checks of the file
            raise CheckpointError(f"the {where} of '{source}' is malformed: {_one_line(exc)}") from None
    ids = [] if eos is None else eos if isinstance(eos, list) else [eos]
    if ids == [GPT2Config().eos_token_id] and ids[0] >= n_vocab:
        # transformers' default, which save_pretrained writes into both files for any GPT2Config not given one:
        # it can never be drawn from a smaller vocabulary, and transformers only warns.
        return ()
    for token in ids:
        if type(token) is not int or not 0 <= token < n_vocab:
            raise CheckpointError(
                f"the {where} of '{source}' is malformed: eos_token_id {_json(eos)} is not a token id "
                f"of its tokenizer (0 to {n_vocab - 1})"
            )
    return tuple(ids)


# The most a checkpoint's JSON file may hold: config.json and generation_config.json take a few kB, an index of shards
# tens of kB.
MAX_JSON_BYTES = 16 * reading.MiB


def _read_json_file(source, path, name):
    """The JSON value of the checkpoint's file `name` at `path`, read as reading.read_json checks it."""
    try:
        return reading.read_json(path, MAX_JSON_BYTES)
    except UnreadableFile as exc:
        if str(exc).startswith("is not JSON"):
            raise CheckpointError(f"'{source}' is not a GPT-2 checkpoint: its {name} {exc}") from None
        raise CheckpointError(f"the {name} of '{source}' {exc}") from None


def _is_positive_int(value):
    return type(value) is int and value > 0  # not a bool, not 32.0


def _is_bool(value):
    return isinstance(value, bool)


# The model's shape: config.json must give each. transformers would fill in a missing one with GPT-2's
# own (768 wide, 12 layers, ...), which the weights then do not fit.
SHAPE_SETTINGS = ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size")
# Each setting this model reads, with what it must be where config.json gives it.
SETTINGS = {
    **{name: ("a positive integer", _is_positive_int) for name in SHAPE_SETTINGS},
    "layer_norm_epsilon": ("a positive number", lambda value: type(value) in (int, float) and 0 < value < math.inf),
    "n_inner": ("null or a positive integer", lambda value: value is None or _is_positive_int(value)),
    "activation_function": ("a string", lambda value: isinstance(value, str)),
    "scale_attn_weights": ("true or false", _is_bool),
    "scale_attn_by_inverse_layer_idx": ("true or false", _is_bool),
    "add_cross_attention": ("true or false", _is_bool),
}


def _read_config(source, is_local):
    """The checkpoint's transformers GPT2Config, from its config.json (opened once), if this model implements it."""
    path = _checkpoint_file(source, "config.json") if is_local else _hub_file(source, "config.json")
    settings = _read_json_file(source, path, "config.json")
    if not isinstance(settings, dict):
        raise CheckpointError(
            f"the config.json of '{source}' is malformed: it holds {_json(settings)}, not an object of settings"
        )
    if settings.get("model_type") != "gpt2":
        says = f"says model_type '{settings['model_type']}'" if "model_type" in settings else "has no model_type"
        raise CheckpointError(f"'{source}' is not a GPT-2 checkpoint: its config.json {says}")
    problems = [f"{name} is missing" for name in SHAPE_SETTINGS if name not in settings]
    for name, (kind, fits) in SETTINGS.items():
        if name in settings and not fits(settings[name]):
            problems.append(f"{name} is {_json(settings[name])}, not {kind}")
    if problems:
        raise CheckpointError(f"the config.json of '{source}' is malformed: {'; '.join(problems)}")
    try:
        config = GPT2Config.from_dict(settings, name_or_path=source)
    except Exception as exc:  # transformers' own checks, of settings this model does not read
        raise CheckpointError(f"the config.json of '{source}' is malformed: {_one_line(exc)}") from None

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
        raise CheckpointError(f"'{source}' is a GPT-2 variant this model does not implement: {', '.join(unsupported)}")
    return config


def read_hf_model(checkpoint, torch_dtype):
    """transformers' GPT2LMHeadModel for the checkpoint, built from its config as already read, and its
    loading info (missing, extra and mis-shaped keys, which `check_weights` reports). An unreadable
    checkpoint is a CheckpointError."""
    # transformers maps the file into memory and converts each tensor to `torch_dtype` as it reads it.
    if checkpoint.is_local:
        check_weight_headers(checkpoint)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's notes on pickle protocols: the error says enough
            return _from_pretrained(
                GPT2LMHeadModel,
                checkpoint,
                config=checkpoint.hf_config,
                dtype=torch_dtype,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported by check_weights, together with missing and extra keys
            )
    except HubUnavailable:
        raise
    except Exception as exc:  # unreadable files: truncated or garbled safetensors, a broken .bin, ...
        if "Weights only load failed" in str(exc):
            raise CheckpointError(
                f"cannot read the weights of '{checkpoint.source}': its .bin file holds more than tensors, "
                "and it is loaded with weights_only=True, never unpickled"
            ) from None
        raise CheckpointError(f"cannot read the weights of '{checkpoint.source}': {_one_line(exc)}") from None


def check_weights(source, expected, state, info=None, transposed=()):
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
                "mis-shaped "
                + ", ".join(
                    f"{key} (checkpoint {have}, expected {want})" for key, (have, want) in sorted(misshaped.items())
                )
            )
        raise CheckpointError(f"the weights of '{source}' do not match its GPT-2 config: {'; '.join(problems)}")


def expected_hf_shapes(config, layers):
    """{key: shape} of the GPT2LMHeadModel weights config.json describes, for the given layers, as stored
    (Conv1D weights (in, out))."""
    e, inner = config.n_embd, config.n_inner or 4 * config.n_embd
    shapes = {"transformer.wte.weight": (config.vocab_size, e), "transformer.wpe.weight": (config.n_positions, e)}
    shapes.update({"transformer.ln_f.weight": (e,), "transformer.ln_f.bias": (e,)})
    for i in layers:
        for name, shape in [
            ("ln_1.weight", (e,)),
            ("ln_1.bias", (e,)),
            ("attn.c_attn.weight", (e, 3 * e)),
            ("attn.c_attn.bias", (3 * e,)),
            ("attn.c_proj.weight", (e, e)),
            ("attn.c_proj.bias", (e,)),
            ("ln_2.weight", (e,)),
            ("ln_2.bias", (e,)),
            ("mlp.c_fc.weight", (e, inner)),
            ("mlp.c_fc.bias", (inner,)),
            ("mlp.c_proj.weight", (inner, e)),
            ("mlp.c_proj.bias", (e,)),
        ]:
            shapes[f"transformer.h.{i}.{name}"] = shape
    return shapes


def weight_files(directory):
    """The safetensors files a checkpoint directory's weights are in: model.safetensors, or the shards its index
    names (where they lie), or none when it has neither. A malformed index is a CheckpointError."""
    single = os.path.join(directory, transformers.utils.SAFE_WEIGHTS_NAME)
    index = os.path.join(directory, transformers.utils.SAFE_WEIGHTS_INDEX_NAME)
    if os.path.lexists(single):
        return [single]
    if not os.path.lexists(index):
        return []
    return sorted(
        os.path.join(directory, f) for f in index_shards(directory, transformers.utils.SAFE_WEIGHTS_INDEX_NAME)
    )


def index_shards(directory, name):
    """The file names a weight index (`name`, in `directory`) gives its tensors' shards, each once; a
    malformed index is a CheckpointError."""
    value = _read_json_file(directory, os.path.join(directory, name), name)
    weight_map = value.get("weight_map") if isinstance(value, dict) else None
    if not (isinstance(weight_map, dict) and all(isinstance(f, str) and f for f in weight_map.values())):
        raise CheckpointError(f"the {name} of '{directory}' is malformed: it has no weight_map from tensors to files")
    return set(weight_map.values())


def check_weight_headers(checkpoint):
    """Refuses safetensors weights that lack what config.json describes, from the files' headers alone, before
    transformers builds the model: a config.json claiming a million layers would take minutes and all memory first."""
    source, config = checkpoint.source, checkpoint.hf_config
    shapes = {}
    for path in weight_files(source):
        if not os.path.exists(path):
            raise CheckpointError(f"cannot read the weights of '{source}': {path} does not exist")
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise CheckpointError(f"cannot read the weights of '{source}': {path} is not a regular file")
        try:
            with safe_open(path, "pt") as f:
                shapes.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
        except Exception:  # a broken file: transformers reads it next and says what is wrong
            return
    if not shapes:
        return
    # Keys as GPT2LMHeadModel names them; the Hub's gpt2 stores the transformer's without its prefix.
    prefixed = ("transformer.", "lm_head.")
    shapes = {key if key.startswith(prefixed) else f"transformer.{key}": shape for key, shape in shapes.items()}
    layers = [key.split(".")[2] for key in shapes if key.startswith("transformer.h.")]
    held = {int(layer) for layer in layers if layer.isdigit()}
    held = sorted(i for i in held if i < config.n_layer)
    if len(held) < config.n_layer:
        missing = _missing_ranges(held, config.n_layer)
        raise CheckpointError(
            f"the weights of '{source}' do not match its GPT-2 config: config.json says n_layer {config.n_layer}, "
            f"they hold {len(held)} layers; missing transformer.h.N for N in {missing}"
        )
    expected = expected_hf_shapes(config, held)
    holders = {key: _Shape(shape) for key, shape in shapes.items() if key != "lm_head.weight"}  # tied to wte
    check_weights(source, expected, holders)


@dataclass(frozen=True)
class _Shape:
    shape: tuple  # what check_weights reads of a tensor


def _missing_ranges(held, count):
    """The numbers 0 to count - 1 not in `held` (sorted, each below count), as ranges: "2 to 999999"."""
    runs, start = [], 0
    for i in held + [count]:
        if i > start:
            runs.append(str(start) if i - 1 == start else f"{start} to {i - 1}")
        start = i + 1
    return ", ".join(runs[:5]) + (", ..." if len(runs) > 5 else "")


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


# Where transformers finds a model's weights: one of these files (an index, with the shards it lists).
WEIGHT_FILES = (
    transformers.utils.SAFE_WEIGHTS_NAME,
    transformers.utils.SAFE_WEIGHTS_INDEX_NAME,
    transformers.utils.WEIGHTS_NAME,
    transformers.utils.WEIGHTS_INDEX_NAME,
)


def _from_pretrained(cls, checkpoint, **kwargs):
    """cls.from_pretrained, from the local Hub cache when the weights are there (no network needed), else downloaded."""
    _quiet_transformers()
    source = checkpoint.source
    if checkpoint.is_local or any(
        isinstance(huggingface_hub.try_to_load_from_cache(source, name), str) for name in WEIGHT_FILES
    ):
        try:
            with progress.step(f"Reading the weights of '{source}'"):
                return cls.from_pretrained(source, local_files_only=True, **kwargs)
        except OSError:
            if checkpoint.is_local:
                raise
            # A shard that the cache lacks: downloaded below.
    _check_hub_answers(source)
    with progress.step(f"Downloading the weights of '{source}' from the Hugging Face Hub"):
        try:
            return cls.from_pretrained(source, **kwargs)
        except OSError as exc:
            raise _hub_unavailable(source, exc) from None


def _checkpoint_file(directory, name):
    """The path of a checkpoint directory's file."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"checkpoint directory '{directory}' does not exist")
    path = os.path.join(directory, name)
    if not os.path.lexists(path):  # anything else there, reading says what is wrong with it
        raise CheckpointError(f"'{directory}' is not a checkpoint directory: it has no {name}")
    return path


def _hub_file(repo, name):
    """The path of a Hub repository's file in the local Hub cache, downloaded there first if it is not."""
    _quiet_transformers()
    try:
        return huggingface_hub.hf_hub_download(repo, name, local_files_only=True)
    except HFValidationError as exc:
        raise CheckpointError(f"'{repo}' is neither a checkpoint directory nor a Hub id: {_one_line(exc)}") from None
    except LocalEntryNotFoundError:
        pass
    _check_hub_answers(repo)
    with progress.step(f"Downloading the {name} of '{repo}' from the Hugging Face Hub"):
        try:
            return huggingface_hub.hf_hub_download(repo, name)
        except OSError as exc:
            raise _hub_unavailable(repo, exc) from None


def _check_hub_answers(repo):
    """Raises HubUnavailable, in seconds, where the Hub cannot be reached: offline, no network, or no
    connection within HF_HUB_ETAG_TIMEOUT seconds. For a file it has no copy of, huggingface_hub retries
    for about 25 s (waiting 1, 2, 4, 8 and 8 s) before it gives up. A Hub that answers, even slowly or
    with an error, is left to the download and its retries."""
    try:
        huggingface_hub.get_hf_file_metadata(
            huggingface_hub.hf_hub_url(repo, "config.json"), timeout=huggingface_hub.constants.HF_HUB_ETAG_TIMEOUT
        )
    except (HfHubHTTPError, ReadTimeout):
        pass  # answered (even "no such repository"), or slow to: the download waits longer, and reports
    except Exception as exc:  # unreachable, in the HTTP client's own exceptions (or OfflineModeIsEnabled)
        raise _hub_unavailable(repo, exc) from None


def _hub_unavailable(repo, exc):
    return HubUnavailable(
        f"cannot fetch '{repo}' from the Hugging Face Hub and it is not in the local cache "
        f"({type(exc).__name__}: {_one_line(exc)}); pass --checkpoint DIR with a local copy of the model"
    )


def _json(value):
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _one_line(exc):
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
