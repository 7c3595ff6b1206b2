"""What ``mptui`` and its subcommands share: the parser whose usage errors are one line and
whose help is plain text, the options more than one command takes (each defined here once),
``did you mean``, the one-line error, and progress lines on stderr.

Imported by all of them, it imports none of them, and nothing heavy: ``mptui --help`` must not
load torch.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .flags import cli_words

#: The exit status of bad input (a usage error or input the engine rejected).
BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """Usage errors are one line on stderr and exit status 2, like every other bad input; the
    help is plain text (module docstrings serve as descriptions: their backticks go)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(BAD_INPUT, f"mptui: error: {message}\n")

    def format_help(self) -> str:
        return plain(super().format_help())


#: Markup a docstring or a Rich string may bring into ``--help``: backticks, ``[bold]`` tags.
_MARKUP = re.compile(r"`+|\[/?(?:bold|italic|dim|b|i|u|reverse)\]|\[/\]")


def plain(text: str) -> str:
    """``text`` without markup: ````mptui eval```` reads ``mptui eval``."""
    return _MARKUP.sub("", text)


# Options more than one command takes, each defined here once; a command passes what differs
# (its default as the help states it).

#: What ``--dtype`` takes (the engine checks it when the model loads).
DTYPE_CHOICES = "auto, float32, float16, bfloat16"


def add_dtype(parser, default: str | None, says: str = "%(default)s") -> None:
    """``--dtype``: the precision the model loads in; ``says`` is the default as help shows it."""
    parser.add_argument(
        "--dtype", default=default, metavar="DTYPE", help=f"{DTYPE_CHOICES} (default: {says})"
    )


def add_device(parser, examples: str = "cuda, cpu") -> None:
    """``--device``: where the model loads."""
    parser.add_argument(
        "--device", default=None, metavar="DEVICE", help=f"{examples} (default: cuda if present)"
    )


def add_theme(parser) -> None:
    """``--theme``: the app's colours (``mptui`` and ``mptui attach``)."""
    from mptui.engine.api import DEFAULT_THEME

    parser.add_argument(
        "--theme",
        default=None,
        metavar="NAME",
        help=f"mptui-dark, mptui-light, mptui-high-contrast or your own (default: {DEFAULT_THEME})",
    )


def add_seed(parser, what: str) -> None:
    """``--seed``: ``what`` it seeds."""
    from mptui.engine.api import DEFAULT_SEED

    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, metavar="SEED",
        help=f"{what} (default: %(default)s)",
    )  # fmt: skip


def add_gguf_type(parser, what: str) -> None:
    """``--gguf-type``: the weight type of a GGUF file; ``what`` ends with its default."""
    from mptui.engine.api import GGUF_TYPES

    parser.add_argument("--gguf-type", choices=GGUF_TYPES, default=None, help=what)


def add_listen(parser, what: str) -> None:
    """``--listen HOST:PORT``: serve a headless run on TCP too, for ``mptui attach`` from
    another machine; ``what`` starts its help."""
    parser.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help=f"{what}, behind a printed token, for mptui attach (default: the session "
        "folder's socket only)",
    )


def add_lm_eval_options(parser, seqlen_metavar: str = "N") -> None:
    """What lm-eval and the rolling perplexity take in ``mptui eval``, ``compare`` and
    ``report``: ``--tasks``, ``--include-path``, ``--limit``, ``--seqlen``, ``--batch-size``."""
    from mptui.engine.api import DEFAULT_EVAL_BATCH_SIZE, DEFAULT_SEQLEN

    parser.add_argument("--tasks", default=None, metavar="a,b", help="lm-eval tasks to score")
    parser.add_argument(
        "--include-path", default=None, metavar="DIR", help="folder of local task YAML files"
    )
    parser.add_argument(
        "--limit", type=int, default=None, metavar="N", help="documents per task (default: all)"
    )
    parser.add_argument(
        "--seqlen", type=int, default=DEFAULT_SEQLEN, metavar=seqlen_metavar,
        help="rows of the rolling perplexity (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_EVAL_BATCH_SIZE, metavar="N",
        help="lm-eval batch size (default: %(default)s)",
    )  # fmt: skip


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``; did you mean 'export'?`` when ``word`` is close to one of ``choices``, else ``''``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def print_error(message: object, status: int = BAD_INPUT) -> int:
    """``mptui: error: MESSAGE`` as one line on stderr, in the CLI's words (an engine error or
    ``Error`` event names its settings as flags); returns ``status`` (the exit status)."""
    text = " ".join(cli_words(message).split())
    print(f"mptui: error: {text}", file=sys.stderr, flush=True)
    return status


#: The exit status of a fault the input did not cause (a lost device).
FAULT = 1


class Doing:
    """What a command that loads a model is doing now (``loading the model``, ``evaluating the
    pruned model``), for the line a lost device ends it with: the error itself cannot say."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __call__(self, what: str) -> None:
        self.what = what


def print_failure(error: Exception, doing: Doing, session: Path | None, again: str) -> int:
    """The one line of what ended ``mptui eval`` or ``mptui export``, and its exit status: a
    lost device (also when lm-eval's error was raised from one) says what it was doing and
    ``again`` (how to finish), 1; the engine's own errors, 2 (a full disk among them, as
    docs/engine.md states). Any other error is a bug, raised again for its traceback."""
    from mptui.engine.api import EngineError, device_failed, is_device_failure

    if is_device_failure(error):
        return print_error(device_failed(error, doing.what, session, again=again), FAULT)
    if isinstance(error, EngineError):
        return print_error(error)
    raise error


class ProgressLines:
    """``label: done / total unit (pct)`` lines on stderr, few enough for a log: the first, one
    at each further tenth (or after :attr:`QUIET_S` without one), never two within
    :attr:`MIN_GAP_S`, and always the last (``done == total``)."""

    MIN_GAP_S = 1.0
    QUIET_S = 30.0

    def __init__(
        self,
        label: str,
        unit: str = "requests",
        *,
        amount: Callable[[int], str] = "{:,}".format,
        clock: Callable[[], float] = time.monotonic,
        out=None,
    ) -> None:
        self.label, self.unit, self.amount, self.clock = label, unit, amount, clock
        self.out = out
        self._last_time: float | None = None
        self._last_tenth = -1
        self._finished = False

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        tenth = 10 * done // total if total > 0 else 0
        finished = total > 0 and done >= total
        if finished:
            if self._finished:
                return
        elif self._last_time is not None:
            gap = now - self._last_time
            if gap < self.MIN_GAP_S or (tenth <= self._last_tenth and gap < self.QUIET_S):
                return
        self._last_time, self._last_tenth, self._finished = now, tenth, finished
        share = f" ({done / total:.0%})" if total > 0 else ""
        line = f"{self.label}: {self.amount(done)} / {self.amount(total)} {self.unit}{share}"
        print(line, file=self.out or sys.stderr, flush=True)


def loading_lines(name_or_path: str) -> ProgressLines:
    """``loading NAME: 2 / 3 shards (67%)`` lines, for ``load_model(on_shard=...)``."""
    from mptui.engine.api import model_label

    return ProgressLines(f"loading {model_label(name_or_path)}", "shards")
