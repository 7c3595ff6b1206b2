"""Events and commands as JSON lines, for a run served on a socket (docs/engine.md, *Wire
protocol*). Torch-free, so ``mptui attach`` starts without loading a model stack.

Every line is one JSON object: an event is ``{"event": CLASS, "time": ..., FIELDS}`` (the shape
of ``events.jsonl``), a command ``{"command": CLASS, FIELDS}``. The field types of the dataclass
say how to read a value back (tuples stay tuples, an enum is its value, a nested
:class:`EvalRequest` is rebuilt), so the round trip is exact; a ``dict`` field is a JSON object
as it stands. A :class:`PlanStep` is the plan file's entry (:meth:`PlanStep.to_dict`), not its
dataclass fields: the JSON every version of the protocol has sent. A class is known by its name
in :mod:`.events` or :mod:`.commands`: a new event or command needs no change here.

Besides events and commands, the session layer has a few lines of its own: ``hello``,
``welcome``, ``refused``, and, once the search is over, ``{"ping": {"n": N}}`` from the server,
which a client answers with ``{"pong": {"n": N}}``: the server's only way to tell a client that
reads (an app looking at the result) from one that never will (which must not keep the run).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from typing import Any, Union

from ..errors import BadInput
from ..output.eval_request import EvalRequest
from ..recovery import events as recovery_events
from ..recovery.settings import RecoverySettings
from ..search.plan import PlanStep
from . import commands, events

#: The version of the protocol; a client and a server that differ refuse each other clearly.
PROTOCOL = 1


def _classes(module: types.ModuleType, base: type) -> dict[str, type]:
    return {
        name: value
        for name, value in vars(module).items()
        if isinstance(value, type) and issubclass(value, base) and value is not base
    }


EVENTS: dict[str, type[events.Event]] = {
    **_classes(events, events.Event),
    **_classes(recovery_events, events.Event),
}
COMMANDS: dict[str, type[commands.Command]] = _classes(commands, commands.Command)


def encode_event(event: events.Event) -> bytes:
    """One line (newline included) for ``event``."""
    return _line({"event": type(event).__name__, **_fields(event)})


def encode_command(command: commands.Command) -> bytes:
    return _line({"command": type(command).__name__, **_fields(command)})


def encode_message(kind: str, body: dict) -> bytes:
    """A line of the session layer (``hello``, ``welcome``, ``refused``), not an engine value."""
    return _line({kind: body})


def encode_ping(number: int) -> bytes:
    """The server asks: have you read this far?"""
    return encode_message("ping", {"n": number})


def encode_pong(number: int) -> bytes:
    """The client's answer to ping ``number``."""
    return encode_message("pong", {"n": number})


def ping_number(body: Any) -> int | None:
    """The number of a ``ping`` or ``pong`` line's body; None when it has none."""
    if isinstance(body, dict) and type(body.get("n")) is int:
        return body["n"]
    return None


def decode(line: bytes | str) -> tuple[str, Any]:
    """``("event", Event)``, ``("command", Command)``, or ``(kind, body)`` for a session line.

    Raises :class:`BadInput` with one line on anything else (not JSON, an unknown class, a field
    missing or of the wrong shape).
    """
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadInput(f"not a protocol line ({error})") from None
    if not isinstance(data, dict) or not data:
        raise BadInput("not a protocol line (not a JSON object)")
    for kind, known in (("event", EVENTS), ("command", COMMANDS)):
        if kind in data:
            name = data.pop(kind)
            if name not in known:
                raise BadInput(f"unknown {kind} {name!r}")
            return kind, _build(known[name], data)
    if len(data) != 1:
        raise BadInput(f"not a protocol line (keys {sorted(data)})")
    ((kind, body),) = data.items()
    return kind, body


def encode_value(value: Any) -> Any:
    """A dataclass (an :class:`EvalRequest` in a welcome) as plain JSON values."""
    return _plain(value)


def decode_value(cls: type, value: Any) -> Any:
    """The inverse of :func:`encode_value` for a value of type ``cls``."""
    return _convert(cls, value)


@dataclasses.dataclass(frozen=True)
class Welcome:
    """What the server tells a client first: who serves, and what the app's keys act on."""

    pid: int
    host: str
    session: str
    guided: bool
    export_dir: str
    eval_request: EvalRequest | None
    recovery: RecoverySettings | None = None  # what r recovers with (--recover-data)

    def to_dict(self) -> dict:
        return {**encode_value(self), "protocol": PROTOCOL}

    @classmethod
    def from_dict(cls, data: dict) -> Welcome:
        fields = {k: v for k, v in data.items() if k != "protocol"}
        return decode_value(cls, fields)


# --- the conversions -----------------------------------------------------------------------------
def _line(data: dict) -> bytes:
    return (json.dumps(data, separators=(",", ":")) + "\n").encode()


def _fields(obj: Any) -> dict:
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _plain(value: Any) -> Any:
    if isinstance(value, PlanStep):  # a dataclass whose JSON is the plan file's, not its fields
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields(value)
    if isinstance(value, (tuple, list)):
        return [_plain(item) for item in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: dict) -> Any:
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name])
    try:
        return cls(**values)
    except TypeError as error:
        raise BadInput(f"bad {cls.__name__} ({error})") from None


def _convert(hint: Any, value: Any) -> Any:
    """``value`` read from JSON, as the type ``hint`` says."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [arg for arg in args if arg is not type(None)]
        return _convert(hint, value)
    if origin is tuple or hint is tuple:
        if not isinstance(value, list):
            raise BadInput(f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item) for item in value)
        if args:
            return tuple(_convert(arg, item) for arg, item in zip(args, value, strict=True))
        return tuple(value)
    if hint is PlanStep:
        return _plan_step(value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise BadInput(f"expected an object for {hint.__name__}, got {value!r}")
        return _build(hint, value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise BadInput(f"unknown {hint.__name__} {value!r}") from None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _plan_step(value: Any) -> PlanStep:
    """A plan entry read back; a damaged one is the line's one clear error, not a traceback."""
    if not isinstance(value, dict):
        raise BadInput(f"expected an object for PlanStep, got {value!r}")
    try:
        return PlanStep.from_dict(value)
    except KeyError as error:
        raise BadInput(f"bad PlanStep (no {error.args[0]!r})") from None
    except (TypeError, ValueError, AttributeError) as error:
        raise BadInput(f"bad PlanStep ({' '.join(str(error).split())})") from None


__all__ = [
    "COMMANDS",
    "EVENTS",
    "PROTOCOL",
    "Welcome",
    "decode",
    "decode_value",
    "encode_command",
    "encode_event",
    "encode_message",
    "encode_ping",
    "encode_pong",
    "encode_value",
    "ping_number",
]
