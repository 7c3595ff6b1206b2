"""A multi-worker run inside one test or benchmark: forked workers on gloo and a TCP store.

Each world is real: the forked processes join a process group and a store exactly as torchrun's
workers would (rank 0 hosts the store), the leader runs the engine with ``subscriber`` and the
followers run engine/workers/follower.py. Forking after torch is imported keeps a world's start at a
fraction of a second, where a fresh interpreter per worker costs seconds of imports.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch

from mptui.engine.api import Engine, RunRequest, Team, follow

#: Seconds a world may take before its workers are killed.
WORLD_TIMEOUT = 600


class Leader:
    """What rank 0 runs: the engine, with a subscriber made in the worker, whose ``result()``
    travels back to the caller."""

    def __init__(self, make_subscriber: Callable[[], Any]) -> None:
        self.make_subscriber = make_subscriber

    def __call__(self, team: Team, request: RunRequest) -> Any:
        subscriber = self.make_subscriber()
        engine = Engine(request, [subscriber], team=team)
        subscriber.engine = engine
        engine.run()
        return subscriber.result()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank, world_size, port, request, leader, results) -> None:
    code = 0
    try:
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
        torch.set_num_threads(1)
        team = Team.join()
        if team.is_leader:
            team.broadcast(request)
            results.put(leader(team, request))
        else:
            follow(team)
    except BaseException:
        results.put(traceback.format_exc())
        code = 1
    finally:
        os._exit(code)


def run_world(world_size: int, request: RunRequest, make_subscriber: Callable[[], Any]) -> Any:
    """``make_subscriber().result()`` of the leader of a run on ``world_size`` workers."""
    context = multiprocessing.get_context("fork")
    results = context.SimpleQueue()
    port = _free_port()
    leader = Leader(make_subscriber)
    workers = [
        context.Process(target=_worker, args=(rank, world_size, port, request, leader, results))
        for rank in range(world_size)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WORLD_TIMEOUT)
    alive = [w for w in workers if w.is_alive()]
    for worker in alive:
        worker.kill()
    if alive:
        raise RuntimeError(f"{len(alive)} worker(s) did not finish in {WORLD_TIMEOUT} s")
    outcome = results.get()
    if isinstance(outcome, str):
        raise RuntimeError(f"a worker failed:\n{outcome}")
    codes = [w.exitcode for w in workers]
    if codes != [0] * world_size:
        raise RuntimeError(f"workers exited with {codes}")
    return outcome
