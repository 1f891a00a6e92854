"""Compiled functions saved on disk and reused by the next run, keyed by everything that changes them.

Building TensorRT engines for GPT-2 takes far longer than loading them, and the compiled prefill and
decode functions depend on nothing a run chooses at run time (generate.shape_bounds), so they can be
reused. This module holds the keys and the entries: `key_parts` says what an entry depends on, `load`
finds one, `save` writes one; the run decides whether to use the cache and compiles on a miss.
An entry is a directory <cache dir>/<key>/ holding one file per function, written by Executable.save
(the same call on TensorRT and on the CPU executor), and entry.json, which records the key's parts,
each file's SHA-256 and facts about the model (its weight bytes, for the speed report).

The key is the SHA-256 of its parts (see key_parts): the checkpoint's files by content, the dtype,
the quantization, the shape bounds, the versions of nvtripy and of the backend, the GPU, and the
source files of this program that decide what gets compiled. A file's digest is remembered only until
its change time moves, which every write does, so an entry is never served for weights other than
those it was built from.

Writes are atomic: an entry is written to a temporary directory beside it and renamed into place,
so a reader sees a whole entry or none, and when two runs write the same key, one rename wins and
the other run drops its copy. A write that is interrupted deletes what it wrote; what a killed run
left, the next run deletes (remove_leftovers), telling it from a live run's work by the lock a writer
holds. An entry that fails to load, whose files' digests differ from those it recorded, or whose
recorded parts differ from the key's, is removed with a warning and rebuilt: it is never used.
"""

import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time

import nvtripy as tp
import torch

import progress
import torch_executor
from checkpoint import CheckpointError, index_shards

ENTRY_FORMAT = 2  # bump when the layout of an entry changes
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin", ".index.json")  # what transformers reads weights from
# The source files whose code decides what is compiled: a change to any of them changes the key.
SOURCE_FILES = ("model.py", "generate.py", "checkpoint.py", "weight_loader.py", "quantization.py", "quant_modes.py")
REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
STAGING_PREFIX = ".writing-"  # of what is being written in the cache directory, to be renamed into place
SET_ASIDE = ".removing-"  # in the name of an entry that remove() renamed to delete it


def default_dir():
    """$TRIPY_ENGINE_CACHE_DIR, else tripy-gpt2-engines in the user's cache directory."""
    if os.environ.get("TRIPY_ENGINE_CACHE_DIR"):
        return os.environ["TRIPY_ENGINE_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tripy-gpt2-engines")


def warn(message):
    # Flushed: after a compile, sys.stderr is a buffered stream nvtripy put there (its redirect_stderr).
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --- the key -------------------------------------------------------------------------------------------


def sha256_of_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def file_digest(path, memo):
    """A content hash of a checkpoint file (links followed), hashed again whenever its stamp changes; `memo`
    keeps {real path: stamp and digest}. A Hugging Face cache's blobs/<hash> name is not trusted: a blob
    rewritten in place keeps its name.

    The stamp holds the change time, which every write sets to the clock and nothing can set back: a
    file rewritten in place with its old size and modification time (cp -p, touch -r, rsync --times)
    still gets a new stamp."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    known = memo.get(real)
    if not (isinstance(known, dict) and known.get("stamp") == stamp):
        memo[real] = known = {"stamp": stamp, "sha256": sha256_of_file(real)}
    return known["sha256"]


def checkpoint_directory(checkpoint):
    """Where the checkpoint's files are: the directory itself, or the Hub snapshot in the local cache
    (None when not cached yet: then the first run downloads it and computes the key after loading)."""
    if checkpoint.is_local:
        return checkpoint.source
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(checkpoint.source, "config.json")
    return os.path.dirname(config) if isinstance(config, str) else None


def checkpoint_identity(checkpoint, cache_dir):
    """{file name: content digest} of config.json and the weight files, each shard an index names among them
    (by the name it gives, wherever the shard lies), or None if the weights are not on this machine yet.
    Tokenizer files do not change an engine, so they are left out."""
    directory = checkpoint_directory(checkpoint)
    if directory is None or not os.path.isdir(directory):
        return None
    names = {n for n in os.listdir(directory) if n == "config.json" or n.endswith(WEIGHT_FILE_SUFFIXES)}
    if not any(n.endswith(WEIGHT_FILE_SUFFIXES) for n in names):
        return None
    for index in [n for n in names if n.endswith(".index.json")]:
        try:
            names |= index_shards(directory, index)
        except CheckpointError:
            pass  # loading the weights says what is wrong with it
    if not all(os.path.exists(os.path.join(directory, n)) for n in names):
        return None  # a shard not downloaded yet
    names = sorted(names)
    memo_path = os.path.join(cache_dir, "file-digests.json")
    read = _read_json(memo_path, default={})
    # Records as file_digest keeps them; what older versions of this program kept is dropped.
    memo = {path: record for path, record in read.items() if isinstance(record, dict)} if isinstance(read, dict) else {}
    identity = {name: file_digest(os.path.join(directory, name), memo) for name in names}
    if memo != read:
        try:
            _write_json_atomically(memo_path, memo)
        except OSError:
            pass  # the memo only saves time
    return identity


def environment(backend_name):
    """What the engine was built with: nvtripy and the backend's versions, and on TensorRT the GPU."""
    env = {"backend": backend_name, "nvtripy": _version("nvtripy")}
    if backend_name == "tensorrt":
        env["tensorrt"] = _version("tensorrt") or __import__("tensorrt").__version__
        env["mlir-tensorrt"] = sorted(
            f"{d.metadata['Name']}=={d.version}"
            for d in importlib.metadata.distributions()
            if (d.metadata["Name"] or "").lower().replace("_", "-").startswith("mlir-tensorrt")
        )
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = f"{props.name}, compute capability {props.major}.{props.minor}"
    else:
        # The executor's program holds PyTorch tensors and names of its own ops, and its weights packed
        # for the kernels the CPU's features chose.
        env["torch"] = torch.__version__
        env["cpu"] = torch_executor.cpu_features()
    return env


def source_digest(backend_name):
    """SHA-256 over this program's files that decide what is compiled (the executor's too, on the CPU:
    its constant folding runs at compile time)."""
    paths = [os.path.join(REPO_ROOT, name) for name in SOURCE_FILES]
    if backend_name == "cpu":
        paths += torch_executor.source_files()
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            digest.update(os.path.relpath(path, REPO_ROOT).encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def key_parts(checkpoint, cache_dir, dtype, quant, shape_bounds, batch_size, backend_name):
    """Everything that changes the compiled functions, as plain JSON-able values, or None while the
    checkpoint's weights are not on this machine (a Hub model before its first download). `quant` is a
    quantization.Quantization or None: its mode and calibration tokens change the weights."""
    checkpoint_files = checkpoint_identity(checkpoint, cache_dir)
    if checkpoint_files is None:
        return None
    return {
        "format": ENTRY_FORMAT,
        "checkpoint": checkpoint_files,
        "dtype": str(dtype),
        "quantization": quant.cache_key() if quant else None,
        "shape_bounds": {name: list(bounds) for name, bounds in shape_bounds.items()},
        "batch_size": batch_size,
        "environment": environment(backend_name),
        "source": source_digest(backend_name),
    }


def entry_key(parts):
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:40]


# --- entries -------------------------------------------------------------------------------------------


def load(cache_dir, parts, names):
    """(executables by name, info dict) from the entry for `parts`, or None on a miss. A corrupt or
    stale entry is removed with a warning and counts as a miss."""
    entry = os.path.join(cache_dir, entry_key(parts))
    if not os.path.isdir(entry):
        return None
    try:
        with progress.step("Loading the compiled model from the engine cache"):
            with open(os.path.join(entry, "entry.json")) as f:
                recorded = json.load(f)
            if recorded.get("parts") != json.loads(json.dumps(parts)):
                raise ValueError("it was built for different key parts (stale)")
            executables = {}
            for name in names:
                path = os.path.join(entry, f"{name}.json")
                if sha256_of_file(path) != recorded["files"][f"{name}.json"]:
                    raise ValueError(f"{name}.json does not have the digest recorded when it was written")
                executables[name] = tp.Executable.load(path)
        return executables, recorded["info"]
    except Exception as exc:  # whatever fails, the entry must not be used
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        warn(f"the engine cache entry {entry} is unusable ({type(exc).__name__}: {reason}); rebuilding it")
        remove(entry)
        return None


def save(cache_dir, parts, executables, info):
    """Writes the entry for `parts` atomically; returns its path, or None (with a warning) if it could
    not be written. Saving is never worth failing a run for, but an interrupt still ends the run, once
    the half-written entry is removed."""
    entry = os.path.join(cache_dir, entry_key(parts))
    try:
        os.makedirs(cache_dir, exist_ok=True)
        staging, lock = _new_staging(
            lambda: tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.path.basename(entry)}-", dir=cache_dir)
        )
    except OSError as exc:
        warn(f"cannot write to the engine cache {cache_dir} ({exc}); the compiled engines are not saved")
        return None
    try:
        with progress.step("Saving the compiled model to the engine cache"):
            files = {}
            for name, executable in executables.items():
                path = os.path.join(staging, f"{name}.json")
                executable.save(path)
                _fsync(path)
                files[f"{name}.json"] = sha256_of_file(path)
            _write_json_atomically(os.path.join(staging, "entry.json"), {"parts": parts, "files": files, "info": info})
            try:
                os.rename(staging, entry)  # atomic; fails if another run has put the entry there first
            except OSError:
                if not os.path.isdir(entry):
                    raise
                shutil.rmtree(staging, ignore_errors=True)  # theirs is as good as ours
        return entry
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if not isinstance(exc, Exception):
            raise  # KeyboardInterrupt: the run ends as it would have
        warn(f"cannot save the compiled engines to {entry} ({type(exc).__name__}: {exc})")
        return None
    finally:
        _unlock(lock)


def remove(entry):
    """Moves an entry aside in one rename, so no reader sees it half deleted, then deletes it."""
    trash = f"{entry}{SET_ASIDE}{os.getpid()}-{os.urandom(4).hex()}"
    try:
        os.rename(entry, trash)
    except OSError:
        return  # already gone, or replaced
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(cache_dir):
    """Deletes what runs that were killed left in the cache directory: the staging paths whose writer is
    gone, and entries set aside by remove().

    A writer holds an exclusive lock on its staging path for as long as it writes; the kernel drops
    the lock when the writer dies, so a staging path whose lock can be taken is a dead writer's. An entry
    set aside is deleted whoever deletes it: readers find entries by key and never by that name, and
    when its remover is still deleting it too, both only make it gone."""
    try:
        names = os.listdir(cache_dir)
    except OSError:
        return
    for name in names:
        path = os.path.join(cache_dir, name)
        if name.startswith(STAGING_PREFIX):
            try:
                lock = _lock(path)
            except OSError:
                continue  # no telling whether its writer is alive
            if lock is not None:
                try:
                    _delete(path)
                finally:
                    _unlock(lock)
        elif SET_ASIDE in name:
            _delete(path)


# --- helpers -------------------------------------------------------------------------------------------


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _fsync(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _read_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def _write_json_atomically(path, value):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    staging, lock = _new_staging(lambda: _closed(tempfile.mkstemp(prefix=STAGING_PREFIX, dir=directory)))
    try:
        with open(staging, "w") as f:
            json.dump(value, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    except BaseException:
        _delete(staging)
        raise
    finally:
        _unlock(lock)


def _closed(mkstemp_result):
    fd, path = mkstemp_result
    os.close(fd)
    return path


def _new_staging(make):
    """A new staging path made by `make()`, and the descriptor that holds its lock (remove_leftovers).
    Between `make` and the lock, another run may take the lock, as it would a dead writer's, and delete
    the path: then another one is made. Where the file system cannot lock, the path is not locked (and
    no run can lock it to delete it either)."""
    for _ in range(100):
        path = make()
        try:
            lock = _lock(path)
        except OSError:
            return path, None
        if lock is not None:
            return path, lock
    raise OSError(f"another run deleted each new staging path in {os.path.dirname(path)} before it was locked")


def _lock(path):
    """A descriptor of `path` holding an exclusive lock on it, or None when another process holds the
    lock or `path` is no longer there (or no longer the file locked). OSError where it cannot be locked."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        ours = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except (BlockingIOError, FileNotFoundError):
        ours = False
    except BaseException:
        os.close(fd)
        raise
    if ours:
        return fd
    os.close(fd)
    return None


def _unlock(lock):
    if lock is not None:
        os.close(lock)


def _delete(path):
    """Deletes a file or a directory tree, as far as it can: what is left is only garbage."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass
