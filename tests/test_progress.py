"""progress.py: long steps say what they do on a terminal, and nothing in a pipe."""

import io
import re

import pytest

import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_step_says_what_it_does_and_how_long_it_took_on_a_terminal(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with progress.step("Compiling the model"):
        pass
    assert re.fullmatch(r"Compiling the model \.\.\. \d+\.\d s\n", terminal.getvalue())


def test_a_failed_step_leaves_the_error_a_line_of_its_own(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with pytest.raises(KeyboardInterrupt):
        with progress.step("Reading the weights"):
            raise KeyboardInterrupt
    assert terminal.getvalue() == "Reading the weights ...\n"


def test_nothing_is_said_in_a_pipe(monkeypatch):
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    with progress.step("Compiling the model"):
        pass
    assert list(progress.bar(range(3), "scoring")) == [0, 1, 2]
    assert pipe.getvalue() == ""
