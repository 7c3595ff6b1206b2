"""What every command does in every engine state: the one table :meth:`Engine._dispatch` reads,
and the one docs/engine.md prints (tests/unit/test_command_table.py checks the two agree).

A cell either acts (the engine's handler for the command runs), or does nothing, with a
``Notice`` saying why when the user should hear it. Its ``doc`` is the documentation's cell.
Torch-free: plain values only.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RECOVER_SESSION, Message
from . import commands as cmd
from .events import EngineState as S


@dataclass(frozen=True)
class Rule:
    """One command in one state."""

    doc: str
    acts: bool = True
    notice: Message | None = None  # said when the command does not act
    #: False where nothing will ever read the command (the engine thread has ended, or is
    #: ending after a stop): a sender decides for itself instead of waiting on the engine.
    read: bool = True


def act(doc: str) -> Rule:
    return Rule(doc)


def ignore(doc: str) -> Rule:
    """Nothing happens, and nothing needs saying (Pause while paused)."""
    return Rule(doc, acts=False)


def refuse(*notice: object) -> Rule:
    """Nothing happens; a Notice says ``notice`` (pieces, as :meth:`Message.of` joins them)."""
    said = Message.of(*notice)
    return Rule(f"Notice: {said}", acts=False, notice=said)


#: While loading nothing reads the queue (a Stop is seen at once, between the load's pieces):
#: this cell is for the documentation. After a stop, and once the engine thread has returned,
#: nothing reads it ever again: a command there is the sender's to drop (the app's ``send``).
KEPT = ignore("kept; acted on once loaded")
ENDED = Rule("nothing: the engine has ended", acts=False, read=False)

FINISHED = "the run is finished; export, evaluate and recover remain"
RECOVERING = "recovering: pause, resume, stop, export and evaluate remain"

RULES: dict[type[cmd.Command], dict[S, Rule]] = {
    cmd.Pause: {
        S.LOADING: ignore("kept; the run pauses once loaded"),
        S.RUNNING: act("→ paused (within one candidate)"),
        S.PAUSED: ignore("nothing"),
        S.WAITING: act("→ paused, the proposal kept"),
        S.RECOVERING: act("→ recovery_paused (within one optimizer step)"),
        S.RECOVERY_PAUSED: ignore("nothing"),
        S.DONE: refuse(FINISHED),
        S.STOPPED: ENDED,
        S.ERROR: refuse(FINISHED),
        S.ENDED: ENDED,
    },
    cmd.Resume: {
        S.LOADING: KEPT,
        S.RUNNING: ignore("nothing"),
        S.PAUSED: act("→ the state it paused from (waiting keeps its proposal)"),
        S.WAITING: ignore("nothing"),
        S.RECOVERING: ignore("nothing"),
        S.RECOVERY_PAUSED: act("→ recovering"),
        S.DONE: refuse(FINISHED),
        S.STOPPED: ENDED,
        S.ERROR: refuse(FINISHED),
        S.ENDED: ENDED,
    },
    cmd.Override: {
        S.LOADING: KEPT,
        S.RUNNING: act("committed now (`chosen_by: user`), the step restarts"),
        S.PAUSED: act("committed now, stays paused"),
        S.WAITING: act("committed now instead of the proposal → running"),
        S.RECOVERING: refuse(RECOVERING),
        S.RECOVERY_PAUSED: refuse(RECOVERING),
        S.DONE: refuse(FINISHED),
        S.STOPPED: ENDED,
        S.ERROR: refuse(FINISHED),
        S.ENDED: ENDED,
    },
    cmd.Accept: {
        S.LOADING: KEPT,
        S.RUNNING: refuse("nothing to accept: no proposal is waiting"),
        S.PAUSED: act(
            "the proposal (if paused from waiting) is committed, stays paused; else Notice"
        ),
        S.WAITING: act("the proposal is committed → running"),
        S.RECOVERING: refuse(RECOVERING),
        S.RECOVERY_PAUSED: refuse(RECOVERING),
        S.DONE: refuse(FINISHED),
        S.STOPPED: ENDED,
        S.ERROR: refuse(FINISHED),
        S.ENDED: ENDED,
    },
    cmd.SetOrder: {
        S.LOADING: KEPT,
        S.RUNNING: act("journaled; applies from the next step"),
        S.PAUSED: act("journaled, now; stays paused"),
        S.WAITING: act("journaled; applies from the next step"),
        S.RECOVERING: refuse(RECOVERING),
        S.RECOVERY_PAUSED: refuse(RECOVERING),
        S.DONE: refuse(FINISHED),
        S.STOPPED: ENDED,
        S.ERROR: refuse(FINISHED),
        S.ENDED: ENDED,
    },
    cmd.SetGuided: {
        S.LOADING: KEPT,
        S.RUNNING: act("journaled, `GuidedChanged`; the step in progress ends in waiting (or not)"),
        S.PAUSED: act(
            "journaled, `GuidedChanged`; on Resume a waiting step without guided mode commits "
            "its proposal"
        ),
        S.WAITING: act("journaled, `GuidedChanged`; off: the proposal is committed → running"),
        S.RECOVERING: refuse(RECOVERING),
        S.RECOVERY_PAUSED: refuse(RECOVERING),
        S.DONE: refuse(FINISHED),
        S.STOPPED: ENDED,
        S.ERROR: refuse(FINISHED),
        S.ENDED: ENDED,
    },
    cmd.Undo: {
        S.LOADING: KEPT,
        S.RUNNING: act("the last commit is undone now, the step restarts"),
        S.PAUSED: act("undone now, stays paused (a proposal is dropped)"),
        S.WAITING: act("undone, the proposal dropped → running, a new step"),
        S.RECOVERING: refuse(RECOVERING),
        S.RECOVERY_PAUSED: refuse(RECOVERING),
        S.DONE: refuse(FINISHED),
        S.STOPPED: ENDED,
        S.ERROR: refuse(FINISHED),
        S.ENDED: ENDED,
    },
    cmd.Export: {
        S.LOADING: KEPT,
        S.RUNNING: act("written now, then the step goes on"),
        S.PAUSED: act("written now, stays paused"),
        S.WAITING: act("written now, still waiting"),
        S.RECOVERING: act("the adapter merged into a copy and written; training goes on"),
        S.RECOVERY_PAUSED: act("the adapter merged into a copy and written, stays paused"),
        S.DONE: act("written (the recovered model once a recovery has run)"),
        S.STOPPED: ENDED,
        S.ERROR: act("written, if the model loaded"),
        S.ENDED: ENDED,
    },
    cmd.Evaluate: {
        S.LOADING: KEPT,
        S.RUNNING: act("dense and pruned scored now, then the step goes on"),
        S.PAUSED: act("scored now, stays paused"),
        S.WAITING: act("scored now, still waiting"),
        S.RECOVERING: act("dense, pruned and recovered (merged on a copy) scored now"),
        S.RECOVERY_PAUSED: act("dense, pruned and recovered scored now, stays paused"),
        S.DONE: act("scored (the recovered model too once a recovery has run)"),
        S.STOPPED: ENDED,
        S.ERROR: act("scored, if the model loaded"),
        S.ENDED: ENDED,
    },
    cmd.Stop: {
        S.LOADING: act(
            "ends the load at its next piece (shard, layer, batch, replayed step) → stopped"
        ),
        S.RUNNING: act("→ stopped at the next candidate"),
        S.PAUSED: act("→ stopped"),
        S.WAITING: act("→ stopped"),
        S.RECOVERING: act("saved within one optimizer step → stopped (`--resume` continues)"),
        S.RECOVERY_PAUSED: act("saved → stopped"),
        S.DONE: act("the engine thread ends → ended"),
        S.STOPPED: ENDED,
        S.ERROR: act("the engine thread ends → ended"),
        S.ENDED: ENDED,
    },
    cmd.Recover: {
        S.LOADING: KEPT,
        S.RUNNING: refuse("recovery starts once the search is done"),
        S.PAUSED: refuse("recovery starts once the search is done"),
        S.WAITING: refuse("recovery starts once the search is done"),
        S.RECOVERING: refuse("a recovery is under way"),
        S.RECOVERY_PAUSED: refuse("a recovery is under way"),
        S.DONE: act("→ recovering on a copy of the pruned model, once per session"),
        S.STOPPED: ENDED,
        S.ERROR: refuse("the run failed; ", RECOVER_SESSION, " recovers its plan"),
        S.ENDED: ENDED,
    },
}


def rule(command: cmd.Command, state: S) -> Rule:
    return RULES[type(command)][state]


def markdown() -> str:
    """The table as docs/engine.md has it: a row per command, a column per state."""
    states = list(S)
    lines = [
        "| command | " + " | ".join(state.value for state in states) + " |",
        "|---" * (len(states) + 1) + "|",
    ]
    for command, rules in RULES.items():
        cells = [rules[state].doc for state in states]
        lines.append(f"| {command.__name__} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["RULES", "Rule", "markdown", "rule"]
