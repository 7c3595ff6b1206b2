"""A run on several workers: the torch.distributed world a worker belongs to.

Workers are started by torch's own launcher (``torchrun``, or ``mptui --workers N``, which calls
it). Each holds a full replica of the model on its own device. Rank 0, the *leader*, owns the
session (journal, plan, commands, events); the others, *followers*, score the candidates the
leader hands them and repeat every change the leader makes (engine/workers/follower.py).

Bulk data (the calibration tokens, the channel order) goes through the process group's
collectives: NCCL for CUDA tensors, gloo for CPU ones. The search's small, frequent messages (a
directive, a score) go through the rendezvous's key-value store instead, because a worker must
be able to *look* for a message between two candidates without waiting for it, and gloo's
point-to-point receives cannot be polled.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

#: How long a worker waits for the others at the rendezvous and in a collective. A paused run
#: keeps its followers waiting on the store, not in a collective, so this can stay modest.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)
#: How long a store lookup may block (a follower waiting for its next directive): a pause can
#: last hours, so this is long, and a dead leader ends the followers through the launcher.
STORE_TIMEOUT = timedelta(days=7)


def pin_gpus(gpus_per_worker: int) -> None:
    """Let this worker see only its own ``gpus_per_worker`` GPUs (``LOCAL_RANK``'s slice of the
    ones the launcher saw), so that a device map spreads the replica over exactly those. Must
    run before CUDA is initialised."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        devices = [d for d in visible.split(",") if d]
    else:
        devices = [str(i) for i in range(torch.cuda.device_count())]
    mine = devices[local_rank * gpus_per_worker : (local_rank + 1) * gpus_per_worker]
    if len(mine) < gpus_per_worker:
        from ..errors import BadInput, setting

        raise BadInput(
            f"worker {local_rank} needs GPUs {local_rank * gpus_per_worker}-"
            f"{(local_rank + 1) * gpus_per_worker - 1} but {len(devices)} are visible: lower ",
            setting("workers"),
            " or ",
            setting("gpus_per_worker"),
        )
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)


@dataclass
class Team:
    """This worker's place in the world, and the means to talk to the others."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    store: dist.Store
    hosts_store: bool = False  # rank 0 serves the store (launched without torchrun's agent)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def followers(self) -> range:
        return range(1, self.world_size)

    @classmethod
    def join(cls, gpus_per_worker: int = 1) -> Team:
        """Join the world described by the launcher's environment (``RANK``, ``WORLD_SIZE``,
        ``MASTER_ADDR``...): NCCL for CUDA tensors where there is a GPU, gloo everywhere."""
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            device = torch.device("cuda", 0 if gpus_per_worker > 1 else local_rank)
            torch.cuda.set_device(device)
            backend = "cpu:gloo,cuda:nccl"
        else:
            device = torch.device("cpu")
            backend = "gloo"
        store, hosts_store = _rendezvous_store(rank, world_size)
        if not dist.is_initialized():
            dist.init_process_group(
                backend,
                store=dist.PrefixStore("pg", store),
                rank=rank,
                world_size=world_size,
                timeout=COLLECTIVE_TIMEOUT,
            )
        return cls(
            rank, world_size, local_rank, device, dist.PrefixStore("mptui", store), hosts_store
        )

    def broadcast(self, value: Any) -> Any:
        """The leader's ``value`` on every worker (the others pass anything, usually None).

        Its tensors travel from host memory: a pickled CUDA tensor would be rebuilt on the
        leader's device index, which a worker pinned to other GPUs cannot see."""
        if self.world_size == 1:
            return value
        box = [on_host(value)]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # --- small messages through the store -------------------------------------------------------
    def put(self, key: str, value: Any) -> None:
        self.store.set(key, pickle.dumps(value))

    def has(self, key: str) -> bool:
        return self.store.check([key])

    def take(self, key: str) -> Any:
        """The value at ``key`` (waiting for it to be written), then removed."""
        value = pickle.loads(self.store.get(key))
        self.store.delete_key(key)
        return value

    def claim(self, queue: str) -> int:
        """The next free position in the work queue ``queue``, shared by every worker: the
        store's atomic counter hands each position to exactly one of them."""
        return self.store.add(queue, 1) - 1


def _rendezvous_store(rank: int, world_size: int) -> tuple[dist.Store, bool]:
    """The launcher's key-value store, and whether this process hosts it: torchrun's agent
    hosts it (every worker a client), or, launched otherwise, rank 0 does, as ``env://`` would.
    Namespaced per restart attempt, so a restarted world never reads the one before's messages."""
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    hosts = rank == 0 and not agent_hosts
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=hosts,
        timeout=STORE_TIMEOUT,
        wait_for_workers=False,
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"mptui-run/{attempt}", store), hosts


def longest_first(costs: Sequence[int]) -> list[int]:
    """Indices of ``costs``, costliest first (lowest index on ties): the order of a step's work
    queue. A candidate's cost is the number of sub-blocks it runs from its cached boundary."""
    return sorted(range(len(costs)), key=lambda i: (-costs[i], i))


def on_host(value: Any) -> Any:
    """``value`` with every tensor inside its dicts, lists and tuples copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: on_host(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(on_host(item) for item in value)
    return value
