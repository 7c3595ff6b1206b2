"""Whether a session is in use, asked without taking it: torch-free, and writing nothing.

:meth:`SessionFolder.lock <mptui.engine.session.folder.SessionFolder.lock>` is how a process
owns a session; commands that only read sessions (``mptui compare``, the app's comparison) ask
here first, because a plan read while its search still runs is a plan that is about to change.
"""

from __future__ import annotations

import fcntl
from pathlib import Path

from .files import LOCK


def lock_holder(folder: Path) -> str | None:
    """Who holds ``folder``'s session lock (``process 1234``), or None when no process does.

    The lock file is opened read-only (a folder without one stays without one) and a shared
    lock is taken and dropped at once: it fails exactly while an owner holds its exclusive one.
    """
    try:
        handle = (Path(folder) / LOCK).open("r")
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "another process"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None
