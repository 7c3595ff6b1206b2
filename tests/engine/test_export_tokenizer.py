"""An export's tokenizer as other tools load it: ``AutoTokenizer.from_pretrained(EXPORT)`` in an
interpreter of its own, its stdin a pipe that answers nothing, so that a "Do you wish to run
the custom code? [y/N]" prompt would show in its output instead of waiting for a person."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mptui.engine.model.loading import load_model
from mptui.engine.model.rebuild import apply_plan
from mptui.engine.output.export import LOAD_TIME_KEYS, export_model
from mptui.engine.search.plan import Plan, PlanModel, PlanStep
from mptui.engine.search.structures import Structure

DEMO_MODEL = Path(__file__).resolve().parents[2] / "mptui" / "demo" / "model"
TEXT = "Return the number of items in a container."
PROMPT = "Do you wish to run the custom code"
#: Loads the tokenizer as lm-eval, pipelines and serving tools call it, and prints its class and
#: the ids of TEXT; ``sys.argv[2]`` is the keyword arguments, as JSON.
LOADER = """
import json, sys
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], **json.loads(sys.argv[2]))
print("LOADED", type(tokenizer).__name__, json.dumps(tokenizer(sys.argv[3])["input_ids"]))
"""


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """The demo model with one MLP and some attention heads removed (an export that needs its
    modeling code), and the ids its own tokenizer gives TEXT."""
    model, tokenizer = load_model(str(DEMO_MODEL), device="cpu")
    structures = [Structure("mlp_block", 5), Structure("attn_heads", 2, 96, 96)]
    steps = [PlanStep(i, s, 0.0, 0, 0.0, "user") for i, s in enumerate(structures, start=1)]
    layers = model.config.num_hidden_layers
    apply_plan(model, Plan(PlanModel("demo", 0, layers, 0, 0), {}, 0.0, steps))
    plan = {
        "format": "mptui.plan/1",
        "model": {"name_or_path": str(DEMO_MODEL), "params_dense": 1, "num_layers": layers,
                  "mlp_width": 512, "attn_width": 192},
        "settings": {}, "dense_score": 10.0, "steps": [],
    }  # fmt: skip
    folder = tmp_path_factory.mktemp("export") / "pruned"
    assert not export_model(model, tokenizer, plan, folder).stock
    return folder, tokenizer(TEXT)["input_ids"]


def load_tokenizer(folder: Path, **kwargs) -> subprocess.CompletedProcess:
    """AutoTokenizer in a fresh interpreter whose stdin is a pipe closed at once: a prompt is
    printed and then reads end-of-file, where a person would have had to answer."""
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", LOADER, str(folder), json.dumps(kwargs), TEXT],
        input="", capture_output=True, text=True, env=env, cwd=folder.parent, timeout=120,
    )  # fmt: skip


def test_the_saved_tokenizer_carries_nothing_of_where_it_was_loaded(demo_export):
    folder, _ = demo_export
    saved = json.loads((folder / "tokenizer_config.json").read_text())
    assert not set(LOAD_TIME_KEYS) & set(saved), saved
    source = json.loads((DEMO_MODEL / "tokenizer_config.json").read_text())
    assert saved == source  # everything else is the model's own tokenizer configuration


def test_the_tokenizer_loads_without_remote_code_and_without_a_prompt(demo_export):
    """Tools that say ``trust_remote_code=False`` (lm-eval's default) get the tokenizer at once."""
    folder, ids = demo_export
    done = load_tokenizer(folder, trust_remote_code=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert PROMPT not in done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == f"LOADED TokenizersBackend {json.dumps(ids)}"


def test_the_tokenizer_loads_with_no_trust_remote_code_argument_without_a_prompt(demo_export):
    folder, ids = demo_export
    done = load_tokenizer(folder)
    assert done.returncode == 0, done.stderr[-3000:]
    assert PROMPT not in done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == f"LOADED TokenizersBackend {json.dumps(ids)}"
