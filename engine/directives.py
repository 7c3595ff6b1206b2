"""What the leader of a multi-worker run tells its followers, and what they answer.

Every message is a small pickled value in the rendezvous store (engine/team.py), under a key
that names its reader: ``op/RANK/SEQ`` for the leader's directives to one follower, in order;
``score/RANK/K`` for a follower's results, in order; ``sum/RANK/VERSION`` for the checksum a
follower takes after each change of its model.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Score:
    """Score these candidates of ``dimension`` (indices into ``ids``, the step's candidates in
    canonical order) and send each result as soon as it is known; ``gen`` tags the results."""

    gen: int
    dimension: str
    ids: tuple[str, ...]
    indices: tuple[int, ...]


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
class Undo:
    """Put the last committed structure back, then report the model's checksum."""


@dataclass(frozen=True)
class Order:
    """The order of the dimensions changed (it decides which scorer catches up at a commit)."""

    order: tuple[str, ...]


@dataclass(frozen=True)
class Stop:
    """The run is over: leave."""


Directive = Score | Hold | Commit | Undo | Order | Stop


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


def left_key(rank: int) -> str:
    """A follower read its Stop (where rank 0 hosts the store, it waits for every one)."""
    return f"left/{rank}"


#: Largest prime below 2**16: position weights in :func:`model_checksum`.
_WEIGHT_MODULUS = 65521


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
        ).to(torch.int64)
        weights = torch.arange(bits.numel(), device=bits.device) % _WEIGHT_MODULUS + 1
        total += int((bits * weights).sum()) + zlib.crc32(f"{name}{tuple(tensor.shape)}".encode())
    return total
