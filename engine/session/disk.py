"""Every write the engine makes to a session, an export or ``--out``, whole or not at all.

A long run on a shared box meets a full disk. Each writer here turns that into one
:class:`~.errors.DiskFull` naming the folder and the file, and leaves nothing a reader would
take for whole: files are written beside their name and renamed over it, and an appended line
that did not fit is cut off again. Torch-free, so the app and tools can use it cheaply.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..errors import DiskFull

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
T = TypeVar("T")


def is_no_space(error: BaseException) -> bool:
    """An OSError of a full disk or quota, or a library's error that wraps one (safetensors
    raises its own type and keeps only the OS's message)."""
    if isinstance(error, OSError):
        return error.errno in _NO_SPACE
    return any(os.strerror(code) in str(error) for code in _NO_SPACE)


@contextmanager
def writing(path: Path, what: str | None = None) -> Iterator[None]:
    """Inside, a full disk becomes one :class:`DiskFull` naming ``path``'s folder and ``what``
    (by default the file's name)."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as error:
        if not is_no_space(error):
            raise
        path = Path(path)
        raise DiskFull(
            f"no space left on device in {path.parent} while writing {what or path.name}"
        ) from None


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _hidden_beside(path: Path, create: Callable[[Path], T]) -> tuple[T, Path]:
    """``create`` a new, hidden name beside ``path`` (it raises FileExistsError on a taken
    one). Created as ``open`` and ``mkdir`` create (0666 or 0777 less the umask): a plan, a
    report or an export is for others on the box to read too, which the 0600 and 0700 of
    ``tempfile`` would forbid."""
    while True:
        hidden = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            return create(hidden), hidden
        except FileExistsError:
            continue


def _create_beside(path: Path) -> tuple[int, Path]:
    return _hidden_beside(
        path, lambda new: os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    )


@contextmanager
def staged_folder(out_dir: Path, what: str) -> Iterator[Path]:
    """A folder written whole or not at all: the block writes into a hidden folder beside
    ``out_dir``, which replaces it only once the block is done. On any failure the hidden
    folder is removed; a full disk is one :class:`DiskFull` naming ``what``. Files get the
    umask's modes, whatever their writer chose (safetensors and peft create 0600 files)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _, staging = _hidden_beside(out_dir, lambda new: os.mkdir(new, 0o777))
    try:
        with writing(out_dir, what):
            yield staging
            file_mode = stat.S_IMODE(staging.stat().st_mode) & 0o666
            for path in staging.rglob("*"):
                if path.is_file():
                    path.chmod(file_mode)
            _replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextmanager
def staged_file(path: Path, what: str) -> Iterator[Path]:
    """A file written whole or not at all, by a writer that wants a path (not bytes): the block
    writes the hidden name it is given, which is fsynced and renamed over ``path`` once the
    block is done, and removed on any failure; a full disk is one :class:`DiskFull`."""
    path = Path(path)
    fd, hidden = _create_beside(path)
    os.close(fd)
    try:
        with writing(path, what):
            yield hidden
            fd = os.open(hidden, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(hidden, path)
    except BaseException:
        hidden.unlink(missing_ok=True)
        raise


def _replace_folder(staging: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_beside(path)
        try:
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def write_json_atomic(path: Path, data: dict) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


def append_line(path: Path, line: str, *, fsync: bool) -> None:
    """Append ``line`` (its newline included) whole, or cut the file back to where it was."""
    path = Path(path)
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            try:
                _write_all(fd, line.encode())
                if fsync:
                    os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
