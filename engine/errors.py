"""Errors the engine raises on purpose, and the messages they (and its notices) are made of.

Every error a user can cause is an :class:`EngineError` whose message is one clear line, so the
CLI can print it without a traceback and the app can show it as a notice.

The engine serves scripts as well as the CLI, so a message never spells a CLI flag: it is a
:class:`Message` whose settings (``attn_group``) and ways on that name a command (resuming a
session) are parts of their own. ``str()`` words them as a script knows them (``attn_group 24
is not whole KV groups ...``); mptui words the same parts as its flags and commands
(``--attn-group 24 ...``) from one table, mptui/flags.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class Term(StrEnum):
    """What a :class:`Part` of a message is, so a front end knows which parts to word itself."""

    TEXT = "text"  # words as they stand
    SETTING = "setting"  # a setting, by its key (see :func:`setting`)
    RESUME = "resume"  # the way on of a stopped or failed run: resume its session folder
    RECOVER = "recover"  # the way on of a failed run for a recovery: recover its session's plan


#: How a script reads the ways on (a setting reads as its name).
_SCRIPT_WORDS = {
    Term.RESUME: "a resume of {}",
    Term.RECOVER: "a recovery from its session folder",
}


@dataclass(frozen=True)
class Part:
    """One piece of a message: text, a setting's key, or a way on (``value``: its folder)."""

    value: str
    kind: Term = Term.TEXT

    def __str__(self) -> str:
        """The piece in a script's words."""
        if self.kind is Term.SETTING:
            return self.value.rpartition(".")[2]
        if self.kind is Term.TEXT:
            return self.value
        return _SCRIPT_WORDS[self.kind].format(self.value)


def setting(key: str) -> Part:
    """A setting a message names. ``key`` is its name as a script passes it (``attn_group``),
    after a scope where two settings share a name: ``recovery.seqlen`` is the recovery's (the
    ``seqlen`` of ``RecoverySettings``, ``mptui recover --seqlen``), ``seqlen`` the search's."""
    return Part(key, Term.SETTING)


def resume(folder: Path | str) -> Part:
    """The way on of a stopped or failed run: resume the session in ``folder``."""
    return Part(str(folder), Term.RESUME)


#: The way on of a failed run for a recovery: recover the plan its session folder keeps.
RECOVER_SESSION = Part("", Term.RECOVER)


@dataclass(frozen=True)
class Message:
    """What the engine says, as parts a front end can word its own way; ``str()`` is the
    message as a script reads it."""

    parts: tuple[Part, ...] = ()

    @classmethod
    def of(cls, *pieces: object) -> Message:
        """``pieces`` joined: a message or an engine error brings its parts, a :class:`Part`
        itself, anything else its ``str()`` as text."""
        parts: list[Part] = []
        for piece in pieces:
            if isinstance(piece, EngineError):
                piece = piece.message
            for part in piece.parts if isinstance(piece, Message) else (_part(piece),):
                if part.kind is Term.TEXT and parts and parts[-1].kind is Term.TEXT:
                    part = Part(parts[-1].value + part.value)  # one text part between terms
                    parts.pop()
                parts.append(part)
        return cls(tuple(parts))

    @property
    def worded(self) -> bool:
        """Whether it names a setting or a way on (else its text is all there is to it)."""
        return any(part.kind is not Term.TEXT for part in self.parts)

    def __str__(self) -> str:
        return "".join(map(str, self.parts))


def _part(piece: object) -> Part:
    return piece if isinstance(piece, Part) else Part(str(piece))


class EngineError(Exception):
    """A problem the user can fix; ``str(error)`` is a complete sentence as a script reads it,
    ``error.message`` the same sentence in parts (the CLI words its settings as flags).

    Built of pieces as :meth:`Message.of` joins them:
    ``BadInput(setting("seqlen"), f" {seqlen} must be 1 or more")``."""

    def __init__(self, *pieces: object) -> None:
        super().__init__(*pieces)  # the pieces again on unpickling (a worker's error)
        self.message = Message.of(*pieces)

    def __str__(self) -> str:
        return str(self.message)


class BadInput(EngineError):
    """A setting, path or file given by the user is not usable."""


class UnsupportedModel(EngineError):
    """The model's architecture has no adapter, or is not shaped as its adapter expects."""


class CalibrationError(BadInput):
    """The calibration source is missing, empty, or too short for one chunk."""


class Cancelled(EngineError):
    """A long operation (an evaluation) was cut short because the run was told to stop."""


class OutOfMemory(EngineError):
    """The device ran out of memory; the message says what to lower."""


class DeviceFailed(EngineError):
    """The device failed mid-run (not out of memory): the step in progress is lost, every
    committed step is kept, and the message says how to resume."""


class DiskFull(EngineError):
    """A write found no space left (ENOSPC, EDQUOT); the message names the folder and the file.
    Nothing half-written is left behind: every writer writes whole or cuts back."""


class ResultNotSaved(EngineError):
    """A side result (an evaluation's scores) could not be saved; the run goes on."""


__all__ = [
    "RECOVER_SESSION",
    "BadInput",
    "CalibrationError",
    "Cancelled",
    "DeviceFailed",
    "DiskFull",
    "EngineError",
    "Message",
    "OutOfMemory",
    "Part",
    "ResultNotSaved",
    "Term",
    "UnsupportedModel",
    "resume",
    "setting",
]
