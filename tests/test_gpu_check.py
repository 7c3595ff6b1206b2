"""The prepared GPU check keeps working: its dry run is the same code on the CPU."""

from __future__ import annotations

import json

import pytest
import torch

from bench.gpu_check import main


def test_dry_run_prints_the_whole_table(tmp_path, capsys):
    report = main(["--dry-run", "--json", str(tmp_path / "r.json")])
    table = capsys.readouterr().out
    for row in ("matmul peak", "block step, cached", "block step, naive", "MLP-width step, cached",
                "MLP-width step, naive", "peak memory", "prefix cache", "projected 22% run",
                "app memory pane"):  # fmt: skip
        assert f"| {row}" in table
    steps = {s.name: s for s in report.steps}
    assert steps["block step, cached"].candidates == 8  # 4 layers: 4 attention + 4 MLP blocks
    assert steps["block step, naive"].flops > steps["block step, cached"].flops > 0
    assert all(0 < s.mfu < 2 for s in report.steps)
    assert report.cache_stride == 1 and report.cache_budget_bytes > 0
    assert report.projection["naive seconds"] > report.projection["cached seconds"] > 0
    assert any("no GPU" in line for line in report.memory_pane)  # the real app, in tmux
    assert json.loads((tmp_path / "r.json").read_text())["profile"]["device"] == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_without_a_gpu_the_full_check_says_so_in_one_line():
    with pytest.raises(SystemExit, match="no CUDA device here; --dry-run"):
        main([])
