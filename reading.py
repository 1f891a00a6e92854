"""Reading the files the program is given, before it trusts them: only regular files (a FIFO would wait
forever, /dev/zero never ends), no larger than a bound, and JSON nested no deeper than a bound (Python's
parser and what later walks the value recurse, and would hit its recursion limit).

The errors say what is wrong in words that follow the file's name, for the caller's one-line message.
"""

import json
import os
import stat

# Deeper JSON than this is refused: no file this program reads nests more than a few levels.
MAX_JSON_DEPTH = 64
MiB = 2**20


class UnreadableFile(Exception):
    """Why a file cannot be used, as words that follow its name: "is a FIFO, not a regular file"."""


def _kind(mode):
    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device")]
    kinds += [(stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a file")


def _size(limit):
    return f"{limit // MiB} MiB" if limit >= MiB else f"{limit} bytes"


def read_bytes(path, limit):
    """The bytes of the regular file at `path` (links followed), refused when it holds more than `limit`."""
    try:  # O_NONBLOCK: opening a FIFO does not wait for a writer; a regular file ignores it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UnreadableFile("does not exist") from None
    except OSError as exc:
        raise UnreadableFile(f"cannot be read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(f"is {_kind(mode)}, not a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            return bounded(f.read(limit + 1), limit)
    except OSError as exc:
        raise UnreadableFile(f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def bounded(data, limit):
    """`data`, read as up to limit + 1 bytes, refused when it holds more than `limit`."""
    if len(data) > limit:
        raise UnreadableFile(f"is larger than {_size(limit)}")
    return data


def utf8_text(data):
    """The bytes as text; not UTF-8 is refused, saying where."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_text(path, limit):
    """The UTF-8 text of the regular file at `path`, of at most `limit` bytes."""
    return utf8_text(read_bytes(path, limit))


def parse_json(data, object_pairs_hook=None):
    """The JSON value of `data`, refused when it is not JSON or nests deeper than MAX_JSON_DEPTH."""
    try:
        value = json.loads(data, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise UnreadableFile(f"nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # not JSON, or not UTF-8
        raise UnreadableFile(f"is not JSON ({' '.join(str(exc).split())[:200]})") from None
    level, deepest = [value], 0
    while level:  # breadth first, one level at a time: no recursion
        deepest += 1
        if deepest > MAX_JSON_DEPTH:
            raise UnreadableFile(f"nests deeper than {MAX_JSON_DEPTH} levels")
        level = [child for item in level for child in _children(item)]
    return value


def _children(value):
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, (dict, list))]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, (dict, list))]
    return []


def read_json(path, limit, object_pairs_hook=None):
    """The JSON value of the regular file at `path`, of at most `limit` bytes, nested no deeper than MAX_JSON_DEPTH."""
    return parse_json(read_bytes(path, limit), object_pairs_hook)
