"""The demo's recovery: a short LoRA fine-tuning on the demo's own calibration text, validated
on its validation text, sized for a CPU (README gives its time and its numbers)."""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).parent

#: Far fewer and shorter steps than the reference's 3,000 x 32 x 256 tokens, with a learning
#: rate ten times its 1e-4 so that a few hundred steps show a clear gain.
DEMO_RECOVERY = {
    "steps": 300,
    "seqlen": 64,
    "batch_size": 4,
    "grad_accum": 1,
    "lr": 1e-3,
    "warmup": 20,
    "eval_every": 100,
    "save_every": 100,
}


def demo_recovery_settings(data: str | None = None):
    """The demo's :class:`RecoverySettings` (``data``: another text to train on)."""
    from mptui.engine.api import RecoverySettings

    return RecoverySettings(
        data=data or str(DEMO_DIR / "calibration.txt"),
        val_data=str(DEMO_DIR / "validation.txt"),
        **DEMO_RECOVERY,
    )
