"""Exports: real smaller checkpoints that load without mptui and compute what the engine did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli, weights_file
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from bench.tiny import FAMILIES
from mptui.engine.api import CalibrationSpec, Engine, PruneSettings, RunRequest
from mptui.engine.errors import BadInput
from mptui.engine.model.pruned_modeling import IncompleteCheckpoint
from mptui.engine.model.rebuild import apply_plan
from mptui.engine.output.evaluate import rolling_perplexity
from mptui.engine.output.export import export_model
from mptui.engine.search.plan import Plan, PlanModel, PlanStep
from mptui.engine.search.structures import Structure
from mptui.engine.session import files as session_files

#: Loads each export in a fresh interpreter where importing mptui fails, as on a machine
#: without it, and saves its logits and a greedy continuation.
LOADER = """
import importlib.abc, sys
class NoMptui(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "mptui":
            raise ImportError("mptui is not installed here")
sys.meta_path.insert(0, NoMptui())
import torch
from transformers import AutoModelForCausalLM
ids = torch.load(sys.argv[1])
results = {}
for folder, remote in zip(sys.argv[3::2], sys.argv[4::2]):
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote == "remote")
    with torch.inference_mode():
        results[folder] = {
            "class": type(model).__name__,
            "model_type": model.config.model_type,
            "logits": model(ids).logits,
            "generated": model.generate(ids[:1, :6], max_new_tokens=6, do_sample=False),
        }
torch.save(results, sys.argv[2])
"""
IDS = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(5))


def load_elsewhere(tmp_path: Path, exports: dict[Path, bool]) -> dict:
    """``{folder: outputs}`` from a fresh interpreter that cannot import mptui."""
    torch.save(IDS, tmp_path / "ids.pt")
    args = [str(tmp_path / "ids.pt"), str(tmp_path / "out.pt")]
    for folder, remote in exports.items():
        args += [str(folder), "remote" if remote else "stock"]
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", LOADER, *args], capture_output=True, text=True, env=env,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(tmp_path / "out.pt")


def run_engine(path: Path, calibration: Path) -> Engine:
    settings = PruneSettings.with_distribution(
        0.35, "30:40:30", calibration=CalibrationSpec(str(calibration), 0, 32), mlp_group=40
    )
    engine = Engine(RunRequest(str(path), settings))
    assert engine.run().reason == "done"
    return engine


def engine_outputs(model) -> dict:
    with torch.inference_mode():
        return {
            "logits": model(IDS).logits,
            "generated": model.generate(IDS[:1, :6], max_new_tokens=6, do_sample=False),
        }


def kept_parameter_count(folder: Path) -> int:
    return sum(t.numel() for t in load_file(weights_file(folder)).values())


def test_every_family_exports_a_checkpoint_that_loads_without_mptui(
    tiny_model_dir, calibration_file, tmp_path
):
    expected, exports = {}, {}
    for family in FAMILIES:
        engine = run_engine(tiny_model_dir(family), calibration_file)
        pruning = engine.pruning
        kinds = {step.structure.kind for step in pruning.steps}
        assert {"mlp_channels", "attn_heads"} <= kinds and kinds & {"attn_block", "mlp_block"}
        result = export_model(pruning.model, pruning.tokenizer, pruning.plan(), tmp_path / family)
        assert not result.stock
        assert result.params == pruning.params == kept_parameter_count(tmp_path / family)
        expected[tmp_path / family] = engine_outputs(pruning.model)
        exports[tmp_path / family] = True
    loaded = load_elsewhere(tmp_path, exports)
    for folder, want in expected.items():
        got = loaded[str(folder)]
        assert got["class"] == "MptuiPrunedForCausalLM"
        assert got["model_type"] == folder.name  # its family: AutoTokenizer needs no code
        torch.testing.assert_close(got["logits"], want["logits"], rtol=0, atol=1e-5)
        assert torch.equal(got["generated"], want["generated"])


def commit_all(model, structures: list[Structure]) -> None:
    steps = [PlanStep(i, s, 0.0, 0, 0.0, "user") for i, s in enumerate(structures, start=1)]
    layers = model.config.num_hidden_layers
    apply_plan(model, Plan(PlanModel("tiny", 0, layers, 0, 0), {}, 0.0, steps))


def demo_plan(path: Path, params: int) -> dict:
    """The least of a plan that an export writes and describes."""
    return {
        "format": "mptui.plan/1",
        "model": {"name_or_path": str(path), "params_dense": params, "num_layers": 4,
                  "mlp_width": 128, "attn_width": 64},
        "settings": {}, "dense_score": 10.0, "steps": [],
    }  # fmt: skip


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_removing_whole_layers_exports_a_stock_checkpoint(family, tiny_model_dir, tmp_path):
    path = tiny_model_dir(family)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    dense_layers = model.config.num_hidden_layers
    commit_all(model, [Structure(kind, layer) for layer in (0, 2) for kind in
                       ("attn_block", "mlp_block")])  # fmt: skip
    result = export_model(model, None, demo_plan(path, 1), tmp_path / family)
    assert result.stock and result.params == model.num_parameters()
    config = json.loads((tmp_path / family / "config.json").read_text())
    assert "auto_map" not in config and not (tmp_path / family / "modeling_mptui.py").exists()
    assert AutoConfig.from_pretrained(tmp_path / family).num_hidden_layers == dense_layers - 2
    if "layer_types" in config:
        assert len(config["layer_types"]) == dense_layers - 2
    got = load_elsewhere(tmp_path, {tmp_path / family: False})[str(tmp_path / family)]
    assert got["model_type"] == family
    torch.testing.assert_close(got["logits"], engine_outputs(model)["logits"], rtol=0, atol=1e-5)


@pytest.fixture
def llama_export(tiny_model_dir, tmp_path) -> Path:
    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    commit_all(model, [Structure("attn_block", 1), Structure("mlp_channels", 0, 112, 64),
                       Structure("attn_heads", 2, 32, 32)])  # fmt: skip
    export_model(model, None, demo_plan(path, 1), tmp_path / "export")
    return tmp_path / "export"


def rewrite_weights(folder: Path, change) -> None:
    tensors = load_file(weights_file(folder))
    change(tensors)
    save_file(tensors, weights_file(folder), metadata={"format": "pt"})


def lose_a_weight(tensors: dict) -> None:
    tensors.pop("model.layers.0.mlp.down_proj.weight")


def widen_a_weight(tensors: dict) -> None:
    tensors["model.layers.2.self_attn.q_proj.weight"] = torch.zeros(64, 64)


def add_a_weight(tensors: dict) -> None:
    tensors["model.layers.1.self_attn.q_proj.weight"] = torch.zeros(64, 64)


@pytest.mark.parametrize(
    ("tamper", "error", "message"),
    [
        (
            lose_a_weight,
            IncompleteCheckpoint.__name__,
            r"missing keys: model\.layers\.0\.mlp",
        ),
        (widen_a_weight, "RuntimeError", "ignore_mismatched_sizes"),
        (add_a_weight, IncompleteCheckpoint.__name__, "unexpected keys: model.layers.1.self_attn"),
    ],
)
def test_a_tampered_export_fails_to_load(tamper, error, message, llama_export):
    """transformers alone would re-initialise a missing weight at random; an export refuses."""
    rewrite_weights(llama_export, tamper)
    with pytest.raises(Exception, match=message) as raised:
        AutoModelForCausalLM.from_pretrained(llama_export, trust_remote_code=True)
    assert type(raised.value).__name__ == error  # the export's own copy of the class


def test_an_export_refuses_to_load_as_a_dense_model_without_its_code(llama_export):
    """Without its code, the family's stock class looks for ``model.safetensors``; a pruned
    export's weights are the ``mptui`` variant, so the load fails instead of initialising the
    missing sub-blocks at random."""
    assert json.loads((llama_export / "config.json").read_text())["model_type"] == "llama"
    with pytest.raises(OSError, match=r"no file named model\.safetensors"):
        AutoModelForCausalLM.from_pretrained(llama_export)


def test_an_export_never_overwrites_a_folder_that_is_not_an_export(tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("irreplaceable")
    with pytest.raises(BadInput, match="not empty"):
        export_model(model, None, demo_plan(path, 1), precious)
    assert (precious / "thesis.txt").read_text() == "irreplaceable"
    assert [p.name for p in tmp_path.iterdir()] == ["notes"]  # no staging folder left behind


def test_a_new_export_replaces_an_earlier_one(tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    export_model(model, None, demo_plan(path, 1), tmp_path / "out")
    commit_all(model, [Structure("mlp_block", 3)])
    export_model(model, None, demo_plan(path, 1), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["mptui_layout"]["removed"]["model.layers.3.mlp"] == "mlp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_big_export_is_sharded_with_an_index(tiny_model_dir, tmp_path):
    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    commit_all(model, [Structure("mlp_channels", 1, 112, 64)])
    seen = []
    export_model(
        model, None, demo_plan(path, 1), tmp_path / "out", max_shard_bytes=200_000,
        progress=lambda done, total: seen.append((done, total)),
    )  # fmt: skip
    index = json.loads((tmp_path / "out" / "model.safetensors.index.mptui.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == len(seen) > 1 and seen[-1][0] == seen[-1][1]
    assert shards[0] == f"model-00001-of-{len(shards):05d}.mptui.safetensors"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True)
    torch.testing.assert_close(reloaded(IDS).logits, model(IDS).logits, rtol=0, atol=1e-5)


MPTUI = Path(sys.executable).parent / "mptui"


def test_headless_export_and_session_export_agree_and_evaluate(
    tiny_model_dir, calibration_file, tmp_path
):
    session, live, later = tmp_path / "session", tmp_path / "live", tmp_path / "later"
    run = [
        str(MPTUI), str(tiny_model_dir("qwen2")), "--headless", "--calibration",
        str(calibration_file), "--seqlen", "32", "--target-ratio", "0.3", "--mlp-group", "40",
        "--distribution", "30:40:30", "--session", str(session), "--export", str(live),
    ]  # fmt: skip
    done = subprocess.run(run, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"exported to {live}:" in done.stdout and "trust_remote_code=True" in done.stdout
    done = subprocess.run(
        [str(MPTUI), "export", str(session), "--out", str(later)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    plan = json.loads((session / session_files.PLAN).read_text())
    assert json.loads((later / session_files.PLAN).read_text())["steps"] == plan["steps"]
    assert "| layer | attention | MLP |" in (later / "README.md").read_text()
    models = [
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
        for folder in (live, later)
    ]
    assert models[0].num_parameters() == plan["steps"][-1]["params"]
    with torch.inference_mode():
        torch.testing.assert_close(models[0](IDS).logits, models[1](IDS).logits, rtol=0, atol=0)
    scored = subprocess.run(
        [str(MPTUI), "eval", str(live), "--perplexity", str(calibration_file), "--seqlen", "32"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    tokenizer = AutoTokenizer.from_pretrained(later, trust_remote_code=True)
    expected = rolling_perplexity(models[1], tokenizer, calibration_file.read_text(), 32)
    assert json.loads(scored.stdout)["perplexity"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "{tmp}/nowhere", "--out", "{tmp}/x"], "not an mptui session with a plan"),
        (["export", "{tmp}"], "the following arguments are required: --out"),
        (["{model}", "--headless", "--calibration", "{calibration}", "--seqlen", "32",
          "--export", "{tmp}"],
         "is not empty and holds no earlier export"),
    ],
)  # fmt: skip
def test_export_bad_input_is_one_line(
    argv, message, tiny_model_dir, calibration_file, tmp_path, capsys
):
    (tmp_path / "keep.txt").write_text("mine")
    values = {"tmp": tmp_path, "model": tiny_model_dir("llama"), "calibration": calibration_file}
    code, stderr = run_cli([a.format(**values) for a in argv], capsys)
    assert code == 2
    assert stderr.startswith("mptui: error: ") and message in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_a_float32_search_of_a_half_precision_model_exports_half_precision_exactly(tmp_path):
    """The demo model is stored in float16 and searched in float32 on a CPU: the export goes
    back to float16 (exact, as the float32 weights were widened from it) and to half the size."""
    from mptui.cli import DEMO_DIR
    from mptui.engine.model.loading import load_model

    base = DEMO_DIR / "model"
    model, tokenizer = load_model(str(base), device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    commit_all(model, [Structure("mlp_block", 5), Structure("attn_heads", 2, 96, 96)])
    result = export_model(model, tokenizer, demo_plan(base, 1), tmp_path / "half")
    weights = load_file(weights_file(tmp_path / "half"))
    assert {t.dtype for t in weights.values()} == {torch.float16}
    assert result.bytes == 2 * result.params
    assert result.bytes < (base / "model.safetensors").stat().st_size
    assert json.loads((tmp_path / "half" / "config.json").read_text())["dtype"] == "float16"
    exported = AutoModelForCausalLM.from_pretrained(
        tmp_path / "half", trust_remote_code=True, dtype=torch.float32
    )
    with torch.inference_mode():
        torch.testing.assert_close(exported(IDS).logits, model(IDS).logits, rtol=0, atol=0)
    assert oct(weights_file(tmp_path / "half").stat().st_mode & 0o777) == oct(
        0o666 & ~current_umask()
    )


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_an_export_pruned_again_exports_again(llama_export, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(llama_export, trust_remote_code=True).eval()
    commit_all(model, [Structure("mlp_block", 3), Structure("mlp_channels", 1, 112, 64)])
    export_model(model, None, demo_plan(llama_export, 1), tmp_path / "again")
    source = (tmp_path / "again" / "modeling_mptui.py").read_text()
    assert "from transformers import LlamaForCausalLM as FamilyForCausalLM" in source
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again", trust_remote_code=True)
    assert again.num_parameters() == model.num_parameters()
    with torch.inference_mode():
        torch.testing.assert_close(again(IDS).logits, model(IDS).logits, rtol=0, atol=0)
