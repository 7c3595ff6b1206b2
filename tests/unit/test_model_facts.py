"""A model's config.json and tokenizer.json, read without torch (engine/model/facts.py), give the
facts and the refusals the loaded model gives: real files written by the tiny-model fixtures, the
loaded config and tokenizer of the same folder to compare with. That the CLI's checks then run
before torch is imported is tests/end_to_end/test_cli_checks_first.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import constants
from transformers import AutoConfig, AutoTokenizer, GPT2Config

from bench.tiny import INTERMEDIATE
from mptui.engine.errors import BadInput, CalibrationError, UnsupportedModel
from mptui.engine.model.adapters import ADAPTERS
from mptui.engine.model.facts import (
    SUPPORTED_MODEL_TYPES,
    ModelFacts,
    Widths,
    check_with_model_files,
    model_file,
    read_model_facts,
)
from mptui.engine.search.calibration import load_calibration, load_documents
from mptui.engine.search.run_request import RunRequest
from mptui.engine.search.settings import CalibrationSpec, PruneSettings


def request(model: Path, source: Path | str = "", seqlen: int = 32, **settings) -> RunRequest:
    """A new run on ``model`` as the CLI builds it (``distribution`` defaults to all three)."""
    distribution = settings.pop("distribution", "30:40:30")
    calibration = CalibrationSpec(source=str(source), seqlen=seqlen, **settings.pop("spec", {}))
    return RunRequest(
        str(model),
        PruneSettings.with_distribution(0.3, distribution, calibration=calibration, **settings),
    )


def config_folder(tmp_path: Path, config: dict) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_config_json_gives_the_facts_of_the_loaded_config(family, tiny_model_dir):
    folder = tiny_model_dir(family)
    facts = read_model_facts(str(folder))
    assert facts == ModelFacts.from_config(AutoConfig.from_pretrained(folder))
    assert facts.model_types[0] == family and facts.max_positions == 256
    widths = facts.widths()
    assert widths.mlp == INTERMEDIATE and widths.kv_groups == 4
    assert widths.attn == widths.kv_groups * widths.head_dim * widths.q_per_kv


def test_gpt2_names_and_its_default_mlp_read_the_same_from_both_sources(tmp_path):
    """GPT-2's config.json has only its own names (n_embd, n_head, n_positions) and no n_inner
    for the usual MLP of four times the hidden size."""
    folder = config_folder(tmp_path, {"model_type": "gpt2", "n_embd": 64, "n_head": 4,
                                      "n_positions": 128, "n_inner": None})  # fmt: skip
    facts = read_model_facts(str(folder))
    assert facts == ModelFacts.from_config(GPT2Config(n_embd=64, n_head=4, n_positions=128))
    assert facts.max_positions == 128
    assert facts.widths() == Widths(mlp=256, head_dim=16, q_per_kv=1, kv_groups=4)


def test_the_supported_types_are_the_adapters_own():
    assert tuple(t for a in ADAPTERS for t in a.model_types) == SUPPORTED_MODEL_TYPES


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"seqlen": 4096}, BadInput, "seqlen 4096 is above this model's limit of 256"),
        ({"mlp_group": 176}, BadInput,
         "mlp_group 176 leaves no layer eligible: the MLP is 176 channels wide"),
        ({"attn_group": 64}, BadInput,
         "attn_group 64 leaves no layer eligible: attention is 64 query channels wide"),
        ({"attn_group": 24}, BadInput, "attn_group 24 is not whole KV groups: it must be a "
         "multiple of 16 (head_dim 8 x 2 query heads per KV head)"),
    ],
)  # fmt: skip
def test_a_run_the_model_cannot_take_is_refused_from_its_files(
    tiny_model_dir, settings, error, message
):
    with pytest.raises(error) as refused:
        check_with_model_files(request(tiny_model_dir("llama"), **settings), None)
    assert str(refused.value) == message


def test_group_sizes_follow_the_dimensions_the_run_prunes(tiny_model_dir):
    model = tiny_model_dir("llama")
    check_with_model_files(request(model, attn_group=64, distribution="50:50:0"), None)
    check_with_model_files(request(model, mlp_group=176, distribution="50:0:50"), None)
    check_with_model_files(request(model, mlp_group=160, attn_group=48), None)


def test_an_unsupported_architecture_is_named(tmp_path):
    folder = config_folder(tmp_path, {"model_type": "bert", "hidden_size": 32})
    with pytest.raises(UnsupportedModel) as refused:
        check_with_model_files(request(folder), None)
    assert str(refused.value) == (
        "architecture 'bert' is not supported; supported: llama, mistral, qwen2, qwen3, phi3, gpt2"
    )


def test_heads_that_do_not_split_into_kv_heads_are_refused(tmp_path):
    folder = config_folder(tmp_path, {"model_type": "llama", "hidden_size": 64,
                                      "num_attention_heads": 8, "num_key_value_heads": 3,
                                      "intermediate_size": 176})  # fmt: skip
    with pytest.raises(UnsupportedModel, match=r"^8 attention heads do not split into 3 key/value"):
        check_with_model_files(request(folder), None)


def test_what_the_files_do_not_say_is_left_to_the_loaded_model(tmp_path):
    """No limit or widths in the config (its class's defaults fill them at the load), a type
    its carried code decides (a legacy mptui export), no config at all: nothing refused."""
    bare = config_folder(tmp_path, {"model_type": "llama"})
    check_with_model_files(request(bare, seqlen=100_000, mlp_group=10_000), None)
    assert read_model_facts(str(bare)).widths() is None
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(
        json.dumps({"model_type": "mptui_pruned", "auto_map": {"AutoConfig": "m.C"}})
    )
    check_with_model_files(request(legacy), None)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_with_model_files(request(empty), None)
    (empty / "config.json").write_text("not json")
    assert read_model_facts(str(empty)) is None


def test_a_hub_model_is_read_from_the_local_cache_only(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir("llama"), snapshot)
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("0123abcd")
    assert model_file("acme/tiny", "config.json") == snapshot / "config.json"
    with pytest.raises(BadInput, match="above this model's limit of 256"):
        check_with_model_files(request(Path("acme/tiny"), seqlen=512), None)
    assert model_file("acme/absent", "config.json") is None
    assert model_file("not a hub id", "config.json") is None


@pytest.mark.parametrize("nsamples", [0, 1])
def test_short_calibration_is_refused_as_the_loaded_tokenizer_counts(
    tiny_model_dir, tmp_path, nsamples
):
    """At exactly one chunk the text passes; one token more and both refuse in the same words."""
    model = tiny_model_dir("llama")
    source = tmp_path / "short.txt"
    source.write_text("just a few words\n\nand a second, longer document\n\nthird\n")
    tokenizer = AutoTokenizer.from_pretrained(model)
    spec = {"nsamples": nsamples, "seed": 3}
    fits = load_calibration(CalibrationSpec(str(source), seqlen=1, **spec), tokenizer).numel()
    documents = load_documents(str(source))
    check_with_model_files(request(model, source, seqlen=fits, spec=spec), documents)
    with pytest.raises(CalibrationError) as engine:
        load_calibration(CalibrationSpec(str(source), seqlen=fits + 1, **spec), tokenizer)
    with pytest.raises(CalibrationError) as early:
        check_with_model_files(request(model, source, seqlen=fits + 1, spec=spec), documents)
    assert str(early.value) == str(engine.value)
    assert f"gives {fits} tokens, fewer than one chunk of {fits + 1}" in str(early.value)


def test_without_a_tokenizer_json_the_calibration_is_counted_at_the_load(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_model_dir("llama") / "config.json", folder)
    check_with_model_files(request(folder, "short.txt", seqlen=32), ["just a few words"])
