"""The shipped demo model is real: trained, GQA, small, and its blocks matter unevenly."""

from __future__ import annotations

import json

from transformers import AutoConfig, AutoTokenizer

from mptui.cli import DEMO_DIR


def test_demo_model_is_small_trained_and_uneven():
    model_dir = DEMO_DIR / "model"
    config = AutoConfig.from_pretrained(model_dir)
    assert config.model_type == "llama"
    assert config.num_hidden_layers >= 8
    assert config.num_key_value_heads < config.num_attention_heads
    size = sum(f.stat().st_size for f in model_dir.iterdir())
    assert size <= 15 * 2**20
    report = json.loads((model_dir / "build_report.json").read_text())
    removal = report["block_removal_ppl"].values()
    assert report["val_ppl"] < 100
    assert max(removal) / report["val_ppl"] > 10
    assert min(removal) < 1.05 * report["val_ppl"]


def test_demo_tokenizer_and_text_are_shipped():
    tokenizer = AutoTokenizer.from_pretrained(DEMO_DIR / "model")
    text = (DEMO_DIR / "calibration.txt").read_text()
    assert len(text) > 1_000_000
    assert (DEMO_DIR / "validation.txt").stat().st_size > 10_000
    ids = tokenizer("def main():\n    return 0")["input_ids"]
    assert tokenizer.decode(ids) == "def main():\n    return 0"


def test_demo_validation_perplexity_matches_the_report():
    import pytest
    from transformers import AutoModelForCausalLM

    from mptui.demo.build import SEQLEN
    from mptui.engine.adapters import adapter_for
    from mptui.engine.calibration import split_documents, tokenize_chunks
    from mptui.engine.scoring import Scorer

    model_dir = DEMO_DIR / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chunks = tokenize_chunks(
        tokenizer, split_documents((DEMO_DIR / "validation.txt").read_text()), SEQLEN
    )
    scorer = Scorer(model, adapter_for(model), chunks, batch_size=8, prefix_cache=False)
    report = json.loads((model_dir / "build_report.json").read_text())
    assert scorer.score() == pytest.approx(report["val_ppl"], abs=0.01)
