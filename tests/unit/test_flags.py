"""The engine speaks data, the CLI speaks flags: an engine error names a setting as a script
passes it (``attn_group``), mptui words the same error with its flags (``--attn-group``) from
its one table, mptui/flags.py, and no message the engine raises or notices spells a flag."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from mptui.cli import SUBCOMMANDS
from mptui.engine import errors
from mptui.engine.api import (
    BadInput,
    Message,
    PruneSettings,
    RecoverySettings,
    Term,
    events,
    wire,
)
from mptui.engine.model.device_failure import device_failed
from mptui.flags import COMMANDS, FLAGS, cli_words

ENGINE = Path(__file__).resolve().parents[2] / "engine"


def test_a_script_reads_settings_by_their_python_names_and_the_cli_by_its_flags():
    with pytest.raises(BadInput) as caught:
        PruneSettings.with_distribution(0.2, "30:40:30", attn_group=0)
    assert str(caught.value) == "attn_group 0 must be a positive whole number"
    assert cli_words(caught.value) == "--attn-group 0 must be a positive whole number"
    with pytest.raises(BadInput) as caught:
        RecoverySettings(data="data.txt", seqlen=0)
    assert str(caught.value) == "seqlen must be at least 1"
    assert cli_words(caught.value) == "--seqlen must be at least 1"  # mptui recover's own
    assert caught.value.message.parts[0] == errors.setting("recovery.seqlen")


def test_a_way_on_is_data_the_cli_words_as_its_command():
    lost = device_failed(RuntimeError("CUDA error: unspecified launch failure"), "running", "/s")
    assert str(lost).endswith(
        "the session keeps every committed step: a resume of /s "
        "(on any device: add device cuda:N or device cpu)"
    )
    assert cli_words(lost).endswith(
        "the session keeps every committed step: mptui --resume /s "
        "(on any device: add --device cuda:N or --device cpu)"
    )


def test_an_event_keeps_its_text_and_carries_the_parts_over_the_wire():
    """``message`` stays the text (a script's words); ``parts`` travel with it, so an app
    attached from another process words it as the CLI does. Plain text has no parts."""
    notice = events.Notice.of("export failed: ", BadInput(errors.setting("gguf_type"), " 'q2'"))
    assert notice.message == "export failed: gguf_type 'q2'"
    kind, decoded = wire.decode(wire.encode_event(notice))
    assert kind == "event" and decoded == notice
    assert cli_words(decoded) == "export failed: --gguf-type 'q2'"
    plain = events.Error.of("the run failed")
    assert plain == events.Error("the run failed") and cli_words(plain) == "the run failed"


def test_pieces_join_into_one_message():
    inner = BadInput("x ", errors.setting("seqlen"), " y")
    message = Message.of("a: ", inner, "; ", errors.resume(Path("/s")))
    assert [part.kind for part in message.parts] == [
        Term.TEXT, Term.SETTING, Term.TEXT, Term.RESUME,
    ]  # fmt: skip
    assert str(message) == "a: x seqlen y; a resume of /s"
    assert cli_words(message) == "a: x --seqlen y; mptui --resume /s"


# --- the table ---------------------------------------------------------------------------------
def engine_calls() -> list[tuple[Path, ast.Call]]:
    return [
        (path, node)
        for path in sorted(ENGINE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call)
    ]


def callee(call: ast.Call) -> str:
    """``BadInput`` for ``BadInput(...)``, ``Notice`` for ``ev.Notice(...)`` and
    ``ev.Notice.of(...)``."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "of":
        func = func.value
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def test_every_setting_the_engine_names_has_a_flag_the_cli_takes():
    named = {
        call.args[0].value
        for _path, call in engine_calls()
        if callee(call) == "setting" and isinstance(call.args[0], ast.Constant)
    }
    assert len(named) > 40
    assert sorted(named - FLAGS.keys()) == []
    taken = {
        option
        for module in ["cli", *SUBCOMMANDS.values()]
        for action in importlib.import_module(f"mptui.{module}").build_parser()._actions
        for option in action.option_strings
    }
    assert sorted(set(FLAGS.values()) - taken) == []
    assert set(COMMANDS) == set(Term) - {Term.TEXT, Term.SETTING}


# --- no flag in what the engine says --------------------------------------------------------------
#: Calls whose strings are what the engine says: its errors, its events' text, its messages,
#: the command table's refusals and the notices its parts send up.
SAYING = {
    *(name for name, value in vars(errors).items()
      if isinstance(value, type) and issubclass(value, errors.EngineError)),
    "Notice", "Error", "Message", "refuse", "on_notice", "on_warning", "_on_warning",
}  # fmt: skip
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def test_nothing_the_engine_raises_or_notices_names_a_flag():
    said = [
        (path, node)
        for path in sorted(ENGINE.rglob("*.py"))
        for statement in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(statement, ast.Raise)
        or (isinstance(statement, ast.Call) and callee(statement) in SAYING)
        for node in ast.walk(statement)
    ]
    assert len(said) > 1000
    flags = sorted(  # a set: a string in a raised call is walked twice
        {
            f"{path.relative_to(ENGINE.parent)}:{node.lineno}: {node.value!r}"
            for path, node in said
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and FLAG.search(node.value)
        }
    )
    assert flags == [], "name the setting instead (engine/errors.py, setting):\n" + "\n".join(flags)
