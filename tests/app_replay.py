"""A fixed engine state for the app's snapshots (the events of a short run, made by hand), and
the stand-ins the app and the server are tested with: no GPU, an engine that only publishes."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from mptui.engine.api import EngineServer, EngineState, RemoteEngine, attach
from mptui.engine.control import commands as cmd
from mptui.engine.control import events as ev
from mptui.engine.search.plan import PlanStep
from mptui.engine.search.structures import Structure


class NoGpu:
    """A GPU reader that finds none, so snapshots do not depend on the machine."""

    def read(self) -> list:
        return []


class Publisher:
    """The engine-like object the server wraps: subscribers, a command inbox, a state."""

    def __init__(self) -> None:
        self.subscribers: list = []
        self.received: list[cmd.Command] = []
        self.got_command = threading.Event()
        self.state = EngineState.RUNNING
        self.guided = False

    def subscribe(self, subscriber) -> None:
        self.subscribers.append(subscriber)

    def send(self, command: cmd.Command) -> None:
        self.received.append(command)
        self.got_command.set()

    def emit(self, event: ev.Event) -> None:
        for subscriber in self.subscribers:
            subscriber(event)


def fixed_run_events() -> list[ev.Event]:
    layers = 8
    events: list[ev.Event] = [
        ev.StateChanged("loading"),
        ev.Loaded(
            model="demo-llama", architecture="LlamaForCausalLM", num_layers=layers,
            params_dense=3_935_424, params_layers_dense=3_149_568, dense_score=37.91,
            mlp_group=46, attn_group=96, group_source="rule", mlp_width=512, attn_width=192,
            order=("blocks", "mlp_channels", "attn_heads"),
            targets={"blocks": 0.1, "mlp_channels": 0.2, "attn_heads": 0.25}, tokens=8192,
        ),
        ev.StateChanged("running"),
        ev.DimensionChanged("blocks", 0.1, ("blocks", "mlp_channels", "attn_heads")),
        ev.MemorySample(rss_bytes=900 * 2**20),
    ]  # fmt: skip
    # two blocks reach the blocks target (0.125 >= 0.1); step 3 is the first MLP-width step
    commits = [
        (Structure("attn_block", 6), 39.2, 0.025, "engine"),
        (Structure("mlp_block", 7), 44.8, 0.125, "engine"),
        (Structure("mlp_channels", 2, 46, 466), 45.6, 0.136, "user"),
    ]
    current = "blocks"
    for index, (structure, score, ratio, chosen_by) in enumerate(commits, start=1):
        dimension = structure.dimension
        if dimension != current:
            current = dimension
            events.append(
                ev.DimensionChanged(dimension, 0.2, ("blocks", "mlp_channels", "attn_heads"))
            )
        first = "L0.attn" if dimension == "blocks" else "L0.mlp-46"
        events.append(ev.StepStarted(index, dimension, (first,), score))
        step = PlanStep(index, structure, score, 0, ratio, chosen_by)
        events.append(ev.StepCommitted(step, score, ratio, ratio * 1.2, 0, 1.5, 16, 131072))
        events.append(ev.MemorySample(rss_bytes=(900 + 40 * index) * 2**20))
    events.append(ev.StepStarted(4, "mlp_channels", tuple(f"L{i}.mlp-46" for i in range(7)), 45.6))
    for k, (layer, score) in enumerate([(0, 47.1), (1, 46.2), (3, 45.9), (4, 49.0)], start=1):
        events.append(ev.CandidateScored(4, "mlp_channels", f"L{layer}.mlp-46", score,
                                         score - 45.6, 70_656, k, 7))  # fmt: skip
        events.append(ev.Progress(4, k, 7, 52_000.0, 4.5 * (7 - k)))
    return events


def served_publisher(
    folder: Path, events: Iterable[ev.Event] = ()
) -> tuple[Publisher, EngineServer, RemoteEngine]:
    """A :class:`Publisher` served from ``folder`` that has already sent ``events``, and a client
    attached to it: ``(engine, server, remote)``; the caller closes the server."""
    engine = Publisher()
    server = EngineServer(engine, folder)
    server.start()
    for event in events:
        engine.emit(event)
    return engine, server, attach(str(folder))
