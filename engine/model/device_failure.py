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

from ..errors import DeviceFailed, Message, resume, setting
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
    return _failure_in(error) is not None


def _failure_in(error: BaseException) -> BaseException | None:
    """The error of ``error``'s chain (itself, then what it was raised from) that says the
    device failed: lm-eval's failure raised from a CUDA error is told by the CUDA error."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if is_out_of_memory(current):
            return None
        if isinstance(current, FAILURE_TYPES):
            return current
        if isinstance(current, RuntimeError) and any(
            wording.lower() in str(current).lower() for wording in FAILURE_WORDINGS
        ):
            return current
        current = current.__cause__
    return None


def lost_device_of(rank: int | None = None) -> str:
    """How :func:`device_failed`'s line begins (the launcher of workers knows a follower's own
    line by it, and quotes it as it is)."""
    return "the GPU failed" if rank is None else f"the GPU of worker rank {rank} failed"


#: How a lost device's line ends: the work can go on elsewhere.
ON_ANY_DEVICE = Message.of(
    "(on any device: add ", setting("device"), " cuda:N or ", setting("device"), " cpu)"
)


def device_failed(
    error: BaseException,
    during: str,
    session: Path | None,
    rank: int | None = None,
    *,
    again: str | None = None,
) -> DeviceFailed:
    """The one line a lost device ends the run with: what failed, while doing what, and how
    to finish (``session``: the session folder, when the run has one).

    ``again`` is how to finish when it is not resuming the session's run: ``mptui eval`` and
    ``mptui export`` change nothing in the session before they succeed, so the way on is the
    same command again (a resume would not evaluate or export)."""
    failure = _failure_in(error) or error
    lines = str(failure).strip().splitlines() or [type(failure).__name__]
    detail = " ".join(lines[0].split())[:200]
    message = f"{lost_device_of(rank)} ({detail}) while {during}"
    kept = "; the session keeps every committed step: " if session is not None else "; "
    if again is not None:
        return DeviceFailed(f"{message}{kept}{again} ", ON_ANY_DEVICE)
    if session is None:
        return DeviceFailed(f"{message}; nothing was committed from the step in progress")
    return DeviceFailed(f"{message}{kept}", resume(session), " ", ON_ANY_DEVICE)


__all__ = [
    "FAILURE_TYPES",
    "FAILURE_WORDINGS",
    "ON_ANY_DEVICE",
    "device_failed",
    "is_device_failure",
    "lost_device_of",
]
