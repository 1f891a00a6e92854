"""checkpoint.py: config.json and the tokenizer, read once and checked, and one clear error for a checkpoint
that is not a GPT-2 this model implements."""

import json
import sys

import pytest
from helpers import BACKEND, REPO_ROOT
from transformers import GPT2Config

from checkpoint import Checkpoint, CheckpointError, open_checkpoint


def test_a_checkpoint_holds_its_config_and_tokenizer(tiny_checkpoint):
    checkpoint = open_checkpoint(tiny_checkpoint)
    assert isinstance(checkpoint, Checkpoint) and checkpoint.is_local and checkpoint.source == tiny_checkpoint
    assert checkpoint.hf_config.n_positions == 128 and checkpoint.hf_config.n_embd == 64
    assert checkpoint.encoding.n_vocab == checkpoint.hf_config.vocab_size


def test_checkpoints_that_are_not_gpt2(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        open_checkpoint(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        open_checkpoint(str(empty))
    (empty / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a GPT-2 checkpoint"):
        open_checkpoint(str(empty))
    (empty / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        open_checkpoint(str(empty))
    GPT2Config(n_layer=1, n_embd=8, n_head=2, activation_function="relu").save_pretrained(str(empty))
    with pytest.raises(CheckpointError, match="activation_function=relu"):
        open_checkpoint(str(empty))


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tiny_checkpoint, tmp_path):
    import shutil

    directory = tmp_path / "small-vocab"
    shutil.copytree(tiny_checkpoint, directory)
    config = json.loads((directory / "config.json").read_text())
    config["vocab_size"] = 100
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"has 321 tokens, more than the model's vocabulary of 100"):
        open_checkpoint(str(directory))


CONFIG_OPENS = """
import sys
sys.path.insert(0, {root!r})
opened = []
import os
sys.addaudithook(
    lambda event, args: event == "open" and os.path.basename(str(args[0])) == "config.json" and opened.append(args[0])
)
import runpy
sys.argv = ["example.py", *{argv!r}]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exit:
    assert not exit.code, exit.code
print("config.json opened", len(opened), "times", file=sys.stderr)
"""


@pytest.mark.parametrize("extra", [[], ["--quant-mode", "int8-weight-only", "--calib-samples", "1"], ["--no-kv-cache"]])
def test_a_run_opens_config_json_once(tiny_checkpoint, offline_env, extra):
    """config.json is read once per run, by open_checkpoint; the weights are loaded with that config."""
    import os
    import subprocess

    argv = [
        "--backend",
        BACKEND,
        "--checkpoint",
        tiny_checkpoint,
        "--input-text",
        "Hi",
        "--max-new-tokens",
        "2",
        *extra,
    ]
    script = CONFIG_OPENS.format(root=REPO_ROOT, argv=argv, script=os.path.join(REPO_ROOT, "example.py"))
    result = subprocess.run(
        [sys.executable, "-c", script], env=offline_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "config.json opened 1 times" in result.stderr, result.stderr


# --- a malformed config.json: one line naming the setting, whatever is wrong with it ---------------------


def setting(name, value):
    return lambda settings: {**settings, name: value}


def without(name):
    return lambda settings: {key: value for key, value in settings.items() if key != name}


# (an edit of a good config.json's settings, what the error says)
MALFORMED_CONFIGS = {
    "null": (lambda settings: None, "it holds null, not an object of settings"),
    "an array": (lambda settings: [settings], "it holds [{"),
    "n_head 0": (setting("n_head", 0), "n_head is 0, not a positive integer"),
    "n_layer -1": (setting("n_layer", -1), "n_layer is -1, not a positive integer"),
    "n_embd a string": (setting("n_embd", "abc"), 'n_embd is "abc", not a positive integer'),
    "n_embd a float": (setting("n_embd", 64.0), "n_embd is 64.0, not a positive integer"),
    "n_layer true": (setting("n_layer", True), "n_layer is true, not a positive integer"),
    "layer_norm_epsilon a string": (
        setting("layer_norm_epsilon", "x"),
        'layer_norm_epsilon is "x", not a positive number',
    ),
    "activation_function null": (setting("activation_function", None), "activation_function is null, not a string"),
    "scale_attn_weights a string": (
        setting("scale_attn_weights", "no"),
        'scale_attn_weights is "no", not true or false',
    ),
    "initializer_range a string": (setting("initializer_range", "x"), "initializer_range"),  # transformers' own check
    **{
        f"no {name}": (without(name), f"{name} is missing")
        for name in ("n_embd", "n_layer", "n_head", "n_positions", "vocab_size")
    },
}


def with_config(source, tmp_path, edit):
    import shutil

    directory = tmp_path / "checkpoint"
    shutil.copytree(source, directory)
    settings = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(edit(settings)))
    return str(directory)


@pytest.mark.parametrize("edit, says", MALFORMED_CONFIGS.values(), ids=MALFORMED_CONFIGS.keys())
def test_a_malformed_config_json_is_one_line_naming_the_setting(tiny_checkpoint, tmp_path, edit, says):
    directory = with_config(tiny_checkpoint, tmp_path, edit)
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(directory)
    message = str(error.value)
    assert message.startswith(f"the config.json of '{directory}' is malformed: ") and says in message
    assert "\n" not in message


@pytest.mark.parametrize("case", ["null", "n_head 0", "n_embd a string", "no n_embd"])
def test_a_malformed_config_json_is_one_error_line_from_the_command(tiny_checkpoint, tmp_path, offline_env, case):
    import subprocess

    edit, says = MALFORMED_CONFIGS[case]
    directory = with_config(tiny_checkpoint, tmp_path, edit)
    argv = ["example.py", "--checkpoint", directory, "--input-text", "hi", "--backend", "cpu"]
    result = subprocess.run(
        [sys.executable, *argv], cwd=REPO_ROOT, env=offline_env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("error: the config.json of") and result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr


# --- a Hub that cannot be reached: the error comes at once, not after huggingface_hub's retries -------------

HUB_CALL = """
import sys, time
sys.path.insert(0, {root!r})
from checkpoint import HubUnavailable, open_checkpoint
start = time.monotonic()
try:
    open_checkpoint("distilgpt2")
except HubUnavailable as error:
    print(error)
print(f"{{time.monotonic() - start:.1f}} s")
"""


def closed_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("endpoint", ["refused", "unresolved"])
def test_a_hub_that_cannot_be_reached_fails_in_seconds(tmp_path, endpoint):
    """No HF_HUB_OFFLINE and an empty cache: the Hub is asked, and does not answer. (huggingface_hub alone
    retries for about 25 s.)"""
    import os
    import subprocess

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "TRANSFORMERS_")) and "proxy" not in key.lower()
    }
    # A port nothing listens on, and a name that never resolves (RFC 6761): no answer, whatever the network.
    env.update(
        HF_HOME=str(tmp_path / "hf-home"),
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}" if endpoint == "refused" else "https://hub.invalid",
    )
    result = subprocess.run(
        [sys.executable, "-c", HUB_CALL.format(root=REPO_ROOT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    message, seconds = result.stdout.splitlines()
    assert (
        message.startswith("cannot fetch 'distilgpt2' from the Hugging Face Hub") and "pass --checkpoint DIR" in message
    )
    assert float(seconds.split()[0]) < 15, message


def checkpoint_with(tiny_checkpoint, directory, **files):
    """A copy of the tiny checkpoint with files written over (name: text or bytes; `__` stands for a dot)."""
    import shutil

    shutil.copytree(tiny_checkpoint, directory)
    for name, content in files.items():
        path = directory / name.replace("__", ".")
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return str(directory)


@pytest.mark.parametrize(
    "generation_config, message",
    [
        ({"eos_token_id": 2**70}, f"eos_token_id {2**70} is not a token id of its tokenizer (0 to 320)"),
        ({"eos_token_id": [5, 321]}, "eos_token_id [5, 321] is not a token id of its tokenizer (0 to 320)"),
        ({"eos_token_id": -1}, "eos_token_id -1 is not a token id"),
        ({"eos_token_id": "5"}, 'eos_token_id "5" is not a token id'),
        ([1, 2], "it holds [1, 2], not an object of settings"),
    ],
)
def test_a_bad_end_of_text_id_is_one_error(tiny_checkpoint, tmp_path, generation_config, message):
    text = json.dumps(generation_config)
    directory = checkpoint_with(tiny_checkpoint, tmp_path / "bad-eos", generation_config__json=text)
    with pytest.raises(CheckpointError) as error:
        open_checkpoint(directory)
    assert str(error.value).startswith(f"the generation_config.json of '{directory}' is malformed: {message}")


def test_end_of_text_ids_come_from_generation_config_else_config(tiny_checkpoint, tmp_path):
    assert open_checkpoint(tiny_checkpoint).eos_token_ids == (320,)
    listed = checkpoint_with(tiny_checkpoint, tmp_path / "listed", generation_config__json='{"eos_token_id": [7, 320]}')
    assert open_checkpoint(listed).eos_token_ids == (7, 320)
    none = checkpoint_with(tiny_checkpoint, tmp_path / "none", generation_config__json='{"bos_token_id": 1}')
    assert open_checkpoint(none).eos_token_ids == ()  # as transformers: the file decides, and names none
    (tmp_path / "none" / "generation_config.json").unlink()
    assert open_checkpoint(none).eos_token_ids == (320,)  # config.json's


DEEP = "[" * 100_000 + "]" * 100_000  # deeper than Python's recursion limit
BAD_VOCABS = [  # vocab.json's text, and the end of the error line
    ("[1, 2]", "is malformed: it holds a list, not an object"),
    ("null", "is malformed: it holds null, not an object"),
    (DEEP, "nests deeper than 64 levels"),
    ('{"a": ' * 70 + "0" + "}" * 70, "nests deeper than 64 levels"),
    ('{"a": 1, "b": 1}', 'is malformed: tokens "a" and "b" have the same id 1'),
    ('{"a": "1"}', 'is malformed: token "a" has id "1", not a whole number >= 0'),
    ('{"a": -3}', 'is malformed: token "a" has id -3, not a whole number >= 0'),
    ('{"a": 1, "a": 2}', 'is malformed: it gives "a" twice'),
]


@pytest.mark.parametrize("vocab, message", BAD_VOCABS, ids=[m.split(":")[-1][:30] for _, m in BAD_VOCABS])
def test_a_malformed_vocab_json_is_one_error(tiny_checkpoint, tmp_path, vocab, message):
    from tokenizer import TokenizerError

    directory = checkpoint_with(tiny_checkpoint, tmp_path / "bad-vocab", vocab__json=vocab)
    with pytest.raises(TokenizerError) as error:
        open_checkpoint(directory)
    assert str(error.value) == f"the vocab.json of '{directory}' {message}"


def test_a_vocab_json_that_is_a_fifo_is_refused_at_once(tiny_checkpoint, tmp_path):
    """Reading it waited forever for a writer."""
    import os

    from tokenizer import TokenizerError

    directory = checkpoint_with(tiny_checkpoint, tmp_path / "fifo")
    os.remove(tmp_path / "fifo" / "vocab.json")
    os.mkfifo(tmp_path / "fifo" / "vocab.json")
    with pytest.raises(TokenizerError, match=r"the vocab.json of '.*' is a FIFO, not a regular file$"):
        open_checkpoint(directory)


JSON_FILES = ["config.json", "generation_config.json", "tokenizer_config.json", "added_tokens.json"]


@pytest.mark.parametrize("name", JSON_FILES)
def test_any_json_file_nested_past_the_recursion_limit_is_one_error(tiny_checkpoint, tmp_path, name):
    from tokenizer import TokenizerError

    directory = checkpoint_with(tiny_checkpoint, tmp_path / "deep", **{name.replace(".", "__"): DEEP})
    with pytest.raises((CheckpointError, TokenizerError)) as error:
        open_checkpoint(directory)
    assert str(error.value) == f"the {name} of '{directory}' nests deeper than 64 levels"


def test_a_config_claiming_more_layers_than_the_weights_is_refused_at_once(tiny_checkpoint, tmp_path):
    """A million layers made transformers build the model for a minute, then fail with MemoryError."""
    import time

    from checkpoint import read_hf_model

    config = json.loads(open(f"{tiny_checkpoint}/config.json").read())
    claims = json.dumps({**config, "n_layer": 1_000_000})
    directory = checkpoint_with(tiny_checkpoint, tmp_path / "layers", config__json=claims)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as error:
        read_hf_model(open_checkpoint(directory), None)
    assert time.perf_counter() - start < 10
    assert str(error.value) == (
        f"the weights of '{directory}' do not match its GPT-2 config: "
        "config.json says n_layer 1000000, they hold 2 layers; missing transformer.h.N for N in 2 to 999999"
    )
    claims = json.dumps({**config, "n_embd": 2**20, "n_head": 1})
    wide = checkpoint_with(tiny_checkpoint, tmp_path / "wide", config__json=claims)
    misshaped = r"mis-shaped transformer.h.0.attn.c_attn.bias \(checkpoint \(192,\), expected \(3145728,\)\)"
    with pytest.raises(CheckpointError, match=misshaped):
        read_hf_model(open_checkpoint(wide), None)
