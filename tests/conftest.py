"""Shared fixtures (tiny models on disk, built once per session; calibration text) and the test
groups: each test is marked by the folder it lives in, so ``pytest -m unit`` runs the fast part.

- ``tests/unit``: pure functions and small objects, no model run of note, no process, no app;
- ``tests/engine``: the engine on tiny models (search, steering, export, evaluation, recovery);
- ``tests/app``: the Textual app, through its pilot or in a real terminal (tmux);
- ``tests/end_to_end``: ``mptui`` in processes of its own: CLI runs, install, workers, sessions.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# One thread per torch process: pytest runs a worker per core, and tests start subprocesses
# (oversubscribed, the cores thrash). Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Nothing in the suite may reach a hub; set before anything can import huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Sessions and caches of the CLI under test go to a scratch folder, never the user's home.
_SCRATCH = tempfile.mkdtemp(prefix="mptui-tests-")
os.environ["XDG_DATA_HOME"] = os.path.join(_SCRATCH, "data")
os.environ["XDG_CACHE_HOME"] = os.path.join(_SCRATCH, "cache")
# Remote code of the exports under test is imported from here, not the user's HF cache.
os.environ["HF_MODULES_CACHE"] = os.path.join(_SCRATCH, "hf-modules")

import torch  # noqa: E402

from bench.tiny import FAMILIES, build_tiny_model, tiny_text  # noqa: E402

TESTS = Path(__file__).resolve().parent
GROUPS = ("unit", "engine", "app", "end_to_end")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its folder's group (``-m unit``, ``-m "not end_to_end"``, ...)."""
    for item in items:
        path = Path(item.path).resolve()
        if path.is_relative_to(TESTS) and path.relative_to(TESTS).parts[0] in GROUPS:
            item.add_marker(getattr(pytest.mark, path.relative_to(TESTS).parts[0]))


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    """Each supported family in turn; a test that asks for ``family`` runs once per family."""
    return request.param


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_model_dir(family, **kwargs)`` -> folder of a tiny seeded model.

    Built once per session for each family and set of ``build_tiny_model`` keyword arguments,
    so the many tests that only read a model share one copy on disk.
    """
    built: dict[tuple, Path] = {}

    def make(family: str, **kwargs) -> Path:
        key = (family, tuple(sorted(kwargs.items())))
        if key not in built:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            built[key] = build_tiny_model(family, folder, **kwargs)
        return built[key]

    return make


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A .txt calibration file of documents separated by blank lines."""
    path = tmp_path_factory.mktemp("calibration") / "calibration.txt"
    path.write_text("\n\n".join(tiny_text(6)) + "\n")
    return path


MINI_TASK_ITEMS = [
    ("A dictionary maps keys to", [" values", " fish"], 0),
    ("The for statement is used to", [" eat lunch", " iterate over a sequence"], 1),
    ("Raise an exception when", [" an error occurs", " the sun sets"], 0),
]


@pytest.fixture
def local_task(tmp_path) -> Path:
    """A folder for ``--include-path``: the lm-eval task ``mptui_mini``, three items, offline."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    rows = folder / "mini.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"question": q, "choices": c, "label": n}) + "\n"
            for q, c, n in MINI_TASK_ITEMS
        )
    )
    (folder / "mini.yaml").write_text(
        "task: mptui_mini\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {rows}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: label\ndoc_to_choice: "{{choices}}"\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\nmetadata:\n  version: 1.0\n"
    )
    return folder


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """``mptui ARGV`` in this process: its exit status (argparse's too) and what it printed on
    stderr. For bad-input tests, which need no process of their own (one real-process test is
    in test_cli)."""
    from mptui.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def headless_session(model: Path, calibration: Path, folder: Path, *extra: str) -> Path:
    """A real session, ended, made in this process in well under a second on a tiny model: a
    headless run of ``mptui`` on two calibration documents of 32-token rows (``extra`` adds
    options, e.g. ``--method sleb``)."""
    from mptui.cli import main

    args = [
        str(model), "--headless", "--calibration", str(calibration), "--seqlen", "32",
        "--nsamples", "2", "--target-ratio", "0.3", "--mlp-group", "40", "--session",
        str(folder), *extra,
    ]  # fmt: skip
    assert main(args) == 0
    return folder


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted on ``folder`` with ``options``, unmounted afterwards. Skips the
    test where this user may not mount one (mounting needs root)."""
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size=64k,{options}", "tmpfs", str(folder)]
    result = subprocess.run(mount, capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real full disk, for writers that write by themselves (safetensors)."""
    with mounted_tmpfs(tmp_path / "small-disk", "rw") as folder:
        yield folder


@pytest.fixture
def read_only_folder(tmp_path) -> Iterator[Path]:
    """A folder nobody can write, root included (who passes every permission check)."""
    with mounted_tmpfs(tmp_path / "read-only", "ro") as folder:
        yield folder


# --- injected faults (issue 23), for the engine's and the app's tests ------------------------
#: How CUDA words a lost device (simulated on the CPU by :class:`DeviceFault`).
LOST = "CUDA error: an illegal memory access was encountered"


class DeviceFault:
    """A forward pre-hook on every module that raises a lost device's error once armed."""

    def __init__(self, error: Callable[[], Exception] = lambda: torch.AcceleratorError(LOST)):
        self.error = error
        self.armed = False
        self.fired = 0

    def __call__(self, module, args) -> None:
        if self.armed:
            self.armed = False
            self.fired += 1
            raise self.error()

    @contextlib.contextmanager
    def installed(self) -> Iterator[DeviceFault]:
        handle = torch.nn.modules.module.register_module_forward_pre_hook(self)
        try:
            yield self
        finally:
            handle.remove()


def arm_on_call(monkeypatch, fault: DeviceFault, owner, name: str, call: int) -> None:
    """Arm ``fault`` as the ``call``-th call of ``owner.name`` starts: its next forward fails."""
    original, calls = getattr(owner, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            fault.armed = True
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


def weights_file(folder: Path) -> Path:
    """The one safetensors file of a model folder or export: ``model.mptui.safetensors`` in a
    pruned export (the weights variant only its carried code loads), else
    ``model.safetensors``."""
    (path,) = Path(folder).glob("model*.safetensors")
    return path


def written_path(fd: int) -> Path:
    """The file a write to ``fd`` is for: its own, or the one a temporary file replaces."""
    from mptui.engine.session import files as session_files

    path = Path(os.readlink(f"/proc/self/fd/{fd}"))
    for target in vars(session_files).values():
        if isinstance(target, str) and path.name.startswith(f".{target}."):
            return path.with_name(target)
    return path


@pytest.fixture
def disk_full(monkeypatch) -> Callable[..., list[int]]:
    """``disk_full(name, after, folder=None)``: once ``after`` writes to files called ``name``
    (in ``folder`` only, when given) went through, the disk fills as a real one does: the next
    write takes half its bytes, every later one fails with ENOSPC. Returns a list that grows by
    one for each write refused."""
    real_write = os.write

    def arm(name: str, after: int, folder: Path | None = None) -> list[int]:
        seen, refused = [0], []

        def write(fd: int, data) -> int:
            path = written_path(fd)
            if path.name == name and folder in (None, path.parent):
                seen[0] += 1
                if seen[0] == after + 1 and len(data) > 1:
                    return real_write(fd, data[: len(data) // 2])
                if seen[0] > after:
                    refused.append(fd)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", write)
        return refused

    return arm
