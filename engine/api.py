"""The engine's public API: what scripts and the app import.

>>> from mptui.engine.api import prune
>>> plan = prune("meta-llama/Llama-2-7b-hf", calibration="alpaca.jsonl", target_ratio=0.2195)

For live control, build a :class:`RunRequest`, start an :class:`Engine` in a thread, subscribe
to its events and :meth:`Engine.send` it commands.
"""

from __future__ import annotations

from pathlib import Path

from . import commands, events
from .calibration import CalibrationSpec
from .errors import BadInput, CalibrationError, EngineError, OutOfMemory, UnsupportedModel
from .runner import Engine, Subscriber
from .settings import (
    DEFAULT_DISTRIBUTION,
    DEFAULT_NSAMPLES,
    DEFAULT_ORDER,
    DEFAULT_SEED,
    DEFAULT_SEQLEN,
    DEFAULT_TEXT_FIELD,
    PruneSettings,
)
from .setup import RunRequest
from .structures import DIMENSIONS, Structure


def prune(
    model: str,
    *,
    calibration: str,
    target_ratio: float,
    distribution: str = DEFAULT_DISTRIBUTION,
    order: str = ",".join(DEFAULT_ORDER),
    nsamples: int = DEFAULT_NSAMPLES,
    seqlen: int = DEFAULT_SEQLEN,
    seed: int = DEFAULT_SEED,
    text_field: str = DEFAULT_TEXT_FIELD,
    subscribers: list[Subscriber] | None = None,
    dtype: str | None = None,
    device: str | None = None,
    device_map: str | None = None,
    cache_dir: Path | None = None,
    **options,
) -> dict:
    """Run MultiPruner to the end and return the plan; raise the engine's error if it failed.

    ``options`` are the remaining :class:`PruneSettings` fields (``mlp_group``, ``attn_group``,
    ``block_count``, ``batch_size``, ``prefix_cache``, ``faithful``).
    """
    settings = PruneSettings.with_distribution(
        target_ratio,
        distribution,
        order,
        calibration=CalibrationSpec(calibration, nsamples, seqlen, seed, text_field),
        **options,
    )
    request = RunRequest(
        model, settings, dtype=dtype, device=device, device_map=device_map, cache_dir=cache_dir
    )
    errors: list[str] = []
    engine = Engine(request, list(subscribers or []))
    engine.subscribe(lambda e: errors.append(e.message) if isinstance(e, events.Error) else None)
    result = engine.run()
    if errors:
        raise EngineError(errors[0])
    return result.plan


__all__ = [
    "DIMENSIONS",
    "BadInput",
    "CalibrationError",
    "CalibrationSpec",
    "Engine",
    "EngineError",
    "OutOfMemory",
    "PruneSettings",
    "RunRequest",
    "Structure",
    "UnsupportedModel",
    "commands",
    "events",
    "prune",
]
