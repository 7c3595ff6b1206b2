"""The prepared GPU check keeps working: its dry run is the same code on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from bench.gpu_check import GPU, Report, StepTiming, main, project


def test_dry_run_prints_the_whole_table(tmp_path, capsys):
    report = main(["--dry-run", "--json", str(tmp_path / "r.json")])
    table = capsys.readouterr().out
    for row in ("matmul peak", "block step, cached", "block step, cached, eager",
                "block step, naive", "MLP-width step, cached", "MLP-width step, naive",
                "peak memory", "prefix cache", "projected 22% run",
                "app memory pane"):  # fmt: skip
        assert f"| {row}" in table
    assert "| compiled with | aot_eager (first calls" in table  # torch.compile, as on a GPU
    assert "| block step, compiled vs eager | scores within" in table
    assert "same choice" in table
    steps = {s.name: s for s in report.steps}
    assert steps["block step, cached"].candidates == 8  # 4 layers: 4 attention + 4 MLP blocks
    assert steps["block step, naive"].flops > steps["block step, cached"].flops > 0
    assert all(0 < s.mfu < 2 for s in report.steps)
    assert report.cache_stride == 1 and report.cache_budget_bytes > 0
    assert report.projection["naive seconds"] > 0 and report.projection["cached seconds"] > 0
    assert any("no GPU" in line for line in report.memory_pane)  # the real app, in tmux
    assert json.loads((tmp_path / "r.json").read_text())["profile"]["device"] == "cpu"


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
