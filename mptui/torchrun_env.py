"""What torch's launcher (``torchrun``, or ``mptui --workers``) tells a process it started, read
from the environment it sets. Kept apart from :mod:`.workers` so that choosing a session folder
does not import the code that launches workers."""

from __future__ import annotations

import os


def launched_by_torchrun() -> bool:
    """True inside a worker started by torch's launcher (it sets the world's environment)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def restarted() -> bool:
    """torchrun restarted the workers (``--max-restarts``): the session continues."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def launch_run_id() -> str | None:
    """The launcher's run id, the same for every attempt of one run."""
    return os.environ.get("TORCHELASTIC_RUN_ID") if launched_by_torchrun() else None
