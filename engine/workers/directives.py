"""What the leader of a multi-worker run tells its followers, and what they answer.

Every message is a small pickled value in the rendezvous store (engine/workers/team.py), under a key
that names its reader: ``op/RANK/SEQ`` for the leader's directives to one follower, in order;
``score/RANK/K`` for a follower's results, in order; ``sum/RANK/VERSION`` for the checksum a
follower takes after each change of its model; ``claim/GEN``, a counter, for the next free
position of a step's work queue.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Score:
    """Score candidates of ``dimension`` from the work queue ``gen`` and send each result as soon
    as it is known. ``queue`` holds indices into ``ids`` (the step's candidates in canonical
    order), costliest first; every worker, the leader too, claims its next position with
    :func:`claim_key` until the queue is empty, so a slower worker simply takes fewer."""

    gen: int
    dimension: str
    ids: tuple[str, ...]
    queue: tuple[int, ...]


@dataclass(frozen=True)
class Hold:
    """Stop scoring after the candidate in hand (a pause, or the step was settled)."""


@dataclass(frozen=True)
class Commit:
    """Remove ``structure`` as the leader did, then report the model's checksum."""

    structure: str
    score: float
    chosen_by: str


@dataclass(frozen=True)
class UndoCommit:
    """Put the last committed structure back, then report the model's checksum."""


@dataclass(frozen=True)
class Order:
    """The order of the dimensions changed (it decides which scorer catches up at a commit)."""

    order: tuple[str, ...]


@dataclass(frozen=True)
class EndRun:
    """The run is over: leave."""


Directive = Score | Hold | Commit | UndoCommit | Order | EndRun


@dataclass(frozen=True)
class Result:
    """One candidate scored by a follower."""

    gen: int
    index: int
    score: float


def op_key(rank: int, seq: int) -> str:
    return f"op/{rank}/{seq}"


def score_key(rank: int, k: int) -> str:
    return f"score/{rank}/{k}"


def sum_key(rank: int, version: int) -> str:
    return f"sum/{rank}/{version}"


def claim_key(gen: int) -> str:
    return f"claim/{gen}"


def left_key(rank: int) -> str:
    """A follower read its EndRun (where rank 0 hosts the store, it waits for every one)."""
    return f"left/{rank}"


#: Largest prime below 2**16: position weights in :func:`model_checksum`.
_WEIGHT_MODULUS = 65521
#: Elements summed at a time: the int64 copies of one slice, not of a whole embedding matrix
#: (a 70B model's is 1 G elements: 8 GB per copy), are all a checksum ever allocates.
_CHECKSUM_SLICE = 1 << 24


def model_checksum(model: nn.Module) -> int:
    """An exact fingerprint of every parameter and buffer: the bits as integers, each weighted
    by its position, summed in int64 (integer sums do not depend on reduction order, so equal
    models give equal sums on any device). Names and shapes count too (``zlib.crc32``, the same in
    every process, unlike ``hash``), so a narrowing shows."""
    total = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        flat = tensor.detach().reshape(-1)
        bits = flat.view(
            {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[flat.element_size()]
        )
        for start in range(0, bits.numel(), _CHECKSUM_SLICE):
            part = bits[start : start + _CHECKSUM_SLICE].to(torch.int64)
            positions = torch.arange(start, start + part.numel(), device=part.device)
            total += int((part * (positions % _WEIGHT_MODULUS + 1)).sum())
        total += zlib.crc32(f"{name}{tuple(tensor.shape)}".encode())
    return total
