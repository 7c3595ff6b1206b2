"""A lost device: the GPU fell off the bus (an Xid error, a reset), a kernel faulted, or NCCL
gave up. Nothing on that device can be trusted afterwards, so the run ends at once with one
line, keeping every committed step (the journal has them); ``--resume``, on this device once it
is back or on another, replays them and finishes the plan.

An allocation failure is not a lost device: :func:`~.memory.is_out_of_memory` errors take the
smaller-batch fallback instead, even when CUDA words them as a ``CUDA error``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import DeviceFailed
from .memory import is_out_of_memory

#: How torch, the CUDA runtime and NCCL word a failed device in a RuntimeError's message.
FAILURE_WORDINGS = (
    "CUDA error",
    "CUDA driver error",
    "device-side assert",
    "illegal memory access",
    "unspecified launch failure",
    "NCCL error",
    "unhandled cuda error",
)

#: torch's own classes for them (AcceleratorError since torch 2.8, CudaError for the runtime's).
FAILURE_TYPES: tuple[type[BaseException], ...] = tuple(
    cls
    for cls in (getattr(torch, "AcceleratorError", None), getattr(torch.cuda, "CudaError", None))
    if cls is not None
)


def is_device_failure(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) says the device failed."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if is_out_of_memory(current):
            return False
        if isinstance(current, FAILURE_TYPES):
            return True
        if isinstance(current, RuntimeError) and any(
            wording.lower() in str(current).lower() for wording in FAILURE_WORDINGS
        ):
            return True
        current = current.__cause__
    return False


def lost_device_of(rank: int | None = None) -> str:
    """How :func:`device_failed`'s line begins (the launcher of workers knows a follower's own
    line by it, and quotes it as it is)."""
    return "the GPU failed" if rank is None else f"the GPU of worker rank {rank} failed"


def device_failed(
    error: BaseException, during: str, session: Path | None, rank: int | None = None
) -> DeviceFailed:
    """The one line a lost device ends the run with: what failed, while doing what, and how
    to finish (``session``: the session folder, when the run has one)."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    detail = " ".join(lines[0].split())[:200]
    message = f"{lost_device_of(rank)} ({detail}) while {during}"
    if session is None:
        return DeviceFailed(f"{message}; nothing was committed from the step in progress")
    return DeviceFailed(
        f"{message}; the session keeps every committed step: mptui --resume {session} "
        "(on any device: add --device cuda:N or --device cpu)"
    )


__all__ = [
    "FAILURE_TYPES",
    "FAILURE_WORDINGS",
    "device_failed",
    "is_device_failure",
    "lost_device_of",
]
