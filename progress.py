"""Says on stderr what a long step is doing while it runs, so that a first run is never silent.

Shown where someone is watching: when stderr is a terminal, as git shows its progress. In a pipe or a
log, bad input stays one `error:` line and the output stays the results alone.
"""

import contextlib
import sys
import time

from tqdm import tqdm


def shown():
    return sys.stderr.isatty()


@contextlib.contextmanager
def step(what):
    """`with step("Loading the weights"):` prints "Loading the weights ..." and, when the step is done,
    how long it took."""
    if not shown():
        yield
        return
    print(f"{what} ...", end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        print(file=sys.stderr, flush=True)  # the error starts on a line of its own
        raise
    print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def bar(iterable, what, total=None, unit="it"):
    """A tqdm progress bar over `iterable` on stderr, shown as `step` is."""
    return tqdm(iterable, desc=what, total=total, unit=unit, file=sys.stderr, disable=not shown(), leave=False)
