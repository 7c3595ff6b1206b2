"""Errors the engine raises on purpose.

Every error a user can cause is an :class:`EngineError` whose message is one clear line, so the
CLI can print it without a traceback and the app can show it as a notice.
"""


class EngineError(Exception):
    """A problem the user can fix; ``str(error)`` is a complete sentence."""


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
