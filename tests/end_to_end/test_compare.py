"""``mptui compare``: sessions side by side on equal terms, from real sessions of a tiny llama.

The plan-only table is the plans' own numbers and loads nothing; with a held-out text and a
local lm-eval task the dense model is loaded and scored once, and each session's held-out
perplexity is what ``mptui eval --session`` computes for it. Sessions of another model or
calibration are refused unless ``--force``; bad input is one line and changes no file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import headless_session, run_cli

from mptui.cli import main
from mptui.demo.tasks import TASK, include_path
from mptui.engine import session_files
from mptui.engine.plan import read_plan_file
from mptui.engine.session_folder import SessionFolder
from mptui.report.page import perplexity_text


@pytest.fixture(scope="module")
def sessions(tiny_model_dir, calibration_file, tmp_path_factory) -> dict[str, Path]:
    """Two sessions to compare (MultiPruner and SLEB on one model and calibration), and two
    that cannot be compared with them: another calibration, another model."""
    root = tmp_path_factory.mktemp("compare")
    llama = tiny_model_dir("llama")
    return {
        "mp": headless_session(llama, calibration_file, root / "mp"),
        "sleb": headless_session(llama, calibration_file, root / "sleb", "--method", "sleb"),
        "seqlen16": headless_session(
            llama, calibration_file, root / "other" / "seqlen16", "--seqlen", "16"
        ),
        "qwen": headless_session(
            tiny_model_dir("qwen2"), calibration_file, root / "other" / "qwen", "--method", "sleb"
        ),
    }


def compare(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["compare", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_plan_only_table_is_the_plans_numbers(sessions, tmp_path, capsys):
    out = tmp_path / "comparison.json"
    code, printed, _ = compare(
        [str(sessions["mp"]), str(sessions["sleb"]), "--json", str(out)], capsys
    )
    assert code == 0
    written = json.loads(out.read_text())
    mp, sleb = (read_plan_file(sessions[name] / session_files.PLAN) for name in ("mp", "sleb"))
    assert written["model"] == mp.model.name_or_path and written["eval_text"] is None
    assert written["dense"] | {"tasks": {}} == {
        "name": "dense", "method": "dense", "params": mp.model.params_dense, "ratio": 0.0,
        "calibration_ppl": mp.dense_score, "held_out_ppl": None, "tasks": {},
    }  # fmt: skip
    rows = [session["scores"] for session in written["sessions"]]
    for row, plan, name, method in (
        (rows[0], mp, "mp", "multipruner"),
        (rows[1], sleb, "sleb", "sleb"),
    ):
        last = plan.steps[-1]
        assert (row["name"], row["method"]) == (name, method)
        assert (row["params"], row["ratio"], row["calibration_ppl"]) == (
            last.params,
            last.ratio,
            last.score,
        )
        assert row["ratio"] == pytest.approx(1 - last.params / plan.model.params_dense)
    assert sleb.dense_score == mp.dense_score  # one model, one calibration: one dense row
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("name"))
    table = [line.split() for line in lines[header:]]
    assert table[0] == ["name", "method", "params", "ratio", "calib", "ppl"]
    assert [cells[0] for cells in table[1:]] == ["dense", "mp", "sleb"]
    assert table[3][2:] == [
        f"{rows[1]['params']:,}",
        f"{rows[1]['ratio']:.2%}",
        f"{last.score:.3f}",
    ]
    assert len({len(line) for line in lines[header:]}) == 1  # aligned


def test_the_plan_only_table_loads_neither_torch_nor_a_model(sessions):
    code = (
        "import sys\n"
        "from mptui.cli import main\n"
        f"assert main(['compare', {str(sessions['mp'])!r}, {str(sessions['sleb'])!r}]) == 0\n"
        "heavy = sorted({'torch', 'transformers', 'textual'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "sleb" in result.stdout


def test_evaluated_once_dense_and_as_mptui_eval_scores_each_session(
    sessions, calibration_file, tmp_path, monkeypatch, capsys
):
    import mptui.engine.evaluate
    import mptui.engine.rebuild

    loads, evaluations = [], []
    load, evaluate = mptui.engine.rebuild.load_model, mptui.engine.evaluate.evaluate
    monkeypatch.setattr(
        mptui.engine.rebuild, "load_model", lambda *a, **k: loads.append(a) or load(*a, **k)
    )
    monkeypatch.setattr(
        mptui.engine.evaluate,
        "evaluate",
        lambda *a, **k: evaluations.append(a) or evaluate(*a, **k),
    )
    out = tmp_path / "comparison.json"
    code, printed, err = compare(
        [str(sessions["mp"]), str(sessions["sleb"]), "--eval-text", str(calibration_file),
         "--seqlen", "32", "--tasks", TASK, "--include-path", str(include_path(tmp_path)),
         "--limit", "4", "--json", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert len(loads) == 2  # one per session; the dense model is scored from the first
    assert len(evaluations) == 3  # dense once, then each session
    assert "evaluating the dense model" in err and ": 1 / 1 shards (100%)" in err
    written = json.loads(out.read_text())
    assert written["tasks"] == [TASK] and written["eval_text"] == str(calibration_file)
    rows = [written["dense"], *(session["scores"] for session in written["sessions"])]
    for row in rows:
        assert 0 <= row["tasks"][TASK] <= 1 and row["held_out_ppl"] > 1
    assert f"{rows[2]['held_out_ppl']:.3f}" in printed.splitlines()[-1]
    for name, row in zip(("mp", "sleb"), rows[1:], strict=True):
        copy = shutil.copytree(sessions[name], tmp_path / name)  # eval writes into the session
        monkeypatch.setattr(mptui.engine.evaluate, "evaluate", evaluate)
        assert (
            main(
                [
                    "eval",
                    "--session",
                    str(copy),
                    "--perplexity",
                    str(calibration_file),
                    "--seqlen",
                    "32",
                ]
            )
            == 0
        )
        evaluation = json.loads((copy / session_files.EVALUATION).read_text())
        assert row["held_out_ppl"] == pytest.approx(evaluation["pruned"]["perplexity"], rel=1e-9)
        assert rows[0]["held_out_ppl"] == pytest.approx(evaluation["dense"]["perplexity"], rel=1e-9)
    assert rows[1]["held_out_ppl"] != rows[2]["held_out_ppl"]


@pytest.mark.parametrize(("other", "what"), [("seqlen16", "calibration"), ("qwen", "model")])
def test_another_model_or_calibration_is_refused_unless_forced(
    other, what, sessions, tmp_path, capsys
):
    pair = [str(sessions["mp"]), str(sessions[other])]
    code, _, err = compare(pair, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"mptui: error: the {what} differs: ")
    assert "--force" in err and (" seqlen 32" in err if what == "calibration" else "Qwen2" in err)
    out = tmp_path / "forced.json"
    code, printed, _ = compare([*pair, "--force", "--json", str(out)], capsys)
    assert code == 0
    forced = json.loads(out.read_text())["forced"]
    assert len(forced) == 1 and forced[0].startswith(f"the {what} differs")
    assert f"compared anyway (--force): {forced[0]}" in printed


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: size, modification time and content digest."""
    return {
        str(path.relative_to(root)): (
            path.stat().st_size,
            path.stat().st_mtime_ns,
            hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize(
    "case", ["missing", "running", "not a session", "twice", "no folder for --json"]
)
def test_bad_input_is_one_line_and_changes_no_file(case, sessions, calibration_file, capsys):
    root = sessions["mp"].parent
    mp, sleb = str(sessions["mp"]), str(sessions["sleb"])
    json_out = str(root / "comparison.json")
    argv, message = {
        "missing": ([mp, str(root / "nope")], f"session '{root / 'nope'}' does not exist"),
        "running": ([mp, sleb], f"session '{sleb}' is still running (process "),
        "not a session": (
            [str(root / "other"), sleb],
            f"'{root / 'other'}' is not an mptui session",
        ),
        "twice": ([mp, sleb, mp], f"session '{mp}' is given twice"),
        "no folder for --json": ([mp, sleb], "--json /no/such/folder/c.json must be a file"),
    }[case]
    if case == "no folder for --json":
        json_out = "/no/such/folder/c.json"
    owner = SessionFolder(sessions["sleb"])
    if case == "running":
        owner.lock()  # as a run in progress holds it
    try:
        before = snapshot(root)
        code, err = run_cli(
            ["compare", *argv, "--eval-text", str(calibration_file), "--json", json_out], capsys
        )
        assert snapshot(root) == before
    finally:
        owner.unlock()
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"mptui: error: {message}"), err
    assert not (root / "comparison.json").exists()


def test_report_writes_the_page_and_its_figures_beside_it(sessions, tmp_path, capsys):
    """``mptui report`` takes compare's arguments and writes the page and four figures, named
    after ``--out``; what it prints is the list of files written."""
    out = tmp_path / "methods.html"
    capsys.readouterr()
    code = main(["report", str(sessions["mp"]), str(sessions["sleb"]), "--out", str(out)])
    printed = capsys.readouterr().out.split()
    names = ["methods-perplexity.png", "methods-perplexity.pdf"]
    names += ["methods-layers.png", "methods-layers.pdf"]
    assert code == 0
    assert printed == [str(out), *(str(tmp_path / name) for name in names)]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["methods.html", *names])
    page = out.read_text()
    for name in ("mp", "sleb"):
        plan = read_plan_file(sessions[name] / session_files.PLAN)
        assert f">{name}<" in page and perplexity_text(plan.last.score) in page


@pytest.mark.parametrize("case", ["missing session", "no folder for --out", "--out a folder"])
def test_report_bad_input_is_one_line_and_writes_nothing(case, sessions, tmp_path, capsys):
    mp, sleb = str(sessions["mp"]), str(sessions["sleb"])
    argv, message = {
        "missing session": ([mp, str(tmp_path / "nope")], "session '"),
        "no folder for --out": ([mp, sleb], "--out /no/such/folder/r.html must be a file"),
        "--out a folder": ([mp, sleb], f"--out {tmp_path} must be a file"),
    }[case]
    out = {"no folder for --out": "/no/such/folder/r.html", "--out a folder": str(tmp_path)}
    code, err = run_cli(["report", *argv, "--out", out.get(case, str(tmp_path / "r.html"))], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"mptui: error: {message}"), err
    assert list(tmp_path.iterdir()) == []
