"""What a recovery run is asked to do: plain values, saved with the session and checked early."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..defaults import (
    DEFAULT_LORA_ALPHA,
    DEFAULT_LORA_DROPOUT,
    DEFAULT_LORA_RANK,
    DEFAULT_LORA_TARGETS,
    DEFAULT_RECOVERY_BATCH,
    DEFAULT_RECOVERY_EVAL_EVERY,
    DEFAULT_RECOVERY_GRAD_ACCUM,
    DEFAULT_RECOVERY_LR,
    DEFAULT_RECOVERY_SAVE_EVERY,
    DEFAULT_RECOVERY_SEQLEN,
    DEFAULT_RECOVERY_STEPS,
    DEFAULT_RECOVERY_VAL_EXAMPLES,
    DEFAULT_RECOVERY_WARMUP,
    DEFAULT_SEED,
)
from ..errors import BadInput, setting


@dataclass(frozen=True)
class RecoverySettings:
    """One recovery run; the defaults are the reference's (docs/method.md §10)."""

    data: str
    val_data: str | None = None
    steps: int = DEFAULT_RECOVERY_STEPS
    lr: float = DEFAULT_RECOVERY_LR
    warmup: int = DEFAULT_RECOVERY_WARMUP
    rank: int = DEFAULT_LORA_RANK
    alpha: float = float(DEFAULT_LORA_ALPHA)  # a float, as a JSON round trip gives it back
    dropout: float = DEFAULT_LORA_DROPOUT
    targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    batch_size: int = DEFAULT_RECOVERY_BATCH
    grad_accum: int = DEFAULT_RECOVERY_GRAD_ACCUM
    seqlen: int = DEFAULT_RECOVERY_SEQLEN
    eval_every: int = DEFAULT_RECOVERY_EVAL_EVERY
    save_every: int = DEFAULT_RECOVERY_SAVE_EVERY
    val_examples: int = DEFAULT_RECOVERY_VAL_EXAMPLES
    seed: int = DEFAULT_SEED
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        """Numbers a user can get wrong are refused with the setting's name."""
        if not self.data:
            raise BadInput(
                "no recovery data given; pass ", setting("recovery.data"), " FILE|DATASET"
            )
        for named, value in (
            (setting("recovery.steps"), self.steps),
            (setting("recovery.rank"), self.rank),
            (setting("recovery.batch_size"), self.batch_size),
            (setting("recovery.grad_accum"), self.grad_accum),
            (setting("recovery.seqlen"), self.seqlen),
            (setting("recovery.eval_every"), self.eval_every),
            (setting("recovery.save_every"), self.save_every),
        ):
            if value < 1:
                raise BadInput(named, " must be at least 1")
        if not self.lr > 0 or not self.alpha > 0:
            raise BadInput(
                setting("recovery.lr"), " and ", setting("recovery.alpha"), " must be positive"
            )
        if self.warmup < 0 or self.val_examples < 1 or not 0 <= self.dropout < 1:
            raise BadInput(
                setting("recovery.warmup"),
                " must be >= 0, held-out examples >= 1, dropout in [0, 1)",
            )
        if not self.targets:
            raise BadInput(setting("recovery.targets"), " names no module")

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["targets"] = list(self.targets)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> RecoverySettings:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["targets"] = tuple(values.get("targets", DEFAULT_LORA_TARGETS))
        return cls(**values)


def parse_targets(text: str) -> tuple[str, ...]:
    """``q,k,v`` -> ``("q", "k", "v")``; blanks dropped."""
    return tuple(part.strip() for part in text.split(",") if part.strip())
