"""Where mptui keeps things on this machine: its caches and the folders of new sessions.

The XDG variables decide, as for any desktop program (the tests point them at a scratch
folder). Nothing here imports the engine, so ``mptui --help`` stays instant.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .torchrun_env import launch_run_id


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mptui"


def calibration_cache_dir() -> Path:
    return cache_dir() / "calibration"


def default_session_dir(model: str) -> Path:
    """A new folder per run; under torchrun, one per launcher run id, which every worker and
    every restart of the run agree on."""
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    name = Path(model.rstrip("/")).name or "model"
    run_id = launch_run_id()
    if run_id:
        return data / "mptui" / "sessions" / f"torchrun-{run_id}-{name}"
    base = data / "mptui" / "sessions" / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    candidate, n = base, 1
    while candidate.exists():  # two runs started in the same second get folders of their own
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate
