"""Workers started by torch's launcher, as a user starts them: ``mptui --workers N`` and
``torchrun -m mptui``, on the demo model, with a worker killed mid-step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import weights_file
from tmux_session import Tmux

from mptui.cli import build_parser, demo_defaults
from mptui.engine.api import Engine
from mptui.engine.session import files as session_files
from mptui.run_cli import build_request

DEMO = ["--demo", "--headless", "--target-ratio", "0.1"]
RUN_TIMEOUT = 300


def worker_env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def uninterrupted() -> list[tuple[dict, float]]:
    """The demo plan of one process, run here in-process (what every worker count must give)."""
    args = build_parser().parse_args(DEMO)
    demo_defaults(args)
    request, _out = build_request(args)
    plan = Engine(request).run().plan
    return steps_of(plan)


def steps_of(plan: dict) -> list[tuple[dict, float]]:
    return [(step["structure"], step["score"]) for step in plan["steps"]]


def plan_in(session: Path) -> list[tuple[dict, float]]:
    return steps_of(json.loads((session / session_files.PLAN).read_text()))


def kill_rank_after_first_commit(process: subprocess.Popen, session: Path, rank: int) -> None:
    """SIGKILL worker ``rank`` while the step after the first commit is being scored."""
    journal = session / session_files.JOURNAL
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (journal.is_file() and journal.read_text().count("\n") >= 1):
        assert process.poll() is None, "the run ended before its first commit"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    for pid in worker_pids(process.pid):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            os.kill(pid, signal.SIGKILL)
            return
    raise AssertionError(f"no worker of rank {rank} under {process.pid}")


def worker_pids(root: int) -> list[int]:
    """Every descendant of ``root`` (the launcher's agent starts the workers)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_a_killed_worker_stops_the_run_cleanly_and_resume_finishes_the_same_plan(
    tmp_path, uninterrupted
):
    session = tmp_path / "session"
    command = [sys.executable, "-m", "mptui", *DEMO, "--workers", "2", "--session", str(session)]
    process = subprocess.Popen(
        command, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    kill_rank_after_first_commit(process, session, rank=1)
    out, err = process.communicate(timeout=RUN_TIMEOUT)
    assert process.returncode == 1
    assert "worker rank 1 died (SIGKILL)" in err
    assert f"mptui --resume {session}" in err
    assert "finished (stopped)" in out
    committed = plan_in(session)
    assert committed and committed == uninterrupted[: len(committed)]
    assert len(committed) < len(uninterrupted)
    resumed = subprocess.run(
        [sys.executable, "-m", "mptui", "--resume", str(session), "--headless"],
        env=worker_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert plan_in(session) == uninterrupted


def test_torchrun_restarts_resume_the_session_on_their_own(tmp_path, uninterrupted):
    session = tmp_path / "session"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "--max-restarts", "1", "-m", "mptui", *DEMO, "--session", str(session),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    kill_rank_after_first_commit(process, session, rank=1)
    out, err = process.communicate(timeout=RUN_TIMEOUT)
    assert process.returncode == 0, err
    assert out.count(f"session {session}") == 2  # the first attempt, then the restart
    assert "finished (done)" in out
    assert plan_in(session) == uninterrupted


def test_the_app_runs_on_two_workers_and_steers_them(tmp_path, uninterrupted):
    """``mptui --workers 2`` without --headless: the workers run in the background and the app
    attaches; pause and resume reach them, the plan is the one-process plan, and after the
    search the app exports (rank 0 alone) until q ends the run."""
    tmux = Tmux(tmp_path)
    session = tmp_path / "session"
    command = (
        f"cd {tmp_path} && OMP_NUM_THREADS=1 TERM=xterm-256color {sys.executable} -m mptui "
        f"{' '.join(a for a in DEMO if a != '--headless')} --workers 2 --session {session}; "
        "sleep 60"
    )
    tmux.open(command, 120, 36)
    try:
        tmux.wait_for("RUNNING", timeout=RUN_TIMEOUT)
        tmux.run("send-keys", "-t", "demo", "space")
        tmux.wait_for("PAUSED")
        tmux.run("send-keys", "-t", "demo", "space")
        tmux.wait_for("the search has ended (done); x exports", timeout=RUN_TIMEOUT)
        tmux.run("send-keys", "-t", "demo", "x")  # rank 0 exports, as one process would
        tmux.wait_for("Export the model as pruned so far")
        tmux.run("send-keys", "-t", "demo", "Enter")
        tmux.wait_for("exported", timeout=RUN_TIMEOUT)
        tmux.run("send-keys", "-t", "demo", "q")
        tmux.wait_for(f"the run has ended (done); session {session}")
        assert "starting 2 workers in the background" in tmux.screen()
        assert plan_in(session) == uninterrupted
        assert weights_file(session / session_files.EXPORT).is_file()
        wait_for_text(session / session_files.WORKERS_LOG, "plan written to")  # the workers ended
        assert "finished (done)" in (session / session_files.WORKERS_LOG).read_text()
    finally:
        tmux.kill()


def wait_for_text(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.2)


def test_fast_is_refused_with_workers_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "mptui", *DEMO, "--fast", "--workers", "2"],
        env=worker_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "mptui: error: --fast runs on one process for now; drop --fast or --workers"
    )


@pytest.mark.parametrize(
    ("option", "value"), [("--workers", "0"), ("--workers", "-1"), ("--gpus-per-worker", "0")]
)
def test_worker_counts_below_one_are_refused_in_one_line(option, value, capsys):
    from mptui.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--demo", "--headless", option, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith(f"error: {option} {value} must be 1 or more")


@pytest.mark.parametrize(
    ("visible", "argv", "error"),
    [
        (0, ["--workers", "2", "--gpus-per-worker", "2"],
         "--gpus-per-worker 2 needs GPUs and none is visible"),
        (4, ["--workers", "2", "--gpus-per-worker", "4"],
         "2 workers x 4 GPUs need 8 GPUs and 4 are visible: lower --workers or --gpus-per-worker"),
    ],
)  # fmt: skip
def test_too_few_gpus_are_refused_in_one_line_before_any_worker_starts(
    visible, argv, error, capsys, monkeypatch
):
    import torch

    from mptui.cli import main

    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)  # the box, not the code
    assert main(["--demo", "--headless", *argv]) == 2
    assert capsys.readouterr().err == f"mptui: error: {error}\n"


def test_each_worker_sees_only_its_own_slice_of_the_gpus(monkeypatch):
    from mptui.engine.api import BadInput, pin_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    monkeypatch.setenv("LOCAL_RANK", "1")
    pin_gpus(4)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(BadInput, match="worker 1 needs GPUs 2-3 but 3 are visible"):
        pin_gpus(2)


def run_with_a_sitecustomize(
    tmp_path: Path, session: Path, source: str
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The demo with 2 workers, every process of it starting with ``source`` as its
    sitecustomize (the code decides which rank it acts on); the run and its error lines."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(source)
    env = worker_env() | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    }
    result = subprocess.run(
        [sys.executable, "-m", "mptui", *DEMO, "--workers", "2", "--session", str(session)],
        env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("mptui: error:")]
    return result, errors


def test_a_follower_that_dies_before_the_run_starts_says_why(tmp_path):
    """Rank 1 fails as its interpreter starts (a sitecustomize on the path exits there with an
    import error's line, as a broken install would): one line quotes it, and no --resume is
    offered for a run that never started; the session folder holds no session."""
    session = tmp_path / "session"
    result, errors = run_with_a_sitecustomize(
        tmp_path,
        session,
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    raise SystemExit('ImportError: no module named flash_attn_9 (injected)')\n",
    )
    assert result.returncode == 1
    assert errors == [
        "mptui: error: worker rank 1 died before the run started (exit status 1): "
        "SystemExit: ImportError: no module named flash_attn_9 (injected)"
    ], result.stderr
    assert "--resume" not in result.stderr
    assert not (session / "settings.json").exists()


def test_a_followers_lost_gpu_ends_the_run_in_one_line_naming_its_rank(tmp_path, uninterrupted):
    """Rank 1's device fails (a module hook, installed by a sitecustomize on rank 1 only, raises
    a CUDA error at its first forward once the first step is in the journal): one line names
    the rank and the resume, and the journal keeps the committed steps."""
    session = tmp_path / "session"
    result, errors = run_with_a_sitecustomize(
        tmp_path,
        session,
        "import os, pathlib\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import torch\n"
        f"    journal = pathlib.Path({str(session / session_files.JOURNAL)!r})\n"
        "    def lost(module, args):\n"
        "        if journal.is_file() and journal.read_text().count('\\n') >= 1:\n"
        "            raise torch.AcceleratorError('CUDA error: unspecified launch failure')\n"
        "    torch.nn.modules.module.register_module_forward_pre_hook(lost)\n",
    )
    assert result.returncode == 1
    assert errors == [
        "mptui: error: the GPU of worker rank 1 failed (CUDA error: unspecified launch failure) "
        f"while working for rank 0; the session keeps every committed step: mptui --resume "
        f"{session} (on any device: add --device cuda:N or --device cpu)"
    ], result.stderr
    committed = plan_in(session)
    assert committed and committed == uninterrupted[: len(committed)]
