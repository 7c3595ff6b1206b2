"""Keeping the libraries' output out of mptui's own: their progress bars and chatter off the
command's lines, and, while the app owns the terminal, everything else in a log file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path


def quiet_libraries() -> None:
    """Progress bars and library chatter would interleave with our output or the screen."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # lm-eval warns at every call about what our use of it implies (a model object passed in,
    # zero-shot set over a task's default); our own progress lines say what runs.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)


def quiet_lm_eval() -> None:
    """What lm-eval writes on the terminal by itself, around our progress lines: a tqdm bar per
    task as it builds its requests, the datasets library's bars as it reads a task's rows, and
    ``fatal: not a git repository`` from the ``git describe`` it runs, with the terminal as its
    stderr, to note the commit of the current folder in results we never read (outside a git
    checkout, git says so on every evaluation). None of it can be turned off by an lm-eval
    option, so the bars are disabled where they are drawn and the git probe is answered with
    "no commit" without running git."""
    import functools

    import datasets
    import lm_eval.api.task
    import lm_eval.evaluator
    from tqdm import tqdm

    datasets.disable_progress_bars()
    lm_eval.api.task.tqdm = functools.partial(tqdm, disable=True)
    lm_eval.evaluator.get_git_commit_hash = _no_commit


def _no_commit() -> None:
    """lm-eval's ``get_git_commit_hash`` without the git process: no commit noted."""
    return None


@contextlib.contextmanager
def terminal_kept_logs_to(path: Path) -> Iterator[None]:
    """While the app owns the terminal, send everything else to ``path``.

    File descriptor 2 (C++ warnings from torch, stray prints of native code) and Python's
    logging and warnings go to the log file, so nothing draws over the screen. Textual draws
    on ``sys.__stderr__``, so that becomes a fresh handle on the terminal first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    saved_fd = os.dup(2)
    original = sys.__stderr__
    terminal = os.fdopen(os.dup(2), "w", encoding="utf-8")
    root = logging.getLogger()
    with path.open("a") as log_file:
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        sys.__stderr__ = terminal
        os.dup2(log_file.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default")
                yield
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            sys.__stderr__ = original
            terminal.close()
            root.removeHandler(handler)
            logging.captureWarnings(False)
