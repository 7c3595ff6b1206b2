"""Arguments are checked before torch is imported: each bad-input case of test_cli.py, run by
the real ``main`` in a fresh interpreter whose import system records every ``torch`` import,
ends in its one line with torch never loaded (so in well under a second, whatever the disk)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_cli import CASES, bad_input_cases, common

#: Runs ``main(argv)`` with a meta-path finder that notes the first import of torch (and what
#: was being imported around it) before letting the normal finders load it.
SPY = r"""
import json, sys, traceback

seen = []


class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append("".join(traceback.format_stack(limit=12)))
        return None


sys.meta_path.insert(0, Spy())
from mptui.cli import main

argv = json.loads(sys.argv[1])
try:
    code = main(argv)
except SystemExit as error:
    code = error.code
sys.stderr.flush()
print(json.dumps({"code": code, "torch": seen[0] if seen else None}))
"""


def run_spied(argv: list[str]) -> tuple[dict, str]:
    result = subprocess.run(
        [sys.executable, "-c", SPY, json.dumps(argv)], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_before_torch_is_imported(
    case, tiny_model_dir, calibration_file, tmp_path
):
    model = tiny_model_dir("llama")
    extra, message = bad_input_cases(model, calibration_file, tmp_path)[case]
    args = common(model, calibration_file, tmp_path / "out")
    if not extra[0].startswith("--"):
        args[0] = extra[0]
    else:
        args += extra
    outcome, err = run_spied(args)
    lines = [line for line in err.splitlines() if line.strip() and "note:" not in line]
    assert outcome["code"] not in (0, None) and len(lines) == 1 and message in lines[0], err
    assert outcome["torch"] is None, f"torch imported before the error:\n{outcome['torch']}"


def test_the_spy_sees_torch():
    code = SPY.replace("from mptui.cli import main", "import torch\nfrom mptui.cli import main")
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(["--version"])], capture_output=True, text=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1])["torch"] is not None
