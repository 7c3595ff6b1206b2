"""docs/method.md §11: SLEB and ShortGPT as methods of the one engine.

Each is checked against a plain version written here: SLEB as a full forward of the whole
calibration set per candidate layer, the layer taken out by zeroing its two output projections
(the residual adds exactly zero then); ShortGPT's Block Influence from the model's own
``output_hidden_states``. Then: the plan stops at the target, a session resumes to the same
plan, and an export gives the live pruned model's logits.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.tiny import FAMILIES
from mptui.engine.api import CalibrationSpec, PruneSettings, RunRequest
from mptui.engine.control import commands as cmd
from mptui.engine.control import events as ev
from mptui.engine.errors import BadInput
from mptui.engine.model.rebuild import apply_plan
from mptui.engine.output.eval_request import EvalRequest
from mptui.engine.output.evaluate import rolling_perplexity
from mptui.engine.output.export import export_model
from mptui.engine.runner import Engine
from mptui.engine.search.calibration import load_calibration
from mptui.engine.search.structures import Structure
from mptui.engine.session.folder import SessionFolder
from mptui.engine.session.summary import markdown, summarize
from tests.conftest import headless_session, run_cli

TARGET = 0.3
SEQLEN = 32
#: The module that closes each sub-block, per family: zeroed, the sub-block adds nothing.
OUTPUT_PROJECTIONS = {"self_attn.o_proj", "mlp.down_proj", "attn.c_proj", "mlp.c_proj"}


def request_for(path, calibration, method: str, target: float = TARGET, **kw) -> RunRequest:
    settings = PruneSettings.with_distribution(
        target, None, calibration=CalibrationSpec(str(calibration), 0, SEQLEN), method=method, **kw
    )
    return RunRequest(str(path), settings)


def run(request: RunRequest, **kw) -> Engine:
    engine = Engine(request, **kw)
    assert engine.run().reason == "done", engine.failure
    return engine


def removed_layers(steps) -> list[int]:
    """Layers in the order the plan removed them, checking each is its two sub-blocks."""
    kinds = [(step.structure.kind, step.structure.layer) for step in steps]
    pairs = list(zip(kinds[::2], kinds[1::2], strict=True))
    assert all(a == ("attn_block", m[1]) and m[0] == "mlp_block" for a, m in pairs), kinds
    return [mlp[1] for _attn, mlp in pairs]


def plain_model(path):
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def decoder_layers(model) -> torch.nn.ModuleList:
    return model.model.layers if hasattr(model, "model") else model.transformer.h


def plain_perplexity(model, chunks: torch.Tensor) -> float:
    with torch.inference_mode():
        logits = model(chunks).logits.float()
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), chunks[:, 1:], reduction="none")
    return math.exp(nll.double().mean(dim=1).mean().item())


def zero_layer(model, layer: int) -> dict:
    """Zero the layer's output projections; returns what to put back."""
    saved = {}
    for name, module in decoder_layers(model)[layer].named_modules():
        if name in OUTPUT_PROJECTIONS:
            for pname, param in module.named_parameters():
                saved[(name, pname)] = param.data.clone()
                param.data.zero_()
    assert len({name for name, _p in saved}) == 2
    return saved


def restore_layer(model, layer: int, saved: dict) -> None:
    modules = dict(decoder_layers(model)[layer].named_modules())
    for (name, pname), value in saved.items():
        getattr(modules[name], pname).data.copy_(value)


def plain_sleb(path, calibration, steps: int) -> tuple[list[int], list[float]]:
    model, tokenizer = plain_model(path)
    chunks = load_calibration(CalibrationSpec(str(calibration), 0, SEQLEN), tokenizer)
    removed, scores = [], []
    for _ in range(steps):
        trial = {}
        for layer in range(len(decoder_layers(model))):
            if layer in removed:
                continue
            saved = zero_layer(model, layer)
            trial[layer] = plain_perplexity(model, chunks)
            restore_layer(model, layer, saved)
        best = min(trial, key=trial.__getitem__)
        zero_layer(model, best)
        removed.append(best)
        scores.append(trial[best])
    return removed, scores


def plain_block_influence(path, calibration) -> list[float]:
    model, tokenizer = plain_model(path)
    chunks = load_calibration(CalibrationSpec(str(calibration), 0, SEQLEN), tokenizer)
    layers = decoder_layers(model)
    last = []
    layers[-1].register_forward_hook(
        lambda _m, _a, out: last.append(out[0] if isinstance(out, tuple) else out)
    )
    with torch.inference_mode():
        states = list(model(chunks, output_hidden_states=True).hidden_states)
    states[len(layers)] = last[0]  # the model reports its final norm's output in its place
    return [
        1 - F.cosine_similarity(states[i], states[i + 1], dim=-1).double().mean().item()
        for i in range(len(layers))
    ]


def assert_stops_at_target(steps) -> None:
    """The last layer reached the target and the one before it had not (the strict stop)."""
    assert len(steps) >= 4
    assert steps[-1].ratio >= TARGET > steps[-3].ratio


@pytest.mark.parametrize("family", FAMILIES)
def test_sleb_removes_the_layers_a_plain_search_removes(family, tiny_model_dir, calibration_file):
    path = tiny_model_dir(family)
    engine = run(request_for(path, calibration_file, "sleb"))
    steps = engine.pruning.steps
    layers = removed_layers(steps)
    assert_stops_at_target(steps)
    want_layers, want_scores = plain_sleb(path, calibration_file, len(layers))
    assert layers == want_layers
    assert [s.score for s in steps[1::2]] == pytest.approx(want_scores, rel=1e-4)
    assert engine.pruning.plan().settings["method"] == "sleb"


@pytest.mark.parametrize("family", FAMILIES)
def test_shortgpt_removes_layers_lowest_block_influence_first(
    family, tiny_model_dir, calibration_file
):
    path = tiny_model_dir(family)
    engine = run(request_for(path, calibration_file, "shortgpt"))
    plan = engine.pruning.plan()
    layers = removed_layers(plan.steps)
    assert_stops_at_target(plan.steps)
    influence = plain_block_influence(path, calibration_file)
    assert plan.settings["block_influence"] == pytest.approx(influence, abs=1e-5)
    order = sorted(range(len(influence)), key=influence.__getitem__)
    assert len(set(influence)) == len(influence)  # a distinct order, so the check means something
    assert layers == order[: len(layers)]
    assert plan.settings["method"] == "shortgpt"


def structures(steps) -> list:
    return [step.structure for step in steps]


@pytest.mark.parametrize(("method", "fast"), [("sleb", False), ("shortgpt", False), ("sleb", True)])
def test_a_stopped_session_resumes_to_the_same_plan(
    method, fast, tiny_model_dir, calibration_file, tmp_path
):
    """Under --fast too: the resumed search scores the same seeded order of the rows."""
    request = request_for(tiny_model_dir("llama"), calibration_file, method, fast=fast)
    whole = run(request).pruning.steps
    folder = SessionFolder(tmp_path / "session")
    folder.path.mkdir()
    folder.write_request(request)
    engine = Engine(request, journal=folder)
    engine.subscribe(lambda e: engine.send(cmd.Stop()) if isinstance(e, ev.StepCommitted) else None)
    assert engine.run().reason == "stopped"
    assert structures(engine.pruning.steps) == structures(whole[:2])  # a layer is both, or none
    saved = folder.read_run()
    assert saved.request.settings.method == method
    resumed = run(saved.request, journal=folder).pruning.steps
    assert structures(resumed) == structures(whole)
    assert [s.score for s in resumed] == pytest.approx([s.score for s in whole], rel=1e-5)


@pytest.mark.parametrize("target", [TARGET, 0.04])  # 0.04: the attention half alone reaches it
@pytest.mark.parametrize("method", ["sleb", "shortgpt"])
def test_a_layer_left_half_removed_is_finished_first(
    method, target, tiny_model_dir, calibration_file
):
    request = request_for(tiny_model_dir("qwen2"), calibration_file, method, target)
    whole = run(request).pruning.steps
    assert whole[0].ratio >= target or target == TARGET
    half = dataclasses.replace(request, resume_steps=tuple(whole[:1]))
    assert structures(run(half).pruning.steps) == structures(whole)


def test_undo_puts_back_the_whole_layer(tiny_model_dir, calibration_file):
    request = request_for(tiny_model_dir("gpt2"), calibration_file, "sleb")
    whole = run(request).pruning.steps
    engine, seen = Engine(request), []

    def undo_the_first_layer(event: ev.Event) -> None:
        seen.append(event)
        first_layer = isinstance(event, ev.StepCommitted) and event.step.index == 2
        if first_layer and not any(isinstance(e, ev.StepUndone) for e in seen):
            engine.send(cmd.Undo())

    engine.subscribe(undo_the_first_layer)
    assert engine.run().reason == "done"
    undone = [e for e in seen if isinstance(e, ev.StepUndone)]
    assert [e.index for e in undone] == [2, 1]
    assert undone[-1].ratio == 0
    assert structures(engine.pruning.steps) == structures(whole)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["sleb", "shortgpt"])
def test_an_export_gives_the_live_pruned_logits(
    method, family, tiny_model_dir, calibration_file, tmp_path
):
    pruning = run(request_for(tiny_model_dir(family), calibration_file, method)).pruning
    export_model(pruning.model, pruning.tokenizer, pruning.plan(), tmp_path / "export")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export", trust_remote_code=True)
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        want, got = pruning.model(ids).logits, exported.eval()(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert exported.num_parameters() == pruning.params


def test_the_headless_run_takes_the_method(tiny_model_dir, calibration_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(
        [str(tiny_model_dir("llama")), "--headless", "--method", "sleb", "--calibration",
         str(calibration_file), "--seqlen", str(SEQLEN), "--target-ratio", str(TARGET),
         "--out", str(out), "--session", str(tmp_path / "session")],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["settings"]["method"] == "sleb"
    assert {step["structure"]["kind"] for step in plan["steps"]} == {"attn_block", "mlp_block"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--method", "slab"], "--method 'slab' must be one of multipruner, blockpruner, sleb"),
        (["--method", "shortgpt", "--fast"], "--fast cannot be used with --method shortgpt"),
        (["--method", "sleb", "--faithful", "multipruner"], "--faithful multipruner cannot be"),
        (["--method", "sleb", "--block-count", "2"], "--block-count cannot be used with --method"),
        (["--method", "blockpruner", "--faithful", "multipruner"], "cannot be used with --method"),
    ],
)
def test_bad_method_input_is_one_line(argv, message, tiny_model_dir, calibration_file, capsys):
    base = [str(tiny_model_dir("llama")), "--headless", "--calibration", str(calibration_file)]
    code, err = run_cli(base + argv, capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_blockpruner_is_the_blocks_only_search(tiny_model_dir, calibration_file):
    settings = PruneSettings.with_distribution(
        TARGET, "10:80:10", calibration=CalibrationSpec(str(calibration_file), 0, SEQLEN),
        method="blockpruner",
    )  # fmt: skip
    assert settings.shares == {"blocks": 1.0, "mlp_channels": 0.0, "attn_heads": 0.0}
    faithful = PruneSettings.with_distribution(TARGET, None, faithful="blockpruner", block_count=3)
    assert faithful.method == "blockpruner"


def test_only_a_layer_method_takes_a_whole_layer_override(tiny_model_dir, calibration_file):
    path = tiny_model_dir("mistral")
    blocks = run(request_for(path, calibration_file, "blockpruner")).pruning
    with pytest.raises(BadInput, match="names a whole layer"):
        blocks.structure_from_id("L1")
    layers = run(request_for(path, calibration_file, "sleb")).pruning
    kept = next(i for i in range(4) if i not in removed_layers(layers.steps))
    assert layers.structure_from_id(f"L{kept}") == Structure("layer", kept)
    with pytest.raises(BadInput, match="already removed"):
        layers.structure_from_id(f"L{layers.steps[-1].structure.layer}")


def test_sleb_takes_the_fast_search(tiny_model_dir, calibration_file):
    """With a margin nothing is ruled out by, successive halving ends in the exact choice."""
    path = tiny_model_dir("phi3")
    exact = run(request_for(path, calibration_file, "sleb")).pruning.steps
    fast = run(
        request_for(path, calibration_file, "sleb", fast=True, fast_margin=1e9, fast_tolerance=0)
    ).pruning
    assert fast.plan().settings["fast"] is True
    assert structures(fast.steps) == structures(exact)


def test_the_summary_names_the_method_and_a_rebuild_gives_the_live_model(
    tiny_model_dir, calibration_file
):
    """Evaluating or exporting a session later rebuilds the model from the plan alone."""
    path = tiny_model_dir("qwen3")
    pruning = run(request_for(path, calibration_file, "shortgpt")).pruning
    plan = pruning.plan().to_dict()
    summary = summarize(plan)
    assert summary["method"] == "shortgpt" and "steps of shortgpt" in markdown(summary)
    rebuilt, _tokenizer = plain_model(path)
    apply_plan(rebuilt, plan)
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(
            rebuilt(ids).logits, pruning.model(ids).logits, rtol=0, atol=1e-5
        )
    assert rebuilt.num_parameters() == pruning.params


def wait_for(events: list, kind: type, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not any(isinstance(e, kind) for e in events):
        assert time.monotonic() < deadline, f"no {kind.__name__}"
        time.sleep(0.01)
    return next(e for e in events if isinstance(e, kind))


def test_the_evaluation_after_a_sleb_search_scores_dense_and_pruned(
    tiny_model_dir, calibration_file
):
    path = tiny_model_dir("llama")
    events: list = []
    engine = Engine(request_for(path, calibration_file, "sleb"), [events.append], linger=True)
    engine.start()
    wait_for(events, ev.Finished)
    engine.send(cmd.Evaluate(EvalRequest(text=str(calibration_file), seqlen=SEQLEN)))
    evaluated = wait_for(events, ev.Evaluated)
    engine.send(cmd.Stop())
    assert engine.join(60)
    model, tokenizer = plain_model(path)
    text = calibration_file.read_text()
    want_dense = rolling_perplexity(model, tokenizer, text, SEQLEN)
    for layer in removed_layers(engine.pruning.steps):
        zero_layer(model, layer)
    want_pruned = rolling_perplexity(model, tokenizer, text, SEQLEN)
    assert evaluated.dense["perplexity"] == pytest.approx(want_dense, rel=1e-5)
    assert evaluated.pruned["perplexity"] == pytest.approx(want_pruned, rel=1e-5)
    assert want_pruned != pytest.approx(want_dense, rel=1e-3)


@pytest.mark.parametrize(
    ("method", "tells_groups"), [("multipruner", True), ("sleb", False), ("shortgpt", False)]
)
def test_only_a_method_that_narrows_widths_tells_its_group_sizes(
    method, tells_groups, tiny_model_dir, calibration_file, tmp_path, capsys
):
    """SLEB and ShortGPT remove whole layers: a group size means nothing to them, so neither the
    load notes (stderr, the app's notices) nor the loaded line (stdout) mention one."""
    capsys.readouterr()
    headless_session(
        tiny_model_dir("llama"), calibration_file, tmp_path / "session", "--method", method
    )
    out, err = capsys.readouterr()
    loaded = next(line for line in out.splitlines() if line.startswith("loaded "))
    assert f"method {method}" in loaded
    assert ("mptui: note: group sizes:" in err) is tells_groups, err
    assert ("groups mlp" in loaded) is tells_groups, loaded


def test_a_layers_ranking_is_booked_on_the_step_that_paid_it(tiny_model_dir, calibration_file):
    """SLEB ranks the whole layers in the step of the layer's attention sub-block (its
    StepStarted and CandidateScored events carry that step's number), then scores that
    sub-block alone: that step carries both; the MLP step's score came with the ranking."""
    events: list = []
    run(request_for(tiny_model_dir("llama"), calibration_file, "sleb"), subscribers=[events.append])
    started = {e.step: e for e in events if isinstance(e, ev.StepStarted)}
    scored = [e.step for e in events if isinstance(e, ev.CandidateScored)]
    steps = [e for e in events if isinstance(e, ev.StepCommitted)]
    assert len(steps) >= 2 and len(steps) % 2 == 0
    for attn, mlp in zip(steps[::2], steps[1::2], strict=True):
        index = attn.step.index
        assert attn.step.structure.kind == "attn_block" and index in started
        ranked = len(started[index].candidates)
        assert scored.count(index) == ranked > 0
        assert attn.candidates == ranked + 1 and attn.tokens > 0 and attn.seconds > 0
        assert (mlp.candidates, mlp.tokens) == (0, 0)
        assert mlp.step.index not in started  # no ranking ran for the MLP step
