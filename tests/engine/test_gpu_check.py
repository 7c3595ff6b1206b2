"""The prepared GPU check keeps working: its dry run is the same code on the CPU, here and on a
copy of the bare GPU image's packages, and it keeps what it measured when it is cut short."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.app_capture import AppStopped, _Tmux, capture_memory_pane
from bench.gpu_check import GPU, Report, StepTiming, main, planned_seconds, project

ROOT = Path(__file__).resolve().parents[2]
#: The GPU image's packages and nothing else (bench/gpu-image.txt), built by `.ci/dev test`.
BARE_PYTHON = ROOT / ".venv-bare" / "bin" / "python"
#: What the app capture may take at most on the GPU, beside the planned scoring and compiling.
APP_SECONDS = 60
ROWS = (
    "device", "time plan", "matmul peak (measured)", "model on the device",
    "session build, cached", "block step, cached", "MLP-width step, cached", "compiled with",
    "prefix cache", "batch size (from the memory budget)",
    "cache refresh after a commit at L0.attn", "MLP-width step after a width commit",
    "peak memory, cached", "session build, cached, eager", "block step, cached, eager",
    "MLP-width step, cached, eager", "peak memory, cached, eager", "session build, naive",
    "block step, naive", "MLP-width step, naive", "peak memory, naive",
    "block step, compiled vs eager", "MLP-width step, compiled vs eager",
    "projected 22% run, cached", "projected 22% run, naive", "app memory pane (tmux)",
)  # fmt: skip


def bench_env() -> dict[str, str]:
    return os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_dry_run_prints_every_row_and_writes_them(tmp_path, capsys):
    report = main(["--dry-run", "--json", str(tmp_path / "r.json")])
    table = capsys.readouterr().out
    measures = [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines()[2:-1]]
    assert measures == list(ROWS)
    assert "| compiled with | aot_eager |" in table  # torch.compile, as on a GPU
    assert "0 graphs compiled (after L" in table  # a new width compiled nothing
    assert "MFU" in table and "of spec" in table
    assert "| block step, compiled vs eager | scores within 0.0e+00 (relative), same" in table
    steps = {s.name: s for s in report.steps}
    assert steps["block step, cached"].candidates == 8  # 4 layers: 4 attention + 4 MLP blocks
    assert steps["block step, naive"].flops > steps["block step, cached"].flops > 0
    assert report.cache_stride == 1 and report.cache_budget_bytes > 0
    assert report.projection["naive seconds"] > 0 and report.projection["cached seconds"] > 0
    assert any("no GPU" in line for line in report.memory_pane)  # the real app, in tmux
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["complete"] and [row["measure"] for row in written["rows"]] == list(ROWS)
    assert written["profile"]["device"] == "cpu"


def test_a_check_cut_short_keeps_every_row_it_measured(tmp_path):
    """Killed in the middle (as a device time limit does), the rows already printed are in the
    JSON file, which is whole and says it is not complete."""
    out = tmp_path / "r.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench", "gpu-check", "--dry-run", "--no-app", "--json", str(out)],
        cwd=ROOT, env=bench_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    printed = []
    for line in process.stdout:
        printed.append(line)
        if line.startswith("| block step, cached, eager"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    written = json.loads(out.read_text())
    assert not written["complete"]
    rows = [row["measure"] for row in written["rows"]]
    assert rows == list(ROWS[: ROWS.index("block step, cached, eager") + 1])


def test_the_bare_gpu_image_runs_the_dry_run_from_a_plain_checkout():
    """The GPU machine has torch, transformers, accelerate, peft, psutil, safetensors and
    nvidia-ml-py, no textual or lm-eval, and nothing installed: `python3 -m bench gpu-check`
    from the repository root must work there. `.ci/dev test` builds that environment."""
    assert BARE_PYTHON.exists(), "no .venv-bare: run `bash .ci/dev test` (it builds it)"
    result = subprocess.run(
        [BARE_PYTHON, "-m", "bench", "gpu-check", "--dry-run"],
        cwd=ROOT, env=bench_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| app memory pane (tmux) | skipped: textual is not installed here" in result.stdout
    assert "| projected 22% run, naive |" in result.stdout


def test_the_full_check_fits_in_five_minutes_of_an_h200():
    """By FLOP count: its scoring at 35% of the spec peak, a compile allowance, and the app."""
    assert planned_seconds(GPU) + APP_SECONDS < 300


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_an_app_whose_run_fails_is_reported_at_once():
    """The demo on a GPU that is not there is refused before the app opens: one line with
    mptui's error, not a wait of minutes for a reading that cannot come (the timeout is ten
    minutes)."""
    lines = capture_memory_pane("cuda", timeout=600)
    assert len(lines) == 1 and lines[0].startswith(
        "the app stopped before its memory pane had a reading: "
    ), lines
    assert "--device cuda asked for a GPU but torch sees none" in lines[0]


def test_a_process_that_exits_is_seen_at_once():
    """A dead pane ends the wait with what the process printed last."""
    tmux = _Tmux()
    tmux.start("echo the app could not start; exit 3")
    try:
        with pytest.raises(AppStopped, match="the app could not start"):
            tmux.wait_for("RUNNING", deadline=time.monotonic() + 600)
    finally:
        tmux("kill-server")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_without_a_gpu_the_full_check_says_so_in_one_line():
    with pytest.raises(SystemExit, match="no CUDA device here; --dry-run"):
        main([])


def test_the_projection_counts_the_reference_run():
    """One second per candidate row: 10 block steps over 64, 63, ... candidates on 35 rows,
    78 width steps over 32 layers on 17 rows, and one refresh per commit on its rows."""
    report = Report("cuda", "Llama 32 layers", refresh_seconds=2 * GPU.rows)
    for name, candidates in (("block", 64), ("MLP-width", 32)):
        for mode in ("cached", "naive"):
            seconds = candidates * GPU.rows
            report.steps.append(StepTiming(f"{name} step, {mode}", candidates, seconds, 1.0, 1.0))
    projection = project(report, GPU)
    candidate_rows = sum(range(55, 65)) * 35 + (55 + 23) * 32 * 17
    assert projection["naive seconds"] == candidate_rows
    assert projection["cached seconds"] == candidate_rows + 2 * (10 * 35 + 78 * 17)
