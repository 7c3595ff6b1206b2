"""engine/session/disk.py's atomic writer: whole files, nothing left beside them, the user's
umask."""

from __future__ import annotations

import os
import stat

import pytest

from mptui.engine.session.disk import write_bytes_atomic


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_an_atomic_write_is_created_as_open_would_create_it(tmp_path, umask, mode):
    """A plan or a report is for others on the box to read when the umask says so (a temporary
    file from mkstemp would be 0600 whatever it says)."""
    previous = os.umask(umask)
    try:
        write_bytes_atomic(tmp_path / "plan.json", b"{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "plan.json").stat().st_mode) == mode


def test_an_atomic_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "report.html"
    target.write_bytes(b"old")
    write_bytes_atomic(target, memoryview(b"new page"))
    assert target.read_bytes() == b"new page"
    assert [path.name for path in tmp_path.iterdir()] == ["report.html"]
