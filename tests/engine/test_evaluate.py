"""Evaluation: lm-eval on local tasks offline, a rolling perplexity, and a plan re-applied."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import MINI_TASK_ITEMS
from transformers import AutoModelForCausalLM, AutoTokenizer

from mptui.engine.api import CalibrationSpec, Engine, PruneSettings, RunRequest
from mptui.engine.model.rebuild import apply_plan
from mptui.engine.output.evaluate import check_tasks, rolling_perplexity
from mptui.engine.session import files as session_files

MPTUI = Path(sys.executable).parent / "mptui"


def plain_rolling_perplexity(model, tokenizer, text: str, seqlen: int) -> float:
    """Documents (split at blank lines) joined by one blank line, tokenized once, rows of
    ``seqlen`` tokens, tail dropped, one row at a time: exp(mean over rows of the row's NLL)."""
    documents = [doc.strip() for doc in re.split(r"\n\s*\n", text) if doc.strip()]
    ids = tokenizer("\n\n".join(documents))["input_ids"]
    rows = torch.tensor(ids[: len(ids) // seqlen * seqlen]).view(-1, seqlen)
    nll = []
    with torch.inference_mode():
        for row in rows:
            logits = model(row[None]).logits[0].float()
            nll.append(F.cross_entropy(logits[:-1], row[1:]).item())
    return math.exp(sum(nll) / len(nll))


def plain_acc_norm(model, tokenizer) -> float:
    """lm-eval's acc_norm on the mini task, by hand: each choice is scored by the summed
    log-probability of its tokens after the question (lm-eval puts a space between them), then
    divided by the choice's length in characters; an item counts when its best is the label."""
    correct = 0
    with torch.inference_mode():
        for question, choices, label in MINI_TASK_ITEMS:
            scores = []
            for choice in choices:
                context = tokenizer(question)["input_ids"]
                whole = tokenizer(question + " " + choice)["input_ids"]
                ids = torch.tensor(whole)
                logprobs = F.log_softmax(model(ids[None]).logits[0].float(), dim=-1)
                targets = ids[len(context) :]
                predicted = logprobs[len(context) - 1 : -1].gather(1, targets[:, None])
                scores.append(predicted.sum().item() / len(choice))
            correct += scores.index(max(scores)) == label
    return correct / len(MINI_TASK_ITEMS)


def test_rolling_perplexity_is_the_plain_computation(tiny_model_dir, calibration_file):
    path = tiny_model_dir("llama")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = calibration_file.read_text()
    expected = plain_rolling_perplexity(model, tokenizer, text, 48)
    assert rolling_perplexity(model, tokenizer, text, 48) == pytest.approx(expected, rel=1e-5)


def test_a_plan_applied_to_the_dense_model_reproduces_the_pruned_one(
    tiny_model_dir, calibration_file
):
    path = tiny_model_dir("qwen3")
    settings = PruneSettings.with_distribution(
        0.35, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    engine = Engine(RunRequest(str(path), settings))
    plan = engine.run().plan
    fresh = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
    apply_plan(fresh, plan)
    ids = torch.randint(0, 500, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(
            fresh(ids).logits, engine.pruning.model(ids).logits, rtol=1e-6, atol=1e-6
        )
    assert fresh.num_parameters() == plan["steps"][-1]["params"]


def test_eval_a_session_dense_and_pruned(tiny_model_dir, calibration_file, local_task, tmp_path):
    session = tmp_path / "session"
    run = [
        str(MPTUI), str(tiny_model_dir("llama")), "--headless", "--calibration",
        str(calibration_file), "--seqlen", "32", "--target-ratio", "0.3", "--mlp-group", "40",
        "--distribution", "30:40:30", "--session", str(session),
    ]  # fmt: skip
    assert subprocess.run(run, capture_output=True).returncode == 0
    result = subprocess.run(
        [str(MPTUI), "eval", "--session", str(session), "--tasks", "mptui_mini",
         "--include-path", str(local_task), "--perplexity", str(calibration_file),
         "--seqlen", "32"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    evaluation = json.loads((session / session_files.EVALUATION).read_text())
    # the same numbers computed here: the dense model, then the session's plan on it
    plan = json.loads((session / session_files.PLAN).read_text())
    model = AutoModelForCausalLM.from_pretrained(plan["model"]["name_or_path"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(plan["model"]["name_or_path"])
    text = calibration_file.read_text()
    for which in ("dense", "pruned"):
        if which == "pruned":
            apply_plan(model, plan, session / session_files.CHANNEL_ORDER)
        scores = evaluation[which]["zero_shot"]
        assert scores["tasks"]["mptui_mini"]["metric"] == "acc_norm"
        assert scores["tasks"]["mptui_mini"]["value"] == pytest.approx(
            plain_acc_norm(model, tokenizer)
        )
        assert scores["average"] == scores["tasks"]["mptui_mini"]["value"]
        expected = plain_rolling_perplexity(model, tokenizer, text, 32)
        assert evaluation[which]["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert evaluation["pruned"]["perplexity"] != evaluation["dense"]["perplexity"]
    summary = (session / session_files.SUMMARY_MD).read_text()
    assert "| perplexity (dense) |" in summary and "| mptui_mini acc_norm (pruned) |" in summary


def test_eval_bad_input_is_one_line(tiny_model_dir, tmp_path):
    result = subprocess.run(
        [str(MPTUI), "eval", str(tiny_model_dir("llama")), "--tasks", "no_such_task"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("mptui: error: unknown lm-eval task(s): no_such_task")


def test_a_session_keeps_its_channel_order_and_re_applies_exactly_it(
    tiny_model_dir, calibration_file, tmp_path
):
    """The order taken at the start is saved; re-applying the plan reads it rather than
    recomputing it, so another device's rounding cannot keep other channels."""
    from mptui.engine.errors import BadInput
    from mptui.engine.model.channel_order import read_order, write_order

    path = tiny_model_dir("llama")
    order_file = tmp_path / session_files.CHANNEL_ORDER
    settings = PruneSettings.with_distribution(
        0.35, "30:40:30", calibration=CalibrationSpec(str(calibration_file), 0, 32), mlp_group=40
    )
    engine = Engine(RunRequest(str(path), settings, order_file=order_file))
    plan = engine.run().plan
    stored = read_order(order_file)
    assert sorted(stored) == [0, 1, 2, 3] and sorted(stored[0]) == ["attn", "mlp"]

    def fresh_with(order: Path):
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()
        apply_plan(model, plan, order)
        return model

    ids = torch.randint(0, 500, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(
            fresh_with(order_file)(ids).logits, engine.pruning.model(ids).logits, rtol=0, atol=0
        )
    # another order on file is the one used: the kept gate rows follow it
    reversed_orders = {
        layer: {name: order.flip(0) for name, order in by_name.items()}
        for layer, by_name in stored.items()
    }
    other = tmp_path / "other.safetensors"
    write_order(other, reversed_orders)
    dense = AutoModelForCausalLM.from_pretrained(path).model.layers[0].mlp.gate_proj.weight
    kept = fresh_with(other).model.layers[0].mlp.gate_proj.weight
    assert torch.equal(kept, dense[reversed_orders[0]["mlp"]][: kept.shape[0]])
    wrong = tmp_path / "wrong.safetensors"
    write_order(wrong, {0: {"mlp": torch.arange(5), "attn": torch.arange(4)}})
    with pytest.raises(BadInput, match=r"key '0\.mlp' is not an order of this model"):
        fresh_with(wrong)


def test_tasks_all_in_the_include_path_index_only_that_folder(local_task):
    """lm-eval's own 15,000 task files take seconds to index: not when they are not needed."""
    assert check_tasks(["mptui_mini"], local_task).all_tasks == ["mptui_mini"]
