"""perplexity.py: transformers' perplexity on the same windows, the same number run to run, clear errors."""

import math
import os
import re
import shutil
import subprocess
import sys

import nvtripy as tp
import pytest
import safetensors.torch
import torch
from helpers import REPO_ROOT
from transformers import GPT2LMHeadModel

import cli
import generate
import perplexity
import progress
import weight_loader
from checkpoint import open_checkpoint
from errors import UserError
from sampling import NonFiniteLogits
from tokenizer import load_encoding

PERPLEXITY = os.path.join(REPO_ROOT, "perplexity.py")
TEXT = (
    "Beautiful is better than ugly. Explicit is better than implicit. Simple is better than complex.\n"
    "Complex is better than complicated. Flat is better than nested. Sparse is better than dense.\n"
    "Readability counts. Special cases aren't special enough to break the rules.\n"
)
RESULT = re.compile(
    r"\APerplexity of '.*' under .* \((?P<precision>[^)]*)\): (?P<ppl>\d+\.\d{4})\n"
    r"Scored (?P<scored>\d+) tokens in (?P<windows>\d+) windows"
)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "zen.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def run_perplexity(*args, env):
    return subprocess.run(
        [sys.executable, PERPLEXITY, "--backend", os.environ.get("TRIPY_EXAMPLE_BACKEND", "auto"), *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_perplexity_is_transformers_on_the_same_windows(quant_checkpoints, text_file):
    directory = quant_checkpoints["quant-256"]
    encoding = load_encoding(directory, is_directory=True)
    tokens = perplexity.read_tokens(text_file, encoding)
    chunks = perplexity.windows(tokens, 64)
    assert [len(c) for c in chunks[:-1]] == [64] * (len(chunks) - 1) and sum(map(len, chunks)) == len(tokens)
    model = weight_loader.load_model(open_checkpoint(directory), tp.float32)
    forward = generate.compile_forward(model, 64, 64)
    window_logits = (generate.forward_logits(forward, torch.tensor([chunk], dtype=torch.int32)) for chunk in chunks)
    ours, scored = perplexity.perplexity(chunks, window_logits, encoding.n_vocab)

    hf_model = GPT2LMHeadModel.from_pretrained(directory).eval()
    total = 0.0
    with torch.no_grad():
        for chunk in chunks:
            ids = torch.tensor([chunk])
            total += hf_model(ids, labels=ids).loss.item() * (len(chunk) - 1)  # the mean over the chunk's targets
    assert scored == len(tokens) - len(chunks)
    assert ours == pytest.approx(math.exp(total / scored), rel=1e-5)


def test_same_number_run_to_run(quant_checkpoints, text_file, offline_env):
    """Quantized (calibration included) and not: two runs print the same perplexity to the last digit."""
    directory = quant_checkpoints["quant-256"]
    for mode in ([], ["--quant-mode", "int4-weight-only", "--calib-samples", "2"]):
        first, second = (
            run_perplexity("--checkpoint", directory, "--text-file", text_file, *mode, env=offline_env)
            for _ in range(2)
        )
        assert first.returncode == 0, first.stderr
        match = RESULT.match(first.stdout)
        assert match, first.stdout
        assert match.group("precision") == ("int4-weight-only, float32" if mode else "float32")
        assert RESULT.match(second.stdout).group("ppl") == match.group("ppl")
        assert (
            1 < float(match.group("ppl")) < 10 * 321
        )  # the tiny tokenizer's vocabulary: near chance for random weights
        assert ("Calibrating int4-weight-only on 2 samples" in first.stdout) == bool(mode)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--text-file", "{one_token}"], "holds 1 token(s): perplexity needs at least 2"),
        (["--text-file", "{text}", "--context", "1"], "--context must be from 2 to 1048576, not 1"),
        (["--text-file", "{text}", "--calib-file", "{text}"], "give --quant-mode too"),
        (["--text-file", "{text}", "--quant-mode", "int4-weight-only"], "(64) is not a multiple of 128"),
        (["--text-file", "{text}", "--quant-mode", "float8", "--calib-file", "{one_token}.missing"], "does not exist"),
    ],
)
def test_bad_input_is_a_usage_error(tiny_checkpoint, text_file, tmp_path, args, expected):
    one_token = tmp_path / "one.txt"
    one_token.write_text("a")
    args = [a.format(one_token=one_token, text=text_file) for a in args]
    with pytest.raises(UserError, match=re.escape(expected)):
        perplexity.main(["--checkpoint", tiny_checkpoint, *args])


def test_bad_input_on_the_command_line_is_one_error_line(tiny_checkpoint, offline_env):
    result = run_perplexity("--checkpoint", tiny_checkpoint, "--text-file", "nowhere.txt", env=offline_env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr == "error: --text-file 'nowhere.txt' does not exist\n" and result.stdout == ""


def log_softmax_nlls(logits, tokens, vocab_size):
    """What perplexity.py computed before token_nlls: every position's log-probabilities over the whole
    vocabulary, in float64, and the next token's taken."""
    log_probs = torch.log_softmax(logits[0, :-1, :vocab_size].double(), dim=-1)
    return -log_probs.gather(1, torch.tensor(tokens[1:])[:, None])[:, 0]


@pytest.mark.parametrize(
    "scale, offset, dtype",
    [
        (1, 0, torch.float32),
        (30, 0, torch.float32),
        (1e4, 0, torch.float32),
        (1, 1e6, torch.float32),
        (1, -1e6, torch.float32),
        (8, 0, torch.float16),
    ],
)
def test_token_nlls_are_the_log_softmax_formula(monkeypatch, scale, offset, dtype):
    """Equal to float64's last digits, on small and large logits; the ids from vocab_size on, which would
    be the most likely, get no probability."""
    generator = torch.Generator().manual_seed(0)
    positions, width, vocab_size = 11, 409, 400
    logits = (offset + scale * torch.randn(1, positions, width, generator=generator, dtype=torch.float64)).to(dtype)
    logits[..., vocab_size:] = logits.max() + 10
    tokens = torch.randint(0, vocab_size, (positions,), generator=generator).tolist()
    monkeypatch.setattr(perplexity, "BLOCK_BYTES", 3 * 8 * vocab_size)  # blocks of 3, 3, 3 and 1 rows
    nlls = perplexity.token_nlls(logits, tokens, vocab_size)
    assert nlls.dtype == torch.float64
    torch.testing.assert_close(nlls, log_softmax_nlls(logits, tokens, vocab_size), rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_logits_are_an_error_naming_the_window_and_position(value):
    """nan or inf among a position's logits, or -inf as its next token's: the first such position is
    named. -inf for another token is a probability of 0, not an error."""
    generator = torch.Generator().manual_seed(0)
    chunks = [list(range(8)), list(range(8, 16)), list(range(16, 21))]
    logits = [torch.randn(1, len(chunk), 32, generator=generator) for chunk in chunks]
    logits[0][0, 2, 30] = -math.inf
    logits[1][0, 4, chunks[1][5] if value == "-inf" else 30] = float(value)  # window 2, position 5: the text's token 13
    logits[2][0, 1, 30] = math.nan
    expected = f"the model's logits are {value} in window 2 of 3 at position 5 (token 13 of the text)"
    with pytest.raises(NonFiniteLogits, match=re.escape(expected)):
        perplexity.perplexity(chunks, iter(logits), 32)


@pytest.fixture
def nan_checkpoint(quant_checkpoints, tmp_path):
    """The quant-256 checkpoint with one weight of its final LayerNorm nan: every logit is nan."""
    directory = tmp_path / "nan-weight"
    shutil.copytree(quant_checkpoints["quant-256"], directory)
    weights = safetensors.torch.load_file(directory / "model.safetensors")
    weights["transformer.ln_f.weight"][0] = math.nan
    safetensors.torch.save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    return str(directory)


def test_nan_weights_are_one_error_line_naming_the_window(nan_checkpoint, text_file, offline_env):
    result = run_perplexity("--checkpoint", nan_checkpoint, "--text-file", text_file, env=offline_env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr.count("error:") == 1
    error = result.stderr.splitlines()[-1]
    assert error.startswith(
        "error: the model's logits are nan in window 1 of 4 at position 1 (token 1 of the text): "
    ), error


def test_a_watched_run_says_it_compiles_and_shows_the_windows_scored(tiny_checkpoint, text_file, monkeypatch, capfd):
    """Where someone watches stderr, the seconds of compiling and scoring are not silent."""
    monkeypatch.setattr(progress, "shown", lambda: True)
    backend = os.environ.get("TRIPY_EXAMPLE_BACKEND", "auto")
    args = ["--checkpoint", tiny_checkpoint, "--text-file", text_file, "--context", "64", "--backend", backend]
    assert perplexity.main(args) == 0
    out, err = capfd.readouterr()
    windows = int(RESULT.match(out).group("windows"))
    assert "Compiling the model ... " in err and "Scoring the windows: " in err and f"/{windows} [" in err


def test_endoftext_in_the_text_is_the_special_token_as_in_prompts(tiny_checkpoint, tmp_path):
    """perplexity.py read <|endoftext|> as plain text where example.py read the special token; both read it as
    AutoTokenizer does."""
    import example
    from transformers import AutoTokenizer

    from checkpoint import open_checkpoint

    text = "Hello<|endoftext|>world"
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    checkpoint = open_checkpoint(tiny_checkpoint)
    tokens = perplexity.read_tokens(str(tmp_path / "text.txt"), checkpoint.encoding)
    assert tokens == AutoTokenizer.from_pretrained(tiny_checkpoint).encode(text)
    assert checkpoint.hf_config.vocab_size - 1 in tokens  # the tiny tokenizer's <|endoftext|>
    args = example.parse_args(["--checkpoint", tiny_checkpoint, "--input-text", text])
    assert example.encode_prompt(args, checkpoint) == tokens


NOT_REGULAR = [("/dev/zero", "is a character device, not a regular file"), (".", "is a directory, not a regular file")]


@pytest.mark.parametrize("path, message", NOT_REGULAR)
def test_a_text_file_that_is_not_a_regular_file_is_refused_at_once(tiny_checkpoint, path, message):
    """--text-file /dev/zero read forever."""
    from checkpoint import open_checkpoint

    with pytest.raises(cli.UsageError) as error:
        perplexity.read_tokens(path, open_checkpoint(tiny_checkpoint).encoding)
    assert str(error.value) == f"--text-file '{path}' {message}"


def test_a_text_file_larger_than_the_bound_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    from checkpoint import open_checkpoint

    (tmp_path / "big.txt").write_text("word " * 1000)
    monkeypatch.setattr(perplexity, "MAX_TEXT_BYTES", 4096)
    with pytest.raises(cli.UsageError, match=r"^--text-file '.*big.txt' is larger than 4096 bytes$"):
        perplexity.read_tokens(str(tmp_path / "big.txt"), open_checkpoint(tiny_checkpoint).encoding)
