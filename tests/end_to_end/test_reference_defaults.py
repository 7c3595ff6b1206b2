"""Reference defaults a user gets without asking: faithful mode's calibration, group sizes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mptui.engine.search.settings import FAITHFUL_CALIBRATION, resolve_group_sizes
from mptui.flags import cli_words

MPTUI = Path(sys.executable).parent / "mptui"


def test_one_given_group_size_keeps_the_reference_value_of_the_other():
    name = "meta-llama/Llama-2-7b-hf"
    assert (g := resolve_group_sizes(name, 11008, 128, None, None)).mlp == 1024
    assert g.attn == 128
    given_attn = resolve_group_sizes(name, 11008, 128, None, 256)
    assert (given_attn.mlp, given_attn.attn) == (1024, 256)
    assert "attn_group given" in str(given_attn.source)  # a script's words
    assert "--attn-group given" in cli_words(given_attn.source)  # the command line's
    given_mlp = resolve_group_sizes(name, 11008, 128, 512, None)
    assert (given_mlp.mlp, given_mlp.attn) == (512, 128)


def test_faithful_without_calibration_uses_alpaca_and_offline_says_so_in_one_line(
    tiny_model_dir, tmp_path
):
    assert FAITHFUL_CALIBRATION == "tatsu-lab/alpaca"
    result = subprocess.run(
        [str(MPTUI), str(tiny_model_dir("llama")), "--headless", "--faithful", "multipruner",
         "--seqlen", "32", "--session", str(tmp_path / "session")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mptui: error: could not load dataset 'tatsu-lab/alpaca'")
    assert "--calibration PATH" in lines[0]
    assert not (tmp_path / "session").exists()  # nothing was started
