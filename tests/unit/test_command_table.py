"""The states/commands table is the code: docs/engine.md prints
``mptui.engine.control.command_table``
as it is, the table covers every command in every state, and the engine's dispatcher acts on
it (a refusing cell gives its Notice and changes nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mptui.engine.api import (
    CalibrationSpec,
    Engine,
    EngineState,
    EvalRequest,
    Outcome,
    PruneSettings,
    RecoverySettings,
    RunRequest,
)
from mptui.engine.control import command_table
from mptui.engine.control import commands as cmd
from mptui.engine.control import events as ev

DOCS = Path(__file__).resolve().parents[2] / "docs" / "engine.md"

#: One of each command.
SAMPLES = [
    cmd.Pause(),
    cmd.Resume(),
    cmd.Override("L3.mlp"),
    cmd.Accept(),
    cmd.SetOrder(("blocks", "mlp_channels", "attn_heads")),
    cmd.SetGuided(True),
    cmd.Undo(),
    cmd.Export("/tmp/x"),
    cmd.Evaluate(EvalRequest(text="/tmp/t.txt")),
    cmd.Stop(),
    cmd.Recover(RecoverySettings(data="/tmp/d.jsonl")),
]


def test_the_docs_table_is_the_code_table():
    text = DOCS.read_text(encoding="utf-8")
    assert command_table.markdown() in text, (
        "docs/engine.md's states/commands table differs from mptui.engine.control.command_table; "
        "paste this in its place:\n" + command_table.markdown()
    )


def test_every_command_has_a_rule_in_every_state():
    assert {type(sample) for sample in SAMPLES} == set(cmd.Command.__subclasses__())
    for command, rules in command_table.RULES.items():
        assert set(rules) == set(EngineState), command.__name__


def test_the_table_decisions():
    """Recovery runs after a search that is done, never after a failed one; it is its own
    state, where only pause, resume, stop, export and evaluate act. A failed run still exports
    and evaluates while it lingers; once stopped or ended nothing acts, nor is anything read."""
    rule = command_table.rule
    recover = cmd.Recover(RecoverySettings(data="/tmp/d.jsonl"))
    assert rule(recover, EngineState.DONE).acts
    assert not rule(recover, EngineState.ERROR).acts
    assert not rule(recover, EngineState.STOPPED).acts
    acting = lambda state: {type(c).__name__ for c in SAMPLES if rule(c, state).acts}  # noqa: E731
    assert acting(EngineState.RECOVERING) == {"Pause", "Stop", "Export", "Evaluate"}
    assert acting(EngineState.RECOVERY_PAUSED) == {"Resume", "Stop", "Export", "Evaluate"}
    assert acting(EngineState.ERROR) == {"Stop", "Export", "Evaluate"}
    for state in EngineState:
        unread = {c for c in SAMPLES if not rule(c, state).read}
        ended = state in (EngineState.STOPPED, EngineState.ENDED)
        assert unread == (set(SAMPLES) if ended else set()), state
        assert not ended or acting(state) == set()


@pytest.fixture
def engine(calibration_file) -> Engine:
    """An engine that is never started: its dispatcher alone, on a stand-in pruning."""
    settings = PruneSettings.with_distribution(
        0.2, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32)
    )
    built = Engine(RunRequest("unused", settings))
    built.pruning = object()  # a refusal must not touch it
    return built


@pytest.mark.parametrize("state", list(EngineState), ids=lambda s: s.value)
def test_the_dispatcher_refuses_as_the_table_says(engine, state):
    heard: list[ev.Event] = []
    engine.subscribe(heard.append)
    engine._state = state  # as if the run had got there
    for command in SAMPLES:
        rule = command_table.rule(command, state)
        if rule.acts:
            continue
        heard.clear()
        assert engine._dispatch(command) is Outcome.NOTHING
        assert [e.said for e in heard] == ([rule.notice] if rule.notice else [])
        assert engine.state is state
