"""Memory readings for the engine's memory events: process RSS and torch's CUDA counters."""

from __future__ import annotations

import time

import psutil
import torch

from .events import MemorySample


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
