"""engine_cache.py: the engine cache hits, misses on any key change, rebuilds corrupt entries and survives
concurrent writers. It goes through Executable.save and Executable.load on whichever backend the session
uses, as it does for TensorRT, on random tiny checkpoints."""

import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import nvtripy as tp
import pytest
import torch
from helpers import BACKEND, REPO_ROOT
import safetensors.torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import engine_cache
import generate
import quantization
import weight_loader
from checkpoint import Checkpoint, open_checkpoint
from quantization import QUANT_MODES
from sampling import Sampling
from tokenizer import load_encoding

PROMPT = "Hello, my name is"
DTYPES = {"float32": tp.float32, "float16": tp.float16}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cached_greedy(prefill, decode, prompt, max_new_tokens):
    return [
        tokens[0]
        for tokens in generate.generate(
            generate.Compiled(prefill, decode), prompt, max_new_tokens, Sampling(0.0, 1), torch.Generator()
        )
    ]


def load_or_compile(directory, cache_dir, dtype="float32"):
    return generate.load_or_compile(open_checkpoint(directory), DTYPES[dtype], None, BACKEND, True, str(cache_dir))


def compiled_anew(compiled):
    return not compiled.from_engine_cache


def loaded(compiled):
    return compiled.from_engine_cache and compiled.save_seconds is None


@pytest.fixture(scope="module")
def cached_entry(tiny_checkpoint, tmp_path_factory):
    """An engine cache holding the tiny checkpoint's compiled functions: (cache dir, its first run's results)."""
    cache_dir = tmp_path_factory.mktemp("engine-cache")
    return cache_dir, load_or_compile(tiny_checkpoint, cache_dir)


def entries(cache_dir):
    return sorted(n for n in os.listdir(cache_dir) if not n.endswith(".json"))


def test_a_second_run_loads_what_the_first_saved(tiny_checkpoint, cached_entry):
    cache_dir, first = cached_entry
    assert compiled_anew(first) and first.save_seconds is not None and first.seconds > 0
    assert len(entries(cache_dir)) == 1
    second = load_or_compile(tiny_checkpoint, cache_dir)
    assert loaded(second) and second.seconds > 0
    assert second.weight_bytes == first.weight_bytes
    prompt = load_encoding(tiny_checkpoint, is_directory=True).encode(PROMPT)
    assert cached_greedy(second.prefill, second.decode, prompt, 20) == cached_greedy(
        first.prefill, first.decode, prompt, 20
    )


def test_the_command_line_reuses_the_engine_on_its_second_run(tiny_checkpoint, offline_env, tmp_path):
    command = [
        sys.executable,
        os.path.join(REPO_ROOT, "example.py"),
        "--backend",
        BACKEND,
        "--checkpoint",
        tiny_checkpoint,
    ]
    command += [
        "--input-text",
        PROMPT,
        "--seed",
        "0",
        "--engine-cache",
        "--engine-cache-dir",
        str(tmp_path / "engines"),
    ]
    env = dict(offline_env, OMP_NUM_THREADS="1")
    first, second = [subprocess.run(command, env=env, capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "Saving it to the engine cache took" in first.stdout
    assert "Loaded the compiled model from the engine cache in" in second.stdout
    response = lambda result: result.stdout.split("\n")[0]
    assert response(first) == response(second) and response(first).startswith(f"Response: {PROMPT}")


def test_checkpoint_files_are_identified_by_content(tiny_checkpoint, tmp_path, monkeypatch):
    """A directory's files are hashed once (then remembered by size, times and inode), a Hub cache's blobs too;
    tokenizer files are left out; with no weights yet there is no identity."""
    import huggingface_hub

    hashed = []
    monkeypatch.setattr(
        engine_cache, "sha256_of_file", lambda path: hashed.append(path) or f"sha256 of {os.path.basename(path)}"
    )
    cache_dir = str(tmp_path / "engines")
    local = Checkpoint(tiny_checkpoint, True, hf_config=None, encoding=None)
    identity = engine_cache.checkpoint_identity(local, cache_dir)
    assert identity == {"config.json": "sha256 of config.json", "model.safetensors": "sha256 of model.safetensors"}
    assert engine_cache.checkpoint_identity(local, cache_dir) == identity and len(hashed) == 2

    hub = tmp_path / "hub"
    repo = hub / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    blob_names = {"config.json": "c" * 40, "model.safetensors": "5" * 64, "vocab.json": "d" * 40}
    for name, blob in blob_names.items():
        (repo / "blobs" / blob).write_bytes(open(os.path.join(tiny_checkpoint, name), "rb").read())
        (snapshot / name).symlink_to(f"../../blobs/{blob}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    hub = lambda repo: Checkpoint(repo, False, hf_config=None, encoding=None)
    # By content, not by the blob's name: a blob rewritten in place keeps its name.
    assert engine_cache.checkpoint_identity(hub("org/tiny"), cache_dir) == {
        "config.json": "sha256 of " + "c" * 40,
        "model.safetensors": "sha256 of " + "5" * 64,
    }
    assert len(hashed) == 4
    assert engine_cache.checkpoint_identity(hub("org/tiny"), cache_dir) and len(hashed) == 4  # remembered
    (snapshot / "model.safetensors").unlink()
    assert engine_cache.checkpoint_identity(hub("org/tiny"), cache_dir) is None  # weights not downloaded yet
    assert engine_cache.checkpoint_identity(hub("org/absent"), cache_dir) is None


def test_a_rewritten_hub_blob_changes_the_key(tiny_checkpoint, tmp_path):
    """A blob is named by the hash of what was downloaded; rewritten in place, it kept its name, and the old engine
    was served for new weights."""
    snapshot = tmp_path / "models--org--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    blob = tmp_path / "models--org--tiny" / "blobs" / ("5" * 64)
    blob.parent.mkdir()
    shutil.copyfile(os.path.join(tiny_checkpoint, "model.safetensors"), blob)
    (snapshot / "model.safetensors").symlink_to(blob)
    shutil.copyfile(os.path.join(tiny_checkpoint, "config.json"), snapshot / "config.json")
    local = Checkpoint(str(snapshot), True, hf_config=None, encoding=None)
    before = engine_cache.checkpoint_identity(local, str(tmp_path / "engines"))
    weights = load_file(str(blob))
    weights["transformer.ln_f.bias"] += 1
    save_file(weights, str(blob), metadata={"format": "pt"})
    after = engine_cache.checkpoint_identity(local, str(tmp_path / "engines"))
    assert after["model.safetensors"] != before["model.safetensors"] and after["config.json"] == before["config.json"]


def test_every_shard_an_index_names_is_in_the_key_wherever_it_lies(tiny_checkpoint, tmp_path):
    directory, elsewhere = tmp_path / "sharded", tmp_path / "elsewhere"
    directory.mkdir()
    elsewhere.mkdir()
    shutil.copyfile(os.path.join(tiny_checkpoint, "config.json"), directory / "config.json")
    weights = load_file(os.path.join(tiny_checkpoint, "model.safetensors"))
    names = sorted(weights)
    first = "model-00001-of-00002.safetensors"
    save_file({k: weights[k] for k in names[:5]}, str(directory / first), metadata={"format": "pt"})
    save_file({k: weights[k] for k in names[5:]}, str(elsewhere / "shard.safetensors"), metadata={"format": "pt"})
    weight_map = {k: first for k in names[:5]} | {k: "../elsewhere/shard.safetensors" for k in names[5:]}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    local = Checkpoint(str(directory), True, hf_config=None, encoding=None)
    cache_dir = str(tmp_path / "engines")
    before = engine_cache.checkpoint_identity(local, cache_dir)
    assert set(before) == {"config.json", "model.safetensors.index.json", first, "../elsewhere/shard.safetensors"}
    save_file({k: weights[k] + 1 for k in names[5:]}, str(elsewhere / "shard.safetensors"), metadata={"format": "pt"})
    after = engine_cache.checkpoint_identity(local, cache_dir)
    assert after["../elsewhere/shard.safetensors"] != before["../elsewhere/shard.safetensors"]


def base_parts(directory, cache_dir):
    checkpoint = open_checkpoint(directory)
    bounds = generate.shape_bounds(weight_loader.gpt_config(checkpoint))
    return engine_cache.key_parts(checkpoint, str(cache_dir), tp.float32, None, bounds, 1, BACKEND)


KEY_CHANGES = {
    "dtype": lambda p: p.update(dtype=str(tp.float16)),
    "quant mode": lambda p: p.update(quantization={"mode": "int8-weight-only"}),
    "calibration": lambda p: p.update(quantization={"mode": "int8-weight-only", "calibration_tokens_sha256": "0" * 64}),
    "shape bounds": lambda p: p["shape_bounds"].update(prefill_tokens=[1, 64, 512]),
    "batch size": lambda p: p.update(batch_size=2),
    "nvtripy version": lambda p: p["environment"].update(nvtripy="0.1.8"),
    "TensorRT version": lambda p: p["environment"].update(tensorrt="10.99.0"),
    "GPU": lambda p: p["environment"].update(gpu="NVIDIA H200, compute capability 9.0"),
    "backend": lambda p: p["environment"].update(backend="tensorrt" if BACKEND == "cpu" else "cpu"),
    "program source": lambda p: p.update(source="0" * 64),
    "a checkpoint file": lambda p: p["checkpoint"].update({"model.safetensors": "0" * 64}),
}


@pytest.mark.parametrize("change", list(KEY_CHANGES))
def test_any_change_to_the_key_parts_misses(tiny_checkpoint, cached_entry, change):
    cache_dir, _ = cached_entry
    parts = base_parts(tiny_checkpoint, cache_dir)
    assert engine_cache.load(str(cache_dir), parts, ("prefill", "decode")) is not None  # the unchanged parts hit
    changed = copy.deepcopy(parts)
    KEY_CHANGES[change](changed)
    assert engine_cache.entry_key(changed) != engine_cache.entry_key(parts)
    assert engine_cache.load(str(cache_dir), changed, ("prefill", "decode")) is None


def copy_of(checkpoint, directory):
    os.makedirs(directory)
    for name in os.listdir(checkpoint):
        with open(os.path.join(checkpoint, name), "rb") as src, open(os.path.join(directory, name), "wb") as dst:
            dst.write(src.read())
    return str(directory)


def test_changed_weights_and_another_dtype_compile_anew(tiny_checkpoint, cached_entry, tmp_path):
    cache_dir, _ = cached_entry
    checkpoint = copy_of(tiny_checkpoint, tmp_path / "changed")
    weights = load_file(os.path.join(checkpoint, "model.safetensors"))
    weights["transformer.ln_f.bias"] += 0.5
    save_file(weights, os.path.join(checkpoint, "model.safetensors"), metadata={"format": "pt"})
    assert compiled_anew(load_or_compile(checkpoint, cache_dir))
    assert compiled_anew(load_or_compile(tiny_checkpoint, cache_dir, "float16"))
    assert loaded(load_or_compile(tiny_checkpoint, cache_dir))


def test_weights_rewritten_in_place_with_their_old_times_compile_anew(tiny_checkpoint, tmp_path):
    """cp -p, touch -r and rsync --times give a rewritten file its old modification time, and a write in
    place keeps its inode: with the same size, only the change time tells that the weights changed."""
    checkpoint, cache_dir = copy_of(tiny_checkpoint, tmp_path / "checkpoint"), tmp_path / "engines"
    prompt = [5, 6, 7]
    # Taken now: the old functions may read their weights from a mapping of the file rewritten below.
    old_compiled = load_or_compile(checkpoint, cache_dir)
    old = cached_greedy(old_compiled.prefill, old_compiled.decode, prompt, 8)
    path = os.path.join(checkpoint, "model.safetensors")
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    weights = load_file(path)
    weights["transformer.ln_f.weight"] = -weights["transformer.ln_f.weight"]
    data = safetensors.torch.save(weights, metadata=metadata)
    before = os.stat(path)
    assert len(data) == before.st_size
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)

    new = load_or_compile(checkpoint, cache_dir)
    assert compiled_anew(new)
    uncached = generate.load_or_compile(open_checkpoint(checkpoint), tp.float32, None, BACKEND, False)
    assert (
        cached_greedy(new.prefill, new.decode, prompt, 8)
        == cached_greedy(uncached.prefill, uncached.decode, prompt, 8)
        != old
    )
    assert loaded(load_or_compile(checkpoint, cache_dir))


def _truncate(entry):
    path = os.path.join(entry, "decode.json")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _flip_a_byte(entry):
    """A change that still parses: only the recorded digest can tell."""
    path = os.path.join(entry, "prefill.json")
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle] = ord("A") if data[middle] != ord("A") else ord("B")
    open(path, "wb").write(bytes(data))


def _garble_the_record(entry):
    open(os.path.join(entry, "entry.json"), "w").write("{not json")


def _stale_record(entry):
    path = os.path.join(entry, "entry.json")
    record = json.load(open(path))
    record["parts"]["environment"]["nvtripy"] = "0.0.1"
    json.dump(record, open(path, "w"))


def _missing_file(entry):
    os.remove(os.path.join(entry, "decode.json"))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte, _garble_the_record, _stale_record, _missing_file])
def test_a_corrupt_or_stale_entry_is_rebuilt_with_a_warning(tiny_checkpoint, tmp_path, capfd, damage):
    # capfd, not capsys: nvtripy's compiler leaves sys.stderr replaced by a stream of its own on file descriptor 2.
    cache_dir = tmp_path / "engines"
    first = load_or_compile(tiny_checkpoint, cache_dir)
    [entry] = entries(cache_dir)
    damage(os.path.join(cache_dir, entry))
    capfd.readouterr()

    rebuilt = load_or_compile(tiny_checkpoint, cache_dir)
    warning = capfd.readouterr().err
    assert compiled_anew(rebuilt) and rebuilt.save_seconds is not None
    assert re.fullmatch(r"warning: the engine cache entry .* is unusable \(.*\); rebuilding it\n", warning), warning
    prompt = [5, 6, 7]
    assert cached_greedy(rebuilt.prefill, rebuilt.decode, prompt, 8) == cached_greedy(
        first.prefill, first.decode, prompt, 8
    )
    assert entries(cache_dir) == [entry]
    assert loaded(load_or_compile(tiny_checkpoint, cache_dir))


WRITER = """
import os, sys, time
sys.path.insert(0, {root!r})
import backend
backend.select_backend({backend!r})
import nvtripy as tp
import generate
from checkpoint import open_checkpoint
# Start together once all have imported, so that all of them miss, compile and write.
open(os.path.join({barrier!r}, str(os.getpid())), "w").close()
while len(os.listdir({barrier!r})) < {writers} and time.time() < {deadline}:
    time.sleep(0.01)
compiled = generate.load_or_compile(open_checkpoint({checkpoint!r}), tp.float32, None, {backend!r}, True, {cache_dir!r})
print("saved" if compiled.save_seconds is not None else "not saved")
"""


def test_concurrent_writers_leave_one_whole_entry(tiny_checkpoint, tmp_path):
    import time

    cache_dir, barrier = str(tmp_path / "engines"), tmp_path / "barrier"
    barrier.mkdir()
    script = WRITER.format(
        root=REPO_ROOT,
        backend=BACKEND,
        barrier=str(barrier),
        writers=3,
        deadline=time.time() + 120,
        checkpoint=tiny_checkpoint,
        cache_dir=cache_dir,
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    results = [writer.communicate(timeout=300) for writer in writers]
    assert all(writer.returncode == 0 for writer in writers), results
    assert all("warning" not in stderr for _, stderr in results), results
    assert all(stdout == "saved\n" for stdout, _ in results), results  # all missed and wrote
    assert [n for n in os.listdir(cache_dir) if n.startswith(".") or "removing" in n] == []
    assert len(entries(cache_dir)) == 1
    assert loaded(load_or_compile(tiny_checkpoint, cache_dir))


def test_a_failed_calibration_writes_nothing(quant_checkpoints, tmp_path, monkeypatch):
    """Calibration happens before anything is compiled or saved: when it fails, the engine cache gets no
    entry (the key's file digests aside) and the checkpoint is untouched."""
    directory = quant_checkpoints["quant-256"]
    before = {name: os.stat(os.path.join(directory, name)).st_mtime_ns for name in os.listdir(directory)}

    def fail(*args, **kwargs):
        raise RuntimeError("calibration failed")

    monkeypatch.setattr(quantization, "modelopt_quantize", fail)
    cache = tmp_path / "engine-cache"
    checkpoint = open_checkpoint(directory)
    quant = quantization.prepare(checkpoint, QUANT_MODES["int8-weight-only"], num_samples=2)
    with pytest.raises(RuntimeError, match="calibration failed"):
        generate.load_or_compile(checkpoint, tp.float32, quant, BACKEND, True, str(cache))
    assert not cache.exists() or set(os.listdir(cache)) <= {"file-digests.json"}
    assert {name: os.stat(os.path.join(directory, name)).st_mtime_ns for name in os.listdir(directory)} == before


def test_the_cache_is_off_by_default_on_the_cpu(tiny_checkpoint, tmp_path):
    cache_dir = tmp_path / "engines"
    compiled = generate.load_or_compile(
        open_checkpoint(tiny_checkpoint), tp.float32, None, BACKEND, None, str(cache_dir)
    )
    assert compiled.save_seconds is None if BACKEND == "cpu" else compiled.save_seconds is not None
    assert cache_dir.exists() == (BACKEND == "tensorrt")


def leftovers(cache_dir):
    """What runs write or delete in the cache directory for a while: staging paths and entries set aside."""
    return sorted(n for n in os.listdir(cache_dir) if n.startswith(".writing-") or ".removing-" in n)


def test_an_interrupted_save_leaves_nothing_and_stays_interrupted(tiny_checkpoint, tmp_path, monkeypatch):
    cache_dir, save, saved = tmp_path / "engines", tp.Executable.save, []

    def interrupted_on_the_second_function(executable, path):
        saved.append(path)
        if len(saved) == 2:
            open(path, "wb").write(b'{"half written')
            raise KeyboardInterrupt
        save(executable, path)

    monkeypatch.setattr(tp.Executable, "save", interrupted_on_the_second_function)
    with pytest.raises(KeyboardInterrupt):
        load_or_compile(tiny_checkpoint, cache_dir)
    assert len(saved) == 2
    assert os.listdir(cache_dir) == ["file-digests.json"]


STALLED_WRITER = """
import os, sys, time
sys.path.insert(0, {root!r})
import backend
backend.select_backend({backend!r})
import nvtripy as tp
import generate
from checkpoint import open_checkpoint
save = tp.Executable.save

def stalled(executable, path):  # stops after the first function, until told to go on
    save(executable, path)
    open({stalled!r}, "w").close()
    deadline = time.time() + 300
    while not os.path.exists({go!r}) and time.time() < deadline:
        time.sleep(0.05)
    tp.Executable.save = save

tp.Executable.save = stalled
compiled = generate.load_or_compile(open_checkpoint({checkpoint!r}), tp.float16, None, {backend!r}, True, {cache_dir!r})
print("saved" if compiled.save_seconds is not None else "not saved")
"""


@contextlib.contextmanager
def stalled_writer(checkpoint, cache_dir, tmp_path):
    """A run that saves its float16 functions to `cache_dir` and stops in the middle, until (tmp_path / "go")
    exists: (the process, once it has stopped, and its staging directory). Killed on leaving, if alive."""
    stalled, go = tmp_path / "stalled", tmp_path / "go"
    script = STALLED_WRITER.format(
        root=REPO_ROOT,
        backend=BACKEND,
        stalled=str(stalled),
        go=str(go),
        checkpoint=checkpoint,
        cache_dir=str(cache_dir),
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    writer = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 300
        while not stalled.exists() and writer.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert stalled.exists(), "the writer did not get to saving"
        [staging] = [n for n in leftovers(cache_dir) if os.path.isdir(os.path.join(cache_dir, n))]
        yield writer, staging
    finally:
        writer.kill()


def test_a_killed_writers_staging_directory_is_removed_by_the_next_run(tiny_checkpoint, tmp_path):
    cache_dir = tmp_path / "engines"
    assert compiled_anew(load_or_compile(tiny_checkpoint, cache_dir))
    with stalled_writer(tiny_checkpoint, cache_dir, tmp_path) as (writer, staging):
        writer.send_signal(signal.SIGKILL)
        writer.communicate(timeout=60)
    assert leftovers(cache_dir) == [staging] and os.listdir(os.path.join(cache_dir, staging))

    assert loaded(load_or_compile(tiny_checkpoint, cache_dir))
    assert leftovers(cache_dir) == []


def test_a_live_writers_staging_directory_is_kept_while_dead_ones_go(tiny_checkpoint, tmp_path):
    """Another run removes the leftovers of dead ones (staging paths as a killed writer leaves them, an
    entry set aside for deletion) and leaves the staging directory of a writer still at work."""
    cache_dir = tmp_path / "engines"
    assert compiled_anew(load_or_compile(tiny_checkpoint, cache_dir))
    [entry] = entries(cache_dir)
    with stalled_writer(tiny_checkpoint, cache_dir, tmp_path) as (writer, staging):
        dead = tempfile.mkdtemp(prefix=f".writing-{entry}-", dir=cache_dir)
        open(os.path.join(dead, "prefill.json"), "w").write('{"half written')
        os.close(tempfile.mkstemp(prefix=".writing-", dir=cache_dir)[0])  # of file-digests.json
        aside = os.path.join(cache_dir, f"{entry}.removing-12345-0a1b2c3d")
        os.makedirs(aside)
        open(os.path.join(aside, "decode.json"), "w").write("{}")
        assert len(leftovers(cache_dir)) == 4

        assert loaded(load_or_compile(tiny_checkpoint, cache_dir))
        assert leftovers(cache_dir) == [staging]
        assert writer.poll() is None
        (tmp_path / "go").touch()
        stdout, stderr = writer.communicate(timeout=300)
    assert writer.returncode == 0 and stdout == "saved\n" and "warning" not in stderr, stderr
    assert leftovers(cache_dir) == []
    assert loaded(load_or_compile(tiny_checkpoint, cache_dir, "float16"))


def test_a_new_staging_path_that_another_runs_cleanup_locks_first_is_left_to_it(tmp_path):
    """Between making a staging path and locking it, another run's cleanup may take the lock, as it would a
    dead writer's, and delete the path: the writer then makes and locks another."""
    made, cleanup = [], []

    def make():
        made.append(tempfile.mkdtemp(prefix=".writing-", dir=tmp_path))
        if len(made) == 1:
            cleanup.append(engine_cache._lock(made[0]))
        return made[-1]

    staging, lock = engine_cache._new_staging(make)
    assert cleanup[0] is not None and staging == made[1] and lock is not None
    assert engine_cache._lock(staging) is None  # held by its writer
    engine_cache.remove_leftovers(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(path) for path in made)  # both locked
    os.close(lock)
    os.close(cleanup[0])
    engine_cache.remove_leftovers(str(tmp_path))
    assert os.listdir(tmp_path) == []
