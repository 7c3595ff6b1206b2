"""The wire format: every event and command to a JSON line and back, exactly."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from mptui.engine.api import BadInput, EvalRequest, PlanStep, RecoverySettings, Structure, wire
from mptui.engine.api import commands as cmd
from mptui.engine.api import events as ev
from mptui.engine.api import recovery_events as rev

STEP = PlanStep(3, Structure("mlp_channels", 2, 46, 466), 45.6, 1000, 0.136, "user", 0.17, 1.5, 16,
                131072)  # fmt: skip
#: ``STEP`` as plan.json writes it: the JSON a step has always had on the wire and in the log.
STEP_JSON = {
    "index": 3, "dimension": "mlp_channels",
    "structure": {"kind": "mlp_channels", "layer": 2, "remove": 46, "width_after": 466},
    "score": 45.6, "params": 1000, "ratio": 0.136, "chosen_by": "user", "ratio_layers": 0.17,
    "seconds": 1.5, "candidates": 16, "tokens": 131072,
}  # fmt: skip
#: A step from a newer mptui: keys this version does not know, on the step and its structure.
NEWER_STEP_JSON = {
    "index": 1, "dimension": "blocks", "structure": {"kind": "attn_block", "layer": 6, "why": "x"},
    "score": 39.2, "params": 10, "ratio": 0.025, "chosen_by": "engine", "ratio_layers": 0.03,
    "seconds": 0.5, "candidates": 8, "tokens": 4096, "note": {"nested": [1, 2]},
}  # fmt: skip
ORDER = ("blocks", "mlp_channels", "attn_heads")

#: One of each class, with the awkward values: tuples (nested too), None, inf, a nested request.
SAMPLES: list[ev.Event | cmd.Command] = [
    ev.Loaded(
        model="demo",
        architecture="LlamaForCausalLM",
        num_layers=8,
        params_dense=3_935_424,
        params_layers_dense=3_149_568,
        dense_score=37.91,
        mlp_group=46,
        attn_group=96,
        group_source="rule",
        mlp_width=512,
        attn_width=192,
        order=ORDER,
        targets={"blocks": 0.1, "mlp_channels": 0.2},
        tokens=8192,
        notes=("a note",),
        steps=(PlanStep.from_dict(NEWER_STEP_JSON), STEP),
        time=12.5,
    ),
    ev.StepStarted(4, "mlp_channels", ("L0.mlp-46", "L1.mlp-46"), 45.6),
    ev.CandidateScored(4, "mlp_channels", "L1.mlp-46", math.inf, math.inf, 23_552, 2, 7),
    ev.Progress(4, 2, 7, 1234.5, 3.25),
    ev.Proposal(4, "L1.mlp-46", 46.1),
    ev.StepCommitted(STEP, 45.6, 0.136, 0.17, 3_400_000, 1.5, 16, 131072),
    ev.StepUndone(3, "L2.mlp-46", 44.8, 0.125),
    ev.DimensionChanged("attn_heads", 0.25, ORDER),
    ev.DimensionChanged(None, None, ORDER),
    ev.StateChanged(ev.EngineState.WAITING),
    ev.StateChanged(ev.EngineState.RECOVERY_PAUSED),
    ev.StateChanged(ev.EngineState.ENDED),
    ev.GuidedChanged(True),
    ev.MemorySample(900 * 2**20, ((0, 10, 20), (1, 30, 40))),
    ev.Notice("order is now blocks -> mlp_channels"),
    ev.Error("out of memory"),
    ev.Activity(ev.ActivityKind.EXPORT, "exporting to /tmp/x", 10, 100),
    ev.Activity(None),
    ev.Exported("/tmp/x", 1000, 4000, True, 2.5),
    ev.Exported("/x.gguf", 1000, 4000, False, 2.5, format="gguf", gguf_type="q8_0", stand_ins=2),
    ev.Evaluated({"perplexity": 40.1}, {"perplexity": 45.2}, 3, 0.136),
    ev.Finished("done", {"format": "mptui.plan/1", "steps": [STEP_JSON]}),
    cmd.Pause(),
    cmd.Resume(),
    cmd.Override("L12.attn"),
    cmd.Accept(),
    cmd.SetOrder(ORDER),
    cmd.SetGuided(True),
    cmd.Undo(),
    cmd.Stop(),
    cmd.Export("/tmp/export"),
    cmd.Export("/tmp/pruned.gguf", format="gguf", gguf_type="f16"),
    cmd.Evaluate(EvalRequest(("piqa", "arc_easy"), None, 10, 4, "/tmp/valid.txt", 128)),
    cmd.Recover(RecoverySettings(data="/tmp/alpaca.jsonl", steps=30, targets=("q", "down"))),
    rev.RecoveryStarted(
        step=10,
        steps=30,
        trainable=4096,
        params=3_000_000,
        examples=200,
        val_examples=16,
        settings={"rank": 16, "targets": ["q", "down"]},
        history=({"step": 1, "loss": 3.5}, {"step": 10, "val_perplexity": 40.0}),
    ),
    rev.RecoveryStep(11, 30, 3.25, 1e-4, 812.5, 20.0, 4, 8),
    rev.RecoveryValidated(0, math.inf),
    rev.RecoveryFinished("stopped", 12, 30),
]


def test_every_event_and_command_class_has_a_sample():
    """A new class must be added here, which puts it through the round trip below."""
    sampled = {type(sample).__name__ for sample in SAMPLES}
    assert sampled == set(wire.EVENTS) | set(wire.COMMANDS)
    assert len(wire.EVENTS) >= 16 and len(wire.COMMANDS) >= 10


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: type(s).__name__)
def test_round_trip_is_exact(sample):
    encode = wire.encode_event if isinstance(sample, ev.Event) else wire.encode_command
    line = encode(sample)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    kind, back = wire.decode(line)
    assert kind == ("event" if isinstance(sample, ev.Event) else "command")
    assert type(back) is type(sample)
    assert back == sample
    assert repr(back) == repr(sample)  # tuples stay tuples, floats stay floats


def test_an_event_line_has_the_shape_of_the_event_log():
    line = json.loads(wire.encode_event(ev.StepStarted(1, "blocks", ("L0.attn",), 3.0, time=2.0)))
    assert line == {
        "event": "StepStarted", "time": 2.0, "step": 1, "dimension": "blocks",
        "candidates": ["L0.attn"], "current_score": 3.0,
    }  # fmt: skip


def test_a_plan_step_keeps_the_json_it_always_had():
    """Events carry a PlanStep, but a line holds plan.json's entry, exactly as when events
    carried that dict: clients and servers of either side read each other's lines."""
    committed = ev.StepCommitted(STEP, 45.6, 0.136, 0.17, 3_400_000, 1.5, 16, 131072, time=3.0)
    assert json.loads(wire.encode_event(committed)) == {
        "event": "StepCommitted", "time": 3.0, "step": STEP_JSON, "score": 45.6, "ratio": 0.136,
        "ratio_layers": 0.17, "params": 3_400_000, "seconds": 1.5, "candidates": 16,
        "tokens": 131072,
    }  # fmt: skip
    assert json.loads(wire.encode_event(SAMPLES[0]))["steps"] == [NEWER_STEP_JSON, STEP_JSON]
    # an older server's line (a step without the cost fields) reads as a typed step
    old = {k: v for k, v in STEP_JSON.items() if k not in ("seconds", "candidates", "tokens")}
    _, event = wire.decode(json.dumps({**json.loads(wire.encode_event(committed)), "step": old}))
    assert event.step == dataclasses.replace(STEP, seconds=0.0, candidates=0, tokens=0)
    assert event.step.structure.id == "L2.mlp-46"


def test_the_event_log_writes_the_lines_it_always_wrote(tmp_path):
    """events.jsonl is read by reports and tests: every line is what ``dataclasses.asdict``
    wrote when steps were plan.json's dicts, byte for byte."""
    from mptui.engine.api import SessionFolder, SessionRecorder
    from mptui.engine.session.files import EVENTS

    logged = [
        sample
        for sample in SAMPLES
        if isinstance(sample, ev.Event)
        and not isinstance(sample, (ev.Progress, ev.MemorySample))  # never logged
        and not (isinstance(sample, ev.Finished) and sample.plan)  # would write a summary
    ]
    recorder = SessionRecorder(SessionFolder(tmp_path), lambda: None)
    for event in logged:
        recorder(event)
    expected = []
    for event in logged:
        fields = dataclasses.asdict(event)
        if isinstance(event, ev.StepCommitted):
            fields["step"] = event.step.to_dict()
        if isinstance(event, ev.Loaded):
            fields["steps"] = [step.to_dict() for step in event.steps]
        expected.append(json.dumps({"event": type(event).__name__, **fields}, default=str))
    lines = (tmp_path / EVENTS).read_text().splitlines()
    assert lines == expected
    records = {record["event"]: record for record in map(json.loads, lines)}
    assert records["StepCommitted"]["step"] == STEP_JSON
    assert records["Loaded"]["steps"] == [NEWER_STEP_JSON, STEP_JSON]


def test_an_export_from_a_client_that_predates_formats_is_a_folder():
    """Lines without ``format`` and ``gguf_type`` (an older mptui attach, an older session's
    events.jsonl) read as they always did: a safetensors folder."""
    kind, command = wire.decode(b'{"command": "Export", "path": "/tmp/export"}\n')
    assert kind == "command" and command == cmd.Export("/tmp/export")
    assert (command.format, command.gguf_type) == ("safetensors", None)
    old_event = b'{"event": "Exported", "time": 1.0, "path": "/tmp/x", "params": 10, '
    _, event = wire.decode(old_event + b'"bytes": 40, "stock": true, "seconds": 2.5}\n')
    assert event == ev.Exported("/tmp/x", 10, 40, True, 2.5, time=1.0)
    assert (event.format, event.gguf_type, event.stand_ins) == ("safetensors", None, 0)


def test_an_export_line_carries_its_format():
    line = json.loads(wire.encode_command(cmd.Export("/m.gguf", format="gguf", gguf_type="q8_0")))
    assert line == {"command": "Export", "path": "/m.gguf", "format": "gguf", "gguf_type": "q8_0"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json\n", "not a protocol line"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"event": "Exploded"}\n', "unknown event 'Exploded'"),
        (b'{"command": "Override"}\n', "bad Override"),
        (b'{"command": "SetOrder", "order": "blocks"}\n', "expected a list"),
        (b'{"a": 1, "b": 2}\n', "not a protocol line"),
        (b'{"event": "StateChanged", "state": "flying"}\n', "unknown EngineState 'flying'"),
        (b'{"event": "StepCommitted", "step": 3}\n', "expected an object for PlanStep"),
        (b'{"event": "StepCommitted", "step": {"index": 1}}\n', "bad PlanStep .no 'structure'"),
        (
            b'{"event": "Loaded", "steps": [{"structure": {"kind": "x", "layer": 0}}]}\n',
            "bad PlanStep .unknown structure kind 'x'",
        ),
    ],
)
def test_a_bad_line_is_one_clear_error(line, message):
    with pytest.raises(BadInput, match=message):
        wire.decode(line)
