"""``mptui compare --speed`` and ``mptui report --speed``: every row's generation speed in real
llama.cpp (a temporary GGUF export) and in transformers, from real sessions of tiny models.

Two sessions of a tiny llama (MultiPruner, SLEB) and one of a tiny Qwen3, whose family has no
GGUF: its llama.cpp cell is n/a with the exporter's reason, its transformers cell a number. The
numbers themselves are noise on models this small; what is checked is that each is measured,
positive and finite, that the speed-up is the ratio of the two measurements, that the GGUF
files are gone afterwards, and that without ``--speed`` nothing of it appears.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

import pytest
from conftest import headless_session, run_cli

from mptui.cli import main

SPEED_COLUMNS = ("llama.cpp tok/s", "transformers tok/s")


@pytest.fixture(scope="module")
def sessions(tiny_model_dir, calibration_file, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speed")
    llama = tiny_model_dir("llama")
    return {
        "mp": headless_session(llama, calibration_file, root / "mp"),
        "sleb": headless_session(llama, calibration_file, root / "sleb", "--method", "sleb"),
        "qwen3": headless_session(
            tiny_model_dir("qwen3"), calibration_file, root / "qwen3", "--method", "sleb"
        ),
    }


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """The temporary folder the GGUF files are written to, to see that they are removed."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_compare_speed_times_every_row_in_llama_cpp_and_transformers(
    sessions, scratch, tmp_path, capsys
):
    out = tmp_path / "comparison.json"
    paths = [str(sessions[name]) for name in ("mp", "sleb", "qwen3")]
    capsys.readouterr()
    argv = ["compare", *paths, "--force", "--speed", "--speed-repeats", "1", "--json", str(out)]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    assert list(scratch.iterdir()) == []  # every temporary GGUF deleted

    written = json.loads(out.read_text())
    assert written["speed"] == {
        "prompt_tokens": 64, "new_tokens": 32, "repeats": 1, "gguf_type": None,
    }  # fmt: skip
    rows = {"dense": written["dense"]}
    rows |= {row["scores"]["name"]: row["scores"] for row in written["sessions"]}
    dense = rows["dense"]["speed"]
    for name, row in rows.items():
        speed = row["speed"]
        assert positive(speed["transformers"]["prompt_tps"]), name
        assert positive(speed["transformers"]["generate_tps"]), name
        assert speed["transformers_on"] == "float32 on cpu"
        assert speed["threads"] == 1  # OMP_NUM_THREADS=1, as torch
        ratio = speed["transformers"]["generate_tps"] / dense["transformers"]["generate_tps"]
        assert speed["speedup"]["transformers"] == pytest.approx(ratio)
        if name == "qwen3":
            continue
        assert speed["gguf_type"] == "f16"  # float32 weights: served as f16
        assert speed["llama_cpp_na"] is None
        assert positive(speed["llama_cpp"]["prompt_tps"]), name
        assert positive(speed["llama_cpp"]["generate_tps"]), name
        ratio = speed["llama_cpp"]["generate_tps"] / dense["llama_cpp"]["generate_tps"]
        assert speed["speedup"]["llama_cpp"] == pytest.approx(ratio)
    qwen3 = rows["qwen3"]["speed"]
    assert qwen3["llama_cpp"] is None and qwen3["speedup"]["llama_cpp"] is None
    assert qwen3["llama_cpp_na"].startswith("a qwen3 model cannot be written as GGUF (")

    lines = captured.out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("name "))
    assert re.split(r"\s{2,}", lines[header])[-2:] == list(SPEED_COLUMNS)
    table = {
        line.split()[0]: re.split(r"\s{2,}", line.strip())[-2:]
        for line in lines[header + 1 : header + 5]
    }
    assert set(table) == {"dense", "mp", "sleb", "qwen3"}
    llama_cpp, transformers = table["qwen3"]
    assert llama_cpp == "n/a" and re.fullmatch(r"[\d,]+\.\d \(\d+\.\d\d×\)", transformers)
    assert all(re.fullmatch(r"[\d,]+\.\d", cell) for cell in table["dense"])
    for name in ("mp", "sleb"):  # each engine's speed and the speed-up over dense
        assert all(re.fullmatch(r"[\d,]+\.\d \(\d+\.\d\d×\)", cell) for cell in table[name])
    assert len({len(line) for line in lines[header : header + 5]}) == 1  # aligned
    assert f"llama.cpp n/a for qwen3: {qwen3['llama_cpp_na']}" in lines
    assert any(line.startswith("speed: llama.cpp ran a temporary GGUF f16 on 1 CPU thread;")
               for line in lines)  # fmt: skip
    # Progress of the long part on stderr, the dense model timed once.
    assert captured.err.count("dense: timing llama.cpp") == 1
    assert "qwen3: llama.cpp n/a: a qwen3 model cannot be written as GGUF" in captured.err


def test_without_speed_nothing_of_it_appears(sessions, tmp_path, capsys):
    out = tmp_path / "comparison.json"
    capsys.readouterr()
    assert main(["compare", str(sessions["mp"]), str(sessions["sleb"]), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert not any(column in printed for column in SPEED_COLUMNS) and "speed" not in printed
    written = json.loads(out.read_text())
    assert "speed" not in written and "speed" not in written["dense"]
    assert all("speed" not in row["scores"] for row in written["sessions"])


def test_report_speed_section_shows_what_the_pruning_bought(sessions, scratch, tmp_path, capsys):
    out = tmp_path / "report.html"
    paths = [str(sessions[name]) for name in ("mp", "qwen3")]
    capsys.readouterr()
    argv = ["report", *paths, "--force", "--speed", "--speed-repeats", "1", "--out", str(out)]
    assert main(argv) == 0
    assert list(scratch.iterdir()) == []
    page = out.read_text()
    start = page.index("<h2>What the pruning bought</h2>")
    section = page[start : page.index("</section>", start)]
    for heading in ("llama.cpp generate tok/s", "transformers speed-up", "llama.cpp prompt tok/s"):
        assert heading in section
    assert section.count("<tr") == 4  # the header, dense, mp, qwen3
    assert "×</td>" in section and ">n/a</td>" in section
    assert "llama.cpp n/a for qwen3: a qwen3 model cannot be written as GGUF" in section

    plain = tmp_path / "plain.html"
    assert main(["report", paths[0], "--out", str(plain)]) == 0
    assert "What the pruning bought" not in plain.read_text()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--speed-repeats", "0"], "--speed-repeats must be at least 1 (got 0)"),
        (["--speed-gguf-type", "q4"], "--speed-gguf-type 'q4': choose one of f32, f16, bf16"),
    ],
)
def test_bad_speed_options_are_one_line_before_any_load(argv, message, sessions, capsys):
    code, err = run_cli(["compare", str(sessions["mp"]), "--speed", *argv], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"mptui: error: {message}"), err
