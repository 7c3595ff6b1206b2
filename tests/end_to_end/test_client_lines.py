"""A headless run says on its output who attached to it, paused, resumed or stopped it, and
detached: a real ``mptui MODEL --headless`` on the tiny model, real clients (``RemoteEngine``).
The run starts held (:class:`~test_client_resources.HeldRun`), so the first client attaches
before the run has printed how to attach; each step waits for the run's own lines or states."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from test_client_resources import HeldRun, Watcher, wait_for

from mptui.engine.api import EngineState
from mptui.engine.api import commands as cmd


@pytest.fixture
def run(tiny_model_dir, calibration_file, tmp_path) -> Iterator[HeldRun]:
    held = HeldRun(tiny_model_dir("llama"), calibration_file, tmp_path / "session")
    yield held
    held.kill()


def client_lines(out: str) -> list[str]:
    """The lines about clients: each is one write, but the engine's lines come from another
    thread, so one may follow an engine line's text before its newline."""
    return re.findall(r"client \d+ [^\n]*", out)


def test_the_run_prints_each_client_attaching_pausing_resuming_stopping_and_leaving(run):
    first = Watcher(run.session)  # attached while the run is held, before its attach line
    first.remote.send(cmd.Pause())  # kept while loading, acted on once loaded
    run.release()
    wait_for(lambda: first.remote.state is EngineState.PAUSED, "pausing", run.process)
    second = Watcher(run.session)
    second.remote.send(cmd.Resume())
    wait_for(lambda: "client 2 resumed the run" in run.output(), "resuming", run.process)
    second.remote.close()
    wait_for(lambda: "client 2 detached" in run.output(), "detaching", run.process)
    first.remote.send(cmd.Stop())
    status, out, err = run.finish()  # its client lines come after its attach line
    first.remote.close()
    assert status == 0, err
    assert client_lines(out) == [
        "client 1 (unix socket) attached",
        "client 1 paused the run",
        "client 2 (unix socket) attached",
        "client 2 resumed the run",
        "client 2 detached",
        "client 1 stopped the run",
        "client 1 disconnected: the run has ended",
    ], out
    log = run.log()  # the session log has the same lines
    assert all(line in log for line in client_lines(out)), log
