"""From a plain checkout (nothing installed), ``mptui.engine`` and ``mptui.themes`` are the
checkout's ``engine/`` and ``themes/``, and nothing else of the checkout joins ``mptui``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, json
import mptui.engine.control.events, mptui.themes
found = {}
for name in ("mptui.setup", "mptui.bench", "mptui.tests", "mptui.engine.missing"):
    try:
        importlib.import_module(name)
        found[name] = True
    except ImportError:
        found[name] = False
print(json.dumps({"engine": mptui.engine.control.events.__file__, "themes": mptui.themes.__file__,
                  "found": found}))
"""


def test_a_checkout_maps_only_engine_and_themes_into_mptui(tmp_path):
    # -S: no site-packages, so no editable install's finder: the checkout alone, as on a bare
    # GPU machine
    result = subprocess.run(
        [sys.executable, "-S", "-c", PROBE], cwd=tmp_path, capture_output=True, text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)}, check=True,
    )  # fmt: skip
    seen = json.loads(result.stdout)
    assert seen["engine"] == str(ROOT / "engine" / "control" / "events.py")
    assert seen["themes"] == str(ROOT / "themes" / "__init__.py")
    assert not any(seen["found"].values()), seen["found"]
