"""A report written into a folder that cannot be written: one line, exit 1, nothing left."""

from __future__ import annotations

from conftest import headless_session, run_cli


def test_a_report_into_a_read_only_folder_is_one_line(
    read_only_folder, tiny_model_dir, calibration_file, tmp_path, capsys
):
    session = headless_session(tiny_model_dir("llama"), calibration_file, tmp_path / "session")
    code, err = run_cli(["report", str(session), "--out", str(read_only_folder / "r.html")], capsys)
    assert code == 1
    assert err.startswith("mptui: error: the report could not be written: ")
    assert "Read-only file system" in err and len(err.strip().splitlines()) == 1
    assert list(read_only_folder.iterdir()) == []
