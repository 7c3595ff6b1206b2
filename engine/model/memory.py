"""Memory readings for the engine's memory events: process RSS and torch's CUDA counters."""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil
import torch

from ..control.events import MemorySample

#: How CUDA libraries word an allocation failure that torch does not raise as its own
#: OutOfMemoryError: cuBLAS or cuDNN failing to get a workspace, or the CUDA runtime's
#: ``CUDA error: out of memory`` (torch.compile's own errors carry it in their message).
ALLOCATION_FAILURES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` means the device ran out of memory, however it was raised: every such
    error takes the same fallback (a smaller batch), not only torch's OutOfMemoryError."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(
        failure in str(error) for failure in ALLOCATION_FAILURES
    )


def as_out_of_memory(error: BaseException) -> torch.OutOfMemoryError:
    """``error`` as torch's OutOfMemoryError, which every fallback catches."""
    if isinstance(error, torch.OutOfMemoryError):
        return error
    converted = torch.OutOfMemoryError(" ".join(str(error).split())[:500])
    converted.__cause__ = error
    return converted


def sample_memory() -> MemorySample:
    cuda: tuple[tuple[int, int, int], ...] = ()
    if torch.cuda.is_available():
        cuda = tuple(
            (index, torch.cuda.memory_allocated(index), torch.cuda.memory_reserved(index))
            for index in range(torch.cuda.device_count())
        )
    return MemorySample(
        rss_bytes=psutil.Process().memory_info().rss, cuda=cuda, time=time.monotonic()
    )


class MemorySampler:
    """Memory events at most every ``interval`` seconds while work goes on, and at once when
    forced (after a commit): often enough for the pane, never a cost per candidate."""

    def __init__(self, emit: Callable[[MemorySample], None], interval: float = 1.0) -> None:
        self._emit = emit
        self._interval = interval
        self._last = 0.0

    def __call__(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self._interval:
            self._last = now
            self._emit(sample_memory())
