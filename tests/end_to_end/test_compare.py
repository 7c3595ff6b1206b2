"""``mptui compare``: sessions side by side on equal terms, from real sessions of a tiny llama.

The plan-only table is the plans' own numbers and loads nothing; with a held-out text and a
local lm-eval task the dense model is loaded and scored once, and each session's held-out
perplexity is what ``mptui eval --session`` computes for it. Sessions of another model or
calibration are refused unless ``--force``; bad input is one line and changes no file. A
recovered session shows what its recovery measured, sessions are named by what tells their paths
apart, and lm-eval's standard errors come with its scores.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import headless_session, run_cli

from mptui.cli import main
from mptui.demo.tasks import TASK, include_path
from mptui.engine.search.plan import read_plan_file
from mptui.engine.session import files as session_files
from mptui.engine.session.folder import SessionFolder
from mptui.report.page import perplexity_text


@pytest.fixture(scope="module")
def sessions(tiny_model_dir, calibration_file, tmp_path_factory) -> dict[str, Path]:
    """Two sessions to compare (MultiPruner and SLEB on one model and calibration), and two
    that cannot be compared with them: another calibration, another model; and, apart, a copy
    of the MultiPruner session fine-tuned by ``mptui recover`` (a few LoRA steps)."""
    root = tmp_path_factory.mktemp("compare")
    llama = tiny_model_dir("llama")
    found = {
        "mp": headless_session(llama, calibration_file, root / "mp"),
        "sleb": headless_session(llama, calibration_file, root / "sleb", "--method", "sleb"),
        "seqlen16": headless_session(
            llama, calibration_file, root / "other" / "seqlen16", "--seqlen", "16"
        ),
        "qwen": headless_session(
            tiny_model_dir("qwen2"), calibration_file, root / "other" / "qwen", "--method", "sleb"
        ),
    }
    recovered = shutil.copytree(found["mp"], root / "recovered" / "mp-lora")
    assert main(
        ["recover", str(recovered), "--data", str(calibration_file), "--steps", "4",
         "--warmup", "1", "--rank", "4", "--batch-size", "2", "--grad-accum", "1",
         "--seqlen", "32", "--eval-every", "2", "--save-every", "2", "--lr", "0.003"]
    ) == 0  # fmt: skip
    found["recovered"] = recovered
    return found


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
    assert written["dense"] == {
        "name": "dense", "method": "dense", "params": mp.model.params_dense, "ratio": 0.0,
        "calibration_ppl": mp.dense_score, "held_out_ppl": None, "tasks": {},
        "task_stderr": {}, "target_ratio": None,
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
        assert row["target_ratio"] == 0.3 and "recovery" not in row
    assert sleb.dense_score == mp.dense_score  # one model, one calibration: one dense row
    lines = printed.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("name"))
    table = [line.split() for line in lines[header : header + 4]]
    # both searches overshot their 30% target (a whole layer, a group of channels at a time):
    # the target is shown beside the ratio reached
    assert rows[0]["ratio"] > 0.3005 and rows[1]["ratio"] > 0.3005
    assert table[0] == ["name", "method", "params", "ratio", "target", "calib", "ppl"]
    assert [cells[0] for cells in table[1:]] == ["dense", "mp", "sleb"]
    assert table[1][4] == "—"
    assert table[3][2:] == [
        f"{rows[1]['params']:,}",
        f"{rows[1]['ratio']:.2%}",
        "30.00%",
        f"{last.score:.3f}",
    ]
    assert len({len(line) for line in lines[header : header + 4]}) == 1  # aligned
    assert lines[header + 4 :] == [
        "ratio: the share of parameters removed; target: what was asked for"
    ]


def test_the_target_column_is_left_out_when_every_session_reached_it(sessions, tmp_path, capsys):
    """A session whose plan asked for the ratio it reached shows no target column."""
    copy = shutil.copytree(sessions["mp"], tmp_path / "mp")
    plan = json.loads((copy / session_files.PLAN).read_text())
    plan["settings"]["target_ratio"] = plan["steps"][-1]["ratio"]
    (copy / session_files.PLAN).write_text(json.dumps(plan))
    code, printed, _ = compare([str(copy)], capsys)
    assert code == 0
    header = next(line for line in printed.splitlines() if line.startswith("name"))
    assert header.split() == ["name", "method", "params", "ratio", "calib", "ppl"]


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
    import mptui.engine.model.rebuild
    import mptui.engine.output.evaluate

    loads, evaluations = [], []
    load, evaluate = mptui.engine.model.rebuild.load_model, mptui.engine.output.evaluate.evaluate
    monkeypatch.setattr(
        mptui.engine.model.rebuild, "load_model", lambda *a, **k: loads.append(a) or load(*a, **k)
    )
    monkeypatch.setattr(
        mptui.engine.output.evaluate,
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
    lines = printed.splitlines()
    for row in rows:
        score, stderr = row["tasks"][TASK], row["task_stderr"][TASK]
        assert 0 <= score <= 1 and row["held_out_ppl"] > 1
        # lm-eval's standard error of a mean of 4 right-or-wrong answers: the sample standard
        # deviation over the square root of the count
        assert stderr == pytest.approx(math.sqrt(score * (1 - score) / (4 - 1)))
        shown = next(line for line in lines if line.startswith(f"{row['name']} "))
        assert f"{score:.4f} ± {stderr:.4f}" in shown
        assert f"{row['held_out_ppl']:.3f}" in shown
    assert "tasks: score ± lm-eval's standard error" in lines
    for name, row in zip(("mp", "sleb"), rows[1:], strict=True):
        copy = shutil.copytree(sessions[name], tmp_path / name)  # eval writes into the session
        monkeypatch.setattr(mptui.engine.output.evaluate, "evaluate", evaluate)
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


def test_sessions_are_named_by_what_tells_their_paths_apart(
    sessions, tmp_path, monkeypatch, capsys
):
    """Two sessions in folders of the same name are told apart by the folders above them, in
    the table, the JSON and the report (its table, legend and headings use the same names)."""
    first = shutil.copytree(sessions["mp"], tmp_path / "runs" / "lr-high" / "multipruner")
    second = shutil.copytree(sessions["sleb"], tmp_path / "runs" / "lr-low" / "multipruner")
    out = tmp_path / "c.json"
    code, printed, _ = compare([str(first), str(second), "--json", str(out)], capsys)
    assert code == 0
    names = [session["scores"]["name"] for session in json.loads(out.read_text())["sessions"]]
    assert names == ["lr-high/multipruner", "lr-low/multipruner"]
    rows = [line.split()[0] for line in printed.splitlines() if line.startswith("lr-")]
    assert rows == names
    # relative paths from elsewhere name them the same way
    monkeypatch.chdir(tmp_path / "runs")
    code, printed, _ = compare(["lr-high/multipruner", "../runs/lr-low/multipruner"], capsys)
    monkeypatch.undo()
    assert code == 0
    assert [line.split()[:2] for line in printed.splitlines() if line.startswith("lr-")] == [
        ["lr-high/multipruner", "multipruner"],
        ["lr-low/multipruner", "sleb"],
    ]
    report = tmp_path / "report.html"
    assert main(["report", str(first), str(second), "--out", str(report)]) == 0
    page = report.read_text()
    assert page.count(">lr-high/multipruner</th>") == 2  # the evaluation and settings tables
    assert f"<dd>{tmp_path / 'runs'}</dd>" in page  # where they are, said once


@pytest.mark.parametrize("damaged", [session_files.PLAN, session_files.JOURNAL])
def test_a_session_file_replaced_by_a_folder_is_named_as_damage(
    damaged, sessions, tmp_path, capsys
):
    copy = shutil.copytree(sessions["mp"], tmp_path / "mp")
    (copy / damaged).unlink()
    (copy / damaged).mkdir()
    before = snapshot(tmp_path)
    code, err = run_cli(["compare", str(sessions["sleb"]), str(copy)], capsys)
    assert code == 2
    file = copy / damaged
    assert err == f"mptui: error: session '{copy}' is damaged: {file} is a folder, not a file\n"
    assert snapshot(tmp_path) == before


def test_a_recovered_session_shows_what_its_recovery_measured(
    sessions, calibration_file, tmp_path, capsys
):
    """The plan-only table has the recovery's validation perplexity (what the export's model
    card states); with a held-out text the recovered model is scored beside the pruned one,
    as ``mptui eval --session`` scores it."""
    recovered = sessions["recovered"]
    log = [json.loads(line) for line in (recovered / "recovery.jsonl").read_text().splitlines()]
    validations = {r["step"]: r["val_perplexity"] for r in log if "val_perplexity" in r}
    assert set(validations) == {0, 2, 4}
    out = tmp_path / "plans.json"
    code, printed, _ = compare([str(sessions["mp"]), str(recovered), "--json", str(out)], capsys)
    assert code == 0
    mp_row, recovered_row = (s["scores"] for s in json.loads(out.read_text())["sessions"])
    assert "recovery" not in mp_row
    assert recovered_row["recovery"] == {
        "step": 4, "steps": 4, "perplexity": validations[4], "pruned_perplexity": validations[0],
        "data": str(calibration_file), "held_out_ppl": None, "tasks": {}, "task_stderr": {},
    }  # fmt: skip
    lines = printed.splitlines()
    assert lines[1].split()[5:] == ["calib", "ppl", "recovery", "val", "ppl"]
    shown = next(line for line in lines if line.startswith("recovered/mp-lora "))
    assert shown.split()[-1] == f"{validations[4]:.3f}"
    assert next(line for line in lines if line.startswith("mp ")).split()[-1] == "—"
    assert (
        f"recovered: recovered/mp-lora, LoRA step 4 of 4 on {calibration_file}; validation "
        f"perplexity {validations[0]:.3f} → {validations[4]:.3f} on the recovery's own "
        "validation rows (not the calibration rows)"
    ) in lines

    out = tmp_path / "evaluated.json"
    code, printed, err = compare(
        [str(recovered), "--eval-text", str(calibration_file), "--seqlen", "32", "--json",
         str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    row = json.loads(out.read_text())["sessions"][0]["scores"]
    pruned, after = row["held_out_ppl"], row["recovery"]["held_out_ppl"]
    assert "evaluating mp-lora, recovered" in err
    assert f"{pruned:.3f} → {after:.3f}" in printed
    assert "A → B: the pruned model's score, then the recovered model's" in printed
    copy = shutil.copytree(recovered, tmp_path / "eval-copy")  # eval writes into the session
    assert main(
        ["eval", "--session", str(copy), "--perplexity", str(calibration_file), "--seqlen", "32"]
    ) == 0  # fmt: skip
    evaluation = json.loads((copy / session_files.EVALUATION).read_text())
    assert pruned == pytest.approx(evaluation["pruned"]["perplexity"], rel=1e-9)
    assert after == pytest.approx(evaluation["recovered"]["perplexity"], rel=1e-9)
    assert after != pruned


def test_the_report_prints_nothing_of_its_libraries(sessions, calibration_file, tmp_path):
    """``mptui report`` with lm-eval tasks, run where no git checkout is: its stderr is our
    progress lines only, no tqdm bar of lm-eval or datasets, no ``fatal: not a git
    repository`` of the ``git describe`` lm-eval runs."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    probe = subprocess.run(["git", "rev-parse"], cwd=outside, capture_output=True, text=True)
    assert probe.returncode != 0, "the test needs a folder outside any git checkout"
    mptui = Path(sys.executable).with_name("mptui")
    result = subprocess.run(
        [str(mptui), "report", str(sessions["mp"]), "--out", str(outside / "r.html"),
         "--eval-text", str(calibration_file), "--seqlen", "32", "--tasks", TASK,
         "--include-path", str(include_path(tmp_path)), "--limit", "2"],
        cwd=outside, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == str(outside / "r.html")
    ours = re.compile(
        r"(mp \(multipruner, 1 of 1\): loading .*, re-applying its plan"
        r"|loading .*: \d+ / \d+ shards \(\d+%\)"
        r"|evaluating (the dense model|mp)( \(once, for every session\))?"
        r"|evaluating (the dense model|mp): \d+ / \d+ requests \(\d+%\))"
    )
    strange = [line for line in result.stderr.splitlines() if not ours.fullmatch(line)]
    assert strange == [], result.stderr
    assert re.search(r"^evaluating mp: (\d+) / \1 requests \(100%\)$", result.stderr, re.M)
