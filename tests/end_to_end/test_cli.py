"""The headless CLI: real runs, the same plan as the library, and bad input as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mptui.cli import main
from mptui.engine.api import prune
from mptui.engine.session import files as session_files

MPTUI = Path(sys.executable).parent / "mptui"


def common(model: Path, calibration: Path, out: Path) -> list[str]:
    return [
        str(model), "--headless", "--calibration", str(calibration), "--seqlen", "32",
        "--target-ratio", "0.3", "--distribution", "30:40:30", "--mlp-group", "40",
        "--out", str(out),
    ]  # fmt: skip


def test_headless_run_writes_the_plan_and_matches_the_library(
    tiny_model_dir, calibration_file, tmp_path, capsys
):
    model = tiny_model_dir("qwen2")
    assert main(common(model, calibration_file, tmp_path / "run")) == 0
    printed = capsys.readouterr().out.splitlines()
    plan = json.loads((tmp_path / "run" / session_files.PLAN).read_text())
    steps = [line for line in printed if line.startswith("step ")]
    assert len(steps) == len(plan["steps"]) > 0
    assert plan["format"] == "mptui.plan/1"
    assert plan["model"]["architecture"] == "Qwen2ForCausalLM"
    assert plan["settings"]["mlp_group"] == 40
    library = prune(
        str(model), calibration=str(calibration_file), target_ratio=0.3,
        distribution="30:40:30", seqlen=32, mlp_group=40,
    )  # fmt: skip
    assert [s["structure"] for s in library["steps"]] == [s["structure"] for s in plan["steps"]]
    assert [s["score"] for s in library["steps"]] == [s["score"] for s in plan["steps"]]


def test_the_console_script_runs_end_to_end(tiny_model_dir, calibration_file, tmp_path):
    args = common(tiny_model_dir("gpt2"), calibration_file, tmp_path / "out")
    result = subprocess.run([str(MPTUI), *args], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "out" / session_files.PLAN).exists()
    assert any(line.startswith("step   1 ") for line in result.stdout.splitlines())


def bad_input_cases(model: Path, calibration: Path, tmp_path: Path) -> dict[str, tuple]:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    short = tmp_path / "short.txt"
    short.write_text("just a few words\n")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return {
        "missing model": (["/no/such/model"], "does not exist"),
        "unsupported": ([str(bert)], "architecture 'bert' is not supported; supported: llama"),
        "ratio": (["--target-ratio", "1.2"], "strictly between 0 and 1"),
        "ratio zero": (["--target-ratio", "0"], "strictly between 0 and 1"),
        "distribution": (["--distribution", "1:-1:1"], "non-negative"),
        "distribution sum": (["--distribution", "0:0:0"], "positive sum"),
        "dimension": (["--order", "blocks,heads,mlp_channels"], "unknown dimension 'heads'"),
        "group not whole": (["--mlp-group", "2.5"], "invalid int value"),
        "group zero": (["--mlp-group", "0"], "--mlp-group 0 must be a positive whole number"),
        "group too wide": (["--mlp-group", "176"], "leaves no layer eligible"),
        "attn group too wide": (["--attn-group", "64"], "leaves no layer eligible"),
        "not kv groups": (["--attn-group", "24"], "error: --attn-group 24 is not whole KV groups"),
        "calibration missing": (["--calibration", str(tmp_path / "nope.txt")], "does not exist"),
        "calibration empty": (["--calibration", str(empty)], "has no text"),
        "calibration short": (["--calibration", str(short)], "fewer than one chunk"),
        "seqlen": (["--seqlen", "4096"], "above this model's limit of 256"),
    }


CASES = [
    "missing model", "unsupported", "ratio", "ratio zero", "distribution", "distribution sum",
    "dimension", "group not whole", "group zero", "group too wide", "attn group too wide",
    "not kv groups", "calibration missing", "calibration empty", "calibration short", "seqlen",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(case, tiny_model_dir, calibration_file, tmp_path, capsys):
    model = tiny_model_dir("llama")
    extra, message = bad_input_cases(model, calibration_file, tmp_path)[case]
    capsys.readouterr()  # only what the CLI prints counts
    args = common(model, calibration_file, tmp_path / "out")
    if not extra[0].startswith("--"):
        args[0] = extra[0]
    else:
        args += extra
    with pytest.raises(SystemExit) if case == "group not whole" else _nothing():
        code = main(args)
        assert code != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "note:" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("mptui: error: ") and message in lines[0], lines[0]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_bad_input_from_the_real_entry_point(tmp_path):
    result = subprocess.run(
        [str(MPTUI), "/no/such/model", "--headless", "--calibration", "x.txt"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip() == "mptui: error: model path '/no/such/model' does not exist"


def test_a_hub_id_loads_from_the_local_hub_cache(tiny_model_dir, calibration_file, tmp_path):
    """Real hub ids go through transformers' own resolution; here the cache stands in for
    the network (HF_HUB_OFFLINE=1), as on a GPU box with a pre-filled cache."""
    import os
    import shutil

    snapshot = tmp_path / "hub" / "models--acme--tiny-llama" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir("llama"), snapshot)
    refs = tmp_path / "hub" / "models--acme--tiny-llama" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0123abcd")
    args = common(Path("acme/tiny-llama"), calibration_file, tmp_path / "out")
    env = os.environ | {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([str(MPTUI), *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "out" / session_files.PLAN).read_text())
    assert plan["model"]["name_or_path"] == "acme/tiny-llama"
    missing = subprocess.run(
        [str(MPTUI), *common(Path("acme/absent"), calibration_file, tmp_path / "x")],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert missing.returncode != 0
    assert missing.stderr.startswith("mptui: error: could not load model 'acme/absent'")
    assert "Traceback" not in missing.stderr


def test_demo_headless_prunes_to_25_percent_then_evaluates_offline(tmp_path):
    """The shipped demo model, its calibration text and settings (the README's first run), then
    the demo's own local task (word order of held-out text) through lm-eval, offline."""
    from mptui.demo.tasks import TASK, include_path

    session = tmp_path / "session"
    result = subprocess.run(
        [str(MPTUI), "--demo", "--headless", "--session", str(session), "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / session_files.PLAN).read_text())
    assert {s["dimension"] for s in plan["steps"]} == {"blocks", "mlp_channels", "attn_heads"}
    assert plan["steps"][-1]["ratio"] >= 0.25 > plan["steps"][-2]["ratio"]
    assert plan["model"]["architecture"] == "LlamaForCausalLM"
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == len(plan["steps"])

    scored = subprocess.run(
        [str(MPTUI), "eval", "--session", str(session), "--tasks", TASK, "--include-path",
         str(include_path(tmp_path)), "--limit", "100"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    results = json.loads((session / session_files.EVALUATION).read_text())
    dense = results["dense"]["zero_shot"]["tasks"][TASK]
    pruned = results["pruned"]["zero_shot"]["tasks"][TASK]
    assert dense["metric"] == "acc_norm" and dense["value"] >= 0.8
    assert 0.25 < pruned["value"] < dense["value"]
    assert f"| {TASK} acc_norm (dense) |" in (session / session_files.SUMMARY_MD).read_text()
